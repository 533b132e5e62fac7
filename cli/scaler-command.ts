/** `kmj scaler`: runs the KEDA external scaler until SIGTERM or SIGINT. */
import { parseArgs } from 'node:util';
import { describeFields } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { describeSources, loadScalerConfig, SCALER_ENV, type ScalerFlags } from '../scaler/config.ts';
import { startScaler } from '../scaler/app.ts';
import type { CommandContext } from './context.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const SCALER_HELP = `Usage: kmj scaler [--host <addr>] [--port <grpc port>] [--metrics-port <http port>]

Runs the KEDA external scaler: a gRPC server speaking KEDA's externalscaler.proto (v2.20),
grpc.health.v1 and reflection, that reports RabbitMQ queue backlogs and Kafka consumer-group lag
from a cache kept fresh in the background. Prometheus metrics, /healthz and /readyz are served on the metrics port.

Options:
  --host <addr>             listen address (KMJ_SCALER_HOST)
  --port <port>             gRPC port (KMJ_SCALER_PORT)
  --metrics-port <port>     HTTP port for /metrics and probes (KMJ_SCALER_METRICS_PORT)
  -h, --help                show this help

Environment:
${describeFields(SCALER_ENV)}

${describeSources()}`;

/** The flags as the scaler's configuration takes them (they override its environment); no I/O. */
export function parseScalerArgs(
  argv: readonly string[],
): { readonly kind: 'help' } | { readonly kind: 'run'; readonly flags: ScalerFlags } {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'metrics-port': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return { kind: 'help' };
  return {
    kind: 'run',
    flags: {
      ...(values.host !== undefined ? { host: values.host } : {}),
      ...(values.port !== undefined ? { port: values.port } : {}),
      ...(values['metrics-port'] !== undefined ? { metricsPort: values['metrics-port'] } : {}),
    },
  };
}

/** Parse, configure (scaler/config.ts), serve (scaler/app.ts) until a signal. */
export async function runScaler(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseScalerArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(SCALER_HELP);
    return EXIT.OK;
  }
  const config = loadScalerConfig(ctx.env, request.flags);
  const log = createLogger({ level: config.logLevel, name: 'kmj-scaler' });
  const scaler = await startScaler(config, log);
  const signal = await ctx.waitForShutdown();
  log.info({ signal }, 'shutting down');
  await scaler.close(5000);
  log.flush();
  return EXIT.OK;
}
