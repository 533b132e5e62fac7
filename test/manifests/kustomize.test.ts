// What `kubectl apply -k manifests/` applies, rendered by the real kubectl's kustomize, as
// docs/deploy.md tells users to run it: every object, and the hardening each workload promises.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { packageFile } from '../../common/paths.ts';

const run = promisify(execFile);

interface K8sObject {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
}

async function kustomize(dir: string): Promise<K8sObject[]> {
  const { stdout } = await run('kubectl', ['kustomize', packageFile(dir)], { maxBuffer: 16 * 1024 * 1024 });
  return parseAllDocuments(stdout).map((d) => d.toJSON() as K8sObject);
}

interface Container {
  name: string;
  image: string;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; capabilities?: { drop?: string[] } };
}
interface PodSpec {
  securityContext?: { runAsNonRoot?: boolean; seccompProfile?: { type?: string } };
  containers: Container[];
  initContainers?: Container[];
}

function podSpecOf(o: K8sObject): PodSpec | undefined {
  const spec = o.spec as { template?: { spec?: PodSpec }; jobTargetRef?: { template?: { spec?: PodSpec } } } | undefined;
  return spec?.template?.spec ?? spec?.jobTargetRef?.template?.spec;
}

describe('kubectl apply -k manifests/', () => {
  it('renders every object of the system, the ScaledJob and the TriggerAuthentication included, all in namespace kmj', async () => {
    const objects = await kustomize('manifests');
    const names = objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(names).toEqual([
      'ConfigMap/postgres-init', 'ConfigMap/rabbitmq-config',
      'Deployment/kmj-scaler', 'Deployment/mlflow',
      'Namespace/kmj',
      'PersistentVolumeClaim/mlflow-artifacts',
      'ScaledJob/ml-requests',
      'Service/kmj-scaler', 'Service/mlflow', 'Service/postgres', 'Service/rabbitmq',
      'ServiceAccount/kmj-scaler', 'ServiceAccount/mlflow', 'ServiceAccount/postgres', 'ServiceAccount/rabbitmq',
      'StatefulSet/postgres', 'StatefulSet/rabbitmq',
      'TriggerAuthentication/kmj-scaler-tls',
    ]);
    for (const o of objects) if (o.kind !== 'Namespace') expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe('kmj');
    const ns = objects.find((o) => o.kind === 'Namespace');
    expect(ns?.metadata.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
  });

  it('keda/ applies on its own too', async () => {
    const objects = await kustomize('keda');
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(['ScaledJob/ml-requests', 'TriggerAuthentication/kmj-scaler-tls']);
  });

  it('every workload is hardened: non-root, RuntimeDefault seccomp, read-only root, no capabilities, requests and limits, a pinned image', async () => {
    const objects = await kustomize('manifests');
    const workloads = objects.filter((o) => podSpecOf(o) !== undefined);
    expect(workloads.length).toBeGreaterThanOrEqual(5);
    for (const o of workloads) {
      const pod = podSpecOf(o) as PodSpec;
      const at = `${o.kind}/${o.metadata.name}`;
      expect(pod.securityContext?.runAsNonRoot, at).toBe(true);
      expect(pod.securityContext?.seccompProfile?.type, at).toBe('RuntimeDefault');
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
        const where = `${at} container ${c.name}`;
        expect(c.securityContext?.allowPrivilegeEscalation, where).toBe(false);
        expect(c.securityContext?.readOnlyRootFilesystem, where).toBe(true);
        expect(c.securityContext?.capabilities?.drop, where).toEqual(['ALL']);
        expect(c.resources?.requests?.['memory'], where).toBeDefined();
        expect(c.resources?.limits?.['memory'], where).toBeDefined();
        expect(c.image, where).toMatch(/:[^:/]+$/);
        expect(c.image, where).not.toMatch(/:latest$/);
      }
    }
  });
});

describe('kubectl apply -k overlays/local/ (this machine)', () => {
  it('keeps the scaler, the ScaledJob and the TriggerAuthentication of manifests/ and keda/, and leaves out the in-cluster RabbitMQ, Postgres and MLflow', async () => {
    const objects = await kustomize('overlays/local');
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'Deployment/kmj-scaler', 'Namespace/kmj', 'ScaledJob/ml-requests', 'Service/kmj-scaler', 'ServiceAccount/kmj-scaler',
      'TriggerAuthentication/kmj-scaler-tls',
    ]);
  });

  it('changes only the image, its pull policy, the arch selector and the addresses; the hardening stays; mutual TLS is on', async () => {
    const [base, local] = await Promise.all([kustomize('manifests'), kustomize('overlays/local')]);
    const find = (list: K8sObject[], kind: string, name: string) => list.find((o) => o.kind === kind && o.metadata.name === name) as K8sObject;
    for (const [kind, name] of [['Deployment', 'kmj-scaler'], ['ScaledJob', 'ml-requests']] as const) {
      const pod = podSpecOf(find(local, kind, name)) as PodSpec & { nodeSelector?: Record<string, string> };
      const basePod = podSpecOf(find(base, kind, name)) as PodSpec;
      const c = pod.containers[0] as Container & { imagePullPolicy?: string };
      expect(c.image).toBe(`kmj.local/keda-ml-jobs:${basePod.containers[0]?.image.split(':').pop()}`);
      expect(c.imagePullPolicy).toBe('Never');
      expect(pod.nodeSelector).toEqual({ 'kubernetes.io/arch': 'amd64' });
      expect(c.securityContext).toEqual(basePod.containers[0]?.securityContext);
      expect(c.resources).toEqual(basePod.containers[0]?.resources);
      expect(pod.securityContext).toMatchObject(basePod.securityContext ?? {});
    }
    const sj = find(local, 'ScaledJob', 'ml-requests').spec as { triggers: Array<{ metadata: Record<string, string>; authenticationRef?: { name: string } }> };
    // Cluster DNS: the trigger reaches the scaler by the Service name keda/scaledjob.yaml gives.
    const baseSj = find(base, 'ScaledJob', 'ml-requests').spec as typeof sj;
    expect(sj.triggers[0]?.metadata['scalerAddress']).toBe(baseSj.triggers[0]?.metadata['scalerAddress']);
    expect(sj.triggers[0]?.metadata['scalerAddress']).toBe('kmj-scaler.kmj.svc:6000');
    expect(sj.triggers[0]?.authenticationRef).toEqual({ name: 'kmj-scaler-tls' });
    expect((find(local, 'Service', 'kmj-scaler').spec as { clusterIP?: string }).clusterIP).toBeUndefined();
    const scaler = podSpecOf(find(local, 'Deployment', 'kmj-scaler')) as PodSpec & { containers: Array<Container & { env?: Array<{ name: string }> }> };
    expect(scaler.containers[0]?.env?.map((e) => e.name)).toEqual(expect.arrayContaining(['KMJ_SCALER_TLS_CERT_FILE', 'KMJ_SCALER_TLS_KEY_FILE', 'KMJ_SCALER_TLS_CLIENT_CA_FILE']));
  });
});
