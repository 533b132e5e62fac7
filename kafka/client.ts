/**
 * The one place kafkajs clients are made: the scaler's lag reads, the worker's consumer and
 * producer, and the CLI's. It maps a KafkaConnection to kafkajs options, sends kafkajs' own log
 * lines to ours at debug level (our code logs what failed, with context, once), and keeps Node 24's
 * TimeoutNegativeWarning, which kafkajs 2.2.4 triggers from its request queue, out of users' logs.
 */
import { Kafka, logLevel as KafkaLogLevel, type KafkaConfig, type logCreator } from 'kafkajs';
import type { Logger } from '../common/log.ts';
import type { KafkaConnection } from './settings.ts';

export interface KafkaClientOptions {
  readonly clientId: string;
  readonly log: Logger;
  /** Bound on opening a broker connection (TCP, TLS and SASL). */
  readonly connectTimeoutMs: number;
  /** Bound on one request to a broker. */
  readonly requestTimeoutMs: number;
  /** kafkajs' own retries of a failed request; 0 where a caller has its own loop (the scaler). */
  readonly retries: number;
}

let warningFilterInstalled = false;

/**
 * kafkajs' request queue arms a timer with a negative delay when a request is already late; Node
 * 24 warns about each (and runs it at once, which is what kafkajs wants). Only that warning is
 * dropped, every other one passes through.
 */
export function dropTimeoutNegativeWarnings(): void {
  if (warningFilterInstalled) return;
  warningFilterInstalled = true;
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = (warning: string | Error, ...rest: unknown[]): void => {
    const first = rest[0];
    const type =
      warning instanceof Error ? warning.name : typeof first === 'string' ? first : (first as { type?: unknown } | undefined)?.type;
    if (type === 'TimeoutNegativeWarning') return;
    emit(warning, ...rest);
  };
}

function logCreatorFor(log: Logger): logCreator {
  return () =>
    ({ namespace, level, log: entry }) => {
      const { message, ...fields } = entry;
      log.debug({ kafkajs: namespace, kafkajsLevel: KafkaLogLevel[level], ...fields }, `kafkajs: ${String(message)}`);
    };
}

export function kafkaClient(conn: KafkaConnection, options: KafkaClientOptions): Kafka {
  dropTimeoutNegativeWarnings();
  const config: KafkaConfig = {
    clientId: options.clientId,
    brokers: [...conn.brokers],
    connectionTimeout: options.connectTimeoutMs,
    authenticationTimeout: options.connectTimeoutMs,
    requestTimeout: options.requestTimeoutMs,
    enforceRequestTimeout: true,
    retry: { retries: options.retries, initialRetryTime: 200, maxRetryTime: 2000 },
    logLevel: KafkaLogLevel.INFO,
    logCreator: logCreatorFor(options.log.child({ component: 'kafkajs' })),
  };
  if (conn.tls) config.ssl = { ...conn.tls };
  if (conn.sasl) {
    const { mechanism, username, password } = conn.sasl;
    config.sasl =
      mechanism === 'plain'
        ? { mechanism, username, password }
        : mechanism === 'scram-sha-256'
          ? { mechanism, username, password }
          : { mechanism, username, password };
  }
  return new Kafka(config);
}

/** kafkajs error classes carry `type` (the protocol error name) and `name`; nothing else is trusted. */
export function kafkaErrorType(err: unknown): string | undefined {
  for (
    let e: unknown = err, depth = 0;
    e instanceof Error && depth < 5;
    e = (e as { cause?: unknown; originalError?: unknown }).originalError ?? e.cause, depth++
  ) {
    const type = (e as { type?: unknown }).type;
    if (typeof type === 'string') return type;
    if (e.name === 'KafkaJSSASLAuthenticationError') return 'SASL_AUTHENTICATION_FAILED';
  }
  return undefined;
}
