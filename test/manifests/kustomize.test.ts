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
