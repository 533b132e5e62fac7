/**
 * Real-Kafka helpers: a topic and a group of its own per test, records produced to chosen
 * partitions, offsets committed for a group the way a consumer leaves them. Everything made here
 * is deleted in `close`.
 */
import { Kafka, logLevel, type Admin, type Producer } from 'kafkajs';
import { dropTimeoutNegativeWarnings } from '../../kafka/client.ts';
import { commitAsMember } from '../../kafka/group.ts';
import { KAFKA_BROKERS } from './env.ts';
import { uniqueName } from './rabbit.ts';
import { waitUntil } from './wait.ts';

export class KafkaFixture {
  readonly brokers: string;
  readonly kafka: Kafka;
  #admin: Promise<Admin> | undefined;
  #producer: Promise<Producer> | undefined;
  readonly #topics = new Set<string>();
  readonly #groups = new Set<string>();

  constructor(brokers = KAFKA_BROKERS) {
    dropTimeoutNegativeWarnings();
    this.brokers = brokers;
    this.kafka = new Kafka({ clientId: 'kmj-test', brokers: brokers.split(','), logLevel: logLevel.NOTHING, retry: { retries: 5 } });
  }

  admin(): Promise<Admin> {
    this.#admin ??= (async () => {
      const a = this.kafka.admin();
      await a.connect();
      return a;
    })();
    return this.#admin;
  }

  /** Creates a topic of `partitions` partitions, deleted in `close`. */
  async topic(prefix = 't', partitions = 1): Promise<string> {
    const name = uniqueName(prefix);
    const admin = await this.admin();
    this.#topics.add(name);
    try {
      await admin.createTopics({ topics: [{ topic: name, numPartitions: partitions, replicationFactor: 1 }], waitForLeaders: true });
    } catch (err) {
      // waitForLeaders asks a broker whose metadata may trail the controller: the topic is made,
      // its leaders are not known yet. Wait for them here instead.
      if (!(await admin.listTopics()).includes(name)) throw err;
    }
    await waitUntil(
      `the leaders of the ${partitions} partitions of topic ${name}`,
      () => admin.fetchTopicOffsets(name),
      (offsets) => offsets.length === partitions,
      { timeoutMs: 15_000, stepMs: 100 },
    );
    return name;
  }

  /** Deletes in `close` a topic made by someone else (kmj submit). */
  adopt(topic: string): void {
    this.#topics.add(topic);
  }

  /** A group name deleted in `close` (the group itself appears when offsets are committed). */
  group(prefix = 'g'): string {
    const name = uniqueName(prefix);
    this.#groups.add(name);
    return name;
  }

  /** Produces `count` records to one partition, with acks from all in-sync replicas. */
  async produce(topic: string, partition: number, count: number, value: (i: number) => string = (i) => `r${i}`): Promise<void> {
    this.#producer ??= (async () => {
      // Idempotent: a send retried after NOT_LEADER_OR_FOLLOWER on a new topic is not written twice.
      const p = this.kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
      await p.connect();
      return p;
    })();
    const producer = await this.#producer;
    await producer.send({ topic, acks: -1, messages: Array.from({ length: count }, (_, i) => ({ partition, value: value(i) })) });
  }

  /**
   * Commits `offsets` (partition → next offset to read) for `group` as a member of it, as a
   * consumer's commit leaves them (commitAsMember tries three times when its member left before
   * the commit was sent), then reads them back: a commit acknowledged but not seen is an error.
   */
  async commit(group: string, topic: string, offsets: Record<number, number>): Promise<void> {
    this.#groups.add(group);
    const wanted = Object.entries(offsets).map(([p, o]) => ({ partition: Number(p), offset: String(o) }));
    await commitAsMember(this.kafka, group, topic, wanted);
    const seen = await this.committed(group, topic);
    if (!wanted.every((w) => seen[w.partition] === Number(w.offset)))
      throw new Error(`group ${group} on ${topic}: committed ${JSON.stringify(seen)} after a commit of ${JSON.stringify(offsets)}`);
  }

  /** The group's committed offset per partition of `topic` (-1: none). */
  async committed(group: string, topic: string): Promise<Record<number, number>> {
    const admin = await this.admin();
    const [t] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    return Object.fromEntries((t?.partitions ?? []).map((p) => [p.partition, Number(p.offset)]));
  }

  async close(): Promise<void> {
    const admin = await this.#admin?.catch(() => undefined);
    if (admin) {
      if (this.#groups.size > 0) {
        const known = new Set((await admin.listGroups().catch(() => ({ groups: [] }))).groups.map((g) => g.groupId));
        const groups = [...this.#groups].filter((g) => known.has(g));
        if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
      }
      if (this.#topics.size > 0) await admin.deleteTopics({ topics: [...this.#topics] }).catch(() => undefined);
      await admin.disconnect().catch(() => undefined);
    }
    const producer = await this.#producer?.catch(() => undefined);
    await producer?.disconnect().catch(() => undefined);
  }
}
