/**
 * The `kmj` command. Each subcommand lives in its own module and returns its exit code; this file
 * only dispatches, owns the process (env, signals, exit) and turns configuration and usage errors
 * into one clear line on stderr.
 */
import { ConfigError } from '../common/config.ts';
import type { CommandContext } from './context.ts';

type Command = (argv: readonly string[], ctx: CommandContext) => Promise<number>;

// Each command's module is loaded only when it runs: a worker's cold start does not pay for the
// scaler's gRPC stack, nor the scaler for onnxruntime.
const COMMANDS: ReadonlyMap<string, { run: Command; summary: string }> = new Map([
  ['scaler', { run: async (a, c) => (await import('./scaler-command.ts')).runScaler(a, c), summary: 'run the KEDA external scaler (gRPC)' }],
  ['worker', { run: async (a, c) => (await import('./worker-command.ts')).runWorker(a, c), summary: 'take one request from a queue, run it, log it to MLflow' }],
  ['submit', { run: async (a, c) => (await import('./submit-command.ts')).runSubmit(a, c), summary: 'publish requests, and follow one to its outcome' }],
  ['status', { run: async (a, c) => (await import('./status-command.ts')).runStatus(a, c), summary: 'the queue, the scaler and the latest MLflow runs, on one screen' }],
  ['replay', { run: async (a, c) => (await import('./replay-command.ts')).runReplay(a, c), summary: 'upload the runs spooled while MLflow was out of reach' }],
  ['demo', { run: async (a, c) => (await import('./demo-command.ts')).runDemo(a, c), summary: 'show what KEDA sees and does with a local RabbitMQ' }],
]);

function usage(): string {
  const rows = [...COMMANDS].map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`).join('\n');
  return `Usage: kmj <command> [options]

Commands:
${rows}

Run "kmj <command> --help" for a command's options.
`;
}

/** Exit code for usage and configuration errors, as in sysexits' EX_USAGE / EX_CONFIG. */
export const EXIT_USAGE = 64;
export const EXIT_CONFIG = 78;

function processContext(): CommandContext {
  const controller = new AbortController();
  let resolveSignal: (name: string) => void = () => undefined;
  const shutdown = new Promise<string>((resolve) => {
    resolveSignal = resolve;
  });
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => {
      controller.abort(new Error(`received ${sig}`));
      resolveSignal(sig);
    });
  }
  return {
    env: process.env,
    stdout: process.stdout,
    stderr: process.stderr,
    waitForShutdown: () => shutdown,
    shutdownSignal: controller.signal,
  };
}

export async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? EXIT_USAGE : 0;
  }
  const command = COMMANDS.get(name);
  if (!command) {
    process.stderr.write(`kmj: unknown command "${name}"\n\n${usage()}`);
    return EXIT_USAGE;
  }
  try {
    return await command.run(rest, processContext());
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`kmj ${name}: ${err.message}\n`);
      return EXIT_CONFIG;
    }
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`kmj ${name}: ${err.message}\nRun "kmj ${name} --help" for usage.\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
