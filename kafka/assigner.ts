/**
 * The partition assigner of the workers' consumer groups: who reads which partition after a
 * rebalance. kafkajs speaks the classic group protocol, where the group's leader (one of the
 * members) computes the assignment; this is what it computes with.
 *
 * Each member says, every time it joins, what it can take (`MemberState` in the join's user data):
 * how many more records it will take (`capacity`, 0 once it is leaving or has its
 * --max-messages), and the partitions whose record it is working on (`busy`). Then:
 *
 * 1. a busy partition stays with its member, so a record in progress is never handed to a second
 *    worker (the worker commits it after its run is FINISHED, see worker/kafka-consumer.ts);
 * 2. a member with no capacity gets nothing else: a worker on its way out never holds partitions
 *    another worker could read;
 * 3. the other partitions go round-robin to the members with capacity, those with waiting
 *    records first, so that every such member gets a partition with work before any gets a second.
 *    Waiting records come from the group's offsets when the leader can read them (`lagOf`); without
 *    them the order is the partitions' own.
 *
 * Plain round-robin (kafkajs' default) ignores all three: a worker busy with one record also holds
 * partitions with waiting records, and a member that is leaving, or one that never reads (see
 * kafka/group.ts), is given partitions like any other.
 */
import { AssignerProtocol, type GroupMember, type GroupMemberAssignment, type PartitionAssigner } from 'kafkajs';

export const KMJ_ASSIGNER_NAME = 'KmjAssigner';
const VERSION = 1;

/** What a member says of itself when it joins. */
export interface MemberState {
  /** Records it will still take; 0 when it takes no more (leaving, or done). */
  readonly capacity: number;
  /** Per topic, the partitions whose record it holds (taken, not yet committed). */
  readonly busy: Readonly<Record<string, readonly number[]>>;
}

export const LEAVING: MemberState = { capacity: 0, busy: {} };

/** One partition as the leader sees it: `waiting` is its lag (unknown when the offsets could not be read). */
export interface PartitionView {
  readonly topic: string;
  readonly partition: number;
  readonly waiting: number | undefined;
}

export interface MemberView {
  readonly memberId: string;
  readonly state: MemberState;
}

/** Per member, per topic, its partitions (sorted). Members that get nothing have no entry. */
export type Assignment = Map<string, Map<string, number[]>>;

/** The rules above, as a pure function (pinned by test/unit/kafka-assigner.test.ts). */
export function assignPartitions(members: readonly MemberView[], partitions: readonly PartitionView[]): Assignment {
  const out: Assignment = new Map();
  const give = (memberId: string, topic: string, partition: number): void => {
    let topics = out.get(memberId);
    if (!topics) out.set(memberId, (topics = new Map<string, number[]>()));
    let list = topics.get(topic);
    if (!list) topics.set(topic, (list = []));
    list.push(partition);
  };
  const sorted = [...members].sort((a, b) => (a.memberId < b.memberId ? -1 : a.memberId > b.memberId ? 1 : 0));
  const key = (topic: string, partition: number): string => `${topic}\u0000${partition}`;
  const known = new Set(partitions.map((p) => key(p.topic, p.partition)));
  const taken = new Set<string>();
  // 1. Busy partitions stay where their record is (the first claim, should two members claim one).
  for (const m of sorted) {
    for (const [topic, list] of Object.entries(m.state.busy)) {
      for (const partition of list) {
        const k = key(topic, partition);
        if (!known.has(k) || taken.has(k)) continue;
        taken.add(k);
        give(m.memberId, topic, partition);
      }
    }
  }
  // 2 and 3. The rest to members with capacity: partitions with waiting records first, then the
  // others, in one round-robin so that the members share both kinds evenly.
  const takers = sorted.filter((m) => m.state.capacity > 0);
  if (takers.length > 0) {
    const free = partitions.filter((p) => !taken.has(key(p.topic, p.partition)));
    const order = [...free].sort((a, b) => {
      const wa = (a.waiting ?? 0) > 0 ? 0 : 1;
      const wb = (b.waiting ?? 0) > 0 ? 0 : 1;
      if (wa !== wb) return wa - wb;
      return a.topic === b.topic ? a.partition - b.partition : a.topic < b.topic ? -1 : 1;
    });
    order.forEach((p, i) => {
      const m = takers[i % takers.length];
      if (m) give(m.memberId, p.topic, p.partition);
    });
  }
  for (const topics of out.values()) for (const list of topics.values()) list.sort((a, b) => a - b);
  return out;
}

/** A member's state from its join metadata; a member that says nothing parseable takes nothing. */
export function decodeMemberState(userData: Buffer | undefined): MemberState {
  if (!userData || userData.length === 0) return LEAVING;
  try {
    const v = JSON.parse(userData.toString('utf8')) as { capacity?: unknown; busy?: unknown };
    const capacity = typeof v.capacity === 'number' && Number.isSafeInteger(v.capacity) && v.capacity >= 0 ? v.capacity : 0;
    const busy: Record<string, number[]> = {};
    if (v.busy && typeof v.busy === 'object') {
      for (const [topic, list] of Object.entries(v.busy as Record<string, unknown>)) {
        if (Array.isArray(list)) busy[topic] = list.filter((n): n is number => Number.isSafeInteger(n) && (n as number) >= 0);
      }
    }
    return { capacity, busy };
  } catch {
    // Not ours (another client's user data): such a member is given nothing it could sit on.
    return LEAVING;
  }
}

export function encodeMemberState(state: MemberState): Buffer {
  return Buffer.from(JSON.stringify({ capacity: state.capacity, busy: state.busy }), 'utf8');
}

export interface KmjAssignerOptions {
  /** This member's state, read at each join. */
  readonly state: () => MemberState;
  /**
   * The waiting records per partition of `topic`, for the leader; undefined or a failure means
   * unknown. Bounded by the caller: the whole group waits for the assignment.
   */
  readonly lagOf?: (topic: string) => Promise<ReadonlyMap<number, number> | undefined>;
}

/** The assigner for kafkajs' `partitionAssigners`. */
export function kmjAssigner(options: KmjAssignerOptions): PartitionAssigner {
  return ({ cluster }) => ({
    name: KMJ_ASSIGNER_NAME,
    version: VERSION,
    protocol: ({ topics }) => ({
      name: KMJ_ASSIGNER_NAME,
      metadata: AssignerProtocol.MemberMetadata.encode({ version: VERSION, topics, userData: encodeMemberState(options.state()) }),
    }),
    assign: async ({ members, topics }: { members: GroupMember[]; topics: string[] }): Promise<GroupMemberAssignment[]> => {
      const views: MemberView[] = members.map((m) => ({
        memberId: m.memberId,
        state: decodeMemberState(AssignerProtocol.MemberMetadata.decode(m.memberMetadata)?.userData),
      }));
      const partitions: PartitionView[] = [];
      for (const topic of topics) {
        const lag = options.lagOf ? await options.lagOf(topic).catch(() => undefined) : undefined;
        for (const meta of cluster.findTopicPartitionMetadata(topic)) {
          partitions.push({ topic, partition: meta.partitionId, waiting: lag?.get(meta.partitionId) });
        }
      }
      const assignment = assignPartitions(views, partitions);
      // Every member gets an answer, an empty one too: kafkajs reads a missing one as "no assignment".
      return members.map((m) => ({
        memberId: m.memberId,
        memberAssignment: AssignerProtocol.MemberAssignment.encode({
          version: VERSION,
          assignment: Object.fromEntries(assignment.get(m.memberId) ?? new Map<string, number[]>()),
          userData: Buffer.alloc(0),
        }),
      }));
    },
  });
}
