/** What a subcommand gets from the process: its only contact with env, stdio and signals. */
import type { Writable } from 'node:stream';

export interface CommandContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly stdout: Writable;
  readonly stderr: Writable;
  /** Resolves with the signal name on the first SIGTERM or SIGINT. */
  waitForShutdown(): Promise<string>;
  /** Aborted on the first SIGTERM or SIGINT. */
  readonly shutdownSignal: AbortSignal;
}
