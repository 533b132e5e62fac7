/**
 * JSON-lines logging with pino. Messages are constant strings; data goes in fields. Child loggers
 * carry identity ({component, queue, requestId}). Anything secret is redacted by path, and errors
 * pass through `scrubError` so URLs with credentials never reach the output.
 */
import { pino, type Logger, type DestinationStream } from 'pino';
import { scrubError } from './redact.ts';

export type { Logger } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const REDACT_PATHS = [
  'password',
  'token',
  'authorization',
  'url',
  'amqpUrl',
  'managementUrl',
  'headers.authorization',
  '*.password',
  '*.token',
  '*.authorization',
  '*.url',
  '*.amqpUrl',
  '*.managementUrl',
];

export interface LogOptions {
  readonly level: LogLevel;
  readonly name: string;
  /** Where lines go; stderr by default, so stdout stays free for command output. */
  readonly destination?: DestinationStream;
  /**
   * Write each line before returning (default false). One-shot commands use it: they log a few
   * lines and exit at once, and nothing may be left in a buffer.
   */
  readonly sync?: boolean;
}

export function createLogger(options: LogOptions): Logger {
  return pino(
    {
      name: options.name,
      level: options.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      serializers: { err: scrubError, error: scrubError },
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ fd: 2, sync: options.sync ?? false }),
  );
}
