/**
 * MLflow settings, with the Python client's variable names (a pod spec written for Python works as
 * is): the one definition every component that talks to MLflow reads, alone (`loadMlflowSettings`)
 * or inside its own configuration (`MLFLOW_ENV`, `checkMlflow`, `readMlflowFiles`, `mlflowSettings`).
 */
import { failOnProblems, parseSettings, readSettingFile, type FlagOverride } from '../common/config.ts';
import type { Checked, FieldSpecs, Parsed, RawInput } from '../common/fields.ts';

export const MLFLOW_ENV = {
  MLFLOW_TRACKING_URI: { kind: 'url', protocols: ['http', 'https'], help: 'MLflow tracking server' },
  MLFLOW_TRACKING_USERNAME: { kind: 'string', help: 'Basic auth user' },
  MLFLOW_TRACKING_PASSWORD: { kind: 'string', help: 'Basic auth password' },
  MLFLOW_TRACKING_TOKEN: { kind: 'string', help: 'bearer token (instead of user and password)' },
  MLFLOW_TRACKING_INSECURE_TLS: { kind: 'boolean', default: false, help: 'skip verifying the server certificate' },
  MLFLOW_TRACKING_SERVER_CERT_PATH: { kind: 'string', help: 'PEM CA bundle for the server certificate' },
  MLFLOW_TRACKING_CLIENT_CERT_PATH: { kind: 'string', help: 'PEM file with a client certificate and key' },
  MLFLOW_HTTP_REQUEST_MAX_RETRIES: { kind: 'integer', min: 0, max: 20, default: 7, help: 'retries of one MLflow request' },
  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: { kind: 'number', min: 0, max: 60, default: 2, help: 'retry n waits factor × 2^(n−1) s' },
  MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: { kind: 'number', min: 0, max: 60, default: 1, help: 'plus up to this many seconds' },
  MLFLOW_HTTP_REQUEST_TIMEOUT: { kind: 'integer', min: 1, max: 3600, default: 120, help: 'seconds per MLflow request' },
} as const satisfies FieldSpecs;

export interface MlflowSettings {
  readonly trackingUri: string;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly token: string | undefined;
  readonly insecureTls: boolean;
  readonly serverCa: Buffer | undefined;
  readonly clientCert: Buffer | undefined;
  readonly maxRetries: number;
  readonly backoffFactorSeconds: number;
  readonly backoffJitterSeconds: number;
  readonly requestTimeoutMs: number;
}

export type MlflowValues = Parsed<typeof MLFLOW_ENV>;

/** The rules across the MLflow settings: each broken one as a problem. */
export function checkMlflow(c: MlflowValues): string[] {
  const problems: string[] = [];
  if (c.MLFLOW_TRACKING_TOKEN !== undefined && c.MLFLOW_TRACKING_USERNAME !== undefined) {
    problems.push('MLFLOW_TRACKING_TOKEN: set either a token or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, not both');
  }
  const userInUri = c.MLFLOW_TRACKING_URI !== undefined && new URL(c.MLFLOW_TRACKING_URI).username !== '';
  if (c.MLFLOW_TRACKING_PASSWORD !== undefined && c.MLFLOW_TRACKING_USERNAME === undefined && !userInUri) {
    problems.push('MLFLOW_TRACKING_PASSWORD: is set without MLFLOW_TRACKING_USERNAME');
  }
  return problems;
}

/** The certificate files the MLflow settings name, as read. */
export interface MlflowFiles {
  readonly serverCa: Buffer | undefined;
  readonly clientCert: Buffer | undefined;
}

/** Reads the certificate files the MLflow settings name; each unreadable one is a problem. */
export function readMlflowFiles(raw: RawInput): Checked<MlflowFiles> {
  const read = (setting: string): Checked<Buffer | undefined> => {
    const path = raw[setting];
    return path === undefined || path === '' ? { value: undefined, problems: [] } : readSettingFile(setting, path);
  };
  const serverCa = read('MLFLOW_TRACKING_SERVER_CERT_PATH');
  const clientCert = read('MLFLOW_TRACKING_CLIENT_CERT_PATH');
  return { value: { serverCa: serverCa.value, clientCert: clientCert.value }, problems: [...serverCa.problems, ...clientCert.problems] };
}

export function mlflowSettings(v: MlflowValues, files: MlflowFiles): MlflowSettings | undefined {
  if (v.MLFLOW_TRACKING_URI === undefined) return undefined;
  return Object.freeze({
    trackingUri: v.MLFLOW_TRACKING_URI,
    username: v.MLFLOW_TRACKING_USERNAME,
    password: v.MLFLOW_TRACKING_PASSWORD,
    token: v.MLFLOW_TRACKING_TOKEN,
    insecureTls: v.MLFLOW_TRACKING_INSECURE_TLS,
    serverCa: files.serverCa,
    clientCert: files.clientCert,
    maxRetries: v.MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    backoffFactorSeconds: v.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    backoffJitterSeconds: v.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
    requestTimeoutMs: v.MLFLOW_HTTP_REQUEST_TIMEOUT * 1000,
  });
}

/**
 * MLflow settings alone, for the commands that read or write MLflow (submit --wait, status,
 * replay). `trackingUri` is a --to/--mlflow flag overriding MLFLOW_TRACKING_URI.
 */
export function loadMlflowSettings(component: string, env: RawInput, trackingUri?: FlagOverride): MlflowSettings | undefined {
  const { values, problems, raw } = parseSettings(MLFLOW_ENV, env, { MLFLOW_TRACKING_URI: trackingUri });
  const files = readMlflowFiles(raw);
  failOnProblems(component, problems, files.problems);
  failOnProblems(component, checkMlflow(values));
  return mlflowSettings(values, files.value);
}
