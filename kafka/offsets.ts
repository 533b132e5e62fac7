/**
 * Reads a consumer group's committed offsets and its topics' end offsets, the figures lag is made
 * of, for the scaler (scaler/sources/kafka.ts) and `kmj status --kafka`. Offsets only: group
 * state is never used, since Kafka 4's consumer-group protocol (KIP-848) makes classic
 * DescribeGroups report an active group as Dead with no members.
 *
 * One read is three requests side by side: OffsetFetch to the group's coordinator (all of the
 * group's commits), and ListOffsets, latest and earliest, to the leaders of the topics' partitions.
 * What they need is kept between reads: each group's coordinator, and every topic's partition
 * leaders from the cluster's topic listing, which also says whether a named topic exists (one
 * Metadata request for all topics, reused for `listTtlMs`). A request that fails on what was kept
 * is made again at once on what the cluster says now (FindCoordinator, a fresh listing), so a
 * moved coordinator or leader costs a request, not a failed read. Reads started in the same turn
 * of the event loop (the scaler starts the reads due at a tick of its loop together) share their
 * ListOffsets: one pair per partition leader for all of their topics; when that fails, each
 * topic's pair is made alone, so a deleted topic fails only the reads that name it.
 *
 * kafkajs' admin client made each read five requests (FindCoordinator and a Metadata refresh before
 * every OffsetFetch and ListOffsets pair); the requests here go through kafkajs' own Cluster and
 * Broker, below its admin client (kafka/cluster.ts). Bench: `make bench-kafka` (docs/benchmarks.md).
 */
import type { Admin, Kafka } from 'kafkajs';
import { raceAbort } from '../common/abort.ts';
import { BacklogNotFoundError, BacklogUnavailableError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { kafkaErrorType } from './client.ts';
import { clusterOf, EARLIEST_OFFSET, LATEST_OFFSET, type Cluster, type ClusterBroker, type TopicMetadata } from './cluster.ts';

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
  /** Makes the Cluster the requests go through. Default: kafkajs' own, of `kafka` (kafka/cluster.ts). */
  readonly createCluster?: (kafka: Kafka) => Cluster;
}

/**
 * How many groups' coordinators are kept: beyond it the whole map is dropped and coordinators are
 * found anew, so groups read once (a removed trigger, `kmj status`) do not pile up. A scaler
 * serving more groups than this pays one FindCoordinator per group and wrap.
 */
const MAX_KEPT_COORDINATORS = 4096;

/** One partition's end and start offsets. */
type TopicEnds = ReadonlyArray<{ readonly partition: number; readonly end: number; readonly start: number }>;

/** The cluster's topics and their partitions' leaders, as one Metadata request for all gave them. */
interface TopicListing {
  readonly partitions: ReadonlyMap<string, TopicMetadata['partitionMetadata']>;
  readonly at: number;
}

interface GroupListing {
  readonly names: ReadonlySet<string>;
  readonly at: number;
}

/** A read waiting for a topic's ends from the next shared ListOffsets. */
interface EndsWaiter {
  readonly resolve: (ends: TopicEnds) => void;
  readonly reject: (err: unknown) => void;
}

export class KafkaOffsetsReader {
  readonly #options: OffsetsReaderOptions;
  readonly #ttlMs: number;
  #cluster: Promise<Cluster> | undefined;
  /** For the group listing only (a group with no commit anywhere): made on first need. */
  #admin: Promise<Admin> | undefined;
  #topics: TopicListing | undefined;
  /** The listing request under way, if any. */
  #listing: Promise<TopicListing> | undefined;
  #groups: GroupListing | undefined;
  /** Each group's coordinator, by node id, since its last successful OffsetFetch. */
  readonly #coordinators = new Map<string, number>();
  /** Topics whose ends reads of this turn of the event loop wait for, with their readers. */
  #pending: Map<string, EndsWaiter[]> | undefined;
  #batches = 0;
  #closed = false;

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
    const cluster = await this.#connected();
    let topics = wanted;
    let committedByTopic: Map<string, Map<number, number>>;
    let ends: TopicEnds[];
    if (topics.length === 0) {
      committedByTopic = await this.#committed(cluster, group);
      topics = [...committedByTopic.keys()].sort();
      if (topics.length === 0) {
        throw new BacklogNotFoundError(
          `consumer group ${JSON.stringify(group)} has committed no offsets, so it has no topics to measure: name the topic in the trigger`,
        );
      }
      await this.#listed(cluster, topics);
      ends = await Promise.all(topics.map((t) => this.#ends(t)));
    } else {
      await this.#listed(cluster, topics);
      // All of the group's commits (a partition without one is left out of the answer) beside
      // the named topics' ends.
      const [answer, ...perTopic] = await Promise.all([this.#committed(cluster, group), ...topics.map((t) => this.#ends(t))]);
      committedByTopic = answer;
      ends = perTopic;
    }
    const partitions: PartitionOffsets[] = [];
    topics.forEach((topic, i) => {
      const committed = committedByTopic.get(topic);
      for (const p of ends[i] ?? []) {
        partitions.push({ topic, partition: p.partition, end: p.end, start: p.start, committed: committed?.get(p.partition) });
      }
    });
    if (partitions.every((p) => p.committed === undefined)) {
      // No commit anywhere: an empty group that has never committed here, or no group at all.
      if (!(await this.#groupListed(group))) {
        throw new BacklogNotFoundError(
          `consumer group ${JSON.stringify(group)} does not exist on ${this.#options.brokers} (no member has joined it and it has no committed offsets)`,
        );
      }
    }
    partitions.sort((a, b) => (a.topic === b.topic ? a.partition - b.partition : a.topic < b.topic ? -1 : 1));
    return { group, topics, partitions };
  }

  /**
   * All of the group's commits, from its coordinator. A coordinator kept from an earlier read that
   * fails (moved: NOT_COORDINATOR; loading; its broker gone) is forgotten and the group's
   * coordinator found anew at once, so a move costs a request, not a failed read.
   */
  async #committed(cluster: Cluster, group: string): Promise<Map<string, Map<number, number>>> {
    const kept = this.#coordinators.get(group);
    if (kept !== undefined) {
      try {
        return committedOf((await (await cluster.findBroker({ nodeId: kept })).offsetFetch({ groupId: group, topics: [] })).responses);
      } catch {
        this.#coordinators.delete(group); // found anew below; a failure there is the read's
      }
    }
    const coordinator = await cluster.findGroupCoordinator({ groupId: group });
    const answer = await coordinator.offsetFetch({ groupId: group, topics: [] });
    if (coordinator.nodeId !== null) {
      if (this.#coordinators.size >= MAX_KEPT_COORDINATORS) this.#coordinators.clear();
      this.#coordinators.set(group, coordinator.nodeId);
    }
    return committedOf(answer.responses);
  }

  /**
   * A listing of the cluster's topics with every one of `topics` in it, at most `listTtlMs` old;
   * a name not in it is looked up once more in a fresh one before it is called missing (it may be
   * new): BacklogNotFoundError names those still missing. Reads wanting a fresh listing at once
   * share its request.
   */
  async #listed(cluster: Cluster, topics: readonly string[]): Promise<TopicListing> {
    const cached = this.#topics;
    if (cached !== undefined && performance.now() - cached.at < this.#ttlMs && topics.every((t) => cached.partitions.has(t))) return cached;
    this.#listing ??= (async (): Promise<TopicListing> => {
      try {
        const broker = await cluster.findControllerBroker();
        const { topicMetadata } = await broker.metadata([]); // no topic named: all of them
        const listing = { partitions: new Map(topicMetadata.map((t) => [t.topic, t.partitionMetadata])), at: performance.now() };
        this.#topics = listing;
        return listing;
      } finally {
        this.#listing = undefined;
      }
    })();
    const listing = await this.#listing;
    const missing = topics.filter((t) => !listing.partitions.has(t));
    if (missing.length > 0)
      throw new BacklogNotFoundError(
        `topic ${missing.map((t) => JSON.stringify(t)).join(', ')} does not exist on ${this.#options.brokers}`,
      );
    return listing;
  }

  /** Whether the cluster lists the group, from a listing at most `listTtlMs` old or a fresh one. */
  async #groupListed(group: string): Promise<boolean> {
    const cached = this.#groups;
    if (cached !== undefined && performance.now() - cached.at < this.#ttlMs && cached.names.has(group)) return true;
    const { groups } = await (await this.#groupAdmin()).listGroups();
    const listing: GroupListing = { names: new Set(groups.map((g) => g.groupId)), at: performance.now() };
    this.#groups = listing;
    return listing.names.has(group);
  }

  /** A topic's end and start offsets, from the ListOffsets this turn of the event loop shares. */
  #ends(topic: string): Promise<TopicEnds> {
    let pending = this.#pending;
    if (pending === undefined) {
      const batch = new Map<string, EndsWaiter[]>();
      pending = batch;
      this.#pending = batch;
      setImmediate(() => {
        this.#pending = undefined;
        void this.#flush(batch);
      });
    }
    return new Promise<TopicEnds>((resolve, reject) => {
      const waiters = pending.get(topic);
      if (waiters) waiters.push({ resolve, reject });
      else pending.set(topic, [{ resolve, reject }]);
    });
  }

  /** One shared ListOffsets pair per leader; when it fails, one pair per topic. Never rejects. */
  async #flush(batch: Map<string, EndsWaiter[]>): Promise<void> {
    this.#batches++;
    const settle = (topic: string, outcome: { ends: TopicEnds } | { err: unknown }): void => {
      for (const w of batch.get(topic) ?? []) {
        if ('ends' in outcome) w.resolve(outcome.ends);
        else w.reject(outcome.err);
      }
    };
    const topics = [...batch.keys()];
    try {
      const all = await this.#listOffsets(topics);
      for (const t of topics) settle(t, { ends: all.get(t) ?? [] });
      return;
    } catch {
      // Made again per topic, on a fresh listing (#listOffsets dropped the one that failed): a
      // moved leader costs a request, not a failed read, and a deleted topic fails only its own.
    }
    await Promise.all(
      topics.map(async (t) => {
        try {
          settle(t, { ends: (await this.#listOffsets([t])).get(t) ?? [] });
        } catch (err) {
          settle(t, { err });
        }
      }),
    );
  }

  /** The topics' ends and starts: ListOffsets, latest and earliest side by side, to each partition leader. */
  async #listOffsets(topics: readonly string[]): Promise<Map<string, TopicEnds>> {
    const cluster = await this.#connected();
    const listing = await this.#listed(cluster, topics);
    try {
      const byLeader = new Map<number, Map<string, number[]>>();
      // Every listed partition gets a row; one missing from an answer fails the read below.
      const ends = new Map<string, Map<number, { end?: number; start?: number }>>();
      for (const topic of topics) {
        const rows = new Map<number, { end?: number; start?: number }>();
        ends.set(topic, rows);
        for (const p of listing.partitions.get(topic) ?? []) {
          rows.set(p.partitionId, {});
          if (p.leader < 0) throw new BacklogUnavailableError(`partition ${p.partitionId} of topic ${JSON.stringify(topic)} has no leader`);
          const leaderTopics = byLeader.get(p.leader) ?? new Map<string, number[]>();
          byLeader.set(p.leader, leaderTopics);
          const ids = leaderTopics.get(topic);
          if (ids) ids.push(p.partitionId);
          else leaderTopics.set(topic, [p.partitionId]);
        }
      }
      const ask = async (broker: ClusterBroker, leaderTopics: Map<string, number[]>, timestamp: number): Promise<void> => {
        const request = [...leaderTopics].map(([topic, ids]) => ({
          topic,
          partitions: ids.map((partition) => ({ partition, timestamp })),
        }));
        for (const t of (await broker.listOffsets({ topics: request })).responses) {
          const byPartition = ends.get(t.topic);
          for (const p of t.partitions) {
            const entry = byPartition?.get(p.partition);
            if (entry === undefined) continue; // not asked for
            if (timestamp === LATEST_OFFSET) entry.end = Number(p.offset);
            else entry.start = Number(p.offset);
          }
        }
      };
      await Promise.all(
        [...byLeader].map(async ([nodeId, leaderTopics]) => {
          const broker = await cluster.findBroker({ nodeId });
          await Promise.all([ask(broker, leaderTopics, LATEST_OFFSET), ask(broker, leaderTopics, EARLIEST_OFFSET)]);
        }),
      );
      const out = new Map<string, TopicEnds>();
      for (const [topic, byPartition] of ends) {
        const rows: { partition: number; end: number; start: number }[] = [];
        for (const [partition, { end, start }] of byPartition) {
          if (end === undefined || start === undefined || !Number.isFinite(end) || !Number.isFinite(start)) {
            throw new BacklogUnavailableError(
              `Kafka at ${this.#options.brokers} did not answer for partition ${partition} of topic ${JSON.stringify(topic)}`,
            );
          }
          rows.push({ partition, end, start });
        }
        out.set(
          topic,
          rows.sort((a, b) => a.partition - b.partition),
        );
      }
      return out;
    } catch (err) {
      // A leader moved, or a topic deleted or re-made since the listing: the next read lists anew.
      if (this.#topics === listing) this.#topics = undefined;
      throw err;
    }
  }

  /** How many shared ListOffsets rounds have been made (for tests and benchmarks). */
  get batches(): number {
    return this.#batches;
  }

  #connected(): Promise<Cluster> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (!this.#cluster) {
      const cluster = (this.#options.createCluster ?? clusterOf)(this.#options.kafka);
      // Connect, then the broker list (Metadata), which also proves the credentials (a connect
      // alone does not).
      const connecting = cluster
        .connect()
        .then(() => cluster.refreshMetadata())
        .then(() => cluster);
      this.#cluster = connecting;
      connecting.catch(() => {
        if (this.#cluster === connecting) this.#cluster = undefined;
        cluster.disconnect().catch(() => undefined); // closing after a failure: nothing more to do
      });
    }
    return this.#cluster;
  }

  #closedError(): Error {
    return new BacklogUnavailableError(`the reader of Kafka at ${this.#options.brokers} is closed`);
  }

  #groupAdmin(): Promise<Admin> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (!this.#admin) {
      const admin = this.#options.kafka.admin();
      const connecting = admin.connect().then(() => admin);
      this.#admin = connecting;
      connecting.catch(() => {
        if (this.#admin === connecting) this.#admin = undefined;
        admin.disconnect().catch(() => undefined); // closing after a failure: nothing more to do
      });
    }
    return this.#admin;
  }

  /** Typed error for the caller; a connection-level failure drops the clients so the next read reconnects. */
  #classify(err: unknown, group: string): Error {
    if (err instanceof BacklogNotFoundError || err instanceof BacklogUnavailableError) return err;
    const type = kafkaErrorType(err);
    const brokers = this.#options.brokers;
    if (type === 'GROUP_ID_NOT_FOUND')
      return new BacklogNotFoundError(`consumer group ${JSON.stringify(group)} does not exist on ${brokers}`, { cause: err });
    // Refused access is this trigger's own business: the clients, shared by every trigger on the
    // connection, stay.
    if (type?.endsWith('_AUTHORIZATION_FAILED'))
      return new BacklogUnavailableError(
        `Kafka at ${brokers} refused access (${type}) for consumer group ${JSON.stringify(group)}: grant Describe on the group and its topics`,
        { cause: err },
      );
    // A topic deleted after the listing: only the listing goes (#listOffsets dropped it).
    if (type === 'UNKNOWN_TOPIC_OR_PARTITION')
      return new BacklogNotFoundError(
        `a topic of consumer group ${JSON.stringify(group)} does not exist on ${brokers}: ${messageOf(err)}`,
        { cause: err },
      );
    // Everything else drops the connections: after a broker restart, new ones are as quick as a retry.
    void this.#reset();
    if (type === 'SASL_AUTHENTICATION_FAILED')
      return new BacklogUnavailableError(`Kafka at ${brokers} refused the SASL credentials: ${messageOf(err)}`, { cause: err });
    return new BacklogUnavailableError(`cannot read consumer group ${JSON.stringify(group)} from Kafka at ${brokers}: ${messageOf(err)}`, {
      cause: err,
    });
  }

  /**
   * Forgets every connection and what was kept; resolves once they are closed, never rejects (a
   * failed connect already disconnected its client: #connected, #groupAdmin).
   */
  async #reset(): Promise<void> {
    const [cluster, admin] = [this.#cluster, this.#admin];
    this.#cluster = undefined;
    this.#admin = undefined;
    this.#topics = undefined;
    this.#groups = undefined;
    this.#coordinators.clear();
    await Promise.all([
      cluster?.then((c) => c.disconnect()).catch(() => undefined), // dropping: nothing more to do on failure
      admin?.then((a) => a.disconnect()).catch(() => undefined),
    ]);
  }

  /** Closes the connections; a read under way or started later fails. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#reset();
  }
}

/** OffsetFetch's answer as topic → partition → committed offset, without the "-1" of no commit. */
function committedOf(
  answer: ReadonlyArray<{
    readonly topic: string;
    readonly partitions: ReadonlyArray<{ readonly partition: number; readonly offset: string }>;
  }>,
): Map<string, Map<number, number>> {
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
