// `kmj demo` in its parts, without services: the flags (parseDemoArgs), the table's rows from
// MLflow's runs (demoRows), the verdict (decideDemo) and the text (renderTick, renderDemo) from
// outcomes built here. The whole demo against the real services is test/cli/demo.test.ts.
import { describe, expect, it } from 'vitest';
import { decideDemo, demoRows, fit, parseDemoArgs, renderDemo, renderTick, type DemoOutcome } from '../../cli/demo-command.ts';
import { UsageError } from '../../cli/usage.ts';
import { EXIT } from '../../common/exit-codes.ts';
import type { SearchedRun } from '../../mlflow/tracking.ts';

function run(
  status: SearchedRun['info']['status'],
  tags: Record<string, string>,
  metrics: Record<string, number>,
  times?: [number, number],
): SearchedRun {
  return {
    info: {
      run_id: 'r',
      experiment_id: '3',
      status,
      artifact_uri: 'mlflow-artifacts:/3/r/artifacts',
      lifecycle_stage: 'active',
      ...(times ? { start_time: times[0], end_time: times[1] } : {}),
    },
    tags,
    params: {},
    metrics,
  };
}

const good = (requestId: string) => ({
  requestId,
  model: 'kmj-iris-classifier v1',
  status: 'FINISHED',
  rows: '150',
  score: 'accuracy 0.973',
  seconds: '1.25',
});

function outcome(over: Partial<DemoOutcome> = {}): DemoOutcome {
  return {
    requests: 3,
    jobs: 3,
    rows: [
      good('demo-00000001'),
      good('demo-00000002'),
      { ...good('demo-00000003'), status: 'FAILED', rows: '', score: '', seconds: '0.40' },
    ],
    deadLetters: [{ messageId: 'demo-00000003', reason: 'model: registered model "m" has no alias "x"' }],
    stuck: [],
    mlflowUi: 'http://127.0.0.1:5000/#/experiments/3',
    logDir: '/tmp/demo-logs/kmj-demo-x',
    ...over,
  };
}

describe('parseDemoArgs', () => {
  it.each([
    { args: [], want: { kind: 'run', maxJobs: 3 } },
    { args: ['--max-jobs', '7'], want: { kind: 'run', maxJobs: 7 } },
    { args: ['--max-jobs', '50'], want: { kind: 'run', maxJobs: 50 } },
    { args: ['-h'], want: { kind: 'help' } },
  ])('$args', ({ args, want }) => {
    expect(parseDemoArgs(args)).toEqual(want);
  });

  it.each(['0', '51', '2.5', 'many', ''])('--max-jobs %j is a usage error naming the flag and the range', (value) => {
    expect(() => parseDemoArgs(['--max-jobs', value])).toThrow(
      new UsageError([`--max-jobs: ${JSON.stringify(value)} must be an integer from 1 to 50`]),
    );
  });
});

describe('demoRows', () => {
  it('names the model by its registry name and version, scores by accuracy, else r2, and times the run', () => {
    const rows = demoRows([
      run(
        'FINISHED',
        { 'kmj.request_id': 'demo-1', 'kmj.model_name': 'kmj-iris-classifier', 'kmj.model_version': '2' },
        { rows: 150, accuracy_score: 0.97333 },
        [1000, 2250],
      ),
      run('FINISHED', { 'kmj.request_id': 'demo-2', 'kmj.model_name': 'kmj-iris-regressor' }, { rows: 150, r2_score: 0.91 }, [0, 500]),
      run('FAILED', { 'kmj.model_uri': 'models:/m@no-such-alias' }, {}),
    ]);
    expect(rows).toEqual([
      { requestId: 'demo-1', model: 'kmj-iris-classifier v2', status: 'FINISHED', rows: '150', score: 'accuracy 0.973', seconds: '1.25' },
      { requestId: 'demo-2', model: 'kmj-iris-regressor v?', status: 'FINISHED', rows: '150', score: 'r2 0.910', seconds: '0.50' },
      { requestId: '?', model: 'models:/m@no-such-alias', status: 'FAILED', rows: '', score: '', seconds: '' },
    ]);
  });
});

describe('decideDemo', () => {
  it('OK when every good request FINISHED, the bad one was dead-lettered and no worker was left', () => {
    expect(decideDemo(outcome())).toEqual({ code: EXIT.OK, verdict: 'demo OK: 2 FINISHED, 1 dead-lettered, 3 Jobs for 3 messages' });
  });

  it('FAILED, with every reason, when a good request did not finish, nothing was dead-lettered and a worker was stuck', () => {
    const o = outcome({
      rows: [good('demo-1'), { ...good('demo-2'), status: 'RUNNING' }],
      deadLetters: [],
      stuck: [{ name: 'job-2', logTail: '  {"msg":"loading model"}' }],
    });
    expect(decideDemo(o)).toEqual({
      code: EXIT.FAILED,
      verdict:
        'demo FAILED: 1 of the 2 good requests FINISHED; 0 dead-lettered, not the 1 bad request; 1 workers still running at the end (worker logs above)',
    });
  });
});

describe('renderTick and renderDemo', () => {
  it('one aligned line per second', () => {
    expect(renderTick({ seconds: 12.4, backlog: 8, active: true, unfinished: 3, created: 0, finished: 2, failed: 1 })).toBe(
      '  12s        8    true                3         0         2       1',
    );
  });

  it('the table, the dead-letters, the Jobs and the verdict last; stuck workers with their logs', () => {
    const o = outcome({ stuck: [{ name: 'job-3', logTail: '  last line' }] });
    expect(renderDemo(o, 'demo FAILED: x')).toEqual([
      '',
      'request        model                  status     rows  score           seconds',
      'demo-00000001  kmj-iris-classifier v1 FINISHED    150  accuracy 0.973     1.25',
      'demo-00000002  kmj-iris-classifier v1 FINISHED    150  accuracy 0.973     1.25',
      'demo-00000003  kmj-iris-classifier v1 FAILED                              0.40',
      'dead-lettered: demo-00000003: model: registered model "m" has no alias "x"',
      '',
      '3 worker Jobs for 3 messages; MLflow UI: http://127.0.0.1:5000/#/experiments/3',
      'still running when the demo ended (stopped now): job-3',
      'job-3.log ends:\n  last line',
      'worker logs: /tmp/demo-logs/kmj-demo-x',
      'demo FAILED: x',
    ]);
  });

  it('a model name longer than 40 is cut in the middle', () => {
    expect(fit('a'.repeat(30) + 'b'.repeat(30), 9)).toBe('aaaa…bbbb');
    expect(fit('short', 9)).toBe('short    ');
  });
});
