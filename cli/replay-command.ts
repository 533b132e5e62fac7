/** `kmj replay --to <tracking uri>`: uploads the runs the worker spooled while MLflow was out of reach. */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '../common/log.ts';
import { replaySpool, type ReplayResult } from '../worker/spool.ts';
import type { CommandContext } from './context.ts';
import { mlflowFromEnv } from '../mlflow/client.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const REPLAY_HELP = `Usage: kmj replay --to <tracking uri> [--spool <dir>]

Uploads every run in the spool (written by "kmj worker" when MLflow could not be used) to the
MLflow tracking server: params, metrics, tags, dataset inputs and artifacts, then marks it
FINISHED. Once and only once: a replay interrupted and run again neither duplicates a run nor
logs anything twice. Replayed entries move to <spool>/.replayed/.

Options:
  --to <uri>       tracking server (default: MLFLOW_TRACKING_URI)
  --spool <dir>    spool directory (default: KMJ_SPOOL_DIR, else ~/.local/share/kmj/spool)
  -h, --help       show this help

MLflow authentication and TLS use the usual variables: MLFLOW_TRACKING_USERNAME,
MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_INSECURE_TLS,
MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_CLIENT_CERT_PATH.

Exit codes: 0 every entry replayed (or already in MLflow), 1 some entries failed (they stay in
the spool; run again), 78 bad configuration.
`;

// ---- parse ---------------------------------------------------------------------------------------

export type ReplayRequest = { readonly kind: 'help' } | { readonly kind: 'run'; readonly to?: string; readonly spool?: string };

/** The flags; no I/O. */
export function parseReplayArgs(argv: readonly string[]): ReplayRequest {
  const { values } = parseArgs({
    args: [...argv],
    options: { to: { type: 'string' }, spool: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  return {
    kind: 'run',
    ...(values.to !== undefined ? { to: values.to } : {}),
    ...(values.spool !== undefined ? { spool: values.spool } : {}),
  };
}

// ---- decide and render -----------------------------------------------------------------------------

/** 0 when every entry is in MLflow (replayed now or before), 1 when some failed and stay in the spool. */
export function decideReplay(results: readonly ReplayResult[]): ExitCode {
  return results.some((r) => r.outcome === 'failed') ? EXIT.FAILED : EXIT.OK;
}

/** One line per entry, as it is replayed. */
export function renderReplayed(r: ReplayResult): string {
  const where = r.runId !== undefined ? ` → run ${r.runId}` : '';
  return `${r.outcome.padEnd(17)} ${r.requestId}${where}${r.error !== undefined ? `: ${r.error}` : ''}`;
}

/** The closing line. */
export function renderReplaySummary(results: readonly ReplayResult[], spool: string): string {
  const failed = results.filter((r) => r.outcome === 'failed').length;
  return `${results.length - failed} of ${results.length} spooled runs are in MLflow${failed > 0 ? `; ${failed} failed and stay in ${spool}` : ''}`;
}

// ---- run: parse, replay (worker/spool.ts), decide and render ----------------------------------------

export async function runReplay(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseReplayArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(REPLAY_HELP);
    return EXIT.OK;
  }
  const log = createLogger({ level: ctx.env['LOG_LEVEL'] === 'debug' ? 'debug' : 'warn', name: 'kmj-replay', sync: true });
  const tracking = mlflowFromEnv('replay', ctx.env, log, request.to !== undefined ? { flag: '--to', value: request.to } : undefined);
  if (!tracking) {
    ctx.stderr.write('kmj replay: invalid replay configuration: --to: is required (or set MLFLOW_TRACKING_URI)\n');
    return EXIT.CONFIG;
  }
  const spool = request.spool ?? ctx.env['KMJ_SPOOL_DIR'] ?? join(homedir(), '.local', 'share', 'kmj', 'spool');
  try {
    const results = await replaySpool(spool, tracking, log, ctx.shutdownSignal, (r) => ctx.stdout.write(`${renderReplayed(r)}\n`));
    ctx.stdout.write(`${renderReplaySummary(results, spool)}\n`);
    return decideReplay(results);
  } finally {
    await tracking.http.close();
  }
}
