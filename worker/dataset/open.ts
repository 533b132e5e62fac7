/**
 * Opens a request's dataset and streams it in batches of rows, whatever its source: an MLflow
 * artifact (`mlflow-artifacts:/…`, `runs:/<run_id>/<path>`), an http(s) URL, a local path under
 * one of the worker's dataset roots (a volume mounted into the pod), or rows inline in the message.
 * Formats: CSV with a header line, and JSON Lines. Memory stays bounded by the batch size; bytes
 * and rows are limited, and the bytes are hashed on the way for the dataset's MLflow digest.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { basename, isAbsolute } from 'node:path';
import type { Readable } from 'node:stream';
import { displayUrl } from '../../common/redact.ts';
import { PermanentError, TransientError, messageOf } from '../../common/errors.ts';
import { isUnderRoots, missingOrUnreadable } from '../files.ts';
import { discard, isRetryableStatus, send, type HttpResponse } from '../../common/http-request.ts';
import { MlflowHttpError } from '../../mlflow/http.ts';
import { proxyPath, type MlflowTracking } from '../../mlflow/tracking.ts';
import type { DataFormat, InferenceRequest } from '../../common/request.ts';
import { batchOfRows, type ColumnBatch, type ColumnWants, type DatasetBatch } from './batch.ts';
import { CsvColumns, CsvTokenizer, NOT_UTF8, SAMPLE_ROWS } from './csv.ts';
import { RUN_TAG } from '../../common/run-tags.ts';

export interface DatasetLimits {
  readonly maxBytes: number;
  readonly maxRows: number;
  /** Local paths must resolve inside one of these directories. */
  readonly localRoots: readonly string[];
  readonly httpTimeoutMs: number;
}

/** What MLflow's log-inputs needs about the dataset, known once it has been read. */
export interface DatasetSummary {
  readonly name: string;
  /** First 8 hex digits of the SHA-256 of the bytes (of the canonical JSON for inline rows). */
  readonly digest: string;
  readonly sourceType: string;
  /** JSON text, as MLflow's dataset sources write it. */
  readonly source: string;
  readonly rows: number;
  readonly columns: readonly string[];
  /** MLflow column types (double, long, string) guessed from the first SAMPLE_ROWS rows. */
  readonly columnTypes: readonly string[];
}

export interface OpenedDataset {
  /** Column names, from the CSV header or the first JSON line; valid once `columns()` resolved. */
  columns(): Promise<readonly string[]>;
  /** The rows in batches of `batchRows`, with the columns `wants` names. */
  batches(batchRows: number, wants: ColumnWants): AsyncGenerator<DatasetBatch>;
  /** Valid after `batches` has been iterated to the end. */
  summary(): DatasetSummary;
  /** How far reading has got: bytes so far, and the whole size when the source said it. */
  progress(): { readonly bytes: number; readonly totalBytes: number | undefined };
}

function formatOf(uri: string, given: DataFormat | undefined): DataFormat {
  if (given) return given;
  const path = uri.split(/[?#]/)[0] ?? '';
  if (/\.csv$/i.test(path)) return 'csv';
  if (/\.(jsonl|ndjson)$/i.test(path)) return 'jsonl';
  throw new PermanentError('dataset.format: is required when dataset.uri does not end in .csv, .jsonl or .ndjson', {
    field: 'dataset.format',
  });
}

function sourceError(uri: string, err: unknown): Error {
  if (err instanceof PermanentError || err instanceof TransientError) return err;
  if (err instanceof MlflowHttpError) {
    if (err.status === 404 || err.errorCode === 'RESOURCE_DOES_NOT_EXIST')
      return new PermanentError(`dataset.uri: ${uri} does not exist`, { field: 'dataset.uri', cause: err });
    if (err.retryable) return new TransientError(`dataset.uri: ${uri} could not be read: ${err.message}`, { cause: err });
    return new PermanentError(`dataset.uri: ${uri} could not be read: ${err.message}`, { field: 'dataset.uri', cause: err });
  }
  return new TransientError(`dataset.uri: ${uri} could not be read: ${messageOf(err)}`, { cause: err });
}

interface ByteSource {
  readonly stream: Readable;
  readonly sourceType: string;
  readonly source: string;
  readonly name: string;
  /** Releases the underlying response when iteration stops early. */
  readonly release: () => void;
  /** The size, when the file system or the server said it. */
  readonly totalBytes?: number;
}

async function openLocal(uri: string, limits: DatasetLimits): Promise<ByteSource> {
  const raw = uri.startsWith('file://') ? decodeURIComponent(new URL(uri).pathname) : uri;
  if (!isAbsolute(raw))
    throw new PermanentError(`dataset.uri: ${JSON.stringify(uri)} is not an absolute path or a supported URI`, { field: 'dataset.uri' });
  let real: string;
  try {
    real = await realpath(raw);
  } catch (err) {
    throw missingOrUnreadable(err, `dataset.uri: ${raw}`, 'dataset.uri');
  }
  if (!(await isUnderRoots(real, limits.localRoots))) {
    throw new PermanentError(`dataset.uri: ${raw} is outside the worker's dataset roots (${limits.localRoots.join(', ')})`, {
      field: 'dataset.uri',
    });
  }
  const st = await stat(real);
  if (!st.isFile()) throw new PermanentError(`dataset.uri: ${raw} is not a file`, { field: 'dataset.uri' });
  if (st.size > limits.maxBytes)
    throw new PermanentError(`dataset: ${raw} is ${st.size} bytes, more than the limit of ${limits.maxBytes}`, { field: 'dataset' });
  const stream = createReadStream(real, { highWaterMark: 256 * 1024 });
  return {
    stream,
    sourceType: 'local',
    source: JSON.stringify({ uri: raw }),
    name: basename(raw),
    release: () => stream.destroy(),
    totalBytes: st.size,
  };
}

async function openHttp(uri: string, limits: DatasetLimits, signal: AbortSignal): Promise<ByteSource> {
  let res: HttpResponse;
  try {
    res = await send(new URL(uri), { method: 'GET', signal, timeoutMs: limits.httpTimeoutMs, headers: { 'user-agent': 'kmj-worker' } });
  } catch (err) {
    throw new TransientError(`dataset.uri: ${uri} could not be fetched: ${messageOf(err)}`, { cause: err });
  }
  if (res.statusCode !== 200) {
    await discard(res);
    const msg = `dataset.uri: ${uri} answered HTTP ${res.statusCode}`;
    if (isRetryableStatus(res.statusCode)) throw new TransientError(msg);
    throw new PermanentError(msg, { field: 'dataset.uri' });
  }
  const len = Number(res.headers['content-length']);
  if (Number.isFinite(len) && len > limits.maxBytes) {
    res.body.destroy();
    throw new PermanentError(`dataset: ${uri} is ${len} bytes, more than the limit of ${limits.maxBytes}`, { field: 'dataset' });
  }
  const u = new URL(uri);
  return {
    stream: res.body,
    sourceType: 'http',
    source: JSON.stringify({ url: displayUrl(uri) }),
    name: basename(u.pathname) || u.hostname,
    release: () => res.body.destroy(),
    ...(Number.isFinite(len) ? { totalBytes: len } : {}),
  };
}

async function openArtifact(uri: string, tracking: MlflowTracking, limits: DatasetLimits, signal: AbortSignal): Promise<ByteSource> {
  let artifactUri = uri;
  if (uri.startsWith('runs:/')) {
    const m = /^runs:\/([0-9a-zA-Z-]+)\/(.+)$/.exec(uri);
    if (!m) throw new PermanentError(`dataset.uri: ${JSON.stringify(uri)} must be runs:/<run_id>/<path>`, { field: 'dataset.uri' });
    const base = (await tracking.getRun(m[1] ?? '', signal)).info.artifact_uri;
    if (!base.startsWith('mlflow-artifacts:'))
      throw new PermanentError(`dataset.uri: run ${m[1]} stores artifacts at ${base}, which the worker cannot read`, {
        field: 'dataset.uri',
      });
    artifactUri = `${base.replace(/\/+$/, '')}/${m[2]}`;
  }
  // Hand the open stream out of the artifact call: iteration happens after it returns.
  const opened = await new Promise<{ stream: Readable; length: number | undefined }>((resolveOpen, rejectOpen) => {
    tracking
      .openArtifact(proxyPath(artifactUri), signal, (body, length) => {
        resolveOpen({ stream: body, length });
        return new Promise<void>((done) => body.once('close', () => done()));
      })
      .catch(rejectOpen);
  });
  if (opened.length !== undefined && opened.length > limits.maxBytes) {
    opened.stream.destroy();
    throw new PermanentError(`dataset: ${uri} is ${opened.length} bytes, more than the limit of ${limits.maxBytes}`, { field: 'dataset' });
  }
  return {
    stream: opened.stream,
    sourceType: 'mlflow-artifacts',
    source: JSON.stringify({ uri }),
    name: basename(artifactUri),
    release: () => opened.stream.destroy(),
    ...(opened.length !== undefined ? { totalBytes: opened.length } : {}),
  };
}

function mlflowType(v: unknown): 'long' | 'double' | 'string' | 'boolean' {
  if (typeof v === 'boolean') return 'boolean';
  if (typeof v === 'number') return Number.isInteger(v) ? 'long' : 'double';
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return /^[-+]?\d+$/.test(v.trim()) ? 'long' : 'double';
  return 'string';
}

function guessTypes(columns: readonly string[], rows: ReadonlyArray<ReadonlyArray<unknown>>): string[] {
  return columns.map((_, j) => {
    let t: string | undefined;
    for (const row of rows) {
      const v = row[j];
      if (v === undefined || v === null || v === '') continue;
      const vt = mlflowType(v);
      if (t === undefined) t = vt;
      else if (t !== vt) t = t === 'long' && vt === 'double' ? 'double' : t === 'double' && vt === 'long' ? 'double' : 'string';
    }
    return t ?? 'string';
  });
}

/** Opens the dataset of `req`. Nothing is read until `columns()` or `batches()` is called. */
export async function openDataset(
  req: InferenceRequest,
  tracking: MlflowTracking | undefined,
  limits: DatasetLimits,
  signal: AbortSignal,
): Promise<OpenedDataset> {
  if (req.dataset.rows) return inlineDataset(req);
  const uri = req.dataset.uri ?? '';
  const format = formatOf(uri, req.dataset.format);
  let src: ByteSource;
  try {
    if (/^https?:\/\//i.test(uri)) src = await openHttp(uri, limits, signal);
    else if (uri.startsWith('mlflow-artifacts:') || uri.startsWith('runs:/')) {
      if (!tracking)
        throw new PermanentError(`dataset.uri: ${uri} needs an MLflow tracking server, and none is configured`, { field: 'dataset.uri' });
      src = await openArtifact(uri, tracking, limits, signal);
    } else if (uri.startsWith('file://') || uri.startsWith('/')) src = await openLocal(uri, limits);
    else
      throw new PermanentError(
        `dataset.uri: ${JSON.stringify(uri)} must be mlflow-artifacts:/…, runs:/…, http(s)://…, or an absolute path`,
        { field: 'dataset.uri' },
      );
  } catch (err) {
    throw sourceError(uri, err);
  }
  return streamDataset(src, format, req.dataset.name ?? src.name, limits, uri);
}

function streamDataset(src: ByteSource, format: DataFormat, name: string, limits: DatasetLimits, uri: string): OpenedDataset {
  const hash = createHash('sha256');
  let bytes = 0;
  let rowCount = 0;
  let finished = false;
  const iterator = src.stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let ended = false;
  // CSV: records straight from the bytes into column batches.
  const csv = new CsvColumns();
  const tokenizer = new CsvTokenizer(csv);
  // JSON Lines: whole rows, made into batches as they are taken.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let jsonColumns: string[] | undefined;
  const pending: unknown[][] = [];
  /** The first SAMPLE_ROWS rows, for the column types. */
  const jsonSample: unknown[][] = [];
  let lineCarry = '';
  /** Lines read so far, empty ones too, for error messages. */
  let lineNo = 0;

  const parseJsonLines = (text: string, last: boolean): void => {
    const all = lineCarry + text;
    const lines = all.split('\n');
    lineCarry = last ? '' : (lines.pop() ?? '');
    for (const line of lines) {
      lineNo++;
      const t = line.trim();
      if (t === '') continue;
      const at = lineNo;
      let obj: unknown;
      try {
        obj = JSON.parse(t);
      } catch (err) {
        throw new PermanentError(`dataset: line ${at} is not valid JSON (${(err as Error).message})`, { field: 'dataset' });
      }
      if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
        throw new PermanentError(`dataset: line ${at} is not a JSON object`, { field: 'dataset' });
      }
      const rec = obj as Record<string, unknown>;
      jsonColumns ??= Object.keys(rec);
      const row = jsonColumns.map((c) => rec[c]);
      if (jsonSample.length < SAMPLE_ROWS) jsonSample.push(row);
      pending.push(row);
    }
  };

  const decode = (chunk: Buffer | undefined): string => {
    try {
      return chunk ? decoder.decode(chunk, { stream: true }) : decoder.decode();
    } catch {
      throw new PermanentError(NOT_UTF8, { field: 'dataset' });
    }
  };

  /** Reads more bytes; returns false at the end of the stream. */
  const pump = async (): Promise<boolean> => {
    if (ended) return false;
    let next: IteratorResult<Buffer>;
    try {
      next = await iterator.next();
    } catch (err) {
      throw sourceError(uri, err);
    }
    if (next.done) {
      ended = true;
      if (format === 'csv') {
        tokenizer.end();
        csv.flush();
      } else parseJsonLines(decode(undefined), true);
      return false;
    }
    const chunk = next.value;
    bytes += chunk.length;
    if (bytes > limits.maxBytes) {
      src.release();
      throw new PermanentError(`dataset: is more than the limit of ${limits.maxBytes} bytes`, { field: 'dataset' });
    }
    hash.update(chunk);
    if (format === 'csv') tokenizer.push(chunk);
    else parseJsonLines(decode(chunk), false);
    return true;
  };

  const columns = (): string[] | undefined => (format === 'csv' ? csv.header : jsonColumns);

  /** The next batch, or undefined at the end. */
  const take = async (batchRows: number, wants: ColumnWants): Promise<ColumnBatch | undefined> => {
    if (format === 'csv') {
      while (csv.ready.length === 0 && (await pump()));
      return csv.ready.shift();
    }
    while (pending.length < batchRows && (await pump()));
    if (pending.length === 0) return undefined;
    const rows = pending.splice(0, batchRows);
    return batchOfRows(rows, rowCount + 1, wants, jsonColumns ?? []);
  };

  /** Reads up to the column names (the CSV header, the first JSON line); releases the source on failure. */
  const readColumns = async (): Promise<string[]> => {
    try {
      while (columns() === undefined && (await pump()));
      const found = columns();
      if (found === undefined) throw new PermanentError('dataset: is empty', { field: 'dataset' });
      return found;
    } catch (err) {
      src.release();
      throw err;
    }
  };

  return {
    columns: readColumns,
    async *batches(batchRows: number, wants: ColumnWants) {
      try {
        if (format === 'csv') {
          await readColumns();
          csv.configure(batchRows, wants);
          tokenizer.resume();
        }
        for (;;) {
          const batch = await take(batchRows, wants);
          if (!batch) break;
          rowCount += batch.length;
          if (rowCount > limits.maxRows)
            throw new PermanentError(`dataset: has more than the limit of ${limits.maxRows} rows`, { field: 'dataset' });
          yield batch;
        }
        if (rowCount === 0) throw new PermanentError('dataset: has no rows', { field: 'dataset' });
        finished = true;
      } finally {
        if (!finished) src.release();
      }
    },
    summary: () => ({
      name,
      digest: hash.copy().digest('hex').slice(0, 8),
      sourceType: src.sourceType,
      source: src.source,
      rows: rowCount,
      columns: columns() ?? [],
      // From the first SAMPLE_ROWS rows, read by now.
      columnTypes: format === 'csv' ? guessTypes(csv.header ?? [], csv.sample) : guessTypes(jsonColumns ?? [], jsonSample),
    }),
    progress: () => ({ bytes, totalBytes: src.totalBytes }),
  };
}

function inlineDataset(req: InferenceRequest): OpenedDataset {
  const rows = req.dataset.rows ?? [];
  const columns: string[] = [];
  const seen = new Set<string>();
  for (const r of rows) {
    for (const k of Object.keys(r)) {
      if (seen.has(k)) continue;
      seen.add(k);
      columns.push(k);
    }
  }
  const matrix = rows.map((r) => columns.map((c) => r[c]));
  const canonical = JSON.stringify(rows);
  return {
    columns: () => Promise.resolve(columns),
    // eslint-disable-next-line @typescript-eslint/require-await -- the interface is an async generator; inline rows are already in memory
    async *batches(batchRows: number, wants: ColumnWants) {
      for (let i = 0; i < matrix.length; i += batchRows) yield batchOfRows(matrix.slice(i, i + batchRows), i + 1, wants, columns);
    },
    summary: () => ({
      name: req.dataset.name ?? 'inline',
      digest: createHash('sha256').update(canonical).digest('hex').slice(0, 8),
      sourceType: 'code',
      source: JSON.stringify({ tags: { [RUN_TAG.requestId]: req.requestId } }),
      rows: matrix.length,
      columns,
      columnTypes: guessTypes(columns, matrix.slice(0, SAMPLE_ROWS)),
    }),
    progress: () => ({ bytes: canonical.length, totalBytes: canonical.length }),
  };
}
