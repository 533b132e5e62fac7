// The broker stops and comes back: the scaler answers UNAVAILABLE (never 0) while it is down and
// correct numbers again within seconds of its return. Uses a RabbitMQ node of its own.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RabbitFixture } from '../helpers/rabbit.ts';
import { RabbitNode } from '../helpers/rabbit-node.ts';
import { startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const node = new RabbitNode('kmjrestart', 5674);
let rabbit: RabbitFixture;
let s: ScalerHandle;

beforeAll(async () => {
  await node.start();
  rabbit = new RabbitFixture(node.url);
  s = await startTestScaler({
    RABBITMQ_URL: node.url,
    RABBITMQ_MANAGEMENT_URL: node.managementUrl,
    KMJ_SCALER_RECONNECT_MAX_BACKOFF_MS: '1000',
  });
}, 180_000);

afterAll(async () => {
  await s?.close();
  await rabbit?.close().catch(() => undefined);
  await node.stop();
});

it('answers UNAVAILABLE while the broker is down and the right count soon after it returns', async () => {
  const queue = await rabbit.queue('restart');
  await rabbit.publish(queue, 3);
  const meta = { queueName: queue };
  expect(
    await waitUntil(
      'the scaler to report the 3 messages published',
      () => s.client.poll(meta),
      (r) => r.ok && r.view.value === 3,
    ),
  ).toMatchObject({ ok: true, view: { value: 3 } });

  const seen: Array<number | string> = [];
  const watcher = setInterval(() => {
    void s.client
      .getMetrics(meta)
      .then((r) => seen.push(r.ok ? (r.value.metricValues[0]?.metricValueFloat ?? -1) : grpc.status[r.error.code]));
  }, 50);
  try {
    await node.stopApp();
    const down = await waitUntil(
      'the scaler to answer an error once the broker has stopped',
      () => s.client.poll(meta),
      (r) => !r.ok,
      { timeoutMs: 10_000, stepMs: 100 },
    );
    expect(down.ok).toBe(false);
    if (!down.ok) {
      expect(down.error.code).toBe(grpc.status.UNAVAILABLE);
      // The scaler itself said so: its channel was connected (kmj status tells this from "no scaler answers").
      expect(down.error.reached).toBe(true);
      expect(down.error.details).not.toContain('guest');
    }
    // Time let pass on purpose: the answer stays UNAVAILABLE (never a 0) while the broker is away.
    await new Promise((r) => setTimeout(r, 1500));
    const stillDown = await s.client.poll(meta);
    expect(stillDown).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE } });

    await node.startApp();
    const backAt = Date.now();
    const back = await waitUntil(
      "the scaler to report the 3 messages again after the broker's return",
      () => s.client.poll(meta),
      (r) => r.ok && r.view.value === 3,
      { timeoutMs: 20_000, stepMs: 100 },
    );
    expect(back).toMatchObject({ ok: true, view: { value: 3 } });
    expect(Date.now() - backAt).toBeLessThan(6000);
  } finally {
    clearInterval(watcher);
  }
  // Never a 0 in between: only 3 or UNAVAILABLE.
  expect(seen.length).toBeGreaterThan(20);
  expect(new Set(seen)).toEqual(new Set([3, 'UNAVAILABLE']));
}, 120_000);
