/**
 * The worker's configuration: the `--queue` flag and environment variables, read once. MLflow
 * settings use the Python client's variable names, so a pod spec written for Python works as is.
 */
import { homedir, tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { failOnProblems, parseSettings, type FlagOverride } from '../common/config.ts';
import type { Checked, FieldSpecs, Parsed, RawInput } from '../common/fields.ts';
import { LOG_LEVELS, type LogLevel } from '../common/log.ts';
import { deadLetterQueueOf } from '../rabbitmq/topology.ts';
import { RABBITMQ_ENV } from '../rabbitmq/settings.ts';
import { KAFKA_ENV, kafkaConnection, type KafkaConnection } from '../kafka/settings.ts';
import { deadLetterTopicOf } from '../kafka/topics.ts';
import type { NodeCacheSettings } from './model/node-cache.ts';
import { checkMlflow, MLFLOW_ENV, mlflowSettings, readMlflowFiles, type MlflowSettings } from '../mlflow/settings.ts';

export const WORKER_ENV = {
  KMJ_WORKER_QUEUE: { kind: 'string', maxLength: 255, help: 'RabbitMQ request queue (--queue); or KMJ_WORKER_TOPIC' },
  RABBITMQ_URL: RABBITMQ_ENV.RABBITMQ_URL,
  KMJ_WORKER_TOPIC: {
    kind: 'string',
    pattern: /^[a-zA-Z0-9._-]{1,249}$/,
    patternHint: 'a Kafka topic name',
    help: 'Kafka request topic (--topic), instead of a queue',
  },
  KMJ_WORKER_GROUP: { kind: 'string', maxLength: 255, help: 'Kafka consumer group (--group; required with a topic)' },
  KMJ_WORKER_MAX_MESSAGES: {
    kind: 'integer',
    min: 1,
    max: 10_000,
    default: 1,
    help: 'Kafka: records one worker takes before it exits (--max-messages)',
  },
  KMJ_WORKER_KAFKA_SESSION_TIMEOUT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 6000,
    max: 300_000,
    default: 30_000,
    help: 'Kafka: a worker that stops heartbeating (killed) loses its partitions after this long',
  },
  KMJ_DEAD_LETTER_TOPIC: {
    kind: 'string',
    pattern: /^[a-zA-Z0-9._-]{1,249}$/,
    patternHint: 'a Kafka topic name',
    help: 'Kafka dead-letter topic (default: <topic>.dead)',
  },
  ...KAFKA_ENV,
  ...MLFLOW_ENV,
  KMJ_WORKER_IDLE_TIMEOUT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 3_600_000,
    default: 30_000,
    help: 'exit 0 when no message arrives this long',
  },
  KMJ_WORKER_TIME_BUDGET_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 1000,
    max: 86_400_000,
    default: 600_000,
    help: 'whole budget for one request, retries included',
  },
  KMJ_WORKER_SHUTDOWN_GRACE_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 600_000,
    default: 20_000,
    help: 'after SIGTERM, time to mark the run KILLED and requeue',
  },
  KMJ_MAX_DELIVERIES: { kind: 'integer', min: 1, max: 1000, default: 5, help: 'dead-letter instead of requeueing at this delivery' },
  KMJ_DEAD_LETTER_QUEUE: { kind: 'string', maxLength: 255, help: 'dead-letter queue (default: <queue>.dead)' },
  KMJ_MODEL_CACHE_DIR: { kind: 'string', help: 'model cache (default: ~/.cache/kmj/models)' },
  KMJ_NODE_CACHE_URL: {
    kind: 'string',
    pattern: /^https?:\/\/[^/?#\s]+\/?$/,
    patternHint: 'an http(s) base URL such as http://kmj-model-cache.kmj.svc:8090',
    help: "the node's model cache (kmj model-cache): models missing from KMJ_MODEL_CACHE_DIR are fetched from it, else from MLflow (unset: from MLflow)",
  },
  KMJ_NODE_CACHE_TOKEN: { kind: 'string', minLength: 16, help: "the node cache's bearer token (required with KMJ_NODE_CACHE_URL)" },
  KMJ_WORK_DIR: { kind: 'string', help: 'scratch space for predictions (default: the temp dir)' },
  KMJ_DATASET_ROOTS: { kind: 'string', default: '/data', help: 'colon-separated directories local dataset paths must be in' },
  KMJ_MODEL_ROOTS: { kind: 'string', default: '/models', help: 'colon-separated directories file:// model URIs must be in' },
  KMJ_SPOOL_DIR: {
    kind: 'string',
    help: 'record runs here when MLflow cannot be used (default without MLFLOW_TRACKING_URI: ~/.local/share/kmj/spool)',
  },
  KMJ_MAX_MESSAGE_BYTES: {
    kind: 'integer',
    unit: 'bytes',
    min: 1024,
    max: 128 * 1024 * 1024,
    default: 1024 * 1024,
    help: 'largest request message',
  },
  KMJ_MAX_DATASET_BYTES: {
    kind: 'integer',
    unit: 'bytes',
    min: 1024,
    max: 64 * 1024 ** 3,
    default: 512 * 1024 * 1024,
    help: 'largest dataset',
  },
  KMJ_MAX_DATASET_ROWS: { kind: 'integer', min: 1, max: 1_000_000_000, default: 10_000_000, help: 'most dataset rows' },
  KMJ_MAX_MODEL_BYTES: {
    kind: 'integer',
    unit: 'bytes',
    min: 1024,
    max: 64 * 1024 ** 3,
    default: 1024 * 1024 * 1024,
    help: 'largest model directory',
  },
  KMJ_WORKER_PROGRESS_INTERVAL_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 3_600_000,
    default: 10_000,
    help: 'log progress and record rows and rows_per_second steps this often',
  },
  KMJ_BATCH_ROWS: { kind: 'integer', min: 1, max: 1_000_000, default: 16384, help: 'rows per inference call' },
  KMJ_ONNX_THREADS: { kind: 'integer', min: 0, max: 256, default: 0, help: 'onnxruntime intra-op threads (0: onnxruntime decides)' },
  KMJ_MLFLOW_USER: { kind: 'string', help: 'mlflow.user tag (default: the OS user)' },
  KMJ_REPORT_URL: {
    kind: 'string',
    pattern: /^https?:\/\/[^/?#\s]+\/\S*$/,
    patternHint: 'an http(s) URL such as http://kmj-scaler.kmj.svc:8080/v1/reports',
    help: "where the worker reports each request's outcome and timings to the scaler, for its metrics (unset: no report)",
  },
  KMJ_REPORT_TIMEOUT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 30_000,
    default: 1000,
    help: "the longest the report may hold up the worker's exit (it is sent after the settle, never retried)",
  },
  KUBERNETES_POD_NAME: { kind: 'string', help: 'tagged on runs (set from the downward API)' },
  KUBERNETES_NODE_NAME: { kind: 'string', help: 'tagged on runs (set from the downward API)' },
  LOG_LEVEL: { kind: 'enum', values: LOG_LEVELS, default: 'info', help: 'log level' },
} as const satisfies FieldSpecs;

/** A RabbitMQ request queue, its dead-letter queue and the broker it is on. */
export interface RabbitMqInput {
  readonly kind: 'rabbitmq';
  readonly url: string;
  readonly queue: string;
  readonly deadLetterQueue: string;
}

/** A Kafka request topic, read as a member of a consumer group, and its dead-letter topic. */
export interface KafkaInput {
  readonly kind: 'kafka';
  readonly topic: string;
  readonly group: string;
  readonly deadLetterTopic: string;
  readonly maxMessages: number;
  readonly sessionTimeoutMs: number;
  readonly connection: KafkaConnection;
}

/** Where requests come from: a RabbitMQ queue or a Kafka topic with its group, never both. */
export type WorkerInput = RabbitMqInput | KafkaInput;

export interface WorkerConfig {
  readonly input: WorkerInput;
  readonly maxDeliveries: number;
  readonly mlflow: MlflowSettings | undefined;
  readonly idleTimeoutMs: number;
  readonly timeBudgetMs: number;
  readonly shutdownGraceMs: number;
  readonly modelCacheDir: string;
  /** The node's model cache, asked before MLflow for a model not in `modelCacheDir`. */
  readonly nodeCache: NodeCacheSettings | undefined;
  readonly workDir: string;
  readonly datasetRoots: readonly string[];
  readonly modelRoots: readonly string[];
  /**
   * Where runs are recorded when MLflow cannot be used: set (KMJ_SPOOL_DIR, or a default when
   * MLFLOW_TRACKING_URI is unset) or undefined (no spool: MLflow trouble requeues).
   */
  readonly spoolDir: string | undefined;
  readonly maxMessageBytes: number;
  readonly maxDatasetBytes: number;
  readonly maxDatasetRows: number;
  readonly maxModelBytes: number;
  readonly batchRows: number;
  readonly progressIntervalMs: number;
  readonly onnxThreads: number;
  readonly mlflowUser: string;
  /** The scaler's report intake (common/report.ts), or undefined: no report is sent. */
  readonly reportUrl: string | undefined;
  /** The longest the report may hold up the exit. */
  readonly reportTimeoutMs: number;
  readonly podName: string | undefined;
  readonly nodeName: string | undefined;
  readonly logLevel: LogLevel;
}

function osUser(): string {
  try {
    return userInfo().username || 'kmj-worker';
  } catch {
    return 'kmj-worker'; // a uid without a passwd entry, as in most containers
  }
}

export interface WorkerFlags {
  readonly queue?: string;
  readonly topic?: string;
  readonly group?: string;
  readonly maxMessages?: string;
}

/** The rules across the worker's settings: exactly one input, and a Kafka input's group and brokers. */
function checkWorkerInput(
  c: Parsed<typeof WORKER_ENV>,
  nameOf: (key: string) => string,
  kafka: Checked<KafkaConnection | undefined> | undefined,
): string[] {
  const problems: string[] = [];
  if (c.KMJ_NODE_CACHE_URL !== undefined && c.KMJ_NODE_CACHE_TOKEN === undefined)
    problems.push('KMJ_NODE_CACHE_TOKEN: is required with KMJ_NODE_CACHE_URL');
  if ((c.KMJ_WORKER_QUEUE === undefined) === (c.KMJ_WORKER_TOPIC === undefined)) {
    problems.push(`${nameOf('KMJ_WORKER_QUEUE')}: set a queue or ${nameOf('KMJ_WORKER_TOPIC')}, exactly one of them`);
  } else if (c.KMJ_WORKER_TOPIC !== undefined) {
    if (c.KMJ_WORKER_GROUP === undefined) problems.push(`${nameOf('KMJ_WORKER_GROUP')}: is required with a topic`);
    problems.push(...(kafka?.problems ?? []));
    if (kafka?.value === undefined && problems.length === 0) problems.push('KAFKA_BROKERS: is required with a topic');
  }
  return problems;
}

export function loadWorkerConfig(env: RawInput, flags: WorkerFlags = {}): WorkerConfig {
  const flag = (name: string, value: string | undefined): FlagOverride | undefined =>
    value !== undefined ? { flag: name, value } : undefined;
  const overrides = {
    KMJ_WORKER_QUEUE: flag('--queue', flags.queue),
    KMJ_WORKER_TOPIC: flag('--topic', flags.topic),
    KMJ_WORKER_GROUP: flag('--group', flags.group),
    KMJ_WORKER_MAX_MESSAGES: flag('--max-messages', flags.maxMessages),
  };
  const { values: v, problems, raw, nameOf } = parseSettings(WORKER_ENV, env, overrides);
  const files = readMlflowFiles(raw);
  failOnProblems('worker', problems, files.problems);
  const kafka = v.KMJ_WORKER_TOPIC !== undefined && v.KMJ_WORKER_QUEUE === undefined ? kafkaConnection(env) : undefined;
  failOnProblems('worker', checkMlflow(v), checkWorkerInput(v, nameOf, kafka));
  const connection = kafka?.value;
  const topic = v.KMJ_WORKER_TOPIC;
  const queue = v.KMJ_WORKER_QUEUE;
  const group = v.KMJ_WORKER_GROUP;
  const trackingUri = v.MLFLOW_TRACKING_URI;
  // The check above made sure of exactly one of the two, and of a Kafka input's group and brokers.
  let input: WorkerInput;
  if (topic !== undefined && group !== undefined && connection) {
    input = {
      kind: 'kafka',
      topic,
      group,
      deadLetterTopic: v.KMJ_DEAD_LETTER_TOPIC ?? deadLetterTopicOf(topic),
      maxMessages: v.KMJ_WORKER_MAX_MESSAGES,
      sessionTimeoutMs: v.KMJ_WORKER_KAFKA_SESSION_TIMEOUT_MS,
      connection,
    };
  } else if (queue !== undefined) {
    input = { kind: 'rabbitmq', url: v.RABBITMQ_URL, queue, deadLetterQueue: v.KMJ_DEAD_LETTER_QUEUE ?? deadLetterQueueOf(queue) };
  } else {
    throw new Error('worker configuration: neither a queue nor a Kafka topic with its group after the checks');
  }
  return Object.freeze({
    input: Object.freeze(input),
    maxDeliveries: v.KMJ_MAX_DELIVERIES,
    mlflow: mlflowSettings(v, files.value),
    idleTimeoutMs: v.KMJ_WORKER_IDLE_TIMEOUT_MS,
    timeBudgetMs: v.KMJ_WORKER_TIME_BUDGET_MS,
    shutdownGraceMs: v.KMJ_WORKER_SHUTDOWN_GRACE_MS,
    modelCacheDir: v.KMJ_MODEL_CACHE_DIR ?? join(homedir(), '.cache', 'kmj', 'models'),
    nodeCache:
      v.KMJ_NODE_CACHE_URL !== undefined && v.KMJ_NODE_CACHE_TOKEN !== undefined
        ? Object.freeze({ url: v.KMJ_NODE_CACHE_URL, token: v.KMJ_NODE_CACHE_TOKEN })
        : undefined,
    workDir: v.KMJ_WORK_DIR ?? join(tmpdir(), 'kmj'),
    datasetRoots: Object.freeze(v.KMJ_DATASET_ROOTS.split(':').filter(Boolean)),
    modelRoots: Object.freeze(v.KMJ_MODEL_ROOTS.split(':').filter(Boolean)),
    spoolDir: v.KMJ_SPOOL_DIR ?? (trackingUri === undefined ? join(homedir(), '.local', 'share', 'kmj', 'spool') : undefined),
    maxMessageBytes: v.KMJ_MAX_MESSAGE_BYTES,
    maxDatasetBytes: v.KMJ_MAX_DATASET_BYTES,
    maxDatasetRows: v.KMJ_MAX_DATASET_ROWS,
    maxModelBytes: v.KMJ_MAX_MODEL_BYTES,
    batchRows: v.KMJ_BATCH_ROWS,
    progressIntervalMs: v.KMJ_WORKER_PROGRESS_INTERVAL_MS,
    onnxThreads: v.KMJ_ONNX_THREADS,
    mlflowUser: v.KMJ_MLFLOW_USER ?? osUser(),
    reportUrl: v.KMJ_REPORT_URL,
    reportTimeoutMs: v.KMJ_REPORT_TIMEOUT_MS,
    podName: v.KUBERNETES_POD_NAME,
    nodeName: v.KUBERNETES_NODE_NAME,
    logLevel: v.LOG_LEVEL,
  });
}
