/**
 * The offline spool: when MLflow cannot be used (MLFLOW_TRACKING_URI unset, the default for local
 * runs; or MLflow unreachable, when KMJ_SPOOL_DIR is set, opt-in for the cluster), the worker
 * finishes the request anyway and writes the whole run, params, metrics, tags, inputs and
 * artifacts, to a spool directory. `kmj replay --to <tracking uri>` uploads it later.
 *
 * Layout: `<spool>/<requestId>/run.json` and `<spool>/<requestId>/artifacts/…`. An entry appears
 * whole or not at all (written under a temporary name, then renamed). Replayed entries move to
 * `<spool>/.replayed/<requestId>`.
 *
 * Replay is once and only once, even when interrupted and run again: each entry keeps a journal
 * (`replay.json`) of its MLflow run id and the steps done. A run is found again by its
 * `kmj.request_id` tag when the journal did not get to record it, and MLflow ignores a param,
 * metric or dataset input logged again with the same values, so a step repeated after a crash
 * changes nothing.
 */
import { randomUUID } from 'node:crypto';
import { cp, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/errors.ts';
import { exists } from './files.ts';
import type { DatasetInput, KeyValue, Metric, MlflowTracking } from '../mlflow/tracking.ts';
import { contentTypeOf } from './predictions.ts';
import type { InferenceRequest } from '../common/request.ts';
import type { DeliveryInfo } from './delivery.ts';
import { clearFailureTags, createRunSafely, runParams, runTags, type RunResults, type RunStore } from './run-store.ts';
import type { WorkerConfig } from './config.ts';
import { RUN_TAG } from '../common/run-tags.ts';

export interface SpooledRun {
  readonly version: 1;
  readonly requestId: string;
  readonly experiment: string;
  readonly runName: string;
  readonly status: 'FINISHED';
  readonly startTime: number;
  readonly endTime: number;
  readonly tags: readonly KeyValue[];
  readonly params: readonly KeyValue[];
  readonly metrics: readonly Metric[];
  readonly inputs: readonly DatasetInput[];
  /** Files under the entry's artifacts/ directory, relative paths. */
  readonly artifacts: readonly string[];
}

const REPLAYED = '.replayed';

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${randomUUID().slice(0, 8)}.tmp`;
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
  await rename(tmp, path);
}

export class SpoolRunStore implements RunStore {
  readonly kind = 'spool';
  readonly #dir: string;
  readonly #req: InferenceRequest;
  readonly #delivery: DeliveryInfo;
  readonly #config: WorkerConfig;
  readonly #workerVersion: string;
  readonly #log: Logger;
  #startTime = 0;
  #started = false;

  constructor(dir: string, req: InferenceRequest, delivery: DeliveryInfo, config: WorkerConfig, workerVersion: string, log: Logger) {
    this.#dir = dir;
    this.#req = req;
    this.#delivery = delivery;
    this.#config = config;
    this.#workerVersion = workerVersion;
    this.#log = log.child({ spool: dir });
  }

  get runId(): string | undefined {
    return this.#started ? `spool:${this.#req.requestId}` : undefined;
  }

  /** The delivery's own: a spooled run of an earlier attempt is not kept unless it finished. */
  get attempt(): number {
    return this.#delivery.attempt;
  }

  async begin(): Promise<'finished' | 'started'> {
    const id = this.#req.requestId;
    if ((await exists(join(this.#dir, id, 'run.json'))) || (await exists(join(this.#dir, REPLAYED, id, 'run.json')))) {
      this.#log.info('request is already in the spool; acknowledging');
      return 'finished';
    }
    await mkdir(this.#dir, { recursive: true });
    this.#startTime = Date.now();
    this.#started = true;
    this.#log.info('recording the run in the spool');
    return 'started';
  }

  /** The spool keeps the final figures only: a replayed run has no steps to plot. */
  async progress(): Promise<void> {
    // nothing: see above
  }

  async complete(results: RunResults): Promise<void> {
    const req = this.#req;
    const partial = join(this.#dir, `.partial-${req.requestId}-${randomUUID().slice(0, 8)}`);
    try {
      await mkdir(join(partial, 'artifacts', dirname(results.artifact.path)), { recursive: true });
      await cp(results.artifact.file, join(partial, 'artifacts', results.artifact.path));
      const run: SpooledRun = {
        version: 1,
        requestId: req.requestId,
        experiment: req.experiment,
        runName: req.runName ?? req.requestId,
        status: 'FINISHED',
        startTime: this.#startTime,
        endTime: results.endTime,
        tags: [
          ...runTags(req, this.#config, this.#delivery, this.#workerVersion),
          { key: RUN_TAG.deliveryAttempt, value: String(this.#delivery.attempt) },
          { key: RUN_TAG.spooled, value: 'true' },
          ...results.tags,
        ],
        params: runParams(req),
        metrics: results.metrics,
        inputs: [results.input],
        artifacts: [results.artifact.path],
      };
      await writeFile(join(partial, 'run.json'), `${JSON.stringify(run, null, 2)}\n`);
      try {
        await rename(partial, join(this.#dir, req.requestId));
      } catch (err) {
        // Another worker spooled the same request first: one entry is enough.
        if (!(await exists(join(this.#dir, req.requestId, 'run.json')))) throw err;
      }
      this.#log.info({ entry: join(this.#dir, req.requestId) }, 'run written to the spool');
    } finally {
      await rm(partial, { recursive: true, force: true });
    }
  }

  async fail(): Promise<void> {
    // Nothing was written: a failed request is dead-lettered or requeued, not spooled.
  }
}

interface Journal {
  runId?: string;
  steps: string[];
}

export interface ReplayResult {
  readonly requestId: string;
  readonly runId?: string;
  readonly outcome: 'replayed' | 'already in MLflow' | 'failed';
  readonly error?: string;
}

/** Uploads every entry of the spool to MLflow, once and only once. */
export async function replaySpool(
  dir: string,
  tracking: MlflowTracking,
  log: Logger,
  signal: AbortSignal,
  onEntry: (r: ReplayResult) => void = () => undefined,
): Promise<ReplayResult[]> {
  const results: ReplayResult[] = [];
  let names: string[];
  try {
    names = (await readdir(dir, { withFileTypes: true }))
      .filter((d) => d.isDirectory() && !d.name.startsWith('.'))
      .map((d) => d.name)
      .sort();
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return results;
    throw err;
  }
  for (const name of names) {
    if (signal.aborted) break;
    const entry = join(dir, name);
    let result: ReplayResult;
    try {
      result = await replayEntry(entry, dir, tracking, log.child({ requestId: name }), signal);
    } catch (err) {
      result = { requestId: name, outcome: 'failed', error: messageOf(err) };
      log.warn({ err, requestId: name }, 'replay of a spool entry failed; it stays in the spool');
    }
    results.push(result);
    onEntry(result);
  }
  return results;
}

async function replayEntry(entry: string, dir: string, t: MlflowTracking, log: Logger, signal: AbortSignal): Promise<ReplayResult> {
  const run = JSON.parse(await readFile(join(entry, 'run.json'), 'utf8')) as SpooledRun;
  const journalPath = join(entry, 'replay.json');
  const journal: Journal = (await exists(journalPath)) ? (JSON.parse(await readFile(journalPath, 'utf8')) as Journal) : { steps: [] };
  const done = async (step: string): Promise<void> => {
    journal.steps.push(step);
    await writeJsonAtomic(journalPath, journal);
  };
  const experimentId = await t.experimentId(run.experiment, signal);
  let runId = journal.runId;
  /** Known when the run is found or made here; read from MLflow when the journal had it. */
  let artifactUri: string | undefined;
  if (runId === undefined) {
    const existing = await t.runsWithTag(experimentId, RUN_TAG.requestId, run.requestId, signal);
    const finished = existing.find((r) => r.info.status === 'FINISHED');
    if (finished) {
      // The request reached MLflow another way (a later online delivery): nothing to add.
      await moveToReplayed(entry, dir, run.requestId);
      log.info({ runId: finished.info.run_id }, 'spooled request already has a finished run in MLflow');
      return { requestId: run.requestId, runId: finished.info.run_id, outcome: 'already in MLflow' };
    }
    const unfinished = existing[0];
    // An earlier online attempt's failure marks are not true of the finished run.
    if (unfinished) await clearFailureTags(t, unfinished, signal);
    const info = unfinished
      ? unfinished.info
      : await createRunSafely(t, experimentId, run.requestId, run.runName, run.tags, run.startTime, signal, log);
    runId = info.run_id;
    artifactUri = info.artifact_uri;
    journal.runId = runId;
    await writeJsonAtomic(journalPath, journal);
  }
  if (!journal.steps.includes('data')) {
    await t.logBatch(
      runId,
      { params: run.params, tags: [...run.tags, { key: RUN_TAG.replayedAt, value: new Date().toISOString() }], metrics: run.metrics },
      signal,
    );
    await done('data');
  }
  if (!journal.steps.includes('inputs')) {
    await t.logInputs(runId, run.inputs, signal);
    await done('inputs');
  }
  if (!journal.steps.includes('artifacts')) {
    artifactUri ??= (await t.getRun(runId, signal)).info.artifact_uri;
    for (const rel of run.artifacts) await t.uploadArtifact(artifactUri, rel, join(entry, 'artifacts', rel), contentTypeOf(rel), signal);
    await done('artifacts');
  }
  if (!journal.steps.includes('finished')) {
    await t.updateRun(runId, 'FINISHED', run.endTime, signal);
    await done('finished');
  }
  await moveToReplayed(entry, dir, run.requestId);
  log.info({ runId }, 'spool entry replayed');
  return { requestId: run.requestId, runId, outcome: 'replayed' };
}

async function moveToReplayed(entry: string, dir: string, requestId: string): Promise<void> {
  const target = join(dir, REPLAYED, requestId);
  await mkdir(join(dir, REPLAYED), { recursive: true });
  await rm(target, { recursive: true, force: true });
  await rename(entry, target);
}
