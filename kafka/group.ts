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
 * - **A commit refused by a rebalance is made again.** kafkajs commits with the generation of its
 *   latest completed join; when another member joins meanwhile (KEDA starts a Job while this one
 *   runs its record), the coordinator answers ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS, and
 *   kafkajs gives up at once (neither is retriable for it). `commit` waits for this member's own
 *   rejoin (bounded by the rebalance timeout) and commits again with the new generation, if the
 *   partition is still its own: the kmj assigner keeps a busy partition with its member, so it
 *   is. Otherwise it throws, and the record goes to the partition's new owner.
 */
import { PartitionAssigners, type Consumer, type ConsumerConfig, type Kafka } from 'kafkajs';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { kmjAssigner, type KmjAssignerOptions } from './assigner.ts';
import { kafkaErrorType } from './client.ts';

export interface GroupMemberOptions extends KmjAssignerOptions {
  readonly groupId: string;
  /** kafkajs consumer settings besides the group, the assigners and the restart rule. */
  readonly consumer?: Omit<ConsumerConfig, 'groupId' | 'partitionAssigners' | 'retry'>;
  /** Where a commit refused by a rebalance is told. */
  readonly log?: Logger;
}

export interface GroupMember {
  readonly consumer: Consumer;
  /** True once `close` has begun. */
  readonly closing: boolean;
  /** Leaves the group and disconnects; the consumer does not come back after this. */
  close(): Promise<void>;
  /** The partitions of `topic` given to this member by its latest join (none before the first). */
  assigned(topic: string): readonly number[];
  /**
   * Commits `offset` (the next one to read) for one partition, and proves it was sent. A commit
   * refused because the group is between generations is made again after this member's rejoin,
   * if the partition is still its own; otherwise it throws, naming why.
   */
  commit(topic: string, partition: number, offset: string): Promise<void>;
}

/** The coordinator's answers that mean "the group moved on since your join": rejoin, then commit. */
const REJOIN_ERRORS: ReadonlySet<string> = new Set(['ILLEGAL_GENERATION', 'REBALANCE_IN_PROGRESS', 'UNKNOWN_MEMBER_ID']);
/** kafkajs' default rebalance timeout, when the member's settings name none. */
const DEFAULT_REBALANCE_TIMEOUT_MS = 60_000;
/** Rejoins a commit waits through before it gives up: each is a rebalance that came between. */
const MAX_COMMIT_REJOINS = 5;

export function groupMember(kafka: Kafka, options: GroupMemberOptions): GroupMember {
  let closing = false;
  const consumer = kafka.consumer({
    ...options.consumer,
    groupId: options.groupId,
    partitionAssigners: [kmjAssigner(options), PartitionAssigners.roundRobin],
    // kafkajs asks this after it has disconnected a crashed consumer, before it schedules the restart.
    retry: { restartOnFailure: () => Promise.resolve(!closing) },
  });
  const rebalanceTimeoutMs = options.consumer?.rebalanceTimeout ?? DEFAULT_REBALANCE_TIMEOUT_MS;
  let joins = 0;
  let assignment: Readonly<Record<string, readonly number[]>> = {};
  const joinWaiters = new Set<() => void>();
  consumer.on(consumer.events.GROUP_JOIN, (event) => {
    joins++;
    assignment = event.payload.memberAssignment;
    for (const wake of joinWaiters) wake();
  });
  /** Resolves once the member has joined more than `after` times; false when `timeoutMs` passes first. */
  const joinedSince = (after: number, timeoutMs: number): Promise<boolean> =>
    new Promise((resolve) => {
      const done = (ok: boolean): void => {
        clearTimeout(timer);
        joinWaiters.delete(check);
        resolve(ok);
      };
      const check = (): void => {
        if (joins > after) done(true);
        else if (closing) done(false);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      joinWaiters.add(check);
      check();
    });
  const assigned = (topic: string): readonly number[] => assignment[topic] ?? [];
  const commit = async (topic: string, partition: number, offset: string): Promise<void> => {
    for (let rejoins = 0; ; rejoins++) {
      const before = joins;
      try {
        await commitOnce(consumer, topic, partition, offset);
        return;
      } catch (err) {
        const type = kafkaErrorType(err);
        if (type === undefined || !REJOIN_ERRORS.has(type) || closing || rejoins >= MAX_COMMIT_REJOINS) throw err;
        options.log?.info({ topic, partition, offset, refused: type }, 'commit refused by a rebalance; committing again after the rejoin');
        if (!(await joinedSince(before, rebalanceTimeoutMs)))
          throw new Error(`the commit was refused (${type}) and the member did not rejoin the group within ${rebalanceTimeoutMs} ms`, {
            cause: err,
          });
        if (!assigned(topic).includes(partition))
          throw new Error(`the commit was refused (${type}): the rebalance gave partition ${partition} of ${topic} to another member`, {
            cause: err,
          });
      }
    }
  };
  return {
    consumer,
    get closing() {
      return closing;
    },
    close: async () => {
      closing = true;
      for (const wake of joinWaiters) wake();
      await consumer.disconnect();
    },
    assigned,
    commit,
  };
}

/**
 * One commit, proved: kafkajs' commitOffsets resolves without sending anything once its consumer
 * has begun to stop, so the commit counts only when kafkajs reports it committed.
 */
async function commitOnce(consumer: Consumer, topic: string, partition: number, offset: string): Promise<void> {
  let committed = false;
  const stopListening = consumer.on(consumer.events.COMMIT_OFFSETS, (event) => {
    for (const t of event.payload.topics) {
      if (t.topic === topic && t.partitions.some((p) => Number(p.partition) === partition && String(p.offset) === offset)) committed = true;
    }
  });
  try {
    await consumer.commitOffsets([{ topic, partition, offset }]);
  } catch (err) {
    throw new Error(`commit of ${topic}/${partition} at ${offset} failed: ${messageOf(err)}`, { cause: err });
  } finally {
    stopListening();
  }
  if (!committed) throw new Error('the consumer stopped before the offset was committed');
}

/** Times commitAsMember joins and commits before it gives up: a rebalance as the group forms can end a try. */
const COMMIT_AS_MEMBER_TRIES = 3;

/**
 * Commits `offsets` (partition → next offset to read) for `group` as a consumer does: joins the
 * group, commits, leaves. (admin.setOffsets does the same but waits out a 5 s fetch.) It joins
 * with no capacity, so it is given no partition, and never reads a record. A try that ends before
 * the commit was sent (the member left as the group rebalanced) is made again, up to
 * COMMIT_AS_MEMBER_TRIES times.
 */
export async function commitAsMember(
  kafka: Kafka,
  group: string,
  topic: string,
  offsets: readonly { partition: number; offset: string }[],
): Promise<void> {
  for (let tries = 1; ; tries++) {
    if (await commitAsMemberOnce(kafka, group, topic, offsets)) return;
    if (tries >= COMMIT_AS_MEMBER_TRIES)
      throw new Error(
        `the offsets of group ${group} on topic ${topic} were not committed: the member left the group before the commit, ${tries} times`,
      );
  }
}

/** One join, commit and leave; false when the commit was not sent. */
async function commitAsMemberOnce(
  kafka: Kafka,
  group: string,
  topic: string,
  offsets: readonly { partition: number; offset: string }[],
): Promise<boolean> {
  const member = groupMember(kafka, {
    groupId: group,
    state: () => ({ capacity: 0, busy: {} }),
    consumer: { maxWaitTimeInMs: 100, sessionTimeout: 10_000, heartbeatInterval: 3000 },
  });
  const { consumer } = member;
  await consumer.connect();
  try {
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    await consumer.subscribe({ topic, fromBeginning: true });
    // autoCommit off and a handler that does nothing: the only commit is the one below.
    await consumer.run({ autoCommit: false, eachMessage: () => Promise.resolve() });
    await joined;
    // kafkajs returns without an error, and without committing, when its consumer stopped running
    // in between (a rebalance as the group forms): the commit counts only when it was sent.
    let sent = false;
    const off = consumer.on(consumer.events.COMMIT_OFFSETS, (e) => {
      if (e.payload.topics.some((t) => t.topic === topic)) sent = true;
    });
    await consumer.commitOffsets(offsets.map((o) => ({ topic, partition: o.partition, offset: o.offset })));
    off();
    return sent;
  } finally {
    await member.close();
  }
}
