// The Kafka source's lag rules (scaler/sources/kafka.ts lagReading), table-driven as KEDA's
// kafka scaler tests are: partitions in, metric value, activity and details out. The rules that
// differ from KEDA are here too (records removed by retention, the exact cap).
import { describe, expect, it } from 'vitest';
import type { PartitionOffsets } from '../../kafka/offsets.ts';
import { lagReading, type KafkaLagOptions } from '../../scaler/sources/kafka.ts';

const BASE: KafkaLagOptions = {
  offsetResetPolicy: 'latest',
  scaleToZeroOnInvalidOffset: false,
  excludePersistentLag: false,
  allowIdleConsumers: true,
  limitToPartitionsWithLag: false,
  lagThreshold: 1,
};
const p = (partition: number, end: number, committed: number | undefined, start = 0): PartitionOffsets => ({
  topic: 't',
  partition,
  end,
  start,
  committed,
});

const CASES: Array<{ name: string; partitions: PartitionOffsets[]; options?: Partial<KafkaLagOptions>; value: number; activity: number }> =
  [
    { name: 'end − committed, summed', partitions: [p(0, 10, 4), p(1, 5, 5), p(2, 7, 0)], value: 13, activity: 13 },
    { name: 'no commit, latest: 1 per partition', partitions: [p(0, 10, undefined), p(1, 0, undefined)], value: 2, activity: 2 },
    {
      name: 'no commit, earliest: end − log start (KEDA: end)',
      partitions: [p(0, 10, undefined, 4)],
      options: { offsetResetPolicy: 'earliest' },
      value: 6,
      activity: 6,
    },
    {
      name: 'no commit and scaleToZeroOnInvalidOffset: 0',
      partitions: [p(0, 10, undefined)],
      options: { scaleToZeroOnInvalidOffset: true, offsetResetPolicy: 'earliest' },
      value: 0,
      activity: 0,
    },
    { name: 'a commit before the log start counts from the start (retention)', partitions: [p(0, 100, 10, 90)], value: 10, activity: 10 },
    { name: 'a commit past the end (topic recreated) is 0, never negative', partitions: [p(0, 3, 8)], value: 0, activity: 0 },
    {
      name: 'cap: partitions × lagThreshold without allowIdleConsumers',
      partitions: [p(0, 50, 0), p(1, 50, 0)],
      options: { allowIdleConsumers: false, lagThreshold: 10 },
      value: 20,
      activity: 100,
    },
    {
      name: 'cap is exact: 21 with threshold 10 on 2 partitions is 20 (KEDA keeps 21: ⌊21/10⌋ = 2 is not above 2)',
      partitions: [p(0, 21, 0), p(1, 0, 0)],
      options: { allowIdleConsumers: false, lagThreshold: 10 },
      value: 20,
      activity: 21,
    },
    {
      name: 'limitToPartitionsWithLag: partitions with lag × lagThreshold',
      partitions: [p(0, 50, 0), p(1, 0, 0), p(2, 0, 0)],
      options: { allowIdleConsumers: false, limitToPartitionsWithLag: true, lagThreshold: 5 },
      value: 5,
      activity: 50,
    },
  ];

describe('lagReading', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const r = lagReading(c.partitions, { ...BASE, ...c.options }, new Map());
      expect([r.value, r.activity]).toEqual([c.value, c.activity]);
    });
  }

  it('excludePersistentLag: a commit that did not move since the last read counts toward activity only', () => {
    const previous = new Map<string, number>();
    const o = { ...BASE, excludePersistentLag: true };
    expect(lagReading([p(0, 10, 4), p(1, 10, 2)], o, previous)).toMatchObject({ value: 14, activity: 14 });
    expect(lagReading([p(0, 10, 4), p(1, 10, 3)], o, previous)).toMatchObject({
      value: 7,
      activity: 13,
      details: { persistentLag: 6, partitionsWithLag: 1 },
    });
    expect(lagReading([p(0, 10, 4), p(1, 10, 3)], o, previous)).toMatchObject({ value: 0, activity: 13 });
  });

  it('details: lag, partitions, partitions with lag, uncommitted partitions', () => {
    expect(lagReading([p(0, 10, 4), p(1, 5, undefined), p(2, 3, 3)], BASE, new Map()).details).toEqual({
      lag: 7,
      persistentLag: 0,
      partitions: 3,
      partitionsWithLag: 2,
      uncommittedPartitions: 1,
    });
  });
});
