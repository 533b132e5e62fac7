/**
 * `kmj status`: one screen for what a user otherwise gathers from three tools: the queue in
 * RabbitMQ, what the scaler tells KEDA right now, and the latest MLflow runs of the queue's
 * experiment. Each part is read on its own; whatever cannot be reached is shown as such, with
 * the reason, and the rest is still shown.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { connect } from 'amqplib';
import { stringify as toYaml } from 'yaml';
import { raceAbort, sleep } from '../common/abort.ts';
import { ConfigError, readConfig } from '../common/config.ts';
import { BacklogNotFoundError, NotFoundError } from '../common/errors.ts';
import type { FieldSpecs } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { RUN_TAG } from '../common/run-tags.ts';
import { mlflowFromEnv, runUrl } from '../mlflow/client.ts';
import type { MlflowTracking } from '../mlflow/tracking.ts';
import { checkQueues } from '../rabbitmq/inspect.ts';
import { ManagementQueueReader } from '../rabbitmq/management.ts';
import { defaultManagementUrl, RABBITMQ_ENV, vhostOf } from '../rabbitmq/settings.ts';
import { deadLetterQueueOf } from '../rabbitmq/topology.ts';
import { ScalerClient } from '../scaler/client.ts';
import type { CommandContext } from './context.ts';
import { kafkaStatus } from './kafka-status.ts';
import { kafkaConnection } from '../kafka/settings.ts';
import { UsageError } from './usage.ts';
import { formatAge, readScaledJob, type ScaledJobReport } from '../kubernetes/scaledjob.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

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

/** What one source answered; `notFound` when the thing asked for does not exist (it was reachable). */
type Part<T> = { ok: true; value: T } | { ok: false; error: string; notFound?: boolean };

/**
 * The queue as RabbitMQ reports it. `ready` and `consumers` come from AMQP (a passive declare:
 * real time, what the scaler reads) unless AMQP failed; `unacked` only from the management API,
 * whose statistics are sampled (every 5 s by default) and so lag the queue.
 */
export interface RabbitReading {
  readonly source: 'amqp' | 'management';
  readonly ready: number;
  readonly consumers: number;
  readonly unacked?: number;
  readonly deadLettered?: number;
  /** Why a figure is missing or came from the lagging source. */
  readonly note?: string;
}

export interface StatusReport {
  readonly queue: string;
  readonly kubernetes?: Part<ScaledJobReport>;
  readonly rabbitmq: Part<RabbitReading>;
  readonly scaler: Part<{ address: string; metricName: string; value: number; active: boolean; snapshotAgeMs?: number }>;
  readonly mlflow: Part<{
    experiment: string;
    experimentId?: string;
    runs: Array<{
      runId: string;
      requestId?: string;
      status: string;
      outcome: string;
      seconds?: number;
      rows?: number;
      accuracy?: number;
      error?: string;
      url: string;
    }>;
  }>;
}

async function part<T>(fn: () => Promise<T>): Promise<Part<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (err) {
    return { ok: false, error: messageOf(err), ...(err instanceof NotFoundError ? { notFound: true } : {}) };
  }
}

async function readRabbit(
  env: { RABBITMQ_URL: string; RABBITMQ_MANAGEMENT_URL: string | undefined },
  queue: string,
): Promise<RabbitReading> {
  const dead = deadLetterQueueOf(queue);
  const signal = AbortSignal.timeout(5000);
  const sampled = (async () => {
    const mgmt = new ManagementQueueReader({ url: env.RABBITMQ_MANAGEMENT_URL ?? defaultManagementUrl(env.RABBITMQ_URL) });
    const vhost = vhostOf(env.RABBITMQ_URL);
    const q = await mgmt.read(vhost, queue, signal);
    const d = await mgmt.read(vhost, dead, signal).catch(() => undefined);
    return { q, d };
  })();
  sampled.catch(() => undefined); // awaited below
  let amqp: { ready: number; consumers: number; deadLettered?: number };
  try {
    amqp = await readAmqp(env.RABBITMQ_URL, queue, dead, signal);
  } catch (err) {
    if (err instanceof NotFoundError) throw err;
    // No AMQP answer: the management API's sampled figures, said to be such, and why.
    const m = await sampled.catch((mgmtErr: unknown) => {
      throw new Error(`AMQP: ${messageOf(err)}; management API: ${messageOf(mgmtErr)}`);
    });
    return {
      source: 'management',
      ready: m.q.ready,
      consumers: m.q.consumers,
      unacked: m.q.unacked,
      ...(m.d ? { deadLettered: m.d.ready + m.d.unacked } : {}),
      note: `AMQP failed (${messageOf(err)}): management statistics, up to 5 s old`,
    };
  }
  const m = await sampled.catch((mgmtErr: unknown) => messageOf(mgmtErr));
  if (typeof m === 'string') return { source: 'amqp', ...amqp, note: `unacknowledged: n/a (management API: ${m})` };
  return { source: 'amqp', ...amqp, unacked: m.q.unacked };
}

/** Ready messages and consumers of `queue`, and the dead-letter queue's depth, by passive declares. */
async function readAmqp(
  url: string,
  queue: string,
  dead: string,
  signal: AbortSignal,
): Promise<{ ready: number; consumers: number; deadLettered?: number }> {
  const conn = await raceAbort(connect(url, { timeout: 5000, noDelay: true }), signal);
  conn.on('error', () => undefined);
  try {
    const found = await raceAbort(checkQueues(conn, [queue, dead]), signal);
    const q = found.get(queue);
    if (!q) throw new BacklogNotFoundError(`queue ${JSON.stringify(queue)}: not found in vhost ${JSON.stringify(vhostOf(url))}`);
    const d = found.get(dead);
    return { ready: q.messageCount, consumers: q.consumerCount, ...(d ? { deadLettered: d.messageCount } : {}) };
  } finally {
    await conn.close().catch(() => undefined);
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

async function readScaler(
  q: ScalerQuestion,
  metricsUrl: string,
  queue: string,
): Promise<StatusReport['scaler'] extends Part<infer T> ? T : never> {
  const address = q.address;
  const channelOptions =
    q.serverName !== undefined ? { 'grpc.ssl_target_name_override': q.serverName, 'grpc.default_authority': q.serverName } : undefined;
  const client = new ScalerClient(address, {
    timeoutMs: 4000,
    ...(q.credentials ? { credentials: q.credentials } : {}),
    ...(channelOptions ? { channelOptions } : {}),
  });
  try {
    const poll = await client.poll(q.metadata, q.name, q.namespace);
    if (!poll.ok) {
      const details = poll.error.details.replace(/\. Resolution note:.*$/s, '');
      const code = grpc.status[poll.error.code];
      if (code === 'NOT_FOUND') throw new NotFoundError(details);
      // grpc-js's own words for "nothing answered there", as opposed to the scaler's UNAVAILABLE.
      const noAnswer =
        (code === 'UNAVAILABLE' && /^(No connection established|failed to connect)/i.test(details)) || code === 'DEADLINE_EXCEEDED';
      if (noAnswer) {
        const why = (/Last error: (.*)$/.exec(details)?.[1] ?? details).replace(/^Error: /, '');
        throw new Error(
          `no scaler answers at ${address} (${why}): set KMJ_SCALER_ADDRESS, or reach the in-cluster scaler with \`kubectl -n ${q.namespace === 'default' ? '<namespace>' : q.namespace} port-forward svc/kmj-scaler 6000:6000\``,
        );
      }
      throw new Error(`${code}: ${details}`);
    }
    let snapshotAgeMs: number | undefined;
    try {
      const res = await fetch(`${metricsUrl.replace(/\/$/, '')}/debug/targets`, { signal: AbortSignal.timeout(3000) });
      const body = (await res.json()) as { targets: Array<{ labels: { name: string; mode: string }; ageMs?: number }> };
      snapshotAgeMs = body.targets.find((t) => t.labels.name === queue && t.labels.mode === (q.metadata['mode'] ?? 'backlog'))?.ageMs;
    } catch {
      snapshotAgeMs = undefined; // the age is extra; the value above is what KEDA sees
    }
    return {
      address,
      metricName: poll.view.metricName,
      value: poll.view.value,
      active: poll.view.active,
      ...(snapshotAgeMs !== undefined ? { snapshotAgeMs } : {}),
    };
  } finally {
    client.close();
  }
}

async function readMlflow(
  tracking: MlflowTracking | undefined,
  experiment: string,
  limit: number,
): Promise<StatusReport['mlflow'] extends Part<infer T> ? T : never> {
  if (!tracking) throw new Error('MLFLOW_TRACKING_URI is not set');
  const signal = AbortSignal.timeout(8000);
  const found = await tracking.findExperiment(experiment, signal, 0);
  if (!found) return { experiment, runs: [] };
  const experimentId = found.experimentId;
  const searched = await tracking.searchRuns(
    [experimentId],
    { maxResults: limit, orderBy: ['attributes.start_time DESC'], maxRetries: 0 },
    signal,
  );
  const runs = searched.map((run) => {
    const { tags, metrics } = run;
    const outcome =
      run.info.status === 'FINISHED'
        ? 'finished'
        : run.info.status === 'RUNNING'
          ? 'running'
          : (tags[RUN_TAG.outcome] ?? run.info.status.toLowerCase());
    return {
      runId: run.info.run_id,
      ...(tags[RUN_TAG.requestId] !== undefined ? { requestId: tags[RUN_TAG.requestId] } : {}),
      status: run.info.status,
      outcome,
      ...(run.info.start_time !== undefined && run.info.end_time !== undefined
        ? { seconds: (run.info.end_time - run.info.start_time) / 1000 }
        : {}),
      ...(metrics['rows'] !== undefined ? { rows: metrics['rows'] } : {}),
      ...(metrics['accuracy_score'] !== undefined ? { accuracy: metrics['accuracy_score'] } : {}),
      ...(tags[RUN_TAG.error] !== undefined ? { error: tags[RUN_TAG.error] } : {}),
      url: runUrl(tracking, experimentId, run.info.run_id),
    };
  });
  return { experiment, experimentId, runs };
}

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
      part(() => readRabbit(env, q)),
      part(() => readScaler(asked, env.KMJ_SCALER_METRICS_URL, q)),
      part(() => readMlflow(tracking, target.experiment ?? q, target.limit)),
    ]);
    return { queue: q, ...(kubernetes ? { kubernetes } : {}), rabbitmq, scaler, mlflow };
  } finally {
    await tracking?.http.close();
  }
}

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

function render(r: StatusReport, wide: boolean): string {
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

const OUTPUTS = ['json', 'yaml', 'wide'] as const;

export async function runStatus(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
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
  if (values.help) {
    ctx.stdout.write(STATUS_HELP);
    return EXIT.OK;
  }
  if (values.kafka) {
    const problems: string[] = [];
    if (values.group === undefined) problems.push('--group: is required with --kafka');
    for (const flag of ['queue', 'scaledjob', 'experiment', 'runs', 'watch'] as const)
      if (values[flag] !== undefined) problems.push(`--${flag}: not with --kafka`);
    if (problems.length > 0 || values.group === undefined) throw new UsageError(problems);
    const connectionProblems: string[] = [];
    const connection = kafkaConnection(ctx.env, connectionProblems);
    if (!connection)
      throw new ConfigError('status', connectionProblems.length > 0 ? connectionProblems : ['KAFKA_BROKERS: is required with --kafka']);
    const topics = values.topic === undefined ? [] : values.topic.split(',').filter(Boolean);
    const json = values.json === true || values.output === 'json';
    return kafkaStatus(ctx, connection, values.group, topics, json, createLogger({ level: 'warn', name: 'kmj-status', sync: true }));
  }
  const problems: string[] = [];
  if (values.queue === undefined && values.scaledjob === undefined) problems.push('--queue: is required');
  const limit = values.runs === undefined ? 10 : Number(values.runs);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
    problems.push(`--runs: ${JSON.stringify(values.runs)} must be an integer from 1 to 1000`);
  const output = values.output ?? (values.json ? 'json' : undefined);
  if (output !== undefined && !(OUTPUTS as readonly string[]).includes(output))
    problems.push(`--output: ${JSON.stringify(output)} must be one of ${OUTPUTS.join(', ')}`);
  for (const flag of ['namespace', 'context', 'kubeconfig'] as const) {
    if (values[flag] !== undefined && values.scaledjob === undefined) problems.push(`--${flag}: only with --scaledjob`);
  }
  if (problems.length > 0) throw new UsageError(problems);
  const target: StatusTarget = {
    queue: values.queue,
    experiment: values.experiment,
    limit,
    ...(values.scaledjob !== undefined
      ? { scaledJob: { name: values.scaledjob, namespace: values.namespace, context: values.context, kubeconfig: values.kubeconfig } }
      : {}),
  };
  const show = (report: StatusReport): void => {
    if (output === 'json') ctx.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    else if (output === 'yaml') ctx.stdout.write(`${values.watch ? '---\n' : ''}${toYaml(report)}`);
    else ctx.stdout.write(`${values.watch ? `\n${new Date().toISOString()}\n` : ''}${render(report, output === 'wide')}`);
  };
  const answered = (r: StatusReport): boolean => r.rabbitmq.ok && r.scaler.ok && r.mlflow.ok && (r.kubernetes?.ok ?? true);
  let report = await collectStatus(ctx, target);
  show(report);
  while (values.watch && !ctx.shutdownSignal.aborted) {
    await sleep(2000, ctx.shutdownSignal).catch(() => undefined);
    if (ctx.shutdownSignal.aborted) break;
    report = await collectStatus(ctx, target);
    show(report);
  }
  return answered(report) ? EXIT.OK : EXIT.FAILED;
}
