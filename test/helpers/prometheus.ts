/**
 * A real Prometheus (Debian 13's package, 2.53, from the root `make test` builds) for the tests of
 * the dashboard and the alerts: started with a configuration of the test's, on loopback, with its
 * data in a directory of its own; stopped and removed by `close`.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { waitUntil } from './wait.ts';

/** The Debian root holding prometheus and promtool (built once per machine). */
export function prometheusRoot(): string {
  return (
    execFileSync(join(PACKAGE_ROOT, 'scripts', 'debian-root.sh'), ['prometheus', 'prometheus'], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .pop() ?? ''
  );
}

export interface PromSeries {
  readonly metric: Record<string, string>;
  /** [seconds, value] pairs; one for an instant query. */
  readonly values: ReadonlyArray<readonly [number, string]>;
}

export interface RunningPrometheus {
  readonly url: string;
  /** Instant query at `time` (seconds), or now. Throws with Prometheus' error text. */
  instant(query: string, time?: number): Promise<PromSeries[]>;
  /** Range query. */
  range(query: string, start: number, end: number, stepSeconds: number): Promise<PromSeries[]>;
  /** The alerts Prometheus has now, firing and pending. */
  alerts(): Promise<Array<{ labels: Record<string, string>; state: string; value: string }>>;
  logs(): string;
  close(): Promise<void>;
}

export interface PrometheusOptions {
  readonly port: number;
  readonly scrapeConfigs?: readonly Record<string, unknown>[];
  readonly ruleFiles?: readonly string[];
  readonly scrapeIntervalSeconds?: number;
  readonly evaluationIntervalSeconds?: number;
}

async function api<T>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  const body = (await res.json()) as { status: string; data: T; error?: string; errorType?: string };
  if (body.status !== 'success') throw new Error(`Prometheus: ${body.errorType ?? 'error'}: ${body.error ?? JSON.stringify(body)}`);
  return body.data;
}

export async function startPrometheus(options: PrometheusOptions): Promise<RunningPrometheus> {
  const root = prometheusRoot();
  const dir = mkdtempSync(join(tmpdir(), 'kmj-prometheus-'));
  const scrape = `${options.scrapeIntervalSeconds ?? 5}s`;
  const config = {
    global: { scrape_interval: scrape, scrape_timeout: scrape, evaluation_interval: `${options.evaluationIntervalSeconds ?? 5}s` },
    rule_files: [...(options.ruleFiles ?? [])],
    scrape_configs: [...(options.scrapeConfigs ?? [])],
  };
  writeFileSync(join(dir, 'prometheus.yml'), stringify(config));
  const url = `http://127.0.0.1:${options.port}`;
  let logs = '';
  const child: ChildProcess = spawn(
    join(root, 'usr', 'bin', 'prometheus'),
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${options.port}`,
      '--storage.tsdb.retention.time=1d',
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout?.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const close = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  let state: 'ready' | 'not ready' | 'exited';
  try {
    // An exit ends the wait too: it will not become ready.
    state = await waitUntil(
      `prometheus ready on ${url}`,
      async () => (child.exitCode !== null ? 'exited' : (await fetch(`${url}/-/ready`)).ok ? 'ready' : 'not ready'),
      (s) => s !== 'not ready',
      { timeoutMs: 30_000, stepMs: 200 },
    );
  } catch (err) {
    await close();
    throw new Error(`${(err as Error).message}; its log: ${logs}`, { cause: err });
  }
  if (state === 'exited') {
    await close();
    throw new Error(`prometheus exited (${child.exitCode}): ${logs}`);
  }
  const series = (data: {
    result: Array<{ metric: Record<string, string>; value?: [number, string]; values?: Array<[number, string]> }>;
  }): PromSeries[] => data.result.map((r) => ({ metric: r.metric, values: r.values ?? (r.value ? [r.value] : []) }));
  return {
    url,
    instant: async (query, time) =>
      series(
        await api(
          `${url}/api/v1/query?${new URLSearchParams({ query, ...(time !== undefined ? { time: String(time) } : {}) }).toString()}`,
        ),
      ),
    range: async (query, start, end, step) =>
      series(
        await api(
          `${url}/api/v1/query_range?${new URLSearchParams({ query, start: String(start), end: String(end), step: String(step) }).toString()}`,
        ),
      ),
    alerts: async () =>
      (await api<{ alerts: Array<{ labels: Record<string, string>; state: string; value: string }> }>(`${url}/api/v1/alerts`)).alerts,
    logs: () => logs,
    close,
  };
}

/** A ServiceMonitor or PodMonitor as monitoring/ writes them (the fields the project uses). */
export interface MonitorManifest {
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace: string };
  readonly spec: {
    readonly selector: { readonly matchLabels: Readonly<Record<string, string>> };
    readonly namespaceSelector?: { readonly matchNames?: readonly string[] };
    readonly endpoints?: ReadonlyArray<{ readonly port: string; readonly path?: string; readonly honorLabels?: boolean }>;
    readonly podMetricsEndpoints?: ReadonlyArray<{ readonly port: string; readonly path?: string; readonly honorLabels?: boolean }>;
  };
}

/** A label name as Prometheus' Kubernetes discovery writes it in __meta_* names. */
const sanitize = (name: string): string => name.replace(/[^a-zA-Z0-9_]/g, '_');

/**
 * The scrape configurations Prometheus Operator generates for these ServiceMonitors and PodMonitors
 * (the parts that decide what is scraped and which labels it gets): Kubernetes discovery through
 * `kubeconfig`, the selector's labels and the port kept, and the target labels namespace, service
 * (ServiceMonitor), pod, container, endpoint and job (the Service's name; for a PodMonitor
 * "<namespace>/<name>"). Without honorLabels, a scraped series' own namespace label becomes
 * exported_namespace, as in the Operator's setups.
 */
export function scrapeConfigsOf(monitors: readonly MonitorManifest[], kubeconfig: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const m of monitors) {
    const pod = m.kind === 'PodMonitor';
    const endpoints = (pod ? m.spec.podMetricsEndpoints : m.spec.endpoints) ?? [];
    const namespaces = m.spec.namespaceSelector?.matchNames ?? [m.metadata.namespace];
    endpoints.forEach((e, i) => {
      const object = pod ? 'pod' : 'service';
      const keep = Object.entries(m.spec.selector.matchLabels).map(([k, v]) => ({
        source_labels: [`__meta_kubernetes_${object}_label_${sanitize(k)}`],
        regex: v,
        action: 'keep',
      }));
      const relabel = [
        ...keep,
        pod
          ? { source_labels: ['__meta_kubernetes_pod_container_port_name'], regex: e.port, action: 'keep' }
          : { source_labels: ['__meta_kubernetes_endpoint_port_name'], regex: e.port, action: 'keep' },
        // Running pods only, as the Operator keeps them.
        ...(pod ? [{ source_labels: ['__meta_kubernetes_pod_phase'], regex: '(Failed|Succeeded)', action: 'drop' }] : []),
        { source_labels: ['__meta_kubernetes_namespace'], target_label: 'namespace' },
        ...(pod ? [] : [{ source_labels: ['__meta_kubernetes_service_name'], target_label: 'service' }]),
        { source_labels: ['__meta_kubernetes_pod_name'], target_label: 'pod' },
        { source_labels: ['__meta_kubernetes_pod_container_name'], target_label: 'container' },
        pod
          ? { target_label: 'job', replacement: `${m.metadata.namespace}/${m.metadata.name}` }
          : { source_labels: ['__meta_kubernetes_service_name'], target_label: 'job' },
        { target_label: 'endpoint', replacement: e.port },
      ];
      out.push({
        job_name: `${pod ? 'podMonitor' : 'serviceMonitor'}/${m.metadata.namespace}/${m.metadata.name}/${i}`,
        honor_labels: e.honorLabels ?? false,
        metrics_path: e.path ?? '/metrics',
        kubernetes_sd_configs: [{ role: pod ? 'pod' : 'endpoints', kubeconfig_file: kubeconfig, namespaces: { names: [...namespaces] } }],
        relabel_configs: relabel,
      });
    });
  }
  return out;
}
