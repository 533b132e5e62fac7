// What a user does on an empty cluster, and what the system then survives. The namespace is
// deleted with everything in it (its volumes too), and the project is deployed the way
// docs/deploy.md says: the Secrets of manifests/secrets.example.yaml, then
// `kubectl apply -k overlays/local/` (scripts/cluster-deploy.sh; the setup Job of
// manifests/setup.yaml makes the broker users, the queue and the worker's MLflow user). Nothing on
// the host takes part: requests go to the cluster's RabbitMQ, runs to the cluster's MLflow
// (Postgres backend, basic auth, artifacts on a bound volume), read back with the Python client
// through its Service. Then RabbitMQ, Postgres and MLflow are deleted one at a time while requests
// are in flight.
//
// test/cluster/cluster.test.ts runs this part first, and it leaves the deployment as it made it
// for the parts after it.
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { deadLetterQueueOf } from '../../rabbitmq/topology.ts';
import {
  DEPLOY_DIR,
  KUBECONFIG,
  NAMESPACE,
  QUEUE,
  SCALED_JOB,
  clusterRunsOf,
  clusterServices,
  finished,
  kubectl,
  kubectlJson,
  patchScaledJob,
  podRequest,
  publishAll,
  rabbit,
  scaledJobStatus,
  searchRunsWithPython,
  workerJobs,
  workerPods,
} from '../helpers/cluster.ts';
import { queueState, queueStateAfterExit, readRunWithPython, uniqueId } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const run = promisify(execFile);

/** scripts/cluster-deploy.sh with ARGS; how long it took. */
async function deploy(args: readonly string[] = []): Promise<number> {
  const started = Date.now();
  try {
    await run('bash', [packageFile('scripts', 'cluster-deploy.sh'), ...args], {
      env: { ...process.env, KUBECONFIG },
      maxBuffer: 64 * 1024 * 1024,
      timeout: 900_000,
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(
      `scripts/cluster-deploy.sh ${args.join(' ')} failed: ${e.message}\n${(e.stderr ?? '').split('\n').slice(-40).join('\n')}`,
      { cause: err },
    );
  }
  return (Date.now() - started) / 1000;
}

interface Claim {
  metadata: { name: string };
  status: { phase: string };
}

/** The names of the pods that are Ready, by a label selector. */
async function readyPods(selector: string): Promise<string[]> {
  const pods = await kubectlJson<{
    items: Array<{
      metadata: { name: string; deletionTimestamp?: string };
      status: { conditions?: Array<{ type: string; status: string }> };
    }>;
  }>(['-n', NAMESPACE, 'get', 'pods', '-l', selector]);
  return pods.items
    .filter((p) => !p.metadata.deletionTimestamp && p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
    .map((p) => p.metadata.name);
}

/** FINISHED runs per request id in the cluster's MLflow, as the Python client finds them. */
async function finishedByRequest(experiment: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const r of await searchRunsWithPython(experiment)) {
    if (r.status !== 'FINISHED') continue;
    const id = r.tags['kmj.request_id'] ?? '';
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

beforeAll(async () => {
  await deploy(['--delete']);
  expect(await kubectl(['get', 'namespaces', '-o', 'name'])).not.toMatch(new RegExp(`^namespace/${NAMESPACE}$`, 'm'));
  const deploySeconds = await deploy();
  // How long a deployment from empty took, for the record (docs/deploy.md quotes it).
  writeFileSync(join(DEPLOY_DIR, 'from-empty.json'), JSON.stringify({ at: new Date().toISOString(), deploySeconds }, null, 2));
  clusterServices(true);
}, 1_500_000);

describe('from an empty namespace: the Secrets and kubectl apply -k overlays/local/, nothing else', () => {
  it('gives every claim bound, RabbitMQ, Postgres, MLflow and the scaler Ready, the setup Job complete and the ScaledJob READY; applying again changes nothing', async () => {
    const claims = await kubectlJson<{ items: Claim[] }>(['-n', NAMESPACE, 'get', 'pvc']);
    expect(claims.items.map((c) => `${c.metadata.name} ${c.status.phase}`).sort()).toEqual([
      'data-postgres-0 Bound',
      'data-rabbitmq-0 Bound',
      'mlflow-artifacts Bound',
    ]);
    for (const app of ['rabbitmq', 'postgres', 'mlflow', 'kmj-scaler'])
      expect(await readyPods(`app.kubernetes.io/name=${app}`), app).toHaveLength(1);
    const setup = await kubectlJson<{ status: { succeeded?: number } }>(['-n', NAMESPACE, 'get', 'job', 'kmj-setup']);
    expect(setup.status.succeeded).toBe(1);
    expect((await scaledJobStatus()).ready).toBe('True');
    // The setup Job's queue, as the worker's arguments declare it, and its dead-letter queue.
    expect(await queueStateAfterExit(QUEUE, rabbit())).toEqual({ messages: 0, consumers: 0 });
    expect(await queueState(deadLetterQueueOf(QUEUE), rabbit())).toEqual({ messages: 0, consumers: 0 });

    // Applying again changes no spec: no rollout, no new setup Job. (kubectl reports the
    // StatefulSets "configured" each time, a client-side apply quirk with volumeClaimTemplates,
    // whose patch changes nothing: their generation stays.)
    const generations = async (): Promise<string[]> =>
      (
        await kubectlJson<{ items: Array<{ kind: string; metadata: { name: string; generation?: number; uid: string } }> }>([
          '-n',
          NAMESPACE,
          'get',
          'deployments,statefulsets,jobs,scaledjobs',
        ])
      ).items
        .map((o) => `${o.kind}/${o.metadata.name} ${o.metadata.generation} ${o.metadata.uid}`)
        .sort();
    const before = await generations();
    const again = await kubectl(['apply', '-k', packageFile('overlays', 'local')]);
    expect(
      again
        .trim()
        .split('\n')
        .filter((l) => !/ (unchanged|configured)$/.test(l)),
      again,
    ).toEqual([]);
    expect(await generations()).toEqual(before);
  }, 120_000);

  it("requests published to the cluster's RabbitMQ give one Job each and FINISHED runs in the cluster's MLflow, with their artifacts, read back with the Python client", async () => {
    // The ScaledJob as deployed: KEDA polls every 10 s and keeps 5 succeeded Jobs.
    const experiment = uniqueId('cluster-empty');
    const requests = Array.from({ length: 4 }, () => podRequest(experiment));
    await publishAll(requests);
    await waitUntil(
      '4 FINISHED runs',
      () => clusterRunsOf(experiment),
      (runs) => runs.filter((r) => r.info.status === 'FINISHED').length === 4,
      { timeoutMs: 240_000, stepMs: 1000 },
    );
    await waitUntil('no Job still running', workerJobs, (jobs) => jobs.length > 0 && jobs.every(finished), {
      timeoutMs: 120_000,
      stepMs: 1000,
    });

    const runs = await searchRunsWithPython(experiment);
    expect(runs.map((r) => r.status)).toEqual(Array(4).fill('FINISHED'));
    expect(new Set(runs.map((r) => r.tags['kmj.request_id']))).toEqual(new Set(requests.map((r) => r.requestId)));
    const jobs = await workerJobs();
    expect(jobs.map((j) => j.status.succeeded)).toEqual([1, 1, 1, 1]);
    expect(new Set(runs.map((r) => r.tags['kmj.pod']))).toEqual(new Set((await workerPods()).map((p) => p.metadata.name)));
    // The worker's MLflow user reads the registry with MLflow's default READ: MLflow refuses it
    // the link from the run to the logged model (EDIT on the model's experiment), and the run
    // says so.
    expect(runs.map((r) => r.tags['kmj.model_link'])).toEqual(Array(4).fill('refused'));
    // The artifacts went through MLflow's proxy onto its volume, and come back from there.
    const s = clusterServices();
    const py = await readRunWithPython(runs[0]?.run_id ?? '', s.mlflowUrl, s.mlflowAdmin);
    expect(Object.keys(py.artifacts)).toContain('predictions/predictions.csv');
    expect(await queueStateAfterExit(QUEUE, rabbit())).toEqual({ messages: 0, consumers: 0 });
  }, 420_000);
});

describe('RabbitMQ, Postgres and MLflow deleted one at a time while requests are in flight', () => {
  const POLL_S = 2;
  let saved: Record<string, unknown> | undefined;

  beforeAll(async () => {
    const live = await kubectlJson<{ spec: Record<string, unknown> }>(['-n', NAMESPACE, 'get', 'scaledjob', SCALED_JOB]);
    saved = {
      pollingInterval: live.spec['pollingInterval'] ?? null,
      successfulJobsHistoryLimit: live.spec['successfulJobsHistoryLimit'] ?? null,
      failedJobsHistoryLimit: live.spec['failedJobsHistoryLimit'] ?? null,
    };
    await patchScaledJob({ pollingInterval: POLL_S, successfulJobsHistoryLimit: 100, failedJobsHistoryLimit: 100 });
  }, 60_000);

  afterAll(async () => {
    if (saved) await patchScaledJob(saved);
  }, 60_000);

  /** What is deleted, how its pod is found, and whether requests can be published while it is gone. */
  const targets = [
    { name: 'rabbitmq', selector: 'app.kubernetes.io/name=rabbitmq', publishWhileGone: false },
    { name: 'postgres', selector: 'app.kubernetes.io/name=postgres', publishWhileGone: true },
    { name: 'mlflow', selector: 'app.kubernetes.io/name=mlflow', publishWhileGone: true },
  ] as const;

  it('each comes back with its data, and every request ends FINISHED exactly once: none lost, none doubled', async () => {
    const experiment = uniqueId('cluster-chaos');
    const published: string[] = [];
    const send = async (n: number): Promise<void> => {
      const requests = Array.from({ length: n }, () => podRequest(experiment));
      await publishAll(requests);
      published.push(...requests.map((r) => r.requestId));
    };
    const firstRuns: string[] = [];
    // Seconds each step took, per target: written to chaos.json beside from-empty.json, for the
    // time this case costs the run (the longest of the cluster suite).
    const timings: Record<string, Record<string, number>> = {};
    for (const target of targets) {
      const steps: Record<string, number> = {};
      timings[target.name] = steps;
      let mark = Date.now();
      const step = (name: string): void => {
        steps[name] = (Date.now() - mark) / 1000;
        mark = Date.now();
      };
      await send(4);
      // In flight: taken by worker pods that are running.
      await waitUntil(
        `workers running before ${target.name} goes`,
        workerPods,
        (pods) => pods.filter((p) => p.status.phase === 'Running').length >= 2,
        { timeoutMs: 120_000, stepMs: 250 },
      );
      step('workersRunning');
      const [before] = await readyPods(target.selector);
      expect(before, target.name).toBeDefined();
      await kubectl(['-n', NAMESPACE, 'delete', 'pod', before!, '--wait=true', '--timeout=180s']);
      step('deleted');
      if (target.publishWhileGone) await send(2);
      await waitUntil(
        `${target.name} Ready again`,
        () => readyPods(target.selector),
        (names) => names.length === 1,
        { timeoutMs: 300_000, stepMs: 1000 },
      );
      step('readyAgain');
      await waitUntil(
        `every request so far FINISHED after ${target.name} came back`,
        () => finishedByRequest(experiment),
        (c) => published.every((id) => (c.get(id) ?? 0) >= 1),
        { timeoutMs: 420_000, stepMs: 2000 },
      );
      step('allFinished');
      writeFileSync(join(DEPLOY_DIR, 'chaos.json'), JSON.stringify({ at: new Date().toISOString(), seconds: timings }, null, 2));
      // Its data survived: the runs of before (Postgres), a run's artifacts (MLflow's volume);
      // RabbitMQ's queue and users are what the workers went on using.
      const runs = await searchRunsWithPython(experiment);
      if (firstRuns.length === 0) firstRuns.push(...runs.map((r) => r.run_id));
      expect(firstRuns.every((id) => runs.some((r) => r.run_id === id))).toBe(true);
      const s = clusterServices();
      const py = await readRunWithPython(firstRuns[0] ?? '', s.mlflowUrl, s.mlflowAdmin);
      expect(Object.keys(py.artifacts)).toContain('predictions/predictions.csv');
    }
    await waitUntil('no Job still running', workerJobs, (jobs) => jobs.every(finished), { timeoutMs: 180_000, stepMs: 1000 });
    const counts = await finishedByRequest(experiment);
    expect(published).toHaveLength(16);
    expect(published.filter((id) => counts.get(id) !== 1)).toEqual([]);
    expect([...counts.keys()].filter((id) => !published.includes(id))).toEqual([]);
    expect(await queueStateAfterExit(QUEUE, rabbit())).toEqual({ messages: 0, consumers: 0 });
    expect(await queueState(deadLetterQueueOf(QUEUE), rabbit())).toEqual({ messages: 0, consumers: 0 });
  }, 1_800_000);
});
