/**
 * The `kmj` command. Each subcommand lives in its own module and returns its exit code; this file
 * only dispatches, owns the process (env, signals, exit) and turns configuration and usage errors
 * into one clear line on stderr.
 */
import { ConfigError } from '../common/config.ts';
import { packageVersion } from '../common/paths.ts';
import type { CommandContext } from './context.ts';
import { didYouMean, flagsOf, unknownFlag, UsageError } from './usage.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

type Command = (argv: readonly string[], ctx: CommandContext) => Promise<ExitCode>;
type Help = () => Promise<string>;

// Each command's module is loaded only when it runs: a worker's cold start does not pay for the
// scaler's gRPC stack, nor the scaler for onnxruntime.
const COMMANDS: ReadonlyMap<string, { run: Command; help: Help; summary: string }> = new Map([
  [
    'scaler',
    {
      run: async (a, c) => (await import('./scaler-command.ts')).runScaler(a, c),
      help: async () => (await import('./scaler-command.ts')).SCALER_HELP,
      summary: 'run the KEDA external scaler (gRPC)',
    },
  ],
  [
    'worker',
    {
      run: async (a, c) => (await import('./worker-command.ts')).runWorker(a, c),
      help: async () => (await import('./worker-command.ts')).WORKER_HELP,
      summary: 'take one request from a queue, run it, log it to MLflow',
    },
  ],
  [
    'model-cache',
    {
      run: async (a, c) => (await import('./model-cache-command.ts')).runModelCache(a, c),
      help: async () => (await import('./model-cache-command.ts')).MODEL_CACHE_HELP,
      summary: "serve a node's workers each model version fetched once from MLflow",
    },
  ],
  [
    'submit',
    {
      run: async (a, c) => (await import('./submit-command.ts')).runSubmit(a, c),
      help: async () => (await import('./submit-command.ts')).SUBMIT_HELP,
      summary: 'publish requests, and follow one to its outcome',
    },
  ],
  [
    'status',
    {
      run: async (a, c) => (await import('./status-command.ts')).runStatus(a, c),
      help: async () => (await import('./status-command.ts')).STATUS_HELP,
      summary: 'the queue, the scaler, the ScaledJob and the latest MLflow runs, on one screen',
    },
  ],
  [
    'replay',
    {
      run: async (a, c) => (await import('./replay-command.ts')).runReplay(a, c),
      help: async () => (await import('./replay-command.ts')).REPLAY_HELP,
      summary: 'upload the runs spooled while MLflow was out of reach',
    },
  ],
  [
    'setup',
    {
      run: async (a, c) => (await import('./setup-command.ts')).runSetup(a, c),
      help: async () => (await import('./setup-command.ts')).SETUP_HELP,
      summary: "make the broker users, the queue and the worker's MLflow user of a deployment",
    },
  ],
  [
    'doctor',
    {
      run: async (a, c) => (await import('./doctor-command.ts')).runDoctor(a, c),
      help: async () => (await import('./doctor-command.ts')).DOCTOR_HELP,
      summary: 'check a node before the first request: arch, page size, memory cgroup, onnxruntime, broker, MLflow, KEDA',
    },
  ],
  [
    'demo',
    {
      run: async (a, c) => (await import('./demo-command.ts')).runDemo(a, c),
      help: async () => (await import('./demo-command.ts')).DEMO_HELP,
      summary: 'show what KEDA sees and does with a local RabbitMQ',
    },
  ],
]);

function usage(): string {
  const rows = [...COMMANDS].map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`).join('\n');
  return `Usage: kmj <command> [options]

Commands:
${rows}

Run "kmj <command> --help" for a command's options, "kmj --version" for the version.
`;
}

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

export async function main(argv: readonly string[]): Promise<ExitCode> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? EXIT.USAGE : EXIT.OK;
  }
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`kmj ${packageVersion()}\n`);
    return EXIT.OK;
  }
  const command = COMMANDS.get(name);
  if (!command) {
    const guess = didYouMean(name, [...COMMANDS.keys()]);
    process.stderr.write(`kmj: unknown command "${name}"${guess ? `; did you mean "${guess}"?` : ''}\n\n${usage()}`);
    return EXIT.USAGE;
  }
  try {
    return await command.run(rest, processContext());
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`kmj ${name}: ${err.message}\n`);
      return EXIT.CONFIG;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`kmj ${name}: ${err.message}\nRun "kmj ${name} --help" for usage.\n`);
      return EXIT.USAGE;
    }
    const code = (err as { code?: string }).code;
    if (err instanceof TypeError && code?.startsWith('ERR_PARSE_ARGS')) {
      // An unknown flag: name it, and the documented one it is closest to.
      const help = await command.help();
      const unknown = code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? unknownFlag(rest, help) : undefined;
      const guess = unknown?.startsWith('--') ? didYouMean(unknown, flagsOf(help)) : undefined;
      const message = unknown ? `unknown flag ${unknown}${guess ? `; did you mean ${guess}?` : ''}` : err.message;
      process.stderr.write(`kmj ${name}: ${message}\nRun "kmj ${name} --help" for usage.\n`);
      return EXIT.USAGE;
    }
    throw err;
  }
}
