/**
 * `kmj submit`: builds requests, checks them against the JSON Schema, publishes them with
 * publisher confirms, prints their ids, and with --wait follows one to its outcome.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { sleep } from '../common/abort.ts';
import { ConfigError, readConfig } from '../common/config.ts';
import type { FieldSpecs } from '../common/fields.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { deadLetterQueueOf, type OutcomeNotice } from '../rabbitmq/topology.ts';
import { PermanentError } from '../common/errors.ts';
import type { MlflowTracking, SearchedRun } from '../mlflow/tracking.ts';
import { parseRequest, requestValidator, type RequestValidator } from '../common/request.ts';
import type { CommandContext } from './context.ts';
import { UsageError } from './usage.ts';
import { mlflowFromEnv, runUrl } from '../mlflow/client.ts';
import { PublishError, RequestPublisher } from '../rabbitmq/publisher.ts';
import { RUN_TAG } from '../common/run-tags.ts';
import { RABBITMQ_ENV } from '../rabbitmq/settings.ts';
import { parseDuration } from '../common/fields.ts';
import { messageOf } from '../common/redact.ts';
import { kafkaClient } from '../kafka/client.ts';
import { ensureGroup, KafkaPublishError, publishRecords } from '../kafka/publish.ts';
import { KAFKA_ENV, requireKafkaConnection, type KafkaConnection } from '../kafka/settings.ts';
import { ensureTopic } from '../kafka/topics.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const SUBMIT_HELP = `Usage: kmj submit --queue <q> --model <uri> --dataset <uri|path> [options]
       kmj submit --queue <q> --file requests.jsonl [options]
       kmj submit --kafka --topic <t> [--group <g>] (--model … --dataset … | --file …) [options]

Builds a request (schemas/request-v1.schema.json), checks it, and publishes it persistently to
the durable queue with publisher confirms; prints the request id. If the broker refuses the
message or does not confirm it, kmj says so and exits non-zero.

With --kafka the requests go to a Kafka topic instead, from an idempotent producer with acks from
all in-sync replicas, keyed by request id; the ids printed are those the brokers acknowledged.

Options:
  --queue <q>              request queue (declared if missing, with its dead-letter queue)
  --kafka                  publish to Kafka (KAFKA_BROKERS and the KAFKA_* settings)
  --topic <t>              Kafka request topic (created if missing, with --partitions)
  --partitions <n>         partitions of a topic kmj creates (default 1); they cap the Jobs
  --group <g>              the workers' consumer group: made, with a commit at the start of each
                           partition, if it does not exist yet, so the scaler sees its lag
  --model <uri>            models:/<name>/<version>, models:/<name>@<alias>, runs:/…, …
  --dataset <uri|path>     mlflow-artifacts:/…, runs:/…, http(s)://…, or a file path (made absolute)
  --format <csv|jsonl>     dataset format, when the name does not say it
  --experiment <e>         MLflow experiment (default: the queue name)
  --label-column <c>       column with the true values, for accuracy or error metrics
  --request-id <id>        idempotency key (default: a new UUID)
  --run-name <name>        MLflow run name
  --tag <k=v>              run tag (repeatable)
  --param <k=v>            run param (repeatable)
  --output-format <f>      predictions as csv (default) or jsonl
  --file <requests.jsonl>  one request per line (the options above fill what a line leaves out)
  --wait                   follow the request to its outcome: its MLflow run, or the worker's
                           notice for a request refused before it had a run (needs
                           MLFLOW_TRACKING_URI)
  --timeout <seconds>      how long --wait waits (default 600)
  -h, --help               show this help

Environment: RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672), MLFLOW_TRACKING_URI and
the usual MLflow auth variables (for --wait), KMJ_MAX_DELIVERIES (queue delivery limit, 5);
with --kafka: KAFKA_BROKERS, KAFKA_SASL_MECHANISM, KAFKA_USERNAME, KAFKA_PASSWORD, KAFKA_TLS, …

Exit codes: 0 published (with --wait: the run FINISHED), 10 (--wait) dead-lettered,
64 bad usage, 65 a request is invalid (nothing published), 69 the broker refused or did not
confirm (the ids printed are exactly those in the queue), 75 (--wait) no outcome before the
timeout, 78 bad configuration, 130 interrupted (Ctrl-C).
`;

const SUBMIT_ENV = {
  RABBITMQ_URL: RABBITMQ_ENV.RABBITMQ_URL,
  KMJ_MAX_DELIVERIES: { kind: 'integer', min: 1, max: 1000, default: 5 },
  ...KAFKA_ENV,
} as const satisfies FieldSpecs;

/** `key=value` flags as a map, and a problem for each one without a key. */
function pairs(
  flag: string,
  values: readonly string[] | undefined,
): { readonly value: Record<string, string>; readonly problems: string[] } {
  const value: Record<string, string> = {};
  const problems: string[] = [];
  for (const v of values ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) problems.push(`${flag}: ${JSON.stringify(v)} must be key=value`);
    else value[v.slice(0, eq)] = v.slice(eq + 1);
  }
  return { value, problems };
}

/** A dataset argument: a URI as given, or a file path made absolute for the worker. */
function datasetUri(value: string): string {
  return /^[a-z][a-z0-9+.-]*:/i.test(value) ? value : resolve(value);
}

interface Defaults {
  readonly [key: string]: unknown;
}

// ---- parse ------------------------------------------------------------------------------------

/** Where the requests go: a RabbitMQ queue, or a Kafka topic (made with `partitions` if missing) with the workers' group. */
export type SubmitTarget =
  | { readonly kind: 'rabbitmq'; readonly queue: string }
  | { readonly kind: 'kafka'; readonly topic: string; readonly partitions: number; readonly group?: string | undefined };

/** What `kmj submit` was asked, its flags checked (`parseSubmitArgs`). */
export type SubmitRequest =
  | { readonly kind: 'help' }
  | {
      readonly kind: 'submit';
      readonly target: SubmitTarget;
      /** The request fields the flags give; each line of `file` overrides them. */
      readonly defaults: Defaults;
      /** A JSON Lines file of requests, instead of one request from the flags. */
      readonly file?: string | undefined;
      /** Follow the one request to its outcome, for at most `timeoutMs`. */
      readonly wait: boolean;
      readonly timeoutMs: number;
    };

/** The flags, checked together: every problem in one UsageError. No I/O (a dataset path is made absolute against the working directory). */
export function parseSubmitArgs(argv: readonly string[]): SubmitRequest {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      queue: { type: 'string' },
      kafka: { type: 'boolean' },
      topic: { type: 'string' },
      partitions: { type: 'string' },
      group: { type: 'string' },
      model: { type: 'string' },
      dataset: { type: 'string' },
      format: { type: 'string' },
      experiment: { type: 'string' },
      'label-column': { type: 'string' },
      'request-id': { type: 'string' },
      'run-name': { type: 'string' },
      tag: { type: 'string', multiple: true },
      param: { type: 'string', multiple: true },
      'output-format': { type: 'string' },
      file: { type: 'string' },
      wait: { type: 'boolean' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  const problems: string[] = [];
  const useKafka = values.kafka === true;
  const queue = useKafka ? values.topic : values.queue;
  if (useKafka) {
    if (values.topic === undefined) problems.push('--topic: is required with --kafka');
    if (values.queue !== undefined) problems.push('--queue: is for RabbitMQ; with --kafka give --topic');
  } else {
    if (queue === undefined) problems.push('--queue: is required');
    for (const flag of ['topic', 'partitions', 'group'] as const) if (values[flag] !== undefined) problems.push(`--${flag}: needs --kafka`);
  }
  const partitions = values.partitions === undefined ? 1 : Number(values.partitions);
  if (!Number.isSafeInteger(partitions) || partitions < 1 || partitions > 10_000)
    problems.push(`--partitions: ${JSON.stringify(values.partitions)} must be an integer from 1 to 10000`);
  if (values.file === undefined && (values.model === undefined || values.dataset === undefined)) {
    problems.push(`${values.model === undefined ? '--model' : '--dataset'}: is required (or give --file)`);
  }
  if (values.file !== undefined && (values.wait || values['request-id'] !== undefined)) {
    problems.push(`${values.wait ? '--wait' : '--request-id'}: is for a single request, not --file`);
  }
  const timeoutSeconds = values.timeout === undefined ? 600 : parseDuration(values.timeout, 's') / 1000;
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0)
    problems.push(`--timeout: ${JSON.stringify(values.timeout)} must be a number of seconds above 0, or a duration such as 90s or 10m`);
  const { value: tags, problems: tagProblems } = pairs('--tag', values.tag);
  const { value: params, problems: paramProblems } = pairs('--param', values.param);
  problems.push(...tagProblems, ...paramProblems);
  if (problems.length > 0 || queue === undefined) throw new UsageError(problems);

  const dataset: Record<string, unknown> | undefined =
    values.dataset !== undefined
      ? { uri: datasetUri(values.dataset), ...(values.format !== undefined ? { format: values.format } : {}) }
      : undefined;
  const defaults: Defaults = {
    experiment: values.experiment ?? queue,
    ...(values.model !== undefined ? { model: values.model } : {}),
    ...(dataset ? { dataset } : {}),
    ...(values['label-column'] !== undefined ? { labelColumn: values['label-column'] } : {}),
    ...(values['request-id'] !== undefined ? { requestId: values['request-id'] } : {}),
    ...(values['run-name'] !== undefined ? { runName: values['run-name'] } : {}),
    ...(Object.keys(tags).length > 0 ? { tags } : {}),
    ...(Object.keys(params).length > 0 ? { params } : {}),
    ...(values['output-format'] !== undefined ? { output: { format: values['output-format'] } } : {}),
  };
  return {
    kind: 'submit',
    target: useKafka ? { kind: 'kafka', topic: queue, partitions, group: values.group } : { kind: 'rabbitmq', queue },
    defaults,
    file: values.file,
    wait: values.wait === true,
    timeoutMs: timeoutSeconds * 1000,
  };
}

// ---- build: every request checked before anything is published --------------------------------

function buildRequest(defaults: Defaults, line: Record<string, unknown> = {}): Record<string, unknown> {
  const req: Record<string, unknown> = { version: 1, requestId: randomUUID(), ...defaults, ...line };
  if (defaults['dataset'] && line['dataset'] === undefined) req['dataset'] = defaults['dataset'];
  return req;
}

function check(req: Record<string, unknown>, validate: RequestValidator): Buffer {
  const body = Buffer.from(JSON.stringify(req));
  parseRequest(body, 1024 * 1024, validate);
  return body;
}

export interface Batch {
  readonly requests: ReadonlyArray<{ readonly requestId: string; readonly body: Buffer }>;
  /** Why each invalid request is invalid ("line 3: model: …"); when any is, nothing is published. */
  readonly invalid: readonly string[];
}

/** The requests: one from the flags (`fileText` undefined), or one per non-blank line of a JSON Lines file. No I/O. */
export function buildBatch(defaults: Defaults, fileText: string | undefined, validate: RequestValidator): Batch {
  const requests: Array<{ requestId: string; body: Buffer }> = [];
  const invalid: string[] = [];
  if (fileText === undefined) {
    const req = buildRequest(defaults);
    try {
      requests.push({ requestId: String(req['requestId']), body: check(req, validate) });
    } catch (err) {
      invalid.push(messageOf(err));
    }
    return { requests, invalid };
  }
  fileText.split('\n').forEach((raw, i) => {
    if (raw.trim() === '') return;
    try {
      let line: unknown;
      try {
        line = JSON.parse(raw);
      } catch (err) {
        throw new PermanentError(`message: is not valid JSON (${messageOf(err)})`);
      }
      if (typeof line !== 'object' || line === null || Array.isArray(line)) throw new PermanentError('message: is not a JSON object');
      const req = buildRequest(defaults, line as Record<string, unknown>);
      requests.push({ requestId: String(req['requestId']), body: check(req, validate) });
    } catch (err) {
      invalid.push(`line ${i + 1}: ${messageOf(err)}`);
    }
  });
  return { requests, invalid };
}

// ---- collect: publish, then follow ------------------------------------------------------------

/** How a publish ended: whole, or stopped and why (the ids that are in the queue were handed out as they were confirmed). */
export type Published = { readonly ok: true } | { readonly ok: false; readonly error: string; readonly interrupted: boolean };

export interface Submitted {
  readonly published: Published;
  /** With --wait, after a publish that went through. */
  readonly followed?: Followed;
}

/** A progress bar on stderr: redrawn in place on a terminal, a line per tenth otherwise. */
function progress(ctx: CommandContext, total: number): (done: number) => void {
  const tty = (ctx.stderr as { isTTY?: boolean }).isTTY === true;
  let lastTenth = -1;
  return (done) => {
    if (tty) {
      const width = 30;
      const filled = Math.round((done / total) * width);
      ctx.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}${done === total ? '\n' : ''}`);
      return;
    }
    const tenth = Math.floor((done / total) * 10);
    if (tenth !== lastTenth) {
      lastTenth = tenth;
      ctx.stderr.write(`published ${done}/${total}\n`);
    }
  };
}

interface FollowPlan {
  readonly tracking: MlflowTracking;
  readonly experiment: string;
  readonly timeoutMs: number;
}

/**
 * Publishes to a RabbitMQ queue with confirms; every confirmed id goes to `onPublished` at once.
 * With a follow `plan`, the connection stays open for the worker's outcome notice. `present` gets
 * the result before the connection is closed, so a slow close never delays what the user sees.
 */
async function submitRabbitMq(
  ctx: CommandContext,
  settings: { url: string; maxDeliveries: number },
  queue: string,
  batch: Batch['requests'],
  plan: FollowPlan | undefined,
  onPublished: (ids: readonly string[]) => void,
  present: (submitted: Submitted) => void,
): Promise<Submitted> {
  const publisher = new RequestPublisher({
    url: settings.url,
    queue,
    maxDeliveries: settings.maxDeliveries,
    confirmTimeoutMs: 30_000,
    replies: plan !== undefined,
  });
  const done = (submitted: Submitted): Submitted => {
    present(submitted);
    return submitted;
  };
  try {
    try {
      await publisher.open();
      const show = batch.length > 1 ? progress(ctx, batch.length) : () => undefined;
      for (let i = 0; i < batch.length; i += 200) {
        // Every id printed is in the queue; every id in the queue is printed, even when the
        // batch fails part-way (resubmitting what was not printed must not run anything twice).
        onPublished(await publisher.publish(batch.slice(i, i + 200), ctx.shutdownSignal));
        show(Math.min(i + 200, batch.length));
      }
    } catch (err) {
      if (!(err instanceof PublishError)) throw err;
      onPublished(err.confirmed);
      return done({ published: { ok: false, error: err.message, interrupted: ctx.shutdownSignal.aborted } });
    }
    if (!plan) return done({ published: { ok: true } });
    const first = batch[0] as { requestId: string };
    const followed = await followRequest(
      ctx,
      plan,
      (id) => publisher.outcome(id),
      () => publisher.consumers(),
      queue,
      first.requestId,
    );
    return done({ published: { ok: true }, followed });
  } finally {
    await publisher.close();
  }
}

/** Publishes to a Kafka topic (made if missing, the group made at its start if given) from an idempotent producer. */
async function submitKafka(
  ctx: CommandContext,
  connection: KafkaConnection,
  target: Extract<SubmitTarget, { kind: 'kafka' }>,
  batch: Batch['requests'],
  plan: FollowPlan | undefined,
  onPublished: (ids: readonly string[]) => void,
  log: Logger,
): Promise<Submitted> {
  const { topic, partitions, group } = target;
  const kafka = kafkaClient(connection, { clientId: 'kmj-submit', log, connectTimeoutMs: 10_000, requestTimeoutMs: 30_000, retries: 5 });
  try {
    const admin = kafka.admin();
    await admin.connect();
    try {
      if (await ensureTopic(admin, topic, partitions))
        ctx.stderr.write(`kmj submit: created topic ${topic} with ${partitions} partition${partitions === 1 ? '' : 's'}\n`);
    } finally {
      await admin.disconnect().catch(() => undefined); // the topic is made or was there; a failed disconnect changes nothing
    }
    if (group !== undefined && (await ensureGroup(kafka, group, topic)))
      ctx.stderr.write(`kmj submit: created consumer group ${group} at the start of ${topic}\n`);
    const show = batch.length > 1 ? progress(ctx, batch.length) : () => undefined;
    let done = 0;
    await publishRecords(kafka, topic, batch, ctx.shutdownSignal, (ids) => {
      onPublished(ids);
      done += ids.length;
      show(done);
    });
  } catch (err) {
    if (err instanceof KafkaPublishError)
      return { published: { ok: false, error: messageOf(err), interrupted: ctx.shutdownSignal.aborted } };
    return { published: { ok: false, error: `Kafka at ${connection.brokers.join(',')}: ${messageOf(err)}`, interrupted: false } };
  }
  if (!plan) return { published: { ok: true } };
  const first = batch[0] as { requestId: string };
  const followed = await followRequest(
    ctx,
    plan,
    () => undefined,
    () => Promise.resolve(undefined),
    topic,
    first.requestId,
  );
  return { published: { ok: true }, followed };
}

// ---- decide -----------------------------------------------------------------------------------

/** The exit code: 0 published (with --wait: FINISHED), 10 dead-lettered, 69 not published, 75 no outcome in time, 130 interrupted (Ctrl-C while publishing or waiting). */
export function decideSubmit(submitted: Submitted): ExitCode {
  const { published, followed } = submitted;
  if (!published.ok) return published.interrupted ? EXIT.INTERRUPTED : EXIT.UNAVAILABLE;
  if (!followed) return EXIT.OK;
  switch (followed.kind) {
    case 'finished':
      return EXIT.OK;
    case 'dead-lettered':
      return EXIT.DEAD_LETTERED;
    case 'timeout':
      return EXIT.TIMEOUT;
    case 'interrupted':
      return EXIT.INTERRUPTED;
  }
}

// ---- render -----------------------------------------------------------------------------------

/** Whole numbers as they are; others with 6 significant digits, trailing zeros dropped. */
export function formatNumber(n: number): string {
  if (Number.isInteger(n)) return String(n);
  const s = n.toPrecision(6);
  return s.includes('e') ? s : s.replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '');
}

/** The metrics a finished run shows, in this order, when it has them. */
const SHOWN_METRICS = ['rows', 'accuracy_score', 'f1_score', 'r2_score', 'root_mean_squared_error', 'total_seconds'] as const;

/** The outcome a --wait followed, for stdout. No I/O. */
export function renderFollowed(followed: Followed, timeoutMs: number): string {
  switch (followed.kind) {
    case 'finished': {
      const metrics = followed.run.metrics;
      const lines = [`FINISHED run ${followed.run.info.run_id}`];
      for (const k of SHOWN_METRICS) if (metrics[k] !== undefined) lines.push(`  ${k.padEnd(24)} ${formatNumber(Number(metrics[k]))}`);
      lines.push(`  ${followed.url}`);
      return `${lines.join('\n')}\n`;
    }
    case 'dead-lettered':
      return `DEAD-LETTERED${followed.run ? ` (run ${followed.run.info.run_id} FAILED)` : ''}: ${followed.reason}\n`;
    case 'timeout':
      return `no outcome within ${timeoutMs / 1000} s (last seen: ${followed.last})\n`;
    case 'interrupted':
      return `interrupted before an outcome (last seen: ${followed.last})\n`;
  }
}

// ---- run: parse, build, then collect, render and decide ----------------------------------------

export async function runSubmit(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseSubmitArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(SUBMIT_HELP);
    return EXIT.OK;
  }
  const env = readConfig('submit', SUBMIT_ENV, ctx.env);
  let fileText: string | undefined;
  if (request.file !== undefined) {
    try {
      fileText = await readFile(request.file, 'utf8');
    } catch (err) {
      throw new ConfigError('submit', [`--file: cannot read ${JSON.stringify(request.file)}: ${messageOf(err)}`]);
    }
  }
  const batch = buildBatch(request.defaults, fileText, await requestValidator());
  if (batch.invalid.length > 0) {
    ctx.stderr.write(`kmj submit: nothing published: ${batch.invalid.join('\n  ')}\n`);
    return EXIT.INVALID;
  }
  if (batch.requests.length === 0) {
    ctx.stderr.write('kmj submit: nothing to publish: the file has no requests\n');
    return EXIT.INVALID;
  }

  const log = createLogger({ level: 'warn', name: 'kmj-submit', sync: true });
  // --wait needs MLflow: find out before publishing that its settings are usable.
  const tracking = request.wait ? mlflowFromEnv('submit', ctx.env, log) : undefined;
  if (request.wait && !tracking) throw new ConfigError('submit', ['MLFLOW_TRACKING_URI: is required with --wait']);
  const plan = tracking ? { tracking, experiment: String(request.defaults['experiment']), timeoutMs: request.timeoutMs } : undefined;
  const present = (submitted: Submitted): void => {
    if (!submitted.published.ok) ctx.stderr.write(`kmj submit: ${submitted.published.error}\n`);
    if (submitted.followed) ctx.stdout.write(renderFollowed(submitted.followed, request.timeoutMs));
  };
  const printIds = (ids: readonly string[]): void => {
    for (const id of ids) ctx.stdout.write(`${id}\n`);
  };
  try {
    const { target } = request;
    let submitted: Submitted;
    if (target.kind === 'kafka') {
      const connection = requireKafkaConnection('submit', ctx.env, 'with --kafka');
      submitted = await submitKafka(ctx, connection, target, batch.requests, plan, printIds, log);
      present(submitted);
    } else {
      const settings = { url: env.RABBITMQ_URL, maxDeliveries: env.KMJ_MAX_DELIVERIES };
      submitted = await submitRabbitMq(ctx, settings, target.queue, batch.requests, plan, printIds, present);
    }
    return decideSubmit(submitted);
  } finally {
    await tracking?.http.close();
  }
}

export type Followed =
  | { kind: 'finished'; run: SearchedRun; url: string }
  | { kind: 'dead-lettered'; reason: string; run?: SearchedRun }
  | { kind: 'timeout'; last: string }
  | { kind: 'interrupted'; last: string };

/**
 * Follows a request through its MLflow run: the worker marks a run it dead-letters with the
 * reason (kmj.error) and the outcome (kmj.outcome). A request refused before it had a run is
 * known from the worker's outcome notice (direct reply-to). The dead-letter queue itself is never
 * read: on a quorum queue every read and return counts as a delivery, and enough of them would
 * drop a dead letter nobody has looked at. Each new state goes to stderr as it is seen.
 */
async function followRequest(
  ctx: CommandContext,
  plan: FollowPlan,
  notices: Notices,
  consumers: () => Promise<number | undefined>,
  queue: string,
  requestId: string,
): Promise<Followed> {
  const started = Date.now();
  return follow(plan.tracking, notices, consumers, queue, plan.experiment, requestId, plan.timeoutMs, ctx.shutdownSignal, (state) =>
    ctx.stderr.write(`${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s  ${state}\n`),
  );
}

/** The outcome notice a worker sent for a request id, if one came (direct reply-to). */
type Notices = (requestId: string) => OutcomeNotice | undefined;

/** How long `--wait` waits on a queue without consumers before it says what to start. */
const NO_CONSUMER_HINT_MS = 10_000;

async function follow(
  tracking: MlflowTracking,
  notices: Notices,
  consumers: () => Promise<number | undefined>,
  queue: string,
  experiment: string,
  requestId: string,
  timeoutMs: number,
  stop: AbortSignal,
  onState: (state: string) => void,
): Promise<Followed> {
  const started = Date.now();
  const end = started + timeoutMs;
  let last = '';
  const note = (state: string): void => {
    if (state !== last) {
      last = state;
      onState(state);
    }
  };
  let experimentId: string | undefined;
  while (Date.now() < end && !stop.aborted) {
    try {
      const found = experimentId === undefined ? await tracking.findExperiment(experiment, stop, 0) : undefined;
      if (found?.deleted) {
        // The worker refuses a deleted experiment before it makes a run: nothing will show here.
        note(
          `experiment ${JSON.stringify(experiment)} is deleted in MLflow: a worker dead-letters this request to ${deadLetterQueueOf(queue)} without a run; restore the experiment to run it`,
        );
      } else experimentId ??= found?.experimentId;
      const run =
        experimentId === undefined ? undefined : (await tracking.runsWithTag(experimentId, RUN_TAG.requestId, requestId, stop))[0];
      if (run && experimentId !== undefined) {
        const tags = run.tags;
        if (run.info.status === 'FINISHED') return { kind: 'finished', run, url: runUrl(tracking, experimentId, run.info.run_id) };
        if (tags[RUN_TAG.outcome] === 'dead-lettered') return { kind: 'dead-lettered', reason: tags[RUN_TAG.error] ?? 'unknown', run };
        // A long run's progress steps (worker/progress.ts): rows done and the rate, as they come.
        const rows = run.metrics['rows'];
        const rate = run.metrics['rows_per_second'];
        const done = rows !== undefined ? `: ${rows} rows${rate !== undefined ? `, ${Math.round(rate)} rows/s` : ''}` : '';
        note(
          run.info.status === 'RUNNING'
            ? `running (run ${run.info.run_id})${done}`
            : `${run.info.status.toLowerCase()}, ${tags[RUN_TAG.outcome] ?? 'waiting'}: ${tags[RUN_TAG.error] ?? ''}`,
        );
      } else {
        // A request refused before it had a run is known only from the worker's notice.
        const notice = notices(requestId);
        if (notice?.outcome === 'dead-lettered') return { kind: 'dead-lettered', reason: notice.reason ?? 'unknown' };
        if (!found?.deleted) {
          // Nobody consuming for a while: say what would, instead of waiting silently. (A
          // ScaledJob's pod takes a few seconds to start and connect.)
          const idle = Date.now() - started > NO_CONSUMER_HINT_MS && (await consumers()) === 0;
          note(
            idle
              ? `queued: nothing consumes queue ${JSON.stringify(queue)}: start a worker (kmj worker --queue ${queue}) or check its ScaledJob (kubectl get scaledjob; kmj status --scaledjob NAME)`
              : 'queued: no run yet',
          );
        }
      }
    } catch (err) {
      note(`MLflow unreachable: ${err instanceof Error ? err.message : String(err)}`);
    }
    await sleep(1000, stop).catch(() => undefined);
  }
  return stop.aborted ? { kind: 'interrupted', last } : { kind: 'timeout', last };
}
