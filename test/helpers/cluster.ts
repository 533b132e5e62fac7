/**
 * The real single-node cluster of scripts/cluster.sh with the project deployed by
 * scripts/cluster-deploy.sh (overlays/local/): kubectl as a user runs it, and what the cluster
 * tests read back (Jobs, pods, the ScaledJob's conditions, runs through the Python client).
 */
import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PACKAGE_ROOT, packageFile } from '../../common/paths.ts';
import { connect } from 'amqplib';
import { fixtures, pythonMlflowEnv, runsOf, uniqueId, type MlflowAuth, type MlflowCredentials, type RestRun } from './worker.ts';

const run = promisify(execFile);

export const NAMESPACE = 'kmj';
export const SCALED_JOB = 'ml-requests';
export const QUEUE = 'ml-requests';
/** The node's address on lo: what pods reach the host's services at. */
export const NODE_IP = '10.250.0.1';
/** The scaler's Service, by the name the trigger gives (keda/scaledjob.yaml) and its certificate names. */
export const SCALER_NAME = 'kmj-scaler.kmj.svc';
export const SCALER_ADDRESS = `${SCALER_NAME}:6000`;
export const KUBECONFIG = process.env['KMJ_TEST_KUBECONFIG'] ?? join(PACKAGE_ROOT, '.run', 'cluster', 'pki', 'admin.kubeconfig');
export const DEPLOY_DIR = join(PACKAGE_ROOT, '.run', 'cluster-deploy');

/** kubectl ARGS against the test cluster; its stdout. */
export async function kubectl(args: readonly string[], input?: string): Promise<string> {
  const child = run('kubectl', ['--kubeconfig', KUBECONFIG, ...args], { maxBuffer: 64 * 1024 * 1024, timeout: 60_000 });
  if (input !== undefined) {
    child.child.stdin?.end(input);
  }
  const { stdout } = await child;
  return stdout;
}

export async function kubectlJson<T>(args: readonly string[]): Promise<T> {
  return JSON.parse(await kubectl([...args, '-o', 'json'])) as T;
}

export interface Job {
  metadata: { name: string; creationTimestamp: string; labels?: Record<string, string> };
  status: { active?: number; succeeded?: number; failed?: number; conditions?: Array<{ type: string; status: string; reason?: string }> };
}

export interface Pod {
  metadata: { name: string; labels?: Record<string, string>; deletionTimestamp?: string };
  status: {
    phase: string;
    containerStatuses?: Array<{
      name: string;
      state: { running?: object; terminated?: { exitCode: number; reason?: string }; waiting?: { reason?: string } };
    }>;
  };
}

/** A Job that has ended, either way. */
export function finished(job: Job): boolean {
  return (job.status.succeeded ?? 0) + (job.status.failed ?? 0) > 0;
}

/** The worker Jobs of the ScaledJob (KEDA labels them scaledjob.keda.sh/name). */
export async function workerJobs(): Promise<Job[]> {
  const list = await kubectlJson<{ items: Job[] }>(['-n', NAMESPACE, 'get', 'jobs', '-l', `scaledjob.keda.sh/name=${SCALED_JOB}`]);
  return list.items;
}

export async function workerPods(): Promise<Pod[]> {
  const list = await kubectlJson<{ items: Pod[] }>(['-n', NAMESPACE, 'get', 'pods', '-l', 'app.kubernetes.io/name=kmj-worker']);
  return list.items;
}

/** The worker container's exit code, or undefined while it has none. */
export function exitCodeOf(pod: Pod): number | undefined {
  return pod.status.containerStatuses?.find((c) => c.name === 'worker')?.state.terminated?.exitCode;
}

export interface ScaledJobStatus {
  readonly ready: string | undefined;
  readonly active: string | undefined;
  readonly paused: string | undefined;
}

/** READY and ACTIVE as `kubectl get scaledjob` shows them (the Ready and Active conditions). */
export async function scaledJobStatus(): Promise<ScaledJobStatus> {
  const sj = await kubectlJson<{ status?: { conditions?: Array<{ type: string; status: string }> } }>([
    '-n',
    NAMESPACE,
    'get',
    'scaledjob',
    SCALED_JOB,
  ]);
  const cond = (t: string): string | undefined => sj.status?.conditions?.find((c) => c.type === t)?.status;
  return { ready: cond('Ready'), active: cond('Active'), paused: cond('Paused') };
}

/** Patches the ScaledJob's spec (a JSON merge patch). */
export async function patchScaledJob(spec: Record<string, unknown>): Promise<void> {
  await kubectl(['-n', NAMESPACE, 'patch', 'scaledjob', SCALED_JOB, '--type', 'merge', '-p', JSON.stringify({ spec })]);
}

/**
 * The scaler Service's cluster IP. The host has no cluster DNS, but kube-proxy's rules reach a
 * cluster IP from it; a TLS client checks the certificate against SCALER_NAME.
 */
export async function scalerIp(): Promise<string> {
  return (await kubectl(['-n', NAMESPACE, 'get', 'service', 'kmj-scaler', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
}

/** The node cache's /metrics (manifests/model-cache.yaml), read from its pod on this node. */
export async function nodeCacheMetrics(): Promise<string> {
  const list = await kubectlJson<{ items: Array<{ status: { podIP?: string; phase?: string } }> }>([
    '-n',
    NAMESPACE,
    'get',
    'pods',
    '-l',
    'app.kubernetes.io/name=kmj-model-cache',
  ]);
  const ip = list.items.find((p) => p.status.phase === 'Running')?.status.podIP;
  if (!ip) throw new Error('no running node cache pod');
  const res = await fetch(`http://${ip}:8090/metrics`, { signal: AbortSignal.timeout(5000) });
  return res.text();
}

/** gRPC channel options that check the scaler's certificate against its Service name. */
export const SCALER_TLS_NAME_OPTIONS = { 'grpc.ssl_target_name_override': SCALER_NAME, 'grpc.default_authority': SCALER_NAME } as const;

/** Deletes every worker Job and its pods, and waits until they are gone. */
export async function deleteWorkerJobs(): Promise<void> {
  await kubectl([
    '-n',
    NAMESPACE,
    'delete',
    'jobs',
    '-l',
    `scaledjob.keda.sh/name=${SCALED_JOB}`,
    '--cascade=foreground',
    '--wait=true',
    '--timeout=120s',
  ]);
  await kubectl(['-n', NAMESPACE, 'delete', 'pods', '-l', 'app.kubernetes.io/name=kmj-worker', '--wait=true', '--timeout=120s']);
}

/**
 * The cluster's RabbitMQ and MLflow (manifests/, deployed by scripts/cluster-deploy.sh) as the host
 * reaches them: by their Services' cluster IPs, which kube-proxy routes here (the host has no
 * cluster DNS), signed in as their administrators.
 */
export interface ClusterServices {
  readonly rabbitmqUrl: string;
  readonly managementUrl: string;
  readonly mlflowUrl: string;
  readonly mlflowAdmin: MlflowCredentials;
}

let services: ClusterServices | undefined;

/** What `scripts/cluster-deploy.sh --env` prints; read once, or again with `fresh` (after a new deployment). */
export function clusterServices(fresh = false): ClusterServices {
  if (services && !fresh) return services;
  const out = execFileSync('bash', [packageFile('scripts', 'cluster-deploy.sh'), '--env'], {
    encoding: 'utf8',
    env: { ...process.env, KUBECONFIG },
    timeout: 60_000,
  });
  const vars = new Map<string, string>();
  for (const m of out.matchAll(/^export (\w+)=(.*)$/gm)) vars.set(m[1] ?? '', m[2] ?? '');
  const need = (k: string): string => {
    const v = vars.get(k);
    if (!v) throw new Error(`scripts/cluster-deploy.sh --env printed no ${k}`);
    return v;
  };
  services = {
    rabbitmqUrl: need('KMJ_CLUSTER_RABBITMQ_URL'),
    managementUrl: need('KMJ_CLUSTER_RABBITMQ_MANAGEMENT_URL'),
    mlflowUrl: need('KMJ_CLUSTER_MLFLOW_URL'),
    mlflowAdmin: { username: need('KMJ_CLUSTER_MLFLOW_USERNAME'), password: need('KMJ_CLUSTER_MLFLOW_PASSWORD') },
  };
  return services;
}

/** The runs of an experiment in the cluster's MLflow, read over REST as its administrator. */
export async function clusterRunsOf(experiment: string): Promise<RestRun[]> {
  const s = clusterServices();
  return runsOf(experiment, s.mlflowUrl, s.mlflowAdmin);
}

/** The cluster's RabbitMQ, as its administrator. */
export const rabbit = (): string => clusterServices().rabbitmqUrl;

/** A valid request that a pod can run: the registry's classifier on the iris CSV stored in the cluster's MLflow. */
export function podRequest(experiment: string, overrides: Record<string, unknown> = {}): Record<string, unknown> & { requestId: string } {
  const f = fixtures('fixtures-cluster');
  return {
    version: 1,
    requestId: uniqueId('req'),
    model: `models:/${f.models['classifier']?.name}@${f.models['classifier']?.alias}`,
    dataset: { uri: f.datasets.runsCsvUri },
    experiment,
    labelColumn: f.label,
    ...overrides,
  };
}

export async function publishAll(bodies: readonly unknown[]): Promise<void> {
  const conn = await connect(rabbit());
  try {
    const ch = await conn.createConfirmChannel();
    for (const b of bodies) {
      // Stamped as kmj submit stamps it: the worker reports the wait from it.
      ch.sendToQueue(QUEUE, Buffer.from(typeof b === 'string' ? b : JSON.stringify(b)), {
        persistent: true,
        contentType: 'application/json',
        timestamp: Math.floor(Date.now() / 1000),
      });
    }
    await ch.waitForConfirms();
  } finally {
    await conn.close();
  }
}

export async function purge(queue: string): Promise<void> {
  const conn = await connect(rabbit());
  try {
    const ch = await conn.createChannel();
    await ch.purgeQueue(queue);
  } finally {
    await conn.close();
  }
}

export interface PythonSearchedRun {
  run_id: string;
  status: string;
  tags: Record<string, string>;
}

/**
 * Every run of an experiment as the real Python client finds it (MlflowClient.search_runs): by
 * default in the cluster's MLflow, through its Service, as its administrator.
 */
export async function searchRunsWithPython(experiment: string, base?: string, auth?: MlflowAuth): Promise<PythonSearchedRun[]> {
  const env =
    base === undefined ? pythonMlflowEnv(clusterServices().mlflowUrl, clusterServices().mlflowAdmin) : pythonMlflowEnv(base, auth);
  const { stdout } = await run(
    join(PACKAGE_ROOT, '.venv', 'bin', 'python'),
    [join(PACKAGE_ROOT, 'test', 'python', 'search_runs.py'), experiment],
    { env, maxBuffer: 16 * 1024 * 1024 },
  );
  return JSON.parse(stdout) as PythonSearchedRun[];
}
