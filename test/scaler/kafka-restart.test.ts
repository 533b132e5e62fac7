// The Kafka broker stops and comes back: the scaler answers UNAVAILABLE (never 0) while it is
// down and the right lag again soon after it returns. Uses a broker of its own.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { KafkaFixture } from '../helpers/kafka.ts';
import { KafkaNode } from '../helpers/kafka-node.ts';
import { startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const node = new KafkaNode('kafka-restart', 19192);
let kafka: KafkaFixture;
let s: ScalerHandle;

beforeAll(async () => {
  await node.start();
  kafka = new KafkaFixture(node.brokers);
  s = await startTestScaler({ KAFKA_BROKERS: node.brokers });
}, 180_000);

afterAll(async () => {
  await s?.close();
  await kafka?.close().catch(() => undefined);
  await node.stop();
});

it('answers UNAVAILABLE while the broker is down and the right lag soon after it returns', async () => {
  const topic = await kafka.topic('restart', 2);
  await kafka.produce(topic, 0, 3);
  await kafka.produce(topic, 1, 2);
  const group = kafka.group('restart');
  await kafka.commit(group, topic, { 0: 1, 1: 0 });
  const meta = { source: 'kafka', topic, consumerGroup: group, allowIdleConsumers: 'true' };
  expect(
    await waitUntil(
      'the scaler to report a lag of 4',
      () => s.client.poll(meta),
      (r) => r.ok && r.view.value === 4,
    ),
  ).toMatchObject({ ok: true, view: { value: 4 } });

  const seen: Array<number | string> = [];
  const watcher = setInterval(() => {
    void s.client
      .getMetrics(meta)
      .then((r) => seen.push(r.ok ? (r.value.metricValues[0]?.metricValueFloat ?? -1) : grpc.status[r.error.code]));
  }, 50);
  try {
    await node.stop();
    const down = await waitUntil(
      'the scaler to answer an error once the broker has stopped',
      () => s.client.poll(meta),
      (r) => !r.ok,
      { timeoutMs: 10_000, stepMs: 100 },
    );
    expect(down).toMatchObject({
      ok: false,
      error: { code: grpc.status.UNAVAILABLE, details: expect.stringContaining(`Kafka at ${node.brokers}`) },
    });
    await node.start();
    const started = Date.now();
    const back = await waitUntil(
      "the scaler to report a lag of 4 again after the broker's return",
      () => s.client.poll(meta),
      (r) => r.ok && r.view.value === 4,
      { timeoutMs: 30_000, stepMs: 200 },
    );
    expect(back).toMatchObject({ ok: true, view: { value: 4 } });
    expect(Date.now() - started).toBeLessThan(30_000);
  } finally {
    clearInterval(watcher);
  }
  // Every answer was the lag or an error: never a 0 while the broker was away.
  expect(seen.length).toBeGreaterThan(20);
  expect(seen.filter((v) => typeof v === 'number' && v !== 4)).toEqual([]);
  expect(seen).toContain('UNAVAILABLE');
}, 120_000);
