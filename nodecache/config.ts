/**
 * The node cache's configuration (`kmj model-cache`): environment variables, with `--port` on
 * top, read once. MLflow settings use the Python client's variable names, as the worker's do.
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { failOnProblems, parseSettings, type FlagOverride } from '../common/config.ts';
import type { FieldSpecs, RawInput } from '../common/fields.ts';
import { LOG_LEVELS, type LogLevel } from '../common/log.ts';
import { checkMlflow, MLFLOW_ENV, mlflowSettings, readMlflowFiles, type MlflowSettings } from '../mlflow/settings.ts';

export const NODE_CACHE_ENV = {
  KMJ_NODE_CACHE_HOST: { kind: 'string', default: '0.0.0.0', help: 'address the node cache listens on' },
  KMJ_NODE_CACHE_PORT: {
    kind: 'integer',
    min: 0,
    max: 65535,
    default: 8090,
    help: 'HTTP port of the cache, /metrics, /healthz and /readyz (--port)',
  },
  KMJ_NODE_CACHE_DIR: { kind: 'string', help: 'where the models are kept (default: ~/.cache/kmj/node-models)' },
  KMJ_NODE_CACHE_MAX_BYTES: {
    kind: 'integer',
    unit: 'bytes',
    min: 1024 * 1024,
    max: 4 * 1024 ** 4,
    default: 4 * 1024 ** 3,
    help: 'the models kept add up to at most this; the least recently used go first (a fill may pass it by one model until it ends)',
  },
  KMJ_NODE_CACHE_TOKEN: {
    kind: 'string',
    required: true,
    minLength: 16,
    help: 'the bearer token workers must present (a Secret shared with them)',
  },
  ...MLFLOW_ENV,
  LOG_LEVEL: { kind: 'enum', values: LOG_LEVELS, default: 'info', help: 'log level' },
} as const satisfies FieldSpecs;

export interface NodeCacheConfig {
  readonly host: string;
  readonly port: number;
  readonly dir: string;
  readonly maxBytes: number;
  readonly token: string;
  readonly mlflow: MlflowSettings;
  readonly logLevel: LogLevel;
}

export interface NodeCacheFlags {
  readonly port?: string;
}

export function loadNodeCacheConfig(env: RawInput, flags: NodeCacheFlags = {}): NodeCacheConfig {
  const overrides: Record<string, FlagOverride | undefined> = {
    KMJ_NODE_CACHE_PORT: flags.port !== undefined ? { flag: '--port', value: flags.port } : undefined,
  };
  const { values: v, problems, raw } = parseSettings(NODE_CACHE_ENV, env, overrides);
  const files = readMlflowFiles(raw);
  failOnProblems('node cache', problems, files.problems);
  failOnProblems(
    'node cache',
    checkMlflow(v),
    v.MLFLOW_TRACKING_URI === undefined ? ['MLFLOW_TRACKING_URI: is required: the node cache fetches models from MLflow'] : [],
  );
  const mlflow = mlflowSettings(v, files.value);
  // Checked above: without a tracking URI the load failed.
  if (!mlflow) throw new Error('unreachable: MLFLOW_TRACKING_URI is checked above');
  return Object.freeze({
    host: v.KMJ_NODE_CACHE_HOST,
    port: v.KMJ_NODE_CACHE_PORT,
    dir: v.KMJ_NODE_CACHE_DIR ?? join(homedir(), '.cache', 'kmj', 'node-models'),
    maxBytes: v.KMJ_NODE_CACHE_MAX_BYTES,
    token: v.KMJ_NODE_CACHE_TOKEN,
    mlflow,
    logLevel: v.LOG_LEVEL,
  });
}
