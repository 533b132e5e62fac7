/**
 * node:http and node:https for program code, without Node's bundled undici. An ESM `import { … }
 * from 'node:http'` builds the module's namespace, which reads its lazy `WebSocket`,
 * `CloseEvent` and `MessageEvent` exports and so loads undici: about 30 ms and 4 MB of a process
 * that never uses it (docs/benchmarks.md, make bench-worker). process.getBuiltinModule returns the
 * module without reading them. Type-only imports of node:http are erased and are fine anywhere;
 * eslint.config.js refuses value imports of it outside tests and benches.
 */
import type * as Https from 'node:https';

export const nodeHttp = process.getBuiltinModule('node:http');

let https: typeof Https | undefined;

/** node:https (TLS, crypto), loaded on first use: most processes here never open an https URL. */
export function nodeHttps(): typeof Https {
  return (https ??= process.getBuiltinModule('node:https'));
}
