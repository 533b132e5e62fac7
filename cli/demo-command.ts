/**
 * `kmj demo`: the whole system on one machine, as it runs on the cluster.
 *
 * With RabbitMQ, MLflow and the sample models in place (`make demo` starts and registers them),
 * it runs the scaler, publishes a batch of sample requests, and each second polls the scaler the
 * way KEDA polls a ScaledJob (GetMetricSpec, GetMetrics, IsActive), applies KEDA's `default`
 * scaling strategy, and starts that many real `kmj worker` processes, at most --max-jobs at a
 * time, one per message. It ends with a table of the runs and the MLflow UI address.
 *
 * In parts, by name: `parseDemoArgs` (flags), the scenario in `runDemo` (the scaler, the publish,
 * the polling loop, one line per second by `renderTick`), then `demoRows` and the queue's
 * dead-letters (read through mlflow/latest-runs.ts and rabbitmq/topology.ts), `decideDemo` (the
 * verdict and exit code) and `renderDemo` (the closing text).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { sleep } from '../common/abort.ts';
import { ConfigError } from '../common/config.ts';
import { createLogger } from '../common/log.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { deleteRequestTopologyAt, takeDeadLettersAt, type DeadLetter } from '../rabbitmq/topology.ts';
import { DEFAULT_RABBITMQ_URL } from '../rabbitmq/settings.ts';
import { startScaler } from '../scaler/app.ts';
import { ScalerClient, defaultStrategyJobs } from '../scaler/client.ts';
import { loadScalerConfig } from '../scaler/config.ts';
import { queueRuns } from '../mlflow/latest-runs.ts';
import type { SearchedRun } from '../mlflow/tracking.ts';
import { UsageError } from './usage.ts';
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

// ---- parse ---------------------------------------------------------------------------------------

export type DemoRequest = { readonly kind: 'help' } | { readonly kind: 'run'; readonly maxJobs: number };

/** The flags, checked; no I/O. */
export function parseDemoArgs(argv: readonly string[]): DemoRequest {
  const { values } = parseArgs({
    args: [...argv],
    options: { 'max-jobs': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  const maxJobs = values['max-jobs'] === undefined ? 3 : Number(values['max-jobs']);
  if (!Number.isInteger(maxJobs) || maxJobs < 1 || maxJobs > 50)
    throw new UsageError([`--max-jobs: ${JSON.stringify(values['max-jobs'])} must be an integer from 1 to 50`]);
  return { kind: 'run', maxJobs };
}

// ---- collect: the scenario, then what it left in MLflow and RabbitMQ -------------------------------

/** One line of the live view: what the scaler told KEDA this second and what the Jobs are doing. */
export interface DemoTick {
  readonly seconds: number;
  readonly backlog: number;
  readonly active: boolean;
  readonly unfinished: number;
  readonly created: number;
  readonly finished: number;
  readonly failed: number;
}

export const TICK_HEADER =
  ' time  backlog  active  unfinished Jobs  new Jobs  finished  failed   (backlog = ready + consumers: what the scaler tells KEDA)';

export function renderTick(t: DemoTick): string {
  return `${t.seconds.toFixed(0).padStart(4)}s  ${String(t.backlog).padStart(7)}  ${String(t.active).padStart(6)}  ${String(t.unfinished).padStart(15)}  ${String(t.created).padStart(8)}  ${String(t.finished).padStart(8)}  ${String(t.failed).padStart(6)}`;
}

/** A run of the demo's queue as the table shows it. */
export interface DemoRow {
  readonly requestId: string;
  readonly model: string;
  readonly status: string;
  readonly rows: string;
  readonly score: string;
  readonly seconds: string;
}

/** The table's rows from the queue's runs, in their order. */
export function demoRows(runs: readonly SearchedRun[]): DemoRow[] {
  return runs.map((run) => {
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
}

/** What one demo left behind: everything its verdict and its table are made of. */
export interface DemoOutcome {
  readonly requests: number;
  readonly jobs: number;
  readonly rows: readonly DemoRow[];
  readonly deadLetters: readonly DeadLetter[];
  /** Workers still running when the demo ended, with the end of each one's log. */
  readonly stuck: ReadonlyArray<{ readonly name: string; readonly logTail: string }>;
  readonly mlflowUi: string;
  readonly logDir: string;
}

// ---- decide ----------------------------------------------------------------------------------------

/** Did the demo do what it shows: every good request FINISHED, the one bad one dead-lettered, no worker left running. */
export function decideDemo(o: DemoOutcome): { readonly code: ExitCode; readonly verdict: string } {
  const finished = o.rows.filter((r) => r.status === 'FINISHED').length;
  const good = o.requests - 1;
  const problems = [
    ...(finished !== good ? [`${finished} of the ${good} good requests FINISHED`] : []),
    ...(o.deadLetters.length !== 1 ? [`${o.deadLetters.length} dead-lettered, not the 1 bad request`] : []),
    ...(o.stuck.length > 0 ? [`${o.stuck.length} workers still running at the end`] : []),
  ];
  return problems.length === 0
    ? { code: EXIT.OK, verdict: `demo OK: ${finished} FINISHED, 1 dead-lettered, ${o.jobs} Jobs for ${o.requests} messages` }
    : { code: EXIT.FAILED, verdict: `demo FAILED: ${problems.join('; ')} (worker logs above)` };
}

// ---- render ----------------------------------------------------------------------------------------

/** The closing text: the runs' table, the dead-letters, the Jobs, the stuck workers' logs, and the verdict last. */
export function renderDemo(o: DemoOutcome, verdict: string): string[] {
  // The model column is as wide as its widest entry, up to 40; a longer one is cut in the middle.
  const modelWidth = Math.min(40, Math.max(5, ...o.rows.map((r) => r.model.length)));
  return [
    '',
    `${'request'.padEnd(14)} ${'model'.padEnd(modelWidth)} ${'status'.padEnd(9)} ${'rows'.padStart(5)}  ${'score'.padEnd(15)} ${'seconds'.padStart(7)}`,
    ...o.rows.map(
      (r) =>
        `${r.requestId.padEnd(14)} ${fit(r.model, modelWidth)} ${r.status.padEnd(9)} ${r.rows.padStart(5)}  ${r.score.padEnd(15)} ${r.seconds.padStart(7)}`,
    ),
    ...o.deadLetters.map((d) => `dead-lettered: ${d.messageId ?? '?'}: ${d.reason}`),
    '',
    `${o.jobs} worker Jobs for ${o.requests} messages; MLflow UI: ${o.mlflowUi}`,
    ...(o.stuck.length > 0
      ? [
          `still running when the demo ended (stopped now): ${o.stuck.map((s) => s.name).join(', ')}`,
          ...o.stuck.map((s) => `${s.name}.log ends:\n${s.logTail}`),
        ]
      : []),
    `worker logs: ${o.logDir}`,
    // The last line says plainly whether the demo did what it shows.
    verdict,
  ];
}

/** `text` padded to `width`, or cut in the middle with "…" when longer. */
export function fit(text: string, width: number): string {
  if (text.length <= width) return text.padEnd(width);
  const head = Math.ceil((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}

// ---- run: parse, the scenario, collect, decide and render -------------------------------------------

export async function runDemo(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseDemoArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(DEMO_HELP);
    return EXIT.OK;
  }
  const { maxJobs } = request;
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
    out(TICK_HEADER);
    const metadata = { queueName: queue, mode: 'backlog', targetSize: '1' };
    const started = Date.now();
    for (let tick = 0; tick < 110 && !ctx.shutdownSignal.aborted; tick++) {
      const poll = await client.poll(metadata, 'ml-requests', 'kmj');
      const unfinished = jobs.filter((j) => !j.done).length;
      const seconds = (Date.now() - started) / 1000;
      if (!poll.ok) {
        out(`${seconds.toFixed(0).padStart(4)}s  scaler: ${grpc.status[poll.error.code]}: ${poll.error.details}`);
      } else {
        const created = defaultStrategyJobs(poll.view, unfinished, maxJobs);
        out(
          renderTick({
            seconds,
            backlog: poll.view.value,
            active: poll.view.active,
            unfinished,
            created,
            finished: jobs.filter((j) => j.done && j.exitCode === 0).length,
            failed: jobs.filter((j) => j.done && j.exitCode !== 0).length,
          }),
        );
        for (let i = 0; i < created; i++)
          jobs.push(startJob(queue, ctx.env, fixturesDir, mlflowUri, join(logDir, `job-${jobs.length + 1}.log`)));
        if (!poll.view.active && unfinished === 0 && jobs.length > 0) break;
      }
      await sleep(1000, ctx.shutdownSignal).catch(() => undefined); // Ctrl-C ends the wait; the loop then ends too
    }

    const { experimentId, runs } = await queueRuns(tracking, experiment, queue);
    const outcome: DemoOutcome = {
      requests: requests.length,
      jobs: jobs.length,
      rows: demoRows(runs),
      deadLetters: await takeDeadLettersAt(amqpUrl, queue, AbortSignal.timeout(30_000)),
      stuck: jobs.flatMap((j, i) =>
        j.exitCode === null ? [{ name: `job-${i + 1}`, logTail: tailOf(join(logDir, `job-${i + 1}.log`), 8) }] : [],
      ),
      mlflowUi: `${tracking.http.baseUrl}/#/experiments/${experimentId}`,
      logDir,
    };
    const { code, verdict } = decideDemo(outcome);
    for (const line of renderDemo(outcome, verdict)) out(line);
    return code;
  } finally {
    for (const j of jobs) if (j.exitCode === null) j.child.kill('SIGTERM');
    client.close();
    await scaler.close(1000);
    // The demo is over either way; a leftover demo queue is harmless and says which run it was.
    await deleteRequestTopologyAt(amqpUrl, queue, AbortSignal.timeout(10_000)).catch(() => undefined);
    await tracking.http.close();
  }
}

/** A worker started as a Job; Kubernetes reports the Job complete a moment after its pod exits. */
function startJob(
  queue: string,
  env: Readonly<Record<string, string | undefined>>,
  fixturesDir: string,
  mlflowUri: string,
  logFile: string,
): DemoJob {
  const child = startWorker(queue, env, fixturesDir, mlflowUri, logFile);
  const job: DemoJob = { child, done: false, exitCode: null };
  child.once('exit', (code) => {
    job.exitCode = code;
    setTimeout(() => {
      job.done = true;
    }, JOB_COMPLETION_LAG_MS).unref();
  });
  return job;
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
