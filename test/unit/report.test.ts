// The worker's report as the worker makes it (worker/report.ts) and the scaler reads it (common/report.ts).
import { describe, expect, it } from 'vitest';
import { outcomeOfExit, parseWorkerReport } from '../../common/report.ts';
import { EXIT, WORKER_EXIT_CODES } from '../../common/exit-codes.ts';
import { reportOf } from '../../worker/report.ts';

const target = { source: 'rabbitmq', scope: '/', name: 'ml-requests' } as const;

describe('reportOf', () => {
  it('times each step from the publication, the process start, the receipt and the settle', () => {
    const model = { modelLoadSeconds: 0.4, modelFetchSeconds: 0.25, modelOpenSeconds: 0.125 };
    const r = reportOf(target, EXIT.OK, { publishedAtMs: 10_000, receivedAtMs: 14_500, settledAtMs: 16_000, model }, 13_000);
    expect(r).toEqual({
      version: 1,
      ...target,
      outcome: 'finished',
      seconds: { waiting: 4.5, receiving: 1.5, model_load: 0.4, model_fetch: 0.25, model_open: 0.125, run: 1.1, total: 1.5 },
    });
    // What the worker sends is what the scaler reads.
    expect(parseWorkerReport(JSON.stringify(r))).toEqual(r);
  });

  it('leaves out what it does not know: no publication time, a publication after the receipt (clocks apart), no model loaded', () => {
    expect(
      reportOf(target, EXIT.DEAD_LETTERED, { publishedAtMs: undefined, receivedAtMs: 5000, settledAtMs: 5200, model: undefined }, 4000)
        .seconds,
    ).toEqual({ receiving: 1, total: 0.2 });
    expect(
      reportOf(target, EXIT.OK, { publishedAtMs: 9000, receivedAtMs: 5000, settledAtMs: 5200, model: undefined }, 4000).seconds,
    ).not.toHaveProperty('waiting');
  });

  it('names the outcome of every exit code', () => {
    expect(WORKER_EXIT_CODES.map((c) => [c, outcomeOfExit(c)])).toEqual([
      [0, 'finished'],
      [10, 'dead_lettered'],
      [11, 'requeued'],
      [12, 'unsettled'],
      [69, 'failed'],
      [70, 'failed'],
    ]);
  });
});
