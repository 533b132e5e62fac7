/**
 * The node cache (`kmj model-cache`): one per node, a DaemonSet behind a Service with
 * `internalTrafficPolicy: Local`, so that the workers of a node fetch each model version from
 * MLflow once between them (modelstore/protocol.ts is the contract, docs/models.md the design).
 *
 * It answers a model request once the copy is on its disk (fetching it from MLflow first when
 * needed), and serves its files checked: each file is hashed as it is sent, and a copy whose bytes
 * no longer match the hash taken when it arrived is discarded (the worker, checking the same
 * hash, has refused it and fetched from MLflow itself).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Logger } from '../common/log.ts';
import { nodeHttp } from '../common/node-http.ts';
import { messageOf } from '../common/redact.ts';
import { MlflowHttp } from '../mlflow/http.ts';
import { MlflowTracking } from '../mlflow/tracking.ts';
import { isCacheKey, isModelFilePath, NODE_CACHE_FILE_PATH, NODE_CACHE_MODEL_PATH } from '../modelstore/protocol.ts';
import type { NodeCacheConfig } from './config.ts';
import { ModelTooLargeError, NodeStore } from './store.ts';

export interface RunningNodeCache {
  readonly port: number;
  readonly store: NodeStore;
  close(): Promise<void>;
}

const RESULTS = ['hit', 'fill', 'refused', 'too_large', 'error'] as const;
type Result = (typeof RESULTS)[number];

class Counters {
  readonly requests = new Map<Result, number>(RESULTS.map((r) => [r, 0]));
  servedBytes = 0;
  damaged = 0;
  count(r: Result): void {
    this.requests.set(r, (this.requests.get(r) ?? 0) + 1);
  }
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? '');
  if (!m) return false;
  // Compared as digests: equal lengths, and no early exit on the first differing byte.
  const a = createHash('sha256')
    .update(m[1] ?? '')
    .digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

function answer(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function startNodeCache(config: NodeCacheConfig, log: Logger): Promise<RunningNodeCache> {
  await mkdir(config.dir, { recursive: true });
  const http = new MlflowHttp({ ...config.mlflow, maxBackoffSeconds: 30, log });
  const store = new NodeStore({ dir: config.dir, maxBytes: config.maxBytes, tracking: new MlflowTracking(http), log });
  await store.open();
  const counters = new Counters();

  const metrics = (): string => {
    const family = (name: string, type: 'gauge' | 'counter', help: string, samples: readonly string[]): string[] => [
      `# HELP ${name} ${help}`,
      `# TYPE ${name} ${type}`,
      ...samples,
    ];
    const one = (name: string, type: 'gauge' | 'counter', help: string, value: number): string[] =>
      family(name, type, help, [`${name} ${value}`]);
    const lines = [
      ...one('kmj_node_cache_bytes', 'gauge', 'Bytes of the models kept.', store.bytes),
      ...one('kmj_node_cache_max_bytes', 'gauge', 'The bound on the bytes kept (KMJ_NODE_CACHE_MAX_BYTES).', config.maxBytes),
      ...one('kmj_node_cache_models', 'gauge', 'Model copies kept.', store.models),
      ...one('kmj_node_cache_fetched_bytes_total', 'counter', 'Bytes fetched from MLflow.', store.counters.fetchedBytes),
      ...one('kmj_node_cache_served_bytes_total', 'counter', 'Bytes served to workers.', counters.servedBytes),
      ...family(
        'kmj_node_cache_requests_total',
        'counter',
        'Model requests by result: hit, fill (fetched from MLflow), refused (bad request or token), too_large, error.',
        RESULTS.map((r) => `kmj_node_cache_requests_total{result="${r}"} ${counters.requests.get(r) ?? 0}`),
      ),
      ...one('kmj_node_cache_evictions_total', 'counter', 'Copies discarded to keep within the bound.', store.counters.evictions),
      ...one('kmj_node_cache_damaged_total', 'counter', 'Copies discarded because a file no longer matched its hash.', counters.damaged),
    ];
    return `${lines.join('\n')}\n`;
  };

  const model = async (url: URL, res: ServerResponse): Promise<void> => {
    const key = url.searchParams.get('key') ?? '';
    const uri = url.searchParams.get('uri') ?? '';
    const origin = url.searchParams.get('origin') ?? undefined;
    if (!isCacheKey(key)) {
      counters.count('refused');
      answer(res, 400, { error: 'key: must be a cache key (relative path segments of letters, digits, %, ., _ and -)' });
      return;
    }
    if (!/^mlflow-artifacts:\//.test(uri)) {
      counters.count('refused');
      answer(res, 400, { error: 'uri: must be an mlflow-artifacts: URI' });
      return;
    }
    try {
      const { listing, fetched } = await store.get(key, uri, origin);
      counters.count(fetched ? 'fill' : 'hit');
      answer(res, 200, listing);
    } catch (err) {
      if (err instanceof ModelTooLargeError) {
        counters.count('too_large');
        answer(res, 507, { error: err.message });
        return;
      }
      counters.count('error');
      log.warn({ err: messageOf(err), key }, 'model request failed');
      answer(res, 502, { error: `the model could not be fetched from MLflow: ${messageOf(err)}` });
    }
  };

  const file = (url: URL, res: ServerResponse): void => {
    const key = url.searchParams.get('key') ?? '';
    const id = url.searchParams.get('id') ?? '';
    const path = url.searchParams.get('path') ?? '';
    if (!isCacheKey(key) || !isModelFilePath(path) || id === '') {
      answer(res, 400, { error: `${!isCacheKey(key) ? 'key' : id === '' ? 'id' : 'path'}: is not valid` });
      return;
    }
    const f = store.file(key, id, path);
    if (!f) {
      answer(res, 404, { error: 'that copy is not kept any more; ask for the model again' });
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': f.size });
    const hash = createHash('sha256');
    let sent = 0;
    const stream = createReadStream(f.file);
    stream.on('data', (chunk) => {
      hash.update(chunk as Buffer);
      sent += (chunk as Buffer).length;
    });
    stream.on('error', (err) => {
      log.warn({ err: messageOf(err), key, path }, 'reading a kept file failed');
      res.destroy(err);
      store.discard(key, id, `reading ${path} failed`).catch(() => undefined);
    });
    stream.on('end', () => {
      counters.servedBytes += sent;
      if (sent !== f.size || hash.digest('hex') !== f.sha256) {
        counters.damaged++;
        store
          .discard(key, id, `${path} no longer matches the hash taken when it arrived`)
          .catch((err: unknown) => log.warn({ err: messageOf(err) }, 'discarding a damaged copy failed'));
      }
    });
    stream.pipe(res);
  };

  const server: Server = nodeHttp.createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://node-cache');
    if (req.method !== 'GET') {
      answer(res, 405, { error: 'only GET' });
      return;
    }
    if (url.pathname === '/healthz' || url.pathname === '/readyz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    if (url.pathname === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(metrics());
      return;
    }
    if (url.pathname !== NODE_CACHE_MODEL_PATH && url.pathname !== NODE_CACHE_FILE_PATH) {
      answer(res, 404, { error: 'no such path' });
      return;
    }
    if (!tokenMatches(req.headers.authorization, config.token)) {
      counters.count('refused');
      answer(res, 401, { error: 'a valid bearer token is required' });
      return;
    }
    const failed = (err: unknown): void => {
      log.error({ err: messageOf(err) }, 'request failed');
      if (!res.headersSent) answer(res, 500, { error: 'internal error' });
      else res.destroy();
    };
    if (url.pathname === NODE_CACHE_MODEL_PATH) {
      model(url, res).catch(failed);
      return;
    }
    try {
      file(url, res);
    } catch (err) {
      failed(err);
    }
  });
  // A fill of a big model from a Pi's MLflow can take minutes: no request timeout here, the
  // worker bounds its own wait.
  server.requestTimeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  log.info({ port, dir: config.dir, maxBytes: config.maxBytes, keptBytes: store.bytes, models: store.models }, 'node cache listening');
  return {
    port,
    store,
    close: async () => {
      store.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await http.close();
    },
  };
}
