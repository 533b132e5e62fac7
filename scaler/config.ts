/**
 * The scaler's configuration: environment variables, with `--host`, `--port` and
 * `--metrics-port` flags on top. Each source reads its own variables (RabbitMQ's alias "default"
 * from RABBITMQ_URL, Kafka's from KAFKA_BROKERS) and its entries of a JSON file of named
 * connections, typically a mounted Secret:
 *
 *     { "prod": { "amqpUrl": "amqps://…" }, "events": { "source": "kafka", "brokers": "…" } }
 *
 * An entry without `source` is RabbitMQ's. Aliases are unique across sources.
 */
import { failOnProblems, parseSettings, readSettingFile, type FlagOverride } from '../common/config.ts';
import { describeFields, type Checked, type FieldSpecs, type Parsed, type RawInput } from '../common/fields.ts';
import { LOG_LEVELS, type LogLevel } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import type { TlsFiles } from './grpc-server.ts';
import type { SnapshotOptions } from './snapshots.ts';
import { CONNECTION_ALIAS } from './sources/shared.ts';
import { DEFAULT_SOURCE, SOURCES } from './sources/registry.ts';
import type { BrokerTuning, ConfiguredSource } from './sources/source.ts';

export const SCALER_ENV = {
  KMJ_SCALER_HOST: { kind: 'string', default: '0.0.0.0', help: 'address the gRPC and metrics servers listen on' },
  KMJ_SCALER_PORT: { kind: 'integer', min: 0, max: 65535, default: 6000, help: 'gRPC port (--port)' },
  KMJ_SCALER_METRICS_PORT: {
    kind: 'integer',
    min: 0,
    max: 65535,
    default: 8080,
    help: 'HTTP port for /metrics, /healthz, /readyz (--metrics-port)',
  },
  KMJ_SCALER_REFRESH_INTERVAL_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 60_000,
    default: 1000,
    help: 'each queue is read at least this often',
  },
  KMJ_SCALER_MIN_REFRESH_INTERVAL_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 50,
    max: 60_000,
    default: 200,
    help: 'and at most this often (in between, once per KEDA poll, just before it)',
  },
  KMJ_SCALER_MAX_SNAPSHOT_AGE_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 500,
    max: 600_000,
    default: 5000,
    help: 'older readings are refused with UNAVAILABLE',
  },
  KMJ_SCALER_READ_TIMEOUT_MS: { kind: 'integer', unit: 'ms', min: 100, max: 60_000, default: 3000, help: 'bound on one broker read' },
  KMJ_SCALER_FIRST_READ_WAIT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 0,
    max: 30_000,
    default: 2000,
    help: 'how long the first RPC of a new queue waits for its first read',
  },
  KMJ_SCALER_IDLE_TARGET_TTL_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 1000,
    max: 86_400_000,
    default: 600_000,
    help: 'queues nobody asked about for this long stop being read',
  },
  KMJ_SCALER_CONNECT_TIMEOUT_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 60_000,
    default: 3000,
    help: 'bound on opening a broker connection',
  },
  KMJ_SCALER_RECONNECT_MAX_BACKOFF_MS: {
    kind: 'integer',
    unit: 'ms',
    min: 100,
    max: 60_000,
    default: 2000,
    help: 'cap of the reconnect backoff',
  },
  KMJ_SCALER_TLS_CERT_FILE: { kind: 'string', help: 'PEM server certificate: serve gRPC over TLS' },
  KMJ_SCALER_TLS_KEY_FILE: { kind: 'string', help: 'PEM private key of the server certificate' },
  KMJ_SCALER_TLS_CLIENT_CA_FILE: { kind: 'string', help: 'PEM CA for client certificates: require mutual TLS' },
  KMJ_SCALER_CONNECTIONS_FILE: { kind: 'string', help: 'JSON file of named broker connections (a mounted Secret)' },
  LOG_LEVEL: { kind: 'enum', values: LOG_LEVELS, default: 'info', help: 'log level' },
} as const satisfies FieldSpecs;

export interface ScalerConfig {
  readonly host: string;
  readonly port: number;
  readonly metricsPort: number;
  readonly logLevel: LogLevel;
  readonly snapshots: SnapshotOptions;
  /** Every source of the registry, configured; by source name. */
  readonly sources: ReadonlyMap<string, ConfiguredSource>;
  readonly tuning: BrokerTuning;
  readonly tls: TlsFiles | undefined;
}

export interface ScalerFlags {
  readonly host?: string;
  readonly port?: string;
  readonly metricsPort?: string;
}

const SETTING = 'KMJ_SCALER_CONNECTIONS_FILE';

/** The connections file's entries, by source name and alias, each without its `source` key. */
function readConnectionsFile(path: string): Checked<Map<string, Map<string, RawInput>>> {
  const out = new Map<string, Map<string, RawInput>>(SOURCES.map((d) => [d.name, new Map()]));
  const text = readSettingFile(SETTING, path);
  if (!text.value) return { value: out, problems: text.problems };
  let doc: unknown;
  try {
    doc = JSON.parse(text.value.toString('utf8'));
  } catch (err) {
    return { value: out, problems: [`${SETTING}: ${JSON.stringify(path)} is not valid JSON: ${messageOf(err)}`] };
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    return { value: out, problems: [`${SETTING}: ${JSON.stringify(path)} must hold an object of connection aliases`] };
  }
  const problems: string[] = [];
  for (const [alias, value] of Object.entries(doc)) {
    const where = `${SETTING}: connection ${JSON.stringify(alias)}`;
    if (!CONNECTION_ALIAS.test(alias)) {
      problems.push(`${SETTING}: connection alias ${JSON.stringify(alias)} must be lowercase letters, digits, ".", "_" and "-"`);
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      problems.push(`${where} must be an object of string settings`);
      continue;
    }
    const entry = value as Record<string, unknown>;
    const source = entry['source'] ?? DEFAULT_SOURCE;
    const definition = SOURCES.find((d) => d.name === source);
    if (!definition) {
      problems.push(`${where}: source: ${JSON.stringify(source)} is not a source (allowed: ${SOURCES.map((d) => d.name).join(', ')})`);
      continue;
    }
    const raw: Record<string, string> = {};
    for (const [k, v] of Object.entries(entry)) {
      if (k === 'source') continue;
      if (!(k in definition.connectionFields)) {
        problems.push(
          `${where}: unknown key ${JSON.stringify(k)} (allowed for ${definition.name}: source, ${Object.keys(definition.connectionFields).join(', ')})`,
        );
      } else if (typeof v !== 'string') {
        problems.push(`${where}: ${k} must be a string`);
      } else {
        raw[k] = v;
      }
    }
    out.get(definition.name)?.set(alias, raw);
  }
  return { value: out, problems };
}

/** The rules across the scaler's settings, and its TLS files read: each broken rule or unreadable file as a problem. */
function checkScalerSettings(c: Parsed<typeof SCALER_ENV>): Checked<TlsFiles | undefined> {
  const problems: string[] = [];
  if (c.KMJ_SCALER_READ_TIMEOUT_MS >= c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS) {
    problems.push(
      `KMJ_SCALER_READ_TIMEOUT_MS: ${c.KMJ_SCALER_READ_TIMEOUT_MS} must be below KMJ_SCALER_MAX_SNAPSHOT_AGE_MS (${c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS})`,
    );
  }
  if (c.KMJ_SCALER_MIN_REFRESH_INTERVAL_MS > c.KMJ_SCALER_REFRESH_INTERVAL_MS) {
    problems.push(
      `KMJ_SCALER_MIN_REFRESH_INTERVAL_MS: ${c.KMJ_SCALER_MIN_REFRESH_INTERVAL_MS} must not be above KMJ_SCALER_REFRESH_INTERVAL_MS (${c.KMJ_SCALER_REFRESH_INTERVAL_MS})`,
    );
  }
  if (c.KMJ_SCALER_REFRESH_INTERVAL_MS >= c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS) {
    problems.push(
      `KMJ_SCALER_REFRESH_INTERVAL_MS: ${c.KMJ_SCALER_REFRESH_INTERVAL_MS} must be below KMJ_SCALER_MAX_SNAPSHOT_AGE_MS (${c.KMJ_SCALER_MAX_SNAPSHOT_AGE_MS})`,
    );
  }
  const certFile = c.KMJ_SCALER_TLS_CERT_FILE;
  const keyFile = c.KMJ_SCALER_TLS_KEY_FILE;
  const caFile = c.KMJ_SCALER_TLS_CLIENT_CA_FILE;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    problems.push('KMJ_SCALER_TLS_CERT_FILE: and KMJ_SCALER_TLS_KEY_FILE must be set together');
  } else if (caFile !== undefined && certFile === undefined) {
    problems.push('KMJ_SCALER_TLS_CLIENT_CA_FILE: mutual TLS needs KMJ_SCALER_TLS_CERT_FILE and KMJ_SCALER_TLS_KEY_FILE too');
  } else if (certFile !== undefined && keyFile !== undefined) {
    const cert = readSettingFile('KMJ_SCALER_TLS_CERT_FILE', certFile);
    const key = readSettingFile('KMJ_SCALER_TLS_KEY_FILE', keyFile);
    const clientCa = caFile !== undefined ? readSettingFile('KMJ_SCALER_TLS_CLIENT_CA_FILE', caFile) : { value: undefined, problems: [] };
    problems.push(...cert.problems, ...key.problems, ...clientCa.problems);
    if (cert.value && key.value) {
      const tls: TlsFiles = clientCa.value
        ? { cert: cert.value, key: key.value, clientCa: clientCa.value }
        : { cert: cert.value, key: key.value };
      return { value: tls, problems };
    }
  }
  return { value: undefined, problems };
}

/** Every source configured from the environment and its entries of the connections file. */
function configureSources(env: RawInput, file: string | undefined): Checked<Map<string, ConfiguredSource>> {
  const entries = file !== undefined && file !== '' ? readConnectionsFile(file) : undefined;
  const problems = [...(entries?.problems ?? [])];
  const sources = new Map<string, ConfiguredSource>();
  for (const d of SOURCES) {
    const configured = d.configure({
      env,
      connections: entries?.value.get(d.name) ?? new Map(),
      nameOf: (alias, key) => `${SETTING}: connection ${JSON.stringify(alias)}: ${key}`,
    });
    problems.push(...configured.problems);
    sources.set(d.name, configured.value);
  }
  return { value: sources, problems };
}

export function loadScalerConfig(env: RawInput, flags: ScalerFlags = {}): ScalerConfig {
  const overrides: Record<string, FlagOverride | undefined> = {
    KMJ_SCALER_HOST: flags.host !== undefined ? { flag: '--host', value: flags.host } : undefined,
    KMJ_SCALER_PORT: flags.port !== undefined ? { flag: '--port', value: flags.port } : undefined,
    KMJ_SCALER_METRICS_PORT: flags.metricsPort !== undefined ? { flag: '--metrics-port', value: flags.metricsPort } : undefined,
  };
  const { values: v, problems, raw } = parseSettings(SCALER_ENV, env, overrides);
  const sources = configureSources(env, raw['KMJ_SCALER_CONNECTIONS_FILE']);
  failOnProblems('scaler', problems, sources.problems);
  const checked = checkScalerSettings(v);
  failOnProblems('scaler', checked.problems);
  const tls = checked.value;
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
    sources: sources.value,
    tuning: Object.freeze({
      connectTimeoutMs: v.KMJ_SCALER_CONNECT_TIMEOUT_MS,
      minBackoffMs: 100,
      maxBackoffMs: v.KMJ_SCALER_RECONNECT_MAX_BACKOFF_MS,
      heartbeatSeconds: 10,
    }),
  });
}

/** --help text of every source: its variables, its connection-file keys and its trigger metadata. */
export function describeSources(): string {
  const head = `Trigger metadata (ScaledJob trigger of type external), for every source:
  source [${SOURCES.map((d) => d.name).join('|')}] (default ${DEFAULT_SOURCE}), targetSize (default 1),
  activationThreshold (default 0). See docs/scaler.md.`;
  const parts = SOURCES.map(
    (d) => `Source ${d.name}: environment
${describeFields(d.env)}
Source ${d.name}: keys of a KMJ_SCALER_CONNECTIONS_FILE entry${d.name === DEFAULT_SOURCE ? '' : ` (with "source": "${d.name}")`}
${describeFields(d.connectionFields)}
Source ${d.name}: trigger metadata
${describeFields(d.fields)}`,
  );
  return [head, ...parts].join('\n\n');
}
