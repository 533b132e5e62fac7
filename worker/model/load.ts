/**
 * A request's model, from its URI to an open onnxruntime session: resolved in the registry,
 * found in the local cache or fetched into it, opened. Each step is timed, so a run shows where
 * its model_load_seconds went (docs/worker.md, "What lands in MLflow").
 *
 * A cache hit asks MLflow only what the URI's resolution needs (one call for a registry URI,
 * none for the others) and reads nothing but the manifest and the files' sizes before the
 * session opens them: the copy's manifest is written last and published by a rename, so a copy
 * with a manifest was complete when written, and a file cut short since shows in its size. A
 * copy whose bytes changed in place without changing size is refused by onnxruntime (a
 * TransientError for the file, then one fetch again), so hashing the files on every hit (0.2 s
 * for 67 MB here) would buy nothing the session does not check.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PermanentError, TransientError } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { MlflowHttpError } from '../../mlflow/http.ts';
import { proxyPath, type MlflowTracking } from '../../mlflow/tracking.ts';
import type { WorkerConfig } from '../config.ts';
import { checkCopy, discardCached, ensureCached, type CachedModel, type CopyMeta } from '../../modelstore/store.ts';
import { loadYaml, mlModelOf, mlModelText, readMlModel, type MlModel } from './mlmodel.ts';
import { fetchFromNodeCache, NodeCacheError } from './node-cache.ts';
import { OnnxModel, loadOnnxRuntime } from './onnx.ts';
import {
  locateModel,
  resolveLocalModel,
  resolveModel,
  resolveModelOffline,
  type ModelCalls,
  type ModelLocation,
  type ModelRef,
  type ResolvedModel,
} from './resolve.ts';

/** Where a model's files came from: the pod's cache, the node's cache, MLflow, a local directory. */
export type ModelSource = 'cache' | 'node-cache' | 'mlflow' | 'local';

/** Where one model load's time went, in seconds (and what it cost). */
export interface ModelLoadSteps {
  /** The MLflow calls: the URI's resolution, and where its files are when they were fetched. */
  readonly resolveSeconds: number;
  /** Checking the cached copy, and publishing a fetched one. */
  readonly verifySeconds: number;
  /** Downloading the files (0 on a cache hit). */
  readonly fetchSeconds: number;
  readonly fetchedBytes: number;
  /** Reading the MLmodel file. */
  readonly mlmodelSeconds: number;
  /** Waiting for onnxruntime-node to load (it starts loading with the request). */
  readonly runtimeSeconds: number;
  /** onnxruntime's session creation, then the warm-up run. */
  readonly sessionSeconds: number;
  readonly warmUpSeconds: number;
  /** Each MLflow call made for the model. */
  readonly calls: ModelCalls;
}

export interface LoadedModel {
  readonly model: OnnxModel;
  readonly resolved: ResolvedModel;
  readonly cacheHit: boolean;
  readonly source: ModelSource;
  /** Why the node cache was passed over for MLflow, when it was. */
  readonly nodeCacheProblem?: string;
  /** The whole load, spawn of the first step to the session ready. */
  readonly seconds: number;
  readonly steps: ModelLoadSteps;
}

/** What a filler keeps with the copy, so a hit needs no MLflow call to say where it came from. */
const META_ARTIFACT_URI = 'artifactUri';
const META_MODEL_ID = 'modelId';
const META_ORIGIN = 'origin';
/** What the copy's MLmodel says (mlModelText): a hit opens the model without parsing YAML. */
const META_MLMODEL = 'mlmodel';

export interface LoadDeps {
  readonly config: WorkerConfig;
  /** Undefined when MLflow cannot be used: then only a cached copy (or a local directory) will do. */
  readonly tracking: MlflowTracking | undefined;
  readonly log: Logger;
}

/** The run's metrics of a model load (all but model_load_seconds, which the run logs itself). */
export function stepMetrics(steps: ModelLoadSteps): Record<string, number> {
  const out: Record<string, number> = {
    'model_load/resolve_seconds': steps.resolveSeconds,
    'model_load/verify_seconds': steps.verifySeconds,
    'model_load/fetch_seconds': steps.fetchSeconds,
    'model_load/fetched_bytes': steps.fetchedBytes,
    'model_load/mlmodel_seconds': steps.mlmodelSeconds,
    'model_load/runtime_seconds': steps.runtimeSeconds,
    'model_load/session_seconds': steps.sessionSeconds,
    'model_load/warmup_seconds': steps.warmUpSeconds,
    'model_load/mlflow_calls': steps.calls.length,
  };
  // One metric per endpoint (their time added up when it was called more than once).
  for (const c of steps.calls) {
    const key = `model_load/call/${c.call.replace(/\//g, '.')}_seconds`;
    out[key] = (out[key] ?? 0) + c.seconds;
  }
  return out;
}

/**
 * Resolves, fetches (or finds in the cache) and opens the model a request names (its URI).
 * `deps.tracking` undefined: MLflow is out of reach, so only a model already in the local cache,
 * or a local directory, will do. `kmj doctor --model` runs it too (worker/doctor.ts).
 */
export async function loadModel(modelUri: string, deps: LoadDeps, signal: AbortSignal): Promise<LoadedModel> {
  const started = performance.now();
  // onnxruntime loads while the model's files are found and fetched.
  loadOnnxRuntime().catch(() => undefined);
  const { config, tracking: t } = deps;
  const calls: ModelCalls = [];
  if (modelUri.startsWith('file:///')) {
    const resolved = await resolveLocalModel(modelUri, config.modelRoots);
    const opened = await openModel(resolved.localDir ?? '', config, { missingIsPermanent: true });
    const steps = { resolveSeconds: 0, verifySeconds: 0, fetchSeconds: 0, fetchedBytes: 0, ...opened.times, calls };
    return { model: opened.model, resolved, cacheHit: false, source: 'local', seconds: (performance.now() - started) / 1000, steps };
  }
  // A URI whose cache key is known without MLflow (a registry version): its cached copy, if any,
  // is opened while the registry answers, and kept if the registry says it is this registration.
  const guess = t ? resolveModelOffline(modelUri) : undefined;
  const early = guess ? openEarly(join(config.modelCacheDir, guess.cacheKey), config) : undefined;
  // ...and when there is no such copy, where its files are is asked beside the registry too (a
  // registry version's location needs only its name and number).
  let located: Promise<ModelLocation | undefined> | undefined;
  if (t && early && guess?.name !== undefined && guess.version !== undefined) {
    const g = guess;
    located = early.then((e) => (e ? undefined : locateModel(g, t, signal, calls)));
    // Awaited by the fill when it is the model's; a failure then is the fill's.
    located.catch(() => undefined);
  }
  let ref: ModelRef;
  try {
    if (t) ref = await resolveModel(modelUri, t, signal, calls);
    else {
      const offline = resolveModelOffline(modelUri);
      if (!offline) throw new TransientError(`model: ${modelUri} needs the Model Registry to resolve, and MLflow cannot be used now`);
      ref = offline;
    }
  } catch (err) {
    await (await early)?.opened.model.release();
    throw err;
  }
  const resolveEnd = performance.now();
  const accept = t ? acceptFor(ref) : undefined;
  const opening = await early;
  if (opening && guess?.cacheKey === ref.cacheKey && (accept === undefined || accept(opening.copy.meta ?? {}) === undefined)) {
    const cached: CachedModel = {
      dir: join(config.modelCacheDir, ref.cacheKey),
      hit: true,
      id: opening.copy.id,
      ...(opening.copy.meta !== undefined ? { meta: opening.copy.meta } : {}),
    };
    const resolved = await resolvedOf(ref, cached, t, signal, calls);
    // The registry call and the opening overlapped: their times add up to more than the whole.
    const steps: ModelLoadSteps = {
      resolveSeconds: (resolveEnd - started) / 1000,
      verifySeconds: opening.verifySeconds,
      fetchSeconds: 0,
      fetchedBytes: 0,
      ...opening.opened.times,
      calls,
    };
    return { model: opening.opened.model, resolved, cacheHit: true, source: 'cache', seconds: (performance.now() - started) / 1000, steps };
  }
  await opening?.opened.model.release();
  let locateSeconds = 0;
  let fetchSeconds = 0;
  let mlmodelSeconds = 0;
  let fetchedBytes = 0;
  let fetchedFrom: 'node-cache' | 'mlflow' = 'mlflow';
  let nodeCacheProblem: string | undefined;
  const fill = async (into: string): Promise<CopyMeta> => {
    if (!t) throw new TransientError(`model: ${modelUri} is not in the local model cache, and MLflow cannot be used now`);
    // Read once the files are in: loading it meanwhile costs nothing but the wait.
    loadYaml().catch(() => undefined);
    const where = await fetchInto(into, t);
    // A model whose MLmodel says nothing usable is refused before it is cached.
    const started = performance.now();
    const mlmodel = await readMlModel(into);
    mlmodelSeconds += (performance.now() - started) / 1000;
    return { ...metaOf(ref, where), [META_MLMODEL]: mlModelText(mlmodel) };
  };
  const fetchInto = async (into: string, tracking: MlflowTracking): Promise<ModelLocation> => {
    const locating = performance.now();
    const asked = located && ref.cacheKey === guess?.cacheKey ? await located : undefined;
    const where = asked ?? (await locateModel(ref, tracking, signal, calls));
    const fetching = performance.now();
    locateSeconds += (fetching - locating) / 1000;
    try {
      if (config.nodeCache && nodeCacheProblem === undefined) {
        try {
          fetchedBytes += await fetchFromNodeCache(config.nodeCache, ref, where, into, signal, config.maxModelBytes);
          fetchedFrom = 'node-cache';
          return where;
        } catch (err) {
          if (!(err instanceof NodeCacheError)) throw err;
          nodeCacheProblem = err.message;
          deps.log.warn({ reason: err.message }, 'the node cache could not give the model; fetching it from MLflow');
          // What arrived of it is not kept: MLflow fills the same directory from empty.
          for (const name of await readdir(into)) await rm(join(into, name), { recursive: true, force: true });
          fetchedBytes = 0;
        }
      }
      fetchedFrom = 'mlflow';
      const files = await tracking.downloadDirectory(proxyPath(where.artifactUri), into, signal, config.maxModelBytes);
      if (files.length === 0)
        throw new PermanentError(`model: ${modelUri} resolves to ${where.artifactUri}, which holds no files`, { field: 'model' });
      for (const f of files) fetchedBytes += (await stat(join(into, f))).size;
    } catch (err) {
      if (err instanceof MlflowHttpError && err.status === 404)
        throw new PermanentError(`model: the files of ${modelUri} are missing from the artifact store`, { field: 'model', cause: err });
      // Too large, or a listing that cannot be trusted: retrying will not help.
      if (err instanceof PermanentError && err.field === undefined)
        throw new PermanentError(`model: ${err.message}`, { field: 'model', cause: err });
      throw err;
    } finally {
      fetchSeconds += (performance.now() - fetching) / 1000;
    }
    return where;
  };
  // Offline, the copy on disk is the only one there is: it is taken without its origin checked.
  const cacheOptions = accept ? { accept } : {};
  let verifySeconds = 0;
  const cache = async (): Promise<CachedModel> => {
    const before = performance.now();
    const inFill = locateSeconds + fetchSeconds + mlmodelSeconds;
    try {
      return await ensureCached(config.modelCacheDir, ref.cacheKey, fill, cacheOptions);
    } finally {
      verifySeconds += (performance.now() - before) / 1000 - (locateSeconds + fetchSeconds + mlmodelSeconds - inFill);
    }
  };
  let cached = await cache();
  deps.log.debug({ hit: cached.hit }, 'model files ready');
  let opened: Opened;
  try {
    opened = await openModel(cached.dir, config, { known: mlModelOf(cached.meta?.[META_MLMODEL]) });
  } catch (err) {
    // A copy that was on disk may have been damaged since (or by a bug of an older worker); a
    // fresh copy whose files could not be read points at the disk. Either way: once more, from
    // MLflow. A fresh copy refused for its content is the request's fault, and so is a copy
    // refused for its content when MLflow is out of reach: it is the only copy there is.
    if (!(err instanceof TransientError) && (!cached.hit || !t)) throw err;
    deps.log.warn({ err, dir: cached.dir, hit: cached.hit }, 'the cached model could not be loaded; fetching it again');
    await discardCached(cached.dir, cached.id);
    cached = await cache();
    try {
      opened = await openModel(cached.dir, config, { known: mlModelOf(cached.meta?.[META_MLMODEL]) });
    } catch (err2) {
      if (!(err2 instanceof TransientError)) throw err2;
      throw new TransientError(`model: ${modelUri} could not be read from the model cache, even after fetching it again: ${err2.message}`, {
        cause: err2,
        retryInProcess: false,
      });
    }
  }
  const late = performance.now();
  const resolved = await resolvedOf(ref, cached, t, signal, calls);
  locateSeconds += (performance.now() - late) / 1000;
  const steps: ModelLoadSteps = {
    resolveSeconds: (resolveEnd - started) / 1000 + locateSeconds,
    verifySeconds: Math.max(0, verifySeconds),
    fetchSeconds,
    fetchedBytes,
    ...opened.times,
    mlmodelSeconds: opened.times.mlmodelSeconds + mlmodelSeconds,
    calls,
  };
  return {
    model: opened.model,
    resolved,
    cacheHit: cached.hit,
    source: cached.hit ? 'cache' : fetchedFrom,
    ...(nodeCacheProblem !== undefined ? { nodeCacheProblem } : {}),
    seconds: (performance.now() - started) / 1000,
    steps,
  };
}

function metaOf(ref: ModelRef, where: ModelLocation): CopyMeta {
  const modelId = where.modelId ?? ref.modelId;
  return {
    [META_ARTIFACT_URI]: where.artifactUri,
    ...(modelId !== undefined ? { [META_MODEL_ID]: modelId } : {}),
    ...(ref.origin !== undefined ? { [META_ORIGIN]: ref.origin } : {}),
  };
}

/**
 * A registry version's copy must come from the same registration (its origin); a copy made
 * before copies said where they came from cannot show that, and is fetched again once.
 */
function acceptFor(ref: ModelRef): ((meta: CopyMeta) => string | undefined) | undefined {
  const origin = ref.origin;
  if (origin === undefined) return undefined;
  return (meta) => {
    const had = meta[META_ORIGIN];
    if (had === origin) return undefined;
    return had === undefined
      ? 'the copy does not say which registration it came from'
      : `the copy came from another registration of ${ref.name ?? ''} version ${ref.version ?? ''} (${had}; the registry says ${origin})`;
  };
}

/** The resolved model: where its files came from is in the copy's meta, else asked of MLflow. */
async function resolvedOf(
  ref: ModelRef,
  cached: CachedModel,
  t: MlflowTracking | undefined,
  signal: AbortSignal,
  calls: ModelCalls,
): Promise<ResolvedModel> {
  let artifactUri = cached.meta?.[META_ARTIFACT_URI];
  let modelId = ref.modelId ?? cached.meta?.[META_MODEL_ID];
  if (artifactUri === undefined && t) {
    // A copy from before copies kept their location: the run's tag still says where it is from.
    const where = await locateModel(ref, t, signal, calls);
    artifactUri = where.artifactUri;
    modelId ??= where.modelId;
  }
  return { ...ref, artifactUri: artifactUri ?? '', ...(modelId !== undefined ? { modelId } : {}) };
}

/**
 * The copy at `dir` opened, if it is complete and kept what its MLmodel says; undefined
 * otherwise, or when it does not open (then the usual path looks again, and fetches it anew).
 */
async function openEarly(
  dir: string,
  config: WorkerConfig,
): Promise<
  { readonly copy: { readonly id: string; readonly meta?: CopyMeta }; readonly opened: Opened; readonly verifySeconds: number } | undefined
> {
  try {
    const started = performance.now();
    const copy = await checkCopy(dir);
    if (!copy.ok) return undefined;
    const known = mlModelOf(copy.meta?.[META_MLMODEL]);
    if (!known) return undefined;
    const verifySeconds = (performance.now() - started) / 1000;
    return { copy, opened: await openModel(dir, config, { known }), verifySeconds };
  } catch {
    return undefined;
  }
}

interface Opened {
  readonly model: OnnxModel;
  readonly times: {
    readonly mlmodelSeconds: number;
    readonly runtimeSeconds: number;
    readonly sessionSeconds: number;
    readonly warmUpSeconds: number;
  };
}

/** Reads the MLmodel file (unless the copy kept what it says) and opens the ONNX model of a model directory. */
async function openModel(
  dir: string,
  config: WorkerConfig,
  options: { missingIsPermanent?: boolean; known?: MlModel | undefined } = {},
): Promise<Opened> {
  const started = performance.now();
  const mlmodel = options.known ?? (await readMlModel(dir, options));
  const mlmodelSeconds = (performance.now() - started) / 1000;
  const model = await OnnxModel.load(dir, mlmodel, { intraOpThreads: config.onnxThreads });
  return { model, times: { mlmodelSeconds, ...model.times } };
}
