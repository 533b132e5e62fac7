/**
 * The scaler's intake of worker reports (common/report.ts): POST /v1/reports on its HTTP port.
 *
 * - 204: counted in kmj_requests_total and kmj_request_step_seconds;
 * - 400: not a report; the answer names the field;
 * - 404: the scaler does not serve that queue (or topic): no trigger has asked about it, so its
 *   series would be nobody's. This is also what keeps the series bounded: a report can only add
 *   to the queues KEDA already polls;
 * - 413: a body over 4 KiB (a report is a few hundred bytes).
 *
 * The intake holds nothing: a report is counted as it arrives. No credential is asked for, as
 * for /metrics on the same port: a report carries counts and durations only, and only for queues
 * the scaler already serves; the worst a stray client can do is skew those figures
 * (docs/observability.md says how to fence the port off with a NetworkPolicy).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { MAX_REPORT_BYTES, parseWorkerReport, ReportError } from '../common/report.ts';
import type { ScalerMetrics } from './metrics.ts';
import type { SnapshotStore } from './snapshots.ts';

export { REPORT_PATH } from '../common/report.ts';

function answer(res: ServerResponse, status: number, text?: string): void {
  if (text === undefined) res.writeHead(status).end();
  else res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(`${text}\n`);
}

/** Reads the body up to `max` bytes; undefined when it is longer. */
async function bodyOf(req: IncomingMessage, max: number): Promise<string | undefined> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return undefined;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > max) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export async function receiveReport(
  req: IncomingMessage,
  res: ServerResponse,
  metrics: ScalerMetrics,
  store: SnapshotStore,
): Promise<void> {
  const body = await bodyOf(req, MAX_REPORT_BYTES);
  if (body === undefined) {
    metrics.reportRefused('too_large');
    // The rest of the body is not read: the connection closes after the answer.
    res.setHeader('connection', 'close');
    answer(res, 413, `a report is at most ${MAX_REPORT_BYTES} bytes`);
    return;
  }
  let report;
  try {
    report = parseWorkerReport(body);
  } catch (err) {
    if (!(err instanceof ReportError)) throw err;
    metrics.reportRefused('bad_request');
    answer(res, 400, err.message);
    return;
  }
  if (!store.serves(report.source, report.scope, report.name)) {
    metrics.reportRefused('unknown_target');
    answer(
      res,
      404,
      `this scaler serves no ${report.source} target ${JSON.stringify(report.name)} in ${JSON.stringify(report.scope)}: no trigger has asked about it`,
    );
    return;
  }
  metrics.report(report);
  answer(res, 204);
}
