/**
 * One request, start to finish: validate, find or start its run, load the model, run it on the
 * dataset in batches, record params, metrics, inputs and the predictions artifact, finish the
 * run. The run is recorded in MLflow, or in the spool when MLflow cannot be used: one run store
 * that falls back (fallback-store.ts over run-store.ts and spool.ts). It never settles the message itself: it returns what should happen to it (an
 * Outcome), and the consumer does that. Every failure becomes one outcome:
 *
 * - PermanentError → dead-letter, and the run (if any) is marked FAILED with the error as a tag;
 * - TransientError → retried here with backoff while the time budget lasts, then requeue;
 * - the shutdown signal (SIGTERM) → requeue, and the run is marked KILLED.
 *
 * Idempotency is the run store's: a request with a FINISHED run is acknowledged without running
 * again, an unfinished run is resumed, never duplicated.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { abortReason, raceAbort, sleep } from '../common/abort.ts';
import type { Logger } from '../common/log.ts';
import type { WorkerConfig } from './config.ts';
import type { DatasetBatch } from './dataset/batch.ts';
import { openDataset } from './dataset/open.ts';
import { PermanentError, TransientError, messageOf } from '../common/errors.ts';
import { MlflowHttpError } from '../mlflow/http.ts';
import type { KeyValue, Metric, MlflowTracking } from '../mlflow/tracking.ts';
import { loadModel, stepMetrics, type LoadedModel } from './model/load.ts';
import { PredictionsWriter, contentTypeOf } from './predictions.ts';
import { parseRequest, requestValidator, type InferenceRequest } from '../common/request.ts';
import { FallbackRunStore, mlflowUnreachable } from './fallback-store.ts';
import type { DeliveryInfo, Outcome } from './delivery.ts';
import { MlflowRunStore, type RunResults } from './run-store.ts';
import { ClassificationScorer, RegressionScorer, type Scorer } from './scores.ts';
import { SpoolRunStore } from './spool.ts';
import { RUN_TAG } from '../common/run-tags.ts';
import { Progress } from './progress.ts';

export interface PipelineDeps {
  readonly config: WorkerConfig;
  /** Undefined when MLFLOW_TRACKING_URI is unset: runs go to the spool. */
  readonly tracking: MlflowTracking | undefined;
  readonly log: Logger;
  /** Aborted on SIGTERM. */
  readonly shutdown: AbortSignal;
  readonly workerVersion: string;
}

const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 16_000];

/**
 * The part of the time budget kept for marking the run when the budget runs out: a quarter of it,
 * at most 5 s. The work stops that much before the budget ends, so the marking fits inside it
 * however slowly MLflow answers.
 */
export function cleanupReserveMs(timeBudgetMs: number): number {
  return Math.min(5000, Math.floor(timeBudgetMs / 4));
}

/**
 * After SIGTERM, how long marking the run KILLED may take: half the grace period, at most 5 s.
 * The other half is the settle's and the connections' (Kubernetes' own grace period, longer
 * still, ends in SIGKILL).
 */
export function shutdownCleanupMs(shutdownGraceMs: number): number {
  return Math.min(5000, Math.floor(shutdownGraceMs / 2));
}

/** Runs one request and says how to settle its message. Never throws. */
export async function handleDelivery(body: Buffer, delivery: DeliveryInfo, deps: PipelineDeps): Promise<Outcome> {
  const { config, log } = deps;
  const received = Date.now();
  let req: InferenceRequest;
  try {
    req = parseRequest(body, config.maxMessageBytes, await requestValidator());
  } catch (err) {
    const e = err instanceof PermanentError ? err : new PermanentError(messageOf(err));
    log.warn({ reason: e.message }, 'request refused');
    return { action: 'dead-letter', reason: e.message, ...(e.field !== undefined ? { field: e.field } : {}) };
  }
  const rlog = log.child({ requestId: req.requestId });
  rlog.debug('request valid');
  const budgetEnd = received + config.timeBudgetMs;
  /** When marking the run must be done by: the budget's end, or sooner after SIGTERM. */
  let cleanupEnd = budgetEnd;
  const budget = new AbortController();
  const workMs = config.timeBudgetMs - cleanupReserveMs(config.timeBudgetMs);
  const budgetTimer = setTimeout(() => budget.abort(new TransientError(`the time budget of ${config.timeBudgetMs} ms ran out`)), workMs);
  const onShutdown = (): void => {
    cleanupEnd = Math.min(budgetEnd, Date.now() + shutdownCleanupMs(config.shutdownGraceMs));
    budget.abort(abortReason(deps.shutdown));
  };
  if (deps.shutdown.aborted) onShutdown();
  else deps.shutdown.addEventListener('abort', onShutdown, { once: true });
  const { tracking, workerVersion } = deps;
  const spoolDir = config.spoolDir;
  const store = new FallbackRunStore({
    mlflow: tracking ? () => new MlflowRunStore(tracking, req, delivery, config, workerVersion, rlog) : undefined,
    spool:
      spoolDir !== undefined
        ? { dir: spoolDir, open: () => new SpoolRunStore(spoolDir, req, delivery, config, workerVersion, rlog) }
        : undefined,
    log: rlog,
  });
  const state: AttemptState = { store };
  const mark = async (status: 'FAILED' | 'KILLED', error: string, outcome: 'dead-lettered' | 'requeued'): Promise<void> => {
    const bound = AbortSignal.timeout(Math.max(0, cleanupEnd - Date.now()));
    await store.fail(status, error, outcome, rlog, bound);
  };
  try {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) store.nextAttempt();
      try {
        const done = await runOnce(req, deps, budget.signal, state, received, rlog);
        return { ...done, requestId: req.requestId };
      } catch (err) {
        if (deps.shutdown.aborted) {
          await mark('KILLED', 'the worker was stopped (SIGTERM); the request was requeued', 'requeued');
          return { action: 'requeue', reason: 'the worker was stopped (SIGTERM)', requestId: req.requestId, ...ids(state) };
        }
        // MLflow went away after the run started: the run, so far and from here on, goes to the
        // spool (kmj replay finds the MLflow run by its request id and finishes it).
        if (store.fallBack(err, budget.signal)) continue;
        const e = classify(err);
        if (e instanceof PermanentError) {
          rlog.warn({ ...failureFields(e), field: e.field }, 'request failed permanently');
          await mark('FAILED', e.message, 'dead-lettered');
          return {
            action: 'dead-letter',
            reason: e.message,
            requestId: req.requestId,
            ...(e.field !== undefined ? { field: e.field } : {}),
            ...ids(state),
          };
        }
        const delay = RETRY_DELAYS_MS[attempt];
        if (!e.retryInProcess || delay === undefined || budget.signal.aborted) {
          const attemptNo = store.attempt;
          if (afterFailure(attemptNo, config.maxDeliveries) === 'dead-letter') {
            const reason = `gave up after ${attemptNo} deliveries: ${e.message}`;
            rlog.warn({ ...failureFields(e), attempt: attemptNo }, 'request failed on its last allowed delivery; dead-lettering');
            await mark('FAILED', reason, 'dead-lettered');
            return { action: 'dead-letter', reason, requestId: req.requestId, ...ids(state) };
          }
          rlog.warn(failureFields(e), 'request failed for now; requeueing');
          await mark('FAILED', `${e.message} (requeued)`, 'requeued');
          return { action: 'requeue', reason: e.message, requestId: req.requestId, ...ids(state) };
        }
        rlog.warn({ ...failureFields(e), retryInMs: delay }, 'transient failure; retrying');
        await sleep(delay, budget.signal).catch(() => undefined);
      }
    }
  } finally {
    clearTimeout(budgetTimer);
    deps.shutdown.removeEventListener('abort', onShutdown);
  }
}

interface AttemptState {
  /** Where this request's run is recorded. */
  readonly store: FallbackRunStore;
  /** The latest attempt's model load, once the model is loaded. */
  modelLoad?: LoadedModel;
}

function ids(state: AttemptState): Pick<Outcome, 'runId' | 'modelLoadSeconds' | 'modelFetchSeconds' | 'modelOpenSeconds'> {
  const runId = state.store.runId;
  const load = state.modelLoad;
  const s = load?.steps;
  return {
    ...(runId !== undefined ? { runId } : {}),
    ...(load && s
      ? {
          modelLoadSeconds: load.seconds,
          modelFetchSeconds: s.resolveSeconds + s.verifySeconds + s.fetchSeconds,
          modelOpenSeconds: s.mlmodelSeconds + s.runtimeSeconds + s.sessionSeconds + s.warmUpSeconds,
        }
      : {}),
  };
}

/**
 * The delivery limit, decided here and nowhere else: a request that failed for now on its last
 * allowed delivery (KMJ_MAX_DELIVERIES) is dead-lettered instead of requeued, so a poison message
 * cannot loop. A SIGTERM is not the request's failure: its requeue stands on any delivery (the
 * queue's x-delivery-limit still bounds a message whose workers keep being stopped).
 */
export function afterFailure(attempt: number, maxDeliveries: number): 'requeue' | 'dead-letter' {
  return attempt >= maxDeliveries ? 'dead-letter' : 'requeue';
}

/**
 * What a log line says of a failure: one line, its message. A user's mistake (a bad alias, a
 * missing column) or an outage (MLflow down) needs no stack trace; the stack is kept for what
 * looks like our own bug, a JavaScript TypeError, RangeError or ReferenceError underneath.
 */
export function failureFields(e: PermanentError | TransientError): Record<string, unknown> {
  for (let c: unknown = e; c instanceof Error; c = c.cause) {
    if (c instanceof TypeError || c instanceof RangeError || c instanceof ReferenceError) return { reason: e.message, err: c };
  }
  return { reason: e.message };
}

/** Maps anything thrown to one of the two error classes. */
export function classify(err: unknown): PermanentError | TransientError {
  if (err instanceof PermanentError || err instanceof TransientError) return err;
  if (err instanceof MlflowHttpError) {
    if (err.status === 401 || err.status === 403) {
      return new TransientError(`MLflow refused the worker's credentials (HTTP ${err.status}); fix the worker's MLflow settings`, {
        cause: err,
        retryInProcess: false,
      });
    }
    // The HTTP client has already retried it with MLflow's own backoff schedule.
    if (err.retryable) return new TransientError(err.message, { cause: err, retryInProcess: false });
    return new PermanentError(err.message, { cause: err });
  }
  if (err instanceof Error && err.name === 'AbortError')
    return new TransientError(`an operation was aborted: ${err.message}`, { cause: err });
  return new TransientError(messageOf(err), { cause: err });
}

/**
 * The NaN and infinite cells of the batch's numeric model inputs. Refused, with the row and the
 * column named, unless the request allows them (dataset.nonFinite "allow"); then counted.
 */
function countNonFinite(batch: DatasetBatch, numberColumns: readonly number[], columns: readonly string[], allow: boolean): number {
  let n = 0;
  for (const j of numberColumns) {
    const col = batch.numbers(j);
    for (let i = 0; i < col.length; i++) {
      const x = col[i] as number;
      if (x - x === 0) continue; // finite; NaN and ±Infinity give NaN
      if (!allow) {
        throw new PermanentError(
          `dataset: row ${batch.firstRow + i}, column ${JSON.stringify(columns[j] ?? String(j))}: ${x} is not a finite number; set dataset.nonFinite to "allow" to give NaN and infinities to the model`,
          { field: 'dataset' },
        );
      }
      n++;
    }
  }
  return n;
}

type Loaded = LoadedModel;

/**
 * Opens the run and loads the model, side by side: they do not depend on each other. When the
 * run falls back to the spool as it begins (MLflow out of reach), the model must come from the
 * local cache. A model failure is acted on only once the run is known, so the run it belongs to
 * can be marked FAILED.
 */
async function openRunAndModel(
  req: InferenceRequest,
  deps: PipelineDeps,
  signal: AbortSignal,
  store: FallbackRunStore,
): Promise<{ begun: 'finished' | 'started'; loaded: Loaded | undefined; failure: unknown }> {
  const offline = store.offline;
  const [begun, first] = await Promise.allSettled([
    store.begin(signal),
    loadModel(req.model, { ...deps, tracking: offline ? undefined : deps.tracking }, signal),
  ]);
  let model = first;
  if (!offline && store.offline && model.status === 'rejected' && mlflowUnreachable(model.reason)) {
    model = await Promise.allSettled([loadModel(req.model, { ...deps, tracking: undefined }, signal)]).then(([r]) => r);
  }
  const loaded = model.status === 'fulfilled' ? model.value : undefined;
  if (begun.status === 'rejected') {
    await loaded?.model.release();
    throw begun.reason;
  }
  return { begun: begun.value, loaded, failure: model.status === 'rejected' ? model.reason : undefined };
}

async function runOnce(
  req: InferenceRequest,
  deps: PipelineDeps,
  signal: AbortSignal,
  state: AttemptState,
  received: number,
  log: Logger,
): Promise<Outcome> {
  const { config } = deps;
  const loadStart = performance.now();
  const store = state.store;
  const { begun, loaded, failure } = await openRunAndModel(req, deps, signal, store);
  if (begun === 'finished') {
    await loaded?.model.release();
    return { action: 'ack', alreadyFinished: true, ...ids(state) };
  }
  if (store.attempt > config.maxDeliveries) {
    // Only where the broker does not count (Kafka): earlier attempts died without a word.
    await loaded?.model.release();
    throw new PermanentError(
      `gave up after ${store.attempt - 1} deliveries that did not finish (the worker was killed each time; KMJ_MAX_DELIVERIES ${config.maxDeliveries})`,
    );
  }
  if (!loaded) throw failure;
  // The dataset may live in MLflow even when the run goes to the spool: reading it then fails
  // as MLflow's other calls did (transient: requeued), not as "no MLflow configured".
  const tracking = deps.tracking;
  const { model, resolved, cacheHit } = loaded;
  const loadSeconds = loaded.seconds;
  state.modelLoad = loaded;
  log.debug({ seconds: (performance.now() - loadStart) / 1000 }, 'run and model ready');
  const scratch = join(config.workDir, `${req.requestId}-${randomUUID().slice(0, 8)}`);
  try {
    await mkdir(scratch, { recursive: true });
    const processingStart = performance.now();
    const dataset = await openDataset(
      req,
      tracking,
      { maxBytes: config.maxDatasetBytes, maxRows: config.maxDatasetRows, localRoots: config.datasetRoots, httpTimeoutMs: 60_000 },
      signal,
    );
    const columns = await dataset.columns();
    const plan = model.plan(columns, req.labelColumn);
    let labelIndex = -1;
    let scorer: Scorer | undefined;
    if (req.labelColumn !== undefined) {
      labelIndex = columns.indexOf(req.labelColumn);
      if (labelIndex < 0)
        throw new PermanentError(
          `labelColumn: column ${JSON.stringify(req.labelColumn)} is not in the dataset (columns: ${columns.join(', ')})`,
          { field: 'labelColumn' },
        );
      scorer = model.kind === 'classifier' ? new ClassificationScorer(req.labelColumn) : new RegressionScorer(req.labelColumn);
    }
    const format = req.output?.format ?? 'csv';
    const file = join(scratch, `predictions.${format}`);
    const writer = new PredictionsWriter(file, format, model.outputNames, req.labelColumn);
    let inferenceMs = 0;
    let rows = 0;
    const progress = new Progress({ log, intervalMs: config.progressIntervalMs, report: (metrics) => store.progress(metrics, signal) });
    const allowNonFinite = req.dataset.nonFinite === 'allow';
    let nonFinite = 0;
    try {
      // Batches are pipelined: while onnxruntime works on one batch (on its own threads), the
      // main thread reads and parses the next one.
      const batches = dataset.batches(config.batchRows, {
        numbers: plan.wants.numbers,
        values: labelIndex >= 0 ? [...plan.wants.values, labelIndex] : plan.wants.values,
      });
      let next = batches.next();
      try {
        for (;;) {
          const step = await next;
          if (step.done) break;
          const batch = step.value;
          if (signal.aborted) throw abortReason(signal);
          nonFinite += countNonFinite(batch, plan.wants.numbers, columns, allowNonFinite);
          const t0 = performance.now();
          const running = model.run(plan, batch);
          next = batches.next();
          const outputs = await running;
          inferenceMs += performance.now() - t0;
          const labels = labelIndex >= 0 ? batch.values(labelIndex) : undefined;
          if (scorer && labels) {
            // The first output is the prediction (a classifier's label); its first value a row.
            const predicted = outputs.get(model.outputNames[0] ?? '');
            const width = predicted?.width ?? 1;
            for (let i = 0; i < batch.length; i++) scorer.add(labels[i], predicted?.values[i * width], batch.firstRow + i);
          }
          await writer.write(outputs, batch.firstRow, batch.length, labels);
          rows += batch.length;
          progress.batch(rows, dataset.progress());
        }
      } finally {
        // On an early exit the read ahead is abandoned: observe it, then close the reader.
        next.catch(() => undefined);
        await batches.return(undefined);
      }
      await writer.close();
    } catch (err) {
      writer.destroy();
      throw err;
    }
    await progress.settle();
    const processingSeconds = (performance.now() - processingStart) / 1000;
    log.debug({ rows, seconds: processingSeconds }, 'predictions written');
    const summary = dataset.summary();
    const totalSeconds = (Date.now() - received) / 1000;
    const now = Date.now();
    const values: Record<string, number> = {
      rows,
      model_load_seconds: loadSeconds,
      ...stepMetrics(loaded.steps),
      inference_seconds: inferenceMs / 1000,
      processing_seconds: processingSeconds,
      total_seconds: totalSeconds,
      // Reading, inference and writing predictions: what a user waits for per row.
      rows_per_second: processingSeconds > 0 ? rows / processingSeconds : 0,
      ...(scorer ? scorer.metrics() : {}),
      ...(allowNonFinite ? { non_finite_values: nonFinite } : {}),
    };
    // rows and rows_per_second end their series of progress steps; the rest have one value.
    const last = progress.steps + 1;
    // The scores are about the model that ran: carried with its logged model's id, they show on
    // that model's page in MLflow.
    const modelMetric = resolved.modelId !== undefined ? { model_id: resolved.modelId } : {};
    const metrics: Metric[] = Object.entries(values).map(([key, value]) => ({
      key,
      value,
      timestamp: now,
      step: key === 'rows' || key === 'rows_per_second' ? last : 0,
      ...modelMetric,
    }));
    const tags: KeyValue[] = [
      { key: RUN_TAG.batchRows, value: String(config.batchRows) },
      { key: RUN_TAG.modelKind, value: model.kind },
      { key: RUN_TAG.modelCache, value: cacheHit ? 'hit' : 'miss' },
      { key: RUN_TAG.modelSource, value: loaded.source },
      { key: RUN_TAG.modelArtifactUri, value: resolved.artifactUri },
    ];
    if (loaded.nodeCacheProblem !== undefined) tags.push({ key: RUN_TAG.nodeCacheProblem, value: loaded.nodeCacheProblem.slice(0, 5000) });
    if (resolved.name !== undefined) tags.push({ key: RUN_TAG.modelName, value: resolved.name });
    if (resolved.version !== undefined) tags.push({ key: RUN_TAG.modelVersion, value: resolved.version });
    const results: RunResults = {
      metrics,
      tags,
      input: {
        name: summary.name,
        digest: summary.digest,
        sourceType: summary.sourceType,
        source: summary.source,
        schema: JSON.stringify({
          mlflow_colspec: summary.columns.map((name, i) => ({ type: summary.columnTypes[i] ?? 'string', name, required: true })),
        }),
        profile: JSON.stringify({ num_rows: summary.rows, num_elements: summary.rows * summary.columns.length }),
        context: 'inference',
      },
      ...(resolved.modelId !== undefined ? { modelId: resolved.modelId } : {}),
      artifact: { file, path: `predictions/predictions.${format}`, contentType: contentTypeOf(file) },
      endTime: Date.now(),
    };
    // In MLflow, or (MLflow gone meanwhile) in the spool, as they are: no second inference.
    await store.complete(results, signal);
    log.info({ runId: store.runId, recordedIn: store.kind, rows, modelVersion: resolved.version, seconds: totalSeconds }, 'run finished');
    return { action: 'ack', ...ids(state) };
  } finally {
    // The outcome is decided: clean-up must not hold the message. Each step is bounded, and one
    // that does not end in time is logged and left behind (the process exits soon after).
    await cleanUp('release the model session', model.release(), log);
    await cleanUp('remove the scratch directory', rm(scratch, { recursive: true, force: true }), log);
  }
}

const CLEANUP_MS = 5000;

async function cleanUp(what: string, step: Promise<void>, log: Logger): Promise<void> {
  try {
    await raceAbort(step, AbortSignal.timeout(CLEANUP_MS));
  } catch (err) {
    log.warn({ err, step: what, boundMs: CLEANUP_MS }, 'clean-up step did not finish; going on');
  }
}
