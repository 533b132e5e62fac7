/**
 * Reads a consumer group's committed offsets and its topics' end offsets, the figures lag is made
 * of, for the scaler (scaler/sources/kafka.ts) and `kmj status --kafka`. Offsets only: group
 * state is never used, since Kafka 4's consumer-group protocol (KIP-848) makes classic
 * DescribeGroups report an active group as Dead with no members.
 *
 * One read is two chains of requests side by side: the group's committed offsets (FindCoordinator,
 * then OffsetFetch for all of the group's topics, which needs no metadata) on the reader's main
 * admin client, and each topic's end and start offsets (Metadata for that topic, then ListOffsets
 * to its partition leaders) on an admin client of that topic's own. kafkajs' admin client
 * refreshes the metadata of every topic it was ever asked about before nearly every request
 * (metadataMaxAge 0, not settable for an admin): one client for every topic made each read decode
 * the metadata of all of them, a cost growing with the square of the topics a scaler serves
 * (docs/benchmarks.md, `make bench-kafka`). A topic's own client is closed after
 * TOPIC_CLIENT_IDLE_MS without a read, and after any failure.
 *
 * Named topics are checked first against the cluster's list (Metadata for all topics, kept for
 * `listTtlMs`): kafkajs remembers a topic it was asked about, so a missing one would fail every
 * later read on that client.
 */
import type { Admin, Kafka } from 'kafkajs';
import { raceAbort } from '../common/abort.ts';
import { BacklogNotFoundError, BacklogUnavailableError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { kafkaErrorType } from './client.ts';

/** One partition's offsets: `committed` is undefined when the group has committed none there. */
export interface PartitionOffsets {
  readonly topic: string;
  readonly partition: number;
  /** The log end offset (high watermark): the offset the next record will get. */
  readonly end: number;
  /** The log start offset: the oldest record still kept. */
  readonly start: number;
  readonly committed: number | undefined;
}

/**
 * A committed partition's lag: end − committed, records removed by retention (before the log
 * start) not counted, never negative. Undefined without a commit: what that counts as is the
 * caller's rule (the scaler's offsetResetPolicy).
 */
export function committedLag(p: PartitionOffsets): number | undefined {
  return p.committed === undefined ? undefined : Math.max(0, p.end - Math.max(p.committed, p.start));
}

export interface GroupOffsets {
  readonly group: string;
  readonly topics: readonly string[];
  readonly partitions: readonly PartitionOffsets[];
}

export interface OffsetsReaderOptions {
  readonly kafka: Kafka;
  /** Where the brokers are, for messages (never credentials). */
  readonly brokers: string;
  readonly log: Logger;
  /** How long the cluster's topic list and group list are reused. Default 2000 ms. */
  readonly listTtlMs?: number;
}

type ListingKind = 'topics' | 'groups';

/**
 * How long a topic's own admin client stays open without a read: 5 min, ten times KEDA's default
 * polling interval of 30 s, so a polled topic keeps its client and a trigger removed for good does
 * not keep a connection.
 */
export const TOPIC_CLIENT_IDLE_MS = 5 * 60_000;

/** A topic's own admin client (see the header) and when it was last used. */
interface TopicClient {
  /** The client itself, to disconnect whether or not its connect succeeded. */
  readonly raw: Admin;
  /** Resolves once connected. */
  readonly admin: Promise<Admin>;
  usedAt: number;
}

/** One partition's end and start offsets as kafkajs' fetchTopicOffsets gives them. */
type TopicEnds = ReadonlyArray<{ readonly partition: number; readonly high: string; readonly low: string }>;

interface Listing {
  readonly names: ReadonlySet<string>;
  readonly at: number;
}

export class KafkaOffsetsReader {
  readonly #options: OffsetsReaderOptions;
  readonly #ttlMs: number;
  #admin: Promise<Admin> | undefined;
  readonly #listings = new Map<ListingKind, Listing>();
  readonly #topicClients = new Map<string, TopicClient>();
  #sweptAt = performance.now();

  constructor(options: OffsetsReaderOptions) {
    this.#options = options;
    this.#ttlMs = options.listTtlMs ?? 2000;
  }

  /**
   * The group's offsets on `topics`, or on every topic it has committed offsets for when `topics`
   * is empty. Throws BacklogNotFoundError for a missing topic or group, BacklogUnavailableError
   * when the cluster cannot be read.
   */
  async read(group: string, topics: readonly string[], signal: AbortSignal): Promise<GroupOffsets> {
    try {
      return await raceAbort(this.#read(group, topics), signal);
    } catch (err) {
      throw this.#classify(err, group);
    }
  }

  async #read(group: string, wanted: readonly string[]): Promise<GroupOffsets> {
    const admin = await this.#connected();
    let topics = wanted;
    let committedByTopic: Map<string, Map<number, number>>;
    let ends: TopicEnds[];
    if (topics.length === 0) {
      committedByTopic = committedOf(await admin.fetchOffsets({ groupId: group }));
      topics = [...committedByTopic.keys()].sort();
      if (topics.length === 0) {
        throw new BacklogNotFoundError(
          `consumer group ${JSON.stringify(group)} has committed no offsets, so it has no topics to measure: name the topic in the trigger`,
        );
      }
      ends = await Promise.all(topics.map((t) => this.#ends(t)));
    } else {
      const missing = await this.#absent('topics', topics, () => admin.listTopics());
      if (missing.length > 0)
        throw new BacklogNotFoundError(
          `topic ${missing.map((t) => JSON.stringify(t)).join(', ')} does not exist on ${this.#options.brokers}`,
        );
      // All of the group's commits (a partition without one is left out of the answer) beside
      // the named topics' ends.
      const [answer, ...perTopic] = await Promise.all([admin.fetchOffsets({ groupId: group }), ...topics.map((t) => this.#ends(t))]);
      committedByTopic = committedOf(answer);
      ends = perTopic;
    }
    const partitions: PartitionOffsets[] = [];
    topics.forEach((topic, i) => {
      const committed = committedByTopic.get(topic);
      for (const p of ends[i] ?? []) {
        partitions.push({
          topic,
          partition: p.partition,
          end: Number(p.high),
          start: Number(p.low),
          committed: committed?.get(p.partition),
        });
      }
    });
    if (partitions.every((p) => p.committed === undefined)) {
      // No commit anywhere: an empty group that has never committed here, or no group at all.
      const unknown = await this.#absent('groups', [group], async () => (await admin.listGroups()).groups.map((g) => g.groupId));
      if (unknown.length > 0) {
        throw new BacklogNotFoundError(
          `consumer group ${JSON.stringify(group)} does not exist on ${this.#options.brokers} (no member has joined it and it has no committed offsets)`,
        );
      }
    }
    partitions.sort((a, b) => (a.topic === b.topic ? a.partition - b.partition : a.topic < b.topic ? -1 : 1));
    return { group, topics, partitions };
  }

  /** A topic's end and start offsets, on its own admin client; a failed client is dropped. */
  async #ends(topic: string): Promise<TopicEnds> {
    const now = performance.now();
    if (now - this.#sweptAt > TOPIC_CLIENT_IDLE_MS / 10) this.#sweep(now);
    let client = this.#topicClients.get(topic);
    if (!client) {
      const admin = this.#options.kafka.admin();
      client = { raw: admin, admin: admin.connect().then(() => admin), usedAt: now };
      this.#topicClients.set(topic, client);
    }
    client.usedAt = now;
    try {
      return await (await client.admin).fetchTopicOffsets(topic);
    } catch (err) {
      // A topic deleted since, or a broker gone: the next read starts on a new client.
      this.#dropTopicClient(topic, client);
      throw err;
    }
  }

  /** Closes the topic clients no read has used for TOPIC_CLIENT_IDLE_MS. */
  #sweep(now: number): void {
    this.#sweptAt = now;
    for (const [topic, client] of this.#topicClients) {
      if (now - client.usedAt > TOPIC_CLIENT_IDLE_MS) this.#dropTopicClient(topic, client);
    }
  }

  #dropTopicClient(topic: string, client: TopicClient): void {
    if (this.#topicClients.get(topic) === client) this.#topicClients.delete(topic);
    void closeTopicClient(client); // never rejects: both of its paths end in a caught disconnect
  }

  /** How many topics have an admin client of their own now (for tests and benchmarks). */
  get topicClients(): number {
    return this.#topicClients.size;
  }

  /**
   * Those of `names` the cluster does not list, from a listing at most `listTtlMs` old; a name
   * not in it is looked up once more in a fresh one before it is called missing (it may be new).
   */
  async #absent(kind: ListingKind, names: readonly string[], list: () => Promise<string[]>): Promise<string[]> {
    const cached = this.#listings.get(kind);
    let absent = cached && performance.now() - cached.at < this.#ttlMs ? names.filter((n) => !cached.names.has(n)) : [...names];
    if (absent.length > 0) {
      const fresh = { names: new Set(await list()), at: performance.now() };
      this.#listings.set(kind, fresh);
      absent = absent.filter((n) => !fresh.names.has(n));
    }
    return absent;
  }

  #connected(): Promise<Admin> {
    if (!this.#admin) {
      const admin = this.#options.kafka.admin();
      // A listing right away: it loads the broker list (without it a first fetchOffsets finds
      // "no brokers in the broker pool") and proves the credentials (a connect alone does not).
      const connecting = admin
        .connect()
        .then(() => admin.listTopics())
        .then((names) => {
          this.#listings.set('topics', { names: new Set(names), at: performance.now() });
          return admin;
        });
      this.#admin = connecting;
      connecting.catch(() => {
        if (this.#admin === connecting) this.#admin = undefined;
        admin.disconnect().catch(() => undefined);
      });
    }
    return this.#admin;
  }

  /** Typed error for the caller; a connection-level failure drops the admin client so the next read reconnects. */
  #classify(err: unknown, group: string): Error {
    if (err instanceof BacklogNotFoundError || err instanceof BacklogUnavailableError) return err;
    const type = kafkaErrorType(err);
    const brokers = this.#options.brokers;
    if (type === 'GROUP_ID_NOT_FOUND')
      return new BacklogNotFoundError(`consumer group ${JSON.stringify(group)} does not exist on ${brokers}`, { cause: err });
    // Refused access is this trigger's own business: the client, shared by every trigger on the
    // connection, stays.
    if (type?.endsWith('_AUTHORIZATION_FAILED'))
      return new BacklogUnavailableError(
        `Kafka at ${brokers} refused access (${type}) for consumer group ${JSON.stringify(group)}: grant Describe on the group and its topics`,
        { cause: err },
      );
    // Everything else drops the admin client. A topic deleted after this client read it makes
    // kafkajs fail every later metadata refresh with UNKNOWN_TOPIC_OR_PARTITION, for any topic,
    // until the client is replaced; after a broker restart, a new client is as quick as a retry.
    this.#reset();
    if (type === 'UNKNOWN_TOPIC_OR_PARTITION')
      return new BacklogNotFoundError(
        `a topic of consumer group ${JSON.stringify(group)} does not exist on ${brokers}: ${messageOf(err)}`,
        { cause: err },
      );
    if (type === 'SASL_AUTHENTICATION_FAILED')
      return new BacklogUnavailableError(`Kafka at ${brokers} refused the SASL credentials: ${messageOf(err)}`, { cause: err });
    return new BacklogUnavailableError(`cannot read consumer group ${JSON.stringify(group)} from Kafka at ${brokers}: ${messageOf(err)}`, {
      cause: err,
    });
  }

  #reset(): void {
    const admin = this.#admin;
    this.#admin = undefined;
    this.#listings.clear();
    admin?.then((a) => a.disconnect()).catch(() => undefined);
    for (const [topic, client] of this.#topicClients) this.#dropTopicClient(topic, client);
  }

  async close(): Promise<void> {
    const topicClients = [...this.#topicClients.values()];
    this.#topicClients.clear();
    const main = this.#admin;
    this.#admin = undefined;
    // A failed main connect already disconnected its client (#connected).
    await Promise.all([...topicClients.map(closeTopicClient), main?.then((a) => a.disconnect()).catch(() => undefined)]);
  }
}

/**
 * Disconnects a topic's client once its connect has settled, whichever way: a connect that failed
 * half-way (SASL refused after the socket opened) is closed too, and one still under way is not
 * left to finish after the disconnect.
 */
function closeTopicClient(client: TopicClient): Promise<void> {
  const disconnect = (): Promise<void> => client.raw.disconnect().catch(() => undefined); // closing: nothing left to do on failure
  return client.admin.then(disconnect, disconnect);
}

/** fetchOffsets' answer as topic → partition → committed offset, without the "-1" of no commit. */
function committedOf(answer: { topic: string; partitions: { partition: number; offset: string }[] }[]): Map<string, Map<number, number>> {
  const out = new Map<string, Map<number, number>>();
  for (const t of answer) {
    const parts = new Map<number, number>();
    for (const p of t.partitions) {
      const n = Number(p.offset);
      if (Number.isFinite(n) && n >= 0) parts.set(p.partition, n);
    }
    if (parts.size > 0 || t.partitions.length > 0) out.set(t.topic, parts);
  }
  return out;
}
