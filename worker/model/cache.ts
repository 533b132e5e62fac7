/**
 * The local model cache: one directory per cache key (a registry version, a run path), filled
 * once and then read-only. Any number of workers may share it (a ReadWriteMany volume on a node),
 * and the rules that make that safe are:
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
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

const MANIFEST = '.kmj-manifest.json';

interface Manifest {
  readonly version: 1;
  /** Names this copy: a discard removes only the copy it found damaged. */
  readonly id: string;
  readonly files: ReadonlyArray<{ readonly path: string; readonly size: number }>;
}

export interface CachedModel {
  readonly dir: string;
  /** True when the model was already on disk. */
  readonly hit: boolean;
  /** The copy's manifest id, for `discardCached`. */
  readonly id: string;
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
}

const DEFAULT_STALE_MS = 120_000;
const DEFAULT_HEARTBEAT_MS = 10_000;

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Every regular file under `dir`, relative paths, with sizes; the manifest itself excluded. */
async function listFiles(dir: string, rel = ''): Promise<Array<{ path: string; size: number }>> {
  const out: Array<{ path: string; size: number }> = [];
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

/** What a look at a cached copy found. */
export type CopyState = { readonly ok: true; readonly id: string } | { readonly ok: false; readonly problem: string; readonly id?: string };

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
  return { ok: true, id: m.id };
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
 * trustworthy one. A damaged copy (files missing or cut short) is discarded and filled again.
 */
export async function ensureCached(cacheDir: string, key: string, fill: (dir: string) => Promise<void>, options: CacheOptions = {}): Promise<CachedModel> {
  const dir = join(cacheDir, key);
  const now = options.now ?? Date.now;
  const found = await checkCopy(dir);
  if (found.ok) return { dir, hit: true, id: found.id };
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
    await fill(tmp);
    const manifest: Manifest = { version: 1, id: randomUUID(), files: await listFiles(tmp) };
    await writeFile(join(tmp, MANIFEST), JSON.stringify(manifest));
    for (let attempt = 0; ; attempt++) {
      try {
        await rename(tmp, dir);
        return { dir, hit: false, id: manifest.id };
      } catch (err) {
        if (errno(err) !== 'ENOTEMPTY' && errno(err) !== 'EEXIST') throw err;
      }
      // A peer finished the same model first: use theirs.
      const theirs = await checkCopy(dir);
      if (theirs.ok) return { dir, hit: false, id: theirs.id };
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
