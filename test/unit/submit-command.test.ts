// `kmj submit` in its parts, without services: the flags (parseSubmitArgs), the batch checked
// before anything is published (buildBatch), the exit code (decideSubmit) and the outcome's text
// (renderFollowed). Publishing and following, against the real RabbitMQ, Kafka and MLflow, are in
// test/cli/submit.test.ts and test/cli/kafka.test.ts.
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { requestValidator } from '../../common/request.ts';
import type { SearchedRun } from '../../mlflow/tracking.ts';
import { buildBatch, decideSubmit, parseSubmitArgs, renderFollowed, type Followed } from '../../cli/submit-command.ts';
import { UsageError } from '../../cli/usage.ts';

function problemsOf(argv: readonly string[]): readonly string[] {
  try {
    parseSubmitArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) return err.problems;
    throw err;
  }
  throw new Error(`no UsageError for ${JSON.stringify(argv)}`);
}

describe('parseSubmitArgs', () => {
  it('one request to a queue: the defaults from the flags, a dataset path made absolute', () => {
    expect(
      parseSubmitArgs([
        '--queue',
        'q',
        '--model',
        'models:/iris@champion',
        '--dataset',
        'data/iris.csv',
        '--tag',
        'team=ml',
        '--param',
        'batch=a=b',
        '--timeout',
        '90s',
      ]),
    ).toEqual({
      kind: 'submit',
      target: { kind: 'rabbitmq', queue: 'q' },
      defaults: {
        experiment: 'q',
        model: 'models:/iris@champion',
        dataset: { uri: resolve('data/iris.csv') },
        tags: { team: 'ml' },
        params: { batch: 'a=b' },
      },
      file: undefined,
      wait: false,
      timeoutMs: 90_000,
    });
  });

  it('a Kafka topic with its partitions and group; a URI dataset kept as given', () => {
    expect(
      parseSubmitArgs(['--kafka', '--topic', 't', '--partitions', '3', '--group', 'g', '--file', 'r.jsonl', '--dataset', 's3://b/k.csv']),
    ).toMatchObject({
      target: { kind: 'kafka', topic: 't', partitions: 3, group: 'g' },
      defaults: { experiment: 't', dataset: { uri: 's3://b/k.csv' } },
      file: 'r.jsonl',
    });
  });

  it.each([
    [
      ['--model', 'm', '--dataset', 'd', '--partitions', '2'],
      ['--queue: is required', '--partitions: needs --kafka'],
    ],
    [
      ['--kafka', '--queue', 'q', '--partitions', '0', '--file', 'f', '--wait'],
      [
        '--topic: is required with --kafka',
        '--queue: is for RabbitMQ; with --kafka give --topic',
        '--partitions: "0" must be an integer from 1 to 10000',
        '--wait: is for a single request, not --file',
      ],
    ],
    [
      ['--queue', 'q', '--model', 'm', '--timeout', 'soon', '--tag', 'x', '--param', '=v'],
      [
        '--dataset: is required (or give --file)',
        '--timeout: "soon" must be a number of seconds above 0, or a duration such as 90s or 10m',
        '--tag: "x" must be key=value',
        '--param: "=v" must be key=value',
      ],
    ],
  ])('%j: every problem in one error', (argv, problems) => {
    expect(problemsOf(argv)).toEqual(problems);
  });
});

describe('buildBatch', () => {
  const defaults = { experiment: 'e', model: 'models:/iris/1', dataset: { uri: '/data/iris.csv' } };

  it('one request from the flags: a new request id, version 1, the flags as fields', async () => {
    const { requests, invalid } = buildBatch(defaults, undefined, await requestValidator());
    expect(invalid).toEqual([]);
    expect(requests).toHaveLength(1);
    const body = JSON.parse(requests[0]?.body.toString() ?? '') as Record<string, unknown>;
    expect(body).toEqual({ version: 1, requestId: requests[0]?.requestId, ...defaults });
    expect(requests[0]?.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('a file: each line over the defaults; every bad line named by its number, blank lines skipped', async () => {
    const text = ['{"requestId":"r1"}', '', '{"model":"bad"}', '[]', '{"requestId":"r4","model":"models:/iris@champion"}', 'not json'].join(
      '\n',
    );
    const { requests, invalid } = buildBatch(defaults, text, await requestValidator());
    expect(requests.map((r) => r.requestId)).toEqual(['r1', 'r4']);
    expect(JSON.parse(requests[1]?.body.toString() ?? '')).toMatchObject({ model: 'models:/iris@champion', dataset: defaults.dataset });
    expect(invalid).toEqual([
      'line 3: invalid request: model: must start with models:/, runs:/, mlflow-artifacts: or file:///',
      'line 4: message: is not a JSON object',
      `line 6: message: is not valid JSON (Unexpected token 'o', "not json" is not valid JSON)`,
    ]);
  });

  it('a request missing its model and dataset names both', async () => {
    expect(buildBatch({ experiment: 'e' }, undefined, await requestValidator()).invalid).toEqual([
      'invalid request: model: is required; dataset: is required',
    ]);
  });
});

describe('decideSubmit and renderFollowed', () => {
  const run = {
    info: { run_id: 'r1', status: 'FINISHED' },
    tags: {},
    params: {},
    metrics: { rows: 150, accuracy_score: 0.973333333, total_seconds: 0.25 },
  } as unknown as SearchedRun;
  const finished: Followed = { kind: 'finished', run, url: 'http://127.0.0.1:5000/#/experiments/1/runs/r1' };

  it.each([
    [{ published: { ok: true } }, EXIT.OK],
    [{ published: { ok: false, error: 'x', interrupted: false } }, EXIT.UNAVAILABLE],
    [{ published: { ok: false, error: 'x', interrupted: true } }, EXIT.INTERRUPTED],
    [{ published: { ok: true }, followed: finished }, EXIT.OK],
    [{ published: { ok: true }, followed: { kind: 'dead-lettered', reason: 'model: not found' } }, EXIT.DEAD_LETTERED],
    [{ published: { ok: true }, followed: { kind: 'timeout', last: 'queued: no run yet' } }, EXIT.TIMEOUT],
    [{ published: { ok: true }, followed: { kind: 'interrupted', last: 'queued: no run yet' } }, EXIT.INTERRUPTED],
  ] as const)('%j exits %i', (submitted, code) => {
    expect(decideSubmit(submitted)).toBe(code);
  });

  it('renders each outcome', () => {
    expect(renderFollowed(finished, 600_000)).toBe(
      [
        'FINISHED run r1',
        `  ${'rows'.padEnd(24)} 150`,
        `  ${'accuracy_score'.padEnd(24)} 0.973333`,
        `  ${'total_seconds'.padEnd(24)} 0.25`,
        '  http://127.0.0.1:5000/#/experiments/1/runs/r1',
        '',
      ].join('\n'),
    );
    expect(renderFollowed({ kind: 'dead-lettered', reason: 'dataset.uri: not found', run }, 1000)).toBe(
      'DEAD-LETTERED (run r1 FAILED): dataset.uri: not found\n',
    );
    expect(renderFollowed({ kind: 'timeout', last: 'queued: no run yet' }, 90_000)).toBe(
      'no outcome within 90 s (last seen: queued: no run yet)\n',
    );
    expect(renderFollowed({ kind: 'interrupted', last: 'running (run r1)' }, 90_000)).toBe(
      'interrupted before an outcome (last seen: running (run r1))\n',
    );
  });
});
