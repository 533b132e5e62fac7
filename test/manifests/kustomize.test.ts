// What `kubectl apply -k manifests/` applies, rendered by the real kubectl's kustomize, as
// docs/deploy.md tells users to run it: every object, and the hardening each workload promises.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
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
      'ConfigMap/postgres-init',
      'ConfigMap/rabbitmq-config',
      'DaemonSet/kmj-model-cache',
      'Deployment/kmj-scaler',
      'Deployment/mlflow',
      'Job/kmj-setup',
      'Namespace/kmj',
      'PersistentVolumeClaim/mlflow-artifacts',
      'ScaledJob/ml-requests',
      'Service/kmj-model-cache',
      'Service/kmj-scaler',
      'Service/mlflow',
      'Service/postgres',
      'Service/rabbitmq',
      'ServiceAccount/kmj-model-cache',
      'ServiceAccount/kmj-scaler',
      'ServiceAccount/mlflow',
      'ServiceAccount/postgres',
      'ServiceAccount/rabbitmq',
      'StatefulSet/postgres',
      'StatefulSet/rabbitmq',
      'TriggerAuthentication/kmj-scaler-tls',
    ]);
    for (const o of objects) if (o.kind !== 'Namespace') expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe('kmj');
    const ns = objects.find((o) => o.kind === 'Namespace');
    expect(ns?.metadata.labels?.['pod-security.kubernetes.io/enforce']).toBe('restricted');
  });

  it('keda/ applies on its own too', async () => {
    const objects = await kustomize('keda');
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'ScaledJob/ml-requests',
      'TriggerAuthentication/kmj-scaler-tls',
    ]);
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
  /** manifests/ with the mutual-TLS component, as a user on a Pi would apply it: what the overlay starts from. */
  async function baseWithMtls(): Promise<K8sObject[]> {
    const dir = mkdtempSync(join(tmpdir(), 'kmj-kustomize-'));
    try {
      writeFileSync(
        join(dir, 'kustomization.yaml'),
        `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [${JSON.stringify(relative(dir, packageFile('manifests')))}]\ncomponents: [${JSON.stringify(relative(dir, packageFile('overlays', 'mtls')))}]\n`,
      );
      const { stdout } = await run('kubectl', ['kustomize', dir], { maxBuffer: 16 * 1024 * 1024 });
      return parseAllDocuments(stdout).map((d) => d.toJSON() as K8sObject);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** The images of a rendering, by where they are: [object, container, image]. */
  function containersOf(objects: K8sObject[]): Array<[string, Container & { imagePullPolicy?: string }]> {
    return objects.flatMap((o) => {
      const pod = podSpecOf(o);
      return pod
        ? [...pod.containers, ...(pod.initContainers ?? [])].map(
            (c) => [`${o.kind}/${o.metadata.name} ${c.name}`, c] as [string, Container],
          )
        : [];
    });
  }

  it('is manifests/ with mutual TLS, RabbitMQ, Postgres and MLflow included, changing only image names, pull policy and the arch selector', async () => {
    const [base, local] = await Promise.all([baseWithMtls(), kustomize('overlays/local')]);
    expect(local.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual(base.map((o) => `${o.kind}/${o.metadata.name}`));
    // Every image is the same image, renamed to kmj.local/<its last path element>, never pulled.
    const baseImages = new Map(containersOf(base).map(([at, c]) => [at, c.image]));
    for (const [at, c] of containersOf(local)) {
      const was = baseImages.get(at) ?? '';
      expect(c.image, at).toBe(`kmj.local/${was.split('/').pop()}`);
      expect(c.imagePullPolicy, at).toBe('Never');
    }
    // Put those three back, and nothing else differs.
    const undone = structuredClone(local);
    for (const o of undone) {
      const pod = podSpecOf(o) as (PodSpec & { nodeSelector?: Record<string, string> }) | undefined;
      if (!pod) continue;
      expect(pod.nodeSelector, `${o.kind}/${o.metadata.name}`).toEqual({ 'kubernetes.io/arch': 'amd64' });
      pod.nodeSelector = { 'kubernetes.io/arch': 'arm64' };
      for (const c of [...pod.containers, ...(pod.initContainers ?? [])] as Array<Container & { imagePullPolicy?: string }>) {
        c.image = baseImages.get(`${o.kind}/${o.metadata.name} ${c.name}`) ?? c.image;
        delete c.imagePullPolicy;
      }
    }
    expect(undone).toEqual(base);
  });

  it('reaches the scaler by the Service name keda/scaledjob.yaml gives, over mutual TLS', async () => {
    const local = await kustomize('overlays/local');
    const find = (kind: string, name: string) => local.find((o) => o.kind === kind && o.metadata.name === name) as K8sObject;
    const sj = find('ScaledJob', 'ml-requests').spec as {
      triggers: Array<{ metadata: Record<string, string>; authenticationRef?: { name: string } }>;
    };
    expect(sj.triggers[0]?.metadata['scalerAddress']).toBe('kmj-scaler.kmj.svc:6000');
    expect(sj.triggers[0]?.authenticationRef).toEqual({ name: 'kmj-scaler-tls' });
    expect((find('Service', 'kmj-scaler').spec as { clusterIP?: string }).clusterIP).toBeUndefined();
    const scaler = podSpecOf(find('Deployment', 'kmj-scaler')) as PodSpec & {
      containers: Array<Container & { env?: Array<{ name: string }> }>;
    };
    expect(scaler.containers[0]?.env?.map((e) => e.name)).toEqual(
      expect.arrayContaining(['KMJ_SCALER_TLS_CERT_FILE', 'KMJ_SCALER_TLS_KEY_FILE', 'KMJ_SCALER_TLS_CLIENT_CA_FILE']),
    );
  });
});
