// The worker's report of each request to the scaler: the real `kmj worker` against the real
// RabbitMQ, MLflow and scaler (in-process), polled the way KEDA polls it. What the report feeds
// is read back from the scaler's /metrics.
import { createServer } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPORT_PATH } from '../../common/report.ts';
import { sampleValue } from '../helpers/metrics-text.ts';
import { startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { fixtures, logsWith, publish, request, requestQueue, runWorker } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

let scaler: ScalerHandle | undefined;
beforeAll(async () => {
  scaler = await startTestScaler();
});
afterAll(async () => {
  await scaler?.close();
});

const s = (): ScalerHandle => {
  if (!scaler) throw new Error('scaler not started');
  return scaler;
};
const scrape = (): Promise<string> => fetch(`http://127.0.0.1:${s().scaler.metricsPort}/metrics`).then((r) => r.text());
const reportUrl = (): string => `http://127.0.0.1:${s().scaler.metricsPort}${REPORT_PATH}`;

describe('the worker reports each request to the scaler', () => {
  it('after the settle: a finished request with every step, a dead-lettered one without a model load', async () => {
    const queue = await requestQueue();
    await waitUntil(
      'the scaler to read the queue',
      () => s().client.poll({ queueName: queue }),
      (r) => r.ok,
    );
    const labels = { source: 'rabbitmq', scope: '/', name: queue };
    // Published 2 s before the worker starts (the AMQP timestamp has whole seconds).
    await publish(queue, request(), {}, { timestamp: Math.floor(Date.now() / 1000) });
    await new Promise((r) => setTimeout(r, 2000));
    // The default bound (1 s) is the next test's; here the report must land whatever the load on
    // the machine, so it gets 10 s.
    const ok = await runWorker(queue, { KMJ_REPORT_URL: reportUrl(), KMJ_REPORT_TIMEOUT_MS: '10000' });
    expect(ok.code).toBe(0);
    const why = [...logsWith(ok, 'report to the scaler not sent'), ...logsWith(ok, 'the scaler refused the report')];
    expect(logsWith(ok, 'reported to the scaler'), JSON.stringify(why)).toHaveLength(1);
    let text = await scrape();
    expect(sampleValue(text, 'kmj_requests_total', { ...labels, outcome: 'finished' })).toBe(1);
    for (const step of ['waiting', 'receiving', 'model_load', 'run', 'total'])
      expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step })).toBe(1);
    const waited = sampleValue(text, 'kmj_request_step_seconds_sum', { ...labels, step: 'waiting' });
    expect(waited).toBeGreaterThanOrEqual(1);
    expect(waited).toBeLessThan(30);
    const total = sampleValue(text, 'kmj_request_step_seconds_sum', { ...labels, step: 'total' });
    expect(
      sampleValue(text, 'kmj_request_step_seconds_sum', { ...labels, step: 'model_load' }) +
        sampleValue(text, 'kmj_request_step_seconds_sum', { ...labels, step: 'run' }),
    ).toBeCloseTo(total, 5);

    // A request that names no model the registry has: dead-lettered before any model is loaded.
    await publish(queue, request({ model: { uri: `models:/${fixtures().models['classifier']?.name ?? 'x'}/999` } }));
    const bad = await runWorker(queue, { KMJ_REPORT_URL: reportUrl(), KMJ_REPORT_TIMEOUT_MS: '10000' });
    expect(bad.code).toBe(10);
    text = await scrape();
    expect(sampleValue(text, 'kmj_requests_total', { ...labels, outcome: 'dead_lettered' })).toBe(1);
    expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step: 'total' })).toBe(2);
    expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step: 'model_load' })).toBe(1);
    // Published without a timestamp: no waiting figure for it.
    expect(sampleValue(text, 'kmj_request_step_seconds_count', { ...labels, step: 'waiting' })).toBe(1);
  });

  it('a scaler that does not answer holds the exit up for at most a second, and changes nothing of the settle', async () => {
    // Accepts the connection and never answers.
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const address = silent.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    try {
      const queue = await requestQueue();
      await publish(queue, request());
      const result = await runWorker(queue, { KMJ_REPORT_URL: `http://127.0.0.1:${port}${REPORT_PATH}` });
      expect(result.code).toBe(0);
      expect(logsWith(result, 'message acknowledged')).toHaveLength(1);
      const [notSent] = logsWith(result, 'report to the scaler not sent');
      expect(JSON.stringify(notSent?.['err'])).toMatch(/within 1000 ms|aborted|timeout/i);
      const settled = Date.parse(String(logsWith(result, 'message acknowledged')[0]?.['time']));
      const gaveUp = Date.parse(String(notSent?.['time']));
      expect(gaveUp - settled).toBeLessThan(1500);
    } finally {
      silent.closeAllConnections();
      await new Promise((r) => silent.close(r));
    }
  });
});
