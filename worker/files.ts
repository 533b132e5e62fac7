/** File-system helpers shared by the worker's modules. */
import { access, realpath } from 'node:fs/promises';
import { resolve, sep } from 'node:path';

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** True when `real` (a resolved path) is one of `roots` or inside one; roots are resolved too. */
export async function isUnderRoots(real: string, roots: readonly string[]): Promise<boolean> {
  const resolved = await Promise.all(roots.map((r) => realpath(r).catch(() => resolve(r))));
  return resolved.some((root) => real === root || real.startsWith(root.endsWith(sep) ? root : root + sep));
}
