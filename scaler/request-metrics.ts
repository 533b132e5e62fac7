/**
 * The series the workers' reports feed (common/report.ts): kmj_requests_total{source,scope,name,
 * outcome} and the histogram kmj_request_step_seconds{source,scope,name,step}.
 *
 * Kept in plain number arrays, one small record per queue, and turned into samples only when
 * /metrics is scraped. prom-client keeps each label set of a Counter or Histogram as objects of
 * its own, about 1.1 KB a series: with the 5 outcomes at 0 from a queue's first read (so that a
 * queue's first request counts as an increase) and 5 steps (as there were then) of 17 buckets, a
 * sum and a count, that was 112 KB of heap per queue, 22 MB for `make bench-scaler`'s 200 queues. Here a queue costs
 * about a kilobyte, and a step's histogram is exported once it has an observation (a histogram
 * needs no zero: its quantiles are estimates anyway).
 */
import type { Metric, Registry } from 'prom-client';
import { REPORT_OUTCOMES, REPORT_STEPS, type WorkerReport } from '../common/report.ts';

/** Upper bounds of the step buckets, in seconds: closest between 5 and 30 s, where a pod's wait falls. */
export const STEP_BUCKETS: readonly number[] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120, 300, 900, 1800];

interface QueueLabels {
  readonly source: string;
  readonly scope: string;
  readonly name: string;
}

interface QueueSeries {
  readonly labels: QueueLabels;
  readonly outcomes: Float64Array;
  /** Per step: STEP_BUCKETS.length + 1 counts (the last one above every bound), not cumulative. */
  readonly buckets: Float64Array;
  readonly sums: Float64Array;
  readonly counts: Float64Array;
}

interface Sample {
  readonly metricName?: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

const PER_STEP = STEP_BUCKETS.length + 1;

function add(into: Float64Array, at: number, by: number): void {
  into[at] = (into[at] ?? 0) + by;
}

export class RequestSeries {
  readonly #queues = new Map<string, QueueSeries>();

  /** The queue's series, made (outcomes at 0) the first time it is named. */
  ensure(labels: QueueLabels): QueueSeries {
    const key = `${labels.source}\u0000${labels.scope}\u0000${labels.name}`;
    let q = this.#queues.get(key);
    if (!q) {
      q = {
        labels: { source: labels.source, scope: labels.scope, name: labels.name },
        outcomes: new Float64Array(REPORT_OUTCOMES.length),
        buckets: new Float64Array(REPORT_STEPS.length * PER_STEP),
        sums: new Float64Array(REPORT_STEPS.length),
        counts: new Float64Array(REPORT_STEPS.length),
      };
      this.#queues.set(key, q);
    }
    return q;
  }

  report(r: WorkerReport): void {
    const q = this.ensure(r);
    add(q.outcomes, REPORT_OUTCOMES.indexOf(r.outcome), 1);
    REPORT_STEPS.forEach((step, s) => {
      const seconds = r.seconds[step];
      if (seconds === undefined) return;
      let b = STEP_BUCKETS.findIndex((bound) => seconds <= bound);
      if (b < 0) b = STEP_BUCKETS.length;
      add(q.buckets, s * PER_STEP + b, 1);
      add(q.sums, s, seconds);
      add(q.counts, s, 1);
    });
  }

  #outcomeSamples(): Sample[] {
    const out: Sample[] = [];
    for (const q of this.#queues.values()) {
      REPORT_OUTCOMES.forEach((outcome, i) => out.push({ labels: { ...q.labels, outcome }, value: q.outcomes[i] ?? 0 }));
    }
    return out;
  }

  #stepSamples(name: string): Sample[] {
    const out: Sample[] = [];
    for (const q of this.#queues.values()) {
      REPORT_STEPS.forEach((step, s) => {
        const count = q.counts[s] ?? 0;
        if (count === 0) return;
        const labels = { ...q.labels, step };
        let cumulative = 0;
        for (let b = 0; b < PER_STEP; b++) {
          cumulative += q.buckets[s * PER_STEP + b] ?? 0;
          out.push({
            metricName: `${name}_bucket`,
            labels: { ...labels, le: b < STEP_BUCKETS.length ? String(STEP_BUCKETS[b]) : '+Inf' },
            value: cumulative,
          });
        }
        out.push({ metricName: `${name}_sum`, labels, value: q.sums[s] ?? 0 });
        out.push({ metricName: `${name}_count`, labels, value: count });
      });
    }
    return out;
  }

  /** Registers both metrics with `registry`; their samples are made at each scrape. */
  register(registry: Registry): void {
    const metric = (name: string, help: string, type: 'counter' | 'histogram', values: () => Sample[]): void => {
      const get = (): { name: string; help: string; type: string; aggregator: string; values: Sample[] } => ({
        name,
        help,
        type,
        aggregator: 'sum',
        values: values(),
      });
      // What a Registry reads of a metric: its name, type and help, and get() at each scrape.
      registry.registerMetric({ name, help, type, aggregator: 'sum', get, reset: () => undefined } as unknown as Metric);
    };
    metric(
      'kmj_requests_total',
      "Requests settled by workers, by outcome (finished, dead_lettered, requeued, unsettled, failed), from the workers' reports",
      'counter',
      () => this.#outcomeSamples(),
    );
    metric(
      'kmj_request_step_seconds',
      "Time of each step of a request (waiting, receiving, model_load, run, total), from the workers' reports",
      'histogram',
      () => this.#stepSamples('kmj_request_step_seconds'),
    );
  }
}
