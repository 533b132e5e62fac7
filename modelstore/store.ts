/**
 * The model store: one directory per cache key (a registry version, a run path), filled
 * once and then read-only. The worker's model cache and the node cache (nodecache/) are both
 * one. Any number of processes may share it (a ReadWriteMany volume on a node), and the rules that
 * make that safe are:
 *
 * - A directory appears at its key only whole: it is filled under `<key>.partial-<uuid>`, its
 *   manifest (every file with its size) written last, and then renamed into place. rename(2)
 *   onto an existing non-empty directory fails, so a complete copy is never replaced: the loser of
 *   a race uses the winner's copy.
 * - A reader trusts a copy only when its manifest is there and every file still has its size.
 * - A copy found damaged is moved aside (`<key>.trash-<uuid>`) before it is deleted, and only if
 *   it is still the copy that was found damaged: a fresh copy a peer put in its place stays.
 * - A filler touches its partial directory every `heartbeatMs`. A partial directory untouched for
 *   `staleMs` was left by a killed worker and is removed by the next fill of that key; a live one
 *   is never older than a few heartbeats.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** The file that makes a directory a copy: written last, so only a complete copy has one. */
export const MANIFEST = '.kmj-manifest.json';

/** A partial fill or a copy moved aside, as ensureCached and discardCached name them. */
export function isLeftover(name: string): boolean {
  return /\.(partial|trash)-[0-9a-f-]{36}$/.test(name);
}

/** What the filler says of a copy (where it came from), kept in its manifest. */
export type CopyMeta = Readonly<Record<string, string>>;

/** One file of a copy; `sha256` (hex) when the copy was filled with `hash`. */
export interface CopyFile {
  readonly path: string;
  readonly size: number;
  readonly sha256?: string;
}

export interface Manifest {
  readonly version: 1;
  /** Names this copy: a discard removes only the copy it found damaged. */
  readonly id: string;
  readonly files: readonly CopyFile[];
  readonly meta?: CopyMeta;
}

export interface CachedModel {
  readonly dir: string;
  /** True when the model was already on disk. */
  readonly hit: boolean;
  /** The copy's manifest id, for `discardCached`. */
  readonly id: string;
  /** What its filler said of it, when it said anything. */
  readonly meta?: CopyMeta;
}

export interface CacheOptions {
  /**
   * A partial directory untouched this long is a killed worker's leftover (default 120 s: a
   * live filler touches its directory every `heartbeatMs`, so it is never close to that old).
   */
  readonly staleMs?: number;
  /** How often a filler touches its partial directory (default 10 s). */
  readonly heartbeatMs?: number;
  /** The clock the staleness is judged by (default Date.now). */
  readonly now?: () => number;
  /**
   * Whether a complete copy found on disk is the one wanted, by what its filler said of it: a
   * problem (a string) when it is not, and then it is discarded and filled again. A model
   * registry version can be deleted and made again under the same name and number; the copy's
   * origin tells the two apart.
   */
  readonly accept?: (meta: CopyMeta) => string | undefined;
  /** Record each file's SHA-256 in the manifest, for readers that must check the bytes. */
  readonly hash?: boolean;
}

const DEFAULT_STALE_MS = 120_000;
const DEFAULT_HEARTBEAT_MS = 10_000;

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Every regular file under `dir`, relative paths, with sizes; the manifest itself excluded. */
async function listFiles(dir: string, rel = ''): Promise<CopyFile[]> {
  const out: CopyFile[] = [];
  for (const entry of await readdir(join(dir, rel), { withFileTypes: true })) {
    const path = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...(await listFiles(dir, path)));
    else if (entry.isFile() && path !== MANIFEST) out.push({ path, size: (await stat(join(dir, path))).size });
  }
  return out;
}

async function readManifest(dir: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, MANIFEST), 'utf8');
  } catch (err) {
    if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return undefined;
    throw err;
  }
  try {
    const m = JSON.parse(text) as Manifest;
    if (m.version === 1 && typeof m.id === 'string' && Array.isArray(m.files)) return m;
  } catch {
    // A manifest that does not parse marks no complete copy.
  }
  return undefined;
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** What a look at a cached copy found. */
export type CopyState =
  | { readonly ok: true; readonly id: string; readonly meta?: CopyMeta }
  | { readonly ok: false; readonly problem: string; readonly id?: string };

/**
 * Whether the copy at `dir` can be trusted: its manifest is there and every file it lists has
 * its size. Otherwise the problem, and the copy's id when it has a manifest.
 */
export async function checkCopy(dir: string): Promise<CopyState> {
  const m = await readManifest(dir);
  if (!m) return { ok: false, problem: 'no manifest' };
  for (const f of m.files) {
    let size: number;
    try {
      size = (await stat(join(dir, f.path))).size;
    } catch (err) {
      return { ok: false, problem: `${f.path}: ${errno(err) ?? 'unreadable'}`, id: m.id };
    }
    if (size !== f.size) return { ok: false, problem: `${f.path} has ${size} of its ${f.size} bytes`, id: m.id };
  }
  return { ok: true, id: m.id, ...(m.meta !== undefined ? { meta: m.meta } : {}) };
}

/**
 * The manifest of the copy at `dir` (its id, its files with their SHA-256 when it was filled with
 * `hash`, its meta); undefined when there is none or it does not parse.
 */
export function readCopy(dir: string): Promise<Manifest | undefined> {
  return readManifest(dir);
}

/** A copy's state, with a complete copy refused when `accept` says it is not the one wanted. */
async function judgeCopy(dir: string, accept: CacheOptions['accept']): Promise<CopyState> {
  const found = await checkCopy(dir);
  if (!found.ok || !accept) return found;
  const problem = accept(found.meta ?? {});
  return problem === undefined ? found : { ok: false, problem, id: found.id };
}

function cachedOf(dir: string, hit: boolean, copy: { id: string; meta?: CopyMeta }): CachedModel {
  return { dir, hit, id: copy.id, ...(copy.meta !== undefined ? { meta: copy.meta } : {}) };
}

/** Removes a directory nobody may read any more, moving it out of the way first. */
async function trash(path: string): Promise<void> {
  const aside = `${path}.trash-${randomUUID()}`;
  try {
    await rename(path, aside);
  } catch (err) {
    if (errno(err) === 'ENOENT') return;
    throw err;
  }
  await rm(aside, { recursive: true, force: true });
}

/** Leftovers of killed workers next to `dir`: partial fills gone stale, and trash. */
async function sweep(dir: string, staleMs: number, now: number): Promise<void> {
  const parent = dirname(dir);
  const base = basename(dir);
  let names: string[];
  try {
    names = await readdir(parent);
  } catch (err) {
    if (errno(err) === 'ENOENT') return;
    throw err;
  }
  for (const name of names) {
    const path = join(parent, name);
    if (name.startsWith(`${base}.trash-`)) {
      // Nobody reads a copy once it is moved aside.
      await rm(path, { recursive: true, force: true });
    } else if (name.startsWith(`${base}.partial-`)) {
      let mtimeMs: number;
      try {
        mtimeMs = (await stat(path)).mtimeMs;
      } catch (err) {
        if (errno(err) === 'ENOENT') continue; // its filler just finished or cleaned up
        throw err;
      }
      if (now - mtimeMs > staleMs) await trash(path);
    }
  }
}

/**
 * The cached copy of `key`, filling it with `fill` (into an empty directory) when there is no
 * trustworthy one. A damaged copy (files missing or cut short) is discarded and filled again. What
 * `fill` returns is kept in the manifest as the copy's meta.
 */
export async function ensureCached(
  cacheDir: string,
  key: string,
  fill: (dir: string) => Promise<CopyMeta | void>,
  options: CacheOptions = {},
): Promise<CachedModel> {
  const dir = join(cacheDir, key);
  const now = options.now ?? Date.now;
  const found = await judgeCopy(dir, options.accept);
  if (found.ok) return cachedOf(dir, true, found);
  if (found.id !== undefined) await discardCached(dir, found.id);
  await mkdir(dirname(dir), { recursive: true });
  await sweep(dir, options.staleMs ?? DEFAULT_STALE_MS, now());
  const tmp = `${dir}.partial-${randomUUID()}`;
  await mkdir(tmp, { recursive: true });
  const heartbeat = setInterval(() => {
    const t = new Date(now());
    utimes(tmp, t, t).catch(() => undefined); // a partial gone missing fails the fill itself
  }, options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
  heartbeat.unref();
  try {
    const meta = (await fill(tmp)) ?? undefined;
    let files = await listFiles(tmp);
    if (options.hash === true) files = await Promise.all(files.map(async (f) => ({ ...f, sha256: await sha256Of(join(tmp, f.path)) })));
    const manifest: Manifest = { version: 1, id: randomUUID(), files, ...(meta !== undefined ? { meta } : {}) };
    await writeFile(join(tmp, MANIFEST), JSON.stringify(manifest));
    for (let attempt = 0; ; attempt++) {
      try {
        await rename(tmp, dir);
        return cachedOf(dir, false, manifest);
      } catch (err) {
        if (errno(err) !== 'ENOTEMPTY' && errno(err) !== 'EEXIST') throw err;
      }
      // A peer finished the same model first: use theirs.
      const theirs = await judgeCopy(dir, options.accept);
      if (theirs.ok) return cachedOf(dir, false, theirs);
      if (attempt > 0) throw new Error(`model cache: ${dir} is taken by a copy that is not complete (${theirs.problem})`);
      // Damaged, or no manifest at all: not a complete copy (none is published without one).
      if (theirs.id !== undefined) await discardCached(dir, theirs.id);
      else await trash(dir);
    }
  } finally {
    clearInterval(heartbeat);
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Discards the copy with manifest `id` at `dir`, found unreadable. It is moved aside first; if
 * what was moved turns out to be another copy (a peer replaced the damaged one meanwhile), that
 * copy is put back.
 */
export async function discardCached(dir: string, id: string): Promise<void> {
  const aside = `${dir}.trash-${randomUUID()}`;
  try {
    await rename(dir, aside);
  } catch (err) {
    if (errno(err) === 'ENOENT') return; // a peer discarded it already
    throw err;
  }
  const moved = await readManifest(aside).catch(() => undefined);
  if (moved && moved.id !== id) {
    try {
      await rename(aside, dir);
      return;
    } catch (err) {
      // A third copy is in place by now: this one is not needed.
      if (errno(err) !== 'ENOTEMPTY' && errno(err) !== 'EEXIST') throw err;
    }
  }
  await rm(aside, { recursive: true, force: true });
}
