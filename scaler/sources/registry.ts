/**
 * The backlog sources this scaler serves, keyed by the `source` trigger-metadata value. Adding a
 * source means its own file under scaler/sources/, one line here and its tests.
 */
import type { Logger } from '../../common/log.ts';
import type { BacklogSource, BrokerTuning, ConfiguredSource, SourceDefinition } from './source.ts';
import { KAFKA_SOURCE } from './kafka.ts';
import { RABBITMQ_SOURCE } from './rabbitmq.ts';

export const SOURCES: readonly SourceDefinition[] = [RABBITMQ_SOURCE, KAFKA_SOURCE];

/** The default `source` when trigger metadata names none, and of a connection entry without one. */
export const DEFAULT_SOURCE = 'rabbitmq';

export function createSources(
  configured: ReadonlyMap<string, ConfiguredSource>,
  tuning: BrokerTuning,
  log: Logger,
): Map<string, BacklogSource> {
  return new Map([...configured].map(([name, c]) => [name, c.create(tuning, log.child({ source: name }))]));
}
