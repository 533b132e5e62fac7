/**
 * The MLflow REST calls the worker makes: experiments, runs, batches of params/metrics/tags, dataset
 * inputs, and artifacts through the tracking server's artifact proxy (`--serve-artifacts`).
 * What it writes reads back through the Python client exactly as if Python had logged it.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { discard, readText } from '../common/http-request.ts';
import { PermanentError, TransientError } from '../common/errors.ts';
import { type MlflowHttp, MlflowHttpError } from './http.ts';

/** MLflow's documented limits for one runs/log-batch request. */
export const LOG_BATCH_LIMITS = { metrics: 1000, paramsAndTags: 100, entities: 1000 } as const;

export interface Metric {
  readonly key: string;
  readonly value: number;
  readonly timestamp: number;
  readonly step: number;
  /** MLflow 3: the logged model the metric is about; it then shows on that model's page. */
  readonly model_id?: string;
}
export interface KeyValue {
  readonly key: string;
  readonly value: string;
}

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export interface RunInfo {
  readonly run_id: string;
  readonly experiment_id: string;
  readonly status: RunStatus;
  readonly artifact_uri: string;
  readonly lifecycle_stage: string;
  readonly start_time?: number;
  readonly end_time?: number;
  readonly run_name?: string;
}

export interface Run {
  readonly info: RunInfo;
  readonly data: { readonly metrics?: Array<{ key: string; value: number }>; readonly params?: KeyValue[]; readonly tags?: KeyValue[] };
}

/** A run as `searchRuns` returns it: its info, with tags, params and latest metrics as maps. */
export interface SearchedRun {
  readonly info: RunInfo;
  readonly tags: Readonly<Record<string, string>>;
  readonly params: Readonly<Record<string, string>>;
  readonly metrics: Readonly<Record<string, number>>;
}

export interface SearchRunsOptions {
  /** MLflow's search filter, e.g. `attributes.status = 'FINISHED'`. */
  readonly filter?: string;
  readonly orderBy?: readonly string[];
  /** Stop after this many runs (all pages are read up to it); 1000 by default. */
  readonly maxResults?: number;
  /** ACTIVE_ONLY (the default), DELETED_ONLY or ALL. */
  readonly viewType?: 'ACTIVE_ONLY' | 'DELETED_ONLY' | 'ALL';
  /** Retries of each page's request, as for any call (MLFLOW_HTTP_REQUEST_MAX_RETRIES by default). */
  readonly maxRetries?: number;
}

function toMap<V>(entries: ReadonlyArray<{ key: string; value: V }> | undefined): Record<string, V> {
  return Object.fromEntries((entries ?? []).map((e) => [e.key, e.value]));
}

export function searchedRun(run: Run): SearchedRun {
  return { info: run.info, tags: toMap(run.data.tags), params: toMap(run.data.params), metrics: toMap(run.data.metrics) };
}

export interface DatasetInput {
  readonly name: string;
  readonly digest: string;
  readonly sourceType: string;
  readonly source: string;
  readonly schema?: string;
  readonly profile?: string;
  readonly context: string;
}

export interface ArtifactFile {
  readonly path: string;
  readonly is_dir: boolean;
  readonly file_size?: number;
}

/** Splits a batch into requests that each respect MLflow's limits. */
export function splitLogBatch(
  metrics: readonly Metric[],
  params: readonly KeyValue[],
  tags: readonly KeyValue[],
): Array<{ metrics: Metric[]; params: KeyValue[]; tags: KeyValue[] }> {
  const out: Array<{ metrics: Metric[]; params: KeyValue[]; tags: KeyValue[] }> = [];
  let cur = { metrics: [] as Metric[], params: [] as KeyValue[], tags: [] as KeyValue[] };
  const size = (): number => cur.metrics.length + cur.params.length + cur.tags.length;
  const flushIfFull = (kind: 'metrics' | 'params' | 'tags'): void => {
    const full =
      size() >= LOG_BATCH_LIMITS.entities ||
      (kind === 'metrics' && cur.metrics.length >= LOG_BATCH_LIMITS.metrics) ||
      (kind !== 'metrics' && cur.params.length + cur.tags.length >= LOG_BATCH_LIMITS.paramsAndTags);
    if (full) {
      out.push(cur);
      cur = { metrics: [], params: [], tags: [] };
    }
  };
  for (const p of params) {
    flushIfFull('params');
    cur.params.push(p);
  }
  for (const t of tags) {
    flushIfFull('tags');
    cur.tags.push(t);
  }
  for (const m of metrics) {
    flushIfFull('metrics');
    cur.metrics.push(m);
  }
  if (size() > 0 || out.length === 0) out.push(cur);
  return out;
}

/**
 * A string literal for an MLflow search filter. The filter grammar has no escapes: a value is
 * quoted with whichever quote it does not contain.
 */
export function quoteFilterValue(value: string): string {
  if (!value.includes("'")) return `'${value}'`;
  if (!value.includes('"')) return `"${value}"`;
  throw new Error(`cannot search for a tag value holding both kinds of quote: ${JSON.stringify(value)}`);
}

/** The path of an `mlflow-artifacts:` URI inside the artifact proxy, e.g. `1/abc/artifacts`. */
export function proxyPath(artifactUri: string): string {
  const m = /^mlflow-artifacts:(?:\/\/[^/]*)?\/*(.*)$/.exec(artifactUri);
  if (!m) throw new Error(`not an mlflow-artifacts URI: ${artifactUri}`);
  return (m[1] ?? '').replace(/\/+$/, '');
}

function encodePath(path: string): string {
  return path.split('/').filter(Boolean).map(encodeURIComponent).join('/');
}

export class MlflowTracking {
  readonly http: MlflowHttp;

  constructor(http: MlflowHttp) {
    this.http = http;
  }

  /** The experiment called `name`, or undefined when there is none. `maxRetries` as for any call. */
  async findExperiment(
    name: string,
    signal: AbortSignal,
    maxRetries?: number,
  ): Promise<{ experimentId: string; deleted: boolean } | undefined> {
    try {
      const r = await this.http.api<{ experiment: { experiment_id: string; lifecycle_stage: string } }>('experiments/get-by-name', {
        method: 'GET',
        query: { experiment_name: name },
        signal,
        ...(maxRetries !== undefined ? { maxRetries } : {}),
      });
      return { experimentId: r.experiment.experiment_id, deleted: r.experiment.lifecycle_stage === 'deleted' };
    } catch (err) {
      if (err instanceof MlflowHttpError && err.errorCode === 'RESOURCE_DOES_NOT_EXIST') return undefined;
      throw err;
    }
  }

  /** Get-or-create, safe when two workers create the same experiment at once. */
  async experimentId(name: string, signal: AbortSignal): Promise<string> {
    const get = async (): Promise<string | undefined> => {
      const found = await this.findExperiment(name, signal);
      if (found?.deleted) {
        throw new PermanentError(`experiment: ${JSON.stringify(name)} is deleted in MLflow; restore it or use another name`, {
          field: 'experiment',
        });
      }
      return found?.experimentId;
    };
    const found = await get();
    if (found !== undefined) return found;
    try {
      const r = await this.http.api<{ experiment_id: string }>('experiments/create', {
        method: 'POST',
        json: { name },
        signal,
        retryWriteRace: false,
      });
      return r.experiment_id;
    } catch (err) {
      // Another worker created it between our get and our create: MLflow says so with
      // RESOURCE_ALREADY_EXISTS, or, when both inserts raced, with a unique-key 400.
      if (err instanceof MlflowHttpError && (err.errorCode === 'RESOURCE_ALREADY_EXISTS' || err.writeRace)) {
        const again = await get();
        if (again !== undefined) return again;
      }
      throw err;
    }
  }

  /** Runs of the experiments, page after page, up to `maxResults`. */
  async searchRuns(experimentIds: readonly string[], options: SearchRunsOptions, signal: AbortSignal): Promise<SearchedRun[]> {
    const limit = options.maxResults ?? 1000;
    const runs: SearchedRun[] = [];
    let pageToken: string | undefined;
    do {
      const r = await this.http.api<{ runs?: Run[]; next_page_token?: string }>('runs/search', {
        method: 'POST',
        json: {
          experiment_ids: experimentIds,
          run_view_type: options.viewType ?? 'ACTIVE_ONLY',
          max_results: Math.min(1000, limit - runs.length),
          ...(options.filter !== undefined ? { filter: options.filter } : {}),
          ...(options.orderBy !== undefined ? { order_by: options.orderBy } : {}),
          ...(pageToken !== undefined ? { page_token: pageToken } : {}),
        },
        signal,
        ...(options.maxRetries !== undefined ? { maxRetries: options.maxRetries } : {}),
      });
      runs.push(...(r.runs ?? []).map(searchedRun));
      pageToken = r.next_page_token || undefined;
    } while (pageToken !== undefined && runs.length < limit);
    return runs;
  }

  /** Runs of an experiment carrying tag `key` = `value`, deleted ones excluded, newest first. */
  async runsWithTag(experimentId: string, key: string, value: string, signal: AbortSignal): Promise<SearchedRun[]> {
    return this.searchRuns(
      [experimentId],
      { filter: `tags.\`${key}\` = ${quoteFilterValue(value)}`, maxResults: 50, orderBy: ['attributes.start_time DESC'] },
      signal,
    );
  }

  async createRun(
    experimentId: string,
    runName: string,
    tags: readonly KeyValue[],
    startTime: number,
    signal: AbortSignal,
    options: { retries?: number } = {},
  ): Promise<RunInfo> {
    const r = await this.http.api<{ run: Run }>('runs/create', {
      method: 'POST',
      json: { experiment_id: experimentId, run_name: runName, start_time: startTime, tags },
      signal,
      ...(options.retries !== undefined ? { maxRetries: options.retries } : {}),
    });
    return r.run.info;
  }

  async getRun(runId: string, signal: AbortSignal): Promise<Run> {
    const r = await this.http.api<{ run: Run }>('runs/get', { method: 'GET', query: { run_id: runId }, signal });
    return r.run;
  }

  async logBatch(
    runId: string,
    batch: { metrics?: readonly Metric[]; params?: readonly KeyValue[]; tags?: readonly KeyValue[] },
    signal: AbortSignal,
  ): Promise<void> {
    for (const part of splitLogBatch(batch.metrics ?? [], batch.params ?? [], batch.tags ?? [])) {
      await this.http.api('runs/log-batch', { method: 'POST', json: { run_id: runId, ...part }, signal });
    }
  }

  /** The run's dataset inputs, and (MLflow 3) the logged models it used. */
  async logInputs(runId: string, inputs: readonly DatasetInput[], signal: AbortSignal, modelIds: readonly string[] = []): Promise<void> {
    await this.http.api('runs/log-inputs', {
      method: 'POST',
      json: {
        run_id: runId,
        datasets: inputs.map((d) => ({
          tags: [{ key: 'mlflow.data.context', value: d.context }],
          dataset: {
            name: d.name,
            digest: d.digest,
            source_type: d.sourceType,
            source: d.source,
            ...(d.schema !== undefined ? { schema: d.schema } : {}),
            ...(d.profile !== undefined ? { profile: d.profile } : {}),
          },
        })),
        ...(modelIds.length > 0 ? { models: modelIds.map((model_id) => ({ model_id })) } : {}),
      },
      signal,
    });
  }

  async setTag(runId: string, key: string, value: string, signal: AbortSignal): Promise<void> {
    await this.http.api('runs/set-tag', { method: 'POST', json: { run_id: runId, key, value }, signal });
  }

  async updateRun(runId: string, status: RunStatus, endTime: number | undefined, signal: AbortSignal): Promise<void> {
    await this.http.api('runs/update', {
      method: 'POST',
      json: { run_id: runId, status, ...(endTime !== undefined ? { end_time: endTime } : {}) },
      signal,
    });
  }

  /** Uploads a local file to `<artifactUri>/<relPath>` through the artifact proxy. */
  async uploadArtifact(artifactUri: string, relPath: string, file: string, contentType: string, signal: AbortSignal): Promise<void> {
    const path = `api/2.0/mlflow-artifacts/artifacts/${encodePath(`${proxyPath(artifactUri)}/${relPath}`)}`;
    await this.http.raw(path, { method: 'PUT', file: { path: file, contentType }, signal }, discard);
  }

  /** Lists one directory of the artifact proxy. */
  async listArtifacts(proxyDir: string, signal: AbortSignal): Promise<ArtifactFile[]> {
    const r = await this.http.raw(
      'api/2.0/mlflow-artifacts/artifacts',
      { method: 'GET', query: { path: proxyDir }, signal },
      async (res) => JSON.parse(await readText(res)) as { files?: ArtifactFile[] },
    );
    return r.files ?? [];
  }

  /** Streams one artifact-proxy file into `onStream`. */
  async openArtifact<T>(
    proxyFile: string,
    signal: AbortSignal,
    onStream: (body: Readable, length: number | undefined) => Promise<T>,
  ): Promise<T> {
    return this.http.raw(`api/2.0/mlflow-artifacts/artifacts/${encodePath(proxyFile)}`, { method: 'GET', signal }, async (res) => {
      const len = Number(res.headers['content-length']);
      return onStream(res.body, Number.isFinite(len) ? len : undefined);
    });
  }

  /**
   * Downloads a whole artifact-proxy directory into `dest`, recursively, the files of each
   * directory in parallel. Returns the files written.
   */
  async downloadDirectory(proxyDir: string, dest: string, signal: AbortSignal, maxBytes: number): Promise<string[]> {
    const written: string[] = [];
    let total = 0;
    const walk = async (relDir: string): Promise<void> => {
      const listed = relDir ? `${proxyDir}/${relDir}` : proxyDir;
      const files: Array<{ rel: string; size: number | undefined }> = [];
      for (const f of await this.listArtifacts(listed, signal)) {
        // The proxy names entries relative to the directory listed (older servers: relative to the root).
        const name = f.path.startsWith(`${listed}/`) ? f.path.slice(listed.length + 1) : f.path;
        const rel = relDir && !name.startsWith(`${relDir}/`) ? `${relDir}/${name}` : name;
        if (rel.split('/').some((part) => part === '..' || part === ''))
          throw new PermanentError(`the artifact listing names an unsafe path: ${JSON.stringify(f.path)}`);
        if (f.is_dir) {
          await walk(rel);
          continue;
        }
        total += f.file_size ?? 0;
        if (total > maxBytes) throw new PermanentError(`the model directory is larger than the limit of ${maxBytes} bytes`);
        files.push({ rel, size: f.file_size });
      }
      await mkdir(relDir ? join(dest, relDir) : dest, { recursive: true });
      await Promise.all(
        files.map(async ({ rel, size }) => {
          const file = join(dest, rel);
          await this.openArtifact(`${proxyDir}/${rel}`, signal, (body) => pipeline(body, createWriteStream(file)));
          // A body cut short without an error (a proxy closing a chunked answer early) is caught
          // here, not by onnxruntime as a "malformed" model.
          const got = (await stat(file)).size;
          if (size !== undefined && got !== size) throw new TransientError(`model: ${rel} arrived with ${got} of its ${size} bytes`);
          written.push(rel);
        }),
      );
    };
    await walk('');
    return written;
  }
}
