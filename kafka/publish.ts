/**
 * Publishing requests to a topic (`kmj submit --topic`), and making a consumer group exist before
 * any worker has run, so the scaler sees its lag (a group that does not exist is NOT_FOUND).
 */
import type { Kafka } from 'kafkajs';
import { raceAbort } from '../common/abort.ts';
import { commitAsMember } from './group.ts';

export interface KafkaRecord {
  readonly requestId: string;
  readonly body: Buffer;
}

/**
 * Sends records with acks from all in-sync replicas from an idempotent producer (a retried send is
 * not written twice), keyed by request id (a request sent again lands on the same partition,
 * behind the first). Resolves with the ids the brokers acknowledged, in order; throws
 * KafkaPublishError carrying those acknowledged before a failure.
 */
export async function publishRecords(
  kafka: Kafka,
  topic: string,
  records: readonly KafkaRecord[],
  signal: AbortSignal,
  onAcked: (ids: readonly string[]) => void,
): Promise<void> {
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  const acked: string[] = [];
  try {
    await raceAbort(producer.connect(), signal);
    for (let i = 0; i < records.length; i += 200) {
      const part = records.slice(i, i + 200);
      await raceAbort(
        producer.send({
          topic,
          acks: -1,
          messages: part.map((r) => ({ key: r.requestId, value: r.body, headers: { 'content-type': 'application/json' } })),
        }),
        signal,
      );
      const ids = part.map((r) => r.requestId);
      acked.push(...ids);
      onAcked(ids);
    }
  } catch (err) {
    throw new KafkaPublishError(
      `publishing to topic ${JSON.stringify(topic)} failed after ${acked.length} of ${records.length} records: ${(err as Error).message}`,
      acked,
      { cause: err },
    );
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
}

export class KafkaPublishError extends Error {
  override readonly name = 'KafkaPublishError';
  readonly acked: readonly string[];
  constructor(message: string, acked: readonly string[], options?: ErrorOptions) {
    super(message, options);
    this.acked = acked;
  }
}

/**
 * Makes `group` exist with a commit at the start of each partition of `topic` that it has no
 * commit for, as a consumer does: joins, commits, leaves. Every record on the topic then counts
 * as lag. A group that already exists is left alone; false then.
 */
export async function ensureGroup(kafka: Kafka, group: string, topic: string): Promise<boolean> {
  const admin = kafka.admin();
  await admin.connect();
  let starts: { partition: number; offset: string }[];
  try {
    const groups = await admin.listGroups();
    if (groups.groups.some((g) => g.groupId === group)) return false;
    starts = (await admin.fetchTopicOffsets(topic)).map((p) => ({ partition: p.partition, offset: p.low }));
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  await commitAsMember(kafka, group, topic, starts);
  return true;
}
