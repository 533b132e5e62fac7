// The kmj command itself: --version, "did you mean" for a mistyped command, and the demo table.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { fit } from '../../cli/demo-command.ts';
import { didYouMean, editDistance, flagsOf } from '../../cli/usage.ts';
import { runKmj } from '../helpers/kmj.ts';

const version = (JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as { version: string }).version;

describe('kmj', () => {
  it.each([['--version'], ['-V'], ['version']])('%s prints "kmj <version>", exit 0', async (flag) => {
    expect(await runKmj([flag], { env: {} })).toMatchObject({ code: 0, stdout: `kmj ${version}\n`, stderr: '' });
  });

  it('a mistyped command: exit 64, the command it is closest to, then the usage', async () => {
    const r = await runKmj(['stauts'], { env: {} });
    expect(r.code).toBe(64);
    expect(r.stderr.split('\n')[0]).toBe('kmj: unknown command "stauts"; did you mean "status"?');
    expect(r.stderr).toMatch(/^Usage: kmj <command> \[options\]$/m);
  });

  it('an unknown command nothing like any: no guess', async () => {
    const r = await runKmj(['frobnicate'], { env: {} });
    expect(r.code).toBe(64);
    expect(r.stderr.split('\n')[0]).toBe('kmj: unknown command "frobnicate"');
  });
});

describe('did you mean', () => {
  it.each([
    ['kitten', 'sitting', 3],
    ['status', 'stauts', 1],
    ['queue', 'qeue', 1],
    ['', 'abc', 3],
    ['same', 'same', 0],
  ])('editDistance(%s, %s) = %i', (a, b, d) => {
    expect(editDistance(a, b)).toBe(d);
  });

  it.each([
    ['stauts', ['scaler', 'worker', 'submit', 'status'], 'status'],
    ['wokrer', ['scaler', 'worker', 'submit', 'status'], 'worker'],
    ['--qeue', ['--queue', '--experiment'], '--queue'],
    ['--max-job', ['--max-jobs'], '--max-jobs'],
    ['xyz', ['scaler', 'worker'], undefined],
    ['--verbose', ['--queue', '--runs', '--output'], undefined],
  ] as const)('didYouMean(%s) = %s', (word, known, want) => {
    expect(didYouMean(word, known)).toBe(want);
  });

  it('flagsOf reads the long flags a help text documents', () => {
    expect(flagsOf('Usage: kmj demo [--max-jobs <n>]\n  -h, --help   this help\n  uses KMJ_--X and a--b')).toEqual([
      '--max-jobs',
      '--help',
    ]);
  });
});

describe('the demo table fits a long model URI', () => {
  it.each([
    ['short', 10, 'short     '],
    ['exactly ten', 11, 'exactly ten'],
    ['models:/kmj-iris-classifier@no-such-alias', 20, 'models:/km…uch-alias'],
  ])('fit(%s, %i)', (text, width, want) => {
    expect(fit(text, width)).toBe(want);
    expect(fit(text, width)).toHaveLength(width);
  });
});
