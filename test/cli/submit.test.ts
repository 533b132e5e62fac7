// The real `kmj submit` process against the real RabbitMQ (and, for --wait, a real `kmj worker` and
// the real MLflow server): what it prints, its exit code, and exactly what lands in the queue.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { connect, type ConsumeMessage } from 'amqplib';
import { afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { packageFile } from '../../common/paths.ts';
import { AmqpFaultProxy } from '../helpers/amqp-fault-proxy.ts';
import { Cleanups, deleteQueues } from '../helpers/cleanups.ts';
import { RABBITMQ_URL } from '../helpers/env.ts';
import {
  closedPort,
  kmjWorkerEnv,
  lines,
  managementQueue,
  queuePolicy,
  runKmj,
  startKmj,
  type KmjExit,
  type KmjProcess,
} from '../helpers/kmj.ts';
import { waitUntil } from '../helpers/wait.ts';
import { drain, fixtures, MLFLOW_URL, queueState, queueStateAfterExit, runsOf, type RestRun, uniqueId } from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const MODEL = `models:/${classifier?.name}/${classifier?.version}`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const validRequest = new Ajv2020({ allErrors: true, strict: true }).compile(
  JSON.parse(readFileSync(packageFile('schemas', 'request-v1.schema.json'), 'utf8')) as object,
);

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A queue name nobody has declared yet; it and its dead-letter queue are deleted after the test. */
function freshQueue(): string {
  const queue = uniqueId('submit');
  cleanups.defer(() => deleteQueues([queue, `${queue}.dead`]));
  return queue;
}

function submit(args: readonly string[], env: Record<string, string> = {}, cwd?: string): Promise<KmjExit> {
  return runKmj(['submit', ...args], { env: { RABBITMQ_URL, ...env }, ...(cwd !== undefined ? { cwd } : {}) }, cleanups);
}

/**
 * Takes `count` messages off a queue with one consumer (basic.get per message is slow) and checks
 * that no more follow.
 */
async function takeAll(queue: string, count: number): Promise<ConsumeMessage[]> {
  const conn = await connect(RABBITMQ_URL);
  try {
    const ch = await conn.createChannel();
    const got: ConsumeMessage[] = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${count} messages in ${queue}`)), 20_000);
      void ch
        .consume(queue, (m) => {
          if (!m) return;
          got.push(m);
          ch.ack(m);
          if (got.length === count) {
            clearTimeout(timer);
            resolve();
          }
        })
        .catch(reject);
    });
    // The quorum queue counts a message until it has applied its ack: wait for that before
    // closing (this broker can drop settles still in flight when the channel closes).
    await waitUntil(
      `every ack applied by ${queue}`,
      () => queueState(queue),
      (s) => s.messages === 0,
      { timeoutMs: 10_000, stepMs: 100 },
    );
    await ch.close();
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    return got;
  } finally {
    await conn.close().catch(() => undefined);
  }
}

/** A JSON Lines file of requests in a fresh temp dir. */
function requestsFile(requests: ReadonlyArray<Record<string, unknown> | string>): string {
  const path = join(cleanups.tempDir('kmj-submit-'), 'requests.jsonl');
  writeFileSync(path, `${requests.map((r) => (typeof r === 'string' ? r : JSON.stringify(r))).join('\n')}\n`);
  return path;
}

/** How `kmj submit --wait` should show a metric: six significant digits, no trailing zeros. */
function shown(value: number): string {
  return String(Number(value.toPrecision(6)));
}

async function experimentId(name: string): Promise<string> {
  const res = await fetch(`${MLFLOW_URL}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(name)}`);
  const body = (await res.json()) as { experiment: { experiment_id: string } };
  return body.experiment.experiment_id;
}

/** A `kmj worker` on the queue, against the real MLflow; killed after the test if still running. */
function worker(queue: string, env: Record<string, string> = {}): KmjProcess {
  return startKmj(
    ['worker', '--queue', queue],
    { env: kmjWorkerEnv(cleanups, { MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_WORKER_IDLE_TIMEOUT_MS: '30000', ...env }) },
    cleanups,
  );
}

describe('kmj submit: one request', () => {
  it('prints only the request id, and the queue holds one persistent JSON message built from the flags', async () => {
    const queue = freshQueue();
    // A relative --dataset path: the worker gets it made absolute against the working directory.
    const result = await submit(
      [
        '--queue',
        queue,
        '--model',
        MODEL,
        '--dataset',
        'iris.csv',
        '--format',
        'csv',
        '--label-column',
        f.label,
        '--run-name',
        'nightly-check',
        '--tag',
        'team=vision',
        '--tag',
        'note=a=b',
        '--param',
        'owner=ml-team',
        '--param',
        'batch=7',
        '--output-format',
        'jsonl',
      ],
      { KMJ_MAX_DELIVERIES: '3' },
      f.dir,
    );
    expect(result.stderr).toBe('');
    expect(result.code).toBe(EXIT.OK);
    const [requestId] = lines(result.stdout);
    expect(result.stdout).toBe(`${requestId}\n`);
    expect(requestId).toMatch(UUID);

    const messages = await drain(queue);
    expect(messages).toHaveLength(1);
    const msg = messages[0] as ConsumeMessage;
    expect(msg.properties).toMatchObject({ deliveryMode: 2, contentType: 'application/json', messageId: requestId, appId: 'kmj' });
    expect(Math.abs(Number(msg.properties.timestamp) * 1000 - Date.now())).toBeLessThan(60_000);
    const body = JSON.parse(msg.content.toString('utf8')) as unknown;
    expect(validRequest(body), JSON.stringify(validRequest.errors)).toBe(true);
    expect(body).toEqual({
      version: 1,
      requestId,
      experiment: queue,
      model: MODEL,
      dataset: { uri: join(f.dir, 'iris.csv'), format: 'csv' },
      labelColumn: f.label,
      runName: 'nightly-check',
      tags: { team: 'vision', note: 'a=b' },
      params: { owner: 'ml-team', batch: '7' },
      output: { format: 'jsonl' },
    });

    // Both queues, declared as quorum queues the way the worker declares them.
    const q = await managementQueue(queue);
    expect({ type: q.type, durable: q.durable, arguments: q.arguments }).toEqual({
      type: 'quorum',
      durable: true,
      arguments: {
        'x-queue-type': 'quorum',
        'x-delivery-limit': 3,
        'x-dead-letter-exchange': '',
        'x-dead-letter-routing-key': `${queue}.dead`,
      },
    });
    // The dead-letter queue has no delivery limit: RabbitMQ 4 would give it 20, and drop a dead
    // letter looked at with a requeue more often than that.
    const dead = await managementQueue(`${queue}.dead`);
    expect({ type: dead.type, durable: dead.durable, arguments: dead.arguments }).toEqual({
      type: 'quorum',
      durable: true,
      arguments: { 'x-queue-type': 'quorum', 'x-delivery-limit': -1 },
    });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });

  it('uses --request-id and --experiment as given, and a URI --dataset as it is', async () => {
    const queue = freshQueue();
    const result = await submit([
      '--queue',
      queue,
      '--model',
      MODEL,
      '--dataset',
      f.datasets.artifactCsvUri,
      '--experiment',
      'team-exp',
      '--request-id',
      'order-42.v1',
    ]);
    expect(result).toMatchObject({ code: 0, stdout: 'order-42.v1\n', stderr: '' });
    const [msg] = await drain(queue);
    expect(msg?.properties.messageId).toBe('order-42.v1');
    expect(JSON.parse(msg?.content.toString('utf8') ?? '{}')).toEqual({
      version: 1,
      requestId: 'order-42.v1',
      experiment: 'team-exp',
      model: MODEL,
      dataset: { uri: f.datasets.artifactCsvUri },
    });
  });
});

describe('kmj submit: refusals', () => {
  it('an invalid request publishes nothing and exits 65 naming the field', async () => {
    const queue = await cleanups.requestQueue();
    const result = await submit(['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--output-format', 'xml']);
    expect(result).toMatchObject({
      code: EXIT.INVALID,
      stdout: '',
      stderr: 'kmj submit: nothing published: invalid request: output.format: must be one of csv, jsonl\n',
    });
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  it('a --file with one bad line among good ones publishes none of them and names the line', async () => {
    const queue = await cleanups.requestQueue();
    const file = requestsFile([
      { requestId: 'good-1', dataset: { uri: f.datasets.csv } },
      { requestId: 'good-2', dataset: { uri: f.datasets.csv } },
      '',
      { requestId: 'bad 4', dataset: { uri: f.datasets.csv } },
      { requestId: 'good-5', dataset: { uri: f.datasets.csv } },
    ]);
    const result = await submit(['--queue', queue, '--model', MODEL, '--file', file]);
    expect(result).toMatchObject({
      code: EXIT.INVALID,
      stdout: '',
      stderr:
        'kmj submit: nothing published: line 4: invalid request: requestId: must be 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit\n',
    });
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  const configCases: Array<{ name: string; args: (queue: string) => string[]; env?: Record<string, string>; problem: string }> = [
    { name: '--queue missing', args: () => ['--model', MODEL, '--dataset', f.datasets.csv], problem: '--queue: is required' },
    {
      name: '--tag without =',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv, '--tag', 'team'],
      problem: '--tag: "team" must be key=value',
    },
    {
      name: '--param with an empty key',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv, '--param', '=7'],
      problem: '--param: "=7" must be key=value',
    },
    {
      name: '--timeout=-1',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv, '--timeout=-1'],
      problem: '--timeout: "-1" must be a number of seconds above 0, or a duration such as 90s or 10m',
    },
    {
      name: '--timeout 0',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv, '--timeout', '0'],
      problem: '--timeout: "0" must be a number of seconds above 0, or a duration such as 90s or 10m',
    },
    {
      name: '--wait with --file',
      args: (q) => ['--queue', q, '--file', '/nonexistent/requests.jsonl', '--wait'],
      problem: '--wait: is for a single request, not --file',
    },
    { name: '--model missing', args: (q) => ['--queue', q, '--dataset', f.datasets.csv], problem: '--model: is required (or give --file)' },
    {
      name: '--wait without MLFLOW_TRACKING_URI',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv, '--wait'],
      problem: 'MLFLOW_TRACKING_URI: is required with --wait',
    },
    {
      name: 'a bad RABBITMQ_URL',
      args: (q) => ['--queue', q, '--model', MODEL, '--dataset', f.datasets.csv],
      env: { RABBITMQ_URL: 'http://127.0.0.1:5672' },
      problem: 'RABBITMQ_URL: "http://127.0.0.1:5672" must be a amqp or amqps URL',
    },
  ];

  it.each(configCases)('bad flags or settings ($name): exit 64 for a flag, 78 for a setting, naming it, nothing published', async (c) => {
    const queue = await cleanups.requestQueue();
    const result = await submit(c.args(queue), c.env ?? {});
    const setting = /^[A-Z_]+:/.test(c.problem);
    expect(result).toMatchObject(
      setting
        ? { code: EXIT.CONFIG, stdout: '', stderr: `kmj submit: invalid submit configuration: ${c.problem}\n` }
        : { code: 64, stdout: '', stderr: `kmj submit: ${c.problem}\nRun "kmj submit --help" for usage.\n` },
    );
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  it('--timeout -1 (a value that looks like an option) is a usage error naming --timeout, exit 64', async () => {
    const queue = await cleanups.requestQueue();
    const result = await submit(['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--timeout', '-1']);
    expect(result.code).toBe(64);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^kmj submit: Option '--timeout' argument is ambiguous\./);
    expect(result.stderr).toMatch(/Run "kmj submit --help" for usage\.\n$/);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });
});

describe('kmj submit: the broker refuses or does not confirm', () => {
  it('a queue that exists with other arguments (a classic queue): exit 69 with the PRECONDITION_FAILED hint', async () => {
    const queue = freshQueue();
    const conn = await connect(RABBITMQ_URL);
    try {
      await (await conn.createChannel()).assertQueue(queue, { durable: true });
    } finally {
      await conn.close();
    }
    const result = await submit(['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv]);
    expect(result.code).toBe(EXIT.UNAVAILABLE);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(
      `kmj submit: cannot declare queue "${queue}": Operation failed: QueueDeclare; 406 (PRECONDITION-FAILED) with message ` +
        `"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue '${queue}' in vhost '/': received the value '' of type 'longstr' but current is none"` +
        ` (queue "${queue}" exists with other arguments; kmj expects a quorum queue with x-delivery-limit and a dead-letter queue)\n`,
    );
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect((await managementQueue(queue)).type).toBe('classic');
  });

  it('the queue deleted mid-publish: exit 69, the ids printed are whole confirmed batches, the ones not routed are named', async () => {
    const queue = await cleanups.requestQueue();
    const total = 4000;
    // Large enough messages that the publish takes a few hundred milliseconds.
    const pad = 'x'.repeat(4000);
    const ids = Array.from({ length: total }, (_, i) => `mid-${i}`);
    const file = requestsFile(ids.map((requestId) => ({ requestId, dataset: { uri: f.datasets.csv }, tags: { pad } })));
    // Everything that reaches the queue, as it arrives (the queue's deletion ends this consumer).
    const conn = await connect(RABBITMQ_URL);
    cleanups.defer(() => conn.close().catch(() => undefined));
    conn.on('error', () => undefined);
    const admin = await conn.createChannel();
    const consumer = await conn.createChannel();
    const received: string[] = [];
    await consumer.consume(
      queue,
      (m) => {
        if (m) received.push(String(m.properties.messageId));
      },
      { noAck: true },
    );

    const p = startKmj(['submit', '--queue', queue, '--model', MODEL, '--file', file], { env: { RABBITMQ_URL } }, cleanups);
    let printedAtDelete = -1;
    p.child.stdout?.once('data', () => {
      printedAtDelete = lines(p.stdout()).length;
      admin.deleteQueue(queue).catch(() => undefined);
    });
    // The deletion either returns what follows (basic.return), refuses what was routed
    // (basic.nack) or makes the broker close the connection (541): kmj submit says which and
    // exits 69 in every case, at the latest after the 30 s confirm timeout and its bounded close
    // (3 s a step), so 50 s is a hang.
    const failed = (): boolean => /\nkmj submit: .+\n$/.test(`\n${p.stderr()}`);
    const exited = await Promise.race([p.done, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 50_000).unref())]);
    if (!exited) throw new Error(`kmj submit still running 50 s after the queue's deletion; stderr:\n${p.stderr().slice(-500)}`);
    const { code, stdout, stderr } = exited;
    expect(code).toBe(EXIT.UNAVAILABLE);
    expect(failed(), `kmj submit exited without reporting the failure; stderr:\n${stderr.slice(0, 500)}`).toBe(true);
    expect(printedAtDelete).toBeGreaterThan(0);

    // What was printed: the file's first ids, in order, a whole number of confirmed batches.
    const printed = lines(stdout);
    expect(printed.length).toBeGreaterThan(0);
    expect(printed.length).toBeLessThan(total);
    expect(printed).toEqual(ids.slice(0, printed.length));
    const failure = lines(stderr).at(-1) ?? '';
    expect(
      lines(stderr)
        .slice(0, -1)
        .every((l) => /^published \d+\/4000$/.test(l)),
      stderr.slice(0, 500),
    ).toBe(true);
    expect(failure).toMatch(
      new RegExp(
        `^kmj submit: (the broker could not route \\d+ message\\(s\\) to queue "${queue}" \\(does it still exist\\?\\): .+|the broker refused \\d+ message\\(s\\): .+|the broker did not confirm \\d+ message\\(s\\) within 30000 ms: .+|publishing to queue "${queue}" failed: .+)$`,
      ),
    );
    // Ids named as not routed or refused (a queue deleted mid-publish can do both in one batch)
    // are the ones right after the printed ones, never printed ones.
    const unrouted = (failure.match(/mid-\d+/g) ?? []).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    expect(unrouted).toEqual(ids.slice(printed.length, printed.length + unrouted.length));
    // What reached the queue came in file order, none of it was named as not routed, and none of
    // it is from beyond the batch that failed. (Part of that batch may have reached the queue
    // without being printed: the bug the next test pins down.)
    // Time let pass on purpose: a delivery still on its way would show in the checks below.
    await new Promise((r) => setTimeout(r, 300));
    expect(received).toEqual(ids.slice(0, received.length));
    expect(received.length).toBeLessThanOrEqual(printed.length + 200 - unrouted.length);
  });

  it('the queue deleted between two messages of a batch: every confirmed id is printed', async () => {
    const queue = await cleanups.requestQueue();
    const proxy = await AmqpFaultProxy.start(RABBITMQ_URL);
    cleanups.defer(() => proxy.close());
    proxy.pauseBeforePublish(250);
    const ids = Array.from({ length: 400 }, (_, i) => `cut-${i}`);
    const file = requestsFile(ids.map((requestId) => ({ requestId, dataset: { uri: f.datasets.csv } })));
    const p = startKmj(['submit', '--queue', queue, '--model', MODEL, '--file', file], { env: { RABBITMQ_URL: proxy.url } }, cleanups);
    // The broker has the first 250 messages (so it confirms them); the proxy holds the rest.
    await waitUntil(
      'the broker to have 250 messages while the proxy holds frames',
      async () => ({ messages: (await queueState(queue)).messages, held: proxy.held }),
      (s) => s.held > 0 && s.messages === 250,
      { timeoutMs: 20_000, stepMs: 50 },
    );
    // Time for kmj submit to take in the broker's confirms of the 250 before the queue goes (the proxy does not show them).
    await new Promise((r) => setTimeout(r, 200));
    await deleteQueues([queue]);
    proxy.resume();
    const result = await Promise.race([p.done, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 20_000).unref())]);
    expect(result, 'kmj submit did not exit').toBeDefined();
    const { code, stdout, stderr } = result as KmjExit;
    expect(code).toBe(EXIT.UNAVAILABLE);
    expect(lines(stderr).at(-1)).toMatch(
      new RegExp(
        `^kmj submit: (the broker could not route 150 message\\(s\\) to queue "${queue}" \\(does it still exist\\?\\): ${ids.slice(250).join(', ')}|publishing to queue "${queue}" failed: .+)$`,
      ),
    );
    expect(lines(stdout)).toEqual(ids.slice(0, 250));
  });

  it('the broker unreachable: exit 69, nothing printed, no password shown', async () => {
    const port = await closedPort();
    const result = await submit(['--queue', freshQueue(), '--model', MODEL, '--dataset', f.datasets.csv], {
      RABBITMQ_URL: `amqp://kmj:sekret-pw@127.0.0.1:${port}`,
    });
    expect(result).toMatchObject({
      code: EXIT.UNAVAILABLE,
      stdout: '',
      stderr: `kmj submit: cannot reach the broker: connect ECONNREFUSED 127.0.0.1:${port}\n`,
    });
  });

  it('the broker stops answering mid-publish: exit 69 after the 30 s confirm timeout, not a hang', { timeout: 60_000 }, async () => {
    const queue = await cleanups.requestQueue();
    const proxy = await AmqpFaultProxy.start(RABBITMQ_URL);
    cleanups.defer(() => proxy.close());
    const ids = Array.from({ length: 2000 }, (_, i) => `stall-${i}`);
    const file = requestsFile(ids.map((requestId) => ({ requestId, dataset: { uri: f.datasets.csv }, tags: { pad: 'x'.repeat(4000) } })));
    const p = startKmj(['submit', '--queue', queue, '--model', MODEL, '--file', file], { env: { RABBITMQ_URL: proxy.url } }, cleanups);
    p.child.stdout?.once('data', () => proxy.stall());
    const deadline = new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 40_000).unref());
    const result = await Promise.race([p.done, deadline]);
    expect(p.stderr()).toMatch(new RegExp(`kmj submit: the broker did not confirm 200 message\\(s\\) within 30000 ms`));
    expect(result, `kmj submit still running 40 s after the broker stopped answering; stderr:\n${p.stderr()}`).not.toBe('hung');
    expect((result as KmjExit).code).toBe(EXIT.UNAVAILABLE);
  });

  it('Ctrl-C while the broker is not confirming stops kmj submit at once', { timeout: 30_000 }, async () => {
    const queue = await cleanups.requestQueue();
    const proxy = await AmqpFaultProxy.start(RABBITMQ_URL);
    cleanups.defer(() => proxy.close());
    const ids = Array.from({ length: 2000 }, (_, i) => `int-${i}`);
    const file = requestsFile(ids.map((requestId) => ({ requestId, dataset: { uri: f.datasets.csv }, tags: { pad: 'x'.repeat(4000) } })));
    const p = startKmj(['submit', '--queue', queue, '--model', MODEL, '--file', file], { env: { RABBITMQ_URL: proxy.url } }, cleanups);
    p.child.stdout?.once('data', () => proxy.stall());
    await p.waitForStdout((out) => out.length > 0);
    // Time let pass on purpose: kmj submit is then waiting on confirms that do not come.
    await new Promise((r) => setTimeout(r, 1000));
    p.child.kill('SIGINT');
    const deadline = new Promise<'still running'>((resolve) => setTimeout(() => resolve('still running'), 5000).unref());
    const result = await Promise.race([p.done, deadline]);
    expect(result, 'kmj submit ignored SIGINT for 5 s').not.toBe('still running');
    expect((result as KmjExit).code).not.toBe(0);
    expect(lines((result as KmjExit).stdout)).toEqual(ids.slice(0, lines((result as KmjExit).stdout).length));
  });
});

describe('kmj submit --file', () => {
  it('publishes 500 requests in file order, prints their ids, and reports progress on stderr', async () => {
    const queue = freshQueue();
    const ids = Array.from({ length: 500 }, (_, i) => `bulk-${String(i).padStart(3, '0')}`);
    // Lines leave out what the flags fill in; one line overrides the model.
    const file = requestsFile(
      ids.map((requestId, i) =>
        i === 7
          ? { requestId, dataset: { uri: f.datasets.jsonl }, model: 'models:/other/2' }
          : { requestId, dataset: { uri: f.datasets.csv } },
      ),
    );
    const result = await submit(['--queue', queue, '--model', MODEL, '--experiment', 'bulk-exp', '--tag', 'batch=nightly', '--file', file]);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(`${ids.join('\n')}\n`);
    expect(result.stderr).toBe('published 200/500\npublished 400/500\npublished 500/500\n');
    const messages = await takeAll(queue, 500);
    expect(messages.map((m): unknown => m.properties.messageId)).toEqual(ids);
    const bodies = messages.map((m) => JSON.parse(m.content.toString('utf8')) as Record<string, unknown>);
    expect(bodies.every((b) => validRequest(b))).toBe(true);
    expect(bodies[0]).toEqual({
      version: 1,
      requestId: ids[0],
      experiment: 'bulk-exp',
      model: MODEL,
      tags: { batch: 'nightly' },
      dataset: { uri: f.datasets.csv },
    });
    expect(bodies[7]).toEqual({
      version: 1,
      requestId: ids[7],
      experiment: 'bulk-exp',
      model: 'models:/other/2',
      tags: { batch: 'nightly' },
      dataset: { uri: f.datasets.jsonl },
    });
    expect(messages.every((m) => m.properties.deliveryMode === 2 && m.properties.contentType === 'application/json')).toBe(true);
  });

  it('lines without a requestId get a fresh UUID each, printed in file order', async () => {
    const queue = freshQueue();
    const file = requestsFile(Array.from({ length: 3 }, () => ({ dataset: { uri: f.datasets.csv } })));
    const result = await submit(['--queue', queue, '--model', MODEL, '--file', file]);
    expect(result.code).toBe(0);
    const printed = lines(result.stdout);
    expect(printed).toHaveLength(3);
    for (const id of printed) expect(id).toMatch(UUID);
    expect(new Set(printed).size).toBe(3);
    expect(result.stderr).toBe('published 3/3\n');
    expect((await drain(queue)).map((m): unknown => m.properties.messageId)).toEqual(printed);
  });
});

describe('kmj submit --wait', () => {
  it('follows the request through a worker to its FINISHED run: metrics and the run URL, exit 0', async () => {
    const queue = await cleanups.requestQueue();
    const w = worker(queue);
    const result = await submit(
      ['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--label-column', f.label, '--wait', '--timeout', '60'],
      { MLFLOW_TRACKING_URI: MLFLOW_URL },
    );
    expect((await w.done).code).toBe(0);
    expect(result.code, result.stderr).toBe(EXIT.OK);
    const [requestId] = lines(result.stdout);
    const runs = await runsOf(queue);
    expect(runs).toHaveLength(1);
    const run = runs[0] as RestRun;
    const metrics = Object.fromEntries((run.data.metrics ?? []).map((m) => [m.key, m.value]));
    expect(metrics['rows']).toBe(150);
    const expId = await experimentId(queue);
    expect(result.stdout).toBe(
      [
        requestId,
        `FINISHED run ${run.info.run_id}`,
        `  ${'rows'.padEnd(24)} 150`,
        `  ${'accuracy_score'.padEnd(24)} ${shown(metrics['accuracy_score'] ?? Number.NaN)}`,
        `  ${'f1_score'.padEnd(24)} ${shown(metrics['f1_score'] ?? Number.NaN)}`,
        `  ${'total_seconds'.padEnd(24)} ${shown(metrics['total_seconds'] ?? Number.NaN)}`,
        `  ${MLFLOW_URL}/#/experiments/${expId}/runs/${run.info.run_id}`,
        '',
      ].join('\n'),
    );
    // Progress goes to stderr, one line per state change.
    for (const l of lines(result.stderr)) expect(l).toMatch(/^ {0,3}\d+s {2}(queued: no run yet|running \(run [0-9a-f]{32}\))$/);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  it(
    'a 100000-row dataset: the worker logs its progress and records it as metric steps; the row count is 100000',
    { timeout: 90_000 },
    async () => {
      const queue = await cleanups.requestQueue();
      const w = worker(queue, { KMJ_WORKER_PROGRESS_INTERVAL_MS: '100', KMJ_BATCH_ROWS: '2000' });
      const big = f.bigDataset['100000'] ?? '';
      expect(big).toMatch(/iris-100000\.csv$/);
      const result = await submit(
        ['--queue', queue, '--model', MODEL, '--dataset', big, '--label-column', f.label, '--wait', '--timeout', '80'],
        { MLFLOW_TRACKING_URI: MLFLOW_URL },
      );
      const done = await w.done;
      expect(done.code).toBe(0);
      expect(result.code, result.stderr).toBe(EXIT.OK);
      expect(lines(result.stdout)[2]).toBe(`  ${'rows'.padEnd(24)} 100000`);
      // Progress lines: rows rising, a rate, percent and time left (a local file's size is known).
      const progress = done.stderr
        .split('\n')
        .filter((l) => l.includes('"msg":"progress"'))
        .map((l) => JSON.parse(l) as { rows: number; rowsPerSecond: number; percent: number; etaSeconds: number });
      expect(progress.length).toBeGreaterThan(0);
      expect(progress.every((p) => p.rows > 0 && p.rows < 100_000 && p.rowsPerSecond > 0)).toBe(true);
      // Percent and time left follow the bytes read: once the reader has read the whole file ahead
      // of the model, lines carry neither; while they do, percent stays below 100.
      const withPercent = progress.filter((p) => p.percent !== undefined);
      expect(withPercent.length).toBeGreaterThan(0);
      expect(withPercent.every((p) => p.percent >= 0 && p.percent < 100 && p.etaSeconds >= 0)).toBe(true);
      // The same as metric steps in MLflow, the final figure last.
      const [run] = await runsOf(queue);
      const res = await fetch(`${MLFLOW_URL}/api/2.0/mlflow/metrics/get-history?run_id=${run?.info.run_id}&metric_key=rows`);
      const history = ((await res.json()) as { metrics: Array<{ value: number; step: number }> }).metrics.sort((a, b) => a.step - b.step);
      expect(history.length).toBeGreaterThan(1);
      expect(history.at(-1)).toMatchObject({ value: 100_000, step: history.length });
      expect(history.map((m) => m.value)).toEqual([...history.map((m) => m.value)].sort((a, b) => a - b));
    },
  );

  it('a request the worker dead-letters after starting its run: exit 10 with the run and the reason', async () => {
    const queue = await cleanups.requestQueue();
    const w = worker(queue);
    const result = await submit(
      ['--queue', queue, '--model', `models:/${classifier?.name}@nope`, '--dataset', f.datasets.csv, '--wait', '--timeout', '60'],
      { MLFLOW_TRACKING_URI: MLFLOW_URL },
    );
    expect((await w.done).code).toBe(10);
    expect(result.code, result.stderr).toBe(EXIT.DEAD_LETTERED);
    const runs = await runsOf(queue);
    expect(runs).toHaveLength(1);
    const [requestId] = lines(result.stdout);
    expect(result.stdout).toBe(
      `${requestId}\nDEAD-LETTERED (run ${runs[0]?.info.run_id} FAILED): model: registered model "${classifier?.name}" has no alias "nope"\n`,
    );
  });

  it('a request the worker refuses before any run: exit 10 with the dead-letter reason, the dead-letter left in place', async () => {
    const queue = await cleanups.requestQueue();
    const w = worker(queue, { KMJ_MAX_MESSAGE_BYTES: '1024' });
    const result = await submit(
      ['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--tag', `pad=${'x'.repeat(1200)}`, '--wait', '--timeout', '60'],
      { MLFLOW_TRACKING_URI: MLFLOW_URL },
    );
    expect((await w.done).code).toBe(10);
    expect(result.code, result.stderr).toBe(EXIT.DEAD_LETTERED);
    const dead = await drain(`${queue}.dead`);
    expect(dead).toHaveLength(1);
    const [requestId] = lines(result.stdout);
    expect(dead[0]?.properties.messageId).toBe(requestId);
    expect(result.stdout).toBe(`${requestId}\nDEAD-LETTERED: message: is ${dead[0]?.content.length} bytes, more than the limit of 1024\n`);
    expect(await runsOf(queue)).toEqual([]);
  });

  it('requests refused before any run, followed with --wait again and again, on a dead-letter queue with a delivery limit of 1: every dead letter stays, never redelivered', async () => {
    const queue = await cleanups.requestQueue();
    // RabbitMQ 4 gives quorum queues a delivery limit (20) by default; a look that returns a
    // message counts as a delivery, and past the limit the message is dropped.
    await queuePolicy(`${queue}.dead`, { 'delivery-limit': 1 }, cleanups);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const w = worker(queue, { KMJ_MAX_MESSAGE_BYTES: '1024' });
      const result = await submit(
        ['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--tag', `pad=${'x'.repeat(1200)}`, '--wait', '--timeout', '60'],
        { MLFLOW_TRACKING_URI: MLFLOW_URL },
      );
      expect((await w.done).code).toBe(10);
      expect(result.code, result.stderr).toBe(EXIT.DEAD_LETTERED);
      const [requestId = ''] = lines(result.stdout);
      expect(result.stdout).toMatch(new RegExp(`^${requestId}\nDEAD-LETTERED: message: is \\d+ bytes, more than the limit of 1024\n$`));
      ids.push(requestId);
    }
    const dead = await drain(`${queue}.dead`);
    expect(dead.map((m): unknown => m.properties.messageId)).toEqual(ids);
    // Never returned to the queue by a look: no delivery was counted against any of them
    // (RabbitMQ 4 leaves the header out until a message has been returned once).
    expect(dead.map((m): unknown => m.properties.headers?.['x-delivery-count'] ?? 0)).toEqual([0, 0, 0, 0]);
    expect(await runsOf(queue)).toEqual([]);
  });

  it('no worker for longer than 10 s: --wait says what would consume the queue', async () => {
    const queue = await cleanups.requestQueue();
    const result = await submit(['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--wait', '--timeout', '13'], {
      MLFLOW_TRACKING_URI: MLFLOW_URL,
    });
    expect(result.code).toBe(EXIT.TIMEOUT);
    const states = lines(result.stderr).map((l) => l.replace(/^ *\d+s {2}/, ''));
    expect(states).toEqual([
      'queued: no run yet',
      `queued: nothing consumes queue "${queue}": start a worker (kmj worker --queue ${queue}) or check its ScaledJob (kubectl get scaledjob; kmj status --scaledjob NAME)`,
    ]);
  }, 30_000);

  it('no worker: exit 75 after --timeout, the request still queued', async () => {
    const queue = await cleanups.requestQueue();
    const started = Date.now();
    const result = await submit(['--queue', queue, '--model', MODEL, '--dataset', f.datasets.csv, '--wait', '--timeout', '3'], {
      MLFLOW_TRACKING_URI: MLFLOW_URL,
    });
    expect(result.code).toBe(EXIT.TIMEOUT);
    expect(Date.now() - started).toBeLessThan(15_000);
    const [requestId] = lines(result.stdout);
    expect(result.stdout).toBe(`${requestId}\nno outcome within 3 s (last seen: queued: no run yet)\n`);
    expect(result.stderr).toBe('   0s  queued: no run yet\n');
    const [msg] = await drain(queue);
    expect(msg?.properties.messageId).toBe(requestId);
  });
});
