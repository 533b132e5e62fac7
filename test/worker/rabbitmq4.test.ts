// What the worker and `kmj submit` rely on from RabbitMQ, checked against the real node the tests
// run (RabbitMQ 4.0 from Debian 13, scripts/rabbitmq.sh): how a quorum queue counts deliveries in
// the header the worker reads (worker/rabbitmq-consumer.ts attemptOf), the request queue's delivery limit,
// and the dead-letter queue without one (rabbitmq/topology.ts).
import { connect, type Channel, type ChannelModel, type GetMessage } from 'amqplib';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { checkQueues } from '../../rabbitmq/inspect.ts';
import { deadLetterQueueOf, declareRequestTopology, DEAD_LETTER_HEADERS } from '../../rabbitmq/topology.ts';
import { RABBITMQ_MANAGEMENT_URL, RABBITMQ_URL } from '../helpers/env.ts';
import { Cleanups, deleteQueues } from '../helpers/cleanups.ts';
import { brokerUser, queueExists } from '../helpers/kmj.ts';
import { uniqueName } from '../helpers/rabbit.ts';
import { waitUntil } from '../helpers/wait.ts';
import { drain, publish, request, runWorker } from '../helpers/worker.ts';

const queues: string[] = [];
const conns: ChannelModel[] = [];
const cleanups = new Cleanups();
afterEach(() => cleanups.run());
afterAll(async () => {
  await Promise.all(conns.map((c) => c.close().catch(() => undefined)));
  await deleteQueues(queues);
});

async function channel(): Promise<{ conn: ChannelModel; ch: Channel }> {
  const conn = await connect(RABBITMQ_URL);
  conn.on('error', () => undefined);
  conns.push(conn);
  return { conn, ch: await conn.createChannel() };
}

/** A request queue and its dead-letter queue as `kmj submit` and the worker declare them. */
async function topology(maxDeliveries: number): Promise<{ queue: string; dead: string; conn: ChannelModel; ch: Channel }> {
  const queue = uniqueName('rmq4');
  const dead = deadLetterQueueOf(queue);
  queues.push(queue, dead);
  const { conn, ch } = await channel();
  await declareRequestTopology(conn, queue, { deadLetterQueue: dead, maxDeliveries });
  return { queue, dead, conn, ch };
}

function getOne(ch: Channel, queue: string): Promise<GetMessage> {
  return waitUntil(
    `a message on ${queue}`,
    async () => {
      const m = await ch.get(queue, { noAck: false });
      if (m === false) throw new Error('the queue is empty');
      return m;
    },
    () => true,
    { timeoutMs: 1000, stepMs: 20 },
  );
}

const count = (m: { properties: { headers?: Record<string, unknown> | undefined } }): unknown => m.properties.headers?.['x-delivery-count'];

describe('RabbitMQ as the worker uses it', () => {
  it('is RabbitMQ 4', async () => {
    const u = new URL(RABBITMQ_MANAGEMENT_URL);
    const res = await fetch(`${u.origin}/api/overview`, {
      headers: {
        authorization: `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`,
      },
    });
    expect(((await res.json()) as { rabbitmq_version: string }).rabbitmq_version).toMatch(/^4\./);
  });

  it('x-delivery-count: absent on the first delivery, one more for each return (a requeue, a connection lost with the message in hand), none for a cancel', async () => {
    const { queue, ch } = await topology(10);
    ch.sendToQueue(queue, Buffer.from('{}'), { persistent: true });
    const first = await getOne(ch, queue);
    expect([count(first), first.fields.redelivered]).toEqual([undefined, false]);
    ch.nack(first, false, true);
    const second = await getOne(ch, queue);
    expect([count(second), second.fields.redelivered]).toEqual([1, true]);
    // Returned again (2), then held by a connection that goes away: returned, and counted (3).
    const other = await channel();
    ch.nack(second, false, true);
    expect(count(await getOne(other.ch, queue))).toBe(2);
    await other.conn.close();
    const third = await getOne(ch, queue);
    expect(count(third)).toBe(3);
    ch.nack(third, false, true);
    // A consumer cancelled while it holds the message, then acknowledging it: not returned.
    const held = new Promise<void>((resolve) => {
      void ch.consume(
        queue,
        (m) => {
          if (!m) return;
          expect(count(m)).toBe(4);
          void ch.cancel('held').then(() => {
            ch.ack(m);
            resolve();
          });
        },
        { consumerTag: 'held' },
      );
    });
    await held;
    expect(await ch.get(queue)).toBe(false);
  });

  it("the request queue's limit: the broker dead-letters a message on its return after delivery N", async () => {
    const { queue, dead, ch } = await topology(2);
    ch.sendToQueue(queue, Buffer.from('{"poison":true}'), { persistent: true });
    for (let delivery = 1; delivery <= 3; delivery++) ch.nack(await getOne(ch, queue), false, true);
    const m = await getOne(ch, dead);
    expect(m.content.toString()).toBe('{"poison":true}');
    expect(m.properties.headers?.['x-first-death-reason']).toBe('delivery_limit');
    expect(await ch.get(queue)).toBe(false);
  });

  it("the dead-letter queue has no limit: a dead letter looked at with a requeue 25 times stays; a quorum queue with RabbitMQ 4's default limit drops it after 20", async () => {
    const { dead, ch } = await topology(5);
    const plain = uniqueName('rmq4-plain');
    queues.push(plain);
    await ch.assertQueue(plain, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
    for (const q of [dead, plain]) ch.sendToQueue(q, Buffer.from('dead letter'), { persistent: true });
    for (let look = 1; look <= 25; look++) {
      ch.nack(await getOne(ch, dead), false, true);
      const m = await ch.get(plain, { noAck: false });
      if (m !== false) ch.nack(m, false, true);
    }
    expect((await getOne(ch, dead)).content.toString()).toBe('dead letter');
    expect(await ch.get(plain)).toBe(false);
  });
});

describe('the broker users of docs/deploy.md, with exactly the permissions it gives them', () => {
  const escape = (q: string): string => q.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  it("the scaler's user, with no queue permissions, reads a queue's counts by passive declare", async () => {
    const { queue, dead } = await topology(5);
    await publish(queue, {});
    const url = await brokerUser(uniqueName('kmj-scaler'), { configure: '^$', write: '^$', read: '^$' }, cleanups);
    const conn = await connect(url);
    conns.push(conn);
    const found = await checkQueues(conn, [queue, dead]);
    expect([found.get(queue)?.messageCount, found.get(dead)?.messageCount]).toEqual([1, 0]);
  });

  it("the worker's user declares its queues, dead-letters a bad request and runs a good one", async () => {
    const queue = uniqueName('perm');
    const dead = deadLetterQueueOf(queue);
    queues.push(queue, dead);
    const q = escape(queue);
    const url = await brokerUser(
      uniqueName('kmj-worker'),
      { configure: `^${q}(\\.dead)?$`, write: `^(amq\\.default|${q}(\\.dead)?)$`, read: `^${q}(\\.dead)?$` },
      cleanups,
    );
    const idle = await runWorker(queue, { RABBITMQ_URL: url, KMJ_WORKER_IDLE_TIMEOUT_MS: '500' });
    expect(idle.code, idle.stderr.slice(-2000)).toBe(EXIT.OK);
    expect([await queueExists(queue), await queueExists(dead)]).toEqual([true, true]);

    const bad = request({ model: 'not a model uri' });
    await publish(queue, bad);
    const refused = await runWorker(queue, { RABBITMQ_URL: url });
    expect(refused.code, refused.stderr.slice(-2000)).toBe(EXIT.DEAD_LETTERED);
    const [letter] = await drain(dead);
    expect(letter?.properties.headers?.[DEAD_LETTER_HEADERS.reason]).toBe(
      'invalid request: model: must start with models:/, runs:/, mlflow-artifacts: or file:///',
    );

    await publish(queue, request());
    const good = await runWorker(queue, { RABBITMQ_URL: url });
    expect(good.code, good.stderr.slice(-2000)).toBe(EXIT.OK);
  });
});
