/**
 * Fetching a model's files from the node's cache (modelstore/protocol.ts) instead of MLflow. The
 * answer is checked before anything of it is used: the listing must name the very model asked for
 * (its cache key, its artifact URI, its registration), and every file must arrive whole with the
 * SHA-256 the cache took when it fetched it from MLflow. Any failure (no cache on the node, a
 * cache restarting, full, or serving a damaged file) is a NodeCacheError: the caller fetches from
 * MLflow instead and says so on the run.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { agentFor, readText, send, type HttpResponse } from '../../common/http-request.ts';
import {
  NODE_CACHE_FILE_PATH,
  NODE_CACHE_MODEL_PATH,
  parseModelListing,
  type ListedFile,
  type ModelListing,
} from '../../modelstore/protocol.ts';
import type { ModelLocation, ModelRef } from './resolve.ts';

export interface NodeCacheSettings {
  /** The node cache's base URL (KMJ_NODE_CACHE_URL), e.g. http://kmj-model-cache.kmj.svc:8090. */
  readonly url: string;
  readonly token: string;
}

/** Why the node cache was passed over; the message goes on the run as it is. */
export class NodeCacheError extends Error {
  override readonly name = 'NodeCacheError';
}

/**
 * A Service with no ready endpoint on this node (internalTrafficPolicy: Local: no cache pod here,
 * or one restarting) drops the connection attempt: a short bound keeps that from costing more.
 */
const CONNECT_TIMEOUT_MS = 1000;
/** The cache may be fetching a big model from MLflow for us: the whole answer may take this long. */
const ANSWER_TIMEOUT_MS = 600_000;

async function get(settings: NodeCacheSettings, path: string, query: Record<string, string>, signal: AbortSignal): Promise<HttpResponse> {
  const url = new URL(path, settings.url);
  for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
  try {
    return await send(url, {
      method: 'GET',
      headers: { authorization: `Bearer ${settings.token}` },
      agent: agentFor(url, { rejectUnauthorized: true }),
      signal,
      timeoutMs: ANSWER_TIMEOUT_MS,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
    });
  } catch (err) {
    if (signal.aborted) throw err;
    throw new NodeCacheError(`the node cache at ${settings.url} cannot be reached: ${(err as Error).message}`, { cause: err });
  }
}

async function refusal(res: HttpResponse): Promise<string> {
  const text = (await readText(res)).slice(0, 500);
  try {
    const e = (JSON.parse(text) as { error?: unknown }).error;
    if (typeof e === 'string') return e;
  } catch {
    // not JSON: the text as it is
  }
  return text;
}

/** The listing, checked to be of the model asked for. */
async function listing(
  settings: NodeCacheSettings,
  ref: ModelRef,
  where: ModelLocation,
  signal: AbortSignal,
  maxBytes: number,
): Promise<ModelListing> {
  const res = await get(
    settings,
    NODE_CACHE_MODEL_PATH,
    { key: ref.cacheKey, uri: where.artifactUri, ...(ref.origin !== undefined ? { origin: ref.origin } : {}) },
    signal,
  );
  if (res.statusCode !== 200) throw new NodeCacheError(`the node cache answered HTTP ${res.statusCode}: ${await refusal(res)}`);
  let l: ModelListing;
  try {
    l = parseModelListing(await readText(res));
  } catch (err) {
    throw new NodeCacheError(`the node cache's answer is not a model listing: ${(err as Error).message}`, { cause: err });
  }
  // Never another model than the one asked for, whatever the cache holds.
  if (l.key !== ref.cacheKey || l.artifactUri !== where.artifactUri || (ref.origin !== undefined && l.origin !== ref.origin)) {
    throw new NodeCacheError(
      `the node cache answered for another model (${l.key} from ${l.artifactUri}) than ${ref.cacheKey} from ${where.artifactUri}`,
    );
  }
  const total = l.files.reduce((n, f) => n + f.size, 0);
  if (total > maxBytes) throw new NodeCacheError(`the node cache lists ${total} bytes, more than KMJ_MAX_MODEL_BYTES (${maxBytes})`);
  return l;
}

async function fetchFile(settings: NodeCacheSettings, l: ModelListing, f: ListedFile, into: string, signal: AbortSignal): Promise<void> {
  const res = await get(settings, NODE_CACHE_FILE_PATH, { key: l.key, id: l.id, path: f.path }, signal);
  if (res.statusCode !== 200)
    throw new NodeCacheError(`the node cache answered HTTP ${res.statusCode} for ${f.path}: ${await refusal(res)}`);
  const file = join(into, f.path);
  await mkdir(dirname(file), { recursive: true });
  const hash = createHash('sha256');
  let size = 0;
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      size += chunk.length;
      done(null, chunk);
    },
  });
  try {
    await pipeline(res.body, check, createWriteStream(file));
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw new NodeCacheError(`the node cache's answer for ${f.path} broke off: ${(err as Error).message}`, { cause: err });
  }
  if (size !== f.size) throw new NodeCacheError(`${f.path} came from the node cache with ${size} of its ${f.size} bytes`);
  const got = hash.digest('hex');
  if (got !== f.sha256)
    throw new NodeCacheError(
      `${f.path} from the node cache does not match its SHA-256 (${got.slice(0, 12)}… for ${f.sha256.slice(0, 12)}…): the cache's copy is damaged`,
    );
}

/** Fetches the model's files from the node cache into `into`; resolves with the bytes fetched. */
export async function fetchFromNodeCache(
  settings: NodeCacheSettings,
  ref: ModelRef,
  where: ModelLocation,
  into: string,
  signal: AbortSignal,
  maxBytes: number,
): Promise<number> {
  const l = await listing(settings, ref, where, signal, maxBytes);
  // The first file that fails stops the others, and nothing is still writing into `into` when
  // this returns: the caller fetches from MLflow into the same directory next.
  const stop = new AbortController();
  const either = AbortSignal.any([signal, stop.signal]);
  let first: unknown;
  const results = await Promise.allSettled(
    l.files.map((f) =>
      fetchFile(settings, l, f, into, either).catch((err: unknown) => {
        if (first === undefined) first = err;
        stop.abort(err);
        throw err;
      }),
    ),
  );
  if (results.some((r) => r.status === 'rejected')) throw first;
  return l.files.reduce((n, f) => n + f.size, 0);
}
