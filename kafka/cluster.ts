/**
 * The part of kafkajs 2.2.4's internal Cluster and Broker (src/cluster/index.js,
 * src/broker/index.js) that kafka/offsets.ts sends its requests through, typed, and how to make
 * one. Not kafkajs' public API: its admin client hides them, and the admin's own methods cannot
 * keep a topic's partition leaders or a group's coordinator between two calls, so each lag read
 * through it was five requests where three carry the answer (docs/benchmarks.md, `make
 * bench-kafka`). The Cluster is made by the Kafka instance itself (the constructor its admin,
 * producer and consumer use), so brokers, TLS, SASL, timeouts and the log go exactly as
 * kafka/client.ts set them. package.json pins kafkajs to the exact version, and
 * test/scaler/kafka-lag.test.ts reads lag through this against a real broker, plain, SASL and TLS.
 */
import type { Kafka } from 'kafkajs';

/** ListOffsets' special timestamps: the offset the next record will get, and the oldest kept. */
export const LATEST_OFFSET = -1;
export const EARLIEST_OFFSET = -2;

interface TopicPartitions<P> {
  readonly topic: string;
  readonly partitions: readonly P[];
}

export interface TopicMetadata {
  readonly topic: string;
  readonly partitionMetadata: ReadonlyArray<{ readonly partitionId: number; readonly leader: number }>;
}

/** One broker connection; each method is one request (a failed one throws kafkajs' error). */
export interface ClusterBroker {
  readonly nodeId: number | null;
  metadata(topics: string[]): Promise<{ readonly topicMetadata: readonly TopicMetadata[] }>;
  listOffsets(request: {
    topics: TopicPartitions<{ partition: number; timestamp: number }>[];
  }): Promise<{ readonly responses: ReadonlyArray<TopicPartitions<{ readonly partition: number; readonly offset: string }>> }>;
  /** An empty `topics` is every topic the group has committed offsets for. */
  offsetFetch(request: {
    groupId: string;
    topics: TopicPartitions<{ partition: number }>[];
  }): Promise<{ readonly responses: ReadonlyArray<TopicPartitions<{ readonly partition: number; readonly offset: string }>> }>;
}

export interface Cluster {
  /** Connects to a seed broker. */
  connect(): Promise<void>;
  /** Loads the broker list (a Metadata request). */
  refreshMetadata(): Promise<void>;
  disconnect(): Promise<void>;
  /** A broker of the list (the KRaft "controller" the metadata names), connected. */
  findControllerBroker(): Promise<ClusterBroker>;
  /** The broker `nodeId` of the list, connected; an unknown one reloads the list and throws. */
  findBroker(query: { nodeId: number }): Promise<ClusterBroker>;
  /** A FindCoordinator request, then the coordinator's broker, connected. */
  findGroupCoordinator(query: { groupId: string }): Promise<ClusterBroker>;
}

const CREATE_CLUSTER = 'private:Kafka:createCluster';

/**
 * A new Cluster of `kafka`'s settings, as its admin client would get (no topic created by
 * asking for it). Throws when the kafkajs in node_modules is not the one this was written for.
 */
export function clusterOf(kafka: Kafka): Cluster {
  const own = kafka as unknown as Record<symbol, unknown>;
  const key = Object.getOwnPropertySymbols(kafka).find((s) => s.description === CREATE_CLUSTER);
  const create = key === undefined ? undefined : own[key];
  if (typeof create !== 'function') {
    throw new Error(`kafkajs has no ${CREATE_CLUSTER}: kafka/cluster.ts needs kafkajs 2.2.4 as package.json pins it`);
  }
  return (create as (options: object) => Cluster)({ allowAutoTopicCreation: false });
}
