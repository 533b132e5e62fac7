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

/**
 * What a model URI names, as far as the cache needs to know: which files (the cache key) and,
 * for a registry version, which registration of it. Resolving it asks MLflow only what a moving
 * name (an alias, `latest`) or a re-creatable one (a registry version) needs; where the files
 * are is asked (`locateModel`) only when they must be fetched.
 */
export interface ModelRef {
  readonly uri: string;
  /** Cache directory key: the same key always means the same files. */
  readonly cacheKey: string;
  readonly name?: string;
  readonly version?: string;
  /**
   * The MLflow 3 logged model these files are (a registry version made from one, a models:/m-…
   * URI, a run's logged model): the run that used it names it as an input, so the run shows on
   * the model's page as an evaluation run would. For a runs:/ URI it is known once located.
   */
  readonly modelId?: string;
  /**
   * For a registry version, what tells this registration from another of the same name and
   * number (a registered model deleted and made again starts at version 1 again): its creation
   * time and source. A cached copy of another origin is not this model.
   */
  readonly origin?: string;
}

/** Where a model's files are: an mlflow-artifacts: URI, served by the tracking server's proxy. */
export interface ModelLocation {
  readonly artifactUri: string;
  readonly modelId?: string;
}

/** A model ready to be read: its reference and where its files are (or, local, the directory). */
export interface ResolvedModel extends ModelRef {
  /** Where the model directory is: an mlflow-artifacts: URI (or file: for a local model). */
  readonly artifactUri: string;
  /** A local model directory (file:// URIs): read in place, no download, no cache. */
  readonly localDir?: string;
}

/** Each MLflow call made for a model, with how long it took (the run's model_load breakdown). */
export type ModelCalls = Array<{ readonly call: string; readonly seconds: number }>;

async function timed<T>(calls: ModelCalls | undefined, call: string, fn: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await fn();
  } finally {
    calls?.push({ call, seconds: (performance.now() - started) / 1000 });
  }
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
async function loggedModelOfRun(
  tracking: MlflowTracking,
  experimentId: string,
  runId: string,
  name: string,
  signal: AbortSignal,
  calls: ModelCalls | undefined,
): Promise<LoggedModelInfo | undefined> {
  let pageToken: string | undefined;
  for (let page = 0; page < 20; page++) {
    let r: { models?: Array<{ info: LoggedModelInfo }>; next_page_token?: string };
    try {
      const token = pageToken;
      r = await timed(calls, 'logged-models/search', () =>
        tracking.http.api('logged-models/search', {
          method: 'POST',
          json: {
            experiment_ids: [experimentId],
            filter: `name = ${quoteFilterValue(name)}`,
            max_results: 100,
            ...(token ? { page_token: token } : {}),
          },
          signal,
        }),
      );
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
 * The reference a URI resolves to without asking MLflow, when there is one: a registry version,
 * a logged model id, a run path, an artifact path always name the same files. Aliases and
 * `latest` move, so they need the registry. Used when MLflow is unreachable (the spool), and for
 * every URI but the registry's: their ids are never reused, so their files need no check.
 */
export function resolveModelOffline(uri: string): ModelRef | undefined {
  const reg = REGISTRY.exec(uri);
  if (reg) {
    const name = decodeURIComponent(reg[1] ?? '');
    const version = reg[3];
    if (version === undefined || !/^\d+$/.test(version)) return undefined;
    return { uri, cacheKey: registryKey(name, version), name, version };
  }
  const logged = LOGGED_MODEL.exec(uri);
  if (logged) return { uri, cacheKey: loggedKey(logged[1] ?? ''), modelId: logged[1] ?? '' };
  const runs = RUNS.exec(uri);
  if (runs) return { uri, cacheKey: runsKey(runs[1] ?? '', runPath(runs)) };
  if (uri.startsWith('mlflow-artifacts:')) return { uri, cacheKey: artifactKey(uri) };
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
const artifactKey = (uri: string): string => `artifacts/${createHash('sha256').update(uri).digest('hex').slice(0, 24)}`;

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
  return { uri, artifactUri: uri, cacheKey: '', localDir: real };
}

interface RegistryVersion {
  readonly version: string;
  readonly source?: string;
  readonly model_id?: string;
  readonly creation_timestamp?: string | number;
}

/** What tells one registration of a version from another made under the same name and number. */
function originOf(v: RegistryVersion): string {
  return `${v.creation_timestamp ?? ''} ${v.source ?? ''}`;
}

/**
 * Resolves a model URI to the files it names, asking MLflow only what cannot be known without
 * it: one call for a registry URI (the version, the alias or the latest version, each answer
 * carrying the version's origin and logged model), none for the others. `locateModel` then says
 * where the files are, when they must be fetched.
 */
export async function resolveModel(uri: string, tracking: MlflowTracking, signal: AbortSignal, calls?: ModelCalls): Promise<ModelRef> {
  const reg = REGISTRY.exec(uri);
  if (!reg) {
    const ref = resolveModelOffline(uri);
    if (ref) return ref;
    throw new PermanentError(
      `model: ${JSON.stringify(uri)} is not a models:/, runs:/ or mlflow-artifacts: URI of a form the worker knows`,
      { field: 'model' },
    );
  }
  const name = decodeURIComponent(reg[1] ?? '');
  const alias = reg[2];
  const asked = reg[3] ?? '';
  let v: RegistryVersion;
  if (alias !== undefined) {
    try {
      v = (
        await timed(calls, 'registered-models/alias', () =>
          tracking.http.api<{ model_version: RegistryVersion }>('registered-models/alias', {
            method: 'GET',
            query: { name, alias },
            signal,
          }),
        )
      ).model_version;
    } catch (err) {
      if (aliasNotFound(err))
        throw new PermanentError(`model: registered model ${JSON.stringify(name)} has no alias ${JSON.stringify(alias)}`, {
          field: 'model',
          cause: err,
        });
      throw err;
    }
  } else if (asked === 'latest') {
    let versions: RegistryVersion[];
    try {
      const r = await timed(calls, 'registered-models/get-latest-versions', () =>
        tracking.http.api<{ model_versions?: RegistryVersion[] }>('registered-models/get-latest-versions', {
          method: 'POST',
          json: { name },
          signal,
        }),
      );
      versions = (r.model_versions ?? []).filter((x) => Number.isFinite(Number(x.version)));
    } catch (err) {
      if (notFound(err))
        throw new PermanentError(`model: registered model ${JSON.stringify(name)} does not exist`, { field: 'model', cause: err });
      throw err;
    }
    const highest = versions.reduce<RegistryVersion | undefined>(
      (best, x) => (best === undefined || Number(x.version) > Number(best.version) ? x : best),
      undefined,
    );
    if (!highest) throw new PermanentError(`model: registered model ${JSON.stringify(name)} has no versions`, { field: 'model' });
    v = highest;
  } else if (/^\d+$/.test(asked)) {
    try {
      v = (
        await timed(calls, 'model-versions/get', () =>
          tracking.http.api<{ model_version: RegistryVersion }>('model-versions/get', {
            method: 'GET',
            query: { name, version: asked },
            signal,
          }),
        )
      ).model_version;
    } catch (err) {
      if (notFound(err))
        throw new PermanentError(`model: registered model ${JSON.stringify(name)} version ${asked} does not exist`, {
          field: 'model',
          cause: err,
        });
      throw err;
    }
  } else {
    throw new PermanentError(
      `model: ${JSON.stringify(uri)} names stage or version ${JSON.stringify(asked)}; use models:/<name>/<version>, models:/<name>@<alias> or models:/<name>/latest`,
      { field: 'model' },
    );
  }
  const version = String(v.version);
  // MLflow 3 names the logged model as model_id, or (3.x's REST answer) only as the version's
  // source, models:/m-<id>.
  const modelId = v.model_id || LOGGED_MODEL.exec(v.source ?? '')?.[1] || undefined;
  return { uri, cacheKey: registryKey(name, version), name, version, origin: originOf(v), ...(modelId !== undefined ? { modelId } : {}) };
}

/** Where the files of a resolved model are: asked of MLflow only when they must be fetched. */
export async function locateModel(
  ref: ModelRef,
  tracking: MlflowTracking,
  signal: AbortSignal,
  calls?: ModelCalls,
): Promise<ModelLocation> {
  const { uri } = ref;
  if (ref.name !== undefined && ref.version !== undefined) {
    const { name, version } = ref;
    let artifactUri: string;
    try {
      artifactUri = (
        await timed(calls, 'model-versions/get-download-uri', () =>
          tracking.http.api<{ artifact_uri: string }>('model-versions/get-download-uri', {
            method: 'GET',
            query: { name, version },
            signal,
          }),
        )
      ).artifact_uri;
    } catch (err) {
      if (notFound(err))
        throw new PermanentError(`model: registered model ${JSON.stringify(name)} version ${version} does not exist`, {
          field: 'model',
          cause: err,
        });
      throw err;
    }
    return {
      artifactUri: requireProxy(artifactUri, `${name} version ${version}`),
      ...(ref.modelId !== undefined ? { modelId: ref.modelId } : {}),
    };
  }
  const logged = LOGGED_MODEL.exec(uri);
  if (logged) {
    const modelId = logged[1] ?? '';
    try {
      const r = await timed(calls, 'logged-models/get', () =>
        tracking.http.api<{ model: { info: LoggedModelInfo } }>(`logged-models/${modelId}`, { method: 'GET', signal }),
      );
      return { artifactUri: requireProxy(r.model.info.artifact_uri, `logged model ${modelId}`), modelId };
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
      info = (await timed(calls, 'runs/get', () => tracking.getRun(runId, signal))).info;
    } catch (err) {
      if (notFound(err)) throw new PermanentError(`model: run ${runId} does not exist`, { field: 'model', cause: err });
      throw err;
    }
    const [first = '', ...rest] = path.split('/');
    const model = await loggedModelOfRun(tracking, info.experiment_id, runId, first, signal, calls);
    const artifactUri = model
      ? [model.artifact_uri.replace(/\/+$/, ''), ...rest].join('/')
      : `${info.artifact_uri.replace(/\/+$/, '')}/${path}`;
    return { artifactUri: requireProxy(artifactUri, `run ${runId}`), ...(model ? { modelId: model.model_id } : {}) };
  }
  if (uri.startsWith('mlflow-artifacts:')) return { artifactUri: uri.replace(/\/+$/, '') };
  throw new PermanentError(`model: ${JSON.stringify(uri)} is not a models:/, runs:/ or mlflow-artifacts: URI of a form the worker knows`, {
    field: 'model',
  });
}
