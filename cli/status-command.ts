/**
 * `kmj status`: one screen for what a user otherwise gathers from three tools: the queue in
 * RabbitMQ, what the scaler tells KEDA right now, and the latest MLflow runs of the queue's
 * experiment. Each part is read on its own; whatever cannot be reached is shown as such, with
 * the reason, and the rest is still shown.
 *
 * The command in four parts, by name: `parseStatusArgs` (flags, no I/O), `collectStatus` (the
 * reads, through rabbitmq/, scaler/client.ts, mlflow/ and kubernetes/), `decideStatus` (the exit
 * code) and `renderStatus` (text; JSON and YAML are the report itself).
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { stringify as toYaml } from 'yaml';
import { sleep } from '../common/abort.ts';
import { ConfigError, readConfig } from '../common/config.ts';
import { NotFoundError } from '../common/errors.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';
import type { FieldSpecs } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { requireKafkaConnection } from '../kafka/settings.ts';
import { formatAge, readScaledJob, type ScaledJobReport } from '../kubernetes/scaledjob.ts';
import { mlflowFromEnv } from '../mlflow/client.ts';
import { latestRuns, type ExperimentRuns } from '../mlflow/latest-runs.ts';
import type { MlflowTracking } from '../mlflow/tracking.ts';
import { readQueueStatus, type QueueStatus } from '../rabbitmq/queue-status.ts';
import { RABBITMQ_ENV } from '../rabbitmq/settings.ts';
import { explainUnreached, readingAgeMs, ScalerClient } from '../scaler/client.ts';
import type { CommandContext } from './context.ts';
import { collectKafkaStatus, decideKafkaStatus, renderKafkaStatus } from './kafka-status.ts';
import { UsageError } from './usage.ts';

export const STATUS_HELP = `Usage: kmj status --queue <q> [--experiment <e>] [-o json|yaml|wide]
       kmj status --scaledjob <name> [-n <namespace>] [--context <c>] [-o json|yaml|wide] [--watch]
       kmj status --kafka --group <g> [--topic <t>[,<t>…]] [--json]

Shows, for a request queue:
  the queue     ready, unacknowledged and consumers, and the dead-letter queue's messages
                (RabbitMQ management API; over AMQP when it is out of reach: ready and consumers)
  the scaler    what it reports to KEDA right now (GetMetricSpec, GetMetrics, IsActive, mode
                "backlog"), and the age of its reading
  MLflow        the latest runs of the queue's experiment: request, outcome, duration, rows,
                accuracy
With --scaledjob, also the ScaledJob in Kubernetes (READY, ACTIVE, paused, strategy, its trigger),
its Jobs with each worker's exit code as its outcome (finished, dead-lettered, requeued), and the
pods that are stuck (Unschedulable, image errors, long Pending) with the reason. The queue and
the scaler's question are then the trigger's own metadata, so the scaler is asked exactly what
KEDA asks and no new target is made in it.
Whatever is unreachable is shown with the reason; the rest is still shown.
With --kafka, a consumer group's lag per partition (committed offset, end offset, lag), on the
topics named or on every topic the group has committed offsets for (KAFKA_BROKERS, KAFKA_*).

Options:
  --queue <q>          request queue (with --scaledjob: the trigger's queueName)
  --experiment <e>     MLflow experiment (default: the queue name, as kmj submit uses)
  --runs <n>           how many runs to list (default 10)
  --scaledjob <name>   a KEDA ScaledJob whose trigger is the kmj scaler
  -n, --namespace <ns> its namespace (default: the context's, else "default")
  --context <c>        kubeconfig context (default: the current one)
  --kubeconfig <file>  kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, as kubectl)
  -o, --output <f>     json, yaml, or wide (more columns); --json is -o json
  -w, --watch          show it again every 2 s until interrupted
  -h, --help           show this help

Environment: RABBITMQ_URL, RABBITMQ_MANAGEMENT_URL, KMJ_SCALER_ADDRESS (default: the trigger's
scalerAddress, else 127.0.0.1:6000), KMJ_SCALER_METRICS_URL (http://127.0.0.1:8080),
KMJ_SCALER_TLS_CA_FILE with KMJ_SCALER_TLS_CLIENT_CERT_FILE and KMJ_SCALER_TLS_CLIENT_KEY_FILE
(a scaler that serves mutual TLS), KMJ_SCALER_TLS_SERVER_NAME (the name its certificate is checked
against when the address is another: kubectl port-forward, a cluster IP), MLFLOW_TRACKING_URI and
its auth variables.

Exit codes: 0 everything answered, 1 something was unreachable, 78 bad configuration or options.
`;

const STATUS_ENV = {
  ...RABBITMQ_ENV,
  KMJ_SCALER_ADDRESS: { kind: 'string' },
  KMJ_SCALER_METRICS_URL: { kind: 'url', protocols: ['http', 'https'], default: 'http://127.0.0.1:8080' },
  KMJ_SCALER_TLS_CA_FILE: { kind: 'string' },
  KMJ_SCALER_TLS_CLIENT_CERT_FILE: { kind: 'string' },
  KMJ_SCALER_TLS_CLIENT_KEY_FILE: { kind: 'string' },
  KMJ_SCALER_TLS_SERVER_NAME: { kind: 'string', pattern: /^[A-Za-z0-9.-]{1,253}$/, patternHint: 'a DNS name' },
} as const satisfies FieldSpecs;

const DEFAULT_SCALER_ADDRESS = '127.0.0.1:6000';

// ---- what is collected ----------------------------------------------------------------------

/** What one source answered; `notFound` when the thing asked for does not exist (it was reachable). */
export type Part<T> = { ok: true; value: T } | { ok: false; error: string; notFound?: boolean };

export interface ScalerReading {
  readonly address: string;
  readonly metricName: string;
  readonly value: number;
  readonly active: boolean;
  readonly snapshotAgeMs?: number;
}

export interface StatusReport {
  readonly queue: string;
  readonly kubernetes?: Part<ScaledJobReport>;
  readonly rabbitmq: Part<QueueStatus>;
  readonly scaler: Part<ScalerReading>;
  readonly mlflow: Part<ExperimentRuns>;
}

/** What `kmj status` was asked, its flags checked (`parseStatusArgs`). */
export type StatusRequest =
  | { readonly kind: 'help' }
  | { readonly kind: 'kafka'; readonly group: string; readonly topics: readonly string[]; readonly json: boolean }
  | {
      readonly kind: 'queue';
      readonly target: StatusTarget;
      readonly output: (typeof OUTPUTS)[number] | 'text';
      readonly watch: boolean;
    };

export interface StatusTarget {
  readonly queue?: string | undefined;
  readonly experiment?: string | undefined;
  readonly limit: number;
  readonly scaledJob?: {
    readonly name: string;
    readonly namespace?: string | undefined;
    readonly context?: string | undefined;
    readonly kubeconfig?: string | undefined;
  };
}

/** Nothing answered at the scaler's address: a typed failure, told apart by the channel's state, not by grpc-js' words. */
export class ScalerUnreachableError extends Error {
  override readonly name = 'ScalerUnreachableError';

  /** `why`: the operating system's or grpc-js' reason (`explainUnreached`); `namespace` the ScaledJob's, for the hint. */
  constructor(address: string, why: string, namespace: string) {
    super(
      `no scaler answers at ${address} (${why}): set KMJ_SCALER_ADDRESS, or reach the in-cluster scaler with \`kubectl -n ${namespace === 'default' ? '<namespace>' : namespace} port-forward svc/kmj-scaler 6000:6000\``,
    );
  }
}

// ---- parse ------------------------------------------------------------------------------------

const OUTPUTS = ['json', 'yaml', 'wide'] as const;

/** The flags, checked together: every problem in one UsageError. No I/O. */
export function parseStatusArgs(argv: readonly string[]): StatusRequest {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      queue: { type: 'string' },
      kafka: { type: 'boolean' },
      group: { type: 'string' },
      topic: { type: 'string' },
      experiment: { type: 'string' },
      runs: { type: 'string' },
      scaledjob: { type: 'string' },
      namespace: { type: 'string', short: 'n' },
      context: { type: 'string' },
      kubeconfig: { type: 'string' },
      output: { type: 'string', short: 'o' },
      json: { type: 'boolean' },
      watch: { type: 'boolean', short: 'w' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  const problems: string[] = [];
  if (values.kafka) {
    if (values.group === undefined) problems.push('--group: is required with --kafka');
    for (const flag of ['queue', 'scaledjob', 'experiment', 'runs', 'watch'] as const)
      if (values[flag] !== undefined) problems.push(`--${flag}: not with --kafka`);
    if (problems.length > 0 || values.group === undefined) throw new UsageError(problems);
    const topics = values.topic === undefined ? [] : values.topic.split(',').filter(Boolean);
    return { kind: 'kafka', group: values.group, topics, json: values.json === true || values.output === 'json' };
  }
  if (values.queue === undefined && values.scaledjob === undefined) problems.push('--queue: is required');
  const limit = values.runs === undefined ? 10 : Number(values.runs);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
    problems.push(`--runs: ${JSON.stringify(values.runs)} must be an integer from 1 to 1000`);
  const output = values.output ?? (values.json ? 'json' : undefined);
  const known = output === undefined || (OUTPUTS as readonly string[]).includes(output);
  if (!known) problems.push(`--output: ${JSON.stringify(output)} must be one of ${OUTPUTS.join(', ')}`);
  for (const flag of ['namespace', 'context', 'kubeconfig'] as const) {
    if (values[flag] !== undefined && values.scaledjob === undefined) problems.push(`--${flag}: only with --scaledjob`);
  }
  if (problems.length > 0) throw new UsageError(problems);
  return {
    kind: 'queue',
    target: {
      queue: values.queue,
      experiment: values.experiment,
      limit,
      ...(values.scaledjob !== undefined
        ? { scaledJob: { name: values.scaledjob, namespace: values.namespace, context: values.context, kubeconfig: values.kubeconfig } }
        : {}),
    },
    output: output === undefined ? 'text' : (output as (typeof OUTPUTS)[number]),
    watch: values.watch === true,
  };
}

// ---- collect ----------------------------------------------------------------------------------

async function part<T>(fn: () => Promise<T>): Promise<Part<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, error: messageOf(err), ...(err instanceof NotFoundError ? { notFound: true } : {}) };
  }
}

interface ScalerQuestion {
  readonly address: string;
  readonly metadata: Record<string, string>;
  readonly credentials?: grpc.ChannelCredentials;
  /** The name the scaler's certificate is checked against, when not the address's host. */
  readonly serverName?: string;
  /** The ScaledJob's name and namespace, as KEDA names its ScaledObjectRef. */
  readonly name: string;
  readonly namespace: string;
}

/** What KEDA sees: one poll as KEDA makes it, and how old the scaler's reading is (its /debug/targets). */
async function readScaler(q: ScalerQuestion, metricsUrl: string, queue: string): Promise<ScalerReading> {
  const channelOptions =
    q.serverName !== undefined ? { 'grpc.ssl_target_name_override': q.serverName, 'grpc.default_authority': q.serverName } : undefined;
  const client = new ScalerClient(q.address, {
    timeoutMs: 4000,
    ...(q.credentials ? { credentials: q.credentials } : {}),
    ...(channelOptions ? { channelOptions } : {}),
  });
  try {
    const poll = await client.poll(q.metadata, q.name, q.namespace);
    if (!poll.ok) {
      const { code, details, reached } = poll.error;
      if (!reached) throw new ScalerUnreachableError(q.address, await explainUnreached(q.address, poll.error), q.namespace);
      if (code === grpc.status.NOT_FOUND) throw new NotFoundError(details);
      throw new Error(`${grpc.status[code]}: ${details}`);
    }
    const snapshotAgeMs = await readingAgeMs(metricsUrl, queue, q.metadata['mode'] ?? 'backlog');
    return {
      address: q.address,
      metricName: poll.view.metricName,
      value: poll.view.value,
      active: poll.view.active,
      ...(snapshotAgeMs !== undefined ? { snapshotAgeMs } : {}),
    };
  } finally {
    client.close();
  }
}

async function readMlflow(tracking: MlflowTracking | undefined, experiment: string, limit: number): Promise<ExperimentRuns> {
  if (!tracking) throw new Error('MLFLOW_TRACKING_URI is not set');
  return latestRuns(tracking, experiment, limit);
}

function scalerCredentials(env: ReturnType<typeof readStatusEnv>): grpc.ChannelCredentials | undefined {
  const ca = env.KMJ_SCALER_TLS_CA_FILE;
  const cert = env.KMJ_SCALER_TLS_CLIENT_CERT_FILE;
  const key = env.KMJ_SCALER_TLS_CLIENT_KEY_FILE;
  if (ca === undefined && cert === undefined && key === undefined) return undefined;
  if ((cert === undefined) !== (key === undefined)) {
    throw new ConfigError('status', ['KMJ_SCALER_TLS_CLIENT_CERT_FILE and KMJ_SCALER_TLS_CLIENT_KEY_FILE: set both or neither']);
  }
  const read = (name: string, file: string | undefined): Buffer | null => {
    if (file === undefined) return null;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new ConfigError('status', [
        `${name}: cannot read ${JSON.stringify(file)}: ${(err as NodeJS.ErrnoException).code ?? messageOf(err)}`,
      ]);
    }
  };
  return grpc.credentials.createSsl(
    read('KMJ_SCALER_TLS_CA_FILE', ca),
    read('KMJ_SCALER_TLS_CLIENT_KEY_FILE', key),
    read('KMJ_SCALER_TLS_CLIENT_CERT_FILE', cert),
  );
}

function readStatusEnv(ctx: CommandContext) {
  return readConfig('status', STATUS_ENV, ctx.env);
}

/** Reads every part at once; what cannot be read is a failed part, never a thrown error (bad settings aside). */
export async function collectStatus(ctx: CommandContext, target: StatusTarget): Promise<StatusReport> {
  const env = readStatusEnv(ctx);
  const credentials = scalerCredentials(env);
  const log = createLogger({ level: 'silent', name: 'kmj-status' });
  let kubernetes: Part<ScaledJobReport> | undefined;
  let question: ScalerQuestion | undefined;
  let queue = target.queue;
  if (target.scaledJob) {
    const sj = target.scaledJob;
    kubernetes = await part(() =>
      readScaledJob({ env: ctx.env, kubeconfig: sj.kubeconfig, context: sj.context, namespace: sj.namespace }, sj.name),
    );
    if (kubernetes.ok) {
      const report = kubernetes.value;
      const trigger = report.triggers.find((t) => t.type === 'external' && t.metadata['queueName'] !== undefined);
      if (trigger) {
        queue ??= trigger.metadata['queueName'];
        question = {
          address: env.KMJ_SCALER_ADDRESS ?? trigger.metadata['scalerAddress'] ?? DEFAULT_SCALER_ADDRESS,
          metadata: trigger.metadata,
          name: report.name,
          namespace: report.namespace,
          ...(credentials ? { credentials } : {}),
          ...(env.KMJ_SCALER_TLS_SERVER_NAME !== undefined ? { serverName: env.KMJ_SCALER_TLS_SERVER_NAME } : {}),
        };
      }
    }
  }
  if (queue === undefined) {
    if (kubernetes?.ok)
      throw new ConfigError('status', [`--scaledjob: ${target.scaledJob?.name} has no external trigger with a queueName; give --queue`]);
    // The ScaledJob could not be read: show that, and nothing else can be asked.
    if (kubernetes && !kubernetes.ok) {
      const missing = { ok: false as const, error: 'no queue: the ScaledJob could not be read (give --queue)' };
      return { queue: '?', kubernetes, rabbitmq: missing, scaler: missing, mlflow: missing };
    }
    throw new UsageError(['--queue: is required (or --scaledjob)']);
  }
  const q = queue;
  question ??= {
    address: env.KMJ_SCALER_ADDRESS ?? DEFAULT_SCALER_ADDRESS,
    metadata: { queueName: q, mode: 'backlog' },
    name: 'kmj-status',
    namespace: 'default',
    ...(credentials ? { credentials } : {}),
    ...(env.KMJ_SCALER_TLS_SERVER_NAME !== undefined ? { serverName: env.KMJ_SCALER_TLS_SERVER_NAME } : {}),
  };
  const asked = question;
  const tracking = mlflowFromEnv('status', ctx.env, log);
  try {
    const [rabbitmq, scaler, mlflow] = await Promise.all([
      part(() => readQueueStatus({ url: env.RABBITMQ_URL, managementUrl: env.RABBITMQ_MANAGEMENT_URL }, q)),
      part(() => readScaler(asked, env.KMJ_SCALER_METRICS_URL, q)),
      part(() => readMlflow(tracking, target.experiment ?? q, target.limit)),
    ]);
    return { queue: q, ...(kubernetes ? { kubernetes } : {}), rabbitmq, scaler, mlflow };
  } finally {
    await tracking?.http.close();
  }
}

// ---- render -----------------------------------------------------------------------------------

function failed(p: { error: string; notFound?: boolean }): string {
  return `${p.notFound ? 'not found' : 'unreachable'}: ${p.error}`;
}

function renderKubernetes(k: Part<ScaledJobReport>, wide: boolean): string[] {
  if (!k.ok) return [`  Kubernetes ${failed(k)}`];
  const r = k.value;
  const lines = [
    `scaledjob ${r.namespace}/${r.name}   READY ${r.ready ?? 'Unknown'}   ACTIVE ${r.active ?? 'Unknown'}   PAUSED ${r.paused}   strategy ${r.strategy}   max ${r.maxReplicaCount}   poll ${r.pollingInterval}s   AGE ${formatAge(r.ageSeconds)}   (context ${r.context})`,
  ];
  for (const t of r.triggers) {
    const meta = Object.entries(t.metadata)
      .map(([key, v]) => `${key}=${v}`)
      .join(' ');
    lines.push(`  trigger    ${t.type} ${meta}${t.authenticationRef ? `   auth ${t.authenticationRef}` : ''}`);
  }
  const count = (s: string) => r.jobs.filter((j) => j.status === s).length;
  lines.push(
    `  Jobs       ${r.jobs.length}: ${count('pending')} pending, ${count('running')} running, ${count('succeeded')} succeeded, ${count('failed')} failed`,
  );
  const shown = wide ? r.jobs : r.jobs.slice(-10);
  if (shown.length > 0) {
    lines.push(
      `    ${'NAME'.padEnd(34)} ${'STATUS'.padEnd(10)} ${'OUTCOME'.padEnd(16)} ${'AGE'.padStart(7)}${wide ? `  ${'EXIT'.padStart(4)}  POD` : ''}`,
    );
    for (const j of shown) {
      lines.push(
        `    ${j.name.padEnd(34)} ${j.status.padEnd(10)} ${(j.outcome ?? '').padEnd(16)} ${formatAge(j.ageSeconds).padStart(7)}${wide ? `  ${String(j.exitCode ?? '').padStart(4)}  ${j.pod ?? ''}` : ''}`,
      );
    }
    if (shown.length < r.jobs.length) lines.push(`    … ${r.jobs.length - shown.length} older (-o wide shows all)`);
  }
  for (const p of r.stuck)
    lines.push(
      `  stuck      pod ${p.pod}: ${p.phase}, ${p.reason}${p.message ? `: ${p.message.split('\n')[0]?.slice(0, 160)}` : ''} (${formatAge(p.ageSeconds)})`,
    );
  return lines;
}

/** The report as text; `wide` shows every Job and more columns. No I/O. */
export function renderStatus(r: StatusReport, wide: boolean): string {
  const lines: string[] = [...(r.kubernetes ? renderKubernetes(r.kubernetes, wide) : []), `queue ${r.queue}`];
  if (r.rabbitmq.ok) {
    const q = r.rabbitmq.value;
    const unacked =
      q.unacked !== undefined
        ? `   unacknowledged ${q.unacked}${q.source === 'amqp' ? ' (management statistics, up to 5 s old)' : ''}`
        : '';
    lines.push(
      `  RabbitMQ   ready ${q.ready}   consumers ${q.consumers}   dead-lettered ${q.deadLettered ?? 'n/a'}   (${q.source === 'amqp' ? 'AMQP, real time' : 'management'})${unacked}${q.note ? `   [${q.note}]` : ''}`,
    );
  } else lines.push(`  RabbitMQ   ${failed(r.rabbitmq)}`);
  if (r.scaler.ok) {
    const s = r.scaler.value;
    const age = s.snapshotAgeMs !== undefined ? `, reading ${s.snapshotAgeMs} ms old` : '';
    lines.push(`  scaler     KEDA sees ${s.metricName} = ${s.value}, ${s.active ? 'active' : 'inactive'}${age}   (${s.address})`);
  } else lines.push(`  scaler     ${failed(r.scaler)}`);
  if (r.mlflow.ok) {
    const m = r.mlflow.value;
    if (m.runs.length === 0) lines.push(`  MLflow     experiment ${JSON.stringify(m.experiment)}: no runs yet`);
    else {
      lines.push(`  MLflow     latest runs of experiment ${JSON.stringify(m.experiment)}:`);
      lines.push(
        `    ${'request'.padEnd(38)} ${'outcome'.padEnd(14)} ${'seconds'.padStart(8)} ${'rows'.padStart(8)} ${'accuracy'.padStart(9)}`,
      );
      for (const run of m.runs) {
        lines.push(
          `    ${(run.requestId ?? run.runId).slice(0, 38).padEnd(38)} ${run.outcome.padEnd(14)} ${(run.seconds?.toFixed(2) ?? '').padStart(8)} ${String(run.rows ?? '').padStart(8)} ${(run.accuracy?.toFixed(4) ?? '').padStart(9)}${run.error ? `  ${run.error.slice(0, 100)}` : ''}`,
        );
      }
      const first = m.runs[0];
      if (first) lines.push(`    ${first.url.replace(/\/runs\/.*$/, '')}`);
    }
  } else lines.push(`  MLflow     ${failed(r.mlflow)}`);
  return `${lines.join('\n')}\n`;
}

// ---- decide -----------------------------------------------------------------------------------

/** 0 when every part answered, 1 when any did not (unreachable or not found). */
export function decideStatus(r: StatusReport): ExitCode {
  const answered = r.rabbitmq.ok && r.scaler.ok && r.mlflow.ok && (r.kubernetes?.ok ?? true);
  return answered ? EXIT.OK : EXIT.FAILED;
}

// ---- run: parse, then collect, decide and render -------------------------------------------------

export async function runStatus(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseStatusArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(STATUS_HELP);
    return EXIT.OK;
  }
  if (request.kind === 'kafka') {
    const log = createLogger({ level: 'warn', name: 'kmj-status', sync: true });
    const read = await collectKafkaStatus(requireKafkaConnection('status', ctx.env, 'with --kafka'), request.group, request.topics, log);
    const rendered = renderKafkaStatus(request.group, read, request.json);
    (read.ok ? ctx.stdout : ctx.stderr).write(rendered);
    return decideKafkaStatus(read);
  }
  const { target, output, watch } = request;
  const show = (report: StatusReport): void => {
    if (output === 'json') ctx.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else if (output === 'yaml') ctx.stdout.write(`${watch ? '---\n' : ''}${toYaml(report)}`);
    else ctx.stdout.write(`${watch ? `\n${new Date().toISOString()}\n` : ''}${renderStatus(report, output === 'wide')}`);
  };
  let report = await collectStatus(ctx, target);
  show(report);
  while (watch && !ctx.shutdownSignal.aborted) {
    await sleep(2000, ctx.shutdownSignal).catch(() => undefined); // Ctrl-C ends the wait; the loop checks it
    if (ctx.shutdownSignal.aborted) break;
    report = await collectStatus(ctx, target);
    show(report);
  }
  return decideStatus(report);
}
