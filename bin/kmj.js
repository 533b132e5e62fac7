#!/usr/bin/env node
// Entry point of the `kmj` command: runs the compiled CLI from dist/ (built by `npm install`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/kmj.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('kmj: dist/ is missing; run "npm run build" in the keda-ml-jobs checkout\n');
  process.exit(1);
}
const { main } = await import(entry.href);
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // A one-shot command is done: if a stray handle keeps the event loop alive, do not hang on it.
    setTimeout(() => process.exit(code), 2000).unref();
  },
  (err) => {
    process.stderr.write(`kmj: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exitCode = 70;
  },
);
