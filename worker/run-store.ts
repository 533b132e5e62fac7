/**
 * Where a request's run is recorded: the MLflow tracking server (MlflowRunStore, here) or, when
 * MLflow cannot be used, a local spool directory (SpoolRunStore, worker/spool.ts) that
 * `kmj replay` uploads later. The pipeline talks to this one interface only.
 *
 * Idempotency, in both: the run carries the request id as the tag `kmj.request_id`. A request
 * whose run is FINISHED is acknowledged without running again; an unfinished one (RUNNING after a
 * crash, FAILED after a requeue, KILLED after SIGTERM) is resumed, never duplicated.
 */
import { machine } from 'node:os';
import { raceAbort, sleep } from '../common/abort.ts';
import type { Logger } from '../common/log.ts';
import { displayUrl } from '../common/redact.ts';
import type { WorkerConfig } from './config.ts';
import type { DeliveryInfo } from './delivery.ts';
import { MlflowHttpError } from '../mlflow/http.ts';
import type { DatasetInput, KeyValue, Metric, MlflowTracking, RunInfo, SearchedRun } from '../mlflow/tracking.ts';
import type { InferenceRequest } from '../common/request.ts';
import { RUN_TAG } from '../common/run-tags.ts';

/** Everything a finished run records besides what `begin` already did. */
export interface RunResults {
  readonly metrics: readonly Metric[];
  readonly tags: readonly KeyValue[];
  readonly input: DatasetInput;
  /** The logged model that ran (ResolvedModel.modelId), when there is one. */
  readonly modelId?: string;
  /** The predictions file and where it goes under the run's artifacts. */
  readonly artifact: { readonly file: string; readonly path: string; readonly contentType: string };
  readonly endTime: number;
}

export interface RunStore {
  readonly kind: 'mlflow' | 'spool';
  /** The run, once `begin` found or made it. */
  readonly runId: string | undefined;
  /** The delivery attempt, once `begin` knows it (DeliveryInfo.attemptsFromRun). */
  readonly attempt: number;
  /** Finds or makes the request's run; 'finished' when it already has a FINISHED one. */
  begin(signal: AbortSignal): Promise<'finished' | 'started'>;
  complete(results: RunResults, signal: AbortSignal): Promise<void>;
  /** Metric steps while the run runs (rows done, rows per second); best effort. */
  progress(metrics: readonly Metric[], signal: AbortSignal): Promise<void>;
  /** Marks the run (if any) with a status and the error; best effort, done or given up when `signal` aborts. */
  fail(status: 'FAILED' | 'KILLED', error: string, outcome: 'dead-lettered' | 'requeued', log: Logger, signal: AbortSignal): Promise<void>;
}

function datasetForDisplay(uri: string): string {
  return /^https?:\/\//i.test(uri) ? displayUrl(uri) : uri;
}

/**
 * Params come from the request only: MLflow refuses a param logged again with another value, and
 * a resumed run may be resumed by a worker configured differently (its settings are tags).
 */
export function runParams(req: InferenceRequest): KeyValue[] {
  const params: KeyValue[] = [
    { key: 'model_uri', value: req.model },
    // A dataset URL may carry credentials in its user-info: they never reach MLflow.
    {
      key: 'dataset',
      value: req.dataset.uri !== undefined ? datasetForDisplay(req.dataset.uri) : `inline (${req.dataset.rows?.length ?? 0} rows)`,
    },
    { key: 'output_format', value: req.output?.format ?? 'csv' },
  ];
  if (req.labelColumn !== undefined) params.push({ key: 'label_column', value: req.labelColumn });
  for (const [key, value] of Object.entries(req.params ?? {})) params.push({ key, value: String(value) });
  return params;
}

/** The tags a run starts with: the ones the Python client sets, then ours, then the request's. */
export function runTags(req: InferenceRequest, config: WorkerConfig, delivery: DeliveryInfo, workerVersion: string): KeyValue[] {
  const tags: KeyValue[] = [
    { key: 'mlflow.user', value: config.mlflowUser },
    { key: 'mlflow.source.name', value: `kmj worker --queue ${delivery.queue}` },
    { key: 'mlflow.source.type', value: 'JOB' },
    { key: 'mlflow.runName', value: req.runName ?? req.requestId },
    { key: RUN_TAG.requestId, value: req.requestId },
    { key: RUN_TAG.modelUri, value: req.model },
    { key: RUN_TAG.queue, value: delivery.queue },
    { key: RUN_TAG.workerVersion, value: workerVersion },
    { key: RUN_TAG.machine, value: machine() },
  ];
  if (config.podName !== undefined) tags.push({ key: RUN_TAG.pod, value: config.podName });
  if (config.nodeName !== undefined) tags.push({ key: RUN_TAG.node, value: config.nodeName });
  for (const [key, value] of Object.entries(req.tags ?? {})) tags.push({ key, value });
  return tags;
}

/** Deletes an earlier attempt's failure marks (error, outcome) from a run being resumed. */
export async function clearFailureTags(t: MlflowTracking, run: SearchedRun, signal: AbortSignal): Promise<void> {
  for (const key of [RUN_TAG.error, RUN_TAG.outcome]) {
    if (run.tags[key] !== undefined) {
      await t.http.api('runs/delete-tag', { method: 'POST', json: { run_id: run.info.run_id, key }, signal });
    }
  }
}

/**
 * runs/create is not idempotent: when its answer is lost, MLflow may have made the run anyway.
 * So it is never retried blindly: after a failure the experiment is searched for the request's
 * run first, and only when there is none is the create tried again.
 */
export async function createRunSafely(
  t: MlflowTracking,
  experimentId: string,
  requestId: string,
  runName: string,
  tags: readonly KeyValue[],
  startTime: number,
  signal: AbortSignal,
  log: Logger,
): Promise<RunInfo> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await t.createRun(experimentId, runName, tags, startTime, signal, { retries: 0 });
    } catch (err) {
      if (!(err instanceof MlflowHttpError) || !err.retryable || attempt >= 3 || signal.aborted) throw err;
      const made = (await t.runsWithTag(experimentId, RUN_TAG.requestId, requestId, signal))[0];
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

export class MlflowRunStore implements RunStore {
  readonly kind = 'mlflow';
  readonly #t: MlflowTracking;
  readonly #req: InferenceRequest;
  readonly #delivery: DeliveryInfo;
  readonly #config: WorkerConfig;
  readonly #workerVersion: string;
  readonly #log: Logger;
  #run: RunInfo | undefined;
  #attempt: number;
  /** The start log-batch (params, attempt), in flight while the work goes on. */
  #startLogged: Promise<void> | undefined;

  constructor(
    tracking: MlflowTracking,
    req: InferenceRequest,
    delivery: DeliveryInfo,
    config: WorkerConfig,
    workerVersion: string,
    log: Logger,
  ) {
    this.#t = tracking;
    this.#req = req;
    this.#delivery = delivery;
    this.#config = config;
    this.#workerVersion = workerVersion;
    this.#log = log;
    this.#attempt = delivery.attempt;
  }

  get runId(): string | undefined {
    return this.#run?.run_id;
  }

  get attempt(): number {
    return this.#attempt;
  }

  async begin(signal: AbortSignal): Promise<'finished' | 'started'> {
    const t = this.#t;
    const req = this.#req;
    const experimentId = await t.experimentId(req.experiment, signal);
    this.#log.debug({ experimentId }, 'experiment ready');
    const existing = await t.runsWithTag(experimentId, RUN_TAG.requestId, req.requestId, signal);
    const finished = existing.find((r) => r.info.status === 'FINISHED');
    if (finished) {
      this.#log.info({ runId: finished.info.run_id }, 'request already has a finished run; acknowledging');
      return 'finished';
    }
    const previous = existing[0];
    if (previous && this.#delivery.attemptsFromRun && previous.info.status === 'RUNNING') {
      const died = Number(previous.tags[RUN_TAG.deliveryAttempt]);
      if (Number.isSafeInteger(died) && died >= this.#attempt) {
        this.#attempt = died + 1;
        this.#log.warn(
          { runId: previous.info.run_id, attempt: this.#attempt },
          'the last attempt of this request died without a word; counting it',
        );
      }
    }
    const attemptTag = { key: RUN_TAG.deliveryAttempt, value: String(this.#attempt) };
    if (previous) {
      this.#run = previous.info;
      this.#log.info({ runId: previous.info.run_id, status: previous.info.status }, 'resuming the unfinished run of this request');
      await t.updateRun(previous.info.run_id, 'RUNNING', undefined, signal);
      await clearFailureTags(t, previous, signal);
      // The params again: the attempt that created the run may have died before logging them.
      // MLflow accepts a param logged twice with the same value.
      this.#logStart(previous.info.run_id, attemptTag, signal);
      return 'started';
    }
    const run = await this.#createOnce(experimentId, signal);
    this.#run = run;
    this.#logStart(run.run_id, attemptTag, signal);
    this.#log.info({ runId: run.run_id, experimentId }, 'run started');
    return 'started';
  }

  /**
   * Logs the params and the attempt as the run starts, without holding the work up: complete()
   * and fail() wait for it (a failure surfaces there).
   */
  #logStart(runId: string, attemptTag: KeyValue, signal: AbortSignal): void {
    const logged = this.#t.logBatch(runId, { params: runParams(this.#req), tags: [attemptTag] }, signal);
    logged.catch(() => undefined); // observed here; complete() and fail() await it
    this.#startLogged = logged;
  }

  #createOnce(experimentId: string, signal: AbortSignal): Promise<RunInfo> {
    const req = this.#req;
    return createRunSafely(
      this.#t,
      experimentId,
      req.requestId,
      req.runName ?? req.requestId,
      runTags(req, this.#config, this.#delivery, this.#workerVersion),
      Date.now(),
      signal,
      this.#log,
    );
  }

  async progress(metrics: readonly Metric[], signal: AbortSignal): Promise<void> {
    const runId = this.#run?.run_id;
    if (runId !== undefined) await this.#t.logBatch(runId, { metrics }, signal);
  }

  async complete(results: RunResults, signal: AbortSignal): Promise<void> {
    const run = this.#run;
    if (!run) throw new Error('complete() before begin()');
    const t = this.#t;
    // The start's log-batch has long landed by now, as a rule; a failure of it stops here.
    await this.#startLogged;
    // Metrics, the dataset input and the artifact are independent; FINISHED comes after all three.
    const modelId = results.modelId;
    const refused: KeyValue = { key: RUN_TAG.modelLink, value: 'refused' };
    await Promise.all([
      this.#linkedIfAllowed(modelId, (linked) =>
        t.logBatch(
          run.run_id,
          linked
            ? { metrics: results.metrics, tags: results.tags }
            : { metrics: results.metrics.map(unlinked), tags: [...results.tags, ...(modelId !== undefined ? [refused] : [])] },
          signal,
        ),
      ),
      this.#linkedIfAllowed(modelId, (linked) =>
        t.logInputs(run.run_id, [results.input], signal, linked && modelId !== undefined ? [modelId] : []),
      ),
      t.uploadArtifact(run.artifact_uri, results.artifact.path, results.artifact.file, results.artifact.contentType, signal),
    ]);
    this.#log.debug('results logged');
    await t.updateRun(run.run_id, 'FINISHED', results.endTime, signal);
  }

  /**
   * A call that names the logged model that ran (`linked`), made again without it when MLflow
   * refuses it: MLflow 3.17's auth lets a run name a logged model only with EDIT on the
   * experiment the model was logged in, which a worker that may read the registry need not have.
   * The results land either way; the run says `kmj.model_link=refused` (docs/deploy.md).
   */
  async #linkedIfAllowed(modelId: string | undefined, call: (linked: boolean) => Promise<void>): Promise<void> {
    if (modelId === undefined) return call(false);
    try {
      await call(true);
    } catch (err) {
      if (!(err instanceof MlflowHttpError) || err.status !== 403) throw err;
      this.#log.warn(
        { modelId },
        "MLflow refused to link the run to the logged model that ran (the worker's user needs EDIT on the model's experiment); logging without the link",
      );
      await call(false);
    }
  }

  async fail(
    status: 'FAILED' | 'KILLED',
    error: string,
    outcome: 'dead-lettered' | 'requeued',
    log: Logger,
    signal: AbortSignal,
  ): Promise<void> {
    const runId = this.#run?.run_id;
    if (runId === undefined) return;
    // Separate calls: one failing (it may be the endpoint that broke) must not keep the others
    // from landing.
    const results = await Promise.allSettled([
      raceAbort(this.#startLogged ?? Promise.resolve(), signal),
      this.#t.setTag(runId, RUN_TAG.error, error.slice(0, 8000), signal),
      this.#t.setTag(runId, RUN_TAG.outcome, outcome, signal),
      this.#t.updateRun(runId, status, Date.now(), signal),
    ]);
    for (const r of results) {
      if (r.status === 'rejected') log.warn({ err: r.reason as unknown, runId, status }, 'could not mark the run');
    }
  }
}

/** A metric without the logged model it was about. */
function unlinked(metric: Metric): Metric {
  const { model_id: _model, ...rest } = metric;
  return rest;
}
