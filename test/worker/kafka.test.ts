// The worker's Kafka input against a real broker and a real MLflow: records committed only after
// their run is FINISHED, --max-messages, a worker killed between its run's FINISHED and its
// commit, a poison record dead-lettered after the delivery limit with the group moving on. Each
// test has its own topic, group and experiment.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { KAFKA_HEADERS } from '../../kafka/topics.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { FaultProxy, mlflowPath } from '../helpers/fault-proxy.ts';
import { KafkaFixture } from '../helpers/kafka.ts';
import { closedPort } from '../helpers/kmj.ts';
import { logsWith, request, runsOf, startKafkaWorker, waitForLog, type WorkerProcess } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const kafka = new KafkaFixture();
const cleanups = new Cleanups();
afterEach(() => cleanups.run());
afterAll(() => kafka.close());

function worker(topic: string, group: string, env: Record<string, string> = {}, args: readonly string[] = []): WorkerProcess {
  const w = startKafkaWorker(topic, group, env, args);
  cleanups.defer(async () => {
    if (w.child.exitCode === null && w.child.signalCode === null) {
      w.child.kill('SIGKILL');
      await w.done;
    }
  });
  return w;
}

async function produce(topic: string, body: unknown): Promise<void> {
  const producer = kafka.kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    await producer.send({ topic, acks: -1, messages: [{ partition: 0, value: JSON.stringify(body) }] });
  } finally {
    await producer.disconnect();
  }
}

/** Every record of a topic, with its headers as text. */
async function records(topic: string): Promise<Array<{ value: string; headers: Record<string, string> }>> {
  const admin = await kafka.admin();
  const [p] = await admin.fetchTopicOffsets(topic);
  const end = Number(p?.high ?? 0);
  if (end === 0) return [];
  const out: Array<{ value: string; headers: Record<string, string> }> = [];
  const consumer = kafka.kafka.consumer({ groupId: `reader-${Date.now()}-${Math.random().toString(36).slice(2)}`, maxWaitTimeInMs: 100 });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve) => {
      void consumer.run({
        eachMessage: ({ message }) => {
          const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
          out.push({ value: message.value?.toString() ?? '', headers });
          if (Number(message.offset) + 1 >= end) resolve();
          return Promise.resolve();
        },
      });
    });
  } finally {
    await consumer.disconnect();
  }
  return out;
}

describe('kmj worker --topic', () => {
  it('runs a record, commits it after the run is FINISHED, and leaves the group', async () => {
    const topic = await kafka.topic('work', 1);
    const group = kafka.group('workers');
    const req = request();
    await produce(topic, req);
    const result = await worker(topic, group).done;
    expect(result.code, result.stderr.slice(-3000)).toBe(EXIT.OK);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
    expect(logsWith(result, 'record committed')).toMatchObject([
      { requestId: req.requestId, runId: runs[0]?.info.run_id, partition: 0, offset: '0', attempt: 1 },
    ]);
    // kafkajs' Node 24 timer warning never reaches the user's log.
    expect(result.stderr).not.toContain('TimeoutNegativeWarning');
    expect(result.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'))).toEqual([]);
  });

  it('takes at most --max-messages records; the rest stay for the next worker, which starts at once', async () => {
    const topic = await kafka.topic('batch', 1);
    const group = kafka.group('batch');
    const reqs = [request(), request(), request()];
    for (const r of reqs) await produce(topic, r);
    const first = await worker(topic, group, {}, ['--max-messages', '2']).done;
    expect(first.code, first.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(first, 'record committed').map((l) => l['requestId'])).toEqual([reqs[0]?.requestId, reqs[1]?.requestId]);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 2 });
    // The first worker left the group: the second gets the partition without waiting out a session.
    const startedAt = Date.now();
    const second = await worker(topic, group, { KMJ_WORKER_IDLE_TIMEOUT_MS: '1000' }, ['--max-messages', '2']).done;
    expect(second.code, second.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(second, 'record committed').map((l) => l['requestId'])).toEqual([reqs[2]?.requestId]);
    expect(Date.now() - startedAt).toBeLessThan(5500);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 3 });
    for (const r of reqs) expect((await runsOf(r.experiment)).map((x) => x.info.status)).toEqual(['FINISHED']);
  });

  it('a bad request is dead-lettered with the reason in its headers and committed', async () => {
    const topic = await kafka.topic('bad', 1);
    const group = kafka.group('bad');
    const req = request({ model: 'not a model uri' });
    await produce(topic, req);
    const result = await worker(topic, group).done;
    expect(result.code, result.stderr.slice(-3000)).toBe(EXIT.DEAD_LETTERED);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
    const dead = await records(`${topic}.dead`);
    expect(dead).toHaveLength(1);
    expect(JSON.parse(dead[0]?.value ?? '{}')).toEqual(req);
    expect(dead[0]?.headers).toMatchObject({
      [KAFKA_HEADERS.field]: 'model',
      [KAFKA_HEADERS.topic]: topic,
      [KAFKA_HEADERS.partition]: '0',
      [KAFKA_HEADERS.offset]: '0',
      [KAFKA_HEADERS.attempt]: '1',
    });
    expect(dead[0]?.headers[KAFKA_HEADERS.reason]).toBe(
      'invalid request: model: must start with models:/, runs:/, mlflow-artifacts: or file:///',
    );
  });

  it('killed after its run is FINISHED but before its commit: the next worker commits it without a second run', async () => {
    const topic = await kafka.topic('kill', 1);
    const group = kafka.group('kill');
    const req = request();
    await produce(topic, req);
    // MLflow marks the run FINISHED, and its answer is held 20 s: the worker waits for it there.
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    p.inject({ path: mlflowPath('runs/update'), afterForward: true, delayMs: 20_000, times: 1 });
    const w = worker(topic, group, { MLFLOW_TRACKING_URI: p.url });
    const started = await waitForLog(w, 'run started', 30_000);
    await waitUntil(
      'the run FINISHED',
      () => runsOf(req.experiment),
      (runs) => runs.map((r) => r.info.status).join() === 'FINISHED',
      { timeoutMs: 30_000, stepMs: 100 },
    );
    w.child.kill('SIGKILL');
    expect((await w.done).signal).toBe('SIGKILL');
    expect(await kafka.committed(group, topic)).toEqual({ 0: -1 });

    // The next worker gets the record once the killed member's session (6 s) is over: its idle
    // timeout must outlast that.
    const again = await worker(topic, group, { KMJ_WORKER_IDLE_TIMEOUT_MS: '20000' }).done;
    expect(again.code, again.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(again, 'request already has a finished run; acknowledging')).toHaveLength(1);
    expect(logsWith(again, 'record committed')).toMatchObject([{ requestId: req.requestId, alreadyFinished: true }]);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'FINISHED']]);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
  }, 90_000);

  it('a record that fails every time is dead-lettered at KMJ_MAX_DELIVERIES and the group moves on', async () => {
    const topic = await kafka.topic('poison', 1);
    const group = kafka.group('poison');
    const unreachable = `http://127.0.0.1:${await closedPort()}`;
    const poison = request();
    await produce(topic, poison);
    const env = { MLFLOW_TRACKING_URI: unreachable, KMJ_MAX_DELIVERIES: '2' };
    const first = await worker(topic, group, env).done;
    expect(first.code, first.stderr.slice(-3000)).toBe(EXIT.REQUEUED);
    expect(logsWith(first, 'record requeued')).toMatchObject([{ requestId: poison.requestId, attempt: 1 }]);
    const second = await worker(topic, group, env).done;
    expect(second.code, second.stderr.slice(-3000)).toBe(EXIT.DEAD_LETTERED);
    expect(logsWith(second, 'record dead-lettered')).toMatchObject([{ requestId: poison.requestId, attempt: 2 }]);
    const dead = await records(`${topic}.dead`);
    expect(dead).toHaveLength(1);
    expect(JSON.parse(dead[0]?.value ?? '{}')).toEqual(poison);
    expect(dead[0]?.headers[KAFKA_HEADERS.reason]).toMatch(/^gave up after 2 deliveries: MLflow .*ECONNREFUSED/);
    expect(dead[0]?.headers[KAFKA_HEADERS.attempt]).toBe('2');

    // The group is past the poison record and its retry: a good request runs next.
    const good = request();
    await produce(topic, good);
    const third = await worker(topic, group).done;
    expect(third.code, third.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(third, 'record committed')).toMatchObject([{ requestId: good.requestId, attempt: 1 }]);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 3 });
    expect(await runsOf(poison.experiment)).toEqual([]);
  }, 90_000);

  it('SIGTERM mid-run: exit 11 within the grace, run KILLED, the record written back with attempt 2 and committed; the next worker finishes the same run', async () => {
    const topic = await kafka.topic('sigterm', 1);
    const group = kafka.group('sigterm');
    const req = request();
    await produce(topic, req);
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    p.inject({ path: mlflowPath('runs/log-inputs'), delayMs: 30_000 });
    const graceMs = 5000;
    const w = worker(topic, group, { MLFLOW_TRACKING_URI: p.url, KMJ_WORKER_SHUTDOWN_GRACE_MS: String(graceMs) });
    const started = await waitForLog(w, 'run started', 30_000);
    await p.waitForRequest(mlflowPath('runs/log-inputs'));
    const killedAt = Date.now();
    w.child.kill('SIGTERM');
    const result = await w.done;
    expect(Date.now() - killedAt).toBeLessThan(graceMs);
    expect(result.code, result.stderr.slice(-3000)).toBe(EXIT.REQUEUED);
    expect(logsWith(result, 'record requeued')).toMatchObject([
      { requestId: req.requestId, runId: started['runId'], attempt: 1, reason: 'the worker was stopped (SIGTERM)' },
    ]);
    expect((await runsOf(req.experiment)).map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'KILLED']]);
    // The original is committed; its copy, attempt 2, waits behind it.
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
    const copies = await records(topic);
    expect(copies.map((c) => [(JSON.parse(c.value) as { requestId: unknown }).requestId, c.headers[KAFKA_HEADERS.attempt]])).toEqual([
      [req.requestId, undefined],
      [req.requestId, '2'],
    ]);

    const again = await worker(topic, group).done;
    expect(again.code, again.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(again, 'resuming the unfinished run of this request')).toMatchObject([{ runId: started['runId'], status: 'KILLED' }]);
    expect(logsWith(again, 'record committed')).toMatchObject([{ requestId: req.requestId, attempt: 2 }]);
    expect((await runsOf(req.experiment)).map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'FINISHED']]);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 2 });
    expect(await records(`${topic}.dead`)).toEqual([]);
  }, 90_000);

  it('a record whose worker is killed every time is dead-lettered at KMJ_MAX_DELIVERIES: the RUNNING run counts the attempts', async () => {
    const topic = await kafka.topic('crash-loop', 1);
    const group = kafka.group('crash-loop');
    const req = request();
    await produce(topic, req);
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    p.inject({ path: mlflowPath('runs/log-inputs'), delayMs: 30_000 });
    const env = { MLFLOW_TRACKING_URI: p.url, KMJ_MAX_DELIVERIES: '2', KMJ_WORKER_IDLE_TIMEOUT_MS: '20000' };
    for (let kill = 1; kill <= 2; kill++) {
      const w = worker(topic, group, env);
      // Each attempt gets as far as logging the dataset input (held by the proxy), then dies.
      await waitUntil(
        `attempt ${kill} at runs/log-inputs`,
        () => p.requests({ path: mlflowPath('runs/log-inputs') }).length,
        (n) => n >= kill,
        { timeoutMs: 40_000, stepMs: 50 },
      );
      w.child.kill('SIGKILL');
      await w.done;
    }
    const last = await worker(topic, group, env).done;
    expect(last.code, last.stderr.slice(-3000)).toBe(EXIT.DEAD_LETTERED);
    expect(logsWith(last, 'the last attempt of this request died without a word; counting it')).toMatchObject([{ attempt: 3 }]);
    const dead = await records(`${topic}.dead`);
    expect(dead.map((d) => d.headers[KAFKA_HEADERS.reason])).toEqual([
      'gave up after 2 deliveries that did not finish (the worker was killed each time; KMJ_MAX_DELIVERIES 2)',
    ]);
    expect((await runsOf(req.experiment)).map((r) => r.info.status)).toEqual(['FAILED']);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
  }, 120_000);

  it('a worker joining while another runs a record does not wait for it: it takes the record on the other partition at once, and the busy partition stays with its worker', async () => {
    const topic = await kafka.topic('rebalance', 2);
    const group = kafka.group('rebalance');
    const first = request();
    const second = request();
    const producer = kafka.kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    cleanups.defer(() => producer.disconnect());
    await producer.send({ topic, acks: -1, messages: [{ partition: 0, value: JSON.stringify(first) }] });
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    // The first worker's record is held for 8 s; the second worker's join comes in the middle.
    p.inject({ path: mlflowPath('runs/log-inputs'), delayMs: 8000, times: 1 });
    const a = worker(topic, group, { MLFLOW_TRACKING_URI: p.url });
    await p.waitForRequest(mlflowPath('runs/log-inputs'));
    const b = worker(topic, group, { KMJ_WORKER_IDLE_TIMEOUT_MS: '5000' });
    await producer.send({ topic, acks: -1, messages: [{ partition: 1, value: JSON.stringify(second) }] });
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect([ra.code, rb.code], ra.stderr.slice(-2000) + rb.stderr.slice(-2000)).toEqual([EXIT.OK, EXIT.OK]);
    const [committedA] = logsWith(ra, 'record committed');
    const [committedB] = logsWith(rb, 'record committed');
    expect([committedA?.['requestId'], committedA?.['partition']]).toEqual([first.requestId, 0]);
    expect([committedB?.['requestId'], committedB?.['partition']]).toEqual([second.requestId, 1]);
    // The join did not wait for the first record: the second was done while the first still ran.
    expect(String(committedB?.['time']) < String(committedA?.['time'])).toBe(true);
    // Each record ran once, in its own worker.
    expect(logsWith(rb, 'run started').map((l) => l['requestId'])).toEqual([second.requestId]);
    expect([
      ...logsWith(ra, 'resuming the unfinished run of this request'),
      ...logsWith(rb, 'resuming the unfinished run of this request'),
    ]).toEqual([]);
    for (const r of [first, second]) expect((await runsOf(r.experiment)).map((x) => x.info.status)).toEqual(['FINISHED']);
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1, 1: 1 });
  }, 90_000);

  it('exits 0 without touching MLflow when no record arrives within the idle timeout', async () => {
    const topic = await kafka.topic('idle', 1);
    const group = kafka.group('idle');
    const result = await worker(topic, group, {
      KMJ_WORKER_IDLE_TIMEOUT_MS: '1500',
      MLFLOW_TRACKING_URI: `http://127.0.0.1:${await closedPort()}`,
    }).done;
    expect(result.code, result.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(logsWith(result, 'no message; exiting')).toHaveLength(1);
  });
});
