/**
 * `kmj demo`: the whole system on one machine, as it runs on the cluster.
 *
 * With RabbitMQ, MLflow and the sample models in place (`make demo` starts and registers them),
 * it runs the scaler, publishes a batch of sample requests, and each second polls the scaler the
 * way KEDA polls a ScaledJob (GetMetricSpec, GetMetrics, IsActive), applies KEDA's `default`
 * scaling strategy, and starts that many real `kmj worker` processes, at most --max-jobs at a
 * time, one per message. It ends with a table of the runs and the MLflow UI address.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { connect } from 'amqplib';
import { sleep } from '../common/abort.ts';
import { ConfigError } from '../common/config.ts';
import { createLogger } from '../common/log.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { deadLetterQueueOf, deadLetterReason } from '../rabbitmq/topology.ts';
import { DEFAULT_RABBITMQ_URL } from '../rabbitmq/settings.ts';
import { startScaler } from '../scaler/app.ts';
import { ScalerClient, defaultStrategyJobs } from '../scaler/client.ts';
import { loadScalerConfig } from '../scaler/config.ts';
import { quoteFilterValue, type MlflowTracking } from '../mlflow/tracking.ts';
import type { CommandContext } from './context.ts';
import { mlflowFromEnv } from '../mlflow/client.ts';
import { RequestPublisher } from '../rabbitmq/publisher.ts';
import { RUN_TAG } from '../common/run-tags.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const DEMO_HELP = `Usage: kmj demo [--max-jobs <n>]

The whole system on this machine: the scaler, a batch of sample requests on a new queue, and
real "kmj worker" processes started one per message the way a KEDA ScaledJob with the "default"
scaling strategy starts Jobs, printing each second what the scaler reports. Ends with a table of
the MLflow runs and the MLflow UI address.

Needs RabbitMQ (RABBITMQ_URL), MLflow (MLFLOW_TRACKING_URI, default http://127.0.0.1:5000) and
the sample models: "make demo" starts the services and registers the models, then runs this.

The workers share one model cache, as Jobs on a node share a ReadWriteMany volume:
KMJ_MODEL_CACHE_DIR, default .run/demo-model-cache in the checkout. Each worker's log (what
"kubectl logs" shows of a Job's pod) is written to .run/demo-logs/<queue>/job-<n>.log.

Options:
  --max-jobs <n>   the ScaledJob's maxReplicaCount: workers at once (default 3)
  -h, --help       show this help
`;

/** How long after its pod exits Kubernetes reports a Job complete, as modelled here. */
const JOB_COMPLETION_LAG_MS = 1500;

interface Fixtures {
  readonly label: string;
  readonly regressorLabel: string;
  readonly features: string[];
  readonly models: Record<string, { name: string; version: number; alias?: string }>;
  readonly datasets: { csv: string; jsonl: string; artifactCsvUri: string };
}

interface DemoJob {
  readonly child: ChildProcess;
  done: boolean;
  exitCode: number | null;
}

function sampleRequests(f: Fixtures, experiment: string): Array<Record<string, unknown>> {
  const c = f.models['classifier'];
  const r = f.models['regressor'];
  const m = f.models['mlp'];
  const base = (model: string, dataset: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    version: 1,
    requestId: `demo-${randomUUID().slice(0, 8)}`,
    model,
    dataset,
    experiment,
    ...extra,
  });
  const out: Array<Record<string, unknown>> = [];
  for (let i = 0; i < 4; i++)
    out.push(base(`models:/${c?.name}@${c?.alias ?? 'champion'}`, { uri: f.datasets.csv }, { labelColumn: f.label }));
  for (let i = 0; i < 2; i++) out.push(base(`models:/${c?.name}/latest`, { uri: f.datasets.jsonl }, { labelColumn: f.label }));
  for (let i = 0; i < 2; i++)
    out.push(base(`models:/${r?.name}/${r?.version}`, { uri: f.datasets.csv }, { labelColumn: f.regressorLabel }));
  out.push(base(`models:/${m?.name}/${m?.version}`, { uri: f.datasets.artifactCsvUri }, { labelColumn: f.label }));
  const row = (values: number[], species: number): Record<string, unknown> =>
    Object.fromEntries<unknown>([...f.features.map((name, i): [string, unknown] => [name, values[i]]), [f.label, species]]);
  out.push(
    base(
      `models:/${c?.name}/${c?.version}`,
      { rows: [row([5.1, 3.5, 1.4, 0.2], 0), row([6.7, 3.0, 5.2, 2.3], 2)], name: 'two-flowers' },
      { labelColumn: f.label },
    ),
  );
  // One that cannot succeed: it is dead-lettered with the reason, and its run marked FAILED.
  out.push(base(`models:/${c?.name}@no-such-alias`, { uri: f.datasets.csv }));
  return out;
}

function startWorker(
  queue: string,
  env: Readonly<Record<string, string | undefined>>,
  fixturesDir: string,
  mlflowUri: string,
  logFile: string,
): ChildProcess {
  const log = openSync(logFile, 'a');
  try {
    return spawnWorker(queue, env, fixturesDir, mlflowUri, log);
  } finally {
    closeSync(log);
  }
}

function spawnWorker(
  queue: string,
  env: Readonly<Record<string, string | undefined>>,
  fixturesDir: string,
  mlflowUri: string,
  log: number,
): ChildProcess {
  return spawn(process.execPath, [join(PACKAGE_ROOT, 'bin', 'kmj.js'), 'worker', '--queue', queue], {
    env: {
      ...env,
      MLFLOW_TRACKING_URI: mlflowUri,
      KMJ_DATASET_ROOTS: fixturesDir,
      // One cache for all demo workers, like a ReadWriteMany cache volume on the cluster.
      KMJ_MODEL_CACHE_DIR: env['KMJ_MODEL_CACHE_DIR'] ?? join(PACKAGE_ROOT, '.run', 'demo-model-cache'),
      KMJ_WORKER_IDLE_TIMEOUT_MS: '5000',
      NODE_OPTIONS: '--max-semi-space-size=8',
      LOG_LEVEL: 'info',
    },
    stdio: ['ignore', log, log],
  });
}

interface RunRow {
  readonly requestId: string;
  readonly model: string;
  readonly status: string;
  readonly rows: string;
  readonly score: string;
  readonly seconds: string;
}

async function runTable(tracking: MlflowTracking, experiment: string, queue: string): Promise<{ rows: RunRow[]; experimentId: string }> {
  const experimentId = await tracking.experimentId(experiment, AbortSignal.timeout(10_000));
  const found = await tracking.searchRuns(
    [experimentId],
    { filter: `tags.\`${RUN_TAG.queue}\` = ${quoteFilterValue(queue)}`, maxResults: 100, orderBy: ['attributes.start_time ASC'] },
    AbortSignal.timeout(10_000),
  );
  const rows = found.map((run) => {
    const { tags, metrics } = run;
    const score =
      metrics['accuracy_score'] !== undefined
        ? `accuracy ${metrics['accuracy_score'].toFixed(3)}`
        : metrics['r2_score'] !== undefined
          ? `r2 ${metrics['r2_score'].toFixed(3)}`
          : '';
    return {
      requestId: tags[RUN_TAG.requestId] ?? '?',
      model:
        tags[RUN_TAG.modelName] !== undefined
          ? `${tags[RUN_TAG.modelName]} v${tags[RUN_TAG.modelVersion] ?? '?'}`
          : (tags[RUN_TAG.modelUri] ?? '?'),
      status: run.info.status,
      rows: metrics['rows'] !== undefined ? String(metrics['rows']) : '',
      score,
      seconds:
        run.info.start_time !== undefined && run.info.end_time !== undefined
          ? ((run.info.end_time - run.info.start_time) / 1000).toFixed(2)
          : '',
    };
  });
  return { rows, experimentId };
}

export async function runDemo(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const { values } = parseArgs({
    args: [...argv],
    options: { 'max-jobs': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    ctx.stdout.write(DEMO_HELP);
    return EXIT.OK;
  }
  const maxJobs = values['max-jobs'] === undefined ? 3 : Number(values['max-jobs']);
  if (!Number.isInteger(maxJobs) || maxJobs < 1 || maxJobs > 50)
    throw new ConfigError('demo', [`--max-jobs: ${JSON.stringify(values['max-jobs'])} must be an integer from 1 to 50`]);
  const fixturesDir = join(PACKAGE_ROOT, '.run', 'fixtures');
  const fixturesFile = join(fixturesDir, 'fixtures.json');
  if (!existsSync(fixturesFile)) {
    ctx.stderr.write(
      'kmj demo: the sample models are not registered (no .run/fixtures/fixtures.json); run "make demo", which starts the services and registers them\n',
    );
    return EXIT.UNAVAILABLE;
  }
  const f = JSON.parse(readFileSync(fixturesFile, 'utf8')) as Fixtures;
  const env = { ...ctx.env, MLFLOW_TRACKING_URI: ctx.env['MLFLOW_TRACKING_URI'] ?? 'http://127.0.0.1:5000' };
  const mlflowUri = env.MLFLOW_TRACKING_URI;
  const log = createLogger({ level: 'warn', name: 'kmj-demo' });
  const tracking = mlflowFromEnv('demo', env, log);
  if (!tracking) throw new ConfigError('demo', ['MLFLOW_TRACKING_URI: is required']);
  const out = (line: string): boolean => ctx.stdout.write(`${line}\n`);

  const config = loadScalerConfig({ ...ctx.env, KMJ_SCALER_HOST: '127.0.0.1', KMJ_SCALER_PORT: '0', KMJ_SCALER_METRICS_PORT: '0' });
  const amqpUrl = ctx.env['RABBITMQ_URL'] || DEFAULT_RABBITMQ_URL;
  const scaler = await startScaler(config, log);
  const client = new ScalerClient(`127.0.0.1:${scaler.grpcPort}`);
  const queue = `kmj-demo-${Date.now().toString(36)}`;
  const experiment = 'kmj-demo';
  const jobs: DemoJob[] = [];
  const logDir = join(PACKAGE_ROOT, '.run', 'demo-logs', queue);
  mkdirSync(logDir, { recursive: true });
  try {
    const requests = sampleRequests(f, experiment);
    const publisher = new RequestPublisher({ url: amqpUrl, queue, maxDeliveries: 5, confirmTimeoutMs: 30_000 });
    try {
      await publisher.open();
      await publisher.publish(
        requests.map((r) => ({ requestId: String(r['requestId']), body: Buffer.from(JSON.stringify(r)) })),
        ctx.shutdownSignal,
      );
    } finally {
      await publisher.close();
    }
    out(
      `published ${requests.length} requests to queue ${queue} (experiment "${experiment}"); scaler on 127.0.0.1:${scaler.grpcPort}; ScaledJob maxReplicaCount ${maxJobs}`,
    );
    out(' time  backlog  active  unfinished Jobs  new Jobs  finished  failed   (backlog = ready + consumers: what the scaler tells KEDA)');
    const metadata = { queueName: queue, mode: 'backlog', targetSize: '1' };
    const started = Date.now();
    for (let tick = 0; tick < 110 && !ctx.shutdownSignal.aborted; tick++) {
      const poll = await client.poll(metadata, 'ml-requests', 'kmj');
      const unfinished = jobs.filter((j) => !j.done).length;
      const ok = jobs.filter((j) => j.done && j.exitCode === 0).length;
      const failed = jobs.filter((j) => j.done && j.exitCode !== 0).length;
      const t = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
      if (!poll.ok) {
        out(`${t}s  scaler: ${grpc.status[poll.error.code]}: ${poll.error.details}`);
      } else {
        const create = defaultStrategyJobs(poll.view, unfinished, maxJobs);
        out(
          `${t}s  ${String(poll.view.value).padStart(7)}  ${String(poll.view.active).padStart(6)}  ${String(unfinished).padStart(15)}  ${String(create).padStart(8)}  ${String(ok).padStart(8)}  ${String(failed).padStart(6)}`,
        );
        for (let i = 0; i < create; i++) {
          const child = startWorker(queue, ctx.env, fixturesDir, mlflowUri, join(logDir, `job-${jobs.length + 1}.log`));
          const job: DemoJob = { child, done: false, exitCode: null };
          child.once('exit', (code) => {
            job.exitCode = code;
            // Kubernetes reports the Job complete a moment after the pod exits.
            setTimeout(() => {
              job.done = true;
            }, JOB_COMPLETION_LAG_MS).unref();
          });
          jobs.push(job);
        }
        if (!poll.view.active && unfinished === 0 && jobs.length > 0) break;
      }
      await sleep(1000, ctx.shutdownSignal).catch(() => undefined);
    }

    const { rows, experimentId } = await runTable(tracking, experiment, queue);
    out('');
    // The model column is as wide as its widest entry, up to 40; a longer one is cut in the middle.
    const modelWidth = Math.min(40, Math.max(5, ...rows.map((r) => r.model.length)));
    out(
      `${'request'.padEnd(14)} ${'model'.padEnd(modelWidth)} ${'status'.padEnd(9)} ${'rows'.padStart(5)}  ${'score'.padEnd(15)} ${'seconds'.padStart(7)}`,
    );
    for (const r of rows)
      out(
        `${r.requestId.padEnd(14)} ${fit(r.model, modelWidth)} ${r.status.padEnd(9)} ${r.rows.padStart(5)}  ${r.score.padEnd(15)} ${r.seconds.padStart(7)}`,
      );
    const dead = await deadLetters(amqpUrl, queue);
    for (const d of dead) out(`dead-lettered: ${d}`);
    out('');
    out(`${jobs.length} worker Jobs for ${requests.length} messages; MLflow UI: ${tracking.http.baseUrl}/#/experiments/${experimentId}`);
    const stuck = jobs.flatMap((j, i) => (j.exitCode === null ? [`job-${i + 1}`] : []));
    if (stuck.length > 0) {
      out(`still running when the demo ended (stopped now): ${stuck.join(', ')}`);
      for (const name of stuck) out(`${name}.log ends:\n${tailOf(join(logDir, `${name}.log`), 8)}`);
    }
    out(`worker logs: ${logDir}`);
    const finished = rows.filter((r) => r.status === 'FINISHED').length;
    const failed = [
      ...(finished !== requests.length - 1 ? [`${finished} of the ${requests.length - 1} good requests FINISHED`] : []),
      ...(dead.length !== 1 ? [`${dead.length} dead-lettered, not the 1 bad request`] : []),
      ...(stuck.length > 0 ? [`${stuck.length} workers still running at the end`] : []),
    ];
    // The last line says plainly whether the demo did what it shows.
    out(
      failed.length === 0
        ? `demo OK: ${finished} FINISHED, 1 dead-lettered, ${jobs.length} Jobs for ${requests.length} messages`
        : `demo FAILED: ${failed.join('; ')} (worker logs above)`,
    );
    return failed.length === 0 ? EXIT.OK : EXIT.FAILED;
  } finally {
    for (const j of jobs) if (j.exitCode === null) j.child.kill('SIGTERM');
    client.close();
    await scaler.close(1000);
    await deleteQueues(amqpUrl, queue);
    await tracking.http.close();
  }
}

/** `text` padded to `width`, or cut in the middle with "…" when longer. */
export function fit(text: string, width: number): string {
  if (text.length <= width) return text.padEnd(width);
  const head = Math.ceil((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}

/** The last `n` lines of a worker's log. */
function tailOf(file: string, n: number): string {
  try {
    return readFileSync(file, 'utf8')
      .trimEnd()
      .split('\n')
      .slice(-n)
      .map((l) => `  ${l}`)
      .join('\n');
  } catch (err) {
    return `  (cannot read ${file}: ${(err as Error).message})`;
  }
}

/** The reasons of the demo queue's dead-letters. */
async function deadLetters(amqpUrl: string, queue: string): Promise<string[]> {
  const conn = await connect(amqpUrl, { noDelay: true });
  try {
    const ch = await conn.createChannel();
    const reasons: string[] = [];
    for (;;) {
      const m = await ch.get(deadLetterQueueOf(queue), { noAck: true });
      if (m === false) break;
      reasons.push(`${m.properties.messageId ?? '?'}: ${deadLetterReason(m.properties.headers)}`);
    }
    await ch.close();
    return reasons;
  } finally {
    await conn.close().catch(() => undefined);
  }
}

async function deleteQueues(amqpUrl: string, queue: string): Promise<void> {
  const conn = await connect(amqpUrl, { noDelay: true }).catch(() => undefined);
  if (!conn) return;
  try {
    const ch = await conn.createChannel();
    await ch.deleteQueue(queue);
    await ch.deleteQueue(deadLetterQueueOf(queue));
  } catch {
    // the demo is over either way; a leftover demo queue is harmless
  } finally {
    await conn.close().catch(() => undefined);
  }
}
