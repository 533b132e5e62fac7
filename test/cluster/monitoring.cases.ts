// The dashboard and the alerts against the real cluster: a real Prometheus (Debian 13's, on the
// host) discovers the targets through the cluster's API with the scrape configurations Prometheus
// Operator makes of monitoring/servicemonitors.yaml and podmonitors.yaml, plus kube-state-metrics
// as kube-prometheus-stack scrapes it (honorLabels), and loads monitoring/alerts.rules.yaml. A
// burst of requests, one of them bad, goes through KEDA, the scaler and worker pods; then every
// panel's and variable's query is evaluated over that window as Grafana would send it, and must
// answer with the burst: N Jobs, N-1 FINISHED, one dead-lettered, and back to 0.
//
// The figures each panel showed are written to .run/monitoring-burst.json (docs/observability.md
// quotes them; scripts/render-figures.mjs draws them).
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { deadLetterQueueOf } from '../../rabbitmq/topology.ts';
import { ROWS, VARIABLES, type PanelSpec } from '../../monitoring/dashboard.ts';
import {
  KUBECONFIG,
  NAMESPACE,
  QUEUE,
  SCALED_JOB,
  clusterRunsOf,
  deleteWorkerJobs,
  finished,
  kubectlJson,
  patchScaledJob,
  podRequest,
  publishAll,
  purge,
  workerJobs,
} from '../helpers/cluster.ts';
import { grafanaQuery, intervalSeconds, type GrafanaRange } from '../helpers/grafana.ts';
import { scrapeConfigsOf, startPrometheus, type MonitorManifest, type PromSeries, type RunningPrometheus } from '../helpers/prometheus.ts';
import { uniqueId } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const PORT = 19090;
const SCRAPE_S = 5;
const GOOD = 3;
const DEAD = deadLetterQueueOf(QUEUE);
const VARS = { datasource: 'prometheus', namespace: NAMESPACE, scaledjob: SCALED_JOB, queue: QUEUE };
const SETTINGS = ['pollingInterval', 'successfulJobsHistoryLimit', 'failedJobsHistoryLimit'] as const;

let prom: RunningPrometheus | undefined;
let deployed: Record<string, unknown> | undefined;
const p = (): RunningPrometheus => {
  if (!prom) throw new Error('prometheus not started');
  return prom;
};

function monitors(): MonitorManifest[] {
  const docs = ['servicemonitors.yaml', 'podmonitors.yaml'].flatMap((f) =>
    parseAllDocuments(readFileSync(join(PACKAGE_ROOT, 'monitoring', f), 'utf8')).map((d) => d.toJS() as MonitorManifest),
  );
  // kube-state-metrics as kube-prometheus-stack scrapes it: its own labels kept.
  docs.push({
    kind: 'ServiceMonitor',
    metadata: { name: 'kube-state-metrics', namespace: 'monitoring' },
    spec: {
      selector: { matchLabels: { 'app.kubernetes.io/name': 'kube-state-metrics' } },
      endpoints: [{ port: 'http-metrics', honorLabels: true }],
    },
  });
  return docs;
}

const value = async (query: string): Promise<number | undefined> => {
  const [s] = await p().instant(query);
  return s ? Number(s.values[0]?.[1]) : undefined;
};

beforeAll(async () => {
  const sj = await kubectlJson<{ spec: Record<string, unknown> }>(['-n', NAMESPACE, 'get', 'scaledjob', SCALED_JOB]);
  deployed = Object.fromEntries(SETTINGS.map((k) => [k, sj.spec[k] ?? null]));
  // Every Job kept, so that the panels can count them all.
  await patchScaledJob({ pollingInterval: 2, successfulJobsHistoryLimit: 100, failedJobsHistoryLimit: 100 });
  prom = await startPrometheus({
    port: PORT,
    scrapeIntervalSeconds: SCRAPE_S,
    evaluationIntervalSeconds: SCRAPE_S,
    scrapeConfigs: scrapeConfigsOf(monitors(), KUBECONFIG),
    ruleFiles: [join(PACKAGE_ROOT, 'monitoring', 'alerts.rules.yaml')],
  });
  for (const job of ['kmj-scaler', 'keda-operator', 'kube-state-metrics', 'kmj/rabbitmq']) {
    await waitUntil(
      `Prometheus scraping ${job}`,
      () => value(`max(up{job="${job}"})`),
      (v) => v === 1,
      { timeoutMs: 90_000, stepMs: 1000 },
    );
  }
}, 240_000);

afterAll(async () => {
  await prom?.close();
  await deleteWorkerJobs();
  if (deployed) await patchScaledJob(deployed);
}, 180_000);

/** The labels a legend such as "{{method}} {{code}}" reads. */
const legendLabels = (legend: string): string[] => [...legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)].map((m) => m[1] ?? '');

type Points = Array<[number, number]>;

/** Each series' [time, value] points, finite values only, by its legend. */
function byLegend(series: readonly PromSeries[], legend: string): Map<string, Points> {
  const out = new Map<string, Points>();
  for (const s of series) {
    const name = legend.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, l: string) => s.metric[l] ?? '');
    out.set(
      name,
      s.values.map(([t, v]): [number, number] => [t, Number(v)]).filter(([, v]) => Number.isFinite(v)),
    );
  }
  return out;
}

const last = (v: Points | undefined): number | undefined => v?.[v.length - 1]?.[1];
const max = (v: Points | undefined): number => Math.max(...(v ?? [[0, Number.NaN]]).map(([, x]) => x));
const only = (v: Points | undefined): number[] | undefined => v?.map(([, x]) => x);

describe('the dashboard and the alerts against a burst in the real cluster', () => {
  it(`${GOOD + 1} requests, one bad: every panel and variable answers with the burst, and the alerts fire for it with the ScaledJob's and the queue's names`, async () => {
    await deleteWorkerJobs();
    await purge(QUEUE);
    await purge(DEAD);
    // The window starts once Prometheus no longer sees any Job of the ScaledJob.
    await waitUntil(
      'no Job of the ScaledJob in Prometheus',
      () => value(`count(kube_job_owner{owner_kind="ScaledJob", owner_name="${SCALED_JOB}"})`),
      (v) => v === undefined,
      { timeoutMs: 60_000, stepMs: 1000 },
    );
    const before = (await value(`sum(kmj_requests_total{name="${QUEUE}"})`)) ?? 0;
    const from = Math.floor(Date.now() / 1000) - 1;
    // The panels count from each series' first sample in the range: one scrape inside the window
    // before anything is published, or a request that finishes before the window's first scrape
    // (pods start in a few seconds here) would be in that first sample and not counted.
    await waitUntil(
      "a scrape of the queue's outcomes inside the window",
      () => value(`min(timestamp(kmj_requests_total{name="${QUEUE}"}))`),
      (t) => t !== undefined && t >= from,
      { timeoutMs: 4 * SCRAPE_S * 1000, stepMs: 500 },
    );

    const experiment = uniqueId('cluster-monitoring');
    await publishAll([
      ...Array.from({ length: GOOD }, () => podRequest(experiment)),
      { version: 1, requestId: uniqueId('req-bad'), model: 'models:/kmj-iris-classifier/1', experiment },
    ]);
    const jobs = await waitUntil('every Job ended', workerJobs, (j) => j.length === GOOD + 1 && j.every(finished), {
      timeoutMs: 240_000,
      stepMs: 1000,
    });
    expect(jobs.filter((j) => (j.status.succeeded ?? 0) > 0)).toHaveLength(GOOD);
    expect((await clusterRunsOf(experiment)).map((r) => r.info.status)).toEqual(Array(GOOD).fill('FINISHED'));
    // Prometheus has seen every report and every Job ended.
    await waitUntil(
      'the reports in Prometheus',
      () => value(`sum(kmj_requests_total{name="${QUEUE}"})`),
      (v) => v === before + GOOD + 1,
      { timeoutMs: 60_000, stepMs: 1000 },
    );
    await waitUntil(
      'the Jobs ended in Prometheus',
      () =>
        value(
          `sum(kube_job_status_succeeded{namespace="${NAMESPACE}"} * on (namespace, job_name) group_left () max by (namespace, job_name) (kube_job_owner{owner_name="${SCALED_JOB}"}))`,
        ),
      (v) => v === GOOD,
      { timeoutMs: 60_000, stepMs: 1000 },
    );
    // Time let pass on purpose: two more scrapes put the quiet state after the burst into the window's last points.
    await new Promise((r) => setTimeout(r, 2 * SCRAPE_S * 1000));
    const to = Math.floor(Date.now() / 1000);
    // The panels' own data points: Grafana's $__interval for this range is the scrape interval.
    const range: GrafanaRange = { from, to, scrapeIntervalSeconds: SCRAPE_S };

    const shown: Record<string, Record<string, Points>> = {};
    const evaluate = async (panel: PanelSpec): Promise<Map<string, Points>> => {
      const all = new Map<string, Points>();
      for (const q of panel.queries) {
        const expr = grafanaQuery(q.expr, range, VARS);
        const series = panel.type === 'stat' ? await p().instant(expr, to) : await p().range(expr, from, to, intervalSeconds(range));
        expect(series.length, `${panel.title}: ${expr}`).toBeGreaterThan(0);
        for (const s of series)
          for (const l of legendLabels(q.legend)) expect(s.metric, `${panel.title}: legend label ${l}`).toHaveProperty(l);
        for (const [k, v] of byLegend(series, q.legend)) all.set(k, v);
      }
      shown[panel.title] = Object.fromEntries(all);
      return all;
    };
    const panels = new Map(ROWS.flatMap((r) => r.panels).map((x) => [x.title, x]));
    const panel = (title: string): PanelSpec => {
      const x = panels.get(title);
      if (!x) throw new Error(`no panel ${title}`);
      return x;
    };

    // Every panel answers; the ones the burst decides are checked against it.
    for (const x of panels.values()) await evaluate(x);
    const backlog = new Map(Object.entries(shown[panel("Backlog: the scaler's, and KEDA's last read").title] ?? {}));
    expect(last(backlog.get(`scaler: ${QUEUE}`))).toBe(0);
    expect(max(backlog.get(`scaler: ${QUEUE}`))).toBeGreaterThanOrEqual(1);
    expect(last(backlog.get(`KEDA: ${SCALED_JOB}`))).toBe(0);
    const ready = shown['Ready and unacknowledged messages'] ?? {};
    expect(last(ready['ready'])).toBe(0);
    expect(last(ready['unacknowledged'])).toBe(0);
    expect(last(shown['Oldest waiting message (at most)']?.[QUEUE])).toBe(0);
    const dead = shown['Dead-letter queue'] ?? {};
    expect(last(dead[`in ${DEAD}`])).toBe(1);
    expect(max(dead['dead-lettered a minute'])).toBeGreaterThan(0);
    const states = shown['Jobs by state'] ?? {};
    expect([last(states['pending']), last(states['running']), last(states['succeeded']), last(states['failed'])]).toEqual([0, 0, GOOD, 1]);
    expect(only(shown['Jobs created']?.['Jobs'])).toEqual([GOOD + 1]);
    const outcomes = shown['Outcomes in the range'] ?? {};
    const outcome = (o: string): number[] | undefined => only(outcomes[o]);
    expect({
      finished: outcome('finished'),
      dead_lettered: outcome('dead_lettered'),
      requeued: outcome('requeued'),
      unsettled: outcome('unsettled'),
      failed: outcome('failed'),
    }).toEqual({ finished: [GOOD], dead_lettered: [1], requeued: [0], unsettled: [0], failed: [0] });
    expect(max(shown['Outcomes a minute']?.['finished'])).toBeGreaterThan(0);
    for (const q of ['Steps of a request, p50', 'Steps of a request, p95']) {
      const steps = shown[q] ?? {};
      for (const step of ['waiting', 'receiving', 'model_load', 'run', 'total'])
        expect(max(steps[step]), `${q} ${step}`).toBeGreaterThan(0);
      expect(max(steps['total'])).toBeLessThan(120);
    }
    const podDelay = shown['Job created → pod started'] ?? {};
    expect(max(podDelay['median'])).toBeGreaterThanOrEqual(0);
    expect(max(podDelay['slowest'])).toBeLessThan(120);
    expect(max(shown['Scaler RPCs']?.['GetMetrics OK'])).toBeGreaterThan(0);
    expect(max(shown['Scaler RPC latency, p95']?.['GetMetrics'])).toBeLessThan(1);
    expect(last(shown['Broker reads']?.[`${QUEUE} readable`])).toBe(1);
    const keda = shown["KEDA's errors for the ScaledJob"] ?? {};
    expect(max(keda['trigger'])).toBe(0);
    expect(Object.keys(shown['READY'] ?? {})).toEqual(['True']);
    expect(only(shown['READY']?.['True'])).toEqual([1]);

    // The variables, as Grafana's label_values asks Prometheus.
    for (const v of VARIABLES.filter((x) => x.type === 'query')) {
      const m = /^label_values\((.+), (\w+)\)$/.exec((v.query as { query: string }).query);
      const values = (await p().instant(`count by (${m?.[2] ?? ''}) (${grafanaQuery(m?.[1] ?? '', range, VARS)})`, to)).map(
        (s) => s.metric[m?.[2] ?? ''],
      );
      expect(values, v.name).toContain(VARS[v.name as keyof typeof VARS]);
    }

    // Every rule evaluates without error; the burst's dead letter and failed Job fire their alerts.
    const rules = await fetch(`${p().url}/api/v1/rules`).then(
      (r) => r.json() as Promise<{ data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> } }>,
    );
    for (const r of rules.data.groups.flatMap((g) => g.rules)) expect([r.name, r.health, r.lastError ?? '']).toEqual([r.name, 'ok', '']);
    // The alerts of this ScaledJob (the Kafka one's earlier trials may have their own).
    const ours = async (): Promise<Awaited<ReturnType<RunningPrometheus['alerts']>>> =>
      (await p().alerts()).filter((x) => x.labels['scaledjob'] === SCALED_JOB);
    const firing = await waitUntil(
      "the burst's alerts",
      ours,
      (a) => ['KmjDeadLettersGrowing', 'KmjJobsFailing'].every((n) => a.some((x) => x.labels['alertname'] === n && x.state === 'firing')),
      { timeoutMs: 60_000, stepMs: 1000 },
    );
    for (const name of ['KmjDeadLettersGrowing', 'KmjJobsFailing']) {
      expect(firing.find((x) => x.labels['alertname'] === name)?.labels).toMatchObject({
        scaledjob: SCALED_JOB,
        scaledjob_namespace: NAMESPACE,
        queue: QUEUE,
      });
    }
    // And none of the alerts that say something is broken.
    const broken = [
      'KmjScalerDown',
      'KmjScalerCannotReadQueue',
      'KmjScaledJobNotReady',
      'KmjBacklogWithoutJobs',
      'KmjKedaScalerErrors',
      'KmjRequestsNotSettled',
    ];
    expect(firing.filter((x) => broken.includes(x.labels['alertname'] ?? '')).map((x) => x.labels['alertname'])).toEqual([]);

    mkdirSync(join(PACKAGE_ROOT, '.run'), { recursive: true });
    writeFileSync(
      join(PACKAGE_ROOT, '.run', 'monitoring-burst.json'),
      `${JSON.stringify({ from, to, scrapeSeconds: SCRAPE_S, requests: GOOD + 1, panels: shown }, null, 1)}\n`,
    );
  }, 600_000);
});
