/**
 * Prometheus metrics of the scaler, on their own registry. Label values are target labels
 * (source, connection alias, vhost or group, queue or topic, mode) and gRPC method and code
 * names; never a URL or a credential.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BacklogNotFoundError } from '../common/errors.ts';
import type { WorkerReport } from '../common/report.ts';
import { RequestSeries } from './request-metrics.ts';
import type { TargetLabels } from './sources/source.ts';
import type { SnapshotObserver, SnapshotView } from './snapshots.ts';

const TARGET_LABELS = ['source', 'connection', 'scope', 'name', 'mode'] as const;

function targetLabels(l: TargetLabels): Record<(typeof TARGET_LABELS)[number], string> {
  return { source: l.source, connection: l.connection, scope: l.scope, name: l.name, mode: l.mode };
}

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
  /** The workers' reports, by queue (labels: the queue, never a request or a pod). */
  readonly #requests = new RequestSeries();
  readonly #refused: Counter<'reason'>;

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
    this.#requests.register(this.registry);
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
        for (const v of views())
          if (v.value !== undefined || v.error !== undefined) this.set(targetLabels(v.labels), v.error === undefined ? 1 : 0);
      },
    });
    new Gauge({
      name: 'kmj_scaler_target_info',
      help: 'The ScaledJobs (or ScaledObjects) whose triggers poll each target, as KEDA names them; always 1',
      labelNames: [...TARGET_LABELS, 'scaledjob', 'scaledjob_namespace'],
      registers,
      collect() {
        this.reset();
        for (const v of views())
          for (const o of v.owners) this.set({ ...targetLabels(v.labels), scaledjob: o.name, scaledjob_namespace: o.namespace }, 1);
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
    this.#requests.report(r);
  }

  reportRefused(reason: ReportRefusal): void {
    this.#refused.inc({ reason });
  }

  targets(count: number): void {
    this.#targets.set(count);
  }

  read(labels: TargetLabels, seconds: number): void {
    this.#refreshSeconds.observe({ source: labels.source }, seconds);
    // The queue's outcomes exist at 0 from its first read: its first request is an increase.
    this.#requests.ensure(labels);
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
