/**
 * Model URIs as MLflow users write them, resolved through the Model Registry REST API to an
 * artifact location served by the tracking server's artifact proxy:
 *
 *   models:/<name>/<version>   model-versions/get-download-uri
 *   models:/<name>@<alias>     registered-models/alias, then as above
 *   models:/<name>/latest      registered-models/get-latest-versions (highest version), then as above
 *   runs:/<run_id>/<path>      the run's logged model named after the path's first part (MLflow 3
 *                              logs models as LoggedModels outside the run's own artifacts), else
 *                              the run's artifact_uri + path, as the Python client resolves it
 *   models:/m-<model_id>       logged-models/get (an MLflow 3 logged model)
 *   mlflow-artifacts:/<path>   as it is
 *   file:///<dir>              a model directory on a volume under the worker's model roots
 */
import { createHash } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import { PermanentError } from '../../common/errors.ts';
import { isUnderRoots, missingOrUnreadable } from '../files.ts';
import { MlflowHttpError } from '../../mlflow/http.ts';
import { quoteFilterValue, type MlflowTracking } from '../../mlflow/tracking.ts';

export interface ResolvedModel {
  /** Where the model directory is: an mlflow-artifacts: URI (or file: for a local model). */
  readonly artifactUri: string;
  /** A local model directory (file:// URIs): read in place, no download, no cache. */
  readonly localDir?: string;
  /** Cache directory key: the same key always means the same files. */
  readonly cacheKey: string;
  readonly name?: string;
  readonly version?: string;
  /**
   * The MLflow 3 logged model these files are (a registry version made from one, a models:/m-…
   * URI, a run's logged model): the run that used it names it as an input, so the run shows on
   * the model's page as an evaluation run would.
   */
  readonly modelId?: string;
}

const REGISTRY = /^models:\/([^/@]+)(?:@([^/@]+)|\/([^/@]+))$/;
const LOGGED_MODEL = /^models:\/(m-[0-9a-f]+)$/;

interface LoggedModelInfo {
  readonly model_id: string;
  readonly name: string;
  readonly source_run_id?: string;
  readonly artifact_uri: string;
}

/** The run's logged model called `name`, if the server knows logged models and has one. */
async function loggedModelOfRun(tracking: MlflowTracking, experimentId: string, runId: string, name: string, signal: AbortSignal): Promise<LoggedModelInfo | undefined> {
  let pageToken: string | undefined;
  for (let page = 0; page < 20; page++) {
    let r: { models?: Array<{ info: LoggedModelInfo }>; next_page_token?: string };
    try {
      r = await tracking.http.api('logged-models/search', {
        method: 'POST',
        json: { experiment_ids: [experimentId], filter: `name = ${quoteFilterValue(name)}`, max_results: 100, ...(pageToken ? { page_token: pageToken } : {}) },
        signal,
      });
    } catch (err) {
      // An MLflow 2 server has no logged models: the path is a plain run artifact.
      if (err instanceof MlflowHttpError && (err.status === 404 || err.errorCode === 'ENDPOINT_NOT_FOUND')) return undefined;
      throw err;
    }
    const hit = (r.models ?? []).find((m) => m.info.source_run_id === runId);
    if (hit) return hit.info;
    if (!r.next_page_token) return undefined;
    pageToken = r.next_page_token;
  }
  return undefined;
}
const RUNS = /^runs:\/([0-9a-zA-Z-]+)\/(.+)$/;

function notFound(err: unknown): boolean {
  return err instanceof MlflowHttpError && (err.errorCode === 'RESOURCE_DOES_NOT_EXIST' || err.status === 404);
}

/** MLflow 3 answers an alias lookup of an unknown alias with 400 INVALID_PARAMETER_VALUE. */
function aliasNotFound(err: unknown): boolean {
  return notFound(err) || (err instanceof MlflowHttpError && err.status === 400 && err.errorCode === 'INVALID_PARAMETER_VALUE');
}

function requireProxy(artifactUri: string, what: string): string {
  if (!artifactUri.startsWith('mlflow-artifacts:')) {
    throw new PermanentError(
      `model: ${what} is stored at ${artifactUri}, which the worker cannot read: run the tracking server with --serve-artifacts so artifacts are served through it`,
      { field: 'model' },
    );
  }
  return artifactUri.replace(/\/+$/, '');
}

/**
 * The cache key a URI resolves to without asking MLflow, when there is one: a registry version,
 * a logged model id, a run path, an artifact path always name the same files. Aliases and
 * `latest` move, so they need the registry. Used when MLflow is unreachable (the spool).
 */
export function resolveModelOffline(uri: string): ResolvedModel | undefined {
  const reg = REGISTRY.exec(uri);
  if (reg) {
    const name = decodeURIComponent(reg[1] ?? '');
    const version = reg[3];
    if (version === undefined || !/^\d+$/.test(version)) return undefined;
    return { artifactUri: '', cacheKey: registryKey(name, version), name, version };
  }
  const logged = LOGGED_MODEL.exec(uri);
  if (logged) return { artifactUri: '', cacheKey: loggedKey(logged[1] ?? '') };
  const runs = RUNS.exec(uri);
  if (runs) return { artifactUri: '', cacheKey: runsKey(runs[1] ?? '', runPath(runs)) };
  if (uri.startsWith('mlflow-artifacts:')) return artifactModel(uri);
  return undefined;
}

// Cache keys: the same key always names the same files, online or offline.
const registryKey = (name: string, version: string): string => `registry/${encodeURIComponent(name)}/${version}`;
const loggedKey = (modelId: string): string => `logged/${modelId}`;
const runsKey = (runId: string, path: string): string => `runs/${runId}/${encodeURIComponent(path)}`;

/** The path of a runs:/ URI inside its run, without slashes at either end. */
function runPath(runs: RegExpExecArray): string {
  return (runs[2] ?? '').replace(/^\/+|\/+$/g, '');
}

/** An mlflow-artifacts: URI names its files itself. */
function artifactModel(uri: string): ResolvedModel {
  return { artifactUri: uri.replace(/\/+$/, ''), cacheKey: `artifacts/${createHash('sha256').update(uri).digest('hex').slice(0, 24)}` };
}

/** A `file://` model directory, checked to be under one of the worker's model roots. */
export async function resolveLocalModel(uri: string, roots: readonly string[]): Promise<ResolvedModel> {
  let path: string;
  try {
    path = decodeURIComponent(new URL(uri).pathname);
  } catch {
    throw new PermanentError(`model: ${JSON.stringify(uri)} is not a valid file URI`, { field: 'model' });
  }
  let real: string;
  try {
    real = await realpath(path);
  } catch (err) {
    throw missingOrUnreadable(err, `model: ${path}`, 'model');
  }
  if (!(await isUnderRoots(real, roots))) {
    throw new PermanentError(`model: ${path} is outside the worker's model roots (${roots.join(', ')})`, { field: 'model' });
  }
  return { artifactUri: uri, cacheKey: '', localDir: real };
}

export async function resolveModel(uri: string, tracking: MlflowTracking, signal: AbortSignal): Promise<ResolvedModel> {
  const reg = REGISTRY.exec(uri);
  if (reg) {
    const name = decodeURIComponent(reg[1] ?? '');
    const alias = reg[2];
    let version = reg[3] ?? '';
    if (alias !== undefined) {
      try {
        const r = await tracking.http.api<{ model_version: { version: string } }>('registered-models/alias', { method: 'GET', query: { name, alias }, signal });
        version = r.model_version.version;
      } catch (err) {
        if (aliasNotFound(err)) throw new PermanentError(`model: registered model ${JSON.stringify(name)} has no alias ${JSON.stringify(alias)}`, { field: 'model', cause: err });
        throw err;
      }
    } else if (version === 'latest') {
      try {
        const r = await tracking.http.api<{ model_versions?: Array<{ version: string }> }>('registered-models/get-latest-versions', { method: 'POST', json: { name }, signal });
        const versions = (r.model_versions ?? []).map((v) => Number(v.version)).filter(Number.isFinite);
        if (versions.length === 0) throw new PermanentError(`model: registered model ${JSON.stringify(name)} has no versions`, { field: 'model' });
        version = String(Math.max(...versions));
      } catch (err) {
        if (notFound(err)) throw new PermanentError(`model: registered model ${JSON.stringify(name)} does not exist`, { field: 'model', cause: err });
        throw err;
      }
    } else if (!/^\d+$/.test(version)) {
      throw new PermanentError(`model: ${JSON.stringify(uri)} names stage or version ${JSON.stringify(version)}; use models:/<name>/<version>, models:/<name>@<alias> or models:/<name>/latest`, { field: 'model' });
    }
    let artifactUri: string;
    let modelId: string | undefined;
    try {
      // The files, and the logged model the version was made from (MLflow 3; none before).
      const [download, got] = await Promise.all([
        tracking.http.api<{ artifact_uri: string }>('model-versions/get-download-uri', { method: 'GET', query: { name, version }, signal }),
        tracking.http.api<{ model_version: { model_id?: string; source?: string } }>('model-versions/get', { method: 'GET', query: { name, version }, signal }),
      ]);
      artifactUri = download.artifact_uri;
      // MLflow 3 names it as model_id, or (3.x's REST answer) only as the version's source,
      // models:/m-<id>.
      modelId = got.model_version.model_id || LOGGED_MODEL.exec(got.model_version.source ?? '')?.[1] || undefined;
    } catch (err) {
      if (notFound(err)) throw new PermanentError(`model: registered model ${JSON.stringify(name)} version ${version} does not exist`, { field: 'model', cause: err });
      throw err;
    }
    return { artifactUri: requireProxy(artifactUri, `${name} version ${version}`), cacheKey: registryKey(name, version), name, version, ...(modelId !== undefined ? { modelId } : {}) };
  }
  const logged = LOGGED_MODEL.exec(uri);
  if (logged) {
    const modelId = logged[1] ?? '';
    try {
      const r = await tracking.http.api<{ model: { info: LoggedModelInfo } }>(`logged-models/${modelId}`, { method: 'GET', signal });
      return { artifactUri: requireProxy(r.model.info.artifact_uri, `logged model ${modelId}`), cacheKey: loggedKey(modelId), modelId };
    } catch (err) {
      if (notFound(err)) throw new PermanentError(`model: logged model ${modelId} does not exist`, { field: 'model', cause: err });
      throw err;
    }
  }
  const runs = RUNS.exec(uri);
  if (runs) {
    const runId = runs[1] ?? '';
    const path = runPath(runs);
    let info: { artifact_uri: string; experiment_id: string };
    try {
      info = (await tracking.getRun(runId, signal)).info;
    } catch (err) {
      if (notFound(err)) throw new PermanentError(`model: run ${runId} does not exist`, { field: 'model', cause: err });
      throw err;
    }
    const [first = '', ...rest] = path.split('/');
    const model = await loggedModelOfRun(tracking, info.experiment_id, runId, first, signal);
    const artifactUri = model
      ? [model.artifact_uri.replace(/\/+$/, ''), ...rest].join('/')
      : `${info.artifact_uri.replace(/\/+$/, '')}/${path}`;
    return { artifactUri: requireProxy(artifactUri, `run ${runId}`), cacheKey: runsKey(runId, path), ...(model ? { modelId: model.model_id } : {}) };
  }
  if (uri.startsWith('mlflow-artifacts:')) return artifactModel(uri);
  throw new PermanentError(`model: ${JSON.stringify(uri)} is not a models:/, runs:/ or mlflow-artifacts: URI of a form the worker knows`, { field: 'model' });
}
