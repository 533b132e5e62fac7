/**
 * Prometheus metrics of the scaler, on their own registry. Label values are target labels
 * (source, connection alias, vhost or group, queue or topic, mode) and gRPC method and code
 * names; never a URL or a credential.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BacklogNotFoundError } from '../common/errors.ts';
import { REPORT_OUTCOMES, REPORT_STEPS, type WorkerReport } from '../common/report.ts';
import type { TargetLabels } from './sources/source.ts';
import type { SnapshotObserver, SnapshotView } from './snapshots.ts';

const TARGET_LABELS = ['source', 'connection', 'scope', 'name', 'mode'] as const;

function targetLabels(l: TargetLabels): Record<(typeof TARGET_LABELS)[number], string> {
  return { source: l.source, connection: l.connection, scope: l.scope, name: l.name, mode: l.mode };
}

/** The labels of the worker-report series: the queue (or topic), never a request or a pod. */
const REQUEST_LABELS = ['source', 'scope', 'name'] as const;
type RequestLabels = Record<(typeof REQUEST_LABELS)[number], string>;

/** Why a worker report was refused, for kmj_scaler_reports_refused_total. */
export type ReportRefusal = 'bad_request' | 'unknown_target' | 'too_large';

/**
 * The scaler's metrics. The per-target gauges are read at scrape time from `views` (the snapshot
 * store's), passed in; the store reports its reads through the SnapshotObserver side.
 */
export class ScalerMetrics implements SnapshotObserver {
  readonly registry = new Registry();
  readonly #targets: Gauge;
  readonly #refreshSeconds: Histogram<'source'>;
  readonly #refreshErrors: Counter<'source' | 'reason'>;
  readonly #rpcTotal: Counter<'method' | 'code'>;
  readonly #rpcSeconds: Histogram<'method'>;
  readonly #requests: Counter<'source' | 'scope' | 'name' | 'outcome'>;
  readonly #steps: Histogram<'source' | 'scope' | 'name' | 'step'>;
  readonly #refused: Counter<'reason'>;
  /** Queues whose request series exist (at 0 from the first read, so a first request counts as an increase). */
  readonly #zeroed = new Set<string>();

  constructor(views: () => readonly SnapshotView[]) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'kmj_scaler_' });
    this.#targets = new Gauge({ name: 'kmj_scaler_targets', help: 'Backlog targets the scaler keeps fresh', registers });
    this.#refreshSeconds = new Histogram({
      name: 'kmj_scaler_refresh_duration_seconds',
      help: 'Time of one broker read of one target',
      labelNames: ['source'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.#refreshErrors = new Counter({
      name: 'kmj_scaler_refresh_errors_total',
      help: 'Failed broker reads, by reason (not_found, unavailable)',
      labelNames: ['source', 'reason'],
      registers,
    });
    this.#rpcTotal = new Counter({
      name: 'kmj_scaler_grpc_requests_total',
      help: 'gRPC requests by method and status code',
      labelNames: ['method', 'code'],
      registers,
    });
    this.#rpcSeconds = new Histogram({
      name: 'kmj_scaler_grpc_request_duration_seconds',
      help: 'gRPC handling time by method',
      labelNames: ['method'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 2.5],
      registers,
    });
    this.#requests = new Counter({
      name: 'kmj_requests_total',
      help: 'Requests settled by workers, by outcome (finished, dead_lettered, requeued, unsettled, failed), from the workers\' reports',
      labelNames: ['source', 'scope', 'name', 'outcome'],
      registers,
    });
    this.#steps = new Histogram({
      name: 'kmj_request_step_seconds',
      help: 'Time of each step of a request (waiting, receiving, model_load, run, total), from the workers\' reports',
      labelNames: ['source', 'scope', 'name', 'step'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120, 300, 900, 1800],
      registers,
    });
    this.#refused = new Counter({
      name: 'kmj_scaler_reports_refused_total',
      help: 'Worker reports refused, by reason (bad_request, unknown_target, too_large)',
      labelNames: ['reason'],
      registers,
    });
    for (const reason of ['bad_request', 'unknown_target', 'too_large'] as const) this.#refused.inc({ reason }, 0);
    // Per-target gauges are filled at scrape time from the snapshot store, so the refresh loop
    // does no label work and a target that stops being readable stops being exported at once.
    new Gauge({
      name: 'kmj_scaler_backlog',
      help: 'Backlog value KEDA is told, for targets whose latest read succeeded',
      labelNames: TARGET_LABELS,
      registers,
      collect() {
        this.reset();
        for (const v of views()) if (v.value !== undefined && v.error === undefined) this.set(targetLabels(v.labels), v.value);
      },
    });
    new Gauge({
      name: 'kmj_scaler_backlog_figure',
      help: 'Figures the backlog is made from (ready, consumers, unacked, publishRate, deliverRate)',
      labelNames: [...TARGET_LABELS, 'figure'],
      registers,
      collect() {
        this.reset();
        for (const v of views()) {
          if (v.details === undefined || v.error !== undefined) continue;
          for (const [figure, value] of Object.entries(v.details)) this.set({ ...targetLabels(v.labels), figure }, value);
        }
      },
    });
    new Gauge({
      name: 'kmj_scaler_snapshot_age_seconds',
      help: 'Age of the latest successful read of each target',
      labelNames: TARGET_LABELS,
      registers,
      collect() {
        this.reset();
        for (const v of views()) if (v.ageMs !== undefined) this.set(targetLabels(v.labels), v.ageMs / 1000);
      },
    });
    new Gauge({
      name: 'kmj_scaler_target_up',
      help: '1 when the latest read of the target succeeded, 0 when it failed',
      labelNames: TARGET_LABELS,
      registers,
      collect() {
        this.reset();
        for (const v of views()) if (v.value !== undefined || v.error !== undefined) this.set(targetLabels(v.labels), v.error === undefined ? 1 : 0);
      },
    });
    new Gauge({
      name: 'kmj_scaler_target_info',
      help: 'The ScaledJobs (or ScaledObjects) whose triggers poll each target, as KEDA names them; always 1',
      labelNames: [...TARGET_LABELS, 'scaledjob', 'scaledjob_namespace'],
      registers,
      collect() {
        this.reset();
        for (const v of views()) for (const o of v.owners) this.set({ ...targetLabels(v.labels), scaledjob: o.name, scaledjob_namespace: o.namespace }, 1);
      },
    });
    new Gauge({
      name: 'kmj_scaler_oldest_waiting_seconds',
      help: 'Upper bound of the age of the oldest waiting message: the time since a read last found nothing waiting (0: nothing waits)',
      labelNames: TARGET_LABELS,
      registers,
      collect() {
        this.reset();
        for (const v of views()) if (v.oldestWaitingMaxMs !== undefined) this.set(targetLabels(v.labels), v.oldestWaitingMaxMs / 1000);
      },
    });
  }

  /** A worker's report of one request (scaler/reports.ts has checked that the scaler serves its queue). */
  report(r: WorkerReport): void {
    const labels: RequestLabels = { source: r.source, scope: r.scope, name: r.name };
    this.#zero(labels);
    this.#requests.inc({ ...labels, outcome: r.outcome });
    for (const step of REPORT_STEPS) {
      const seconds = r.seconds[step];
      if (seconds !== undefined) this.#steps.observe({ ...labels, step }, seconds);
    }
  }

  reportRefused(reason: ReportRefusal): void {
    this.#refused.inc({ reason });
  }

  /** Every outcome and step of a queue, at 0, once. */
  #zero(labels: RequestLabels): void {
    const key = `${labels.source}\u0000${labels.scope}\u0000${labels.name}`;
    if (this.#zeroed.has(key)) return;
    this.#zeroed.add(key);
    for (const outcome of REPORT_OUTCOMES) this.#requests.inc({ ...labels, outcome }, 0);
    for (const step of REPORT_STEPS) this.#steps.zero({ ...labels, step });
  }

  targets(count: number): void {
    this.#targets.set(count);
  }

  read(labels: TargetLabels, seconds: number): void {
    this.#refreshSeconds.observe({ source: labels.source }, seconds);
    this.#zero({ source: labels.source, scope: labels.scope, name: labels.name });
  }

  readFailed(labels: TargetLabels, error: Error, seconds: number): void {
    const reason = error instanceof BacklogNotFoundError ? 'not_found' : 'unavailable';
    this.#refreshErrors.inc({ source: labels.source, reason });
    this.#refreshSeconds.observe({ source: labels.source }, seconds);
  }

  observeRpc(method: string, code: string, seconds: number): void {
    this.#rpcTotal.inc({ method, code });
    this.#rpcSeconds.observe({ method }, seconds);
  }
}
