// The node's model cache (nodecache/, `kmj model-cache`) with the real worker, a real RabbitMQ and a
// real MLflow server: many workers at once on one node fetch a model version from MLflow once, and
// a worker falls back to MLflow, saying why on its run, when the node cache is absent, refuses its
// token, is too small for the model, or serves a damaged file. The cache's own promises: a bound
// kept by evicting the least recently used, copies kept across a restart, never a listing of
// another model taken by the worker.
import { createServer } from 'node:http';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../common/log.ts';
import { EXIT } from '../../common/exit-codes.ts';
import { startNodeCache, type RunningNodeCache } from '../../nodecache/app.ts';
import { loadNodeCacheConfig } from '../../nodecache/config.ts';
import { NODE_CACHE_MODEL_PATH } from '../../modelstore/protocol.ts';
import { fetchFromNodeCache, NodeCacheError } from '../../worker/model/node-cache.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { FaultProxy } from '../helpers/fault-proxy.ts';
import { closedPort } from '../helpers/kmj.ts';
import { sampleValue } from '../helpers/metrics-text.ts';
import {
  fixtures,
  metricsOf,
  MLFLOW_URL,
  mlflowApi,
  publish,
  request,
  runsOf,
  runWorker,
  tagsOf,
  type RestRun,
} from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const regressor = f.models['regressor'];
const TOKEN = 'node-cache-test-token-0123456789';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

interface TestCache {
  readonly running: RunningNodeCache;
  readonly url: string;
  readonly dir: string;
  /** MLflow as the cache sees it: every request it made is recorded. */
  readonly mlflow: FaultProxy;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** GETs of model files the cache made to MLflow's artifact proxy. */
  modelFileGets(): number;
}

async function startCache(options: { maxBytes?: number; dir?: string; mlflow?: FaultProxy } = {}): Promise<TestCache> {
  const dir = options.dir ?? cleanups.tempDir('kmj-node-cache-');
  const mlflow = options.mlflow ?? (await FaultProxy.start());
  if (!options.mlflow) cleanups.defer(() => mlflow.close());
  const config = loadNodeCacheConfig({
    MLFLOW_TRACKING_URI: mlflow.url,
    KMJ_NODE_CACHE_TOKEN: TOKEN,
    KMJ_NODE_CACHE_HOST: '127.0.0.1',
    KMJ_NODE_CACHE_PORT: '0',
    KMJ_NODE_CACHE_DIR: dir,
  });
  const sink = new Writable({ write: (_c, _e, cb) => cb() });
  const running = await startNodeCache(
    { ...config, ...(options.maxBytes !== undefined ? { maxBytes: options.maxBytes } : {}) },
    createLogger({ level: 'info', name: 'test-node-cache', destination: sink }),
  );
  cleanups.defer(() => running.close());
  const url = `http://127.0.0.1:${running.port}`;
  return {
    running,
    url,
    dir,
    mlflow,
    metric: async (name, labels = {}) => sampleValue(await (await fetch(`${url}/metrics`)).text(), name, labels),
    modelFileGets: () => mlflow.requests({ method: 'GET', path: /^\/api\/2\.0\/mlflow-artifacts\/artifacts\/.*\/model\.onnx$/ }).length,
  };
}

/** The registry version's key, location and origin, as the worker resolves them. */
async function refOf(
  model: { name: string; version: number | string } | undefined,
): Promise<{ ref: { uri: string; cacheKey: string; origin: string }; where: { artifactUri: string } }> {
  const name = model?.name ?? '';
  const version = String(model?.version);
  const q = `name=${encodeURIComponent(name)}&version=${version}`;
  const { model_version: v } = await mlflowApi<{ model_version: { creation_timestamp: number; source: string } }>(
    MLFLOW_URL,
    `model-versions/get?${q}`,
    { method: 'GET' },
  );
  const { artifact_uri: artifactUri } = await mlflowApi<{ artifact_uri: string }>(MLFLOW_URL, `model-versions/get-download-uri?${q}`, {
    method: 'GET',
  });
  return {
    ref: {
      uri: `models:/${name}/${version}`,
      cacheKey: `registry/${encodeURIComponent(name)}/${version}`,
      origin: `${v.creation_timestamp} ${v.source}`,
    },
    where: { artifactUri },
  };
}

/** Bytes of the model directory as MLflow serves it (the files the worker downloads). */
function bytesOf(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += bytesOf(p);
    else if (e.name !== '.kmj-manifest.json') n += statSync(p).size;
  }
  return n;
}

/** One request through a real worker with a fresh pod cache, asking the node cache at `url`. */
async function workerRun(env: Record<string, string>, model = classifier): Promise<RestRun> {
  const q = await cleanups.requestQueue();
  const r = request({ model: `models:/${model?.name}/${model?.version}` });
  await publish(q, r);
  const result = await runWorker(q, { KMJ_MODEL_CACHE_DIR: cleanups.tempDir('kmj-pod-cache-'), ...env });
  expect(result.code, result.stderr).toBe(EXIT.OK);
  const [run] = await runsOf(r.experiment);
  if (!run) throw new Error('no run');
  expect(run.info.status).toBe('FINISHED');
  return run;
}

describe('the node cache', () => {
  it('twenty workers asking at once get one copy, fetched from MLflow once, each file as its hash says', async () => {
    const cache = await startCache();
    const { ref, where } = await refOf(classifier);
    const into = Array.from({ length: 20 }, () => cleanups.tempDir('kmj-node-client-'));
    const got = await Promise.all(
      into.map((dir) => fetchFromNodeCache({ url: cache.url, token: TOKEN }, ref, where, dir, AbortSignal.timeout(60_000), 1e9)),
    );
    expect(cache.modelFileGets()).toBe(1);
    const size = bytesOf(join(cache.dir, ref.cacheKey));
    expect(got).toEqual(Array.from({ length: 20 }, () => size));
    expect(await cache.metric('kmj_node_cache_fetched_bytes_total')).toBe(size);
    expect(await cache.metric('kmj_node_cache_requests_total', { result: 'fill' })).toBe(1);
    expect(await cache.metric('kmj_node_cache_requests_total', { result: 'hit' })).toBe(19);
    expect(await cache.metric('kmj_node_cache_served_bytes_total')).toBe(20 * size);
    for (const dir of into)
      expect(readFileSync(join(dir, 'model.onnx'))).toEqual(readFileSync(join(cache.dir, ref.cacheKey, 'model.onnx')));
  });

  it('workers take the model from the node cache, and say so on the run; MLflow serves its files once', async () => {
    const cache = await startCache();
    const env = { KMJ_NODE_CACHE_URL: cache.url, KMJ_NODE_CACHE_TOKEN: TOKEN };
    const runs = [await workerRun(env), await workerRun(env)];
    expect(cache.modelFileGets()).toBe(1);
    const { ref } = await refOf(classifier);
    const size = bytesOf(join(cache.dir, ref.cacheKey));
    for (const run of runs) {
      expect(tagsOf(run)).toMatchObject({ 'kmj.model_cache': 'miss', 'kmj.model_source': 'node-cache' });
      expect(tagsOf(run)['kmj.node_cache_problem']).toBeUndefined();
      expect(metricsOf(run)['model_load/fetched_bytes']).toBe(size);
    }
  });

  it('absent (nothing listens on the node): the worker fetches from MLflow and names the reason on the run', async () => {
    const run = await workerRun({ KMJ_NODE_CACHE_URL: `http://127.0.0.1:${await closedPort()}`, KMJ_NODE_CACHE_TOKEN: TOKEN });
    expect(tagsOf(run)).toMatchObject({ 'kmj.model_source': 'mlflow' });
    expect(tagsOf(run)['kmj.node_cache_problem']).toMatch(/^the node cache at http:\/\/127\.0\.0\.1:\d+ cannot be reached: .*ECONNREFUSED/);
  });

  it('a wrong token is refused (401), and the worker fetches from MLflow', async () => {
    const cache = await startCache();
    const run = await workerRun({ KMJ_NODE_CACHE_URL: cache.url, KMJ_NODE_CACHE_TOKEN: 'not-the-token-0123456789' });
    expect(tagsOf(run)).toMatchObject({
      'kmj.model_source': 'mlflow',
      'kmj.node_cache_problem': 'the node cache answered HTTP 401: a valid bearer token is required',
    });
    expect(cache.modelFileGets()).toBe(0);
    expect(await cache.metric('kmj_node_cache_requests_total', { result: 'refused' })).toBe(1);
  });

  it('a model larger than its bound is refused (507) and not kept; the worker fetches from MLflow', async () => {
    const cache = await startCache({ maxBytes: 1024 });
    const run = await workerRun({ KMJ_NODE_CACHE_URL: cache.url, KMJ_NODE_CACHE_TOKEN: TOKEN });
    expect(tagsOf(run)['kmj.model_source']).toBe('mlflow');
    expect(tagsOf(run)['kmj.node_cache_problem']).toMatch(
      /^the node cache answered HTTP 507: the model at mlflow-artifacts:\/.* is larger than the cache's bound of 1024 bytes$/,
    );
    expect(await cache.metric('kmj_node_cache_bytes')).toBe(0);
    expect(await cache.metric('kmj_node_cache_requests_total', { result: 'too_large' })).toBe(1);
  });

  it('a damaged copy (same size, other bytes) is refused by the worker, which fetches from MLflow; the cache discards it and fetches it again next time', async () => {
    const cache = await startCache();
    const env = { KMJ_NODE_CACHE_URL: cache.url, KMJ_NODE_CACHE_TOKEN: TOKEN };
    await workerRun(env);
    const { ref } = await refOf(classifier);
    const onnx = join(cache.dir, ref.cacheKey, 'model.onnx');
    const bytes = readFileSync(onnx);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] ?? 0) ^ 0xff;
    writeFileSync(onnx, bytes);
    const run = await workerRun(env);
    expect(tagsOf(run)['kmj.model_source']).toBe('mlflow');
    expect(tagsOf(run)['kmj.node_cache_problem']).toMatch(
      /^model\.onnx from the node cache does not match its SHA-256 \([0-9a-f]{12}… for [0-9a-f]{12}…\): the cache's copy is damaged$/,
    );
    expect(await cache.metric('kmj_node_cache_damaged_total')).toBe(1);
    const again = await workerRun(env);
    expect(tagsOf(again)['kmj.model_source']).toBe('node-cache');
    expect(cache.modelFileGets()).toBe(2);
  });

  it('keeps within its bound: the least recently used model goes when another arrives', async () => {
    const probe = await startCache();
    const a = await refOf(classifier);
    const b = await refOf(regressor);
    const sink = cleanups.tempDir('kmj-node-client-');
    await fetchFromNodeCache({ url: probe.url, token: TOKEN }, a.ref, a.where, sink, AbortSignal.timeout(60_000), 1e9);
    await fetchFromNodeCache(
      { url: probe.url, token: TOKEN },
      b.ref,
      b.where,
      cleanups.tempDir('kmj-node-client-'),
      AbortSignal.timeout(60_000),
      1e9,
    );
    const sizeA = bytesOf(join(probe.dir, a.ref.cacheKey));
    const sizeB = bytesOf(join(probe.dir, b.ref.cacheKey));

    // Room for the larger of the two, not both.
    const bound = Math.max(sizeA, sizeB) + 1;
    expect(bound).toBeLessThan(sizeA + sizeB);
    const cache = await startCache({ maxBytes: bound });
    const client = { url: cache.url, token: TOKEN };
    await fetchFromNodeCache(client, a.ref, a.where, cleanups.tempDir('kmj-node-client-'), AbortSignal.timeout(60_000), 1e9);
    await fetchFromNodeCache(client, b.ref, b.where, cleanups.tempDir('kmj-node-client-'), AbortSignal.timeout(60_000), 1e9);
    expect(await cache.metric('kmj_node_cache_evictions_total')).toBe(1);
    expect(await cache.metric('kmj_node_cache_bytes')).toBe(sizeB);
    expect(await cache.metric('kmj_node_cache_models')).toBe(1);
    expect(existsSync(join(cache.dir, a.ref.cacheKey))).toBe(false);
    expect(existsSync(join(cache.dir, b.ref.cacheKey, 'model.onnx'))).toBe(true);
    // The evicted one is fetched again when asked for.
    await fetchFromNodeCache(client, a.ref, a.where, cleanups.tempDir('kmj-node-client-'), AbortSignal.timeout(60_000), 1e9);
    expect(await cache.metric('kmj_node_cache_requests_total', { result: 'fill' })).toBe(3);
  });

  it('keeps its copies across a restart on the same directory', async () => {
    const dir = cleanups.tempDir('kmj-node-cache-');
    const mlflow = await FaultProxy.start();
    cleanups.defer(() => mlflow.close());
    const first = await startCache({ dir, mlflow });
    const { ref, where } = await refOf(classifier);
    await fetchFromNodeCache(
      { url: first.url, token: TOKEN },
      ref,
      where,
      cleanups.tempDir('kmj-node-client-'),
      AbortSignal.timeout(60_000),
      1e9,
    );
    await first.running.close();
    const second = await startCache({ dir, mlflow });
    expect(await second.metric('kmj_node_cache_models')).toBe(1);
    await fetchFromNodeCache(
      { url: second.url, token: TOKEN },
      ref,
      where,
      cleanups.tempDir('kmj-node-client-'),
      AbortSignal.timeout(60_000),
      1e9,
    );
    expect(await second.metric('kmj_node_cache_requests_total', { result: 'hit' })).toBe(1);
    expect(second.modelFileGets()).toBe(1);
  });

  it('the worker never takes a listing of another model than the one it asked for', async () => {
    // A node cache that answers with the listing of another key (our own interface, faked).
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      expect(url.pathname).toBe(NODE_CACHE_MODEL_PATH);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          version: 1,
          key: 'registry/other/1',
          artifactUri: url.searchParams.get('uri'),
          id: 'x',
          files: [{ path: 'model.onnx', size: 1, sha256: '0'.repeat(64) }],
        }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.defer(() => new Promise<void>((r) => server.close(() => r())));
    const { ref, where } = await refOf(classifier);
    const attempt = fetchFromNodeCache(
      { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, token: TOKEN },
      ref,
      where,
      cleanups.tempDir('kmj-node-client-'),
      AbortSignal.timeout(10_000),
      1e9,
    );
    await expect(attempt).rejects.toThrow(NodeCacheError);
    await expect(attempt).rejects.toThrow(
      `the node cache answered for another model (registry/other/1 from ${where.artifactUri}) than ${ref.cacheKey} from ${where.artifactUri}`,
    );
  });
});
