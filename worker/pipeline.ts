/**
 * One request, start to finish: validate, find or start its MLflow run, load the model, run it on
 * the dataset in batches, log params, metrics, inputs and the predictions artifact, finish the
 * run. It never settles the message itself: it returns what should happen to it (an Outcome),
 * and the consumer does that. Every failure becomes one outcome:
 *
 * - PermanentError → dead-letter, and the run (if any) is marked FAILED with the error as a tag;
 * - TransientError → retried here with backoff while the time budget lasts, then requeue;
 * - the shutdown signal (SIGTERM) → requeue, and the run is marked KILLED.
 *
 * Idempotency: the run carries the request id as the tag `kmj.request_id`. If the experiment
 * already has a FINISHED run with it, the request is acknowledged without running again. An
 * unfinished one (RUNNING, FAILED, KILLED: a worker died or gave up) is resumed: the same run is
 * set RUNNING again and logged into, so a request never has two runs.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { abortReason, sleep } from '../common/abort.ts';
import type { Logger } from '../common/log.ts';
import { displayUrl } from '../common/redact.ts';
import type { WorkerConfig } from './config.ts';
import { openDataset } from './dataset/open.ts';
import { PermanentError, TransientError, messageOf } from './errors.ts';
import { MlflowHttpError } from './mlflow/http.ts';
import { proxyPath, type KeyValue, type Metric, type MlflowTracking, type RunInfo } from './mlflow/tracking.ts';
import { ensureCached } from './model/cache.ts';
import { readMlModel } from './model/mlmodel.ts';
import { OnnxModel } from './model/onnx.ts';
import { resolveModel, type ResolvedModel } from './model/resolve.ts';
import { PredictionsWriter } from './predictions.ts';
import { parseRequest, requestValidator, type InferenceRequest } from './request.ts';
import { ClassificationScorer, RegressionScorer, type Scorer } from './scores.ts';

export const REQUEST_ID_TAG = 'kmj.request_id';
export const ERROR_TAG = 'kmj.error';
/** On a run that did not finish: what became of its message (dead-lettered, requeued). */
export const OUTCOME_TAG = 'kmj.outcome';

/** What the consumer must do with the message. */
export interface Outcome {
  readonly action: 'ack' | 'requeue' | 'dead-letter';
  /** Why, for logs, dead-letter headers and exit reporting. */
  readonly reason?: string;
  readonly field?: string;
  readonly requestId?: string;
  readonly runId?: string;
  readonly experimentId?: string;
  /** True when a FINISHED run already existed and nothing was run. */
  readonly alreadyFinished?: boolean;
}

export interface DeliveryInfo {
  /** 1 for the first delivery of this message. */
  readonly attempt: number;
  readonly queue: string;
}

export interface PipelineDeps {
  readonly config: WorkerConfig;
  readonly tracking: MlflowTracking;
  readonly log: Logger;
  /** Aborted on SIGTERM. */
  readonly shutdown: AbortSignal;
  readonly workerVersion: string;
}

const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 16_000];

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
  const budget = new AbortController();
  const budgetTimer = setTimeout(() => budget.abort(new TransientError(`the time budget of ${config.timeBudgetMs} ms ran out`)), config.timeBudgetMs);
  const onShutdown = (): void => budget.abort(abortReason(deps.shutdown));
  if (deps.shutdown.aborted) onShutdown();
  else deps.shutdown.addEventListener('abort', onShutdown, { once: true });
  const state: AttemptState = { runId: undefined, experimentId: undefined };
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const done = await runOnce(req, delivery, deps, budget.signal, state, received, rlog);
        return { ...done, requestId: req.requestId };
      } catch (err) {
        if (deps.shutdown.aborted) {
          await markRun(deps, state, 'KILLED', 'the worker was stopped (SIGTERM); the request was requeued', 'requeued', rlog);
          return { action: 'requeue', reason: 'the worker was stopped (SIGTERM)', requestId: req.requestId, ...ids(state) };
        }
        const e = classify(err);
        if (e instanceof PermanentError) {
          rlog.warn({ err: e, field: e.field }, 'request failed permanently');
          await markRun(deps, state, 'FAILED', e.message, 'dead-lettered', rlog);
          return { action: 'dead-letter', reason: e.message, requestId: req.requestId, ...(e.field !== undefined ? { field: e.field } : {}), ...ids(state) };
        }
        const delay = RETRY_DELAYS_MS[attempt];
        if (!e.retryInProcess || delay === undefined || budget.signal.aborted) {
          if (delivery.attempt >= config.maxDeliveries) {
            // Poison protection: this was the last delivery allowed; park it instead of looping.
            const reason = `gave up after ${delivery.attempt} deliveries: ${e.message}`;
            rlog.warn({ err: e, attempt: delivery.attempt }, 'request failed on its last allowed delivery; dead-lettering');
            await markRun(deps, state, 'FAILED', reason, 'dead-lettered', rlog);
            return { action: 'dead-letter', reason, requestId: req.requestId, ...ids(state) };
          }
          rlog.warn({ err: e }, 'request failed for now; requeueing');
          await markRun(deps, state, 'FAILED', `${e.message} (requeued)`, 'requeued', rlog);
          return { action: 'requeue', reason: e.message, requestId: req.requestId, ...ids(state) };
        }
        rlog.warn({ err: e, retryInMs: delay }, 'transient failure; retrying');
        await sleep(delay, budget.signal).catch(() => undefined);
      }
    }
  } finally {
    clearTimeout(budgetTimer);
    deps.shutdown.removeEventListener('abort', onShutdown);
  }
}

interface AttemptState {
  runId: string | undefined;
  experimentId: string | undefined;
}

function ids(state: AttemptState): { runId?: string; experimentId?: string } {
  return { ...(state.runId !== undefined ? { runId: state.runId } : {}), ...(state.experimentId !== undefined ? { experimentId: state.experimentId } : {}) };
}

/** Maps anything thrown to one of the two error classes. */
export function classify(err: unknown): PermanentError | TransientError {
  if (err instanceof PermanentError || err instanceof TransientError) return err;
  if (err instanceof MlflowHttpError) {
    if (err.status === 401 || err.status === 403) {
      return new TransientError(`MLflow refused the worker's credentials (HTTP ${err.status}); fix the worker's MLflow settings`, { cause: err, retryInProcess: false });
    }
    // The HTTP client has already retried it with MLflow's own backoff schedule.
    if (err.retryable) return new TransientError(err.message, { cause: err, retryInProcess: false });
    return new PermanentError(err.message, { cause: err });
  }
  if (err instanceof Error && err.name === 'AbortError') return new TransientError(`an operation was aborted: ${err.message}`, { cause: err });
  return new TransientError(messageOf(err), { cause: err });
}

/** Marks the run with a terminal status and the error, best effort, within a short bound. */
async function markRun(deps: PipelineDeps, state: AttemptState, status: 'FAILED' | 'KILLED', error: string, outcome: 'dead-lettered' | 'requeued', log: Logger): Promise<void> {
  if (state.runId === undefined) return;
  const signal = AbortSignal.timeout(Math.min(5000, deps.config.shutdownGraceMs));
  // The tag and the status are separate calls: one failing (it may be the endpoint that broke)
  // must not keep the other from landing.
  const results = await Promise.allSettled([
    deps.tracking.setTag(state.runId, ERROR_TAG, error.slice(0, 8000), signal),
    deps.tracking.setTag(state.runId, OUTCOME_TAG, outcome, signal),
    deps.tracking.updateRun(state.runId, status, Date.now(), signal),
  ]);
  for (const r of results) {
    if (r.status === 'rejected') log.warn({ err: r.reason as unknown, runId: state.runId, status }, 'could not mark the run');
  }
}

function runTags(req: InferenceRequest, deps: PipelineDeps, delivery: DeliveryInfo): KeyValue[] {
  const c = deps.config;
  const tags: KeyValue[] = [
    { key: 'mlflow.user', value: c.mlflowUser },
    { key: 'mlflow.source.name', value: `kmj worker --queue ${delivery.queue}` },
    { key: 'mlflow.source.type', value: 'JOB' },
    { key: 'mlflow.runName', value: req.runName ?? req.requestId },
    { key: REQUEST_ID_TAG, value: req.requestId },
    { key: 'kmj.model_uri', value: req.model },
    { key: 'kmj.queue', value: delivery.queue },
    { key: 'kmj.worker_version', value: deps.workerVersion },
  ];
  if (c.podName !== undefined) tags.push({ key: 'kmj.pod', value: c.podName });
  if (c.nodeName !== undefined) tags.push({ key: 'kmj.node', value: c.nodeName });
  for (const [key, value] of Object.entries(req.tags ?? {})) tags.push({ key, value });
  return tags;
}

function datasetForDisplay(uri: string): string {
  return /^https?:\/\//i.test(uri) ? displayUrl(uri) : uri;
}

/**
 * Params come from the request only: MLflow refuses a param logged again with another value, and
 * a resumed run may be resumed by a worker configured differently (its settings are tags).
 */
function runParams(req: InferenceRequest): KeyValue[] {
  const params: KeyValue[] = [
    { key: 'model_uri', value: req.model },
    // A dataset URL may carry credentials in its user-info: they never reach MLflow.
    { key: 'dataset', value: req.dataset.uri !== undefined ? datasetForDisplay(req.dataset.uri) : `inline (${req.dataset.rows?.length ?? 0} rows)` },
    { key: 'output_format', value: req.output?.format ?? 'csv' },
  ];
  if (req.labelColumn !== undefined) params.push({ key: 'label_column', value: req.labelColumn });
  for (const [key, value] of Object.entries(req.params ?? {})) params.push({ key, value: String(value) });
  return params;
}

async function startOrResume(req: InferenceRequest, delivery: DeliveryInfo, deps: PipelineDeps, signal: AbortSignal, state: AttemptState, log: Logger): Promise<RunInfo | 'finished'> {
  const t = deps.tracking;
  const experimentId = await t.experimentId(req.experiment, signal);
  state.experimentId = experimentId;
  log.debug({ experimentId }, 'experiment ready');
  const existing = await t.runsWithTag(experimentId, REQUEST_ID_TAG, req.requestId, signal);
  const finished = existing.find((r) => r.info.status === 'FINISHED');
  if (finished) {
    state.runId = undefined; // never touch a finished run
    log.info({ runId: finished.info.run_id }, 'request already has a finished run; acknowledging');
    return 'finished';
  }
  const previous = existing[0];
  if (previous) {
    state.runId = previous.info.run_id;
    log.info({ runId: previous.info.run_id, status: previous.info.status }, 'resuming the unfinished run of this request');
    await t.updateRun(previous.info.run_id, 'RUNNING', undefined, signal);
    for (const key of [ERROR_TAG, OUTCOME_TAG]) {
      if (previous.data.tags?.some((tag) => tag.key === key)) {
        await t.http.api('runs/delete-tag', { method: 'POST', json: { run_id: previous.info.run_id, key }, signal });
      }
    }
    // The params again: the attempt that created the run may have died before logging them.
    // MLflow accepts a param logged twice with the same value.
    await t.logBatch(previous.info.run_id, { params: runParams(req), tags: [{ key: 'kmj.delivery_attempt', value: String(delivery.attempt) }] }, signal);
    return previous.info;
  }
  const run = await createRunOnce(req, delivery, deps, experimentId, signal, log);
  state.runId = run.run_id;
  await t.logBatch(run.run_id, { params: runParams(req), tags: [{ key: 'kmj.delivery_attempt', value: String(delivery.attempt) }] }, signal);
  log.info({ runId: run.run_id, experimentId }, 'run started');
  return run;
}

/**
 * runs/create is not idempotent: when its answer is lost, MLflow may have made the run anyway.
 * So it is never retried blindly: after a failure the experiment is searched for the request's run
 * first, and only when there is none is the create tried again.
 */
async function createRunOnce(req: InferenceRequest, delivery: DeliveryInfo, deps: PipelineDeps, experimentId: string, signal: AbortSignal, log: Logger): Promise<RunInfo> {
  const t = deps.tracking;
  for (let attempt = 0; ; attempt++) {
    try {
      return await t.createRun(experimentId, req.runName ?? req.requestId, runTags(req, deps, delivery), Date.now(), signal, { retries: 0 });
    } catch (err) {
      if (!(err instanceof MlflowHttpError) || !err.retryable || attempt >= 3 || signal.aborted) throw err;
      const made = (await t.runsWithTag(experimentId, REQUEST_ID_TAG, req.requestId, signal))[0];
      if (made) {
        log.info({ runId: made.info.run_id }, 'runs/create failed but the run exists; using it');
        return made.info;
      }
      const waitMs = err.retryAfterMs ?? 500 * 2 ** attempt;
      log.warn({ status: err.status, attempt: attempt + 1, waitMs }, 'runs/create failed and the run does not exist; creating it again');
      await sleep(waitMs, signal).catch(() => undefined);
    }
  }
}

async function loadModel(req: InferenceRequest, deps: PipelineDeps, signal: AbortSignal): Promise<{ model: OnnxModel; resolved: ResolvedModel; cacheHit: boolean; seconds: number }> {
  const started = performance.now();
  const t = deps.tracking;
  const resolved = await resolveModel(req.model, t, signal);
  const cached = await ensureCached(deps.config.modelCacheDir, resolved.cacheKey, async (dir) => {
    try {
      const files = await t.downloadDirectory(proxyPath(resolved.artifactUri), dir, signal, deps.config.maxModelBytes);
      if (files.length === 0) throw new PermanentError(`model: ${req.model} resolves to ${resolved.artifactUri}, which holds no files`, { field: 'model' });
    } catch (err) {
      if (err instanceof MlflowHttpError && err.status === 404) throw new PermanentError(`model: the files of ${req.model} are missing from the artifact store`, { field: 'model', cause: err });
      if (err instanceof Error && /larger than the limit/.test(err.message)) throw new PermanentError(`model: ${err.message}`, { field: 'model', cause: err });
      throw err;
    }
  });
  deps.log.debug({ hit: cached.hit }, 'model files ready');
  const mlmodel = await readMlModel(cached.dir);
  const model = await OnnxModel.load(cached.dir, mlmodel, { intraOpThreads: deps.config.onnxThreads });
  return { model, resolved, cacheHit: cached.hit, seconds: (performance.now() - started) / 1000 };
}

async function runOnce(
  req: InferenceRequest,
  delivery: DeliveryInfo,
  deps: PipelineDeps,
  signal: AbortSignal,
  state: AttemptState,
  received: number,
  log: Logger,
): Promise<Outcome> {
  const { config, tracking } = deps;
  // The run and the model do not depend on each other: look up or start the run while the model
  // downloads and loads. A model failure is acted on only once the run is known, so the run it
  // belongs to can be marked FAILED.
  const loadStart = performance.now();
  const [runResult, modelResult] = await Promise.allSettled([startOrResume(req, delivery, deps, signal, state, log), loadModel(req, deps, signal)]);
  const loaded = modelResult.status === 'fulfilled' ? modelResult.value : undefined;
  if (runResult.status === 'rejected' || runResult.value === 'finished' || !loaded) {
    await loaded?.model.release();
    if (runResult.status === 'rejected') throw runResult.reason;
    if (runResult.value === 'finished') return { action: 'ack', alreadyFinished: true, ...ids(state) };
    throw (modelResult as PromiseRejectedResult).reason;
  }
  const run = runResult.value;
  const { model, resolved, cacheHit } = loaded;
  const loadSeconds = loaded.seconds;
  log.debug({ seconds: (performance.now() - loadStart) / 1000 }, 'run and model ready');
  const scratch = join(config.workDir, `${req.requestId}-${randomUUID().slice(0, 8)}`);
  try {
    await mkdir(scratch, { recursive: true });
    const processingStart = performance.now();
    const dataset = await openDataset(req, tracking, { maxBytes: config.maxDatasetBytes, maxRows: config.maxDatasetRows, localRoots: config.datasetRoots, httpTimeoutMs: 60_000 }, signal);
    const columns = await dataset.columns();
    const plan = model.plan(columns, req.labelColumn);
    let labelIndex = -1;
    let scorer: Scorer | undefined;
    if (req.labelColumn !== undefined) {
      labelIndex = columns.indexOf(req.labelColumn);
      if (labelIndex < 0) throw new PermanentError(`labelColumn: column ${JSON.stringify(req.labelColumn)} is not in the dataset (columns: ${columns.join(', ')})`, { field: 'labelColumn' });
      scorer = model.kind === 'classifier' ? new ClassificationScorer(req.labelColumn) : new RegressionScorer(req.labelColumn);
    }
    const format = req.output?.format ?? 'csv';
    const file = join(scratch, `predictions.${format}`);
    const writer = new PredictionsWriter(file, format, model.outputNames, req.labelColumn);
    let inferenceMs = 0;
    let rows = 0;
    try {
      // Batches are pipelined: while onnxruntime works on one batch (on its own threads), the
      // main thread reads and parses the next one.
      const batches = dataset.batches(config.batchRows);
      let next = batches.next();
      try {
        for (;;) {
          const step = await next;
          if (step.done) break;
          const batch = step.value;
          if (signal.aborted) throw abortReason(signal);
          const t0 = performance.now();
          const running = model.run(plan, batch.rows, batch.firstRow);
          next = batches.next();
          const outputs = await running;
          inferenceMs += performance.now() - t0;
          const labels = labelIndex >= 0 ? batch.rows.map((r) => r[labelIndex]) : undefined;
          if (scorer && labels) {
            const predicted = outputs.get(model.outputNames[0] ?? '') ?? [];
            for (let i = 0; i < labels.length; i++) scorer.add(labels[i], predicted[i], batch.firstRow + i);
          }
          await writer.write(outputs, batch.firstRow, labels);
          rows += batch.rows.length;
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
    const processingSeconds = (performance.now() - processingStart) / 1000;
    log.debug({ rows, seconds: processingSeconds }, 'predictions written');
    const summary = dataset.summary();
    const totalSeconds = (Date.now() - received) / 1000;
    const now = Date.now();
    const values: Record<string, number> = {
      rows,
      model_load_seconds: loadSeconds,
      inference_seconds: inferenceMs / 1000,
      processing_seconds: processingSeconds,
      total_seconds: totalSeconds,
      // Reading, inference and writing predictions: what a user waits for per row.
      rows_per_second: processingSeconds > 0 ? rows / processingSeconds : 0,
      ...(scorer ? scorer.metrics() : {}),
    };
    const metrics: Metric[] = Object.entries(values).map(([key, value]) => ({ key, value, timestamp: now, step: 0 }));
    const tags: KeyValue[] = [
      { key: 'kmj.batch_rows', value: String(config.batchRows) },
      { key: 'kmj.model_kind', value: model.kind },
      { key: 'kmj.model_cache', value: cacheHit ? 'hit' : 'miss' },
      { key: 'kmj.model_artifact_uri', value: resolved.artifactUri },
    ];
    if (resolved.name !== undefined) tags.push({ key: 'kmj.model_name', value: resolved.name });
    if (resolved.version !== undefined) tags.push({ key: 'kmj.model_version', value: resolved.version });
    // Metrics, the dataset input and the artifact are independent; FINISHED comes after all three.
    await Promise.all([
      tracking.logBatch(run.run_id, { metrics, tags }, signal),
      tracking.logInputs(
      run.run_id,
      [
        {
          name: summary.name,
          digest: summary.digest,
          sourceType: summary.sourceType,
          source: summary.source,
          schema: JSON.stringify({ mlflow_colspec: summary.columns.map((name, i) => ({ type: summary.columnTypes[i] ?? 'string', name, required: true })) }),
          profile: JSON.stringify({ num_rows: summary.rows, num_elements: summary.rows * summary.columns.length }),
          context: 'inference',
        },
      ],
      signal,
      ),
      tracking.uploadArtifact(run.artifact_uri, `predictions/predictions.${format}`, file, format === 'csv' ? 'text/csv' : 'application/x-ndjson', signal),
    ]);
    log.debug('results logged');
    await tracking.updateRun(run.run_id, 'FINISHED', Date.now(), signal);
    log.info({ runId: run.run_id, rows, modelVersion: resolved.version, seconds: totalSeconds }, 'run finished');
    return { action: 'ack', ...ids(state) };
  } finally {
    await model.release();
    await rm(scratch, { recursive: true, force: true });
  }
}
