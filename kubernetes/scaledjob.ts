/**
 * What `kmj status --scaledjob` reads from Kubernetes: the ScaledJob (READY, ACTIVE, paused,
 * strategy, its triggers), its Jobs with each worker's exit code as its outcome, and the pods that
 * are stuck, with the reason. The kubeconfig and context are found the way kubectl finds them:
 * --kubeconfig, else $KUBECONFIG (a list of files, merged), else ~/.kube/config, else the pod's
 * service account; the namespace is -n, else the context's, else "default".
 */
import { BatchV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, type V1Job, type V1Pod } from '@kubernetes/client-node';
import { deadline, raceAbort } from '../common/abort.ts';
import { EXIT } from '../common/exit-codes.ts';
import { NotFoundError } from '../common/errors.ts';

export interface KubeTarget {
  readonly kubeconfig?: string | undefined;
  readonly context?: string | undefined;
  readonly namespace?: string | undefined;
  /** The environment KUBECONFIG and HOME are read from. */
  readonly env: Readonly<Record<string, string | undefined>>;
}

export interface ScaledJobTrigger {
  readonly type: string;
  readonly metadata: Record<string, string>;
  readonly authenticationRef?: string;
}

export interface WorkerJob {
  readonly name: string;
  /** pending (no pod running yet), running, succeeded or failed, as the Job reports it. */
  readonly status: 'pending' | 'running' | 'succeeded' | 'failed';
  /** The worker container's exit code, once it has one. */
  readonly exitCode?: number;
  /** What the exit code means (docs/worker.md). */
  readonly outcome?: string;
  readonly ageSeconds: number;
  readonly pod?: string;
}

export interface StuckPod {
  readonly pod: string;
  readonly phase: string;
  readonly reason: string;
  readonly message?: string;
  readonly ageSeconds: number;
}

export interface ScaledJobReport {
  readonly context: string;
  readonly namespace: string;
  readonly name: string;
  readonly ready?: string;
  readonly active?: string;
  readonly paused: boolean;
  readonly strategy: string;
  readonly pollingInterval: number;
  readonly maxReplicaCount: number;
  readonly triggers: ScaledJobTrigger[];
  readonly ageSeconds: number;
  readonly jobs: WorkerJob[];
  readonly stuck: StuckPod[];
}

const OUTCOMES: Record<number, string> = {
  [EXIT.OK]: 'finished',
  [EXIT.DEAD_LETTERED]: 'dead-lettered',
  [EXIT.REQUEUED]: 'requeued',
  [EXIT.UNSETTLED]: 'requeued (broker connection lost)',
  [EXIT.UNAVAILABLE]: 'broker unreachable',
  [EXIT.INTERNAL]: 'internal error',
  78: 'bad configuration',
  137: 'killed (SIGKILL, e.g. out of memory)',
  143: 'stopped (SIGTERM)',
};

/** The outcome a worker's exit code stands for. */
export function outcomeOfExit(code: number): string {
  return OUTCOMES[code] ?? `exit ${code}`;
}

/** Waiting reasons that mean a pod will not start by itself. */
const STUCK_WAITING =
  /^(ErrImagePull|ImagePullBackOff|ErrImageNeverPull|InvalidImageName|CreateContainerConfigError|CreateContainerError|RunContainerError|CrashLoopBackOff)$/;
/** A pod Pending longer than this without a reason is shown as stuck too. */
const PENDING_STUCK_S = 60;

export function loadKubeConfig(target: KubeTarget): { kc: KubeConfig; context: string; namespace: string } {
  const kc = new KubeConfig();
  if (target.kubeconfig !== undefined) kc.loadFromFile(target.kubeconfig);
  else {
    // loadFromDefault reads process.env; the command's own environment decides here.
    const saved = { KUBECONFIG: process.env['KUBECONFIG'], HOME: process.env['HOME'] };
    setEnv('KUBECONFIG', target.env['KUBECONFIG']);
    setEnv('HOME', target.env['HOME']);
    try {
      kc.loadFromDefault();
    } finally {
      setEnv('KUBECONFIG', saved.KUBECONFIG);
      setEnv('HOME', saved.HOME);
    }
  }
  if (target.context !== undefined) {
    if (!kc.getContextObject(target.context))
      throw new Error(
        `--context: no context ${JSON.stringify(target.context)} in the kubeconfig (${
          kc
            .getContexts()
            .map((c) => c.name)
            .join(', ') || 'none'
        })`,
      );
    kc.setCurrentContext(target.context);
  }
  const context = kc.getCurrentContext();
  if (!context || !kc.getCurrentCluster())
    throw new Error('no Kubernetes cluster configured: set KUBECONFIG or --kubeconfig, as for kubectl');
  const namespace = target.namespace ?? kc.getContextObject(context)?.namespace ?? 'default';
  return { kc, context, namespace };
}

function setEnv(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}

function ageOf(timestamp: Date | string | undefined, now: number): number {
  if (timestamp === undefined) return 0;
  return Math.max(0, Math.round((now - new Date(timestamp).getTime()) / 1000));
}

/** One Kubernetes API call, bounded by `ms`, its failure as one line naming `what`. */
async function ask<T>(what: string, call: Promise<T>, ms: number): Promise<T> {
  const bound = deadline(ms, undefined, 'the Kubernetes API');
  try {
    return await raceAbort(call, bound.signal);
  } catch (err) {
    throw apiError(what, err);
  } finally {
    bound.dispose();
  }
}

/** A Kubernetes API error as one line: the status code and the API's message. */
function apiError(what: string, err: unknown): Error {
  const e = err as { code?: number; body?: unknown; message?: string };
  let detail = e.message ?? String(err);
  if (typeof e.body === 'string') {
    try {
      detail = (JSON.parse(e.body) as { message?: string }).message ?? detail;
    } catch {
      // not JSON: keep the message
    }
  }
  if (e.code === 404) return new NotFoundError(what);
  return new Error(`${what}: ${e.code !== undefined ? `HTTP ${e.code}: ` : ''}${detail.split('\n')[0]}`);
}

interface ScaledJobObject {
  metadata?: { creationTimestamp?: string; annotations?: Record<string, string> };
  spec?: {
    pollingInterval?: number;
    maxReplicaCount?: number;
    scalingStrategy?: { strategy?: string };
    triggers?: Array<{ type?: string; metadata?: Record<string, string>; authenticationRef?: { name?: string } }>;
  };
  status?: { conditions?: Array<{ type?: string; status?: string }> };
}

function workerContainerExit(pod: V1Pod | undefined): number | undefined {
  const statuses = pod?.status?.containerStatuses ?? [];
  for (const s of statuses) if (s.state?.terminated) return s.state.terminated.exitCode;
  return undefined;
}

function jobStatus(job: V1Job): WorkerJob['status'] {
  const s = job.status ?? {};
  const done = (s.conditions ?? []).find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');
  if (done?.type === 'Complete' || (s.succeeded ?? 0) > 0) return 'succeeded';
  if (done?.type === 'Failed' || (s.failed ?? 0) > 0) return 'failed';
  return (s.ready ?? 0) > 0 ? 'running' : 'pending';
}

function stuckReason(pod: V1Pod, now: number): StuckPod | undefined {
  const name = pod.metadata?.name ?? '?';
  const phase = pod.status?.phase ?? 'Unknown';
  const ageSeconds = ageOf(pod.metadata?.creationTimestamp, now);
  if (phase !== 'Pending') return undefined;
  for (const s of [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])]) {
    const w = s.state?.waiting;
    if (w?.reason && STUCK_WAITING.test(w.reason))
      return { pod: name, phase, reason: w.reason, ...(w.message ? { message: w.message } : {}), ageSeconds };
  }
  const scheduled = (pod.status?.conditions ?? []).find((c) => c.type === 'PodScheduled');
  if (scheduled?.status === 'False')
    return {
      pod: name,
      phase,
      reason: scheduled.reason ?? 'Unschedulable',
      ...(scheduled.message ? { message: scheduled.message } : {}),
      ageSeconds,
    };
  if (ageSeconds > PENDING_STUCK_S) return { pod: name, phase, reason: 'Pending', message: `pending for ${ageSeconds} s`, ageSeconds };
  return undefined;
}

/** Reads the ScaledJob, its Jobs and their pods. */
export async function readScaledJob(target: KubeTarget, name: string, timeoutMs = 8000): Promise<ScaledJobReport> {
  const { kc, context, namespace } = loadKubeConfig(target);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const batch = kc.makeApiClient(BatchV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  const what = `scaledjob ${namespace}/${name}`;
  const labelSelector = `scaledjob.keda.sh/name=${name}`;
  const [sj, jobs, pods] = await Promise.all([
    ask(
      what,
      custom.getNamespacedCustomObject({ group: 'keda.sh', version: 'v1alpha1', namespace, plural: 'scaledjobs', name }),
      timeoutMs,
    ) as Promise<ScaledJobObject>,
    ask(`jobs of ${what}`, batch.listNamespacedJob({ namespace, labelSelector }), timeoutMs),
    ask(`pods in ${namespace}`, core.listNamespacedPod({ namespace }), timeoutMs),
  ]);
  const now = Date.now();
  const jobNames = new Set(jobs.items.map((j) => j.metadata?.name));
  const podsOfJob = new Map<string, V1Pod[]>();
  for (const p of pods.items) {
    const owner = p.metadata?.ownerReferences?.find((o) => o.kind === 'Job')?.name ?? p.metadata?.labels?.['job-name'];
    if (owner === undefined || !jobNames.has(owner)) continue;
    podsOfJob.set(owner, [...(podsOfJob.get(owner) ?? []), p]);
  }
  const workerJobs: WorkerJob[] = jobs.items
    .map((j) => {
      const jobName = j.metadata?.name ?? '?';
      const jobPods = (podsOfJob.get(jobName) ?? []).sort(
        (a, b) => ageOf(a.metadata?.creationTimestamp, now) - ageOf(b.metadata?.creationTimestamp, now),
      );
      const pod = jobPods[0];
      const exitCode = workerContainerExit(pod);
      let status = jobStatus(j);
      if (status === 'pending' && pod?.status?.phase === 'Running') status = 'running';
      return {
        name: jobName,
        status,
        ...(exitCode !== undefined ? { exitCode, outcome: outcomeOfExit(exitCode) } : {}),
        ageSeconds: ageOf(j.metadata?.creationTimestamp, now),
        ...(pod?.metadata?.name ? { pod: pod.metadata.name } : {}),
      };
    })
    .sort((a, b) => b.ageSeconds - a.ageSeconds || a.name.localeCompare(b.name));
  const stuck = [...podsOfJob.values()].flat().flatMap((p) => {
    const s = stuckReason(p, now);
    return s ? [s] : [];
  });
  const cond = (t: string): string | undefined => sj.status?.conditions?.find((c) => c.type === t)?.status;
  const ready = cond('Ready');
  const active = cond('Active');
  const pausedAnnotation = sj.metadata?.annotations?.['autoscaling.keda.sh/paused'];
  return {
    context,
    namespace,
    name,
    ...(ready !== undefined ? { ready } : {}),
    ...(active !== undefined ? { active } : {}),
    paused: cond('Paused') === 'True' || pausedAnnotation === 'true',
    strategy: sj.spec?.scalingStrategy?.strategy ?? 'default',
    pollingInterval: sj.spec?.pollingInterval ?? 30,
    maxReplicaCount: sj.spec?.maxReplicaCount ?? 100,
    triggers: (sj.spec?.triggers ?? []).map((t) => ({
      type: t.type ?? '?',
      metadata: { ...(t.metadata ?? {}) },
      ...(t.authenticationRef?.name ? { authenticationRef: t.authenticationRef.name } : {}),
    })),
    ageSeconds: ageOf(sj.metadata?.creationTimestamp, now),
    jobs: workerJobs,
    stuck,
  };
}

/** An age as kubectl prints it: 45s, 3m12s, 2h5m, 4d. */
export function formatAge(seconds: number): string {
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 600) return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
  if (seconds < 3 * 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 48 * 3600) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d`;
}

/**
 * The resources KEDA's API group serves (keda.sh/v1alpha1: scaledjobs, triggerauthentications…),
 * read through API discovery, which every authenticated user may read (`kmj doctor` runs it with
 * a worker pod's own service account). NotFoundError when KEDA's CRDs are not installed.
 */
export async function kedaResources(target: KubeTarget, timeoutMs = 8000): Promise<{ resources: string[]; server: string }> {
  const { kc } = loadKubeConfig(target);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const list = await ask('the keda.sh/v1alpha1 API', custom.getAPIResources({ group: 'keda.sh', version: 'v1alpha1' }), timeoutMs);
  return {
    resources: list.resources
      .map((r) => r.name)
      .filter((n) => !n.includes('/'))
      .sort(),
    server: kc.getCurrentCluster()?.server ?? '?',
  };
}
