/**
 * The worker's configuration: the `--queue` flag and environment variables, read once. MLflow
 * settings use the Python client's variable names, so a pod spec written for Python works as is.
 */
import { homedir, tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { readConfig, readSettingFile, type FlagOverride } from '../common/config.ts';
import type { FieldSpecs, Parsed, RawInput } from '../common/fields.ts';
import { LOG_LEVELS, type LogLevel } from '../common/log.ts';
import { deadLetterQueueOf } from '../common/topology.ts';

/** MLflow settings, with the Python client's variable names; shared by every command that talks to MLflow. */
export const MLFLOW_ENV = {
  MLFLOW_TRACKING_URI: { kind: 'url', protocols: ['http', 'https'], help: 'MLflow tracking server' },
  MLFLOW_TRACKING_USERNAME: { kind: 'string', help: 'Basic auth user' },
  MLFLOW_TRACKING_PASSWORD: { kind: 'string', help: 'Basic auth password' },
  MLFLOW_TRACKING_TOKEN: { kind: 'string', help: 'bearer token (instead of user and password)' },
  MLFLOW_TRACKING_INSECURE_TLS: { kind: 'boolean', default: false, help: 'skip verifying the server certificate' },
  MLFLOW_TRACKING_SERVER_CERT_PATH: { kind: 'string', help: 'PEM CA bundle for the server certificate' },
  MLFLOW_TRACKING_CLIENT_CERT_PATH: { kind: 'string', help: 'PEM file with a client certificate and key' },
  MLFLOW_HTTP_REQUEST_MAX_RETRIES: { kind: 'integer', min: 0, max: 20, default: 7, help: 'retries of one MLflow request' },
  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: { kind: 'number', min: 0, max: 60, default: 2, help: 'retry n waits factor × 2^(n−1) s' },
  MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: { kind: 'number', min: 0, max: 60, default: 1, help: 'plus up to this many seconds' },
  MLFLOW_HTTP_REQUEST_TIMEOUT: { kind: 'integer', min: 1, max: 3600, default: 120, help: 'seconds per MLflow request' },
} as const satisfies FieldSpecs;

export const WORKER_ENV = {
  KMJ_WORKER_QUEUE: { kind: 'string', required: true, maxLength: 255, help: 'request queue (--queue)' },
  RABBITMQ_URL: { kind: 'url', protocols: ['amqp', 'amqps'], default: 'amqp://guest:guest@127.0.0.1:5672', help: 'broker' },
  ...MLFLOW_ENV,
  KMJ_WORKER_IDLE_TIMEOUT_MS: { kind: 'integer', min: 100, max: 3_600_000, default: 30_000, help: 'exit 0 when no message arrives this long' },
  KMJ_WORKER_TIME_BUDGET_MS: { kind: 'integer', min: 1000, max: 86_400_000, default: 600_000, help: 'whole budget for one request, retries included' },
  KMJ_WORKER_SHUTDOWN_GRACE_MS: { kind: 'integer', min: 100, max: 600_000, default: 20_000, help: 'after SIGTERM, time to mark the run KILLED and requeue' },
  KMJ_MAX_DELIVERIES: { kind: 'integer', min: 1, max: 1000, default: 5, help: 'dead-letter instead of requeueing at this delivery' },
  KMJ_DEAD_LETTER_QUEUE: { kind: 'string', maxLength: 255, help: 'dead-letter queue (default: <queue>.dead)' },
  KMJ_MODEL_CACHE_DIR: { kind: 'string', help: 'model cache (default: ~/.cache/kmj/models)' },
  KMJ_WORK_DIR: { kind: 'string', help: 'scratch space for predictions (default: the temp dir)' },
  KMJ_DATASET_ROOTS: { kind: 'string', default: '/data', help: 'colon-separated directories local dataset paths must be in' },
  KMJ_MODEL_ROOTS: { kind: 'string', default: '/models', help: 'colon-separated directories file:// model URIs must be in' },
  KMJ_SPOOL_DIR: { kind: 'string', help: 'record runs here when MLflow cannot be used (default without MLFLOW_TRACKING_URI: ~/.local/share/kmj/spool)' },
  KMJ_MAX_MESSAGE_BYTES: { kind: 'integer', min: 1024, max: 128 * 1024 * 1024, default: 1024 * 1024, help: 'largest request message' },
  KMJ_MAX_DATASET_BYTES: { kind: 'integer', min: 1024, max: 64 * 1024 ** 3, default: 512 * 1024 * 1024, help: 'largest dataset' },
  KMJ_MAX_DATASET_ROWS: { kind: 'integer', min: 1, max: 1_000_000_000, default: 10_000_000, help: 'most dataset rows' },
  KMJ_MAX_MODEL_BYTES: { kind: 'integer', min: 1024, max: 64 * 1024 ** 3, default: 1024 * 1024 * 1024, help: 'largest model directory' },
  KMJ_BATCH_ROWS: { kind: 'integer', min: 1, max: 1_000_000, default: 16384, help: 'rows per inference call' },
  KMJ_ONNX_THREADS: { kind: 'integer', min: 0, max: 256, default: 0, help: 'onnxruntime intra-op threads (0: onnxruntime decides)' },
  KMJ_MLFLOW_USER: { kind: 'string', help: 'mlflow.user tag (default: the OS user)' },
  KUBERNETES_POD_NAME: { kind: 'string', help: 'tagged on runs (set from the downward API)' },
  KUBERNETES_NODE_NAME: { kind: 'string', help: 'tagged on runs (set from the downward API)' },
  LOG_LEVEL: { kind: 'enum', values: LOG_LEVELS, default: 'info', help: 'log level' },
} as const satisfies FieldSpecs;

export interface MlflowSettings {
  readonly trackingUri: string;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly token: string | undefined;
  readonly insecureTls: boolean;
  readonly serverCa: Buffer | undefined;
  readonly clientCert: Buffer | undefined;
  readonly maxRetries: number;
  readonly backoffFactorSeconds: number;
  readonly backoffJitterSeconds: number;
  readonly requestTimeoutMs: number;
}

export interface WorkerConfig {
  readonly queue: string;
  readonly deadLetterQueue: string;
  readonly maxDeliveries: number;
  readonly rabbitmqUrl: string;
  readonly mlflow: MlflowSettings | undefined;
  readonly idleTimeoutMs: number;
  readonly timeBudgetMs: number;
  readonly shutdownGraceMs: number;
  readonly modelCacheDir: string;
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
  readonly onnxThreads: number;
  readonly mlflowUser: string;
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

type MlflowValues = Parsed<typeof MLFLOW_ENV>;

function checkMlflow(c: MlflowValues, problems: string[]): void {
  if (c.MLFLOW_TRACKING_TOKEN !== undefined && c.MLFLOW_TRACKING_USERNAME !== undefined) {
    problems.push('MLFLOW_TRACKING_TOKEN: set either a token or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, not both');
  }
  const userInUri = c.MLFLOW_TRACKING_URI !== undefined && new URL(c.MLFLOW_TRACKING_URI).username !== '';
  if (c.MLFLOW_TRACKING_PASSWORD !== undefined && c.MLFLOW_TRACKING_USERNAME === undefined && !userInUri) {
    problems.push('MLFLOW_TRACKING_PASSWORD: is set without MLFLOW_TRACKING_USERNAME');
  }
}

/** Reads the certificate files the MLflow settings name; each unreadable one is a problem. */
function readMlflowFiles(raw: RawInput, problems: string[]): { serverCa: Buffer | undefined; clientCert: Buffer | undefined } {
  const read = (setting: string): Buffer | undefined => {
    const path = raw[setting];
    return path === undefined || path === '' ? undefined : readSettingFile(setting, path, problems);
  };
  return { serverCa: read('MLFLOW_TRACKING_SERVER_CERT_PATH'), clientCert: read('MLFLOW_TRACKING_CLIENT_CERT_PATH') };
}

function mlflowSettings(v: MlflowValues, files: { serverCa: Buffer | undefined; clientCert: Buffer | undefined }): MlflowSettings | undefined {
  if (v.MLFLOW_TRACKING_URI === undefined) return undefined;
  return Object.freeze({
    trackingUri: v.MLFLOW_TRACKING_URI,
    username: v.MLFLOW_TRACKING_USERNAME,
    password: v.MLFLOW_TRACKING_PASSWORD,
    token: v.MLFLOW_TRACKING_TOKEN,
    insecureTls: v.MLFLOW_TRACKING_INSECURE_TLS,
    serverCa: files.serverCa,
    clientCert: files.clientCert,
    maxRetries: v.MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    backoffFactorSeconds: v.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    backoffJitterSeconds: v.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
    requestTimeoutMs: v.MLFLOW_HTTP_REQUEST_TIMEOUT * 1000,
  });
}

/**
 * MLflow settings alone, for the commands that read or write MLflow (submit --wait, status,
 * replay). `trackingUri` is a --to/--mlflow flag overriding MLFLOW_TRACKING_URI.
 */
export function loadMlflowSettings(component: string, env: RawInput, trackingUri?: FlagOverride): MlflowSettings | undefined {
  let files = { serverCa: undefined as Buffer | undefined, clientCert: undefined as Buffer | undefined };
  const v = readConfig(component, MLFLOW_ENV, env, { MLFLOW_TRACKING_URI: trackingUri }, checkMlflow, (raw, problems) => {
    files = readMlflowFiles(raw, problems);
  });
  return mlflowSettings(v, files);
}

export function loadWorkerConfig(env: RawInput, flags: { queue?: string } = {}): WorkerConfig {
  let files = { serverCa: undefined as Buffer | undefined, clientCert: undefined as Buffer | undefined };
  const v = readConfig(
    'worker',
    WORKER_ENV,
    env,
    { KMJ_WORKER_QUEUE: flags.queue !== undefined ? { flag: '--queue', value: flags.queue } : undefined },
    checkMlflow,
    (raw, problems) => {
      files = readMlflowFiles(raw, problems);
    },
  );
  const trackingUri = v.MLFLOW_TRACKING_URI;
  return Object.freeze({
    queue: v.KMJ_WORKER_QUEUE,
    deadLetterQueue: v.KMJ_DEAD_LETTER_QUEUE ?? deadLetterQueueOf(v.KMJ_WORKER_QUEUE),
    maxDeliveries: v.KMJ_MAX_DELIVERIES,
    rabbitmqUrl: v.RABBITMQ_URL,
    mlflow: mlflowSettings(v, files),
    idleTimeoutMs: v.KMJ_WORKER_IDLE_TIMEOUT_MS,
    timeBudgetMs: v.KMJ_WORKER_TIME_BUDGET_MS,
    shutdownGraceMs: v.KMJ_WORKER_SHUTDOWN_GRACE_MS,
    modelCacheDir: v.KMJ_MODEL_CACHE_DIR ?? join(homedir(), '.cache', 'kmj', 'models'),
    workDir: v.KMJ_WORK_DIR ?? join(tmpdir(), 'kmj'),
    datasetRoots: Object.freeze(v.KMJ_DATASET_ROOTS.split(':').filter(Boolean)),
    modelRoots: Object.freeze(v.KMJ_MODEL_ROOTS.split(':').filter(Boolean)),
    spoolDir: v.KMJ_SPOOL_DIR ?? (trackingUri === undefined ? join(homedir(), '.local', 'share', 'kmj', 'spool') : undefined),
    maxMessageBytes: v.KMJ_MAX_MESSAGE_BYTES,
    maxDatasetBytes: v.KMJ_MAX_DATASET_BYTES,
    maxDatasetRows: v.KMJ_MAX_DATASET_ROWS,
    maxModelBytes: v.KMJ_MAX_MODEL_BYTES,
    batchRows: v.KMJ_BATCH_ROWS,
    onnxThreads: v.KMJ_ONNX_THREADS,
    mlflowUser: v.KMJ_MLFLOW_USER ?? osUser(),
    podName: v.KUBERNETES_POD_NAME,
    nodeName: v.KUBERNETES_NODE_NAME,
    logLevel: v.LOG_LEVEL,
  });
}
