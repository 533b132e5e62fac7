/**
 * RabbitMQ backlog source.
 *
 * Modes, and the ScaledJob scaling strategy each one pairs with:
 *
 * - `backlog` (default): ready messages + consumers, both from one passive queue declare.
 *   Pair with `scalingStrategy.strategy: default`. KEDA's default strategy creates
 *   `ceil(metric / targetSize) - unfinishedJobs` Jobs per poll. Every worker Job holds exactly one
 *   consumer (prefetch 1) from the moment it connects until it has settled its one message, so with
 *   targetSize 1:
 *       unfinishedJobs = C (connected workers) + P (Jobs whose pod has not connected yet)
 *       metric         = R (ready) + C
 *       new Jobs       = R + C - (C + P) = R - P
 *   i.e. one new Job for each ready message that no pending Job will take, however long pods take
 *   to start, and nothing is counted twice: a message a worker holds is unacknowledged, not ready,
 *   and its worker is counted once, as a consumer.
 *   Limits: (1) any other consumer on the queue (a long-running service, a debugging session)
 *   inflates C and so creates one extra Job per such consumer; the extra Jobs find no message and
 *   exit after their idle timeout. (2) A worker that has cancelled its consumer but whose pod has
 *   not finished yet is in unfinishedJobs but not in C, so for up to one poll KEDA creates one
 *   Job fewer than it could; the message waits, it is not lost. (3) A consumer with prefetch > 1
 *   holds several messages but counts once: use prefetch 1, as `kmj worker` does. (4) The reading
 *   is up to one refresh interval old, so a Job reported complete sooner than that after its
 *   consumer closed may get one extra, idle, successor.
 *
 * - `ready`: ready messages only (what KEDA's built-in RabbitMQ scaler reports over AMQP).
 *   Pair with `scalingStrategy.strategy: accurate`, which subtracts only pending Jobs. Running Jobs
 *   are then not subtracted twice, but a Job whose pod is slow to start can be missed by the
 *   pending-Job check and get duplicates.
 *
 * - `management`: the HTTP management API: ready + unacknowledged (`measure: messages`, default),
 *   or the publish or deliver rate in messages per second (`measure: publishRate|deliverRate`,
 *   like KEDA's MessageRate). The figures are sampled by the plugin and lag by its statistics
 *   interval. Pair `messages` with the `default` strategy only if workers never hold more than
 *   one message each; rates suit ScaledObjects rather than ScaledJobs.
 */
import type { Logger } from '../../common/log.ts';
import { parseFields, quote, type Checked, type FieldSpecs, type Parsed, type RawInput } from '../../common/fields.ts';
import type { BacklogReading, BacklogSource, BacklogTarget, BrokerTuning, SourceDefinition } from './source.ts';
import { AmqpQueueInspector } from '../../rabbitmq/inspect.ts';
import { ManagementQueueReader } from '../../rabbitmq/management.ts';
import { defaultManagementUrl, RABBITMQ_ENV, vhostOf } from '../../rabbitmq/settings.ts';
import { CONNECTION_FIELD, metricStem, unknownConnection } from './shared.ts';

export const RABBITMQ_MODES = ['backlog', 'ready', 'management'] as const;
export type RabbitMode = (typeof RABBITMQ_MODES)[number];
export const MANAGEMENT_MEASURES = ['messages', 'publishRate', 'deliverRate'] as const;
export type ManagementMeasure = (typeof MANAGEMENT_MEASURES)[number];

/** Broker endpoints for one connection alias. URLs carry credentials and are never logged. */
export interface RabbitConnection {
  readonly amqpUrl: string;
  readonly managementUrl: string;
}

export interface RabbitSourceOptions extends BrokerTuning {
  readonly connections: ReadonlyMap<string, RabbitConnection>;
  readonly maxChannelsPerConnection: number;
  readonly log: Logger;
}

const RABBITMQ_SCALER_ENV = {
  RABBITMQ_URL: { ...RABBITMQ_ENV.RABBITMQ_URL, help: 'broker of the connection alias "default"' },
  RABBITMQ_MANAGEMENT_URL: {
    ...RABBITMQ_ENV.RABBITMQ_MANAGEMENT_URL,
    help: 'management API of "default" (default: RABBITMQ_URL host, port 15672, same credentials)',
  },
  KMJ_SCALER_CHANNELS_PER_CONNECTION: {
    kind: 'integer',
    min: 1,
    max: 256,
    default: 8,
    help: 'AMQP channels per broker connection (concurrent passive declares)',
  },
} as const satisfies FieldSpecs;

const RABBITMQ_CONNECTION_FIELDS = {
  amqpUrl: { kind: 'url', protocols: ['amqp', 'amqps'], required: true, help: 'broker, credentials and vhost in the URL' },
  managementUrl: {
    kind: 'url',
    protocols: ['http', 'https'],
    help: 'management API (default: amqpUrl host, port 15672, same credentials)',
  },
} as const satisfies FieldSpecs;

export const RABBITMQ_FIELDS = {
  queueName: { kind: 'string', required: true, maxLength: 255, help: 'queue to measure' },
  mode: { kind: 'enum', values: RABBITMQ_MODES, default: 'backlog', help: 'what to count' },
  measure: { kind: 'enum', values: MANAGEMENT_MEASURES, help: 'management mode only: messages, or a rate (default: messages)' },
  vhost: { kind: 'string', maxLength: 255, help: "virtual host (default: the connection URL's)" },
  connection: CONNECTION_FIELD,
} as const;

/**
 * RabbitMQ's settings: the alias "default" from RABBITMQ_URL (always there, the URL has a
 * default), others from the connections file.
 */
export const RABBITMQ_SOURCE: SourceDefinition = {
  name: 'rabbitmq',
  env: RABBITMQ_SCALER_ENV,
  fields: RABBITMQ_FIELDS,
  connectionFields: RABBITMQ_CONNECTION_FIELDS,
  configure({ env, connections: entries, nameOf }) {
    const { values: v, problems: own } = parseFields(RABBITMQ_SCALER_ENV, env);
    const problems = [...own];
    const connections = new Map<string, RabbitConnection>();
    if (own.length === 0) {
      connections.set('default', {
        amqpUrl: v.RABBITMQ_URL,
        managementUrl: v.RABBITMQ_MANAGEMENT_URL ?? defaultManagementUrl(v.RABBITMQ_URL),
      });
    }
    for (const [alias, raw] of entries) {
      const parsed = parseFields(RABBITMQ_CONNECTION_FIELDS, raw, { nameOf: (k) => nameOf(alias, k) });
      problems.push(...parsed.problems);
      if (parsed.problems.length > 0) continue;
      const { amqpUrl, managementUrl } = parsed.values;
      connections.set(alias, { amqpUrl, managementUrl: managementUrl ?? defaultManagementUrl(amqpUrl) });
    }
    return {
      value: {
        aliases: [...connections.keys()],
        create: (tuning, log) =>
          new RabbitMqSource({ ...tuning, connections, maxChannelsPerConnection: v.KMJ_SCALER_CHANNELS_PER_CONNECTION, log }),
      },
      problems,
    };
  },
};

function urlForVhost(amqpUrl: string, vhost: string): string {
  const u = new URL(amqpUrl);
  u.pathname = `/${encodeURIComponent(vhost)}`;
  return u.toString();
}

export class RabbitMqSource implements BacklogSource {
  readonly name = 'rabbitmq';
  readonly fields = RABBITMQ_FIELDS;
  readonly #options: RabbitSourceOptions;
  readonly #inspectors = new Map<string, AmqpQueueInspector>();
  readonly #readers = new Map<string, ManagementQueueReader>();

  constructor(options: RabbitSourceOptions) {
    this.#options = options;
  }

  compile(raw: RawInput): Checked<BacklogTarget | undefined> {
    const { values, problems: own } = parseFields(RABBITMQ_FIELDS, raw);
    const problems = [...own];
    const conn = this.#options.connections.get(values.connection);
    if (own.length === 0 && !conn) problems.push(unknownConnection(values.connection, this.#options.connections));
    if (values.measure !== undefined && values.mode !== 'management') {
      problems.push(`measure: is only allowed with mode management, got mode ${quote(values.mode)}`);
    }
    if (problems.length > 0 || !conn) return { value: undefined, problems };
    return { value: this.#target(values, conn), problems };
  }

  /** The target of checked fields: how its queue is read, its key and labels. */
  #target(values: Parsed<typeof RABBITMQ_FIELDS>, conn: RabbitConnection): BacklogTarget {
    const alias = values.connection;
    const queue = values.queueName;
    const mode = values.mode;
    const measure: ManagementMeasure = values.measure ?? 'messages';
    const vhost = values.vhost ?? vhostOf(conn.amqpUrl);
    const labels = {
      source: this.name,
      connection: alias,
      scope: vhost,
      name: queue,
      mode: mode === 'management' ? `management-${measure}` : mode,
    };
    const base = {
      key: `rabbitmq\u0000${alias}\u0000${vhost}\u0000${queue}\u0000${labels.mode}`,
      labels,
      description: `queue ${JSON.stringify(queue)} in vhost ${JSON.stringify(vhost)}`,
      metricStem: metricStem('rabbitmq', queue, 'queue'),
    };

    if (mode === 'management') {
      const reader = this.#reader(alias, conn);
      return {
        ...base,
        read: async (signal): Promise<BacklogReading> => {
          const s = await reader.read(vhost, queue, signal);
          const value = measure === 'messages' ? s.ready + s.unacked : measure === 'publishRate' ? s.publishRate : s.deliverRate;
          return {
            value,
            details: { ready: s.ready, unacked: s.unacked, consumers: s.consumers, publishRate: s.publishRate, deliverRate: s.deliverRate },
          };
        },
      };
    }
    const inspector = this.#inspector(alias, vhost, conn);
    return {
      ...base,
      read: async (signal): Promise<BacklogReading> => {
        const ok = await inspector.inspect(queue, signal);
        const value = mode === 'backlog' ? ok.messageCount + ok.consumerCount : ok.messageCount;
        return { value, details: { ready: ok.messageCount, consumers: ok.consumerCount } };
      },
    };
  }

  async close(): Promise<void> {
    const all = [...this.#inspectors.values()];
    this.#inspectors.clear();
    await Promise.all(all.map((i) => i.close()));
  }

  #inspector(alias: string, vhost: string, conn: RabbitConnection): AmqpQueueInspector {
    const key = `${alias}\u0000${vhost}`;
    let inspector = this.#inspectors.get(key);
    if (!inspector) {
      const o = this.#options;
      inspector = new AmqpQueueInspector({
        url: urlForVhost(conn.amqpUrl, vhost),
        vhost,
        maxChannels: o.maxChannelsPerConnection,
        connectTimeoutMs: o.connectTimeoutMs,
        minBackoffMs: o.minBackoffMs,
        maxBackoffMs: o.maxBackoffMs,
        heartbeatSeconds: o.heartbeatSeconds,
        log: o.log.child({ connection: alias, vhost }),
      });
      this.#inspectors.set(key, inspector);
    }
    return inspector;
  }

  #reader(alias: string, conn: RabbitConnection): ManagementQueueReader {
    let reader = this.#readers.get(alias);
    if (!reader) {
      reader = new ManagementQueueReader({ url: conn.managementUrl });
      this.#readers.set(alias, reader);
    }
    return reader;
  }
}
