// The one mapping of the scaler's typed errors to gRPC status codes (scaler/grpc-server.ts
// toStatus): bad metadata is INVALID_ARGUMENT, a missing queue NOT_FOUND, an unreadable broker
// UNAVAILABLE, a time budget DEADLINE_EXCEEDED, and anything else INTERNAL with a generic detail.
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { DeadlineError } from '../../common/abort.ts';
import { BacklogNotFoundError, BacklogUnavailableError } from '../../common/errors.ts';
import { InvalidMetadataError } from '../../scaler/errors.ts';
import { toStatus } from '../../scaler/grpc-server.ts';

const GENERIC = 'internal error in the scaler; see its log';

interface Case {
  readonly name: string;
  readonly err: unknown;
  readonly code: status;
  readonly details: string;
  readonly internal: boolean;
}

const CASES: readonly Case[] = [
  {
    name: 'bad metadata: INVALID_ARGUMENT with every problem',
    err: new InvalidMetadataError([
      'targetSize: "0" must be a number greater than 0',
      'mode: "fast" must be one of backlog, ready, management',
    ]),
    code: status.INVALID_ARGUMENT,
    details:
      'invalid trigger metadata: targetSize: "0" must be a number greater than 0; mode: "fast" must be one of backlog, ready, management',
    internal: false,
  },
  {
    name: 'missing queue: NOT_FOUND',
    err: new BacklogNotFoundError('queue "jobs" does not exist in vhost "/"'),
    code: status.NOT_FOUND,
    details: 'queue "jobs" does not exist in vhost "/"',
    internal: false,
  },
  {
    name: 'broker unreachable: UNAVAILABLE',
    err: new BacklogUnavailableError('cannot reach the broker: connect ECONNREFUSED 127.0.0.1:5672', { cause: new Error('ECONNREFUSED') }),
    code: status.UNAVAILABLE,
    details: 'cannot reach the broker: connect ECONNREFUSED 127.0.0.1:5672',
    internal: false,
  },
  {
    name: 'UNAVAILABLE never carries the credentials of a URL',
    err: new BacklogUnavailableError('cannot reach amqp://scaler:s3cret@rabbit:5672/'),
    code: status.UNAVAILABLE,
    details: 'cannot reach amqp://***@rabbit:5672/',
    internal: false,
  },
  {
    name: 'NOT_FOUND never carries the credentials of a URL',
    err: new BacklogNotFoundError('vhost "x" on amqp://scaler:s3cret@rabbit:5672/ does not exist'),
    code: status.NOT_FOUND,
    details: 'vhost "x" on amqp://***@rabbit:5672/ does not exist',
    internal: false,
  },
  {
    name: 'a time budget: DEADLINE_EXCEEDED',
    err: new DeadlineError('first read did not finish within 2000 ms', 2000),
    code: status.DEADLINE_EXCEEDED,
    details: 'first read did not finish within 2000 ms',
    internal: false,
  },
  {
    name: 'DEADLINE_EXCEEDED is scrubbed of credentials',
    err: new DeadlineError('read of http://guest:guest@127.0.0.1:15672/api did not finish within 5 ms', 5),
    code: status.DEADLINE_EXCEEDED,
    details: 'read of http://***@127.0.0.1:15672/api did not finish within 5 ms',
    internal: false,
  },
  {
    name: 'a plain Error: INTERNAL, generic',
    err: new Error('Cannot read properties of undefined'),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
  {
    name: 'a TypeError: INTERNAL, generic',
    err: new TypeError('x is not a function'),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
  {
    name: 'an Error with a password: INTERNAL, nothing of it shown',
    err: new Error('amqp://admin:s3cret@rabbit failed'),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
  { name: 'a thrown string', err: 'boom', code: status.INTERNAL, details: GENERIC, internal: true },
  { name: 'undefined', err: undefined, code: status.INTERNAL, details: GENERIC, internal: true },
  { name: 'null', err: null, code: status.INTERNAL, details: GENERIC, internal: true },
  {
    name: 'an object that only looks like InvalidMetadataError',
    err: Object.assign(new Error('invalid trigger metadata: x'), { name: 'InvalidMetadataError', problems: ['x'] }),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
  {
    name: 'an AbortSignal.timeout reason (TimeoutError)',
    err: new DOMException('The operation was aborted due to timeout', 'TimeoutError'),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
  {
    name: 'an error carrying a gRPC code of its own',
    err: Object.assign(new Error('x'), { code: status.NOT_FOUND }),
    code: status.INTERNAL,
    details: GENERIC,
    internal: true,
  },
];

describe('toStatus', () => {
  it.each(CASES)('$name', ({ err, code, details, internal }) => {
    expect(toStatus(err)).toEqual({ code, details, internal });
  });
});
