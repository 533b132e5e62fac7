// The README's command blocks, read from README.md and run as they stand, so the README cannot
// drift from what works: its quickstart (after `make demo`) runs in bash from the checkout's root
// against the services `make test` started, which are the ones `make demo` starts. The first
// block's `make test` is this run itself and its `make demo` rebuilds dist/, which the other test
// files' processes run from; what `make demo` runs, `kmj demo`, is demo.test.ts' case, and the
// first block is checked to name exactly those two targets of the Makefile.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { lines } from '../helpers/kmj.ts';

const README = readFileSync(packageFile('README.md'), 'utf8');

/** The ```sh blocks of a Markdown text, in order, with the line after each one's heading text. */
function shellBlocks(markdown: string): Array<{ readonly after: string; readonly text: string }> {
  const out: Array<{ after: string; text: string }> = [];
  const all = markdown.split('\n');
  for (let i = 0; i < all.length; i++) {
    if (all[i] !== '```sh') continue;
    const end = all.indexOf('```', i + 1);
    if (end === -1) throw new Error(`README.md: the block opened on line ${i + 1} is never closed`);
    const before = all.slice(0, i).filter((l) => l.trim() !== '');
    out.push({ after: before.at(-1) ?? '', text: all.slice(i + 1, end).join('\n') });
    i = end;
  }
  return out;
}

/**
 * Runs `script` with bash from the checkout's root, as a user pastes it: each command runs
 * whatever the one before returned; resolves with the last command's exit code and the output.
 */
function bash(script: string, timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', script], { cwd: packageFile(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // The whole process group: the block starts a worker in the background.
    const timer = setTimeout(() => process.kill(-(child.pid ?? 0), 'SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('README.md', () => {
  const blocks = shellBlocks(README);

  it('starts with the two commands, make demo and make test, both targets of the Makefile', () => {
    const first = blocks[0]?.text ?? '';
    expect(lines(first).map((l) => l.replace(/\s*#.*$/, ''))).toEqual(['make demo', 'make test']);
    const makefile = readFileSync(packageFile('Makefile'), 'utf8');
    expect(makefile).toMatch(/^demo: /m);
    expect(makefile).toMatch(/^test: /m);
  });

  it('its quickstart after make demo, run as written: the request FINISHED, then the queue status', { timeout: 180_000 }, async () => {
    const quickstart = blocks.find((b) => b.after.startsWith('After `make demo`'));
    if (!quickstart) throw new Error('README.md has no ```sh block after "After `make demo`"');
    // `wait` is last: the background worker exits after its one request, and the script's exit
    // code is the worker's (kmj status before it exits 1 here, as it should: no scaler runs
    // after make demo, and it says so).
    const result = await bash(`${quickstart.text}\nwait\n`, 150_000);
    const out = `${result.stdout}\n${result.stderr}`;
    expect(result.code, out.slice(-3000)).toBe(0);
    // kmj submit --wait: the run, its scores and its link.
    expect(result.stdout).toMatch(/^FINISHED run [0-9a-f]{32}$/m);
    expect(result.stdout).toMatch(/^ {2}accuracy_score {10}/m);
    // kmj status: the queue empty, the request's run finished in MLflow.
    expect(result.stdout).toMatch(/^queue ml-requests$/m);
    expect(result.stdout).toMatch(/^ {2}RabbitMQ {3}ready 0 /m);
    expect(result.stdout).toMatch(/^ {4}[0-9a-f-]{36} {3}finished /m);
  });
});
