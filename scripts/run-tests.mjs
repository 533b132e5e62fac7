// Runs the whole vitest suite and ends with the plain line `N passed, N failed, N skipped`, read
// from vitest's JSON report (not from its console summary), after the name of every skipped test:
// a test that starts skipping is seen, not silently dropped from "passed". Exits non-zero when
// anything failed.
import { spawnSync } from 'node:child_process';
import { readFileSync, mkdirSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const report = join(root, '.run', 'vitest-report.json');
mkdirSync(join(root, '.run'), { recursive: true });
rmSync(report, { force: true });

const args = ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)];
const run = spawnSync('npx', args, { cwd: root, stdio: 'inherit' });

let passed = 0;
let failed = 0;
let skipped = [];
try {
  const json = JSON.parse(readFileSync(report, 'utf8'));
  passed = json.numPassedTests ?? 0;
  // A test file that failed without a failed test (it did not load, a hook threw) counts as one.
  failed = (json.numFailedTests ?? 0) + filesFailedWithoutFailedTests(json);
  skipped = skippedTests(json);
} catch (err) {
  process.stderr.write(`run-tests: no readable vitest report at ${report}: ${err.message}\n`);
  failed = Math.max(failed, 1);
}

function filesFailedWithoutFailedTests(json) {
  return (json.testResults ?? []).filter((f) => f.status === 'failed' && !(f.assertionResults ?? []).some((a) => a.status === 'failed'))
    .length;
}

/** Every test the report did not run (skipped, todo), as `file > describe > name`. */
function skippedTests(json) {
  const out = [];
  for (const file of json.testResults ?? []) {
    for (const a of file.assertionResults ?? []) {
      if (a.status === 'skipped' || a.status === 'pending' || a.status === 'todo') {
        out.push(`${relative(root, file.name)} > ${a.fullName ?? a.title}`);
      }
    }
  }
  return out;
}

if (run.status !== 0 && failed === 0) failed = 1;
for (const name of skipped) process.stdout.write(`skipped: ${name}\n`);
process.stdout.write(`${passed} passed, ${failed} failed, ${skipped.length} skipped\n`);
process.exit(failed === 0 ? 0 : 1);
