// `kmj status` in its parts, without services: the flags (parseStatusArgs), the exit code
// (decideStatus, decideKafkaStatus) and the text (renderStatus, renderKafkaStatus) from reports
// built here; and how a failed poll tells "no scaler answers" from the scaler's own error, by the
// channel's state, against real sockets on loopback (nothing listening; a TCP peer that is not a
// gRPC server). The reads themselves, against the real services, are in test/cli/status.test.ts.
import { createServer, type Server, type Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { decideKafkaStatus, renderKafkaStatus, type KafkaStatusRead } from '../../cli/kafka-status.ts';
import { decideStatus, parseStatusArgs, renderStatus, type StatusReport } from '../../cli/status-command.ts';
import { UsageError } from '../../cli/usage.ts';
import { explainUnreached, ScalerClient } from '../../scaler/client.ts';

const answered: StatusReport = {
  queue: 'ml-requests',
  rabbitmq: { ok: true, value: { source: 'amqp', ready: 3, consumers: 1, unacked: 1, deadLettered: 2 } },
  scaler: { ok: true, value: { address: '127.0.0.1:6000', metricName: 's0-ml-requests', value: 4, active: true, snapshotAgeMs: 120 } },
  mlflow: {
    ok: true,
    value: {
      experiment: 'ml-requests',
      experimentId: '7',
      runs: [
        {
          runId: 'r1',
          requestId: 'req-1',
          status: 'FINISHED',
          outcome: 'finished',
          seconds: 1.5,
          rows: 150,
          accuracy: 0.97333,
          url: 'http://127.0.0.1:5000/#/experiments/7/runs/r1',
        },
      ],
    },
  },
};

describe('parseStatusArgs', () => {
  it('reads a queue request with its defaults', () => {
    expect(parseStatusArgs(['--queue', 'q'])).toEqual({
      kind: 'queue',
      target: { queue: 'q', experiment: undefined, limit: 10 },
      output: 'text',
      watch: false,
    });
    expect(parseStatusArgs(['--queue', 'q', '--json', '-w'])).toMatchObject({ output: 'json', watch: true });
    expect(parseStatusArgs(['--scaledjob', 'sj', '-n', 'kmj'])).toMatchObject({
      target: { scaledJob: { name: 'sj', namespace: 'kmj' } },
    });
    expect(parseStatusArgs(['-h'])).toEqual({ kind: 'help' });
  });

  it('reads a Kafka request: topics split on commas, --json or -o json', () => {
    expect(parseStatusArgs(['--kafka', '--group', 'g', '--topic', 'a,b,', '-o', 'json'])).toEqual({
      kind: 'kafka',
      group: 'g',
      topics: ['a', 'b'],
      json: true,
    });
  });

  it.each([
    [
      ['--runs', '0'],
      ['--queue: is required', '--runs: "0" must be an integer from 1 to 1000'],
    ],
    [
      ['--queue', 'q', '-o', 'xml', '-n', 'kmj'],
      ['--output: "xml" must be one of json, yaml, wide', '--namespace: only with --scaledjob'],
    ],
    [
      ['--kafka', '--queue', 'q', '--watch'],
      ['--group: is required with --kafka', '--queue: not with --kafka', '--watch: not with --kafka'],
    ],
  ])('%j: every problem in one error', (argv, problems) => {
    let thrown: unknown;
    try {
      parseStatusArgs(argv);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(UsageError);
    expect((thrown as UsageError).problems).toEqual(problems);
  });
});

describe('decideStatus and renderStatus', () => {
  it('everything answered: exit 0, one line per part, the runs as a table', () => {
    expect(decideStatus(answered)).toBe(EXIT.OK);
    expect(renderStatus(answered, false).split('\n')).toEqual([
      'queue ml-requests',
      '  RabbitMQ   ready 3   consumers 1   dead-lettered 2   (AMQP, real time)   unacknowledged 1 (management statistics, up to 5 s old)',
      '  scaler     KEDA sees s0-ml-requests = 4, active, reading 120 ms old   (127.0.0.1:6000)',
      '  MLflow     latest runs of experiment "ml-requests":',
      `    ${'request'.padEnd(38)} ${'outcome'.padEnd(14)}  seconds     rows  accuracy`,
      `    ${'req-1'.padEnd(38)} ${'finished'.padEnd(14)} ${'1.50'.padStart(8)} ${'150'.padStart(8)} ${'0.9733'.padStart(9)}`,
      '    http://127.0.0.1:5000/#/experiments/7',
      '',
    ]);
  });

  it('any part unreachable or not found: exit 1, that part says which and why, the rest still shown', () => {
    const scalerDown: StatusReport = {
      ...answered,
      scaler: { ok: false, error: 'no scaler answers at 127.0.0.1:6000 (connect ECONNREFUSED)' },
    };
    expect(decideStatus(scalerDown)).toBe(EXIT.FAILED);
    expect(renderStatus(scalerDown, false).split('\n').slice(0, 3)).toEqual([
      'queue ml-requests',
      expect.stringMatching(/^ {2}RabbitMQ {3}ready 3 /),
      '  scaler     unreachable: no scaler answers at 127.0.0.1:6000 (connect ECONNREFUSED)',
    ]);
    const missing: StatusReport = {
      ...answered,
      rabbitmq: { ok: false, error: 'queue "ml-requests": not found in vhost "/"', notFound: true },
    };
    expect(decideStatus(missing)).toBe(EXIT.FAILED);
    expect(renderStatus(missing, false).split('\n')[1]).toBe('  RabbitMQ   not found: queue "ml-requests": not found in vhost "/"');
    const noKube: StatusReport = { ...answered, kubernetes: { ok: false, error: 'scaledjob kmj/x', notFound: true } };
    expect(decideStatus(noKube)).toBe(EXIT.FAILED);
    expect(renderStatus(noKube, false).split('\n')[0]).toBe('  Kubernetes not found: scaledjob kmj/x');
  });
});

describe('decideKafkaStatus and renderKafkaStatus', () => {
  const read: KafkaStatusRead = {
    ok: true,
    topics: ['t'],
    rows: [
      { topic: 't', partition: 0, committed: 5, end: 9, start: 0, lag: 4 },
      { topic: 't', partition: 1, committed: null, end: 3, start: 0, lag: null },
    ],
  };

  it('read: exit 0, the table with the total, or the JSON', () => {
    expect(decideKafkaStatus(read)).toBe(EXIT.OK);
    expect(renderKafkaStatus('g', read, false)).toBe(
      [
        'consumer group g: lag 4 over 2 partitions',
        'TOPIC  PARTITION  COMMITTED  END  LAG',
        't      0          5          9    4',
        't      1          -          3    - (no commit)',
        '',
      ].join('\n'),
    );
    expect(JSON.parse(renderKafkaStatus('g', read, true))).toEqual({ group: 'g', topics: ['t'], lag: 4, partitions: read.rows });
  });

  it('a group that does not exist exits 1, Kafka out of reach exits 69, each with its reason', () => {
    const missing: KafkaStatusRead = { ok: false, error: 'consumer group "g": not found', notFound: true };
    expect(decideKafkaStatus(missing)).toBe(EXIT.FAILED);
    expect(renderKafkaStatus('g', missing, false)).toBe('kmj status: consumer group "g": not found\n');
    expect(decideKafkaStatus({ ok: false, error: 'Connection timeout', notFound: false })).toBe(EXIT.UNAVAILABLE);
  });
});

describe('a failed poll: no scaler answered, told by the channel state', () => {
  let closedPort: number;
  let tcpOnly: Server;
  let tcpOnlyPort: number;
  const taken: Socket[] = [];

  beforeAll(async () => {
    // A port that was just free: nothing listens on it.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    closedPort = (probe.address() as { port: number }).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    // A peer that takes the connection and never speaks.
    tcpOnly = createServer((socket) => taken.push(socket));
    await new Promise<void>((resolve) => tcpOnly.listen(0, '127.0.0.1', resolve));
    tcpOnlyPort = (tcpOnly.address() as { port: number }).port;
  });

  afterAll(async () => {
    for (const socket of taken) socket.destroy();
    await new Promise<void>((resolve) => tcpOnly.close(() => resolve()));
  });

  it('nothing listening: UNAVAILABLE, not reached, and the reason is the connect error', async () => {
    const address = `127.0.0.1:${closedPort}`;
    const client = new ScalerClient(address, { timeoutMs: 3000 });
    try {
      const poll = await client.poll({ queueName: 'q' });
      expect(poll).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE, reached: false } });
      if (!poll.ok) expect(await explainUnreached(address, poll.error)).toBe(`connect ECONNREFUSED ${address}`);
    } finally {
      client.close();
    }
  });

  it('a TCP peer that is not a gRPC server: DEADLINE_EXCEEDED, not reached, said to be such', async () => {
    const address = `127.0.0.1:${tcpOnlyPort}`;
    const client = new ScalerClient(address, { timeoutMs: 1000 });
    try {
      const poll = await client.poll({ queueName: 'q' });
      expect(poll).toMatchObject({ ok: false, error: { code: grpc.status.DEADLINE_EXCEEDED, reached: false } });
      if (!poll.ok)
        expect(await explainUnreached(address, poll.error)).toBe(
          'it takes TCP connections but gave no gRPC answer before the deadline: not a gRPC server, or TLS on one side only',
        );
    } finally {
      client.close();
    }
  });

  it('a name that does not resolve: the resolver says so', async () => {
    const address = 'kmj-no-such-host.invalid:6000';
    const client = new ScalerClient(address, { timeoutMs: 3000 });
    try {
      const poll = await client.poll({ queueName: 'q' });
      expect(poll).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE, reached: false } });
      if (!poll.ok)
        expect(await explainUnreached(address, poll.error)).toMatch(/^getaddrinfo (ENOTFOUND|EAI_AGAIN) kmj-no-such-host\.invalid$/);
    } finally {
      client.close();
    }
  });
});
