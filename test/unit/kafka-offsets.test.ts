// What kafka/offsets.ts keeps between reads (each group's coordinator, the topics' partition
// leaders) and what it does when the cluster has moved them, against a Cluster of our own
// interface (kafka/cluster.ts) that moves them on demand: a real one-broker Kafka never moves a
// coordinator or a leader. test/scaler/kafka-lag.test.ts reads through the real kafkajs Cluster.
import { Kafka } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../common/log.ts';
import type { Cluster, ClusterBroker, TopicMetadata } from '../../kafka/cluster.ts';
import { KafkaOffsetsReader } from '../../kafka/offsets.ts';

/** A kafkajs protocol error as kafka/client.ts's kafkaErrorType reads it. */
const protocolError = (type: string): Error => Object.assign(new Error(`broker said ${type}`), { type });

/** What a broker call gives: a throw in `f` is the request's failure. */
const answer = <T>(f: () => T): Promise<T> => new Promise((resolve) => resolve(f()));

/** Two brokers, node 1 and 2; a topic "t" of two partitions and the group "g"'s commits on it. */
class MovingCluster implements Cluster {
  coordinator = 1;
  leader = 1;
  readonly calls: string[] = [];
  readonly ends = [7, 9];
  readonly committed = [3, 9];

  async connect(): Promise<void> {}
  async refreshMetadata(): Promise<void> {}
  async disconnect(): Promise<void> {}
  findControllerBroker(): Promise<ClusterBroker> {
    return answer(() => this.#broker(1));
  }
  findBroker({ nodeId }: { nodeId: number }): Promise<ClusterBroker> {
    return answer(() => this.#broker(nodeId));
  }
  findGroupCoordinator(): Promise<ClusterBroker> {
    this.calls.push('FindCoordinator');
    return answer(() => this.#broker(this.coordinator));
  }

  #broker(nodeId: number): ClusterBroker {
    const partitionMetadata = [0, 1].map((partitionId) => ({ partitionId, leader: this.leader }));
    return {
      nodeId,
      metadata: (): Promise<{ topicMetadata: TopicMetadata[] }> =>
        answer(() => {
          this.calls.push('Metadata');
          return { topicMetadata: [{ topic: 't', partitionMetadata }] };
        }),
      listOffsets: ({ topics }) =>
        answer(() => {
          const timestamp = topics[0]?.partitions[0]?.timestamp;
          this.calls.push(`ListOffsets ${timestamp === -1 ? 'latest' : 'earliest'}@${nodeId}`);
          if (nodeId !== this.leader) throw protocolError('NOT_LEADER_OR_FOLLOWER');
          return {
            responses: topics.map(({ topic, partitions }) => ({
              topic,
              partitions: partitions.map(({ partition }) => ({
                partition,
                offset: String(timestamp === -1 ? (this.ends[partition] ?? 0) : 0),
              })),
            })),
          };
        }),
      offsetFetch: () =>
        answer(() => {
          this.calls.push(`OffsetFetch@${nodeId}`);
          if (nodeId !== this.coordinator) throw protocolError('NOT_COORDINATOR');
          return {
            responses: [{ topic: 't', partitions: this.committed.map((offset, partition) => ({ partition, offset: String(offset) })) }],
          };
        }),
    };
  }
}

const readerOn = (cluster: Cluster, listTtlMs = 60_000): KafkaOffsetsReader =>
  new KafkaOffsetsReader({
    // Never connected: every request goes through `cluster`.
    kafka: new Kafka({ brokers: ['127.0.0.1:9'] }),
    brokers: 'test-brokers',
    log: createLogger({ level: 'silent', name: 'kmj-test' }),
    listTtlMs,
    createCluster: () => cluster,
  });

const lagOf = async (reader: KafkaOffsetsReader): Promise<number[]> =>
  (await reader.read('g', ['t'], AbortSignal.timeout(5000))).partitions.map((p) => p.end - (p.committed ?? 0));

/** A reader that has read once (lag [4, 0]) through a cluster that has not moved yet. */
const afterOneRead = async (): Promise<{ cluster: MovingCluster; reader: KafkaOffsetsReader }> => {
  const cluster = new MovingCluster();
  const reader = readerOn(cluster);
  expect(await lagOf(reader)).toEqual([4, 0]);
  return { cluster, reader };
};

/** The next read's lag and the requests it made, sorted. */
const nextRead = async (cluster: MovingCluster, reader: KafkaOffsetsReader): Promise<{ lag: number[]; calls: string[] }> => {
  cluster.calls.length = 0;
  const lag = await lagOf(reader);
  return { lag, calls: [...cluster.calls].sort() };
};

describe('the offsets reader keeps what a read needs, and finds it anew when the cluster moved it', () => {
  it('a second read is OffsetFetch and the ListOffsets pair only', async () => {
    const { cluster, reader } = await afterOneRead();
    expect(await nextRead(cluster, reader)).toEqual({
      lag: [4, 0],
      calls: ['ListOffsets earliest@1', 'ListOffsets latest@1', 'OffsetFetch@1'],
    });
  });

  it('a moved coordinator and moved leaders cost requests, not a failed read', async () => {
    const { cluster, reader } = await afterOneRead();
    Object.assign(cluster, { coordinator: 2, leader: 2 });
    cluster.ends[0] = 8;
    // The kept coordinator refused, found anew; the kept leader refused, the topics listed anew.
    expect(await nextRead(cluster, reader)).toEqual({
      lag: [5, 0],
      calls: [
        'FindCoordinator',
        'ListOffsets earliest@1',
        'ListOffsets earliest@2',
        'ListOffsets latest@1',
        'ListOffsets latest@2',
        'Metadata',
        'OffsetFetch@1',
        'OffsetFetch@2',
      ],
    });
    expect(cluster.calls.filter((c) => c.startsWith('OffsetFetch') || c === 'FindCoordinator')).toEqual([
      'OffsetFetch@1',
      'FindCoordinator',
      'OffsetFetch@2',
    ]);
    expect(await nextRead(cluster, reader)).toEqual({
      lag: [5, 0],
      calls: ['ListOffsets earliest@2', 'ListOffsets latest@2', 'OffsetFetch@2'],
    });
  });

  it('a coordinator that still refuses after it was found anew fails the read with what the broker said, never a lag', async () => {
    const { cluster, reader } = await afterOneRead();
    // The group moved to node 2, but FindCoordinator still names node 1 (the cluster is electing).
    cluster.coordinator = 2;
    cluster.findGroupCoordinator = (): Promise<ClusterBroker> => cluster.findBroker({ nodeId: 1 });
    await expect(lagOf(reader)).rejects.toThrow('cannot read consumer group "g" from Kafka at test-brokers: broker said NOT_COORDINATOR');
  });
});
