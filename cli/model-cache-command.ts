/** `kmj model-cache`: runs a node's model cache until SIGTERM or SIGINT. */
import { parseArgs } from 'node:util';
import { describeFields } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { startNodeCache } from '../nodecache/app.ts';
import { loadNodeCacheConfig, NODE_CACHE_ENV, type NodeCacheFlags } from '../nodecache/config.ts';
import type { CommandContext } from './context.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const MODEL_CACHE_HELP = `Usage: kmj model-cache [--port <port>]

Runs a node's model cache: workers on the node (KMJ_NODE_CACHE_URL) ask it for a model version
instead of MLflow, and it fetches each version from MLflow once, keeps it within a size bound
(least recently used first out) and serves it with each file's SHA-256, which the worker checks.
Run one per node (a DaemonSet behind a Service with internalTrafficPolicy: Local; docs/models.md).
Prometheus metrics, /healthz and /readyz are served on the same port.

Options:
  --port <port>             HTTP port (KMJ_NODE_CACHE_PORT)
  -h, --help                show this help

Environment:
${describeFields(NODE_CACHE_ENV)}
`;

/** The flags as the cache's configuration takes them (they override its environment); no I/O. */
export function parseModelCacheArgs(
  argv: readonly string[],
): { readonly kind: 'help' } | { readonly kind: 'run'; readonly flags: NodeCacheFlags } {
  const { values } = parseArgs({
    args: [...argv],
    options: { port: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { kind: 'help' };
  return { kind: 'run', flags: values.port !== undefined ? { port: values.port } : {} };
}

/** Parse, configure (nodecache/config.ts), serve (nodecache/app.ts) until a signal. */
export async function runModelCache(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseModelCacheArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(MODEL_CACHE_HELP);
    return EXIT.OK;
  }
  const config = loadNodeCacheConfig(ctx.env, request.flags);
  const log = createLogger({ level: config.logLevel, name: 'kmj-model-cache' });
  const cache = await startNodeCache(config, log);
  const signal = await ctx.waitForShutdown();
  log.info({ signal }, 'shutting down');
  await cache.close();
  log.flush();
  return EXIT.OK;
}
