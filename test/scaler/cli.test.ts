// The real `kmj scaler` process, as the container runs it: start-up, probes, gRPC, SIGTERM, exit
// codes, configuration errors, and a broker password that must never show up anywhere.
import * as grpc from '@grpc/grpc-js';
import { createServer, type Server } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SCALER_HELP } from '../../cli/scaler-command.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { RABBITMQ_URL } from '../helpers/env.ts';
import { startKmj, type KmjExit, type KmjProcess } from '../helpers/kmj.ts';
import { RabbitFixture } from '../helpers/rabbit.ts';
import { KedaLikeClient } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

type Exit = Pick<KmjExit, 'code' | 'signal'>;

const cleanups = new Cleanups();

function kmj(args: string[], env: Record<string, string> = {}): KmjProcess {
  // Only what the test passes (besides PATH and HOME), so a developer's KMJ_* variables cannot leak in.
  return startKmj(args, { env: { KMJ_SCALER_HOST: '127.0.0.1', RABBITMQ_URL, ...env } }, cleanups);
}

/** How the process exited, once it has. */
async function exited(p: KmjProcess): Promise<Exit> {
  const { code, signal } = await p.done;
  return { code, signal };
}

/** The JSON log lines written so far; every stderr line of a running scaler is one. */
function logLines(p: KmjProcess): Array<Record<string, unknown>> {
  return p
    .stderr()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function waitForLog(p: KmjProcess, msg: string, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  const line = await waitUntil(
    `a "${msg}" log line`,
    () => {
      const hit = logLines(p).find((l) => l['msg'] === msg);
      // An exit ends the wait (undefined): the line will not come after it.
      if (hit || p.child.exitCode !== null) return hit;
      throw new Error(`stderr:\n${p.stderr()}`);
    },
    () => true,
    { timeoutMs, stepMs: 50 },
  );
  if (!line) throw new Error(`no "${msg}" log line (exit ${p.child.exitCode}); stderr:\n${p.stderr()}`);
  return line;
}

/** Starts `kmj scaler` on free ports and returns them, read from its 'scaler listening' line. */
async function startScalerProcess(
  env: Record<string, string> = {},
): Promise<{ p: KmjProcess; grpcPort: number; metricsPort: number; client: KedaLikeClient }> {
  const p = kmj(['scaler', '--port', '0', '--metrics-port', '0'], env);
  const listening = await waitForLog(p, 'scaler listening');
  expect(listening).toMatchObject({
    level: 'info',
    name: 'kmj-scaler',
    tls: 'off',
    grpcPort: expect.any(Number),
    metricsPort: expect.any(Number),
  });
  const grpcPort = listening['grpcPort'] as number;
  const metricsPort = listening['metricsPort'] as number;
  expect(grpcPort).toBeGreaterThan(0);
  expect(metricsPort).toBeGreaterThan(0);
  return { p, grpcPort, metricsPort, client: new KedaLikeClient(`127.0.0.1:${grpcPort}`) };
}

/** Sends SIGTERM and returns the exit and how long it took. */
async function terminate(p: KmjProcess): Promise<Exit & { ms: number }> {
  const started = Date.now();
  p.child.kill('SIGTERM');
  const exit = await exited(p);
  return { ...exit, ms: Date.now() - started };
}

let rabbit: RabbitFixture;

beforeAll(() => {
  rabbit = new RabbitFixture();
});

afterEach(() => cleanups.run());

afterAll(async () => {
  await rabbit?.close();
});

describe('kmj scaler', () => {
  it('starts, serves /healthz and gRPC, and exits 0 on SIGTERM within 5 s', async () => {
    const queue = await rabbit.queue('cli');
    await rabbit.publish(queue, 4);
    const { p, metricsPort, client } = await startScalerProcess();
    try {
      const health = await fetch(`http://127.0.0.1:${metricsPort}/healthz`);
      expect({ status: health.status, body: await health.text() }).toEqual({ status: 200, body: 'ok\n' });

      const spec = await client.getMetricSpec({ queueName: queue });
      expect(spec).toEqual({
        ok: true,
        value: {
          metricSpecs: [
            { metricName: expect.stringMatching(new RegExp(`^rabbitmq-${queue}-[0-9a-f]{10}$`)), targetSize: 1, targetSizeFloat: 1 },
          ],
        },
      });
      const metricName = spec.ok ? (spec.value.metricSpecs[0]?.metricName ?? '') : '';
      const values = await waitUntil(
        'the scaler started by the CLI to report the 4 messages published',
        () => client.getMetrics({ queueName: queue }, metricName),
        (r) => r.ok && r.value.metricValues[0]?.metricValue === 4,
      );
      expect(values).toEqual({ ok: true, value: { metricValues: [{ metricName, metricValue: 4, metricValueFloat: 4 }] } });
    } finally {
      client.close();
    }

    const exit = await terminate(p);
    expect({ code: exit.code, signal: exit.signal }).toEqual({ code: 0, signal: null });
    expect(exit.ms).toBeLessThan(5000);
    const msgs = logLines(p).map((l) => l['msg']);
    expect(logLines(p).find((l) => l['msg'] === 'shutting down')).toMatchObject({ level: 'info', signal: 'SIGTERM' });
    expect(msgs.indexOf('scaler stopped')).toBeGreaterThan(msgs.indexOf('shutting down'));
    expect(p.stdout()).toBe('');
  });

  it('exits 78 with one line naming every bad setting, the flag by its flag name', async () => {
    const p = kmj(['scaler', '--port', '99999'], { KMJ_SCALER_REFRESH_INTERVAL_MS: 'abc' });
    expect(await exited(p)).toEqual({ code: 78, signal: null });
    expect(p.stderr()).toBe(
      'kmj scaler: invalid scaler configuration: --port: "99999" must be an integer from 0 to 65535; ' +
        'KMJ_SCALER_REFRESH_INTERVAL_MS: "abc" must be a duration from 100ms to 1m (e.g. 30s, 250ms, 5m, or milliseconds)\n',
    );
    expect(p.stdout()).toBe('');
  });

  it('prints its usage for --help and -h and exits 0', async () => {
    for (const flag of ['--help', '-h']) {
      const p = kmj(['scaler', flag]);
      expect(await exited(p)).toEqual({ code: 0, signal: null });
      expect(p.stdout()).toBe(SCALER_HELP);
      expect(p.stdout()).toMatch(/^Usage: kmj scaler \[--host <addr>\] \[--port <grpc port>\] \[--metrics-port <http port>\]\n/);
      expect(p.stderr()).toBe('');
    }
  });

  it('exits 64 for an unknown flag and for a stray argument', async () => {
    const flag = kmj(['scaler', '--bogus']);
    expect(await exited(flag)).toEqual({ code: 64, signal: null });
    const lines = flag.stderr().split('\n');
    expect(lines[0]).toBe('kmj scaler: unknown flag --bogus');
    expect(lines.slice(-2)).toEqual(['Run "kmj scaler --help" for usage.', '']);
    expect(flag.stdout()).toBe('');

    const stray = kmj(['scaler', 'extra']);
    expect(await exited(stray)).toEqual({ code: 64, signal: null });
    expect(stray.stderr()).toMatch(/^kmj scaler: .*'extra'.*\nRun "kmj scaler --help" for usage\.\n$/);
  });

  it('starts with a wrong broker password, answers UNAVAILABLE, and never shows the password', async () => {
    const password = 'WrongPass123';
    const queue = await rabbit.queue('wrong-pass');
    const { p, metricsPort, client } = await startScalerProcess({ RABBITMQ_URL: `amqp://guest:${password}@127.0.0.1:5672` });
    try {
      const ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
      expect(ready.status).toBe(200);

      const amqp = await client.getMetrics({ queueName: queue });
      expect(amqp).toEqual({
        ok: false,
        error: {
          code: grpc.status.UNAVAILABLE,
          reached: true,
          details: expect.stringMatching(/^cannot reach the broker: .*ACCESS_REFUSED - Login was refused/),
        },
      });
      const mgmt = await client.getMetrics({ queueName: queue, mode: 'management' });
      expect(mgmt).toEqual({
        ok: false,
        error: {
          code: grpc.status.UNAVAILABLE,
          reached: true,
          details: `management API answered HTTP 401 for queue "${queue}" (check the connection credentials and the user's monitoring tag)`,
        },
      });
      for (const r of [amqp, mgmt]) expect(r.ok ? '' : r.error.details).not.toContain(password);
      await waitForLog(p, 'broker connection failed');
      const targets = await fetch(`http://127.0.0.1:${metricsPort}/debug/targets`).then((r) => r.text());
      expect(targets).toContain(`"name": "${queue}"`);
      expect(targets).not.toContain(password);
      const metrics = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
      expect(metrics).toContain('kmj_scaler_grpc_requests_total{method="GetMetrics",code="UNAVAILABLE"} 2');
      expect(metrics).not.toContain(password);
    } finally {
      client.close();
    }
    const exit = await terminate(p);
    expect(exit.code).toBe(0);
    expect(p.stderr()).not.toContain(password);
    expect(p.stdout()).not.toContain(password);
  });
});

describe('kmj scaler with a port already taken', () => {
  let blocker: Server;
  let takenPort: number;

  beforeAll(async () => {
    blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const address = blocker.address();
    takenPort = typeof address === 'object' && address ? address.port : 0;
  });

  afterAll(async () => {
    await new Promise((resolve) => blocker?.close(resolve));
  });

  /** The exit within `ms`, or 'still running'. */
  function exitWithin(p: KmjProcess, ms: number): Promise<Exit | 'still running'> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([exited(p), new Promise<'still running'>((r) => (timer = setTimeout(() => r('still running'), ms)))]).finally(() =>
      clearTimeout(timer),
    );
  }

  it('exits 70 naming the gRPC port it cannot listen on', async () => {
    const p = kmj(['scaler', '--port', String(takenPort), '--metrics-port', '0']);
    expect(await exitWithin(p, 5000)).toEqual({ code: 70, signal: null });
    expect(p.stderr()).toContain(`kmj: Error: cannot listen for gRPC on 127.0.0.1:${takenPort}: `);
    expect(p.stderr()).toContain('EADDRINUSE');
  });

  it('says which metrics port it cannot listen on', async () => {
    const p = kmj(['scaler', '--port', '0', '--metrics-port', String(takenPort)]);
    await waitUntil(
      'a first line on stderr',
      () => p.stderr(),
      (stderr) => stderr.includes('\n'),
      { timeoutMs: 5000, stepMs: 50 },
    );
    expect(p.stderr()).toMatch(
      new RegExp(
        `^kmj: Error: cannot listen for HTTP on 127\\.0\\.0\\.1:${takenPort}: listen EADDRINUSE: address already in use 127\\.0\\.0\\.1:${takenPort}\n`,
      ),
    );
  });

  it('exits 70 when the metrics port is taken', async () => {
    const p = kmj(['scaler', '--port', '0', '--metrics-port', String(takenPort)]);
    expect(await exitWithin(p, 3000)).toEqual({ code: 70, signal: null });
  });
});
