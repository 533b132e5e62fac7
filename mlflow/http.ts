/**
 * HTTP to an MLflow tracking server, the way the Python client does it: Basic auth from
 * MLFLOW_TRACKING_USERNAME/PASSWORD or a bearer MLFLOW_TRACKING_TOKEN, TLS options, and retries on
 * 408, 429 and 5xx and on network errors with exponential backoff and jitter, honouring
 * Retry-After. Every call carries an AbortSignal (the worker's time budget and SIGTERM); retries
 * never outlive it.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Agent as HttpAgent } from 'node:http';
import type { Agent as HttpsAgent } from 'node:https';
import type { Readable } from 'node:stream';
import { sleep } from '../common/abort.ts';
import { agentFor, isRetryableStatus, readText, send, type HttpResponse } from '../common/http-request.ts';
import type { Logger } from '../common/log.ts';
import { displayUrl, scrubSecrets } from '../common/redact.ts';

export interface MlflowHttpOptions {
  readonly trackingUri: string;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly token?: string | undefined;
  /** MLFLOW_TRACKING_INSECURE_TLS: do not verify the server certificate. */
  readonly insecureTls: boolean;
  /** MLFLOW_TRACKING_SERVER_CERT_PATH: PEM CA bundle for the server certificate. */
  readonly serverCa?: Buffer | undefined;
  /** MLFLOW_TRACKING_CLIENT_CERT_PATH: PEM with the client certificate and its key. */
  readonly clientCert?: Buffer | undefined;
  /** MLFLOW_HTTP_REQUEST_MAX_RETRIES (7). */
  readonly maxRetries: number;
  /** MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (2): the n-th retry waits factor × 2^(n−1) s. */
  readonly backoffFactorSeconds: number;
  /** MLFLOW_HTTP_REQUEST_BACKOFF_JITTER (1): plus up to this many seconds at random. */
  readonly backoffJitterSeconds: number;
  /** Cap of one backoff wait. */
  readonly maxBackoffSeconds: number;
  /** MLFLOW_HTTP_REQUEST_TIMEOUT (120 s): one attempt. */
  readonly requestTimeoutMs: number;
  readonly log: Logger;
}

/** How MLflow's SQL store reports a lost race between two inserts of the same key. */
const WRITE_RACE = /IntegrityError|UniqueViolation|UNIQUE constraint failed|duplicate key value violates unique constraint/;

/** A non-2xx answer from MLflow, or no answer at all. */
export class MlflowHttpError extends Error {
  override readonly name = 'MlflowHttpError';
  /** HTTP status, or 0 when there was no response (network error, timeout). */
  readonly status: number;
  /** MLflow's error_code from the JSON body (RESOURCE_DOES_NOT_EXIST, ...), when there is one. */
  readonly errorCode: string | undefined;
  /** How long the server asked us to wait (Retry-After on 429 and 503), when it did. */
  retryAfterMs: number | undefined;
  constructor(message: string, status: number, errorCode?: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
    this.status = status;
    this.errorCode = errorCode;
  }

  /**
   * 408, 429, 5xx and network errors: worth another attempt. So is the 400 an MLflow server gives
   * when two writers race on one of its unique keys (two runs of an experiment logging the same
   * dataset at once: SQLite's "UNIQUE constraint failed", Postgres' "duplicate key value"): the
   * next attempt finds the row the other writer made.
   */
  get retryable(): boolean {
    return isRetryableStatus(this.status) || this.writeRace;
  }

  /** The 400 of a lost race on a unique key (see retryable). */
  get writeRace(): boolean {
    return this.status === 400 && WRITE_RACE.test(this.message);
  }
}

export interface CallOptions {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  readonly query?: Readonly<Record<string, string>>;
  readonly json?: unknown;
  /** A file to send as the body (artifact upload). */
  readonly file?: { readonly path: string; readonly contentType: string };
  readonly signal: AbortSignal;
  /** Overrides MLFLOW_HTTP_REQUEST_MAX_RETRIES for a call that is not safe to repeat. */
  readonly maxRetries?: number;
  /**
   * false: a lost race on a unique key is the answer, not a reason to try again (a create whose
   * row another writer made: every repeat loses the same race). Default true.
   */
  readonly retryWriteRace?: boolean;
}

export class MlflowHttp {
  readonly #base: URL;
  readonly #options: MlflowHttpOptions;
  readonly #agent: HttpAgent | HttpsAgent;
  readonly #authorization: string | undefined;
  readonly #log: Logger;

  constructor(options: MlflowHttpOptions) {
    this.#options = options;
    const base = new URL(options.trackingUri);
    // Credentials in the URI itself work like the Python client's, but never travel in logs.
    const userFromUri = base.username ? decodeURIComponent(base.username) : undefined;
    const passFromUri = base.password ? decodeURIComponent(base.password) : undefined;
    base.username = '';
    base.password = '';
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    this.#base = base;
    const user = options.username ?? userFromUri;
    const pass = options.password ?? passFromUri;
    if (options.token) this.#authorization = `Bearer ${options.token}`;
    else if (user !== undefined) this.#authorization = `Basic ${Buffer.from(`${user}:${pass ?? ''}`).toString('base64')}`;
    this.#agent = agentFor(base, { rejectUnauthorized: !options.insecureTls, ca: options.serverCa, clientCert: options.clientCert });
    this.#log = options.log.child({ mlflow: displayUrl(options.trackingUri) });
  }

  /** The tracking URI without credentials, for messages and the MLflow UI address. */
  get baseUrl(): string {
    return this.#base.toString().replace(/\/$/, '');
  }

  /** A JSON call to `api/2.0/mlflow/<path>`; returns the parsed body. */
  async api<T>(path: string, options: CallOptions): Promise<T> {
    const body = await this.#call(`api/2.0/mlflow/${path}`, options, async (res) => (await readText(res)) || '{}');
    return JSON.parse(body) as T;
  }

  /** A raw call under the tracking URI (artifact proxy); `onBody` reads the successful response. */
  async raw<T>(path: string, options: CallOptions, onBody: (res: HttpResponse) => Promise<T>): Promise<T> {
    return this.#call(path, options, onBody);
  }

  /** Closes the idle sockets; a promise, as the other clients' close is. */
  close(): Promise<void> {
    this.#agent.destroy();
    return Promise.resolve();
  }

  async #call<T>(path: string, options: CallOptions, onBody: (res: HttpResponse) => Promise<T>): Promise<T> {
    const url = new URL(path, this.#base);
    for (const [k, v] of Object.entries(options.query ?? {})) url.searchParams.set(k, v);
    for (let attempt = 0; ; attempt++) {
      const started = performance.now();
      try {
        const result = await this.#once(url, options, onBody);
        this.#log.debug({ method: options.method, path: url.pathname, ms: Math.round(performance.now() - started) }, 'mlflow request');
        return result;
      } catch (err) {
        const e =
          err instanceof MlflowHttpError
            ? err
            : new MlflowHttpError(`MLflow ${options.method} ${url.pathname} failed: ${(err as Error).message}`, 0, undefined, {
                cause: err,
              });
        const retryable = e.retryable && !(options.retryWriteRace === false && e.writeRace);
        if (options.signal.aborted || !retryable || attempt >= (options.maxRetries ?? this.#options.maxRetries)) throw e;
        const waitMs = this.#backoffMs(attempt + 1, e);
        this.#log.warn({ path: url.pathname, status: e.status, attempt: attempt + 1, waitMs }, 'mlflow request failed, retrying');
        await sleep(waitMs, options.signal).catch(() => undefined);
        if (options.signal.aborted) throw e;
      }
    }
  }

  /** urllib3's schedule: no wait before the first retry, then factor × 2^(n−1), plus jitter; Retry-After wins. */
  #backoffMs(retry: number, err: MlflowHttpError): number {
    if (err.retryAfterMs !== undefined) return Math.min(err.retryAfterMs, this.#options.maxBackoffSeconds * 1000);
    const o = this.#options;
    const base = retry <= 1 ? 0 : o.backoffFactorSeconds * 2 ** (retry - 1);
    return Math.round(Math.min(base + Math.random() * o.backoffJitterSeconds, o.maxBackoffSeconds) * 1000);
  }

  async #once<T>(url: URL, options: CallOptions, onBody: (res: HttpResponse) => Promise<T>): Promise<T> {
    const headers: Record<string, string> = { 'user-agent': 'kmj-worker' };
    if (this.#authorization) headers['authorization'] = this.#authorization;
    let body: string | Readable | null = null;
    if (options.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.json);
    } else if (options.file) {
      headers['content-type'] = options.file.contentType;
      headers['content-length'] = String((await stat(options.file.path)).size);
      body = createReadStream(options.file.path);
    }
    const res = await send(url, {
      method: options.method,
      headers,
      body,
      agent: this.#agent,
      signal: options.signal,
      timeoutMs: this.#options.requestTimeoutMs,
    });
    if (res.statusCode >= 200 && res.statusCode < 300) return onBody(res);
    const text = await readText(res).catch(() => '');
    let errorCode: string | undefined;
    let detail = text.slice(0, 300);
    try {
      const parsed = JSON.parse(text) as { error_code?: string; message?: string };
      errorCode = parsed.error_code;
      if (parsed.message) detail = parsed.message.slice(0, 500);
    } catch {
      // not JSON: an HTML error page or plain text; its first characters are the detail
    }
    const err = new MlflowHttpError(
      `MLflow ${options.method} ${url.pathname} answered HTTP ${res.statusCode}${errorCode ? ` ${errorCode}` : ''}: ${detail.trim()}`,
      res.statusCode,
      errorCode,
    );
    const retryAfter = res.headers['retry-after'];
    if (isRetryableStatus(res.statusCode) && typeof retryAfter === 'string') {
      const seconds = Number(retryAfter);
      const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(retryAfter) - Date.now();
      if (Number.isFinite(ms) && ms >= 0) err.retryAfterMs = ms;
    }
    throw err;
  }
}
