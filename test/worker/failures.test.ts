// Every way a request can fail, with the real `kmj worker` process, a real RabbitMQ and a real MLflow
// server (behind a fault-injecting proxy where a test needs MLflow to misbehave). Each test checks
// the exit code, the fate of the message (acknowledged, in `<queue>.dead` with the exact reason
// headers, or back in the queue) and the MLflow run's status and `kmj.error` tag.
import { createServer, type Server } from 'node:http';
import { readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { ConsumeMessage } from 'amqplib';
import { afterEach, describe, expect, it } from 'vitest';
import { DEAD_LETTER_HEADERS } from '../../rabbitmq/topology.ts';
import { EXIT } from '../../common/exit-codes.ts';
import { RUN_TAG } from '../../common/run-tags.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { FaultProxy, mlflowPath } from '../helpers/fault-proxy.ts';
import {
  drain,
  fixtures,
  logsWith,
  MLFLOW_AUTH_PASSWORD,
  MLFLOW_AUTH_URL,
  MLFLOW_AUTH_USER,
  MLFLOW_URL,
  publish,
  queueStateAfterExit,
  readRunWithPython,
  request,
  runsOf,
  runWorker,
  startWorker,
  tagsOf,
  type RestRun,
  type WorkerResult,
  waitForLog,
} from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const irisCsv = readFileSync(f.datasets.csv, 'utf8');
const UNREACHABLE = 'http://127.0.0.1:9';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

async function proxy(): Promise<FaultProxy> {
  const p = await FaultProxy.start(MLFLOW_URL);
  cleanups.defer(() => p.close());
  return p;
}

/** A tiny HTTP server for datasets; `routes` maps a path to a status and body. */
async function datasetServer(routes: Record<string, { status: number; body: string; chunked?: boolean }>): Promise<string> {
  const server: Server = createServer((req, res) => {
    const route = routes[req.url ?? ''];
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    // Without content-length the worker can only find the size by reading.
    res.writeHead(
      route.status,
      route.chunked ? { 'content-type': 'text/csv' } : { 'content-type': 'text/csv', 'content-length': Buffer.byteLength(route.body) },
    );
    res.end(route.body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.defer(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A fresh directory for dataset files, inside the worker's dataset roots (the temp dir). */
function dataDir(): string {
  return cleanups.tempDir('kmj-data-');
}

function writeCsv(name: string, text: string, dir = dataDir()): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** The iris CSV with its lines changed by `edit` (line 0 is the header). */
function editedIris(edit: (lines: string[]) => string[]): string {
  return `${edit(irisCsv.trimEnd().split('\n')).join('\n')}\n`;
}

/** JSON.parse's own message for `text`, as the worker (the same Node) reports it. */
function jsonError(text: string): string {
  try {
    JSON.parse(text);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('the text is valid JSON');
}

async function experimentExists(name: string, base = MLFLOW_URL): Promise<boolean> {
  const res = await fetch(`${base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(name)}`);
  if (res.status === 404) return false;
  if (res.ok) return true;
  throw new Error(`experiments/get-by-name: HTTP ${res.status}`);
}

interface DeadLetterExpectation {
  readonly reason: string;
  readonly field?: string;
  readonly runId?: string;
  readonly attempt?: number;
}

/** The queue is empty and `<queue>.dead` holds exactly one dead-letter with these headers. */
async function expectDeadLettered(queue: string, body: Buffer, want: DeadLetterExpectation): Promise<ConsumeMessage> {
  expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  const dead = await drain(`${queue}.dead`);
  expect(dead).toHaveLength(1);
  const msg = dead[0] as ConsumeMessage;
  expect(msg.content.equals(body)).toBe(true);
  const h = (msg.properties.headers ?? {}) as Record<string, unknown>;
  expect(h[DEAD_LETTER_HEADERS.reason]).toBe(want.reason);
  expect(h[DEAD_LETTER_HEADERS.field]).toBe(want.field);
  expect(h[DEAD_LETTER_HEADERS.runId]).toBe(want.runId);
  expect(h[DEAD_LETTER_HEADERS.queue]).toBe(queue);
  expect(h[DEAD_LETTER_HEADERS.attempt]).toBe(want.attempt ?? 1);
  expect(Date.now() - Date.parse(String(h[DEAD_LETTER_HEADERS.at]))).toBeLessThan(120_000);
  expect(msg.properties.contentType).toBe('application/json');
  return msg;
}

/** The message is back in the queue, not dead-lettered, and nobody holds it. */
async function expectRequeued(queue: string): Promise<void> {
  expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
  expect(await drain(`${queue}.dead`)).toEqual([]);
}

/** Takes the one message off the queue and returns its x-delivery-count (deliveries returned so far). */
async function deliveryCount(queue: string): Promise<unknown> {
  const msgs = await drain(queue);
  expect(msgs).toHaveLength(1);
  return msgs[0]?.properties.headers?.['x-delivery-count'];
}

/** The experiment's one run: FAILED, ended, with `kmj.error` = `error`. */
async function expectOneFailedRun(experiment: string, error: string, base = MLFLOW_URL, auth = false): Promise<RestRun> {
  const runs = await runsOf(experiment, base, auth);
  expect(runs).toHaveLength(1);
  const run = runs[0] as RestRun;
  expect(run.info.status).toBe('FAILED');
  expect(run.info.end_time).toBeGreaterThanOrEqual(run.info.start_time);
  expect(tagsOf(run)[RUN_TAG.error]).toBe(error);
  return run;
}

/** Publishes `req`, runs one worker, and returns its result with the exact body sent. */
async function runOne(req: unknown, env: Record<string, string> = {}): Promise<{ queue: string; body: Buffer; result: WorkerResult }> {
  const queue = await cleanups.requestQueue();
  const body = Buffer.isBuffer(req) ? req : Buffer.from(typeof req === 'string' ? req : JSON.stringify(req));
  await publish(queue, body);
  const result = await runWorker(queue, env);
  return { queue, body, result };
}

describe('requests refused before MLflow is touched', () => {
  const cases: Array<{ name: string; body: () => { text: string; experiment: string }; reason: (text: string) => string; field: string }> =
    [
      {
        name: 'invalid JSON',
        body: () => {
          const r = request();
          const text = JSON.stringify(r).slice(0, -12);
          return { text, experiment: r.experiment };
        },
        reason: (text) => `message: is not valid JSON (${jsonError(text)})`,
        field: 'message',
      },
      {
        name: 'a missing requestId',
        body: () => {
          const { requestId: _, ...r } = request();
          return { text: JSON.stringify(r), experiment: r.experiment };
        },
        reason: () => 'invalid request: requestId: is required',
        field: 'requestId',
      },
      {
        name: 'a bad dataset.format',
        body: () => {
          const r = request();
          return { text: JSON.stringify({ ...r, dataset: { uri: f.datasets.csv, format: 'parquet' } }), experiment: r.experiment };
        },
        reason: () => 'invalid request: dataset.format: must be one of csv, jsonl',
        field: 'dataset.format',
      },
      {
        name: 'an unknown top-level key',
        body: () => {
          const r = request();
          return { text: JSON.stringify({ ...r, priority: 'high' }), experiment: r.experiment };
        },
        reason: () => 'invalid request: priority: is not allowed here',
        field: 'priority',
      },
      {
        name: 'both dataset.uri and dataset.rows',
        body: () => {
          const r = request();
          return { text: JSON.stringify({ ...r, dataset: { uri: f.datasets.csv, rows: [{ a: 1 }] } }), experiment: r.experiment };
        },
        reason: () => 'invalid request: dataset: must have exactly one of uri and rows',
        field: 'dataset',
      },
    ];

  it.each(cases)('dead-letters $name with the exact reason, exit 10, no experiment', async (c) => {
    const p = await proxy();
    const { text, experiment } = c.body();
    const { queue, body, result } = await runOne(text, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    await expectDeadLettered(queue, body, { reason: c.reason(text), field: c.field });
    expect(p.requests()).toEqual([]);
    expect(await experimentExists(experiment)).toBe(false);
    expect(logsWith(result, 'request refused')).toHaveLength(1);
  });

  it('dead-letters a message larger than KMJ_MAX_MESSAGE_BYTES without parsing it, exit 10', async () => {
    const p = await proxy();
    const r = request();
    const bare = JSON.stringify({ ...r, tags: { note: '' } });
    const text = JSON.stringify({ ...r, tags: { note: 'x'.repeat(2000 - Buffer.byteLength(bare)) } });
    expect(Buffer.byteLength(text)).toBe(2000);
    const { queue, body, result } = await runOne(text, { MLFLOW_TRACKING_URI: p.url, KMJ_MAX_MESSAGE_BYTES: '1999' });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    await expectDeadLettered(queue, body, { reason: 'message: is 2000 bytes, more than the limit of 1999', field: 'message' });
    expect(p.requests()).toEqual([]);
    expect(await experimentExists(r.experiment)).toBe(false);
  });

  it('accepts a message of exactly KMJ_MAX_MESSAGE_BYTES', async () => {
    const r = request();
    const bare = JSON.stringify({ ...r, tags: { note: '' } });
    const text = JSON.stringify({ ...r, tags: { note: 'x'.repeat(2000 - Buffer.byteLength(bare)) } });
    const { queue, result } = await runOne(text, { KMJ_MAX_MESSAGE_BYTES: '2000' });
    expect(result.code).toBe(EXIT.OK);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    const [run] = await runsOf(r.experiment);
    expect(run?.info.status).toBe('FINISHED');
  });
});

describe('unknown models fail the run and dead-letter the request', () => {
  const cases = [
    {
      name: 'an unknown registered model',
      model: 'models:/no-such-model/1',
      error: 'model: registered model "no-such-model" version 1 does not exist',
    },
    {
      name: 'an unknown version of a known model',
      model: `models:/${classifier?.name}/99`,
      error: `model: registered model "${classifier?.name}" version 99 does not exist`,
    },
    {
      name: 'an unknown run in runs:/',
      model: 'runs:/0123456789abcdef0123456789abcdef/model',
      error: 'model: run 0123456789abcdef0123456789abcdef does not exist',
    },
    {
      name: 'an unknown logged model id',
      model: 'models:/m-0123456789abcdef0123456789abcdef',
      error: 'model: logged model m-0123456789abcdef0123456789abcdef does not exist',
    },
  ];

  it.each(cases)('$name: exit 10, run FAILED with kmj.error naming it', async (c) => {
    const req = request({ model: c.model });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const run = await expectOneFailedRun(req.experiment, c.error);
    expect(tagsOf(run)['kmj.model_uri']).toBe(c.model);
    await expectDeadLettered(queue, body, { reason: c.error, field: 'model', runId: run.info.run_id });
  });

  it('an unknown alias: exit 10, run FAILED with kmj.error naming the model and the alias', async () => {
    const req = request({ model: `models:/${classifier?.name}@nope` });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `model: registered model "${classifier?.name}" has no alias "nope"`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'model', runId: run.info.run_id });
    // A user's mistake is one line: the reason, no stack trace.
    const [line] = logsWith(result, 'request failed permanently');
    expect(line).toMatchObject({ reason: error, field: 'model' });
    expect(line).not.toHaveProperty('err');
    expect(JSON.stringify(line).length).toBeLessThan(600);
  });
});

describe('unreadable datasets fail the run and dead-letter the request', () => {
  it('a local file that does not exist', async () => {
    const path = join(dataDir(), 'missing.csv');
    const req = request({ dataset: { uri: path } });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset.uri: ${path} does not exist`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset.uri', runId: run.info.run_id });
  });

  it('a local file outside KMJ_DATASET_ROOTS', async () => {
    const root = dataDir();
    const outside = writeCsv('iris.csv', irisCsv);
    const req = request({ dataset: { uri: outside } });
    const { queue, body, result } = await runOne(req, { KMJ_DATASET_ROOTS: root });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset.uri: ${outside} is outside the worker's dataset roots (${root})`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset.uri', runId: run.info.run_id });
  });

  it('a symlink inside KMJ_DATASET_ROOTS that points outside them', async () => {
    const root = dataDir();
    const outside = writeCsv('iris.csv', irisCsv);
    const link = join(root, 'iris.csv');
    symlinkSync(outside, link);
    const req = request({ dataset: { uri: link } });
    const { queue, body, result } = await runOne(req, { KMJ_DATASET_ROOTS: root });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset.uri: ${link} is outside the worker's dataset roots (${root})`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset.uri', runId: run.info.run_id });
  });

  it('an http URL answering 404', async () => {
    const server = await datasetServer({});
    const uri = `${server}/data/iris.csv`;
    const req = request({ dataset: { uri } });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset.uri: ${uri} answered HTTP 404`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset.uri', runId: run.info.run_id });
  });

  it('a CSV with a short row', async () => {
    const path = writeCsv(
      'short.csv',
      editedIris((lines) => lines.map((l, i) => (i === 7 ? l.split(',').slice(0, 4).join(',') : l))),
    );
    const req = request({ dataset: { uri: path } });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = 'dataset: row 7 has 4 fields, the header has 5';
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });

  it('a non-numeric feature value, naming its row and column', async () => {
    const path = writeCsv(
      'text.csv',
      editedIris((lines) =>
        lines.map((l, i) =>
          i === 12
            ? l
                .split(',')
                .map((v, j) => (j === 1 ? 'three' : v))
                .join(',')
            : l,
        ),
      ),
    );
    const req = request({ dataset: { uri: path } });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset: row 12, column "${f.features[1]}": "three" is not a number`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });

  it('a non-numeric value in a later batch is numbered from the start of the dataset', async () => {
    const path = writeCsv(
      'late.csv',
      editedIris((lines) =>
        lines.map((l, i) =>
          i === 140
            ? l
                .split(',')
                .map((v, j) => (j === 0 ? '' : v))
                .join(',')
            : l,
        ),
      ),
    );
    const req = request({ dataset: { uri: path } });
    const { queue, body, result } = await runOne(req, { KMJ_BATCH_ROWS: '32' });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset: row 140, column "${f.features[0]}": an empty value is not a number`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });

  it('a NaN or infinite feature cell, naming its row and column (dataset.nonFinite defaults to refuse)', async () => {
    for (const [cell, shown] of [
      ['NaN', 'NaN'],
      ['-Infinity', '-Infinity'],
      ['inf', undefined],
    ] as const) {
      const path = writeCsv(
        'nan.csv',
        editedIris((lines) =>
          lines.map((l, i) =>
            i === 9
              ? l
                  .split(',')
                  .map((v, j) => (j === 2 ? cell : v))
                  .join(',')
              : l,
          ),
        ),
      );
      const req = request({ dataset: { uri: path } });
      const { queue, body, result } = await runOne(req);
      expect(result.code).toBe(EXIT.DEAD_LETTERED);
      // "inf" is no number at all to JavaScript: refused as a word, like "three".
      const error =
        shown === undefined
          ? `dataset: row 9, column "${f.features[2]}": "inf" is not a number`
          : `dataset: row 9, column "${f.features[2]}": ${shown} is not a finite number; set dataset.nonFinite to "allow" to give NaN and infinities to the model`;
      const run = await expectOneFailedRun(req.experiment, error);
      await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
    }
  });

  it('a label column the dataset does not have', async () => {
    const req = request({ labelColumn: 'variety' });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `labelColumn: column "variety" is not in the dataset (columns: ${[...f.features, f.label].join(', ')})`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'labelColumn', runId: run.info.run_id });
  });

  it('a local dataset larger than KMJ_MAX_DATASET_BYTES', async () => {
    const size = Buffer.byteLength(irisCsv);
    const req = request();
    const { queue, body, result } = await runOne(req, { KMJ_MAX_DATASET_BYTES: String(size - 1) });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `dataset: ${f.datasets.csv} is ${size} bytes, more than the limit of ${size - 1}`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });

  it('an http dataset larger than KMJ_MAX_DATASET_BYTES, by content-length and by counting a chunked body', async () => {
    const size = Buffer.byteLength(irisCsv);
    const server = await datasetServer({
      '/sized.csv': { status: 200, body: irisCsv },
      '/chunked.csv': { status: 200, body: irisCsv, chunked: true },
    });
    const limit = 2048;
    expect(size).toBeGreaterThan(limit);
    for (const [path, error] of [
      ['/sized.csv', `dataset: ${server}/sized.csv is ${size} bytes, more than the limit of ${limit}`],
      ['/chunked.csv', `dataset: is more than the limit of ${limit} bytes`],
    ] as const) {
      const req = request({ dataset: { uri: `${server}${path}` } });
      const { queue, body, result } = await runOne(req, { KMJ_MAX_DATASET_BYTES: String(limit) });
      expect(result.code, path).toBe(EXIT.DEAD_LETTERED);
      const run = await expectOneFailedRun(req.experiment, error);
      await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
    }
  });

  it('a dataset with more rows than KMJ_MAX_DATASET_ROWS', async () => {
    const req = request();
    const { queue, body, result } = await runOne(req, { KMJ_MAX_DATASET_ROWS: '149' });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = 'dataset: has more than the limit of 149 rows';
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });

  it("input that does not match the model's signature (a feature column missing)", async () => {
    const missing = f.features[3] ?? '';
    const path = writeCsv(
      'three-features.csv',
      editedIris((lines) =>
        lines.map((l) =>
          l
            .split(',')
            .filter((_, j) => j !== 3)
            .join(','),
        ),
      ),
    );
    const req = request({ dataset: { uri: path } });
    const { queue, body, result } = await runOne(req);
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const columns = [...f.features.filter((c) => c !== missing), f.label].join(', ');
    const error = `dataset: input does not match the model's signature: column "${missing}" is missing (dataset columns: ${columns})`;
    const run = await expectOneFailedRun(req.experiment, error);
    await expectDeadLettered(queue, body, { reason: error, field: 'dataset', runId: run.info.run_id });
  });
});

describe('dataset.nonFinite "allow"', () => {
  it('gives NaN and infinite cells to the model and counts them in the metric non_finite_values', async () => {
    const path = writeCsv(
      'nan-allowed.csv',
      editedIris((lines) =>
        lines.map((l, i) =>
          i === 3
            ? l
                .split(',')
                .map((v, j) => (j === 0 ? 'NaN' : j === 1 ? 'Infinity' : v))
                .join(',')
            : i === 100
              ? l
                  .split(',')
                  .map((v, j) => (j === 3 ? 'nan' : v))
                  .join(',')
              : l,
        ),
      ),
    );
    const req = request({ dataset: { uri: path, nonFinite: 'allow' } });
    const { queue, result } = await runOne(req);
    expect(result.code, result.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
    const metrics = Object.fromEntries((runs[0]?.data.metrics ?? []).map((m) => [m.key, m.value]));
    expect(metrics['non_finite_values']).toBe(3);
    expect(metrics['rows']).toBe(150);
  });

  it('without it, a run logs no non_finite_values metric', async () => {
    const req = request();
    const { result } = await runOne(req);
    expect(result.code).toBe(EXIT.OK);
    const runs = await runsOf(req.experiment);
    expect((runs[0]?.data.metrics ?? []).map((m) => m.key)).not.toContain('non_finite_values');
  });
});

describe('request text encoding', () => {
  it('bytes that are not UTF-8 in the experiment name: dead-lettered naming the field, no experiment made of replacement characters', async () => {
    const p = await proxy();
    const r = request({ experiment: 'MARK' });
    const [before, after] = JSON.stringify(r).split('MARK') as [string, string];
    const body = Buffer.concat([Buffer.from(`${before}caf`), Buffer.from([0xe9]), Buffer.from(after)]);
    const { queue, result } = await runOne(body, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    await expectDeadLettered(queue, body, { reason: 'invalid request: experiment: is not valid UTF-8 text', field: 'experiment' });
    expect(p.requests()).toEqual([]);
    expect(await experimentExists('caf\uFFFD')).toBe(false);
  });

  it('a UTF-8 byte-order mark before the JSON: the request runs', async () => {
    const req = request();
    const { queue, result } = await runOne(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(req))]));
    expect(result.code, result.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect((await runsOf(req.experiment)).map((run) => run.info.status)).toEqual(['FINISHED']);
  });
});

/** Every MLflow call after the run exists: begin's calls pass, the rest hang (a server that accepts and never answers). */
const AFTER_BEGIN = /^(?!\/api\/2\.0\/mlflow\/(experiments\/get-by-name|experiments\/create|runs\/search|runs\/create)$)/;

describe('the time budget and the grace period are bounds, with MLflow hanging', () => {
  it('budget 8 s, MLflow hanging after the run started: the worker is done, run marking included, within the budget', async () => {
    const p = await proxy();
    p.inject({ path: AFTER_BEGIN, delayMs: 120_000 });
    const req = request();
    const { queue, result } = await runOne(req, {
      MLFLOW_TRACKING_URI: p.url,
      KMJ_WORKER_TIME_BUDGET_MS: '8000',
      MLFLOW_HTTP_REQUEST_TIMEOUT: '60',
    });
    const exitedAt = Date.now();
    expect(result.code).toBe(EXIT.REQUEUED);
    const received = Date.parse(String(logsWith(result, 'message received')[0]?.['time']));
    const requeued = Date.parse(String(logsWith(result, 'message requeued')[0]?.['time']));
    // The work stops 2 s before the budget's end; marking the run (hanging) gets those 2 s.
    expect(requeued - received).toBeGreaterThanOrEqual(7500);
    expect(requeued - received).toBeLessThan(8000 + 300);
    expect(exitedAt - received).toBeLessThan(8000 + 1000);
    expect(logsWith(result, 'could not mark the run').length).toBeGreaterThan(0);
    await expectRequeued(queue);
  });

  it('SIGTERM with MLflow hanging: the worker is done within KMJ_WORKER_SHUTDOWN_GRACE_MS, the message requeued', async () => {
    const p = await proxy();
    p.inject({ path: AFTER_BEGIN, delayMs: 120_000 });
    const queue = await cleanups.requestQueue();
    await publish(queue, request());
    const w = startWorker(queue, { MLFLOW_TRACKING_URI: p.url, KMJ_WORKER_SHUTDOWN_GRACE_MS: '4000', MLFLOW_HTTP_REQUEST_TIMEOUT: '60' });
    cleanups.defer(() => {
      if (w.child.exitCode === null) w.child.kill('SIGKILL');
    });
    await waitForLog(w, 'run started');
    await p.waitForRequest(AFTER_BEGIN);
    const signalled = Date.now();
    w.child.kill('SIGTERM');
    const result = await w.done;
    expect(Date.now() - signalled).toBeLessThan(4000);
    expect(result.code).toBe(EXIT.REQUEUED);
    expect(logsWith(result, 'message requeued')[0]).toMatchObject({ reason: 'the worker was stopped (SIGTERM)' });
    await expectRequeued(queue);
  });
});

describe('MLflow trouble', () => {
  it('MLflow unreachable: exit 11, no run, the message back in the queue', async () => {
    const req = request();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: UNREACHABLE });
    expect(result.code).toBe(EXIT.REQUEUED);
    const requeued = logsWith(result, 'message requeued');
    expect(requeued).toHaveLength(1);
    expect(requeued[0]).toMatchObject({ requestId: req.requestId, attempt: 1, exitCode: EXIT.REQUEUED });
    expect(String(requeued[0]?.['reason'])).toMatch(/^MLflow GET \/api\/2\.0\/mlflow\/experiments\/get-by-name failed: .*ECONNREFUSED/);
    // MLFLOW_HTTP_REQUEST_MAX_RETRIES=2: two retries of the first call, then the requeue.
    const retries = logsWith(result, 'mlflow request failed, retrying').filter((l) => l['path'] === mlflowPath('experiments/get-by-name'));
    expect(retries.map((l) => [l['status'], l['attempt']])).toEqual([
      [0, 1],
      [0, 2],
    ]);
    await expectRequeued(queue);
    expect(await deliveryCount(queue)).toBeGreaterThanOrEqual(1);
    expect(await experimentExists(req.experiment)).toBe(false);
  });

  it('MLflow unreachable: the requeued message counts one delivery (x-delivery-count 1)', async () => {
    const { queue, result } = await runOne(request(), { MLFLOW_TRACKING_URI: UNREACHABLE });
    expect(result.code).toBe(EXIT.REQUEUED);
    await expectRequeued(queue);
    expect(await deliveryCount(queue)).toBe(1);
  });

  it('503 twice on runs/create, then OK: exit 0 and exactly one FINISHED run', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/create'), status: 503, times: 2 });
    const req = request();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.OK);
    expect(p.requests({ path: mlflowPath('runs/create') }).map((r) => r.outcome)).toEqual([503, 503, 'forwarded']);
    expect(p.requests({ path: mlflowPath('runs/create') })[2]?.upstreamStatus).toBe(200);
    // runs/create is not idempotent: each failure is followed by a search for the run before
    // the next create, never by a blind retry.
    expect(
      logsWith(result, 'runs/create failed and the run does not exist; creating it again').map((l) => [l['status'], l['attempt']]),
    ).toEqual([
      [503, 1],
      [503, 2],
    ]);
    const order = p
      .requests()
      .filter((r) => r.path === mlflowPath('runs/create') || r.path === mlflowPath('runs/search'))
      .map((r) => r.path.split('/').pop());
    expect(order).toEqual(['search', 'create', 'search', 'create', 'search', 'create']);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
    expect(tagsOf(runs[0] as RestRun)[RUN_TAG.error]).toBeUndefined();
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });

  it('429 with Retry-After: 1 is honoured: the retry waits 1000 ms', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/search'), status: 429, retryAfter: '1', times: 1 });
    const req = request();
    const { result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.OK);
    const retries = logsWith(result, 'mlflow request failed, retrying');
    expect(retries.map((l) => [l['path'], l['status'], l['waitMs']])).toEqual([[mlflowPath('runs/search'), 429, 1000]]);
    const [first, second, ...more] = p.requests({ path: mlflowPath('runs/search') });
    expect(more).toEqual([]);
    expect(first?.outcome).toBe(429);
    expect(second?.outcome).toBe('forwarded');
    const gapMs = (second?.at ?? 0) - (first?.at ?? 0);
    expect(gapMs).toBeGreaterThanOrEqual(990);
    expect(gapMs).toBeLessThan(1500);
    expect((await runsOf(req.experiment)).map((r) => r.info.status)).toEqual(['FINISHED']);
  });

  it('a dropped connection is retried like a 5xx', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/update'), drop: true, times: 1 });
    const req = request();
    const { result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.OK);
    expect(p.requests({ path: mlflowPath('runs/update') }).map((r) => r.outcome)).toEqual(['dropped', 'forwarded']);
    expect(logsWith(result, 'mlflow request failed, retrying').map((l) => [l['path'], l['status']])).toEqual([
      [mlflowPath('runs/update'), 0],
    ]);
    expect((await runsOf(req.experiment)).map((r) => r.info.status)).toEqual(['FINISHED']);
  });

  it('the time budget running out mid-run: exit 11 about when it ends, run FAILED "(requeued)", message requeued', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/log-inputs'), delayMs: 30_000 });
    const req = request();
    const started = Date.now();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url, KMJ_WORKER_TIME_BUDGET_MS: '2500' });
    expect(result.code).toBe(EXIT.REQUEUED);
    expect(Date.now() - started).toBeLessThan(2500 + 5000);
    const error = `MLflow POST ${mlflowPath('runs/log-inputs')} failed: the time budget of 2500 ms ran out`;
    expect(logsWith(result, 'message requeued')[0]).toMatchObject({ reason: error });
    await expectOneFailedRun(req.experiment, `${error} (requeued)`);
    expect(p.requests({ path: mlflowPath('runs/log-inputs') }).map((r) => r.outcome)).toEqual(['client-gone']);
    await expectRequeued(queue);
  });

  it('MLflow failing longer than the retries: exit 11, requeued, run FAILED "(requeued)"; the next worker resumes that run', async () => {
    const p = await proxy();
    // One call's worth of failures (MLFLOW_HTTP_REQUEST_MAX_RETRIES=2: three attempts).
    p.inject({ path: mlflowPath('runs/log-batch'), status: 503, times: 3 });
    const req = request();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.REQUEUED);
    const error = `MLflow POST ${mlflowPath('runs/log-batch')} answered HTTP 503 TEMPORARILY_UNAVAILABLE: injected HTTP 503 by the test's fault proxy (requeued)`;
    const failed = await expectOneFailedRun(req.experiment, error);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);

    const again = await runWorker(queue);
    expect(again.code).toBe(EXIT.OK);
    expect(logsWith(again, 'resuming the unfinished run of this request')[0]).toMatchObject({
      runId: failed.info.run_id,
      status: 'FAILED',
    });
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[failed.info.run_id, 'FINISHED']]);
    const tags = tagsOf(runs[0] as RestRun);
    expect(tags[RUN_TAG.error]).toBeUndefined();
    // The attempt the worker saw; that it is not 2 is the delivery-count bug shown above.
    expect(tags['kmj.delivery_attempt']).toBe(String(logsWith(again, 'message acknowledged')[0]?.['attempt']));
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });

  it('a run resumed after its params could not be logged has its params', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/log-batch'), status: 503, times: 3 });
    const req = request();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url, KMJ_BATCH_ROWS: '64' });
    expect(result.code).toBe(EXIT.REQUEUED);
    expect((await runWorker(queue, { KMJ_BATCH_ROWS: '64' })).code).toBe(EXIT.OK);
    const [run] = await runsOf(req.experiment);
    const py = await readRunWithPython(run?.info.run_id ?? '');
    expect(py.info.status).toBe('FINISHED');
    expect(py.params).toEqual({ model_uri: req.model, dataset: f.datasets.csv, output_format: 'csv', label_column: f.label });
    expect(py.tags['kmj.batch_rows']).toBe('64');
  });

  it('MLflow log-batch always 503: exit 11, requeued; the next worker against a healthy MLflow finishes the one run', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/log-batch'), status: 503 });
    const req = request();
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.REQUEUED);
    await expectRequeued(queue);
    const [first] = await runsOf(req.experiment);
    const again = await runWorker(queue);
    expect(again.code).toBe(EXIT.OK);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[first?.info.run_id, 'FINISHED']]);
    expect(tagsOf(runs[0] as RestRun)[RUN_TAG.error]).toBeUndefined();
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  it('MLflow log-batch always 503: the run is still marked FAILED with kmj.error "(requeued)"', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/log-batch'), status: 503 });
    const req = request();
    const { result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.REQUEUED);
    const [run] = await runsOf(req.experiment);
    expect(run?.info.status).toBe('FAILED');
    expect(tagsOf(run as RestRun)[RUN_TAG.error]).toMatch(/\(requeued\)$/);
  });

  it('the answer to runs/create lost on the way back: still exactly one run for the request', async () => {
    const p = await proxy();
    p.inject({ path: mlflowPath('runs/create'), afterForward: true, drop: true, times: 1 });
    const req = request();
    const { result } = await runOne(req, { MLFLOW_TRACKING_URI: p.url });
    expect(result.code).toBe(EXIT.OK);
    // MLflow made the run; the worker finds it by its request id instead of making a second one.
    expect(p.requests({ path: mlflowPath('runs/create') }).map((r) => [r.outcome, r.upstreamStatus])).toEqual([['dropped', 200]]);
    expect(logsWith(result, 'runs/create failed but the run exists; using it')).toHaveLength(1);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
  });

  /** Runs workers against an unreachable MLflow until one does not requeue; returns their results. */
  async function deliverUntilSettled(queue: string, maxDeliveries: number): Promise<WorkerResult[]> {
    const env = { MLFLOW_TRACKING_URI: UNREACHABLE, KMJ_MAX_DELIVERIES: String(maxDeliveries) };
    const results: WorkerResult[] = [];
    for (let i = 0; i < maxDeliveries + 1; i++) {
      const r = await runWorker(queue, env);
      results.push(r);
      if (r.code !== EXIT.REQUEUED) break;
      expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    }
    return results;
  }

  it('poison protection: the worker dead-letters, with the reason, the delivery that reaches KMJ_MAX_DELIVERIES; exit 10', async () => {
    const maxDeliveries = 3;
    const queue = await cleanups.requestQueue(maxDeliveries);
    const req = request();
    const body = Buffer.from(JSON.stringify(req));
    await publish(queue, body);
    const results = await deliverUntilSettled(queue, maxDeliveries);
    const last = results.at(-1) as WorkerResult;
    expect(results.map((r) => r.code)).toEqual([...results.slice(0, -1).map(() => EXIT.REQUEUED), EXIT.DEAD_LETTERED]);
    for (const r of results.slice(0, -1)) expect(Number(logsWith(r, 'message requeued')[0]?.['attempt'])).toBeLessThan(maxDeliveries);
    const dl = logsWith(last, 'message dead-lettered')[0] ?? {};
    const attempt = Number(dl['attempt']);
    expect(attempt).toBeGreaterThanOrEqual(maxDeliveries);
    const reason = String(dl['reason']);
    expect(reason).toMatch(
      new RegExp(`^gave up after ${attempt} deliveries: MLflow GET /api/2\\.0/mlflow/experiments/get-by-name failed: .*ECONNREFUSED`),
    );
    // The worker's own dead-letter (with its headers), not the broker's delivery-limit one.
    const dead = await expectDeadLettered(queue, body, { reason, attempt });
    expect(dead.properties.headers?.['x-death']).toBeUndefined();
    expect(await experimentExists(req.experiment)).toBe(false);
  });

  it('poison protection: dead-lettered on exactly the KMJ_MAX_DELIVERIES-th delivery, after N-1 requeues', async () => {
    const maxDeliveries = 3;
    const queue = await cleanups.requestQueue(maxDeliveries);
    const body = Buffer.from(JSON.stringify(request()));
    await publish(queue, body);
    const results = await deliverUntilSettled(queue, maxDeliveries);
    expect(results.map((r) => r.code)).toEqual([EXIT.REQUEUED, EXIT.REQUEUED, EXIT.DEAD_LETTERED]);
    expect(
      results.map((r) => r.logs.find((l) => l['msg'] === 'message requeued' || l['msg'] === 'message dead-lettered')?.['attempt']),
    ).toEqual([1, 2, 3]);
    const reason = String(logsWith(results[2] as WorkerResult, 'message dead-lettered')[0]?.['reason']);
    expect(reason.startsWith(`gave up after ${maxDeliveries} deliveries: `)).toBe(true);
    // The dead-letter queue counts its own deliveries in x-delivery-count; the worker's attempt
    // number travels in x-kmj-delivery-attempt.
    await expectDeadLettered(queue, body, { reason, attempt: maxDeliveries });
  });
});

describe('secrets stay out of logs, dead-letters and MLflow', () => {
  const auth = fixtures('fixtures-auth');
  const basic = Buffer.from(`${MLFLOW_AUTH_USER}:${MLFLOW_AUTH_PASSWORD}`).toString('base64');

  /** Every string the outside world gets to see from this request. */
  async function exposed(result: WorkerResult, queue: string, experiment: string): Promise<string> {
    const dead = await drain(`${queue}.dead`);
    const left = await drain(queue);
    const runs = await runsOf(experiment, MLFLOW_AUTH_URL, true);
    return [
      result.stderr,
      result.stdout,
      JSON.stringify(dead.map((m) => m.properties.headers)),
      JSON.stringify(left.map((m) => m.properties.headers)),
      JSON.stringify(runs),
    ].join('\n');
  }

  function authRequest(overrides: Record<string, unknown> = {}): ReturnType<typeof request> {
    return request({ model: `models:/${auth.models['classifier']?.name}/99`, dataset: { uri: auth.datasets.csv }, ...overrides });
  }

  it('MLFLOW_TRACKING_URI user-info: a failed run, its dead-letter and the logs never show the password', async () => {
    const req = authRequest();
    const uri = MLFLOW_AUTH_URL.replace('://', `://${MLFLOW_AUTH_USER}:${encodeURIComponent(MLFLOW_AUTH_PASSWORD)}@`);
    const { queue, result } = await runOne(req, { MLFLOW_TRACKING_URI: uri, KMJ_DATASET_ROOTS: auth.dir });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    const error = `model: registered model "${auth.models['classifier']?.name}" version 99 does not exist`;
    const run = await expectOneFailedRun(req.experiment, error, MLFLOW_AUTH_URL, true);
    expect(logsWith(result, 'message dead-lettered')[0]).toMatchObject({ reason: error, runId: run.info.run_id });
    const seen = await exposed(result, queue, req.experiment);
    expect(seen).not.toContain(MLFLOW_AUTH_PASSWORD);
    expect(seen).not.toContain(basic);
  });

  it('MLFLOW_TRACKING_PASSWORD: a failed run, its dead-letter and the logs never show it', async () => {
    const req = authRequest();
    const { queue, result } = await runOne(req, {
      MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
      MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
      MLFLOW_TRACKING_PASSWORD: MLFLOW_AUTH_PASSWORD,
      KMJ_DATASET_ROOTS: auth.dir,
    });
    expect(result.code).toBe(EXIT.DEAD_LETTERED);
    await expectOneFailedRun(
      req.experiment,
      `model: registered model "${auth.models['classifier']?.name}" version 99 does not exist`,
      MLFLOW_AUTH_URL,
      true,
    );
    const seen = await exposed(result, queue, req.experiment);
    expect(seen).not.toContain(MLFLOW_AUTH_PASSWORD);
    expect(seen).not.toContain(basic);
  });

  it('wrong credentials (password in the URI or MLFLOW_TRACKING_PASSWORD, a token) are refused and requeued without being shown', async () => {
    for (const [label, wrong, env] of [
      [
        'uri',
        'uri-wrong-pw-5f1c',
        (pw: string) => ({ MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL.replace('://', `://${MLFLOW_AUTH_USER}:${pw}@`) }),
      ],
      [
        'env',
        'env-wrong-pw-9a3e',
        (pw: string) => ({
          MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
          MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
          MLFLOW_TRACKING_PASSWORD: pw,
        }),
      ],
      ['token', 'wrong-token-4b8d0c6e1f', (token: string) => ({ MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL, MLFLOW_TRACKING_TOKEN: token })],
    ] as const) {
      const req = authRequest();
      const { queue, result } = await runOne(req, { ...env(wrong), KMJ_DATASET_ROOTS: auth.dir });
      expect(result.code, label).toBe(EXIT.REQUEUED);
      expect(logsWith(result, 'message requeued')[0]?.['reason'], label).toBe(
        "MLflow refused the worker's credentials (HTTP 401); fix the worker's MLflow settings",
      );
      const seen = await exposed(result, queue, req.experiment);
      expect(seen, label).not.toContain(wrong);
      expect(seen, label).not.toContain(Buffer.from(`${MLFLOW_AUTH_USER}:${wrong}`).toString('base64'));
    }
  });

  it('the user-info of an http dataset URL does not reach MLflow params', async () => {
    const server = await datasetServer({ '/iris.csv': { status: 200, body: irisCsv } });
    const secret = 'dataset-pw-7c2d';
    const uri = server.replace('://', `://reader:${secret}@`) + '/iris.csv';
    const req = request({ dataset: { uri } });
    const { result } = await runOne(req);
    expect(result.code).toBe(EXIT.OK);
    expect(result.stderr).not.toContain(secret);
    const [run] = await runsOf(req.experiment);
    expect(run?.info.status).toBe('FINISHED');
    expect(JSON.stringify(run)).not.toContain(secret);
  });
});
