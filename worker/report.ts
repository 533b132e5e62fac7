/**
 * The worker's report of each request to the scaler (common/report.ts says why and what it holds).
 * Sent after the message is settled, so it never delays or changes the settle; bounded
 * (KMJ_REPORT_TIMEOUT_MS, one second by default), never retried, and a failure is logged and otherwise ignored: the run in MLflow and the
 * exit code remain the record of the request, the report only feeds the dashboards.
 */
import { agentFor, discard, readText, send } from '../common/http-request.ts';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { outcomeOfExit, type ReportSource, type ReportStep, type WorkerReport } from '../common/report.ts';
import type { WorkerExitCode } from '../common/exit-codes.ts';

/** When things happened to one request, in ms since the epoch (Date.now()). */
export interface RequestTimes {
  /** Its publication, when the message carries it (AMQP timestamp, Kafka record timestamp). */
  readonly publishedAtMs: number | undefined;
  readonly receivedAtMs: number;
  readonly settledAtMs: number;
  /** The model load and its two parts, when the model was loaded (the pipeline's Outcome). */
  readonly model: ModelTimes | undefined;
}

export interface ModelTimes {
  readonly modelLoadSeconds?: number;
  readonly modelFetchSeconds?: number;
  readonly modelOpenSeconds?: number;
}

export interface ReportTarget {
  readonly source: ReportSource;
  /** The vhost, or the consumer group. */
  readonly scope: string;
  /** The queue, or the topic. */
  readonly name: string;
}

/** The report of one settled request; the process's start (performance.timeOrigin) begins "receiving". */
export function reportOf(
  target: ReportTarget,
  code: WorkerExitCode,
  times: RequestTimes,
  processStartMs = performance.timeOrigin,
): WorkerReport {
  const seconds: Partial<Record<ReportStep, number>> = {};
  const since = (from: number, to: number): number => Math.max(0, to - from) / 1000;
  // A clock skewed between publisher and worker can put the publication in the future: no figure then.
  if (times.publishedAtMs !== undefined && times.publishedAtMs > 0 && times.publishedAtMs <= times.receivedAtMs + 1000)
    seconds.waiting = since(times.publishedAtMs, times.receivedAtMs);
  seconds.receiving = since(processStartMs, times.receivedAtMs);
  const total = since(times.receivedAtMs, times.settledAtMs);
  const load = times.model?.modelLoadSeconds;
  if (load !== undefined) {
    seconds.model_load = load;
    seconds.run = Math.max(0, total - load);
    if (times.model?.modelFetchSeconds !== undefined) seconds.model_fetch = times.model.modelFetchSeconds;
    if (times.model?.modelOpenSeconds !== undefined) seconds.model_open = times.model.modelOpenSeconds;
  }
  seconds.total = total;
  return { version: 1, source: target.source, scope: target.scope, name: target.name, outcome: outcomeOfExit(code), seconds };
}

/** Where and within how long the report goes (WorkerConfig's reportUrl and reportTimeoutMs). */
export interface ReportSink {
  readonly reportUrl: string | undefined;
  readonly reportTimeoutMs: number;
}

/** POSTs the report to the sink's URL; resolves within its timeout whatever happens. */
export async function sendReport(sink: ReportSink, report: WorkerReport, log: Logger): Promise<void> {
  const url = sink.reportUrl;
  if (url === undefined) return;
  const timeoutMs = sink.reportTimeoutMs;
  const target = new URL(url);
  const started = performance.now();
  try {
    const res = await send(target, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(report),
      agent: agentFor(target, { rejectUnauthorized: true }),
      signal: AbortSignal.timeout(timeoutMs),
      timeoutMs,
    });
    if (res.statusCode === 204) {
      await discard(res);
      log.debug({ ms: Math.round(performance.now() - started), outcome: report.outcome }, 'reported to the scaler');
      return;
    }
    const text = (await readText(res)).slice(0, 300);
    log.warn({ status: res.statusCode, answer: text }, 'the scaler refused the report');
  } catch (err) {
    log.warn({ err: messageOf(err) }, 'report to the scaler not sent');
  }
}
