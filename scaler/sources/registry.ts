/**
 * The backlog sources this scaler serves, keyed by the `source` trigger-metadata value. Adding a
 * source means its own file under scaler/sources/, one line here and its tests.
 */
import type { Logger } from '../../common/log.ts';
import type { BacklogSource } from './source.ts';
import { RabbitMqSource, type RabbitConnection } from './rabbitmq.ts';

export interface SourceSettings {
  readonly rabbitmq: {
    readonly connections: ReadonlyMap<string, RabbitConnection>;
    readonly maxChannelsPerConnection: number;
    readonly connectTimeoutMs: number;
    readonly minBackoffMs: number;
    readonly maxBackoffMs: number;
    readonly heartbeatSeconds: number;
  };
}

/** The default `source` when trigger metadata names none. */
export const DEFAULT_SOURCE = 'rabbitmq';

export function createSources(settings: SourceSettings, log: Logger): Map<string, BacklogSource> {
  const sources: BacklogSource[] = [new RabbitMqSource({ ...settings.rabbitmq, log: log.child({ source: 'rabbitmq' }) })];
  return new Map(sources.map((s) => [s.name, s]));
}
