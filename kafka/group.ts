/**
 * Membership of a workers' consumer group, for every member the project makes: the worker
 * (worker/kafka-consumer.ts) and the one-off member that makes a group exist (`commitAsMember`:
 * `kmj submit --kafka --group`, the tests). Two things kafkajs 2.2.4 does not do on its own:
 *
 * - **A closed member stays closed.** kafkajs restarts a consumer that crashed with a retriable
 *   error, and it decides so after its own disconnect: when the crash comes while the application
 *   is closing the consumer (the last retry of a failing fetch, a coordinator not yet loaded on a
 *   fresh broker), the application's disconnect resolves, and a moment later the consumer joins
 *   the group again by itself, for as long as the process lives. Such a member takes partitions
 *   in every rebalance and never commits: the records there are never run while the group's lag
 *   says they wait (test/worker/kafka-group.test.ts shows both). Here a restart is refused once
 *   `close` has begun.
 * - **The kmj assigner** (kafka/assigner.ts): busy partitions stay with their member, leaving
 *   members get nothing, waiting records are shared out first. kafkajs' round-robin is listed
 *   second, so a group that still has members of an older worker (which offer only round-robin)
 *   keeps working during an upgrade.
 */
import { PartitionAssigners, type Consumer, type ConsumerConfig, type Kafka } from 'kafkajs';
import { kmjAssigner, type KmjAssignerOptions } from './assigner.ts';

export interface GroupMemberOptions extends KmjAssignerOptions {
  readonly groupId: string;
  /** kafkajs consumer settings besides the group, the assigners and the restart rule. */
  readonly consumer?: Omit<ConsumerConfig, 'groupId' | 'partitionAssigners' | 'retry'>;
}

export interface GroupMember {
  readonly consumer: Consumer;
  /** True once `close` has begun. */
  readonly closing: boolean;
  /** Leaves the group and disconnects; the consumer does not come back after this. */
  close(): Promise<void>;
}

export function groupMember(kafka: Kafka, options: GroupMemberOptions): GroupMember {
  let closing = false;
  const consumer = kafka.consumer({
    ...options.consumer,
    groupId: options.groupId,
    partitionAssigners: [kmjAssigner(options), PartitionAssigners.roundRobin],
    // kafkajs asks this after it has disconnected a crashed consumer, before it schedules the restart.
    retry: { restartOnFailure: async () => !closing },
  });
  return {
    consumer,
    get closing() {
      return closing;
    },
    close: async () => {
      closing = true;
      await consumer.disconnect();
    },
  };
}

/**
 * Commits `offsets` (partition → next offset to read) for `group` as a consumer does: joins the
 * group, commits, leaves. (admin.setOffsets does the same but waits out a 5 s fetch.) It joins
 * with no capacity, so it is given no partition, and never reads a record.
 */
export async function commitAsMember(kafka: Kafka, group: string, topic: string, offsets: readonly { partition: number; offset: string }[]): Promise<void> {
  const member = groupMember(kafka, { groupId: group, state: () => ({ capacity: 0, busy: {} }), consumer: { maxWaitTimeInMs: 100, sessionTimeout: 10_000, heartbeatInterval: 3000 } });
  const { consumer } = member;
  await consumer.connect();
  try {
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    await consumer.subscribe({ topic, fromBeginning: true });
    // autoCommit off and a handler that does nothing: the only commit is the one below.
    await consumer.run({ autoCommit: false, eachMessage: async () => undefined });
    await joined;
    // kafkajs returns without an error, and without committing, when its consumer stopped running
    // in between (a rebalance as the group forms): the commit counts only when it was sent.
    let sent = false;
    const off = consumer.on(consumer.events.COMMIT_OFFSETS, (e) => {
      if (e.payload.topics.some((t) => t.topic === topic)) sent = true;
    });
    await consumer.commitOffsets(offsets.map((o) => ({ topic, partition: o.partition, offset: o.offset })));
    off();
    if (!sent) throw new Error(`the offsets of group ${group} on topic ${topic} were not committed: the member left the group first; try again`);
  } finally {
    await member.close();
  }
}
