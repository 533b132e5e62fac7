/** File-system helpers shared by the worker's modules. */
import { access, realpath } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import { PermanentError, TransientError } from '../common/errors.ts';

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

/**
 * The error for a path of the request's that could not be resolved: one that is not there (or
 * runs through a file) is the request's fault; anything else (EIO, EACCES, ESTALE, EMFILE) is
 * the machine's, and may pass.
 */
export function missingOrUnreadable(err: unknown, what: string, field: string): PermanentError | TransientError {
  const code = (err as { code?: unknown } | undefined)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new PermanentError(`${what} does not exist`, { field, cause: err });
  return new TransientError(`${what} could not be read (${typeof code === 'string' ? code : String(err)})`, { cause: err });
}
