/**
 * The node cache's models: a model store (modelstore/store.ts) with one fill per key at a time,
 * every file hashed when it arrives, and a bound on the bytes kept. When a fill ends over the
 * bound, the least recently used other copies are discarded until it is met again; a model larger
 * than the bound is refused before it is kept (ModelTooLargeError), and so is a fill that runs out
 * of disk.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { PermanentError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { proxyPath, type MlflowTracking } from '../mlflow/tracking.ts';
import { discardCached, ensureCached, isLeftover, MANIFEST, readCopy, type CopyMeta } from '../modelstore/store.ts';
import type { ListedFile, ModelListing } from '../modelstore/protocol.ts';

/** The model does not fit the cache's bound, or its disk: the worker fetches it from MLflow itself. */
export class ModelTooLargeError extends Error {
  override readonly name = 'ModelTooLargeError';
}

interface Entry {
  readonly id: string;
  /** As the copy's manifest lists them, each with its SHA-256. */
  readonly files: readonly ListedFile[];
  readonly bytes: number;
  lastUsedMs: number;
}

export interface NodeStoreCounters {
  /** Bytes fetched from MLflow. */
  fetchedBytes: number;
  fills: number;
  hits: number;
  evictions: number;
}

export interface NodeStoreOptions {
  readonly dir: string;
  readonly maxBytes: number;
  readonly tracking: MlflowTracking;
  readonly log: Logger;
  readonly now?: () => number;
}

export class NodeStore {
  readonly #o: NodeStoreOptions;
  readonly #now: () => number;
  readonly #entries = new Map<string, Entry>();
  /**
   * One fill (or look) per key at a time, in turn: twenty workers asking at once make one
   * download, and the nineteen behind it find the copy it left.
   */
  readonly #turns = new Map<string, Promise<void>>();
  /** Fills serve every worker waiting, not the one that asked first: they stop only on close. */
  readonly #closing = new AbortController();
  readonly counters: NodeStoreCounters = { fetchedBytes: 0, fills: 0, hits: 0, evictions: 0 };

  constructor(options: NodeStoreOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Bytes of the copies kept. */
  get bytes(): number {
    let n = 0;
    for (const e of this.#entries.values()) n += e.bytes;
    return n;
  }

  get models(): number {
    return this.#entries.size;
  }

  /**
   * Finds the copies a previous run of the cache left (a container restarted on the same volume),
   * and removes partial fills and trash: no filler of this directory is alive at start-up.
   */
  async open(): Promise<void> {
    const walk = async (dir: string): Promise<void> => {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (err) {
        if ((err as { code?: unknown }).code === 'ENOENT') return;
        throw err;
      }
      if (names.includes(MANIFEST)) {
        const key = relative(this.#o.dir, dir);
        const m = await readCopy(dir);
        const files = hashedFiles(m?.files);
        if (m && files)
          this.#entries.set(key, { id: m.id, files, bytes: bytesOf(files), lastUsedMs: (await stat(join(dir, MANIFEST))).mtimeMs });
        else {
          this.#o.log.warn({ key }, 'a copy without a readable manifest with file hashes; removing it');
          await rm(dir, { recursive: true, force: true });
        }
        return;
      }
      for (const name of names) {
        if (isLeftover(name)) await rm(join(dir, name), { recursive: true, force: true });
        else if ((await stat(join(dir, name))).isDirectory()) await walk(join(dir, name));
      }
    };
    await walk(this.#o.dir);
    await this.#evict(undefined);
  }

  /**
   * The copy of `key` fetched from `artifactUri` (of `origin`, for a registry version): the one
   * kept, or fetched from MLflow now. A kept copy of another origin or location is replaced.
   */
  async get(
    key: string,
    artifactUri: string,
    origin: string | undefined,
  ): Promise<{ readonly listing: ModelListing; readonly fetched: boolean }> {
    const before = this.#turns.get(key) ?? Promise.resolve();
    const work = before.then(() => this.#get(key, artifactUri, origin, this.#closing.signal));
    const turn = work.then(
      () => undefined,
      () => undefined,
    );
    this.#turns.set(key, turn);
    try {
      return await work;
    } finally {
      if (this.#turns.get(key) === turn) this.#turns.delete(key);
    }
  }

  /** Stops the fills under way. */
  close(): void {
    this.#closing.abort(new Error('the node cache is shutting down'));
  }

  async #get(
    key: string,
    artifactUri: string,
    origin: string | undefined,
    signal: AbortSignal,
  ): Promise<{ readonly listing: ModelListing; readonly fetched: boolean }> {
    const accept = (meta: CopyMeta): string | undefined => {
      if (meta['artifactUri'] !== artifactUri)
        return `the copy was fetched from ${meta['artifactUri'] ?? 'nowhere known'}, not ${artifactUri}`;
      if (origin !== undefined && meta['origin'] !== origin) return 'the copy came from another registration of the version';
      return undefined;
    };
    let fetched = 0;
    const fill = async (into: string): Promise<CopyMeta> => {
      try {
        const files = await this.#o.tracking.downloadDirectory(proxyPath(artifactUri), into, signal, this.#o.maxBytes);
        if (files.length === 0) throw new PermanentError(`${artifactUri} holds no files`);
        for (const f of files) fetched += (await stat(join(into, f))).size;
      } catch (err) {
        if (err instanceof PermanentError && /larger than the limit/.test(err.message))
          throw new ModelTooLargeError(`the model at ${artifactUri} is larger than the cache's bound of ${this.#o.maxBytes} bytes`, {
            cause: err,
          });
        if ((err as { code?: unknown }).code === 'ENOSPC')
          throw new ModelTooLargeError(`no room on the cache's disk for the model at ${artifactUri}`, { cause: err });
        throw err;
      }
      return { artifactUri, ...(origin !== undefined ? { origin } : {}) };
    };
    const copy = await ensureCached(this.#o.dir, key, fill, { accept, hash: true });
    const m = await readCopy(copy.dir);
    const files = m?.id === copy.id ? hashedFiles(m.files) : undefined;
    if (!files) {
      // A copy kept by a worker's cache (no hashes) or replaced since: not one to serve.
      await discardCached(copy.dir, copy.id);
      throw new Error(`the copy of ${key} has no file hashes; it was discarded, ask again`);
    }
    const bytes = bytesOf(files);
    this.#entries.set(key, { id: copy.id, files, bytes, lastUsedMs: this.#now() });
    if (copy.hit) this.counters.hits++;
    else {
      this.counters.fills++;
      this.counters.fetchedBytes += fetched;
      this.#o.log.info({ key, bytes, fetchedBytes: fetched }, 'model fetched from MLflow');
      await this.#evict(key);
    }
    const listing: ModelListing = { version: 1, key, artifactUri, id: copy.id, files, ...(origin !== undefined ? { origin } : {}) };
    return { listing, fetched: !copy.hit };
  }

  /** Where a file of a copy is, while that copy is the one kept; undefined once it is gone. */
  file(key: string, id: string, path: string): { readonly file: string; readonly size: number; readonly sha256: string } | undefined {
    const entry = this.#entries.get(key);
    if (!entry || entry.id !== id) return undefined;
    const f = entry.files.find((x) => x.path === path);
    if (!f) return undefined;
    entry.lastUsedMs = this.#now();
    return { file: join(this.#o.dir, key, f.path), size: f.size, sha256: f.sha256 };
  }

  /** A copy found damaged while served: discarded, so the next request fetches it again. */
  async discard(key: string, id: string, why: string): Promise<void> {
    const entry = this.#entries.get(key);
    if (entry?.id === id) this.#entries.delete(key);
    this.#o.log.warn({ key, why }, 'discarding a damaged copy');
    await discardCached(join(this.#o.dir, key), id);
  }

  /** Discards the least recently used copies (never `keep`) until the bound is met. */
  async #evict(keep: string | undefined): Promise<void> {
    while (this.bytes > this.#o.maxBytes) {
      let oldest: [string, Entry] | undefined;
      for (const [k, e] of this.#entries) {
        if (k === keep || this.#turns.has(k)) continue;
        if (!oldest || e.lastUsedMs < oldest[1].lastUsedMs) oldest = [k, e];
      }
      if (!oldest) return;
      const [k, e] = oldest;
      this.#entries.delete(k);
      this.counters.evictions++;
      this.#o.log.info({ key: k, bytes: e.bytes, keptBytes: this.bytes, maxBytes: this.#o.maxBytes }, 'model evicted');
      await discardCached(join(this.#o.dir, k), e.id);
    }
  }
}

/** The files of a manifest when every one has its hash (a copy the node cache filled); else undefined. */
function hashedFiles(
  files: ReadonlyArray<{ readonly path: string; readonly size: number; readonly sha256?: string }> | undefined,
): ListedFile[] | undefined {
  if (!files || files.some((f) => f.sha256 === undefined)) return undefined;
  return files.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256 ?? '' }));
}

function bytesOf(files: readonly ListedFile[]): number {
  return files.reduce((n, f) => n + f.size, 0);
}
