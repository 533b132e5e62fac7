/**
 * The local model cache: one directory per cache key (a registry version, a run path), filled
 * once and then read-only. A directory is only visible once complete: it is downloaded under a
 * temporary name and renamed into place, so a worker killed mid-download leaves no half model.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { exists } from '../files.ts';

const COMPLETE = '.kmj-complete';

export interface CachedModel {
  readonly dir: string;
  /** True when the model was already on disk. */
  readonly hit: boolean;
}

export async function ensureCached(cacheDir: string, key: string, fill: (dir: string) => Promise<void>): Promise<CachedModel> {
  const dir = join(cacheDir, key);
  if (await exists(join(dir, COMPLETE))) return { dir, hit: true };
  await mkdir(dirname(dir), { recursive: true });
  const tmp = `${dir}.partial-${randomUUID()}`;
  try {
    await mkdir(tmp, { recursive: true });
    await fill(tmp);
    await writeFile(join(tmp, COMPLETE), new Date().toISOString());
    await rm(dir, { recursive: true, force: true }); // an incomplete leftover, never a complete one
    try {
      await rename(tmp, dir);
    } catch (err) {
      // Another worker on this node finished the same model first: use theirs.
      if (!(await exists(join(dir, COMPLETE)))) throw err;
    }
    return { dir, hit: false };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

