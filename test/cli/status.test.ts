// The real `kmj status` process against the real RabbitMQ (management API and AMQP), a real scaler
// on free ports and the real MLflow server: what it shows when everything answers, and that each
// part that cannot be reached is shown with its reason while the others still are.
import { afterEach, describe, expect, it } from 'vitest';
import { STATUS_HELP } from '../../cli/status-command.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { RABBITMQ_MANAGEMENT_URL, RABBITMQ_URL } from '../helpers/env.ts';
import { closedPort, kmjWorkerEnv, lines, managementQueue, runKmj, type KmjExit } from '../helpers/kmj.ts';
import { useScalerAndRabbit } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';
import { MLFLOW_URL, fixtures, publish, request, runsOf, uniqueId, type RestRun } from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const NO_ALIAS = `model: registered model "${classifier?.name}" has no alias "nope"`;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const fixture = useScalerAndRabbit();

function scalerAddress(): string {
  return `127.0.0.1:${fixture.scaler().scaler.grpcPort}`;
}

function status(args: readonly string[], env: Record<string, string> = {}): Promise<KmjExit> {
  return runKmj(
    ['status', ...args],
    {
      env: {
        RABBITMQ_URL,
        RABBITMQ_MANAGEMENT_URL,
        KMJ_SCALER_ADDRESS: scalerAddress(),
        KMJ_SCALER_METRICS_URL: `http://127.0.0.1:${fixture.scaler().scaler.metricsPort}`,
        MLFLOW_TRACKING_URI: MLFLOW_URL,
        ...env,
      },
    },
    cleanups,
  );
}

/** The metric name the scaler gives KEDA for the trigger `kmj status` asks about (mode backlog). */
async function metricNameOf(queue: string): Promise<string> {
  const spec = await fixture
    .scaler()
    .client.client.getMetricSpec({ name: 'kmj-status', namespace: 'default', scalerMetadata: { queueName: queue, mode: 'backlog' } });
  if (!spec.ok) throw new Error(`GetMetricSpec: ${spec.error.details}`);
  return spec.value.metricSpecs[0]?.metricName ?? '';
}

/** Waits until the management plugin's sampled figures for the queue are `want` (they lag). */
async function managementShows(queue: string, want: { ready: number; unacked: number; consumers: number }): Promise<void> {
  await waitUntil(
    `the management API to show ${JSON.stringify(want)} for ${queue}`,
    async () => {
      const q = await managementQueue(queue);
      return { ready: q.messages_ready, unacked: q.messages_unacknowledged, consumers: q.consumers };
    },
    (seen) => seen.ready === want.ready && seen.unacked === want.unacked && seen.consumers === want.consumers,
    { timeoutMs: 20_000, stepMs: 250 },
  );
}

async function experimentId(name: string): Promise<string> {
  const res = await fetch(`${MLFLOW_URL}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(name)}`);
  return ((await res.json()) as { experiment: { experiment_id: string } }).experiment.experiment_id;
}

function seconds(run: RestRun): number {
  return ((run.info.end_time ?? Number.NaN) - run.info.start_time) / 1000;
}

function metric(run: RestRun, key: string): number | undefined {
  return run.data.metrics?.find((m) => m.key === key)?.value;
}

/** The run line `kmj status` prints. */
function runLine(requestId: string, outcome: string, run: RestRun, error?: string): string {
  const rows = metric(run, 'rows');
  const accuracy = metric(run, 'accuracy_score');
  return `    ${requestId.padEnd(38)} ${outcome.padEnd(14)} ${seconds(run).toFixed(2).padStart(8)} ${String(rows ?? '').padStart(8)} ${(accuracy?.toFixed(4) ?? '').padStart(9)}${error !== undefined ? `  ${error}` : ''}`;
}

describe('kmj status with everything reachable', () => {
  it('shows the queue, what the scaler tells KEDA, and the latest runs; --json has the same as data', async () => {
    const queue = await cleanups.requestQueue();
    // One request that finishes and one that is dead-lettered after its run started, both in the
    // experiment named after the queue (kmj submit's default), then three waiting.
    const good = request({ experiment: queue });
    await publish(queue, good);
    expect(
      (await runKmj(['worker', '--queue', queue], { env: kmjWorkerEnv(cleanups, { MLFLOW_TRACKING_URI: MLFLOW_URL }) }, cleanups)).code,
    ).toBe(0);
    const bad = request({ experiment: queue, model: `models:/${classifier?.name}@nope` });
    await publish(queue, bad);
    expect(
      (await runKmj(['worker', '--queue', queue], { env: kmjWorkerEnv(cleanups, { MLFLOW_TRACKING_URI: MLFLOW_URL }) }, cleanups)).code,
    ).toBe(10);
    for (let i = 0; i < 3; i++) await publish(queue, request({ experiment: queue }));
    await managementShows(queue, { ready: 3, unacked: 0, consumers: 0 });
    await managementShows(`${queue}.dead`, { ready: 1, unacked: 0, consumers: 0 });

    const runs = await runsOf(queue);
    const goodRun = runs.find((r) => r.data.tags?.some((t) => t.key === 'kmj.request_id' && t.value === good.requestId)) as RestRun;
    const badRun = runs.find((r) => r.data.tags?.some((t) => t.key === 'kmj.request_id' && t.value === bad.requestId)) as RestRun;
    expect(goodRun.info.status).toBe('FINISHED');
    expect(badRun.info.status).toBe('FAILED');
    const expId = await experimentId(queue);
    const metricName = await metricNameOf(queue);

    const text = await status(['--queue', queue]);
    expect(text.stderr).toBe('');
    expect(text.code).toBe(0);
    const out = lines(text.stdout);
    expect(out).toHaveLength(8);
    expect(out.slice(0, 2)).toEqual([
      `queue ${queue}`,
      '  RabbitMQ   ready 3   consumers 0   dead-lettered 1   (AMQP, real time)   unacknowledged 0 (management statistics, up to 5 s old)',
    ]);
    expect(out[2]).toMatch(
      new RegExp(`^  scaler     KEDA sees ${metricName} = 3, active, reading \\d+ ms old   \\(${scalerAddress()}\\)$`),
    );
    expect(out.slice(3)).toEqual([
      `  MLflow     latest runs of experiment "${queue}":`,
      `    ${'request'.padEnd(38)} ${'outcome'.padEnd(14)} ${'seconds'.padStart(8)} ${'rows'.padStart(8)} ${'accuracy'.padStart(9)}`,
      runLine(bad.requestId, 'dead-lettered', badRun, NO_ALIAS),
      runLine(good.requestId, 'finished', goodRun),
      `    ${MLFLOW_URL}/#/experiments/${expId}`,
    ]);
    expect(metric(goodRun, 'rows')).toBe(150);

    const json = await status(['--queue', queue, '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({
      queue,
      rabbitmq: { ok: true, value: { source: 'amqp', ready: 3, unacked: 0, consumers: 0, deadLettered: 1 } },
      scaler: { ok: true, value: { address: scalerAddress(), metricName, value: 3, active: true, snapshotAgeMs: expect.any(Number) } },
      mlflow: {
        ok: true,
        value: {
          experiment: queue,
          experimentId: expId,
          runs: [
            {
              runId: badRun.info.run_id,
              requestId: bad.requestId,
              status: 'FAILED',
              outcome: 'dead-lettered',
              seconds: seconds(badRun),
              error: NO_ALIAS,
              url: `${MLFLOW_URL}/#/experiments/${expId}/runs/${badRun.info.run_id}`,
            },
            {
              runId: goodRun.info.run_id,
              requestId: good.requestId,
              status: 'FINISHED',
              outcome: 'finished',
              seconds: seconds(goodRun),
              rows: 150,
              accuracy: metric(goodRun, 'accuracy_score'),
              url: `${MLFLOW_URL}/#/experiments/${expId}/runs/${goodRun.info.run_id}`,
            },
          ],
        },
      },
    });

    // --runs limits the list to the latest; --experiment reads another experiment.
    const one = JSON.parse((await status(['--queue', queue, '--json', '--runs', '1'])).stdout) as {
      mlflow: { value: { runs: Array<{ runId: string }> } };
    };
    expect(one.mlflow.value.runs.map((r) => r.runId)).toEqual([badRun.info.run_id]);
    const other = uniqueId('exp');
    const empty = await status(['--queue', queue, '--experiment', other]);
    expect(empty.code).toBe(0);
    expect(lines(empty.stdout)[3]).toBe(`  MLflow     experiment "${other}": no runs yet`);
  });
});

describe('kmj status with a part out of reach', () => {
  /** A queue with three ready messages, its management figures settled. */
  async function queueWithThree(): Promise<string> {
    const queue = await cleanups.requestQueue();
    for (let i = 0; i < 3; i++) await publish(queue, request({ experiment: queue }));
    await managementShows(queue, { ready: 3, unacked: 0, consumers: 0 });
    return queue;
  }

  it('MLflow down: exit 1, the MLflow line says unreachable with the reason, the queue and the scaler still shown', async () => {
    const queue = await queueWithThree();
    const port = await closedPort();
    const metricName = await metricNameOf(queue);
    const text = await status(['--queue', queue], { MLFLOW_TRACKING_URI: `http://127.0.0.1:${port}` });
    expect(text.code).toBe(1);
    const out = lines(text.stdout);
    expect(out).toHaveLength(4);
    expect(out[1]).toBe(
      '  RabbitMQ   ready 3   consumers 0   dead-lettered 0   (AMQP, real time)   unacknowledged 0 (management statistics, up to 5 s old)',
    );
    expect(out[2]).toMatch(
      new RegExp(`^  scaler     KEDA sees ${metricName} = 3, active, reading \\d+ ms old   \\(${scalerAddress()}\\)$`),
    );
    expect(out[3]).toMatch(new RegExp(`^  MLflow     unreachable: .*ECONNREFUSED 127\\.0\\.0\\.1:${port}`));

    const json = JSON.parse(
      (await status(['--queue', queue, '--json'], { MLFLOW_TRACKING_URI: `http://127.0.0.1:${port}` })).stdout,
    ) as Record<string, unknown>;
    expect(json).toEqual({
      queue,
      rabbitmq: { ok: true, value: { source: 'amqp', ready: 3, unacked: 0, consumers: 0, deadLettered: 0 } },
      scaler: { ok: true, value: { address: scalerAddress(), metricName, value: 3, active: true, snapshotAgeMs: expect.any(Number) } },
      mlflow: { ok: false, error: expect.stringMatching(new RegExp(`ECONNREFUSED 127\\.0\\.0\\.1:${port}`)) },
    });
  });

  it('MLFLOW_TRACKING_URI unset: exit 1, MLflow shown as not configured', async () => {
    const queue = await queueWithThree();
    const env: Record<string, string> = {
      RABBITMQ_URL,
      RABBITMQ_MANAGEMENT_URL,
      KMJ_SCALER_ADDRESS: scalerAddress(),
      KMJ_SCALER_METRICS_URL: `http://127.0.0.1:${fixture.scaler().scaler.metricsPort}`,
    };
    const text = await runKmj(['status', '--queue', queue], { env }, cleanups);
    expect(text.code).toBe(1);
    expect(lines(text.stdout)[1]).toBe(
      '  RabbitMQ   ready 3   consumers 0   dead-lettered 0   (AMQP, real time)   unacknowledged 0 (management statistics, up to 5 s old)',
    );
    expect(lines(text.stdout)[3]).toBe('  MLflow     unreachable: MLFLOW_TRACKING_URI is not set');
  });

  it('the scaler down: exit 1, the scaler line says nothing answers there, with the reason and what to set, the rest still shown', async () => {
    const queue = await queueWithThree();
    const port = await closedPort();
    const text = await status(['--queue', queue], {
      KMJ_SCALER_ADDRESS: `127.0.0.1:${port}`,
      KMJ_SCALER_METRICS_URL: `http://127.0.0.1:${port}`,
    });
    expect(text.code).toBe(1);
    const out = lines(text.stdout);
    expect(out[1]).toBe(
      '  RabbitMQ   ready 3   consumers 0   dead-lettered 0   (AMQP, real time)   unacknowledged 0 (management statistics, up to 5 s old)',
    );
    expect(out[2]).toBe(
      `  scaler     unreachable: no scaler answers at 127.0.0.1:${port} (connect ECONNREFUSED 127.0.0.1:${port}): set KMJ_SCALER_ADDRESS, or reach the in-cluster scaler with \`kubectl -n <namespace> port-forward svc/kmj-scaler 6000:6000\``,
    );
    expect(out[3]).toBe(`  MLflow     experiment "${queue}": no runs yet`);

    const json = JSON.parse((await status(['--queue', queue, '--json'], { KMJ_SCALER_ADDRESS: `127.0.0.1:${port}` })).stdout) as Record<
      string,
      unknown
    >;
    expect(json).toEqual({
      queue,
      rabbitmq: { ok: true, value: { source: 'amqp', ready: 3, unacked: 0, consumers: 0, deadLettered: 0 } },
      scaler: {
        ok: false,
        error: expect.stringMatching(new RegExp(`^no scaler answers at 127\\.0\\.0\\.1:${port} \\(connect ECONNREFUSED`)),
      },
      mlflow: { ok: true, value: { experiment: queue, runs: [] } },
    });
  });

  it('the management API unreachable: the AMQP figures, and why the unacknowledged count is missing', async () => {
    const queue = await cleanups.requestQueue();
    for (let i = 0; i < 3; i++) await publish(queue, request({ experiment: queue }));
    // A worker-like consumer holding one message: two ready, one consumer.
    const held = await fixture.rabbit().holdingConsumers(queue, 1);
    cleanups.defer(() => held.release());
    const port = await closedPort();
    const metricName = await metricNameOf(queue);
    const text = await status(['--queue', queue], { RABBITMQ_MANAGEMENT_URL: `http://guest:guest@127.0.0.1:${port}` });
    expect(text.code).toBe(0);
    const out = lines(text.stdout);
    expect(out[1]).toMatch(
      new RegExp(
        `^  RabbitMQ   ready 2   consumers 1   dead-lettered 0   \\(AMQP, real time\\)   \\[unacknowledged: n/a \\(management API: management API did not answer for queue "${queue}": .*ECONNREFUSED.*\\)\\]$`,
      ),
    );
    // backlog = ready + consumers
    expect(out[2]).toMatch(new RegExp(`^  scaler     KEDA sees ${metricName} = 3, active`));
    const json = JSON.parse(
      (await status(['--queue', queue, '--json'], { RABBITMQ_MANAGEMENT_URL: `http://127.0.0.1:${port}` })).stdout,
    ) as { rabbitmq: unknown };
    expect(json.rabbitmq).toEqual({
      ok: true,
      value: {
        source: 'amqp',
        ready: 2,
        consumers: 1,
        deadLettered: 0,
        note: expect.stringMatching(/^unacknowledged: n\/a \(management API: /),
      },
    });
  });

  it('a queue that does not exist: exit 1, RabbitMQ says not found (not unreachable), MLflow has no runs', async () => {
    const queue = uniqueId('nowhere');
    const json = await status(['--queue', queue, '--json']);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as { rabbitmq: unknown; mlflow: unknown; scaler: { ok: boolean } };
    expect(report.rabbitmq).toEqual({ ok: false, error: `queue "${queue}": not found in vhost "/"`, notFound: true });
    const text = await status(['--queue', queue]);
    expect(lines(text.stdout)[1]).toBe(`  RabbitMQ   not found: queue "${queue}": not found in vhost "/"`);
    expect(report.mlflow).toEqual({ ok: true, value: { experiment: queue, runs: [] } });
    expect(report.scaler.ok).toBe(false);
  });
});

describe('kmj status: help and configuration', () => {
  it('--help prints the help, exit 0', async () => {
    const result = await status(['--help']);
    expect(result).toMatchObject({ code: 0, stdout: STATUS_HELP, stderr: '' });
  });

  const usageCases = [
    { name: 'no --queue', args: [], problem: '--queue: is required' },
    { name: '--runs 0', args: ['--queue', 'q', '--runs', '0'], problem: '--runs: "0" must be an integer from 1 to 1000' },
    { name: '--runs 2.5', args: ['--queue', 'q', '--runs', '2.5'], problem: '--runs: "2.5" must be an integer from 1 to 1000' },
  ];

  it.each(usageCases)('$name: a usage error, exit 64, naming the flag and pointing at the help', async (c) => {
    const result = await status(c.args);
    expect(result).toMatchObject({ code: 64, stdout: '', stderr: `kmj status: ${c.problem}\nRun "kmj status --help" for usage.\n` });
  });

  it('a bad setting (RABBITMQ_MANAGEMENT_URL not http): exit 78 naming it', async () => {
    const result = await status(['--queue', 'q'], { RABBITMQ_MANAGEMENT_URL: 'ftp://127.0.0.1' });
    expect(result).toMatchObject({
      code: 78,
      stdout: '',
      stderr: 'kmj status: invalid status configuration: RABBITMQ_MANAGEMENT_URL: "ftp://127.0.0.1" must be a http or https URL\n',
    });
  });

  it('an unknown flag: exit 64; a mistyped one gets the flag it is closest to', async () => {
    const result = await status(['--queue', 'q', '--verbose']);
    expect(result).toMatchObject({
      code: 64,
      stdout: '',
      stderr: `kmj status: unknown flag --verbose\nRun "kmj status --help" for usage.\n`,
    });
    const typo = await status(['--qeue', 'q']);
    expect(typo).toMatchObject({
      code: 64,
      stdout: '',
      stderr: `kmj status: unknown flag --qeue; did you mean --queue?\nRun "kmj status --help" for usage.\n`,
    });
  });
});
