/**
 * Kafka connection settings every component reads the same way: the variables (the scaler's
 * alias "default", the worker, `kmj submit --kafka` and `kmj status --kafka`), and the keys of a
 * Kafka entry in the scaler's connections file. Passwords and keys are read here once and never
 * logged: a KafkaConnection is shown only through `describeConnection`.
 */
import { ConfigError, readSettingFile } from '../common/config.ts';
import { parseFields, type Checked, type FieldSpecs, type RawInput } from '../common/fields.ts';

export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512'] as const;
export type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/** host:port, comma-separated; hosts are names, IPv4 or [IPv6]. */
const BROKER_LIST = /^\s*(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\]):\d{1,5}\s*(?:,\s*(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:.]+\]):\d{1,5}\s*)*$/;

export const KAFKA_ENV = {
  KAFKA_BROKERS: {
    kind: 'string',
    pattern: BROKER_LIST,
    patternHint: 'a comma-separated list of host:port',
    help: 'bootstrap brokers, host:port,host:port',
  },
  KAFKA_SASL_MECHANISM: { kind: 'enum', values: SASL_MECHANISMS, help: 'SASL mechanism (default: no SASL)' },
  KAFKA_USERNAME: { kind: 'string', maxLength: 1024, help: 'SASL user name' },
  KAFKA_PASSWORD: { kind: 'string', maxLength: 4096, help: 'SASL password (from a Secret; never logged)' },
  KAFKA_TLS: { kind: 'boolean', default: false, help: 'connect over TLS' },
  KAFKA_TLS_CA_FILE: { kind: 'string', help: 'PEM CA bundle that signs the brokers (default: the system CAs)' },
  KAFKA_TLS_CERT_FILE: { kind: 'string', help: 'PEM client certificate, for brokers that require one' },
  KAFKA_TLS_KEY_FILE: { kind: 'string', help: 'PEM private key of the client certificate' },
  KAFKA_TLS_SERVER_NAME: { kind: 'string', maxLength: 253, help: "name the brokers' certificates must carry (default: the broker host)" },
} as const satisfies FieldSpecs;

/** A connections-file entry's keys, and the variable each stands for. */
const ENTRY_KEYS = {
  brokers: 'KAFKA_BROKERS',
  saslMechanism: 'KAFKA_SASL_MECHANISM',
  username: 'KAFKA_USERNAME',
  password: 'KAFKA_PASSWORD',
  tls: 'KAFKA_TLS',
  caFile: 'KAFKA_TLS_CA_FILE',
  certFile: 'KAFKA_TLS_CERT_FILE',
  keyFile: 'KAFKA_TLS_KEY_FILE',
  serverName: 'KAFKA_TLS_SERVER_NAME',
} as const satisfies Record<string, keyof typeof KAFKA_ENV>;

/** The keys of a Kafka entry in KMJ_SCALER_CONNECTIONS_FILE: KAFKA_ENV's fields under short names. */
export const KAFKA_CONNECTION_FIELDS: FieldSpecs = Object.fromEntries(
  Object.entries(ENTRY_KEYS).map(([key, env]) => [key, key === 'brokers' ? { ...KAFKA_ENV[env], required: true } : KAFKA_ENV[env]]),
);

export interface KafkaConnection {
  readonly brokers: readonly string[];
  readonly sasl: { readonly mechanism: SaslMechanism; readonly username: string; readonly password: string } | undefined;
  readonly tls: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer; readonly servername?: string } | undefined;
}

/**
 * Reads a Kafka connection from variables named as in KAFKA_ENV (`nameOf` names them in
 * problems). The value is undefined when KAFKA_BROKERS is unset (with no problems unless other
 * Kafka settings are set without it), or when something is wrong (the problems say what).
 */
export function kafkaConnection(input: RawInput, nameOf: (envKey: string) => string = (k) => k): Checked<KafkaConnection | undefined> {
  const { values: v, problems: own } = parseFields(KAFKA_ENV, input, { nameOf });
  if (own.length > 0) return { value: undefined, problems: own };
  const problems: string[] = [];
  if (v.KAFKA_BROKERS === undefined) {
    for (const key of Object.keys(KAFKA_ENV) as (keyof typeof KAFKA_ENV)[]) {
      if (key !== 'KAFKA_BROKERS' && key !== 'KAFKA_TLS' && v[key] !== undefined)
        problems.push(`${nameOf(key)}: is set but ${nameOf('KAFKA_BROKERS')} is not`);
    }
    return { value: undefined, problems };
  }
  let sasl: KafkaConnection['sasl'];
  if (v.KAFKA_SASL_MECHANISM !== undefined) {
    if (v.KAFKA_USERNAME === undefined)
      problems.push(`${nameOf('KAFKA_USERNAME')}: is required with ${nameOf('KAFKA_SASL_MECHANISM')} ${v.KAFKA_SASL_MECHANISM}`);
    if (v.KAFKA_PASSWORD === undefined)
      problems.push(`${nameOf('KAFKA_PASSWORD')}: is required with ${nameOf('KAFKA_SASL_MECHANISM')} ${v.KAFKA_SASL_MECHANISM}`);
    if (v.KAFKA_USERNAME !== undefined && v.KAFKA_PASSWORD !== undefined)
      sasl = { mechanism: v.KAFKA_SASL_MECHANISM, username: v.KAFKA_USERNAME, password: v.KAFKA_PASSWORD };
  } else if (v.KAFKA_USERNAME !== undefined || v.KAFKA_PASSWORD !== undefined) {
    problems.push(
      `${nameOf(v.KAFKA_USERNAME !== undefined ? 'KAFKA_USERNAME' : 'KAFKA_PASSWORD')}: needs ${nameOf('KAFKA_SASL_MECHANISM')} (one of ${SASL_MECHANISMS.join(', ')})`,
    );
  }
  let tls: KafkaConnection['tls'];
  const files = (['KAFKA_TLS_CA_FILE', 'KAFKA_TLS_CERT_FILE', 'KAFKA_TLS_KEY_FILE', 'KAFKA_TLS_SERVER_NAME'] as const).filter(
    (k) => v[k] !== undefined,
  );
  if (!v.KAFKA_TLS) {
    for (const k of files) problems.push(`${nameOf(k)}: needs ${nameOf('KAFKA_TLS')} true`);
  } else if ((v.KAFKA_TLS_CERT_FILE === undefined) !== (v.KAFKA_TLS_KEY_FILE === undefined)) {
    problems.push(`${nameOf('KAFKA_TLS_CERT_FILE')}: and ${nameOf('KAFKA_TLS_KEY_FILE')} must be set together`);
  } else {
    const read = (k: 'KAFKA_TLS_CA_FILE' | 'KAFKA_TLS_CERT_FILE' | 'KAFKA_TLS_KEY_FILE'): Buffer | undefined => {
      const path = v[k];
      if (path === undefined) return undefined;
      const file = readSettingFile(nameOf(k), path);
      problems.push(...file.problems);
      return file.value;
    };
    const ca = read('KAFKA_TLS_CA_FILE');
    const cert = read('KAFKA_TLS_CERT_FILE');
    const key = read('KAFKA_TLS_KEY_FILE');
    tls = {
      ...(ca ? { ca } : {}),
      ...(cert ? { cert } : {}),
      ...(key ? { key } : {}),
      ...(v.KAFKA_TLS_SERVER_NAME !== undefined ? { servername: v.KAFKA_TLS_SERVER_NAME } : {}),
    };
  }
  if (problems.length > 0) return { value: undefined, problems };
  return { value: Object.freeze({ brokers: Object.freeze(v.KAFKA_BROKERS.split(',').map((b) => b.trim())), sasl, tls }), problems };
}

/**
 * A Kafka connection a command cannot do without (`kmj status --kafka`, `kmj submit --kafka`): a
 * ConfigError naming every problem, or "KAFKA_BROKERS: is required <when>" when it is unset.
 */
export function requireKafkaConnection(component: string, input: RawInput, when: string): KafkaConnection {
  const { value, problems } = kafkaConnection(input);
  if (!value) throw new ConfigError(component, problems.length > 0 ? problems : [`KAFKA_BROKERS: is required ${when}`]);
  return value;
}

/** Reads a connections-file entry (keys of KAFKA_CONNECTION_FIELDS). */
export function kafkaConnectionOfEntry(entry: RawInput, nameOf: (key: string) => string): Checked<KafkaConnection | undefined> {
  const input: Record<string, string | undefined> = {};
  const keyOf = new Map<string, string>();
  for (const [key, env] of Object.entries(ENTRY_KEYS)) {
    input[env] = entry[key];
    keyOf.set(env, key);
  }
  if (entry['brokers'] === undefined || entry['brokers'] === '')
    return { value: undefined, problems: [`${nameOf('brokers')}: is required`] };
  return kafkaConnection(input, (env) => nameOf(keyOf.get(env) ?? env));
}

/** What may be logged of a connection: brokers, mechanism, user, TLS on or off. */
export function describeConnection(c: KafkaConnection): Record<string, unknown> {
  return { brokers: c.brokers.join(','), sasl: c.sasl?.mechanism ?? 'none', user: c.sasl?.username, tls: c.tls !== undefined };
}
