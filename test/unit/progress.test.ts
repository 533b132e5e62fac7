// worker/progress.ts with a clock of the test's own: when it logs and sends steps, and what.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../common/log.ts';
import type { Metric } from '../../mlflow/tracking.ts';
import { Progress } from '../../worker/progress.ts';

function setup(report: (m: readonly Metric[]) => Promise<void> = () => Promise.resolve()) {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  let now = 0;
  const sent: Metric[][] = [];
  const progress = new Progress({
    log: createLogger({ level: 'info', name: 't', destination: sink, sync: true }),
    intervalMs: 10_000,
    now: () => now,
    report: async (m) => {
      sent.push([...m]);
      await report(m);
    },
  });
  return { progress, lines, sent, at: (ms: number) => (now = ms) };
}

describe('Progress', () => {
  it('says nothing within the first interval', () => {
    const { progress, lines, sent, at } = setup();
    at(9_999);
    progress.batch(16384, { bytes: 100, totalBytes: 1000 });
    expect(lines).toEqual([]);
    expect(sent).toEqual([]);
    expect(progress.steps).toBe(0);
  });

  it('after an interval: rows, rows per second, percent and time left, and the metric steps', async () => {
    const { progress, lines, sent, at } = setup();
    at(10_000);
    progress.batch(40_000, { bytes: 250, totalBytes: 1000 });
    await progress.settle();
    expect(lines.map((l) => [l['msg'], l['rows'], l['rowsPerSecond'], l['percent'], l['etaSeconds']])).toEqual([
      ['progress', 40_000, 4000, 25, 30],
    ]);
    expect(sent.map((m) => m.map((x) => [x.key, x.value, x.step]))).toEqual([
      [
        ['rows', 40_000, 1],
        ['rows_per_second', 4000, 1],
      ],
    ]);
    at(15_000);
    progress.batch(60_000, { bytes: 400, totalBytes: 1000 });
    expect(sent).toHaveLength(1); // not yet another interval
    at(20_000);
    progress.batch(80_000, { bytes: 500, totalBytes: 1000 });
    await progress.settle();
    expect(sent.map((m) => m[0]?.step)).toEqual([1, 2]);
    expect(progress.steps).toBe(2);
  });

  it('without the dataset size: no percent and no time left', () => {
    const { progress, lines, at } = setup();
    at(10_000);
    progress.batch(1000, { bytes: 10, totalBytes: undefined });
    expect(lines[0]).toMatchObject({ msg: 'progress', rows: 1000, rowsPerSecond: 100 });
    expect(lines[0]).not.toHaveProperty('etaSeconds');
  });

  it('a slow MLflow: steps are skipped, not piled up; a failed send is logged and the run goes on', async () => {
    let release: () => void = () => undefined;
    const { progress, lines, sent, at } = setup(
      () => new Promise<void>((_, reject) => (release = () => reject(new Error('MLflow answered HTTP 503')))),
    );
    at(10_000);
    progress.batch(1, { bytes: 1, totalBytes: 10 });
    at(20_000);
    progress.batch(2, { bytes: 2, totalBytes: 10 });
    expect(sent).toHaveLength(1);
    release();
    await progress.settle();
    expect(lines.filter((l) => l['msg'] === 'progress metrics not recorded')).toHaveLength(1);
    at(30_000);
    progress.batch(3, { bytes: 3, totalBytes: 10 });
    expect(sent).toHaveLength(2);
  });
});
