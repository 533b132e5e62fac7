// MlflowHttp and MlflowTracking against the real MLflow servers: the one without auth (5000), the
// one with basic auth (5001), and a TLS / mutual-TLS / bearer-token proxy of our own in front of
// 5000. Retries are timed against ports where nothing answers; loadWorkerConfig's messages are exact.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../common/config.ts';
import { createLogger, type Logger } from '../../common/log.ts';
import { loadWorkerConfig } from '../../worker/config.ts';
import { PermanentError } from '../../common/errors.ts';
import { MlflowHttp, MlflowHttpError, type MlflowHttpOptions } from '../../mlflow/http.ts';
import { LOG_BATCH_LIMITS, MlflowTracking, proxyPath, splitLogBatch, type KeyValue, type Metric } from '../../mlflow/tracking.ts';
import { makePki, startMlflowProxy, type MlflowProxy, type Pki } from '../helpers/mlflow-proxy.ts';
import { MLFLOW_AUTH_PASSWORD, MLFLOW_AUTH_URL, MLFLOW_AUTH_USER, MLFLOW_URL, uniqueId } from '../helpers/worker.ts';

const NEVER = new AbortController().signal;

/** A logger whose JSON lines the test can read. */
function captureLog(): { log: Logger; lines: () => Array<Record<string, unknown>>; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString('utf8'));
      cb();
    },
  });
  const log = createLogger({ level: 'debug', name: 'mlflow-client-test', destination: sink });
  const text = (): string => chunks.join('');
  return {
    log,
    text,
    lines: () =>
      text()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

const opened: MlflowHttp[] = [];

/** An MlflowHttp closed after the test; fast retries unless the test says otherwise. */
function client(overrides: Partial<MlflowHttpOptions> = {}): MlflowHttp {
  const http = new MlflowHttp({
    trackingUri: MLFLOW_URL,
    insecureTls: false,
    maxRetries: 0,
    backoffFactorSeconds: 0.05,
    backoffJitterSeconds: 0,
    maxBackoffSeconds: 1,
    requestTimeoutMs: 15_000,
    log: createLogger({ level: 'silent', name: 'mlflow-client-test' }),
    ...overrides,
  });
  opened.push(http);
  return http;
}

function tracking(overrides: Partial<MlflowHttpOptions> = {}): MlflowTracking {
  return new MlflowTracking(client(overrides));
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((h) => h.close()));
});

/** The MlflowHttpError `promise` rejects with; fails the test when it resolves or rejects with something else. */
async function httpError(promise: Promise<unknown>): Promise<MlflowHttpError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(MlflowHttpError);
    return err as MlflowHttpError;
  }
  throw new Error('the call succeeded');
}

/** A port nothing listens on: bound, then released. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** A TCP listener that counts connections and either resets them at once or holds them silently. */
async function tcpTrap(mode: 'reset' | 'hold'): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    if (mode === 'reset') socket.resetAndDestroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as AddressInfo).port,
    connections: () => connections,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function restJson<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const res = await fetch(`${MLFLOW_URL}/api/2.0/mlflow/${path}`, {
    method: init.method ?? 'GET',
    headers: { 'content-type': 'application/json' },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as T;
}

describe('experimentId', () => {
  it('gives 20 clients creating the same new experiment at once the same id, and one experiment exists', async () => {
    const name = uniqueId('kmj-test-race');
    const ids = await Promise.all(Array.from({ length: 20 }, () => tracking({ maxRetries: 3 }).experimentId(name, NEVER)));
    expect(new Set(ids).size).toBe(1);
    const found = await restJson<{ experiments?: Array<{ experiment_id: string; name: string }> }>('experiments/search', {
      method: 'POST',
      body: { filter: `name = '${name}'`, max_results: 10, view_type: 'ALL' },
    });
    expect(found.experiments?.map((e) => [e.experiment_id, e.name])).toEqual([[ids[0], name]]);
    // A later call finds it rather than creating another.
    expect(await tracking().experimentId(name, NEVER)).toBe(ids[0]);
  });

  it('a create that lost the race is answered by a lookup, not retried: with the default retries, eight workers creating one experiment retry nothing', async () => {
    // MLflow answers the loser of two concurrent creates with a 400 that carries the unique-key
    // error. Retried, every attempt loses again: a worker in the cluster waited 3 minutes so.
    const name = uniqueId('kmj-test-race-default');
    const captured = captureLog();
    const ids = await Promise.all(
      Array.from({ length: 8 }, () => tracking({ log: captured.log, maxRetries: 7 }).experimentId(name, NEVER)),
    );
    expect(new Set(ids).size).toBe(1);
    expect(
      captured.lines().filter((l) => l['msg'] === 'mlflow request failed, retrying' && l['path'] === '/api/2.0/mlflow/experiments/create'),
    ).toEqual([]);
  }, 30_000);
});

describe('log-batch', () => {
  const kv = (prefix: string, n: number): KeyValue[] =>
    Array.from({ length: n }, (_, i) => ({ key: `${prefix}${String(i).padStart(3, '0')}`, value: `${prefix}-value-${i}` }));
  const metrics = (keys: number, steps: number): Metric[] =>
    Array.from({ length: keys * steps }, (_, i) => ({
      key: `m${String(i % keys).padStart(2, '0')}`,
      value: i * 0.5,
      timestamp: 1_700_000_000_000 + i,
      step: Math.floor(i / keys),
    }));

  function shape(parts: ReturnType<typeof splitLogBatch>): Array<[number, number, number]> {
    return parts.map((p) => [p.params.length, p.tags.length, p.metrics.length]);
  }

  it('splitLogBatch keeps every part within MLflow limits and every entity in order', () => {
    const params = kv('p', 250);
    const tags = kv('t', 150);
    const ms = metrics(25, 100);
    const parts = splitLogBatch(ms, params, tags);
    expect(shape(parts)).toEqual([
      [100, 0, 0],
      [100, 0, 0],
      [50, 50, 0],
      [0, 100, 900],
      [0, 0, 1000],
      [0, 0, 600],
    ]);
    for (const p of parts) {
      expect(p.metrics.length).toBeLessThanOrEqual(LOG_BATCH_LIMITS.metrics);
      expect(p.params.length + p.tags.length).toBeLessThanOrEqual(LOG_BATCH_LIMITS.paramsAndTags);
      expect(p.params.length + p.tags.length + p.metrics.length).toBeLessThanOrEqual(LOG_BATCH_LIMITS.entities);
    }
    expect(parts.flatMap((p) => p.params)).toEqual(params);
    expect(parts.flatMap((p) => p.tags)).toEqual(tags);
    expect(parts.flatMap((p) => p.metrics)).toEqual(ms);
  });

  it('splitLogBatch at the edges of the limits', () => {
    expect(shape(splitLogBatch([], [], []))).toEqual([[0, 0, 0]]);
    expect(shape(splitLogBatch(metrics(1, 1000), [], []))).toEqual([[0, 0, 1000]]);
    expect(shape(splitLogBatch(metrics(1, 1001), [], []))).toEqual([
      [0, 0, 1000],
      [0, 0, 1],
    ]);
    expect(shape(splitLogBatch([], kv('p', 100), []))).toEqual([[100, 0, 0]]);
    expect(shape(splitLogBatch([], kv('p', 99), kv('t', 2)))).toEqual([
      [99, 1, 0],
      [0, 1, 0],
    ]);
    expect(shape(splitLogBatch(metrics(1, 950), kv('p', 60), []))).toEqual([
      [60, 0, 940],
      [0, 0, 10],
    ]);
    // Every size from 0 to 1100 of each kind, a few combinations: the limits always hold.
    for (const [np, nt, nm] of [
      [0, 0, 2999],
      [101, 0, 0],
      [0, 201, 1],
      [37, 64, 999],
      [100, 100, 1000],
      [5, 0, 996],
    ] as const) {
      const parts = splitLogBatch(metrics(1, nm), kv('p', np), kv('t', nt));
      for (const p of parts) {
        expect(p.metrics.length + p.params.length + p.tags.length, `${np}/${nt}/${nm}`).toBeGreaterThan(0);
        expect(p.metrics.length).toBeLessThanOrEqual(1000);
        expect(p.params.length + p.tags.length).toBeLessThanOrEqual(100);
        expect(p.params.length + p.tags.length + p.metrics.length).toBeLessThanOrEqual(1000);
      }
      expect(parts.reduce((n, p) => n + p.metrics.length + p.params.length + p.tags.length, 0)).toBe(np + nt + nm);
    }
  });

  it('logs 250 params, 150 tags and 2500 metrics into a real run, which reads back complete', async () => {
    const t = tracking();
    const exp = await t.experimentId(uniqueId('kmj-test-batch'), NEVER);
    const run = await t.createRun(exp, 'big-batch', [], Date.now(), NEVER);
    const params = kv('p', 250);
    const tags = kv('t', 150);
    const ms = metrics(25, 100);
    await t.logBatch(run.run_id, { params, tags, metrics: ms }, NEVER);

    const got = await t.getRun(run.run_id, NEVER);
    const byKey = (xs: readonly KeyValue[] | undefined): Record<string, string> =>
      Object.fromEntries((xs ?? []).map((x) => [x.key, x.value]));
    expect(byKey(got.data.params)).toEqual(byKey(params));
    expect(Object.fromEntries(Object.entries(byKey(got.data.tags)).filter(([k]) => /^t\d{3}$/.test(k)))).toEqual(byKey(tags));
    // The latest value of each metric is its step-99 value: i = 99 * 25 + k.
    expect(Object.fromEntries((got.data.metrics ?? []).map((m) => [m.key, m.value]))).toEqual(
      Object.fromEntries(Array.from({ length: 25 }, (_, k) => [`m${String(k).padStart(2, '0')}`, (99 * 25 + k) * 0.5])),
    );
    for (let k = 0; k < 25; k++) {
      const key = `m${String(k).padStart(2, '0')}`;
      const h = await restJson<{ metrics?: Array<{ key: string; value: number; step: number; timestamp: number }> }>(
        `metrics/get-history?run_id=${run.run_id}&metric_key=${key}&max_results=1000`,
      );
      const history = (h.metrics ?? []).map((m) => [m.step, m.value, m.timestamp]).sort((a, b) => (a[0] ?? 0) - (b[0] ?? 0));
      expect(history, key).toEqual(Array.from({ length: 100 }, (_, s) => [s, (s * 25 + k) * 0.5, 1_700_000_000_000 + s * 25 + k]));
    }
  });
});

describe('runsWithTag', () => {
  it('finds the runs carrying a tag, newest first, and leaves out deleted runs', async () => {
    const t = tracking();
    const exp = await t.experimentId(uniqueId('kmj-test-tag'), NEVER);
    const base = Date.now() - 60_000;
    const old = await t.createRun(exp, 'old', [{ key: 'kmj.request_id', value: 'req-a' }], base, NEVER);
    const newer = await t.createRun(exp, 'newer', [{ key: 'kmj.request_id', value: 'req-a' }], base + 2000, NEVER);
    const deleted = await t.createRun(exp, 'deleted', [{ key: 'kmj.request_id', value: 'req-a' }], base + 4000, NEVER);
    const other = await t.createRun(exp, 'other', [{ key: 'kmj.request_id', value: 'req-b' }], base + 1000, NEVER);
    await t.createRun(exp, 'prefix', [{ key: 'kmj.request_id', value: 'req-a2' }], base + 3000, NEVER);
    await restJson('runs/delete', { method: 'POST', body: { run_id: deleted.run_id } });

    expect((await t.runsWithTag(exp, 'kmj.request_id', 'req-a', NEVER)).map((r) => r.info.run_id)).toEqual([newer.run_id, old.run_id]);
    expect((await t.runsWithTag(exp, 'kmj.request_id', 'req-b', NEVER)).map((r) => r.info.run_id)).toEqual([other.run_id]);
    expect(await t.runsWithTag(exp, 'kmj.request_id', 'req-c', NEVER)).toEqual([]);
    // Another experiment's runs are not found.
    const exp2 = await t.experimentId(uniqueId('kmj-test-tag'), NEVER);
    expect(await t.runsWithTag(exp2, 'kmj.request_id', 'req-a', NEVER)).toEqual([]);
  });

  it('finds a run whose tag value contains a single quote', async () => {
    const t = tracking();
    const exp = await t.experimentId(uniqueId('kmj-test-tag'), NEVER);
    const run = await t.createRun(exp, 'quoted', [{ key: 'owner', value: "o'brien" }], Date.now(), NEVER);
    expect((await t.runsWithTag(exp, 'owner', "o'brien", NEVER)).map((r) => r.info.run_id)).toEqual([run.run_id]);
  });
});

describe('artifacts through the proxy', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kmj-artifacts-'));
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('uploads files in nested directories and downloads the directory back byte for byte', async () => {
    const t = tracking();
    const exp = await t.experimentId(uniqueId('kmj-test-artifacts'), NEVER);
    const run = await t.createRun(exp, 'artifacts', [], Date.now(), NEVER);
    const files: Record<string, Buffer> = {
      MLmodel: Buffer.from('flavors:\n  onnx: {}\n'),
      'model.onnx': randomBytes(300_000),
      'sub/dir/deeper/weights.bin': randomBytes(4096),
      'sub/notes.txt': Buffer.from('nested\n'),
      'model/model.onnx': Buffer.from('a directory named like its parent'),
      'with space/a b,c=d+e%f?.txt': Buffer.from('odd name'),
      'ünï/çødé.txt': Buffer.from('unicode'),
      'empty.txt': Buffer.alloc(0),
    };
    const src = join(dir, 'src');
    for (const [rel, bytes] of Object.entries(files)) {
      const local = join(src, rel);
      await mkdir(dirname(local), { recursive: true });
      await writeFile(local, bytes);
      await t.uploadArtifact(run.artifact_uri, `model/${rel}`, local, 'application/octet-stream', NEVER);
    }
    // A file beside the directory is not part of it.
    await t.uploadArtifact(run.artifact_uri, 'outside.txt', join(src, 'MLmodel'), 'text/plain', NEVER);

    const dest = join(dir, 'dest');
    const written = await t.downloadDirectory(`${proxyPath(run.artifact_uri)}/model`, dest, NEVER, 10_000_000);
    expect([...written].sort()).toEqual(Object.keys(files).sort());
    for (const [rel, bytes] of Object.entries(files)) {
      expect((await readFile(join(dest, rel))).equals(bytes), rel).toBe(true);
    }
    // The listing of the run root shows the two top-level entries.
    const root = await t.listArtifacts(proxyPath(run.artifact_uri), NEVER);
    expect(root.map((f) => [f.path, f.is_dir]).sort()).toEqual([
      ['model', true],
      ['outside.txt', false],
    ]);
    // A size limit smaller than the directory stops the download with a message.
    await expect(t.downloadDirectory(`${proxyPath(run.artifact_uri)}/model`, join(dir, 'small'), NEVER, 1000)).rejects.toThrow(
      new PermanentError('the model directory is larger than the limit of 1000 bytes'),
    );
  });

  it('proxyPath takes mlflow-artifacts: URIs with and without an authority', () => {
    expect(proxyPath('mlflow-artifacts:/1/abc/artifacts')).toBe('1/abc/artifacts');
    expect(proxyPath('mlflow-artifacts://host:5000/1/abc/artifacts/')).toBe('1/abc/artifacts');
    expect(proxyPath('mlflow-artifacts:1/abc')).toBe('1/abc');
    expect(() => proxyPath('s3://bucket/1/abc')).toThrow(new Error('not an mlflow-artifacts URI: s3://bucket/1/abc'));
  });
});

describe('basic auth (server on 5001)', () => {
  let counter: MlflowProxy;

  beforeAll(async () => {
    counter = await startMlflowProxy({ target: MLFLOW_AUTH_URL });
  });

  afterAll(async () => {
    await counter?.close();
  });

  it('works with the username and password', async () => {
    const name = uniqueId('kmj-test-auth');
    const before = counter.requests;
    const id = await tracking({ trackingUri: counter.url(), username: MLFLOW_AUTH_USER, password: MLFLOW_AUTH_PASSWORD }).experimentId(
      name,
      NEVER,
    );
    expect(id).toMatch(/^\d+$/);
    expect(counter.requests - before).toBe(2); // get-by-name (not found), create
    expect(counter.authorizations.at(-1)).toBe(`Basic ${Buffer.from(`${MLFLOW_AUTH_USER}:${MLFLOW_AUTH_PASSWORD}`).toString('base64')}`);
  });

  it('gives 401 for a wrong password, without retrying, and never shows the password', async () => {
    const password = 'wrong-password-Zq81';
    const { log, text } = captureLog();
    const before = counter.requests;
    const started = Date.now();
    const e = await httpError(
      tracking({
        trackingUri: counter.url(),
        username: MLFLOW_AUTH_USER,
        password,
        maxRetries: 5,
        backoffFactorSeconds: 1,
        log,
      }).experimentId(uniqueId('kmj-test-auth'), NEVER),
    );
    expect(e.status).toBe(401);
    expect(e.retryable).toBe(false);
    expect(e.message).toMatch(/^MLflow GET \/api\/2\.0\/mlflow\/experiments\/get-by-name answered HTTP 401: You are not authenticated\./);
    expect(counter.requests - before).toBe(1);
    expect(Date.now() - started).toBeLessThan(2000);
    for (const s of [e.message, String(e.stack), text()]) expect(s).not.toContain(password);
  });

  it('takes the credentials from the tracking URI, percent-decoded, and shows neither', async () => {
    // A user of our own with a password that needs percent-encoding in a URI.
    const user = uniqueId('kmj-user');
    const password = 'p@ss:w/rd% é#?';
    const admin = `Basic ${Buffer.from(`${MLFLOW_AUTH_USER}:${MLFLOW_AUTH_PASSWORD}`).toString('base64')}`;
    const created = await fetch(`${MLFLOW_AUTH_URL}/api/2.0/mlflow/users/create`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: admin },
      body: JSON.stringify({ username: user, password }),
    });
    expect(created.status).toBe(200);
    try {
      const uri = (u: string, p: string): string => `http://${encodeURIComponent(u)}:${encodeURIComponent(p)}@127.0.0.1:${counter.port}`;
      const http = client({ trackingUri: uri(user, password) });
      expect(http.baseUrl).toBe(`http://127.0.0.1:${counter.port}`);
      const id = await new MlflowTracking(http).experimentId(uniqueId('kmj-test-uri-auth'), NEVER);
      expect(id).toMatch(/^\d+$/);
      expect(counter.authorizations.at(-1)).toBe(`Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`);
      // The admin's credentials in the URI work the same.
      expect(
        await tracking({ trackingUri: uri(MLFLOW_AUTH_USER, MLFLOW_AUTH_PASSWORD) }).experimentId(uniqueId('kmj-test-uri-auth'), NEVER),
      ).toMatch(/^\d+$/);

      const wrong = 'not-the-password-77';
      const { log, text } = captureLog();
      const before = counter.requests;
      const e = await httpError(tracking({ trackingUri: uri(user, wrong), maxRetries: 3, log }).experimentId('anything', NEVER));
      expect(e.status).toBe(401);
      expect(counter.requests - before).toBe(1);
      for (const s of [e.message, String(e.stack), text()]) {
        expect(s).not.toContain(wrong);
        expect(s).not.toContain(encodeURIComponent(password));
      }
      // Nor when the server cannot be reached at all: the message names the path, not the URI.
      const port = await freePort();
      const { log: log2, text: text2 } = captureLog();
      const down = await httpError(
        tracking({ trackingUri: `http://${user}:${wrong}@127.0.0.1:${port}`, maxRetries: 1, log: log2 }).experimentId('anything', NEVER),
      );
      expect(down.status).toBe(0);
      for (const s of [down.message, String(down.stack), text2()]) expect(s).not.toContain(wrong);
    } finally {
      await fetch(`${MLFLOW_AUTH_URL}/api/2.0/mlflow/users/delete`, {
        method: 'DELETE',
        headers: { 'content-type': 'application/json', authorization: admin },
        body: JSON.stringify({ username: user }),
      });
    }
  });
});

describe('TLS in front of MLflow', () => {
  let pki: Pki;
  let plain: MlflowProxy;
  let mutual: MlflowProxy;
  let bearer: MlflowProxy;
  const token = `tok-${randomUUID()}`;

  beforeAll(async () => {
    pki = await makePki();
    plain = await startMlflowProxy({ target: MLFLOW_URL, tls: { cert: pki.serverCert, key: pki.serverKey } });
    mutual = await startMlflowProxy({ target: MLFLOW_URL, tls: { cert: pki.serverCert, key: pki.serverKey, clientCa: pki.caCert } });
    bearer = await startMlflowProxy({ target: MLFLOW_URL, tls: { cert: pki.serverCert, key: pki.serverKey }, bearerToken: token });
  });

  afterAll(async () => {
    await plain?.close();
    await mutual?.close();
    await bearer?.close();
    await pki?.remove();
  });

  it('works when the server CA is given, by IP and by the name localhost', async () => {
    for (const host of ['127.0.0.1', 'localhost'] as const) {
      const before = plain.forwarded;
      const name = uniqueId('kmj-test-tls');
      const id = await tracking({ trackingUri: plain.url(host), serverCa: pki.caCert }).experimentId(name, NEVER);
      expect(id, host).toMatch(/^\d+$/);
      expect(plain.forwarded - before, host).toBe(2);
      // The experiment is in the real MLflow behind the proxy.
      expect(
        (await restJson<{ experiment: { experiment_id: string } }>(`experiments/get-by-name?experiment_name=${name}`)).experiment
          .experiment_id,
      ).toBe(id);
    }
  });

  it('fails without the CA (status 0, not retried past maxRetries), and works with insecureTls', async () => {
    const before = plain.connections;
    const requestsBefore = plain.requests;
    const e = await httpError(tracking({ trackingUri: plain.url(), maxRetries: 0 }).experimentId(uniqueId('kmj-test-tls'), NEVER));
    expect(e.status).toBe(0);
    // Node adds a hint after OpenSSL's words ("; if the root CA is installed locally, ...").
    expect(e.message).toMatch(/^MLflow GET \/api\/2\.0\/mlflow\/experiments\/get-by-name failed: unable to verify the first certificate\b/);
    expect(plain.connections - before).toBe(1);
    expect(plain.requests - requestsBefore).toBe(0);

    const id = await tracking({ trackingUri: plain.url(), insecureTls: true }).experimentId(uniqueId('kmj-test-tls'), NEVER);
    expect(id).toMatch(/^\d+$/);
    // A CA that did not sign the server certificate is no better than none.
    const foreign = await httpError(
      tracking({ trackingUri: plain.url(), serverCa: pki.foreignCaCert, maxRetries: 0 }).experimentId('x', NEVER),
    );
    expect(foreign.status).toBe(0);
  });

  it('mutual TLS: a client cert+key PEM signed by the CA works; none or a foreign one fails', async () => {
    const before = mutual.forwarded;
    const id = await tracking({ trackingUri: mutual.url(), serverCa: pki.caCert, clientCert: pki.clientPem }).experimentId(
      uniqueId('kmj-test-mtls'),
      NEVER,
    );
    expect(id).toMatch(/^\d+$/);
    expect(mutual.forwarded - before).toBe(2);

    for (const clientCert of [undefined, pki.foreignClientPem]) {
      const e = await httpError(
        tracking({ trackingUri: mutual.url(), serverCa: pki.caCert, clientCert, maxRetries: 0 }).experimentId('x', NEVER),
      );
      expect(e.status, clientCert ? 'foreign cert' : 'no cert').toBe(0);
    }
    expect(mutual.forwarded - before).toBe(2);
  });

  it('mutual TLS from loadWorkerConfig: the PEM file path and the CA path as the Python client takes them', async () => {
    const config = loadWorkerConfig({
      KMJ_WORKER_QUEUE: 'q',
      MLFLOW_TRACKING_URI: mutual.url('localhost'),
      MLFLOW_TRACKING_SERVER_CERT_PATH: pki.caFile,
      MLFLOW_TRACKING_CLIENT_CERT_PATH: pki.clientPemFile,
    });
    expect(config.mlflow?.clientCert?.equals(pki.clientPem)).toBe(true);
    expect(config.mlflow?.serverCa?.equals(pki.caCert)).toBe(true);
    const settings = config.mlflow;
    if (!settings) throw new Error('no mlflow settings');
    const id = await tracking({ ...settings, maxRetries: 0 }).experimentId(uniqueId('kmj-test-mtls-config'), NEVER);
    expect(id).toMatch(/^\d+$/);
  });

  it('bearer token: sent as Authorization: Bearer and accepted; missing or wrong gives 401 once', async () => {
    const id = await tracking({ trackingUri: bearer.url(), serverCa: pki.caCert, token }).experimentId(uniqueId('kmj-test-bearer'), NEVER);
    expect(id).toMatch(/^\d+$/);
    expect(bearer.authorizations.slice(-2)).toEqual([`Bearer ${token}`, `Bearer ${token}`]);

    for (const given of [undefined, 'wrong-token-0123456789']) {
      const before = bearer.requests;
      const { log, text } = captureLog();
      const e = await httpError(
        tracking({ trackingUri: bearer.url(), serverCa: pki.caCert, token: given, maxRetries: 4, log }).experimentId('x', NEVER),
      );
      expect(e.status).toBe(401);
      expect(e.errorCode).toBe('UNAUTHENTICATED');
      expect(e.message).toBe(
        'MLflow GET /api/2.0/mlflow/experiments/get-by-name answered HTTP 401 UNAUTHENTICATED: a valid bearer token is required',
      );
      expect(bearer.requests - before).toBe(1);
      if (given) for (const s of [e.message, text()]) expect(s).not.toContain(given);
    }
    // The token wins over a username and password.
    await tracking({ trackingUri: bearer.url(), serverCa: pki.caCert, token, username: 'u', password: 'p' }).experimentId(
      uniqueId('kmj-test-bearer'),
      NEVER,
    );
    expect(bearer.authorizations.at(-1)).toBe(`Bearer ${token}`);
  });
});

describe('retries', () => {
  it('gives status 0 after exactly 1 + maxRetries attempts when nothing listens, waiting as configured', async () => {
    const port = await freePort();
    const { log, lines } = captureLog();
    const started = Date.now();
    const e = await httpError(
      tracking({
        trackingUri: `http://127.0.0.1:${port}`,
        maxRetries: 2,
        backoffFactorSeconds: 0.1,
        backoffJitterSeconds: 0,
        log,
      }).experimentId('x', NEVER),
    );
    const elapsed = Date.now() - started;
    expect(e.status).toBe(0);
    expect(e.retryable).toBe(true);
    expect(e.message).toBe(`MLflow GET /api/2.0/mlflow/experiments/get-by-name failed: connect ECONNREFUSED 127.0.0.1:${port}`);
    // No wait before the first retry, then factor × 2 = 200 ms.
    const retries = lines().filter((l) => l['msg'] === 'mlflow request failed, retrying');
    expect(retries.map((l) => [l['attempt'], l['waitMs'], l['status']])).toEqual([
      [1, 0, 0],
      [2, 200, 0],
    ]);
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(3000);
  });

  it('makes exactly 3 connections with maxRetries 2 when the server resets them', async () => {
    const trap = await tcpTrap('reset');
    try {
      const e = await httpError(
        tracking({ trackingUri: `http://127.0.0.1:${trap.port}`, maxRetries: 2, backoffFactorSeconds: 0.01 }).experimentId('x', NEVER),
      );
      expect(e.status).toBe(0);
      expect(trap.connections()).toBe(3);
    } finally {
      await trap.close();
    }
  });

  it('an aborted signal stops at once: before the first attempt, during a backoff wait, during a hanging request', async () => {
    const trap = await tcpTrap('reset');
    const hold = await tcpTrap('hold');
    try {
      // Already aborted: no connection at all.
      const aborted = AbortSignal.abort(new Error('shutting down'));
      let started = Date.now();
      const e1 = await httpError(tracking({ trackingUri: `http://127.0.0.1:${trap.port}`, maxRetries: 5 }).experimentId('x', aborted));
      expect(e1.status).toBe(0);
      expect(Date.now() - started).toBeLessThan(500);
      expect(trap.connections()).toBe(0);

      // Aborted during the 10 s wait before the second retry.
      const c = new AbortController();
      const timer = setTimeout(() => c.abort(new Error('time budget spent')), 300);
      started = Date.now();
      const e2 = await httpError(
        tracking({ trackingUri: `http://127.0.0.1:${trap.port}`, maxRetries: 5, backoffFactorSeconds: 5 }).experimentId('x', c.signal),
      );
      clearTimeout(timer);
      const elapsed = Date.now() - started;
      expect(e2.status).toBe(0);
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(elapsed).toBeLessThan(1500);
      expect(trap.connections()).toBe(2);

      // Aborted while the server holds the request without answering: no retry after it.
      const c2 = new AbortController();
      const timer2 = setTimeout(() => c2.abort(new Error('SIGTERM')), 300);
      started = Date.now();
      const e3 = await httpError(
        tracking({ trackingUri: `http://127.0.0.1:${hold.port}`, maxRetries: 5, backoffFactorSeconds: 0.01 }).experimentId('x', c2.signal),
      );
      clearTimeout(timer2);
      expect(e3.status).toBe(0);
      expect(Date.now() - started).toBeLessThan(1500);
      expect(hold.connections()).toBe(1);
    } finally {
      await trap.close();
      await hold.close();
    }
  });

  it('a response body that stalls after the headers is bounded by requestTimeoutMs and retried', async () => {
    const name = uniqueId('kmj-test-stall');
    const id = await tracking().experimentId(name, NEVER);
    const proxy = await startMlflowProxy({ target: MLFLOW_URL, stallBody: /\/experiments\/get-by-name$/ });
    const budget = new AbortController();
    const timer = setTimeout(() => budget.abort(new Error('time budget spent')), 2500);
    try {
      const started = Date.now();
      const e = await httpError(
        tracking({ trackingUri: proxy.url(), requestTimeoutMs: 300, maxRetries: 1, backoffFactorSeconds: 0.01 }).experimentId(
          name,
          budget.signal,
        ),
      );
      expect(id).toMatch(/^\d+$/);
      expect(e.status).toBe(0);
      expect(proxy.requests).toBe(2);
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      clearTimeout(timer);
      await proxy.close();
    }
  });

  it('a request that exceeds requestTimeoutMs is an attempt that failed, and is retried', async () => {
    const hold = await tcpTrap('hold');
    try {
      const started = Date.now();
      const e = await httpError(
        tracking({
          trackingUri: `http://127.0.0.1:${hold.port}`,
          maxRetries: 1,
          backoffFactorSeconds: 0.01,
          requestTimeoutMs: 200,
        }).experimentId('x', NEVER),
      );
      expect(e.status).toBe(0);
      expect(hold.connections()).toBe(2);
      expect(Date.now() - started).toBeGreaterThanOrEqual(380);
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      await hold.close();
    }
  });
});

describe('loadWorkerConfig', () => {
  function configError(env: Record<string, string>): string {
    try {
      loadWorkerConfig({ KMJ_WORKER_QUEUE: 'jobs', ...env });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as ConfigError).message;
    }
    throw new Error('the configuration was accepted');
  }

  it('refuses a tracking URI that is not http(s), without showing its credentials', () => {
    expect(configError({ MLFLOW_TRACKING_URI: 'ftp://x' })).toBe(
      'invalid worker configuration: MLFLOW_TRACKING_URI: "ftp://x" must be a http or https URL',
    );
    expect(configError({ MLFLOW_TRACKING_URI: 'databricks' })).toBe(
      'invalid worker configuration: MLFLOW_TRACKING_URI: "databricks" must be a http or https URL',
    );
    const message = configError({ MLFLOW_TRACKING_URI: 'file://admin:s3cret-pw@host/mlruns' });
    expect(message).toBe('invalid worker configuration: MLFLOW_TRACKING_URI: "file://***@host/mlruns" must be a http or https URL');
  });

  it('refuses negative and out-of-range numbers, every one in one message', () => {
    expect(
      configError({
        MLFLOW_TRACKING_URI: MLFLOW_URL,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES: '-1',
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: '-0.5',
        MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: 'abc',
        MLFLOW_HTTP_REQUEST_TIMEOUT: '0',
        KMJ_BATCH_ROWS: '-100',
        KMJ_MAX_DELIVERIES: '1.5',
      }),
    ).toBe(
      'invalid worker configuration: ' +
        'MLFLOW_HTTP_REQUEST_MAX_RETRIES: "-1" must be an integer from 0 to 20; ' +
        'MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: "-0.5" must be a number at least 0 and at most 60; ' +
        'MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: "abc" must be a number at least 0 and at most 60; ' +
        'MLFLOW_HTTP_REQUEST_TIMEOUT: "0" must be an integer from 1 to 3600; ' +
        'KMJ_MAX_DELIVERIES: "1.5" must be an integer from 1 to 1000; ' +
        'KMJ_BATCH_ROWS: "-100" must be an integer from 1 to 1000000',
    );
    expect(configError({ MLFLOW_TRACKING_INSECURE_TLS: 'maybe' })).toBe(
      'invalid worker configuration: MLFLOW_TRACKING_INSECURE_TLS: "maybe" must be true or false',
    );
  });

  it('refuses a token together with a username, and a password without a username', () => {
    expect(
      configError({
        MLFLOW_TRACKING_URI: MLFLOW_URL,
        MLFLOW_TRACKING_TOKEN: 't',
        MLFLOW_TRACKING_USERNAME: 'u',
        MLFLOW_TRACKING_PASSWORD: 'p',
      }),
    ).toBe(
      'invalid worker configuration: MLFLOW_TRACKING_TOKEN: set either a token or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, not both',
    );
    expect(configError({ MLFLOW_TRACKING_URI: MLFLOW_URL, MLFLOW_TRACKING_PASSWORD: 'p' })).toBe(
      'invalid worker configuration: MLFLOW_TRACKING_PASSWORD: is set without MLFLOW_TRACKING_USERNAME',
    );
    expect(configError({ MLFLOW_TRACKING_TOKEN: 't', MLFLOW_TRACKING_USERNAME: 'u' })).toContain('not both');
  });

  it('refuses unreadable certificate paths, both in one message', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kmj-cfg-'));
    try {
      expect(
        configError({
          MLFLOW_TRACKING_URI: MLFLOW_URL,
          MLFLOW_TRACKING_SERVER_CERT_PATH: '/nonexistent/ca.pem',
          MLFLOW_TRACKING_CLIENT_CERT_PATH: dir,
        }),
      ).toBe(
        'invalid worker configuration: ' +
          `MLFLOW_TRACKING_SERVER_CERT_PATH: cannot read "/nonexistent/ca.pem": ENOENT: no such file or directory, open '/nonexistent/ca.pem'; ` +
          `MLFLOW_TRACKING_CLIENT_CERT_PATH: cannot read ${JSON.stringify(dir)}: EISDIR: illegal operation on a directory, read`,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('lists an unreadable certificate path together with a bad number', () => {
    expect(
      configError({
        MLFLOW_TRACKING_URI: MLFLOW_URL,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES: '-1',
        MLFLOW_TRACKING_SERVER_CERT_PATH: '/nonexistent/ca.pem',
      }),
    ).toBe(
      'invalid worker configuration: MLFLOW_HTTP_REQUEST_MAX_RETRIES: "-1" must be an integer from 0 to 20; ' +
        `MLFLOW_TRACKING_SERVER_CERT_PATH: cannot read "/nonexistent/ca.pem": ENOENT: no such file or directory, open '/nonexistent/ca.pem'`,
    );
  });

  it('names the --queue flag when the queue came from it, the variable otherwise', () => {
    const messageOf = (fn: () => unknown): string => {
      try {
        fn();
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as ConfigError).message;
      }
      throw new Error('the configuration was accepted');
    };
    expect(messageOf(() => loadWorkerConfig({}))).toBe(
      'invalid worker configuration: KMJ_WORKER_QUEUE: set a queue or KMJ_WORKER_TOPIC, exactly one of them',
    );
    expect(messageOf(() => loadWorkerConfig({}, { queue: 'x'.repeat(256) }))).toBe(
      'invalid worker configuration: --queue: must be at most 255 characters, got 256',
    );
    expect(loadWorkerConfig({ KMJ_WORKER_QUEUE: 'from-env' }, { queue: 'from-flag' }).input).toMatchObject({
      kind: 'rabbitmq',
      queue: 'from-flag',
    });
  });

  it('has the documented defaults, frozen', () => {
    const c = loadWorkerConfig({ KMJ_WORKER_QUEUE: 'jobs' });
    expect(c).toEqual({
      input: { kind: 'rabbitmq', url: 'amqp://guest:guest@127.0.0.1:5672', queue: 'jobs', deadLetterQueue: 'jobs.dead' },
      maxDeliveries: 5,
      mlflow: undefined,
      idleTimeoutMs: 30_000,
      timeBudgetMs: 600_000,
      shutdownGraceMs: 20_000,
      modelCacheDir: join(homedir(), '.cache', 'kmj', 'models'),
      workDir: join(tmpdir(), 'kmj'),
      datasetRoots: ['/data'],
      modelRoots: ['/models'],
      // No MLFLOW_TRACKING_URI: the local default spool.
      spoolDir: join(homedir(), '.local', 'share', 'kmj', 'spool'),
      maxMessageBytes: 1024 * 1024,
      maxDatasetBytes: 512 * 1024 * 1024,
      maxDatasetRows: 10_000_000,
      maxModelBytes: 1024 * 1024 * 1024,
      batchRows: 16384,
      progressIntervalMs: 10_000,
      onnxThreads: 0,
      mlflowUser: expect.any(String),
      reportTimeoutMs: 1000,
      podName: undefined,
      nodeName: undefined,
      logLevel: 'info',
    });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.input)).toBe(true);
    expect(Object.isFrozen(c.datasetRoots)).toBe(true);

    // A topic with its group: a Kafka input, with no dead-letter queue (its dead letters go to a topic).
    const k = loadWorkerConfig({ KMJ_WORKER_TOPIC: 'jobs', KMJ_WORKER_GROUP: 'workers', KAFKA_BROKERS: '127.0.0.1:19092' });
    expect(k.input).toEqual({
      kind: 'kafka',
      topic: 'jobs',
      group: 'workers',
      deadLetterTopic: 'jobs.dead',
      maxMessages: 1,
      sessionTimeoutMs: 30_000,
      connection: expect.objectContaining({ brokers: ['127.0.0.1:19092'] }),
    });

    const m = loadWorkerConfig({
      KMJ_WORKER_QUEUE: 'jobs',
      MLFLOW_TRACKING_URI: 'https://mlflow.example:8443/prefix',
      MLFLOW_TRACKING_USERNAME: 'u',
      MLFLOW_TRACKING_PASSWORD: 'p',
    }).mlflow;
    expect(m).toEqual({
      trackingUri: 'https://mlflow.example:8443/prefix',
      username: 'u',
      password: 'p',
      token: undefined,
      insecureTls: false,
      serverCa: undefined,
      clientCert: undefined,
      maxRetries: 7,
      backoffFactorSeconds: 2,
      backoffJitterSeconds: 1,
      requestTimeoutMs: 120_000,
    });
    expect(Object.isFrozen(m)).toBe(true);
    // Empty strings count as unset.
    expect(
      loadWorkerConfig({ KMJ_WORKER_QUEUE: 'jobs', MLFLOW_TRACKING_URI: '', MLFLOW_HTTP_REQUEST_MAX_RETRIES: '' }).mlflow,
    ).toBeUndefined();
    expect(loadWorkerConfig({ KMJ_WORKER_QUEUE: 'jobs', KMJ_DATASET_ROOTS: '/a::/b:' }).datasetRoots).toEqual(['/a', '/b']);
  });
});
