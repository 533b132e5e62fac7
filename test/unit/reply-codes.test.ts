// The broker's reply code read from amqplib's errors (rabbitmq/reply-codes.ts), and which of them
// another try will not change. The errors are built as amqplib 2.3 builds them (lib/channel.js
// sets `code` on a channel close, lib/connection.js on a connection close; its handshake errors
// carry the code only in the message). The real broker's refusals are in test/cli/setup.test.ts
// and test/cli/submit.test.ts.
import { describe, expect, it } from 'vitest';
import { AMQP_REPLY, isRefusal, replyCodeOf } from '../../rabbitmq/reply-codes.ts';

const withCode = (message: string, code: number | string): Error => Object.assign(new Error(message), { code });

describe('replyCodeOf and isRefusal', () => {
  it.each([
    ['a channel close (406)', withCode('Operation failed: QueueDeclare; 406 (PRECONDITION-FAILED) with message "…"', 406), 406, true],
    ['a passive declare of a missing queue (404)', withCode('Operation failed: QueueDeclare; 404 (NOT-FOUND) …', 404), 404, false],
    ['a connection forced closed (320)', withCode('Connection closed: 320 (CONNECTION-FORCED) with message "…"', 320), 320, false],
    [
      'a wrong password in the handshake (403)',
      new Error('Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused"'),
      403,
      true,
    ],
    [
      'a vhost the user may not open (530)',
      new Error('Expected ConnectionOpenOk; got <ConnectionClose channel:0>'),
      AMQP_REPLY.NOT_ALLOWED,
      true,
    ],
    ['a refused TCP connection', withCode('connect ECONNREFUSED 127.0.0.1:5672', 'ECONNREFUSED'), undefined, false],
    ['a socket closed in the handshake', new Error('Socket closed abruptly during opening handshake'), undefined, false],
    ['not an error', 'text', undefined, false],
  ])('%s', (_what, err, code, refusal) => {
    expect(replyCodeOf(err)).toBe(code);
    expect(isRefusal(err)).toBe(refusal);
  });
});
