// The worker's one mapping of anything thrown to its two error classes (worker/pipeline.ts
// classify): PermanentError dead-letters, TransientError is retried (in this process when
// retryInProcess) and then requeued.
import { describe, expect, it } from 'vitest';
import { DeadlineError } from '../../common/abort.ts';
import { PermanentError, TransientError } from '../../common/errors.ts';
import { MlflowHttpError } from '../../mlflow/http.ts';
import { classify, failureFields } from '../../worker/pipeline.ts';

interface Case {
  readonly name: string;
  readonly err: unknown;
  readonly kind: 'permanent' | 'transient';
  readonly message: string;
  /** TransientError only. */
  readonly retryInProcess?: boolean;
  /** PermanentError only. */
  readonly field?: string;
  /** The classified error wraps the original (cause), unless it is the original itself. */
  readonly same?: boolean;
}

function http(status: number, message = `MLflow answered HTTP ${status}`, errorCode?: string): MlflowHttpError {
  return new MlflowHttpError(message, status, errorCode);
}

const CREDENTIALS = (status: number): string =>
  `MLflow refused the worker's credentials (HTTP ${status}); fix the worker's MLflow settings`;

const CASES: readonly Case[] = [
  // Already classified: passed through as they are.
  {
    name: 'a PermanentError is itself',
    err: new PermanentError('dataset.uri: no such file', { field: 'dataset.uri' }),
    kind: 'permanent',
    message: 'dataset.uri: no such file',
    field: 'dataset.uri',
    same: true,
  },
  {
    name: 'a TransientError is itself',
    err: new TransientError('broker went away'),
    kind: 'transient',
    message: 'broker went away',
    retryInProcess: true,
    same: true,
  },
  {
    name: 'a TransientError keeps retryInProcess false',
    err: new TransientError('later', { retryInProcess: false }),
    kind: 'transient',
    message: 'later',
    retryInProcess: false,
    same: true,
  },

  // MLflow answers.
  {
    name: 'MLflow 401: the credentials, requeued at once',
    err: http(401),
    kind: 'transient',
    message: CREDENTIALS(401),
    retryInProcess: false,
  },
  {
    name: 'MLflow 403: the credentials, requeued at once',
    err: http(403, 'PERMISSION_DENIED'),
    kind: 'transient',
    message: CREDENTIALS(403),
    retryInProcess: false,
  },
  {
    name: 'MLflow 500: already retried by the HTTP client',
    err: http(500, 'MLflow answered HTTP 500 on runs/create'),
    kind: 'transient',
    message: 'MLflow answered HTTP 500 on runs/create',
    retryInProcess: false,
  },
  { name: 'MLflow 503', err: http(503), kind: 'transient', message: 'MLflow answered HTTP 503', retryInProcess: false },
  { name: 'MLflow 429', err: http(429), kind: 'transient', message: 'MLflow answered HTTP 429', retryInProcess: false },
  { name: 'MLflow 408', err: http(408), kind: 'transient', message: 'MLflow answered HTTP 408', retryInProcess: false },
  {
    name: 'MLflow not answering at all (status 0)',
    err: http(0, 'MLflow did not answer: connect ECONNREFUSED'),
    kind: 'transient',
    message: 'MLflow did not answer: connect ECONNREFUSED',
    retryInProcess: false,
  },
  {
    name: 'MLflow 400 of a lost unique-key race (SQLite)',
    err: http(400, 'UNIQUE constraint failed: inputs.input_uuid', 'INVALID_PARAMETER_VALUE'),
    kind: 'transient',
    message: 'UNIQUE constraint failed: inputs.input_uuid',
    retryInProcess: false,
  },
  {
    name: 'MLflow 400 of a lost unique-key race (Postgres)',
    err: http(400, 'duplicate key value violates unique constraint "datasets_pk"'),
    kind: 'transient',
    message: 'duplicate key value violates unique constraint "datasets_pk"',
    retryInProcess: false,
  },
  {
    name: 'MLflow 400: the request is wrong',
    err: http(400, 'Invalid value for parameter', 'INVALID_PARAMETER_VALUE'),
    kind: 'permanent',
    message: 'Invalid value for parameter',
  },
  {
    name: 'MLflow 404: it does not exist',
    err: http(404, 'Registered Model with name=iris not found', 'RESOURCE_DOES_NOT_EXIST'),
    kind: 'permanent',
    message: 'Registered Model with name=iris not found',
  },
  { name: 'MLflow 413', err: http(413), kind: 'permanent', message: 'MLflow answered HTTP 413' },
  {
    name: 'MLflow error messages are scrubbed of credentials',
    err: http(404, 'no such artifact at http://user:pw@mlflow:5000/x'),
    kind: 'permanent',
    message: 'no such artifact at http://***@mlflow:5000/x',
  },

  // Anything else is transient, retried in process.
  {
    name: 'an AbortError',
    err: new DOMException('This operation was aborted', 'AbortError'),
    kind: 'transient',
    message: 'an operation was aborted: This operation was aborted',
    retryInProcess: true,
  },
  {
    name: 'an Error named AbortError',
    err: Object.assign(new Error('stream closed early'), { name: 'AbortError' }),
    kind: 'transient',
    message: 'an operation was aborted: stream closed early',
    retryInProcess: true,
  },
  {
    name: 'a TimeoutError of AbortSignal.timeout',
    err: new DOMException('The operation was aborted due to timeout', 'TimeoutError'),
    kind: 'transient',
    message: 'The operation was aborted due to timeout',
    retryInProcess: true,
  },
  {
    name: 'a DeadlineError',
    err: new DeadlineError('dataset read did not finish within 100 ms', 100),
    kind: 'transient',
    message: 'dataset read did not finish within 100 ms',
    retryInProcess: true,
  },
  {
    name: 'a network error',
    err: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
    kind: 'transient',
    message: 'read ECONNRESET',
    retryInProcess: true,
  },
  {
    name: 'a plain Error with a password in it: scrubbed',
    err: new Error('GET https://bob:hunter2@files.example/data.csv failed'),
    kind: 'transient',
    message: 'GET https://***@files.example/data.csv failed',
    retryInProcess: true,
  },
  { name: 'a thrown string', err: 'disk full', kind: 'transient', message: 'disk full', retryInProcess: true },
  { name: 'undefined', err: undefined, kind: 'transient', message: 'undefined', retryInProcess: true },
];

describe('classify', () => {
  it.each(CASES)('$name', ({ err, kind, message, retryInProcess, field, same = false }) => {
    const e = classify(err);
    expect(e).toBeInstanceOf(kind === 'permanent' ? PermanentError : TransientError);
    expect(e.message).toBe(message);
    if (same) expect(e).toBe(err);
    else expect(e.cause).toBe(err);
    if (e instanceof TransientError) expect(e.retryInProcess).toBe(retryInProcess);
    if (e instanceof PermanentError) expect(e.field).toBe(field);
  });
});

describe('failureFields: one line for a mistake or an outage, the stack for a bug', () => {
  it.each([
    ['a PermanentError', new PermanentError('model: registered model "m" has no alias "x"', { field: 'model' })],
    [
      'a TransientError over a system error',
      new TransientError('connect ECONNREFUSED', { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) }),
    ],
    ['an MLflow error, classified', classify(new MlflowHttpError('MLflow answered HTTP 503', 503))],
    ['a JSON syntax error in a dataset', new PermanentError('dataset: line 3 is not JSON', { cause: new SyntaxError('Unexpected token') })],
  ])('%s: the reason only', (_name, e) => {
    expect(failureFields(e)).toEqual({ reason: e.message });
  });

  it.each([
    ['a TypeError', new TypeError("Cannot read properties of undefined (reading 'x')")],
    ['a RangeError', new RangeError('Invalid array length')],
    ['a ReferenceError', new ReferenceError('y is not defined')],
  ])('%s underneath: the reason and the error, with its stack', (_name, bug) => {
    const e = classify(bug);
    expect(failureFields(e)).toEqual({ reason: e.message, err: bug });
  });
});
