/** Locates files shipped with the package (proto, schemas) from source and from dist alike. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find the keda-ml-jobs package root (package.json next to proto/)');
}

/** Absolute path of the package root: the folder with package.json and proto/. */
export const PACKAGE_ROOT = findRoot();

/** Absolute path of a file shipped with the package, given relative to the package root. */
export function packageFile(...parts: string[]): string {
  return join(PACKAGE_ROOT, ...parts);
}

/** The package's version (package.json). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as { version?: string };
  return pkg.version ?? '0.0.0';
}
