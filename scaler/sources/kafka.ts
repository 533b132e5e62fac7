/**
 * Kafka backlog source: a consumer group's lag, the sum over partitions of end offset − committed
 * offset, with KEDA's kafka-scaler knobs. Pair it with `scalingStrategy.strategy: default`: lag
 * counts every record not committed, the ones running Jobs hold included (a worker commits only
 * after its record's run is FINISHED), so it is waiting + held, and `default` subtracts the
 * unfinished Jobs from ceil(lag / lagThreshold): a Job for each batch no Job will take. A Job
 * whose pod has not started holds nothing yet; its records count as waiting and it is subtracted
 * as unfinished, so it is not given a twin. (`accurate` subtracts only pending Jobs and would
 * start a second Job for each running one.) With `lagThreshold` = the workers' `maxMessages`,
 * one Job per batch of that many records.
 *
 * Per partition (as KEDA, except where noted):
 * - committed offset c, end e, start s: lag = e − max(c, s) (KEDA: e − c; records removed by
 *   retention are not counted here, a consumer can never read them);
 * - no commit, `offsetResetPolicy: latest` (default): lag 1, the group will start at the end and
 *   a Job is needed to get there; `earliest`: lag e − s (KEDA: e); either is 0 with
 *   `scaleToZeroOnInvalidOffset: true`;
 * - `excludePersistentLag: true`: a partition whose committed offset has not moved since the
 *   previous read counts 0 toward the metric, but still toward activation. The previous read is
 *   the scaler's (several per KEDA poll, docs/scaler.md), not the previous poll's as in KEDA.
 *
 * Then the cap: unless `allowIdleConsumers: true`, the metric never asks for more Jobs than there
 * are partitions (a group never has more busy members than partitions), i.e. it is at most
 * partitions × lagThreshold; with `limitToPartitionsWithLag: true`, partitions with lag. KEDA
 * caps only once lag / lagThreshold, rounded down, is above the bound, so it may still ask for
 * one more than the bound; here the cap is exact.
 *
 * Also different from KEDA: `topic` may name several topics (comma-separated), lag summed; a
 * group that does not exist on the cluster is NOT_FOUND (KEDA reads it as uncommitted), so a typo
 * never scales a ScaledJob; brokers, SASL and TLS come from the scaler's connection `connection`,
 * never from trigger metadata; `partitionLimitation` and `ensureEvenDistributionOfPartitions`
 * are not supported.
 */
import { parseFields, quote, type Checked, type FieldSpecs, type RawInput } from '../../common/fields.ts';
import type { Logger } from '../../common/log.ts';
import { kafkaClient } from '../../kafka/client.ts';
import { committedLag, KafkaOffsetsReader, type PartitionOffsets } from '../../kafka/offsets.ts';
import { KAFKA_CONNECTION_FIELDS, KAFKA_ENV, kafkaConnection, kafkaConnectionOfEntry, type KafkaConnection } from '../../kafka/settings.ts';
import { CONNECTION_FIELD, metricStem, unknownConnection } from './shared.ts';
import type { BacklogReading, BacklogSource, BacklogTarget, BrokerTuning, SourceDefinition, Thresholds } from './source.ts';

export const OFFSET_RESET_POLICIES = ['latest', 'earliest'] as const;
export type OffsetResetPolicy = (typeof OFFSET_RESET_POLICIES)[number];

/** Topic names as Kafka allows them. */
const TOPIC_LIST = /^[a-zA-Z0-9._-]{1,249}(,[a-zA-Z0-9._-]{1,249})*$/;

export const KAFKA_FIELDS = {
  consumerGroup: { kind: 'string', required: true, maxLength: 255, help: 'consumer group whose lag is measured' },
  topic: {
    kind: 'string',
    pattern: TOPIC_LIST,
    patternHint: 'topic names (letters, digits, ".", "_", "-"), comma-separated',
    help: 'topic, or topics comma-separated (default: every topic the group has committed offsets for)',
  },
  offsetResetPolicy: {
    kind: 'enum',
    values: OFFSET_RESET_POLICIES,
    default: 'latest',
    help: 'what a partition without a commit counts as',
  },
  allowIdleConsumers: { kind: 'boolean', default: false, help: 'let the metric ask for more Jobs than partitions' },
  limitToPartitionsWithLag: { kind: 'boolean', default: false, help: 'ask for at most one Job per partition with lag' },
  excludePersistentLag: {
    kind: 'boolean',
    default: false,
    help: 'leave out lag of partitions whose commit has not moved since the last read',
  },
  scaleToZeroOnInvalidOffset: { kind: 'boolean', default: false, help: 'a partition without a commit counts 0' },
  connection: CONNECTION_FIELD,
} as const satisfies FieldSpecs;

const KAFKA_SCALER_ENV = {
  ...Object.fromEntries(Object.entries(KAFKA_ENV).map(([k, spec]) => [k, { ...spec, help: `${spec.help} (connection alias "default")` }])),
  KMJ_SCALER_KAFKA_REQUEST_TIMEOUT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 60_000,
    default: 2000,
    help: 'bound on one Kafka request',
  },
} as const satisfies FieldSpecs;

interface KafkaSourceOptions extends BrokerTuning {
  readonly connections: ReadonlyMap<string, KafkaConnection>;
  readonly requestTimeoutMs: number;
  readonly log: Logger;
}

/** Kafka's settings: the alias "default" from KAFKA_BROKERS when it is set, others from the connections file. */
export const KAFKA_SOURCE: SourceDefinition = {
  name: 'kafka',
  env: KAFKA_SCALER_ENV,
  fields: KAFKA_FIELDS,
  connectionFields: KAFKA_CONNECTION_FIELDS,
  configure({ env, connections: entries, nameOf }) {
    const connections = new Map<string, KafkaConnection>();
    const problems: string[] = [];
    const byDefault = kafkaConnection(env);
    problems.push(...byDefault.problems);
    if (byDefault.value) connections.set('default', byDefault.value);
    for (const [alias, entry] of entries) {
      const c = kafkaConnectionOfEntry(entry, (k) => nameOf(alias, k));
      problems.push(...c.problems);
      if (c.value) connections.set(alias, c.value);
    }
    const { values, problems: own } = parseFields(
      { KMJ_SCALER_KAFKA_REQUEST_TIMEOUT_MS: KAFKA_SCALER_ENV.KMJ_SCALER_KAFKA_REQUEST_TIMEOUT_MS },
      env,
    );
    problems.push(...own);
    return {
      value: {
        aliases: [...connections.keys()],
        create: (tuning, log) =>
          new KafkaSource({ ...tuning, connections, requestTimeoutMs: values.KMJ_SCALER_KAFKA_REQUEST_TIMEOUT_MS, log }),
      },
      problems,
    };
  },
};

export interface KafkaLagOptions {
  readonly offsetResetPolicy: OffsetResetPolicy;
  readonly scaleToZeroOnInvalidOffset: boolean;
  readonly excludePersistentLag: boolean;
  readonly allowIdleConsumers: boolean;
  readonly limitToPartitionsWithLag: boolean;
  readonly lagThreshold: number;
}

/**
 * The reading of one set of offsets. `previous` holds the committed offsets of the last read, for
 * excludePersistentLag; it is updated here. Pure otherwise, so the rules are pinned by table tests.
 */
export function lagReading(partitions: readonly PartitionOffsets[], o: KafkaLagOptions, previous: Map<string, number>): BacklogReading {
  let lag = 0;
  let counted = 0;
  let withLag = 0;
  let uncommitted = 0;
  for (const p of partitions) {
    let partitionLag: number;
    let persistent = false;
    if (p.committed === undefined) {
      uncommitted++;
      partitionLag = o.scaleToZeroOnInvalidOffset ? 0 : o.offsetResetPolicy === 'latest' ? 1 : Math.max(0, p.end - p.start);
    } else {
      partitionLag = committedLag(p) ?? 0;
      if (o.excludePersistentLag) {
        const key = `${p.topic}\u0000${p.partition}`;
        persistent = partitionLag > 0 && previous.get(key) === p.committed;
        previous.set(key, p.committed);
      }
    }
    lag += partitionLag;
    if (!persistent) {
      counted += partitionLag;
      if (partitionLag > 0) withLag++;
    }
  }
  let value = counted;
  if (!o.allowIdleConsumers || o.limitToPartitionsWithLag) {
    const bound = (o.limitToPartitionsWithLag ? withLag : partitions.length) * o.lagThreshold;
    value = Math.min(value, bound);
  }
  return {
    value,
    activity: lag,
    details: {
      lag,
      persistentLag: lag - counted,
      partitions: partitions.length,
      partitionsWithLag: withLag,
      uncommittedPartitions: uncommitted,
    },
  };
}

export class KafkaSource implements BacklogSource {
  readonly name = 'kafka';
  readonly fields = KAFKA_FIELDS;
  readonly thresholdKeys = { targetSize: 'lagThreshold', activationThreshold: 'activationLagThreshold' };
  readonly #options: KafkaSourceOptions;
  readonly #readers = new Map<string, KafkaOffsetsReader>();

  constructor(options: KafkaSourceOptions) {
    this.#options = options;
  }

  compile(raw: RawInput, thresholds: Thresholds): Checked<BacklogTarget | undefined> {
    const { values: v, problems: own } = parseFields(KAFKA_FIELDS, raw);
    const problems = [...own];
    const conn = this.#options.connections.get(v.connection);
    if (own.length === 0 && !conn) problems.push(unknownConnection(v.connection, this.#options.connections));
    if (v.limitToPartitionsWithLag && v.allowIdleConsumers) {
      problems.push('limitToPartitionsWithLag: cannot be true together with allowIdleConsumers true');
    }
    if (v.limitToPartitionsWithLag && raw['topic'] === undefined) {
      problems.push('limitToPartitionsWithLag: needs topic (the partitions with lag are counted on the topics named)');
    }
    if (problems.length > 0 || !conn) return { value: undefined, problems };

    const topics = v.topic === undefined ? [] : [...new Set(v.topic.split(','))].sort();
    const options: KafkaLagOptions = {
      offsetResetPolicy: v.offsetResetPolicy,
      scaleToZeroOnInvalidOffset: v.scaleToZeroOnInvalidOffset,
      excludePersistentLag: v.excludePersistentLag,
      allowIdleConsumers: v.allowIdleConsumers,
      limitToPartitionsWithLag: v.limitToPartitionsWithLag,
      lagThreshold: thresholds.targetSize,
    };
    const mode = [
      v.offsetResetPolicy,
      v.scaleToZeroOnInvalidOffset ? 'zero-invalid' : '',
      v.excludePersistentLag ? 'exclude-persistent' : '',
      v.allowIdleConsumers ? 'idle' : v.limitToPartitionsWithLag ? 'with-lag' : 'capped',
    ]
      .filter(Boolean)
      .join('-');
    const reader = this.#reader(v.connection, conn);
    const previous = new Map<string, number>();
    const topicText =
      topics.length === 0
        ? 'its committed topics'
        : topics.length === 1
          ? `topic ${quote(topics[0] ?? '')}`
          : `topics ${topics.map((t) => quote(t)).join(', ')}`;
    const target: BacklogTarget = {
      // The cap depends on the threshold: triggers with different ones read separately.
      key: `kafka\u0000${v.connection}\u0000${v.consumerGroup}\u0000${topics.join(',')}\u0000${mode}\u0000${thresholds.targetSize}`,
      labels: { source: this.name, connection: v.connection, scope: v.consumerGroup, name: topics.join(',') || '*', mode },
      description: `consumer group ${quote(v.consumerGroup)} on ${topicText}`,
      metricStem: metricStem('kafka', v.consumerGroup, 'group'),
      read: async (signal): Promise<BacklogReading> =>
        lagReading((await reader.read(v.consumerGroup, topics, signal)).partitions, options, previous),
    };
    return { value: target, problems };
  }

  async close(): Promise<void> {
    const all = [...this.#readers.values()];
    this.#readers.clear();
    await Promise.all(all.map((r) => r.close()));
  }

  #reader(alias: string, conn: KafkaConnection): KafkaOffsetsReader {
    let reader = this.#readers.get(alias);
    if (!reader) {
      const o = this.#options;
      const log = o.log.child({ connection: alias });
      const kafka = kafkaClient(conn, {
        clientId: `kmj-scaler-${alias}`,
        log,
        connectTimeoutMs: o.connectTimeoutMs,
        requestTimeoutMs: o.requestTimeoutMs,
        retries: 0,
      });
      reader = new KafkaOffsetsReader({ kafka, brokers: conn.brokers.join(','), log });
      this.#readers.set(alias, reader);
    }
    return reader;
  }
}
