// The workers' partition assigner (kafka/assigner.ts), table-driven: members with what they say
// when they join, partitions with their waiting records, and who gets what.
import { AssignerProtocol } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import {
  assignPartitions,
  decodeMemberState,
  encodeMemberState,
  kmjAssigner,
  LEAVING,
  type MemberState,
  type MemberView,
  type PartitionView,
} from '../../kafka/assigner.ts';

const T = 'requests';
const free = (memberId: string, capacity = 1): MemberView => ({ memberId, state: { capacity, busy: {} } });
const busy = (memberId: string, ...partitions: number[]): MemberView => ({ memberId, state: { capacity: 0, busy: { [T]: partitions } } });
const leaving = (memberId: string): MemberView => ({ memberId, state: LEAVING });
const parts = (...waiting: Array<number | undefined>): PartitionView[] =>
  waiting.map((w, partition) => ({ topic: T, partition, waiting: w }));

/** The assignment as member → partitions of topic T; a member given nothing has no entry. */
function flat(members: MemberView[], partitions: PartitionView[]): Record<string, number[]> {
  const out: Record<string, number[]> = {};
  for (const [m, topics] of assignPartitions(members, partitions)) out[m] = topics.get(T) ?? [];
  return out;
}

const CASES: Array<{ name: string; members: MemberView[]; partitions: PartitionView[]; expected: Record<string, number[]> }> = [
  { name: 'one member takes every partition', members: [free('a')], partitions: parts(0, 0, 0), expected: { a: [0, 1, 2] } },
  {
    name: 'round-robin in member id order when nothing waits',
    members: [free('b'), free('a')],
    partitions: parts(0, 0, 0),
    expected: { a: [0, 2], b: [1] },
  },
  {
    name: 'partitions with waiting records go first, one per member: the two records are read at once',
    members: [free('a'), free('b')],
    partitions: parts(2, 0, 1),
    // Round-robin alone gives a [0, 2] and b [1]: b idles while a holds both records.
    expected: { a: [0, 1], b: [2] },
  },
  {
    name: 'a busy partition stays with its member, which gets nothing else; the others share the rest',
    members: [busy('a', 1), free('b'), free('c')],
    partitions: parts(1, 1, 1),
    expected: { a: [1], b: [0], c: [2] },
  },
  {
    name: 'a leaving member gets nothing, even as the only member left besides busy ones',
    members: [leaving('a'), busy('b', 0)],
    partitions: parts(0, 3, 0),
    expected: { b: [0] },
  },
  {
    name: "a member that joins with another client's user data is treated as leaving",
    members: [{ memberId: 'a', state: decodeMemberState(Buffer.from('not json')) }, free('b')],
    partitions: parts(0, 1),
    expected: { b: [0, 1] },
  },
  {
    name: 'two members claiming one busy partition: the first in id order keeps it',
    members: [busy('b', 0), busy('a', 0)],
    partitions: parts(1),
    expected: { a: [0] },
  },
  {
    name: 'a busy partition that no longer exists is dropped',
    members: [busy('a', 7), free('b')],
    partitions: parts(0, 0),
    expected: { b: [0, 1] },
  },
  {
    name: 'unknown lag (the leader could not read offsets): plain round-robin over the members that take',
    members: [free('a'), free('b'), leaving('c')],
    partitions: parts(undefined, undefined, undefined),
    expected: { a: [0, 2], b: [1] },
  },
  {
    name: 'no member can take: only busy partitions are assigned',
    members: [busy('a', 2), leaving('b')],
    partitions: parts(1, 1, 1),
    expected: { a: [2] },
  },
  {
    name: 'more members than partitions: the extra members get nothing',
    members: [free('a'), free('b'), free('c')],
    partitions: parts(1, 0),
    expected: { a: [0], b: [1] },
  },
];

describe('assignPartitions', () => {
  for (const c of CASES) {
    it(c.name, () => {
      expect(flat(c.members, c.partitions)).toEqual(c.expected);
    });
  }

  it('never gives a partition to two members, and gives every partition when a member can take', () => {
    const members = [busy('a', 3), free('b', 2), leaving('c'), free('d'), busy('e', 0)];
    const partitions = parts(0, 4, 0, 1, 2, 0, 0);
    const seen = Object.values(flat(members, partitions)).flat();
    expect(seen.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });
});

describe('member state in the join metadata', () => {
  it('round-trips, and anything malformed reads as a member that takes nothing', () => {
    const state: MemberState = { capacity: 3, busy: { [T]: [2] } };
    expect(decodeMemberState(encodeMemberState(state))).toEqual(state);
    expect(decodeMemberState(undefined)).toEqual(LEAVING);
    expect(decodeMemberState(Buffer.from('{"capacity":-1,"busy":{"t":[1,"x",-2]}}'))).toEqual({ capacity: 0, busy: { t: [1] } });
  });

  it('the kafkajs assigner: protocol carries the state, assign answers every member, an empty one too', async () => {
    let state: MemberState = { capacity: 1, busy: {} };
    const cluster = { findTopicPartitionMetadata: () => [{ partitionId: 0 }, { partitionId: 1 }] } as unknown as Parameters<
      ReturnType<typeof kmjAssigner>
    >[0]['cluster'];
    const assigner = kmjAssigner({ state: () => state, lagOf: () => Promise.resolve(new Map([[1, 5]])) })({
      cluster,
      groupId: 'g',
      logger: undefined as never,
    });
    const a = assigner.protocol({ topics: [T] }).metadata;
    state = LEAVING;
    const b = assigner.protocol({ topics: [T] }).metadata;
    const result = await assigner.assign({
      members: [
        { memberId: 'a', memberMetadata: a },
        { memberId: 'b', memberMetadata: b },
      ],
      topics: [T],
    });
    const decoded = Object.fromEntries(
      result.map((r) => [r.memberId, AssignerProtocol.MemberAssignment.decode(r.memberAssignment)?.assignment]),
    );
    // Partition 1 has waiting records: it goes first, and both go to the one member that takes.
    expect(decoded).toEqual({ a: { [T]: [0, 1] }, b: {} });
  });
});
