/**
 * The one interface every backlog source implements. A source declares its scaler settings and
 * connections (SourceDefinition), owns its broker connections, declares its trigger-metadata
 * fields, and reads one target in one broker round trip. It knows nothing of gRPC or of the
 * snapshot cache. Adding a source is its own file under scaler/sources/ and one registry line:
 * nothing else in scaler/ names a source.
 */
import type { Checked, FieldSpecs, RawInput } from '../../common/fields.ts';
import type { Logger } from '../../common/log.ts';

/** What one read of a target returns. */
export interface BacklogReading {
  /** The number reported to KEDA for this target. */
  readonly value: number;
  /** The figures the value was made from (ready, consumers, unacked, rates), for metrics and status. */
  readonly details: Readonly<Record<string, number>>;
  /**
   * What IsActive compares with the activation threshold, when it is not `value` (Kafka's lag
   * with the persistent lag that `value` leaves out).
   */
  readonly activity?: number;
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

/** A trigger's scaling thresholds, as compiled from the common keys (or the source's names for them). */
export interface Thresholds {
  readonly targetSize: number;
  readonly activationThreshold: number;
}

export interface BacklogSource {
  /** The value of the `source` metadata key that selects this source. */
  readonly name: string;
  /** Trigger-metadata fields this source reads, besides the common ones. */
  readonly fields: FieldSpecs;
  /**
   * The source's own names for the common thresholds, accepted instead of `targetSize` and
   * `activationThreshold` (Kafka's `lagThreshold` and `activationLagThreshold`, as KEDA names them).
   */
  readonly thresholdKeys?: { readonly targetSize: string; readonly activationThreshold: string };
  /**
   * Parses this source's fields from the trigger metadata and turns them into a target, with every
   * problem found (the target is undefined when there are any). `thresholds` are the trigger's,
   * for a source whose reading depends on them (a cap in units of the target size).
   */
  compile(raw: RawInput, thresholds: Thresholds): Checked<BacklogTarget | undefined>;
  /** Closes every connection the source opened. */
  close(): Promise<void>;
}

/** Scaler-wide settings of broker connections, the same for every source. */
export interface BrokerTuning {
  readonly connectTimeoutMs: number;
  readonly minBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly heartbeatSeconds: number;
}

/** What a source's configuration reads at start-up: its variables and its connections. */
export interface SourceConfigInput {
  /** The scaler's whole environment (the source reads its own variables from it). */
  readonly env: RawInput;
  /** This source's entries of KMJ_SCALER_CONNECTIONS_FILE, by alias, without their `source` key. */
  readonly connections: ReadonlyMap<string, RawInput>;
  /** How a key of a connection entry is named in problems. */
  readonly nameOf: (alias: string, key: string) => string;
}

/** A source configured at start-up and ready to be made. Holds credentials: never logged. */
export interface ConfiguredSource {
  /** The connection aliases a trigger may name. */
  readonly aliases: readonly string[];
  create(tuning: BrokerTuning, log: Logger): BacklogSource;
}

/** How the scaler configures and makes one source. */
export interface SourceDefinition {
  readonly name: string;
  /** The scaler's environment variables of this source, for --help and docs. */
  readonly env: FieldSpecs;
  /** Its trigger-metadata fields (as its BacklogSource has them), for --help and docs. */
  readonly fields: FieldSpecs;
  /** The keys of one of its entries in KMJ_SCALER_CONNECTIONS_FILE, for --help and docs. */
  readonly connectionFields: FieldSpecs;
  /** Reads the source's settings and connections, with every problem found (the value is usable only without). */
  configure(input: SourceConfigInput): Checked<ConfiguredSource>;
}
