/**
 * The worker's report of one request, sent to the scaler when the request is settled: the worker
 * lives for a second or two, too short for Prometheus to scrape, while the scaler is always up
 * and already exports its queue's backlog (docs/observability.md). The report names the queue
 * (or topic) and says what became of the request and how long each step took; it carries no
 * request id, no pod name and nothing of the request itself, so the series it feeds do not grow
 * with the requests.
 *
 * The worker writes it (worker/report.ts), the scaler reads it (scaler/reports.ts): this file is
 * the one contract between them.
 */
import { FieldError, jsonObject } from './errors.ts';
import { EXIT, type WorkerExitCode } from './exit-codes.ts';

/** Where the scaler takes reports, on its HTTP port (beside /metrics). */
export const REPORT_PATH = '/v1/reports';
/** A report is a few hundred bytes; the scaler refuses bigger bodies. */
export const MAX_REPORT_BYTES = 4096;

export const REPORT_OUTCOMES = ['finished', 'dead_lettered', 'requeued', 'unsettled', 'failed'] as const;
export type ReportOutcome = (typeof REPORT_OUTCOMES)[number];

/**
 * The steps of a request, each in seconds:
 * - waiting: from its publication (the AMQP timestamp, the Kafka record's timestamp) to the worker
 *   receiving it: the queue, KEDA's poll, the Job, the pod's start;
 * - receiving: from the worker process's start to the message in hand (connecting, consuming);
 * - model_load: resolving, fetching and opening the model; of that, model_fetch (resolving it in
 *   the registry, checking the cached copy, downloading it) and model_open (onnxruntime's session);
 * - run: reading the dataset, predicting and recording, after the model is loaded;
 * - total: from the message in hand to the message settled.
 */
export const REPORT_STEPS = ['waiting', 'receiving', 'model_load', 'model_fetch', 'model_open', 'run', 'total'] as const;
export type ReportStep = (typeof REPORT_STEPS)[number];

export const REPORT_SOURCES = ['rabbitmq', 'kafka'] as const;
export type ReportSource = (typeof REPORT_SOURCES)[number];

export interface WorkerReport {
  readonly version: 1;
  readonly source: ReportSource;
  /** The RabbitMQ vhost, or the Kafka consumer group. */
  readonly scope: string;
  /** The queue, or the topic. */
  readonly name: string;
  readonly outcome: ReportOutcome;
  readonly seconds: Readonly<Partial<Record<ReportStep, number>>>;
}

/** A report that is not one; `field` names what is wrong, as the 400 answer does. */
export class ReportError extends FieldError {
  override readonly name = 'ReportError';
}

/** What a worker's exit code says became of its request. */
export function outcomeOfExit(code: WorkerExitCode): ReportOutcome {
  switch (code) {
    case EXIT.OK:
      return 'finished';
    case EXIT.DEAD_LETTERED:
      return 'dead_lettered';
    case EXIT.REQUEUED:
      return 'requeued';
    case EXIT.UNSETTLED:
      return 'unsettled';
    case EXIT.UNAVAILABLE:
    case EXIT.INTERNAL:
      return 'failed';
  }
}

const NAME_MAX = 255;
/** Longest step the scaler accepts: a day (the worker's time budget is far shorter). */
const STEP_MAX_SECONDS = 86_400;

function text(v: Record<string, unknown>, field: string): string {
  const value = v[field];
  if (typeof value !== 'string' || value.length === 0 || value.length > NAME_MAX)
    throw new ReportError(field, `must be a string of 1 to ${NAME_MAX} characters`);
  return value;
}

function oneOf<T extends string>(v: Record<string, unknown>, field: string, allowed: readonly T[]): T {
  const value = v[field];
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value))
    throw new ReportError(field, `must be one of ${allowed.join(', ')}`);
  return value as T;
}

/** Reads a report from its JSON text; throws ReportError naming the first wrong field. */
export function parseWorkerReport(json: string): WorkerReport {
  const o = jsonObject(json, (field, message) => new ReportError(field, message));
  if (o['version'] !== 1) throw new ReportError('version', 'must be 1');
  const source = oneOf(o, 'source', REPORT_SOURCES);
  const scope = text(o, 'scope');
  const name = text(o, 'name');
  const outcome = oneOf(o, 'outcome', REPORT_OUTCOMES);
  const raw = o['seconds'];
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new ReportError('seconds', 'must be an object of step names to seconds');
  const seconds: Partial<Record<ReportStep, number>> = {};
  for (const [step, value] of Object.entries(raw as Record<string, unknown>)) {
    if (!(REPORT_STEPS as readonly string[]).includes(step))
      throw new ReportError(`seconds.${step}`, `is not a step (${REPORT_STEPS.join(', ')})`);
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > STEP_MAX_SECONDS)
      throw new ReportError(`seconds.${step}`, `must be a number of seconds from 0 to ${STEP_MAX_SECONDS}`);
    seconds[step as ReportStep] = value;
  }
  return { version: 1, source, scope, name, outcome, seconds };
}
