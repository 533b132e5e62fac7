// The scaler against a real RabbitMQ, through a real gRPC client polling the way KEDA does.
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { useScalerAndRabbit } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const { scaler, rabbit } = useScalerAndRabbit();

describe('backlog of a RabbitMQ queue', () => {
  it('reports N after N messages are published, in every mode', async () => {
    const queue = await rabbit().queue('publish-n');
    await rabbit().publish(queue, 7);
    for (const mode of ['backlog', 'ready'] as const) {
      const r = await waitUntil(
        'the scaler to report 7 messages in this mode',
        () => scaler().client.poll({ queueName: queue, mode }),
        (r) => r.ok && r.view.value === 7,
      );
      expect(r).toMatchObject({ ok: true, view: { value: 7, active: true } });
    }
    // The management plugin samples statistics, so its figure arrives later.
    const m = await waitUntil(
      "the management plugin's figure of 7 messages",
      () => scaler().client.poll({ queueName: queue, mode: 'management' }),
      (r) => r.ok && r.view.value === 7,
      { timeoutMs: 30_000, stepMs: 500 },
    );
    expect(m).toMatchObject({ ok: true, view: { value: 7, active: true } });
  });

  it('reports 0 and inactive for an existing empty queue', async () => {
    const queue = await rabbit().queue('empty');
    const r = await scaler().client.poll({ queueName: queue });
    expect(r).toEqual({ ok: true, view: expect.objectContaining({ value: 0, active: false }) });
  });

  it('fills both metricValue and metricValueFloat, and one spec with both target sizes', async () => {
    const queue = await rabbit().queue('fields');
    await rabbit().publish(queue, 3);
    const meta = { queueName: queue, targetSize: '2.5' };
    const spec = await scaler().client.getMetricSpec(meta);
    expect(spec.ok).toBe(true);
    if (!spec.ok) return;
    expect(spec.value.metricSpecs).toHaveLength(1);
    const [ms] = spec.value.metricSpecs;
    expect(ms).toEqual({
      metricName: expect.stringMatching(/^rabbitmq-fields-[a-z0-9]+-[0-9a-f]{10}$/),
      targetSize: 3,
      targetSizeFloat: 2.5,
    });
    const values = await waitUntil(
      'GetMetrics to report 3 messages',
      () => scaler().client.getMetrics(meta, ms?.metricName),
      (r) => r.ok && r.value.metricValues[0]?.metricValue === 3,
    );
    expect(values).toEqual({ ok: true, value: { metricValues: [{ metricName: ms?.metricName, metricValue: 3, metricValueFloat: 3 }] } });
  });

  it('keeps the metric name stable for the same metadata and lowercase [a-z0-9-]', async () => {
    const meta = { queueName: 'Jobs.Étoile_Queue', mode: 'ready' };
    const a = await scaler().client.getMetricSpec(meta);
    const b = await scaler().client.getMetricSpec({ mode: 'ready', queueName: 'Jobs.Étoile_Queue' });
    expect(a.ok && b.ok).toBe(true);
    if (!a.ok || !b.ok) return;
    const name = a.value.metricSpecs[0]?.metricName ?? '';
    expect(name).toMatch(/^[a-z0-9-]+$/);
    expect(name.startsWith('rabbitmq-jobs-toile-queue-')).toBe(true);
    expect(b.value.metricSpecs[0]?.metricName).toBe(name);
    const other = await scaler().client.getMetricSpec({ ...meta, mode: 'backlog' });
    expect(other.ok && other.value.metricSpecs[0]?.metricName).not.toBe(name);
  });

  it("accepts the metric name with KEDA's sN- prefix and refuses a foreign one with NOT_FOUND", async () => {
    const queue = await rabbit().queue('names');
    const meta = { queueName: queue };
    const spec = await scaler().client.getMetricSpec(meta);
    const name = spec.ok ? (spec.value.metricSpecs[0]?.metricName ?? '') : '';
    expect((await scaler().client.getMetrics(meta, `s0-${name}`)).ok).toBe(true);
    const wrong = await scaler().client.getMetrics(meta, 'rabbitmq-other-0000000000');
    expect(wrong).toEqual({
      ok: false,
      error: {
        code: grpc.status.NOT_FOUND,
        reached: true,
        details: `metric "rabbitmq-other-0000000000" is not served for this metadata; GetMetricSpec names it "${name}"`,
      },
    });
  });

  it('counts consumers holding messages the way each mode defines', async () => {
    const queue = await rabbit().queue('held');
    await rabbit().publish(queue, 10);
    const held = await rabbit().holdingConsumers(queue, 3);
    try {
      // backlog: 7 ready + 3 consumers = 10, so `default` strategy with 3 running Jobs adds 7 Jobs.
      const backlog = await waitUntil(
        'backlog mode to report 7 ready + 3 held = 10',
        () => scaler().client.poll({ queueName: queue }),
        (r) => r.ok && r.view.value === 10,
      );
      expect(backlog).toMatchObject({ ok: true, view: { value: 10 } });
      // ready: only the 7 nobody holds.
      const ready = await waitUntil(
        'ready mode to report the 7 messages nobody holds',
        () => scaler().client.poll({ queueName: queue, mode: 'ready' }),
        (r) => r.ok && r.view.value === 7,
      );
      expect(ready).toMatchObject({ ok: true, view: { value: 7 } });
      // management: ready + unacknowledged = 10 once the plugin has sampled.
      const mgmt = await waitUntil(
        'management mode to report 7 ready + 3 unacknowledged = 10',
        () => scaler().client.poll({ queueName: queue, mode: 'management' }),
        (r) => r.ok && r.view.value === 10,
        { timeoutMs: 30_000, stepMs: 500 },
      );
      expect(mgmt).toMatchObject({ ok: true, view: { value: 10 } });
    } finally {
      await held.release();
    }
  });

  it('counts an idle consumer in backlog mode and not in ready mode', async () => {
    const queue = await rabbit().queue('idle');
    await rabbit().idleConsumers(queue, 2);
    const backlog = await waitUntil(
      'backlog mode to count the 2 idle consumers',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok && r.view.value === 2,
    );
    expect(backlog).toMatchObject({ ok: true, view: { value: 2, active: true } });
    const ready = await scaler().client.poll({ queueName: queue, mode: 'ready' });
    expect(ready).toMatchObject({ ok: true, view: { value: 0, active: false } });
  });

  it('applies activationThreshold to IsActive only', async () => {
    const queue = await rabbit().queue('activation');
    await rabbit().publish(queue, 3);
    const low = await waitUntil(
      'the scaler to report the 3 messages published',
      () => scaler().client.poll({ queueName: queue, activationThreshold: '3' }),
      (r) => r.ok && r.view.value === 3,
    );
    expect(low).toMatchObject({ ok: true, view: { value: 3, active: false } });
    const high = await scaler().client.poll({ queueName: queue, activationThreshold: '2' });
    expect(high).toMatchObject({ ok: true, view: { value: 3, active: true } });
  });

  it('reports management publish and deliver rates when asked', async () => {
    const queue = await rabbit().queue('rates');
    // The plugin computes rates over its sampling window: keep publishing while we look.
    const ch = await rabbit().channel();
    const publisher = setInterval(() => ch.sendToQueue(queue, Buffer.from('r')), 20);
    try {
      const r = await waitUntil(
        "the management plugin's publish rate above 5/s",
        () => scaler().client.poll({ queueName: queue, mode: 'management', measure: 'publishRate' }),
        (r) => r.ok && r.view.value > 5,
        { timeoutMs: 30_000, stepMs: 500 },
      );
      expect(r.ok && r.view.value).toBeGreaterThan(5);
      expect(r.ok && r.view.value).toBeLessThan(200);
    } finally {
      clearInterval(publisher);
    }
    const wrongMode = await scaler().client.getMetricSpec({ queueName: queue, measure: 'publishRate' });
    expect(wrongMode).toEqual({
      ok: false,
      error: {
        code: grpc.status.INVALID_ARGUMENT,
        reached: true,
        details: 'invalid trigger metadata: measure: is only allowed with mode management, got mode "backlog"',
      },
    });
  });
});

describe('missing queues', () => {
  it('answers NOT_FOUND for a queue that does not exist and keeps serving the others', async () => {
    const good = await rabbit().queue('good');
    await rabbit().publish(good, 4);
    const missing = 'no-such-queue-7f3a';
    for (const mode of ['backlog', 'ready'] as const) {
      const r = await scaler().client.poll({ queueName: missing, mode });
      expect(r).toEqual({
        ok: false,
        error: { code: grpc.status.NOT_FOUND, reached: true, details: `queue "${missing}" does not exist in vhost "/"` },
      });
    }
    // The failed passive declares closed their channels, not the connection: the good queue still reads.
    for (let i = 0; i < 3; i++) {
      const ok = await waitUntil(
        'the good queue to read 4 after the NOT_FOUND answers',
        () => scaler().client.poll({ queueName: good }),
        (r) => r.ok && r.view.value === 4,
      );
      expect(ok).toMatchObject({ ok: true, view: { value: 4 } });
    }
    const mgmt = await scaler().client.poll({ queueName: missing, mode: 'management' });
    expect(mgmt).toEqual({
      ok: false,
      error: { code: grpc.status.NOT_FOUND, reached: true, details: `queue "${missing}" does not exist in vhost "/"` },
    });
  });

  it('starts reporting a queue once it is created', async () => {
    const name = `late-${Date.now()}`;
    const before = await scaler().client.poll({ queueName: name });
    expect(before).toMatchObject({ ok: false, error: { code: grpc.status.NOT_FOUND } });
    const ch = await rabbit().channel();
    await ch.assertQueue(name, { durable: false, autoDelete: false });
    try {
      await rabbit().publish(name, 2);
      const after = await waitUntil(
        'the scaler to report the 2 messages of the queue created late',
        () => scaler().client.poll({ queueName: name }),
        (r) => r.ok && r.view.value === 2,
      );
      expect(after).toMatchObject({ ok: true, view: { value: 2 } });
    } finally {
      await ch.deleteQueue(name);
    }
  });

  it('answers NOT_FOUND for a vhost that does not exist', async () => {
    for (let i = 0; i < 2; i++) {
      const r = await scaler().client.poll({ queueName: 'x', vhost: 'no-such-vhost' });
      expect(r).toEqual({
        ok: false,
        error: {
          code: grpc.status.NOT_FOUND,
          reached: true,
          details: 'vhost "no-such-vhost" does not exist or the connection\'s user may not use it',
        },
      });
    }
  });
});

describe('many queues', () => {
  it('serves 200 queues polled at once, each with its own exact count', async () => {
    const queues: string[] = [];
    for (let i = 0; i < 200; i++) queues.push(await rabbit().queue(`many${i}`));
    await Promise.all(queues.map((q, i) => (i % 5 === 0 ? rabbit().publish(q, i % 7) : Promise.resolve())));
    const expected = queues.map((_, i) => (i % 5 === 0 ? i % 7 : 0));
    const results = await Promise.all(queues.map((q) => scaler().client.poll({ queueName: q })));
    expect(results.map((r) => (r.ok ? r.view.value : r.error.details))).toEqual(expected);
    const targets = await fetch(`http://127.0.0.1:${scaler().scaler.metricsPort}/debug/targets`).then(
      (r) => r.json() as Promise<{ targets: unknown[] }>,
    );
    expect(targets.targets.length).toBeGreaterThanOrEqual(200);
  });
});

describe('StreamIsActive', () => {
  it('sends the current state at once, then each change', async () => {
    const queue = await rabbit().queue('stream');
    const stream = scaler().client.streamIsActive({ queueName: queue });
    const seen: boolean[] = [];
    const next = (): Promise<boolean> =>
      new Promise((resolve, reject) => {
        const onData = (m: { result: boolean }): void => {
          stream.off('error', onErr);
          seen.push(m.result);
          resolve(m.result);
        };
        const onErr = (e: Error): void => reject(e);
        stream.once('data', onData);
        stream.once('error', onErr);
      });
    try {
      expect(await next()).toBe(false);
      await rabbit().publish(queue, 1);
      expect(await next()).toBe(true);
      await rabbit()
        .channel()
        .then((ch) => ch.purgeQueue(queue));
      expect(await next()).toBe(false);
      expect(seen).toEqual([false, true, false]);
    } finally {
      stream.on('error', () => undefined); // cancelling makes the client stream end with CANCELLED
      stream.cancel();
    }
  });

  it('ends the stream with INVALID_ARGUMENT for bad metadata', async () => {
    const stream = scaler().client.streamIsActive({ mode: 'ready' });
    const err = await new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('invalid trigger metadata: queueName: is required');
  });
});

describe('observability', () => {
  it('exports backlog, refresh, RPC and snapshot-age metrics', async () => {
    const queue = await rabbit().queue('metrics');
    await rabbit().publish(queue, 5);
    await waitUntil(
      'the scaler to report the 5 messages published',
      () => scaler().client.poll({ queueName: queue }),
      (r) => r.ok && r.view.value === 5,
    );
    await scaler().client.poll({ queueName: 'absent-for-metrics' });
    const text = await fetch(`http://127.0.0.1:${scaler().scaler.metricsPort}/metrics`).then((r) => r.text());
    expect(text).toContain(`kmj_scaler_backlog{source="rabbitmq",connection="default",scope="/",name="${queue}",mode="backlog"} 5`);
    expect(text).toContain(
      `kmj_scaler_backlog_figure{source="rabbitmq",connection="default",scope="/",name="${queue}",mode="backlog",figure="ready"} 5`,
    );
    expect(text).toMatch(/kmj_scaler_grpc_requests_total\{method="GetMetrics",code="OK"\} \d+/);
    expect(text).toMatch(/kmj_scaler_grpc_requests_total\{method="GetMetrics",code="NOT_FOUND"\} \d+/);
    expect(text).toMatch(/kmj_scaler_grpc_request_duration_seconds_bucket\{le="0.001",method="IsActive"\} \d+/);
    expect(text).toMatch(/kmj_scaler_refresh_errors_total\{source="rabbitmq",reason="not_found"\} \d+/);
    expect(text).toMatch(/kmj_scaler_refresh_duration_seconds_count\{source="rabbitmq"\} \d+/);
    expect(text).toMatch(new RegExp(`kmj_scaler_snapshot_age_seconds\\{[^}]*name="${queue}"[^}]*\\} [0-9.e-]+`));
    expect(text).toMatch(/kmj_scaler_process_resident_memory_bytes \d+/);
    expect(text).not.toContain('guest:guest');
  });
});
