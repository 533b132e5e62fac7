/**
 * The scaler's configuration: environment variables, with `--host`, `--port` and
 * `--metrics-port` flags on top. Broker credentials come from RABBITMQ_URL (the connection alias
 * "default") and from a JSON file of named connections, typically a mounted Secret.
 */
import { readConfig, readSettingFile, type FlagOverride } from '../common/config.ts';
import { parseFields, type FieldSpecs, type RawInput } from '../common/fields.ts';
import { LOG_LEVELS, type LogLevel } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { CONNECTION_ALIAS, type RabbitConnection } from './sources/rabbitmq.ts';
import type { TlsFiles } from './grpc-server.ts';
import type { SnapshotOptions } from './snapshots.ts';
import type { SourceSettings } from './sources/registry.ts';
import { defaultManagementUrl, RABBITMQ_ENV } from '../rabbitmq/settings.ts';

export const SCALER_ENV = {
  KMJ_SCALER_HOST: { kind: 'string', default: '0.0.0.0', help: 'address the gRPC and metrics servers listen on' },
  KMJ_SCALER_PORT: { kind: 'integer', min: 0, max: 65535, default: 6000, help: 'gRPC port (--port)' },
  KMJ_SCALER_METRICS_PORT: { kind: 'integer', min: 0, max: 65535, default: 8080, help: 'HTTP port for /metrics, /healthz, /readyz (--metrics-port)' },
  KMJ_SCALER_REFRESH_INTERVAL_MS: { kind: 'integer', unit: 'ms', min: 100, max: 60_000, default: 1000, help: 'each queue is read at least this often' },
  KMJ_SCALER_MIN_REFRESH_INTERVAL_MS: { kind: 'integer', unit: 'ms', min: 50, max: 60_000, default: 200, help: 'and at most this often (a quarter of KEDA\'s polling interval in between)' },
  KMJ_SCALER_MAX_SNAPSHOT_AGE_MS: { kind: 'integer', unit: 'ms', min: 500, max: 600_000, default: 5000, help: 'older readings are refused with UNAVAILABLE' },
  KMJ_SCALER_READ_TIMEOUT_MS: { kind: 'integer', unit: 'ms', min: 100, max: 60_000, default: 3000, help: 'bound on one broker read' },
  KMJ_SCALER_FIRST_READ_WAIT_MS: { kind: 'integer', unit: 'ms', min: 0, max: 30_000, default: 2000, help: 'how long the first RPC of a new queue waits for its first read' },
  KMJ_SCALER_IDLE_TARGET_TTL_MS: { kind: 'integer', unit: 'ms', min: 1000, max: 86_400_000, default: 600_000, help: 'queues nobody asked about for this long stop being read' },
  KMJ_SCALER_CHANNELS_PER_CONNECTION: { kind: 'integer', min: 1, max: 256, default: 8, help: 'AMQP channels per broker connection (concurrent passive declares)' },
  KMJ_SCALER_CONNECT_TIMEOUT_MS: { kind: 'integer', unit: 'ms', min: 100, max: 60_000, default: 3000, help: 'bound on opening a broker connection' },
  KMJ_SCALER_RECONNECT_MAX_BACKOFF_MS: { kind: 'integer', unit: 'ms', min: 100, max: 60_000, default: 2000, help: 'cap of the reconnect backoff' },
  KMJ_SCALER_TLS_CERT_FILE: { kind: 'string', help: 'PEM server certificate: serve gRPC over TLS' },
  KMJ_SCALER_TLS_KEY_FILE: { kind: 'string', help: 'PEM private key of the server certificate' },
  KMJ_SCALER_TLS_CLIENT_CA_FILE: { kind: 'string', help: 'PEM CA for client certificates: require mutual TLS' },
  KMJ_SCALER_CONNECTIONS_FILE: { kind: 'string', help: 'JSON file of named broker connections (a mounted Secret)' },
  RABBITMQ_URL: { ...RABBITMQ_ENV.RABBITMQ_URL, help: 'broker of the connection alias "default"' },
  RABBITMQ_MANAGEMENT_URL: { ...RABBITMQ_ENV.RABBITMQ_MANAGEMENT_URL, help: 'management API of "default" (default: RABBITMQ_URL host, port 15672, same credentials)' },
  LOG_LEVEL: { kind: 'enum', values: LOG_LEVELS, default: 'info', help: 'log level' },
} as const satisfies FieldSpecs;

export interface ScalerConfig {
  readonly host: string;
  readonly port: number;
  readonly metricsPort: number;
  readonly logLevel: LogLevel;
  readonly snapshots: SnapshotOptions;
  readonly sources: SourceSettings;
  readonly tls: TlsFiles | undefined;
}

export interface ScalerFlags {
  readonly host?: string;
  readonly port?: string;
  readonly metricsPort?: string;
}

const CONNECTION_FIELDS = {
  amqpUrl: { kind: 'url', protocols: ['amqp', 'amqps'], required: true },
  managementUrl: { kind: 'url', protocols: ['http', 'https'] },
} as const satisfies FieldSpecs;

/** The management API URL implied by an AMQP URL: same host and credentials, port 15672 (15671 for amqps). */

function readConnectionsFile(path: string, problems: string[]): Map<string, RabbitConnection> {
  const out = new Map<string, RabbitConnection>();
  const setting = 'KMJ_SCALER_CONNECTIONS_FILE';
  const text = readSettingFile(setting, path, problems);
  if (!text) return out;
  let doc: unknown;
  try {
    doc = JSON.parse(text.toString('utf8'));
  } catch (err) {
    problems.push(`${setting}: ${JSON.stringify(path)} is not valid JSON: ${messageOf(err)}`);
    return out;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    problems.push(`${setting}: ${JSON.stringify(path)} must hold an object of connection aliases`);
    return out;
  }
  for (const [alias, value] of Object.entries(doc)) {
    if (!CONNECTION_ALIAS.test(alias)) {
      problems.push(`${setting}: connection alias ${JSON.stringify(alias)} must be lowercase letters, digits, ".", "_" and "-"`);
      continue;
    }
    if (typeof value !== 'object' || value === null) {
      problems.push(`${setting}: connection ${JSON.stringify(alias)} must be an object with amqpUrl`);
      continue;
    }
    const raw: Record<string, string | undefined> = {};
    for (const [k, v] of Object.entries(value)) {
      if (!(k in CONNECTION_FIELDS)) problems.push(`${setting}: connection ${JSON.stringify(alias)}: unknown key ${JSON.stringify(k)} (allowed: amqpUrl, managementUrl)`);
      else raw[k] = typeof v === 'string' ? v : undefined;
    }
    const parsed = parseFields(CONNECTION_FIELDS, raw, { nameOf: (k) => `${setting}: connection ${JSON.stringify(alias)}: ${k}` });
    problems.push(...parsed.problems);
    if (parsed.problems.length === 0) {
      const { amqpUrl, managementUrl } = parsed.values;
      out.set(alias, { amqpUrl, managementUrl: managementUrl ?? defaultManagementUrl(amqpUrl) });
    }
  }
  return out;
}

export function loadScalerConfig(env: RawInput, flags: ScalerFlags = {}): ScalerConfig {
  const overrides: Record<string, FlagOverride | undefined> = {
    KMJ_SCALER_HOST: flags.host !== undefined ? { flag: '--host', value: flags.host } : undefined,
    KMJ_SCALER_PORT: flags.port !== undefined ? { flag: '--port', value: flags.port } : undefined,
    KMJ_SCALER_METRICS_PORT: flags.metricsPort !== undefined ? { flag: '--metrics-port', value: flags.metricsPort } : undefined,
  };
  let connections = new Map<string, RabbitConnection>();
  let tls: TlsFiles | undefined;
  const v = readConfig('scaler', SCALER_ENV, env, overrides, (c, problems) => {
    if (c.KMJ_SCALER_READ_TIMEOUT_MS >= c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS) {
      problems.push(`KMJ_SCALER_READ_TIMEOUT_MS: ${c.KMJ_SCALER_READ_TIMEOUT_MS} must be below KMJ_SCALER_MAX_SNAPSHOT_AGE_MS (${c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS})`);
    }
    if (c.KMJ_SCALER_MIN_REFRESH_INTERVAL_MS > c.KMJ_SCALER_REFRESH_INTERVAL_MS) {
      problems.push(`KMJ_SCALER_MIN_REFRESH_INTERVAL_MS: ${c.KMJ_SCALER_MIN_REFRESH_INTERVAL_MS} must not be above KMJ_SCALER_REFRESH_INTERVAL_MS (${c.KMJ_SCALER_REFRESH_INTERVAL_MS})`);
    }
    if (c.KMJ_SCALER_REFRESH_INTERVAL_MS >= c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS) {
      problems.push(`KMJ_SCALER_REFRESH_INTERVAL_MS: ${c.KMJ_SCALER_REFRESH_INTERVAL_MS} must be below KMJ_SCALER_MAX_SNAPSHOT_AGE_MS (${c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS})`);
    }
    const certFile = c.KMJ_SCALER_TLS_CERT_FILE;
    const keyFile = c.KMJ_SCALER_TLS_KEY_FILE;
    const caFile = c.KMJ_SCALER_TLS_CLIENT_CA_FILE;
    if ((certFile === undefined) !== (keyFile === undefined)) {
      problems.push('KMJ_SCALER_TLS_CERT_FILE: and KMJ_SCALER_TLS_KEY_FILE must be set together');
    } else if (caFile !== undefined && certFile === undefined) {
      problems.push('KMJ_SCALER_TLS_CLIENT_CA_FILE: mutual TLS needs KMJ_SCALER_TLS_CERT_FILE and KMJ_SCALER_TLS_KEY_FILE too');
    } else if (certFile !== undefined && keyFile !== undefined) {
      const cert = readSettingFile('KMJ_SCALER_TLS_CERT_FILE', certFile, problems);
      const key = readSettingFile('KMJ_SCALER_TLS_KEY_FILE', keyFile, problems);
      const clientCa = caFile !== undefined ? readSettingFile('KMJ_SCALER_TLS_CLIENT_CA_FILE', caFile, problems) : undefined;
      if (cert && key) tls = clientCa ? { cert, key, clientCa } : { cert, key };
    }
    connections.set('default', {
      amqpUrl: c.RABBITMQ_URL,
      managementUrl: c.RABBITMQ_MANAGEMENT_URL ?? defaultManagementUrl(c.RABBITMQ_URL),
    });
    if (c.KMJ_SCALER_CONNECTIONS_FILE !== undefined) {
      connections = new Map([...connections, ...readConnectionsFile(c.KMJ_SCALER_CONNECTIONS_FILE, problems)]);
    }
  });
  return Object.freeze({
    host: v.KMJ_SCALER_HOST,
    port: v.KMJ_SCALER_PORT,
    metricsPort: v.KMJ_SCALER_METRICS_PORT,
    logLevel: v.LOG_LEVEL,
    tls,
    snapshots: Object.freeze({
      refreshIntervalMs: v.KMJ_SCALER_REFRESH_INTERVAL_MS,
      minRefreshIntervalMs: v.KMJ_SCALER_MIN_REFRESH_INTERVAL_MS,
      maxSnapshotAgeMs: v.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS,
      readTimeoutMs: v.KMJ_SCALER_READ_TIMEOUT_MS,
      firstReadWaitMs: v.KMJ_SCALER_FIRST_READ_WAIT_MS,
      idleTargetTtlMs: v.KMJ_SCALER_IDLE_TARGET_TTL_MS,
    }),
    sources: Object.freeze({
      rabbitmq: Object.freeze({
        connections,
        maxChannelsPerConnection: v.KMJ_SCALER_CHANNELS_PER_CONNECTION,
        connectTimeoutMs: v.KMJ_SCALER_CONNECT_TIMEOUT_MS,
        minBackoffMs: 100,
        maxBackoffMs: v.KMJ_SCALER_RECONNECT_MAX_BACKOFF_MS,
        heartbeatSeconds: 10,
      }),
    }),
  });
}

