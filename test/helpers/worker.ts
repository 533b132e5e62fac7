/**
 * Helpers for worker tests against the real services: the fixtures made by scripts/fixtures.sh,
 * the real `kmj worker` process, requests with unique ids and experiments, MLflow read back over
 * REST and through the real Python client, and the fate of a message in RabbitMQ.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type ConsumeMessage, type Options } from 'amqplib';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { declareRequestTopology, deadLetterQueueOf } from '../../rabbitmq/topology.ts';
import { KAFKA_BROKERS, RABBITMQ_URL } from './env.ts';
import { waitUntil } from './wait.ts';

const run = promisify(execFile);

export const MLFLOW_URL = process.env['KMJ_TEST_MLFLOW_URL'] ?? 'http://127.0.0.1:5000';
export const MLFLOW_AUTH_URL = process.env['KMJ_TEST_MLFLOW_AUTH_URL'] ?? 'http://127.0.0.1:5001';
export const MLFLOW_AUTH_USER = 'admin';
export const MLFLOW_AUTH_PASSWORD = process.env['KMJ_MLFLOW_ADMIN_PASSWORD'] ?? 'kmj-test-admin-pw';

/** A basic-auth user of an MLflow server. */
export interface MlflowCredentials {
  readonly username: string;
  readonly password: string;
}

/** How a helper signs in to MLflow: not at all, as the auth server's administrator (true), or as a given user. */
export type MlflowAuth = boolean | MlflowCredentials;

function credentialsOf(auth: MlflowAuth): MlflowCredentials | undefined {
  if (auth === false) return undefined;
  return auth === true ? { username: MLFLOW_AUTH_USER, password: MLFLOW_AUTH_PASSWORD } : auth;
}

export interface Fixtures {
  readonly features: string[];
  readonly label: string;
  readonly regressorFeatures: string[];
  readonly regressorLabel: string;
  readonly models: Record<
    string,
    { name: string; version: number; runId: string; alias?: string; files: string[]; expected: Record<string, Array<number | number[]>> }
  >;
  readonly datasets: {
    csv: string;
    jsonl: string;
    csvSha256: string;
    rows: number;
    runId: string;
    runsCsvUri: string;
    artifactCsvUri: string;
    artifactJsonlUri: string;
  };
  readonly bigDataset: Record<string, string>;
  readonly dir: string;
}

/** The sample models: of the main MLflow server, of the auth server, or of the cluster's MLflow (scripts/cluster-deploy.sh). */
export function fixtures(which: 'fixtures' | 'fixtures-auth' | 'fixtures-cluster' = 'fixtures'): Fixtures {
  const dir = join(PACKAGE_ROOT, '.run', which);
  const f = JSON.parse(readFileSync(join(dir, 'fixtures.json'), 'utf8')) as Omit<Fixtures, 'dir'>;
  return { ...f, dir, bigDataset: f.bigDataset ?? {} };
}

export function uniqueId(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

/** A valid request for the classifier on the iris CSV, with a fresh request id and experiment. */
export function request(overrides: Record<string, unknown> = {}): Record<string, unknown> & { requestId: string; experiment: string } {
  const f = fixtures();
  return {
    version: 1,
    requestId: uniqueId('req'),
    model: `models:/${f.models['classifier']?.name}/${f.models['classifier']?.version}`,
    dataset: { uri: f.datasets.csv },
    experiment: uniqueId('exp'),
    labelColumn: f.label,
    ...overrides,
  };
}

/** A request queue with its dead-letter queue, declared the way the worker and `kmj submit` do. */
export async function requestQueue(maxDeliveries = 5): Promise<string> {
  const queue = uniqueId('work');
  const conn = await connect(RABBITMQ_URL);
  try {
    await declareRequestTopology(conn, queue, { deadLetterQueue: deadLetterQueueOf(queue), maxDeliveries });
  } finally {
    await conn.close();
  }
  return queue;
}

/** Publishes one message as a client would; `properties` adds AMQP properties (a timestamp, say). */
export async function publish(
  queue: string,
  body: unknown,
  headers: Record<string, unknown> = {},
  properties: Options.Publish = {},
): Promise<void> {
  const conn = await connect(RABBITMQ_URL);
  try {
    const ch = await conn.createConfirmChannel();
    const payload = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    ch.sendToQueue(queue, payload, { persistent: true, contentType: 'application/json', ...properties, headers });
    await ch.waitForConfirms();
  } finally {
    await conn.close();
  }
}

export interface QueueState {
  readonly messages: number;
  readonly consumers: number;
}

export async function queueState(queue: string, url = RABBITMQ_URL): Promise<QueueState> {
  const conn = await connect(url);
  try {
    const ch = await conn.createChannel();
    const ok = await ch.checkQueue(queue);
    return { messages: ok.messageCount, consumers: ok.consumerCount };
  } finally {
    await conn.close();
  }
}

/**
 * The queue's state once the broker has dropped the consumers of workers that have exited: a
 * quorum queue applies a consumer's cancel (and a closed connection's) through its log, so its
 * declare-ok can still count a consumer for a moment after the worker's cancel-ok and exit (seen
 * in a fresh-clone run on a loaded machine). Waits up to 10 s for no consumer (then fails with the
 * last state), and returns the state for the test to assert.
 */
export function queueStateAfterExit(queue: string, url = RABBITMQ_URL): Promise<QueueState> {
  return waitUntil(
    `no consumer on queue ${queue}`,
    () => queueState(queue, url),
    (state) => state.consumers === 0,
    { timeoutMs: 10_000, stepMs: 50 },
  );
}

/** Takes every message off a queue (acknowledging them) and returns them. */
export async function drain(queue: string, url = RABBITMQ_URL): Promise<ConsumeMessage[]> {
  const conn = await connect(url);
  const out: ConsumeMessage[] = [];
  try {
    const ch = await conn.createChannel();
    for (;;) {
      const m = await ch.get(queue, { noAck: false });
      if (m === false) break;
      out.push(m as unknown as ConsumeMessage);
      ch.ack(m);
    }
    await ch.close();
  } finally {
    await conn.close();
  }
  return out;
}

export interface WorkerResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly stdout: string;
  /** Parsed JSON log lines. */
  readonly logs: Array<Record<string, unknown>>;
}

/** The worker's log lines with this message. */
export function logsWith(result: WorkerResult, msg: string): Array<Record<string, unknown>> {
  return result.logs.filter((l) => l['msg'] === msg);
}

export interface WorkerProcess {
  readonly child: ChildProcess;
  /** Resolves when the process exits. */
  readonly done: Promise<WorkerResult>;
  /** Log lines so far. */
  logs(): Array<Record<string, unknown>>;
}

/** The environment a test worker runs with; `env` overrides it. */
export function workerEnv(env: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env['PATH'] ?? '',
    HOME: process.env['HOME'] ?? '/tmp',
    RABBITMQ_URL,
    MLFLOW_TRACKING_URI: MLFLOW_URL,
    KMJ_DATASET_ROOTS: `${fixtures().dir}:${tmpdir()}`,
    // A cache of its own per worker (created by the worker on first use), removed after the run.
    KMJ_MODEL_CACHE_DIR: join(PACKAGE_ROOT, '.run', 'test-model-caches', uniqueId('cache')),
    KMJ_WORKER_IDLE_TIMEOUT_MS: '3000',
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: '2',
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: '0.1',
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: '0.1',
    MLFLOW_HTTP_REQUEST_TIMEOUT: '10',
    LOG_LEVEL: 'debug',
    ...env,
  };
}

/** Spawns `kmj worker --queue <queue>` and collects its output. */
export function startWorker(queue: string, env: Record<string, string> = {}): WorkerProcess {
  return spawnWorker(['--queue', queue], env);
}

/** Spawns `kmj worker --topic <topic> --group <group> ...args` against the test broker. */
export function startKafkaWorker(
  topic: string,
  group: string,
  env: Record<string, string> = {},
  args: readonly string[] = [],
): WorkerProcess {
  return spawnWorker(['--topic', topic, '--group', group, ...args], { KAFKA_BROKERS, KMJ_WORKER_KAFKA_SESSION_TIMEOUT_MS: '6000', ...env });
}

function spawnWorker(args: readonly string[], env: Record<string, string>): WorkerProcess {
  const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'bin', 'kmj.js'), 'worker', ...args], {
    env: workerEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let stdout = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  const parse = (): Array<Record<string, unknown>> =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const done = new Promise<WorkerResult>((resolve) => {
    child.once('exit', (code, signal) => {
      // Let the pipes drain before reading them.
      setImmediate(() => resolve({ code, signal, stderr, stdout, logs: parse() }));
    });
  });
  return { child, done, logs: parse };
}

export async function runWorker(queue: string, env: Record<string, string> = {}): Promise<WorkerResult> {
  return startWorker(queue, env).done;
}

/** Waits until a log line with message `msg` appears, or fails after `timeoutMs`. */
export function waitForLog(w: WorkerProcess, msg: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
  return waitUntil(
    `a "${msg}" log line`,
    () => {
      const logs = w.logs();
      const hit = logs.find((l) => l['msg'] === msg);
      // What the worker did log instead goes into the timeout's message.
      if (!hit) throw new Error(`logs: ${JSON.stringify(logs.map((l) => l['msg']))}`);
      return hit;
    },
    () => true,
    { timeoutMs, stepMs: 50 },
  );
}

/** One MLflow REST call (`path` under /api/2.0/mlflow/); throws on an error answer. */
export async function mlflowApi<T>(base: string, path: string, init: { method: string; body?: unknown; auth?: MlflowAuth }): Promise<T> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const user = credentialsOf(init.auth ?? false);
  if (user) headers['authorization'] = `Basic ${Buffer.from(`${user.username}:${user.password}`).toString('base64')}`;
  const res = await fetch(`${base}/api/2.0/mlflow/${path}`, {
    method: init.method,
    headers,
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`MLflow ${path}: HTTP ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

export interface RestRun {
  info: { run_id: string; status: string; run_name: string; artifact_uri: string; start_time: number; end_time?: number };
  data: {
    params?: Array<{ key: string; value: string }>;
    metrics?: Array<{ key: string; value: number }>;
    tags?: Array<{ key: string; value: string }>;
  };
}

/** Every run (deleted ones excluded) of an experiment, by name; [] when the experiment does not exist. */
export async function runsOf(experiment: string, base = MLFLOW_URL, auth: MlflowAuth = false): Promise<RestRun[]> {
  let id: string;
  try {
    id = (
      await mlflowApi<{ experiment: { experiment_id: string } }>(
        base,
        `experiments/get-by-name?experiment_name=${encodeURIComponent(experiment)}`,
        { method: 'GET', auth },
      )
    ).experiment.experiment_id;
  } catch (err) {
    if (/RESOURCE_DOES_NOT_EXIST|404/.test((err as Error).message)) return [];
    throw err;
  }
  const r = await mlflowApi<{ runs?: RestRun[] }>(base, 'runs/search', {
    method: 'POST',
    body: { experiment_ids: [id], max_results: 100 },
    auth,
  });
  return r.runs ?? [];
}

/** A run's latest metric values by key, as runs/search answers them. */
export function metricsOf(run: RestRun | undefined): Record<string, number> {
  return Object.fromEntries((run?.data.metrics ?? []).map((m) => [m.key, m.value]));
}

export function tagsOf(run: RestRun): Record<string, string> {
  return Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
}

export interface PythonRun {
  info: { run_id: string; status: string; run_name: string; start_time: number; end_time: number | null; artifact_uri: string };
  params: Record<string, string>;
  metrics: Record<string, number>;
  tags: Record<string, string>;
  inputs: Array<{
    name: string;
    digest: string;
    source_type: string;
    source: string;
    schema: string;
    profile: string;
    tags: Record<string, string>;
  }>;
  /** The logged models the run used, and the metrics this run logged about each. */
  model_inputs: Array<{ model_id: string; name: string; source_run_id: string; run_metrics: string[] }>;
  metric_history: Record<string, number[]>;
  artifacts: Record<string, string>;
}

/** The run as the real Python client reads it (mlflow.get_run, mlflow.artifacts.download_artifacts). */
export async function readRunWithPython(runId: string, base = MLFLOW_URL, auth: MlflowAuth = false): Promise<PythonRun> {
  const env = pythonMlflowEnv(base, auth);
  const { stdout } = await run(join(PACKAGE_ROOT, '.venv', 'bin', 'python'), [join(PACKAGE_ROOT, 'test', 'python', 'read_run.py'), runId], {
    env,
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(stdout) as PythonRun;
}

/** The environment of the Python MLflow client for `base`, signed in as `auth` says. */
export function pythonMlflowEnv(base: string, auth: MlflowAuth = false): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/tmp', MLFLOW_TRACKING_URI: base };
  const user = credentialsOf(auth);
  if (user) Object.assign(env, { MLFLOW_TRACKING_USERNAME: user.username, MLFLOW_TRACKING_PASSWORD: user.password });
  return env;
}

/** Parses a predictions CSV artifact into rows of strings keyed by header. */
export function parseCsv(text: string): Array<Record<string, string>> {
  const [header, ...lines] = text.trim().split('\n');
  const cols = (header ?? '').split(',');
  return lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i] ?? String(i), v])));
}
