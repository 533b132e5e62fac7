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
    // The command has finished and closed what it owns (the worker has settled its message and
    // closed its connections): exit now rather than wait for native thread pools to wind down,
    // once stdout (a pipe writes asynchronously) has been handed everything.
    const exit = () => process.exit(code);
    if (process.stdout.writableLength === 0) exit();
    else process.stdout.once('drain', exit);
  },
  (err) => {
    // A command that failed unexpectedly may still hold a connection: exit rather than wait on it.
    process.stderr.write(`kmj: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(70);
  },
);
