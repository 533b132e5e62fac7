/**
 * The one interface every backlog source implements. A source owns its broker connections,
 * declares its trigger-metadata fields, and reads one target in one broker round trip. It knows
 * nothing of gRPC or of the snapshot cache.
 */
import type { FieldSpecs, RawInput } from '../../common/fields.ts';

/** What one read of a target returns. */
export interface BacklogReading {
  /** The number reported to KEDA for this target. */
  readonly value: number;
  /** The figures the value was made from (ready, consumers, unacked, rates), for metrics and status. */
  readonly details: Readonly<Record<string, number>>;
}

/** Prometheus and log labels of a target; the same names for every source. Never secret. */
export interface TargetLabels {
  readonly source: string;
  /** Connection alias from the scaler's configuration. */
  readonly connection: string;
  /** Where the name lives: a RabbitMQ vhost, a Kafka consumer group. */
  readonly scope: string;
  /** The queue or topic. */
  readonly name: string;
  readonly mode: string;
}

/** One thing to measure, e.g. a queue in a vhost on a named connection, read in a given mode. */
export interface BacklogTarget {
  /** Identity of the read: two triggers with the same key share one broker round trip. */
  readonly key: string;
  readonly labels: TargetLabels;
  /** Human name for messages, e.g. `queue "jobs" in vhost "/"`. */
  readonly description: string;
  /** Readable prefix of the metric name, before the stable hash (lowercase [a-z0-9-]). */
  readonly metricStem: string;
  read(signal: AbortSignal): Promise<BacklogReading>;
}

export interface BacklogSource {
  /** The value of the `source` metadata key that selects this source. */
  readonly name: string;
  /** Trigger-metadata fields this source reads, besides the common ones. */
  readonly fields: FieldSpecs;
  /**
   * Parses this source's fields from the trigger metadata and turns them into a target. Pushes
   * every problem onto `problems` and returns undefined when there are any.
   */
  compile(raw: RawInput, problems: string[]): BacklogTarget | undefined;
  /** Closes every connection the source opened. */
  close(): Promise<void>;
}
