/**
 * The request topic's conventions, shared by the worker and the CLI: the dead-letter topic's
 * name, the record headers the worker writes, and creating a topic where it is missing (brokers
 * here run with auto.create.topics.enable=false, as production brokers should).
 */
import type { Admin } from 'kafkajs';
import { textOf } from '../common/text.ts';

/** `<topic>.dead`, as `<queue>.dead` for RabbitMQ. */
export function deadLetterTopicOf(topic: string): string {
  return `${topic}.dead`;
}

/** Headers of records the worker writes: a dead letter's reason, a retried record's attempt. */
export const KAFKA_HEADERS = {
  /** On a record put back on the request topic after a transient failure: its next attempt. */
  attempt: 'kmj-delivery-attempt',
  reason: 'kmj-dead-letter-reason',
  field: 'kmj-dead-letter-field',
  at: 'kmj-dead-lettered-at',
  topic: 'kmj-source-topic',
  partition: 'kmj-source-partition',
  offset: 'kmj-source-offset',
  runId: 'kmj-run-id',
} as const;

/** A header's value as text (kafkajs gives Buffers, or arrays of them for repeated headers). */
export function headerText(headers: Record<string, unknown> | undefined, name: string): string | undefined {
  const v = headers?.[name];
  const one: unknown = Array.isArray(v) ? v[v.length - 1] : v;
  if (one === undefined || one === null) return undefined;
  return Buffer.isBuffer(one) ? one.toString('utf8') : textOf(one);
}

/**
 * Creates `topic` with `partitions` partitions unless it exists; true when it was created. The
 * replication factor is the broker's default (-1), so a three-broker cluster gets three copies.
 */
export async function ensureTopic(admin: Admin, topic: string, partitions: number, listed?: readonly string[]): Promise<boolean> {
  // `listed`: the cluster's topics, when the caller has just listed them.
  const existing = listed ?? (await admin.listTopics());
  if (existing.includes(topic)) return false;
  try {
    return await admin.createTopics({ topics: [{ topic, numPartitions: partitions, replicationFactor: -1 }], waitForLeaders: true });
  } catch (err) {
    // Another worker made it between the listing and the create.
    if ((err as { type?: unknown }).type === 'TOPIC_ALREADY_EXISTS') return false;
    const inner = (err as { errors?: { type?: unknown }[] }).errors;
    if (inner?.every((e) => e.type === 'TOPIC_ALREADY_EXISTS')) return false;
    // Made, but waiting for its leaders asked a broker whose metadata trails the controller
    // (UNKNOWN_TOPIC_OR_PARTITION): producers retry until the leaders are known.
    if ((await admin.listTopics()).includes(topic)) return true;
    throw err;
  }
}
