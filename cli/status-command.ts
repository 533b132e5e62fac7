/**
 * `kmj status`: one screen for what a user otherwise gathers from three tools: the queue in
 * RabbitMQ, what the scaler tells KEDA right now, and the latest MLflow runs of the queue's
 * experiment. Each part is read on its own; whatever cannot be reached is shown as such, with
 * the reason, and the rest is still shown.
 */
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';
import { ConfigError, readConfig } from '../common/config.ts';
import type { FieldSpecs } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { deadLetterQueueOf } from '../common/topology.ts';
import { ScalerClient } from '../scaler/client.ts';
import { defaultManagementUrl } from '../scaler/config.ts';
import { vhostOf } from '../scaler/sources/rabbitmq.ts';
import { ManagementQueueReader } from '../scaler/sources/rabbitmq-management.ts';
import type { MlflowTracking } from '../worker/mlflow/tracking.ts';
import { ERROR_TAG, OUTCOME_TAG, REQUEST_ID_TAG } from '../worker/run-store.ts';
import type { CommandContext } from './context.ts';
import { mlflowFromEnv, runUrl } from './mlflow-client.ts';

export const STATUS_HELP = `Usage: kmj status --queue <q> [--experiment <e>] [--json]

Shows, for a request queue:
  the queue     ready, unacknowledged and consumers, and the dead-letter queue's messages
                (RabbitMQ management API; over AMQP when it is out of reach: ready and consumers)
  the scaler    what it reports to KEDA right now (GetMetricSpec, GetMetrics, IsActive, mode
                "backlog"), and the age of its reading
  MLflow        the latest runs of the queue's experiment: request, outcome, duration, rows,
                accuracy
Whatever is unreachable is shown with the reason; the rest is still shown.

Options:
  --queue <q>          request queue
  --experiment <e>     MLflow experiment (default: the queue name, as kmj submit uses)
  --runs <n>           how many runs to list (default 10)
  --json               machine-readable output
  -h, --help           show this help

Environment: RABBITMQ_URL, RABBITMQ_MANAGEMENT_URL, KMJ_SCALER_ADDRESS (127.0.0.1:6000),
KMJ_SCALER_METRICS_URL (http://127.0.0.1:8080), MLFLOW_TRACKING_URI and its auth variables.

Exit codes: 0 everything answered, 1 something was unreachable, 78 bad configuration.
`;

const STATUS_ENV = {
  RABBITMQ_URL: { kind: 'url', protocols: ['amqp', 'amqps'], default: 'amqp://guest:guest@127.0.0.1:5672' },
  RABBITMQ_MANAGEMENT_URL: { kind: 'url', protocols: ['http', 'https'] },
  KMJ_SCALER_ADDRESS: { kind: 'string', default: '127.0.0.1:6000' },
  KMJ_SCALER_METRICS_URL: { kind: 'url', protocols: ['http', 'https'], default: 'http://127.0.0.1:8080' },
} as const satisfies FieldSpecs;

type Part<T> = { ok: true; value: T } | { ok: false; error: string };

export interface StatusReport {
  readonly queue: string;
  readonly rabbitmq: Part<{ source: 'management' | 'amqp'; ready: number; unacked?: number; consumers: number; deadLettered?: number }>;
  readonly scaler: Part<{ address: string; metricName: string; value: number; active: boolean; snapshotAgeMs?: number }>;
  readonly mlflow: Part<{
    experiment: string;
    experimentId?: string;
    runs: Array<{ runId: string; requestId?: string; status: string; outcome: string; seconds?: number; rows?: number; accuracy?: number; error?: string; url: string }>;
  }>;
}

async function part<T>(fn: () => Promise<T>): Promise<Part<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, error: messageOf(err) };
  }
}

async function readRabbit(env: { RABBITMQ_URL: string; RABBITMQ_MANAGEMENT_URL: string | undefined }, queue: string): Promise<StatusReport['rabbitmq'] extends Part<infer T> ? T : never> {
  const mgmt = new ManagementQueueReader({ url: env.RABBITMQ_MANAGEMENT_URL ?? defaultManagementUrl(env.RABBITMQ_URL) });
  const vhost = vhostOf(env.RABBITMQ_URL);
  const signal = AbortSignal.timeout(5000);
  try {
    const q = await mgmt.read(vhost, queue, signal);
    const dead = await mgmt.read(vhost, deadLetterQueueOf(queue), signal).catch(() => undefined);
    return { source: 'management', ready: q.ready, unacked: q.unacked, consumers: q.consumers, ...(dead ? { deadLettered: dead.ready + dead.unacked } : {}) };
  } catch {
    // No management API: AMQP still says ready and consumers.
    const conn = await connect(env.RABBITMQ_URL, { timeout: 5000, noDelay: true });
    conn.on('error', () => undefined);
    try {
      const ch = await conn.createChannel();
      ch.on('error', () => undefined);
      const ok = await ch.checkQueue(queue).catch((err: unknown) => {
        throw (err as { code?: unknown }).code === 404 ? new Error(`queue ${JSON.stringify(queue)} does not exist`) : err;
      });
      let dead: number | undefined;
      try {
        const ch2 = await conn.createChannel();
        ch2.on('error', () => undefined);
        dead = (await ch2.checkQueue(deadLetterQueueOf(queue))).messageCount;
      } catch {
        dead = undefined;
      }
      return { source: 'amqp', ready: ok.messageCount, consumers: ok.consumerCount, ...(dead !== undefined ? { deadLettered: dead } : {}) };
    } finally {
      await conn.close().catch(() => undefined);
    }
  }
}

async function readScaler(address: string, metricsUrl: string, queue: string): Promise<StatusReport['scaler'] extends Part<infer T> ? T : never> {
  const client = new ScalerClient(address, { timeoutMs: 4000 });
  try {
    const poll = await client.poll({ queueName: queue, mode: 'backlog' }, 'kmj-status');
    if (!poll.ok) throw new Error(`${poll.code}: ${poll.details.replace(/\. Resolution note:.*$/s, '')}`);
    let snapshotAgeMs: number | undefined;
    try {
      const res = await fetch(`${metricsUrl.replace(/\/$/, '')}/debug/targets`, { signal: AbortSignal.timeout(3000) });
      const body = (await res.json()) as { targets: Array<{ labels: { name: string; mode: string }; ageMs?: number }> };
      snapshotAgeMs = body.targets.find((t) => t.labels.name === queue && t.labels.mode === 'backlog')?.ageMs;
    } catch {
      snapshotAgeMs = undefined; // the age is extra; the value above is what KEDA sees
    }
    return { address, metricName: poll.view.metricName, value: poll.view.value, active: poll.view.active, ...(snapshotAgeMs !== undefined ? { snapshotAgeMs } : {}) };
  } finally {
    client.close();
  }
}

async function readMlflow(tracking: MlflowTracking | undefined, experiment: string, limit: number): Promise<StatusReport['mlflow'] extends Part<infer T> ? T : never> {
  if (!tracking) throw new Error('MLFLOW_TRACKING_URI is not set');
  const signal = AbortSignal.timeout(8000);
  const found = await tracking.findExperiment(experiment, signal, 0);
  if (!found) return { experiment, runs: [] };
  const experimentId = found.experimentId;
  const r = await tracking.http.api<{ runs?: Array<{ info: { run_id: string; status: string; start_time?: number; end_time?: number }; data: { metrics?: Array<{ key: string; value: number }>; tags?: Array<{ key: string; value: string }> } }> }>('runs/search', {
    method: 'POST',
    json: { experiment_ids: [experimentId], max_results: limit, order_by: ['attributes.start_time DESC'] },
    signal,
    maxRetries: 0,
  });
  const runs = (r.runs ?? []).map((run) => {
    const tags = Object.fromEntries((run.data.tags ?? []).map((t) => [t.key, t.value]));
    const metrics = Object.fromEntries((run.data.metrics ?? []).map((m) => [m.key, m.value]));
    const outcome = run.info.status === 'FINISHED' ? 'finished' : run.info.status === 'RUNNING' ? 'running' : (tags[OUTCOME_TAG] ?? run.info.status.toLowerCase());
    return {
      runId: run.info.run_id,
      ...(tags[REQUEST_ID_TAG] !== undefined ? { requestId: tags[REQUEST_ID_TAG] } : {}),
      status: run.info.status,
      outcome,
      ...(run.info.start_time !== undefined && run.info.end_time !== undefined ? { seconds: (run.info.end_time - run.info.start_time) / 1000 } : {}),
      ...(metrics['rows'] !== undefined ? { rows: metrics['rows'] } : {}),
      ...(metrics['accuracy_score'] !== undefined ? { accuracy: metrics['accuracy_score'] } : {}),
      ...(tags[ERROR_TAG] !== undefined ? { error: tags[ERROR_TAG] } : {}),
      url: runUrl(tracking, experimentId, run.info.run_id),
    };
  });
  return { experiment, experimentId, runs };
}

export async function collectStatus(ctx: CommandContext, queue: string, experiment: string, limit: number): Promise<StatusReport> {
  const env = readConfig('status', STATUS_ENV, ctx.env);
  const log = createLogger({ level: 'silent', name: 'kmj-status' });
  const tracking = mlflowFromEnv('status', ctx.env, log);
  try {
    const [rabbitmq, scaler, mlflow] = await Promise.all([
      part(() => readRabbit(env, queue)),
      part(() => readScaler(env.KMJ_SCALER_ADDRESS, env.KMJ_SCALER_METRICS_URL, queue)),
      part(() => readMlflow(tracking, experiment, limit)),
    ]);
    return { queue, rabbitmq, scaler, mlflow };
  } finally {
    await tracking?.http.close();
  }
}

function render(r: StatusReport): string {
  const lines: string[] = [`queue ${r.queue}`];
  if (r.rabbitmq.ok) {
    const q = r.rabbitmq.value;
    lines.push(
      `  RabbitMQ   ready ${q.ready}   unacknowledged ${q.unacked ?? 'n/a (AMQP only)'}   consumers ${q.consumers}   dead-lettered ${q.deadLettered ?? 'n/a'}   (${q.source})`,
    );
  } else lines.push(`  RabbitMQ   unreachable: ${r.rabbitmq.error}`);
  if (r.scaler.ok) {
    const s = r.scaler.value;
    const age = s.snapshotAgeMs !== undefined ? `, reading ${s.snapshotAgeMs} ms old` : '';
    lines.push(`  scaler     KEDA sees ${s.metricName} = ${s.value}, ${s.active ? 'active' : 'inactive'}${age}   (${s.address})`);
  } else lines.push(`  scaler     unreachable: ${r.scaler.error}`);
  if (r.mlflow.ok) {
    const m = r.mlflow.value;
    if (m.runs.length === 0) lines.push(`  MLflow     experiment ${JSON.stringify(m.experiment)}: no runs yet`);
    else {
      lines.push(`  MLflow     latest runs of experiment ${JSON.stringify(m.experiment)}:`);
      lines.push(`    ${'request'.padEnd(38)} ${'outcome'.padEnd(14)} ${'seconds'.padStart(8)} ${'rows'.padStart(8)} ${'accuracy'.padStart(9)}`);
      for (const run of m.runs) {
        lines.push(
          `    ${(run.requestId ?? run.runId).slice(0, 38).padEnd(38)} ${run.outcome.padEnd(14)} ${(run.seconds?.toFixed(2) ?? '').padStart(8)} ${String(run.rows ?? '').padStart(8)} ${(run.accuracy?.toFixed(4) ?? '').padStart(9)}${run.error ? `  ${run.error.slice(0, 100)}` : ''}`,
        );
      }
      const first = m.runs[0];
      if (first) lines.push(`    ${first.url.replace(/\/runs\/.*$/, '')}`);
    }
  } else lines.push(`  MLflow     unreachable: ${r.mlflow.error}`);
  return `${lines.join('\n')}\n`;
}

export async function runStatus(argv: readonly string[], ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: { queue: { type: 'string' }, experiment: { type: 'string' }, runs: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    ctx.stdout.write(STATUS_HELP);
    return 0;
  }
  const problems: string[] = [];
  if (values.queue === undefined) problems.push('--queue: is required');
  const limit = values.runs === undefined ? 10 : Number(values.runs);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) problems.push(`--runs: ${JSON.stringify(values.runs)} must be an integer from 1 to 1000`);
  if (problems.length > 0 || values.queue === undefined) throw new ConfigError('status', problems);
  const report = await collectStatus(ctx, values.queue, values.experiment ?? values.queue, limit);
  ctx.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : render(report));
  return report.rabbitmq.ok && report.scaler.ok && report.mlflow.ok ? 0 : 1;
}
