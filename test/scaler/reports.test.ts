// The scaler's intake of worker reports and the series it feeds, against a real RabbitMQ and the
// real scaler, polled the way KEDA polls it (ScaledJob "jobs" in namespace "ml").
import { describe, expect, it } from 'vitest';
import { MAX_REPORT_BYTES, REPORT_OUTCOMES, REPORT_PATH, REPORT_STEPS, type WorkerReport } from '../../common/report.ts';
import { sampleValue, samplesOf } from '../helpers/metrics-text.ts';
import { useScalerAndRabbit } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const { scaler, rabbit } = useScalerAndRabbit();

const base = (): string => `http://127.0.0.1:${scaler().scaler.metricsPort}`;
const scrape = (): Promise<string> => fetch(`${base()}/metrics`).then((r) => r.text());
const post = (
  body: string,
  headers: Record<string, string> = { 'content-type': 'application/json' },
): Promise<{ status: number; text: string }> =>
  fetch(`${base()}${REPORT_PATH}`, { method: 'POST', body, headers }).then(async (r) => ({ status: r.status, text: await r.text() }));

function report(queue: string, overrides: Partial<WorkerReport> = {}): WorkerReport {
  return {
    version: 1,
    source: 'rabbitmq',
    scope: '/',
    name: queue,
    outcome: 'finished',
    seconds: { waiting: 3.2, receiving: 0.4, model_load: 0.3, model_fetch: 0.1, model_open: 0.2, run: 0.6, total: 0.9 },
    ...overrides,
  };
}

describe('worker reports', () => {
  it('are refused with 404 for a queue no trigger has asked about, and counted once one has', async () => {
    const queue = await rabbit().queue('reports');
    const refusedBefore = sampleValue(await scrape(), 'kmj_scaler_reports_refused_total', { reason: 'unknown_target' });
    const unknown = await post(JSON.stringify(report(queue)));
    expect(unknown.status).toBe(404);
    expect(unknown.text).toContain(`serves no rabbitmq target "${queue}" in "/"`);
    expect(sampleValue(await scrape(), 'kmj_scaler_reports_refused_total', { reason: 'unknown_target' })).toBe(refusedBefore + 1);
    expect(samplesOf(await scrape(), 'kmj_requests_total', { name: queue })).toEqual([]);

    await waitUntil(
      'the scaler to read the queue once',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok,
    );
    // From the first read, every outcome is there at 0: the first request is an increase. A step's
    // histogram appears with its first observation.
    const zero = await scrape();
    expect(Object.fromEntries(samplesOf(zero, 'kmj_requests_total', { name: queue }).map((s) => [s.labels['outcome'], s.value]))).toEqual(
      Object.fromEntries(REPORT_OUTCOMES.map((o) => [o, 0])),
    );
    expect(samplesOf(zero, 'kmj_request_step_seconds_count', { name: queue })).toEqual([]);

    expect((await post(JSON.stringify(report(queue)))).status).toBe(204);
    expect((await post(JSON.stringify(report(queue, { outcome: 'dead_lettered', seconds: { receiving: 0.5, total: 0.1 } })))).status).toBe(
      204,
    );
    const text = await scrape();
    const labels = { source: 'rabbitmq', scope: '/', name: queue };
    expect(sampleValue(text, 'kmj_requests_total', { ...labels, outcome: 'finished' })).toBe(1);
    expect(sampleValue(text, 'kmj_requests_total', { ...labels, outcome: 'dead_lettered' })).toBe(1);
    expect(sampleValue(text, 'kmj_requests_total', { ...labels, outcome: 'requeued' })).toBe(0);
    expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step: 'waiting' })).toBe(1);
    expect(sampleValue(text, 'kmj_request_step_seconds_sum', { ...labels, step: 'waiting' })).toBeCloseTo(3.2);
    expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step: 'total' })).toBe(2);
    expect(sampleValue(text, 'kmj_request_step_seconds_bucket', { ...labels, step: 'total', le: '0.5' })).toBe(1);
    expect(sampleValue(text, 'kmj_request_step_seconds_bucket', { ...labels, step: 'total', le: '1' })).toBe(2);
    expect(sampleValue(text, 'kmj_request_step_seconds_bucket', { ...labels, step: 'total', le: '+Inf' })).toBe(2);
    // Every step reported has its 17 buckets, a sum and a count; the others nothing yet.
    for (const step of REPORT_STEPS) expect(samplesOf(text, 'kmj_request_step_seconds_bucket', { ...labels, step })).toHaveLength(17);
    expect(
      samplesOf(text, 'kmj_request_step_seconds_count', labels)
        .map((x) => x.labels['step'])
        .sort(),
    ).toEqual([...REPORT_STEPS].sort());
    // No per-request or per-pod label on any series.
    for (const s of [...samplesOf(text, 'kmj_requests_total'), ...samplesOf(text, 'kmj_request_step_seconds_bucket')]) {
      expect(Object.keys(s.labels).sort()).toEqual(
        s.name === 'kmj_requests_total' ? ['name', 'outcome', 'scope', 'source'] : ['le', 'name', 'scope', 'source', 'step'],
      );
    }
  });

  it('answer 400 naming the field of a report that is not one, 413 for a body over 4 KiB, 405 for a GET; nothing counted', async () => {
    const queue = await rabbit().queue('bad-reports');
    await waitUntil(
      'the scaler to read the queue once',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok,
    );
    const cases: Array<[string, string]> = [
      ['not json', 'body: is not JSON'],
      ['[1]', 'body: must be a JSON object'],
      [JSON.stringify({ ...report(queue), version: 2 }), 'version: must be 1'],
      [JSON.stringify({ ...report(queue), source: 'sqs' }), 'source: must be one of rabbitmq, kafka'],
      [JSON.stringify({ ...report(queue), name: '' }), 'name: must be a string of 1 to 255 characters'],
      [JSON.stringify({ ...report(queue), outcome: 'ok' }), 'outcome: must be one of finished, dead_lettered, requeued, unsettled, failed'],
      [JSON.stringify({ ...report(queue), seconds: { total: -1 } }), 'seconds.total: must be a number of seconds from 0 to 86400'],
      [
        JSON.stringify({ ...report(queue), seconds: { queued: 1 } }),
        'seconds.queued: is not a step (waiting, receiving, model_load, model_fetch, model_open, run, total)',
      ],
    ];
    const before = sampleValue(await scrape(), 'kmj_scaler_reports_refused_total', { reason: 'bad_request' });
    for (const [body, message] of cases) expect(await post(body)).toEqual({ status: 400, text: `${message}\n` });
    const big = await post(JSON.stringify({ ...report(queue), padding: 'x'.repeat(MAX_REPORT_BYTES) }));
    expect(big).toEqual({ status: 413, text: `a report is at most ${MAX_REPORT_BYTES} bytes\n` });
    expect((await fetch(`${base()}${REPORT_PATH}`)).status).toBe(405);
    const text = await scrape();
    expect(sampleValue(text, 'kmj_scaler_reports_refused_total', { reason: 'bad_request' })).toBe(before + cases.length);
    expect(sampleValue(text, 'kmj_scaler_reports_refused_total', { reason: 'too_large' })).toBeGreaterThanOrEqual(1);
    expect(samplesOf(text, 'kmj_requests_total', { name: queue }).map((s) => s.value)).toEqual(REPORT_OUTCOMES.map(() => 0));
  });
});

describe('per-target series for the dashboards', () => {
  it("names the polling ScaledJob from its second poll, says the target is up, and bounds the oldest message's age", async () => {
    const queue = await rabbit().queue('owner');
    const labels = { source: 'rabbitmq', scope: '/', name: queue, mode: 'backlog' };
    await waitUntil(
      'the scaler to read the empty queue',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok && r.view.value === 0,
    );
    // One poll so far: a one-off call is not a ScaledJob.
    expect(samplesOf(await scrape(), 'kmj_scaler_target_info', { name: queue })).toEqual([]);
    expect(sampleValue(await scrape(), 'kmj_scaler_oldest_waiting_seconds', labels)).toBe(0);
    // Time let pass on purpose: RPCs less than 100 ms apart count as one KEDA poll (scaler/snapshots.ts).
    await new Promise((r) => setTimeout(r, 300));
    await scaler().client.poll({ queueName: queue });
    const info = samplesOf(await scrape(), 'kmj_scaler_target_info', { name: queue });
    expect(info.map((s) => [s.labels['scaledjob'], s.labels['scaledjob_namespace'], s.labels['mode'], s.value])).toEqual([
      ['jobs', 'ml', 'backlog', 1],
    ]);
    expect(sampleValue(await scrape(), 'kmj_scaler_target_up', labels)).toBe(1);

    // Messages arrive after a read that found the queue empty: their age is at most the time since.
    const emptySeen = Date.now();
    await rabbit().publish(queue, 2);
    await waitUntil(
      'the scaler to report the 2 messages published after the empty read',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok && r.view.value === 2,
    );
    // Time let pass on purpose: the messages age, and the bound below must grow with them.
    await new Promise((r) => setTimeout(r, 1500));
    const age = sampleValue(await scrape(), 'kmj_scaler_oldest_waiting_seconds', labels);
    expect(age).toBeGreaterThanOrEqual(1.4);
    expect(age).toBeLessThanOrEqual((Date.now() - emptySeen) / 1000 + 1.5);

    // A queue deleted: the read fails, up says 0, and no age is claimed.
    await (await rabbit().channel()).deleteQueue(queue);
    await waitUntil(
      'kmj_scaler_target_up to say 0 for the deleted queue',
      () => scrape(),
      (t) => samplesOf(t, 'kmj_scaler_target_up', labels)[0]?.value === 0,
    );
    expect(samplesOf(await scrape(), 'kmj_scaler_oldest_waiting_seconds', labels)).toEqual([]);
  });
});
