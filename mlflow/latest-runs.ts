/**
 * The latest runs of an experiment as kmj reads them (`kmj status`): each run's request id, its
 * outcome in kmj's words (finished, running, dead-lettered, requeued), duration, rows, accuracy,
 * the error the worker tagged and the run's address in the MLflow UI.
 */
import { RUN_TAG } from '../common/run-tags.ts';
import { runUrl } from './client.ts';
import { quoteFilterValue, type MlflowTracking, type SearchedRun } from './tracking.ts';

export interface RunSummary {
  readonly runId: string;
  readonly requestId?: string;
  readonly status: string;
  readonly outcome: string;
  readonly seconds?: number;
  readonly rows?: number;
  readonly accuracy?: number;
  readonly error?: string;
  readonly url: string;
}

export interface ExperimentRuns {
  readonly experiment: string;
  /** Absent when no experiment has that name yet. */
  readonly experimentId?: string;
  readonly runs: readonly RunSummary[];
}

/** The `limit` latest runs of `experiment`, newest first; no retries (a person is waiting), bounded by `timeoutMs` (8 s). */
export async function latestRuns(tracking: MlflowTracking, experiment: string, limit: number, timeoutMs = 8000): Promise<ExperimentRuns> {
  const signal = AbortSignal.timeout(timeoutMs);
  const found = await tracking.findExperiment(experiment, signal, 0);
  if (!found) return { experiment, runs: [] };
  const experimentId = found.experimentId;
  const searched = await tracking.searchRuns(
    [experimentId],
    { maxResults: limit, orderBy: ['attributes.start_time DESC'], maxRetries: 0 },
    signal,
  );
  const runs = searched.map((run): RunSummary => {
    const { tags, metrics } = run;
    const outcome =
      run.info.status === 'FINISHED'
        ? 'finished'
        : run.info.status === 'RUNNING'
          ? 'running'
          : (tags[RUN_TAG.outcome] ?? run.info.status.toLowerCase());
    return {
      runId: run.info.run_id,
      ...(tags[RUN_TAG.requestId] !== undefined ? { requestId: tags[RUN_TAG.requestId] } : {}),
      status: run.info.status,
      outcome,
      ...(run.info.start_time !== undefined && run.info.end_time !== undefined
        ? { seconds: (run.info.end_time - run.info.start_time) / 1000 }
        : {}),
      ...(metrics['rows'] !== undefined ? { rows: metrics['rows'] } : {}),
      ...(metrics['accuracy_score'] !== undefined ? { accuracy: metrics['accuracy_score'] } : {}),
      ...(tags[RUN_TAG.error] !== undefined ? { error: tags[RUN_TAG.error] } : {}),
      url: runUrl(tracking, experimentId, run.info.run_id),
    };
  });
  return { experiment, experimentId, runs };
}

/**
 * The runs of one request queue in `experiment` (those tagged with the queue's name), oldest first,
 * with the experiment's id (made when missing, as a worker would); at most `limit`, bounded by
 * `timeoutMs` (10 s). `kmj demo` reads its own queue's runs with it.
 */
export async function queueRuns(
  tracking: MlflowTracking,
  experiment: string,
  queue: string,
  limit = 100,
  timeoutMs = 10_000,
): Promise<{ experimentId: string; runs: SearchedRun[] }> {
  const signal = AbortSignal.timeout(timeoutMs);
  const experimentId = await tracking.experimentId(experiment, signal);
  const runs = await tracking.searchRuns(
    [experimentId],
    { filter: `tags.\`${RUN_TAG.queue}\` = ${quoteFilterValue(queue)}`, maxResults: limit, orderBy: ['attributes.start_time ASC'] },
    signal,
  );
  return { experimentId, runs };
}
