// The cluster the project runs on is the one a k3s user has (scripts/cluster.sh): cluster DNS from
// CoreDNS, k3s' local-path StorageClass, and KEDA as its release manifest installs it, with its
// operator under its own ServiceAccount and its admission webhooks answering.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { packageFile } from '../../common/paths.ts';
import { NAMESPACE, SCALER_NAME, kubectl, kubectlJson } from '../helpers/cluster.ts';
import { fixtures } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const IMAGE = 'kmj.local/keda-ml-jobs:0.1.0';
const made: Array<[kind: string, name: string]> = [];
afterAll(async () => {
  for (const [kind, name] of made.reverse())
    await kubectl(['-n', NAMESPACE, 'delete', kind, name, '--ignore-not-found', '--wait=true', '--timeout=120s']).catch(() => undefined);
}, 180_000);

/** A pod under Pod Security "restricted" (the namespace enforces it) running `node -e script`. */
function nodePod(name: string, script: string, extra: { volumes?: unknown[]; mounts?: unknown[] } = {}): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: NAMESPACE },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'check',
          image: IMAGE,
          imagePullPolicy: 'Never',
          command: ['/usr/local/bin/node', '-e', script],
          resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { cpu: '500m', memory: '128Mi' } },
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
          volumeMounts: extra.mounts ?? [],
        },
      ],
      volumes: extra.volumes ?? [],
    },
  };
}

/** Applies a pod, waits for it to end, and returns its log (it must have succeeded). */
async function runPod(pod: Record<string, unknown>): Promise<string> {
  const name = (pod['metadata'] as { name: string }).name;
  made.push(['pod', name]);
  await kubectl(['apply', '-f', '-'], JSON.stringify(pod));
  const phase = await waitUntil(
    `pod ${name} ended`,
    async () => (await kubectlJson<{ status: { phase: string } }>(['-n', NAMESPACE, 'get', 'pod', name])).status.phase,
    (p) => p === 'Succeeded' || p === 'Failed',
    { timeoutMs: 120_000, stepMs: 500 },
  );
  const log = await kubectl(['-n', NAMESPACE, 'logs', name]);
  expect(phase, log).toBe('Succeeded');
  return log;
}

describe('the cluster as k3s gives it', () => {
  it("cluster DNS: a pod resolves the Services of manifests/ (the scaler, RabbitMQ, MLflow), the apiserver's and the node's name", async () => {
    const services = ['kmj-scaler', 'rabbitmq', 'mlflow'];
    const names = [SCALER_NAME, 'rabbitmq.kmj.svc', 'mlflow.kmj.svc', 'kubernetes.default.svc.cluster.local', 'kmj-node'];
    const script = `const dns = require('node:dns').promises; Promise.all(${JSON.stringify(names)}.map((n) => dns.lookup(n).then((a) => n + ' ' + a.address))).then((l) => console.log(l.join('\\n')))`;
    const log = await runPod(nodePod(`dns-${randomUUID().slice(0, 8)}`, script));
    const ips = await Promise.all(
      services.map(async (s) => (await kubectl(['-n', NAMESPACE, 'get', 'service', s, '-o', 'jsonpath={.spec.clusterIP}'])).trim()),
    );
    expect(log.trim().split('\n')).toEqual([
      ...names.slice(0, 3).map((n, i) => `${n} ${ips[i]}`),
      'kubernetes.default.svc.cluster.local 10.96.0.1',
      'kmj-node 10.250.0.1',
    ]);
  }, 180_000);

  it("storage: a claim of the default class binds when a pod uses it, as a local volume the pod's fsGroup owns", async () => {
    const claim = `data-${randomUUID().slice(0, 8)}`;
    made.push(['pvc', claim]);
    await kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name: claim, namespace: NAMESPACE },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '16Mi' } } },
      }),
    );
    // WaitForFirstConsumer: nothing is bound before a pod needs it.
    expect((await kubectlJson<{ status: { phase: string } }>(['-n', NAMESPACE, 'get', 'pvc', claim])).status.phase).toBe('Pending');
    const script =
      "const fs = require('node:fs'); fs.writeFileSync('/data/f', 'x'); const s = fs.statSync('/data'); console.log(s.gid, (s.mode & 0o7777).toString(8), fs.statSync('/data/f').gid)";
    const log = await runPod(
      nodePod(`pvc-${randomUUID().slice(0, 8)}`, script, {
        volumes: [{ name: 'data', persistentVolumeClaim: { claimName: claim } }],
        mounts: [{ name: 'data', mountPath: '/data' }],
      }),
    );
    // The kubelet gave the volume to the pod's fsGroup (setgid, group-writable), as it does for
    // `local` volumes and never for hostPath ones.
    expect(log.trim()).toBe('1000 2777 1000');
    const pvc = await kubectlJson<{ spec: { storageClassName: string; volumeName: string }; status: { phase: string } }>([
      '-n',
      NAMESPACE,
      'get',
      'pvc',
      claim,
    ]);
    expect([pvc.spec.storageClassName, pvc.status.phase]).toEqual(['local-path', 'Bound']);
    const pv = await kubectlJson<{ spec: { local?: { path: string }; hostPath?: unknown } }>(['get', 'pv', pvc.spec.volumeName]);
    expect([pv.spec.local !== undefined, pv.spec.hostPath]).toEqual([true, undefined]);
  }, 180_000);

  it('KEDA: the operator runs as a pod under its own ServiceAccount, which may not do everything', async () => {
    const pods = await kubectlJson<{ items: Array<{ spec: { serviceAccountName: string }; status: { phase: string } }> }>([
      '-n',
      'keda',
      'get',
      'pods',
      '-l',
      'app=keda-operator',
    ]);
    expect(pods.items.map((p) => [p.spec.serviceAccountName, p.status.phase])).toEqual([['keda-operator', 'Running']]);
    const can = async (verb: string, resource: string): Promise<string> =>
      (
        await kubectl(['auth', 'can-i', verb, resource, '--all-namespaces', '--as', 'system:serviceaccount:keda:keda-operator']).catch(
          (err: { stdout?: string }) => err.stdout ?? '',
        )
      ).trim();
    expect(await can('create', 'jobs.batch')).toBe('yes');
    expect(await can('create', 'clusterrolebindings.rbac.authorization.k8s.io')).toBe('no');
    expect(await can('delete', 'nodes')).toBe('no');
  });

  it('KEDA: its admission webhook refuses a ScaledJob whose two triggers share a name (the webhooks fail open, so a refusal is what shows them working)', async () => {
    const trigger = { type: 'external', name: 'twice', metadata: { scalerAddress: `${SCALER_NAME}:6000`, queueName: 'q' } };
    const sj = {
      apiVersion: 'keda.sh/v1alpha1',
      kind: 'ScaledJob',
      metadata: { name: `refused-${randomUUID().slice(0, 8)}`, namespace: NAMESPACE },
      spec: {
        jobTargetRef: { template: { spec: { restartPolicy: 'Never', containers: [{ name: 'c', image: IMAGE }] } } },
        triggers: [trigger, trigger],
      },
    };
    made.push(['scaledjob', sj.metadata.name]);
    const err = await kubectl(['apply', '-f', '-'], JSON.stringify(sj)).then(
      () => undefined,
      (e: { stderr?: string; message?: string }) => e.stderr ?? e.message ?? 'kubectl apply failed',
    );
    expect(err).toMatch(
      /admission webhook "vscaledjob\.kb\.io" denied the request: triggerName "twice" is defined multiple times in the ScaledObject\/ScaledJob, but it must be unique/,
    );
  });

  it("kmj doctor as a one-off Job (manifests/doctor.yaml): every check passes in a worker's pod, KEDA and the scaler included", async () => {
    // manifests/doctor.yaml with what overlays/local changes for every pod here (the image made
    // here, never pulled; this machine's arch), and the model to load.
    const job = parse(readFileSync(packageFile('manifests', 'doctor.yaml'), 'utf8')) as {
      metadata: { name: string };
      spec: {
        template: { spec: { nodeSelector: Record<string, string>; containers: Array<Record<string, unknown> & { args: string[] }> } };
      };
    };
    const pod = job.spec.template.spec;
    const container = pod.containers[0];
    if (!container) throw new Error('manifests/doctor.yaml has no container');
    container['image'] = IMAGE;
    container['imagePullPolicy'] = 'Never';
    pod.nodeSelector = { 'kubernetes.io/arch': 'amd64' };
    const model = fixtures('fixtures-cluster').models['classifier'];
    container.args = [...container.args, '--model', `models:/${model?.name}@${model?.alias}`, '-o', 'json'];
    made.push(['job', job.metadata.name]);
    await kubectl(['-n', NAMESPACE, 'delete', 'job', job.metadata.name, '--ignore-not-found', '--wait=true']);
    await kubectl(['apply', '-f', '-'], JSON.stringify(job));
    const state = await waitUntil(
      'the doctor Job ended',
      async () =>
        (await kubectlJson<{ status: { succeeded?: number; failed?: number } }>(['-n', NAMESPACE, 'get', 'job', job.metadata.name])).status,
      (st) => (st.succeeded ?? 0) + (st.failed ?? 0) > 0,
      { timeoutMs: 180_000, stepMs: 1000 },
    );
    const log = await kubectl(['-n', NAMESPACE, 'logs', `job/${job.metadata.name}`]);
    const report = JSON.parse(
      log
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('{"ok"'))
        .at(-1) ?? '{}',
    ) as { ok: boolean; checks: Array<{ name: string; status: string; detail: string }> };
    expect(
      report.checks?.filter((c) => c.status !== 'ok'),
      log,
    ).toEqual([]);
    expect(state.succeeded).toBe(1);
    expect(report.checks.map((c) => c.name)).toEqual([
      'userland',
      'onnxruntime',
      'page-size',
      'memory-cgroup',
      'configuration',
      'rabbitmq',
      'mlflow',
      'model',
      'keda',
      'scaler',
    ]);
    const detail = (name: string): string => report.checks.find((c) => c.name === name)?.detail ?? '';
    expect(detail('memory-cgroup')).toBe("the memory cgroup is enabled; this process's limit is 512 MiB");
    expect(detail('keda')).toMatch(/^KEDA's CRDs are installed on https:\/\/.+ \(.*scaledjobs.*triggerauthentications.*\)$/);
    expect(detail('scaler')).toBe(`${SCALER_NAME}:6000 accepts connections`);
    expect(detail('rabbitmq')).toMatch(/^queue ml-requests on amqp:\/\/rabbitmq\.kmj\.svc:5672/);
  }, 300_000);
});
