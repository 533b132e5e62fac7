/**
 * One HTTP request on node:http/node:https, with an AbortSignal and a per-attempt timeout. The
 * worker uses Node's own HTTP stack rather than a client library: it is already loaded, which
 * keeps a worker's cold start short.
 */
import type { Agent as HttpAgent, IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Agent as HttpsAgent } from 'node:https';
import type { Readable } from 'node:stream';
import { nodeHttp as http, nodeHttps as https } from './node-http.ts';

export interface HttpResponse {
  readonly statusCode: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: IncomingMessage;
}

export interface TlsOptions {
  readonly rejectUnauthorized: boolean;
  readonly ca?: Buffer | undefined;
  /** PEM holding a client certificate and its key. */
  readonly clientCert?: Buffer | undefined;
}

/**
 * The agent for one base URL's protocol, with its TLS options.
 *
 * Plain http opens a connection per request. `mlflow server` (uvicorn) answers a request on a
 * reused connection about 40 ms late: its response waits for the client's delayed TCP ACK. On a
 * fresh connection the ACK is immediate. Measured on loopback: 48–52 ms per call on a kept-alive
 * connection (Node's agent and Python's requests alike), 6–11 ms on a new one. A TCP handshake in
 * the cluster costs well under a millisecond. https keeps its connections: a TLS handshake costs
 * more.
 */
export function agentFor(url: URL, tls: TlsOptions): HttpAgent | HttpsAgent {
  if (url.protocol === 'https:') {
    return new (https().Agent)({
      keepAlive: true,
      rejectUnauthorized: tls.rejectUnauthorized,
      ...(tls.ca ? { ca: tls.ca } : {}),
      ...(tls.clientCert ? { cert: tls.clientCert, key: tls.clientCert } : {}),
    });
  }
  return new http.Agent({ keepAlive: false });
}

/** 408, 429 and 5xx (and 0, no answer at all): worth another attempt, as the Python client judges. */
export function isRetryableStatus(status: number): boolean {
  return status === 0 || status === 408 || status === 429 || status >= 500;
}

export interface SendOptions {
  readonly method: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: string | Readable | null;
  readonly agent?: HttpAgent | HttpsAgent;
  readonly signal: AbortSignal;
  readonly timeoutMs: number;
  /**
   * Bound on the TCP connection alone, when it must be shorter than the whole answer's: a
   * Service with no ready endpoint on the node (internalTrafficPolicy: Local) drops the SYN, and
   * a connect would otherwise wait for `timeoutMs`.
   */
  readonly connectTimeoutMs?: number;
}

/** Sends a request; resolves with the response once its headers arrive. */
export function send(url: URL, options: SendOptions): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    if (options.signal.aborted) {
      reject(options.signal.reason instanceof Error ? options.signal.reason : new Error('aborted'));
      return;
    }
    const fn = url.protocol === 'https:' ? https().request : http.request;
    const req = fn(url, { method: options.method, headers: options.headers, ...(options.agent ? { agent: options.agent } : {}) });
    // One bound for the whole attempt, headers and body: a body that stalls after the headers
    // ends the attempt too (and the caller's retry, if any, starts over).
    let response: IncomingMessage | undefined;
    const fail = (err: Error): void => {
      if (response) response.destroy(err);
      else req.destroy(err);
    };
    const timer = setTimeout(() => fail(new Error(`no complete answer within ${options.timeoutMs} ms`)), options.timeoutMs);
    let connectTimer: NodeJS.Timeout | undefined;
    const connectMs = options.connectTimeoutMs;
    if (connectMs !== undefined) {
      req.once('socket', (socket) => {
        if (!socket.connecting) return;
        connectTimer = setTimeout(() => fail(new Error(`no connection within ${connectMs} ms`)), connectMs);
        socket.once('connect', () => clearTimeout(connectTimer));
      });
    }
    const onAbort = (): void => fail(options.signal.reason instanceof Error ? options.signal.reason : new Error('aborted'));
    options.signal.addEventListener('abort', onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      clearTimeout(connectTimer);
      options.signal.removeEventListener('abort', onAbort);
    };
    req.once('response', (res) => {
      response = res;
      res.once('close', cleanup);
      resolve({ statusCode: res.statusCode ?? 0, headers: res.headers, body: res });
    });
    req.once('error', (err) => {
      cleanup();
      reject(err);
    });
    const body = options.body;
    if (body === undefined || body === null) req.end();
    else if (typeof body === 'string') req.end(body);
    else {
      body.once('error', (err) => req.destroy(err));
      body.pipe(req);
    }
  });
}

export async function readText(res: HttpResponse): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res.body) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Reads and discards a body so the connection can be reused. */
export async function discard(res: HttpResponse): Promise<void> {
  res.body.resume();
  if (res.body.readableEnded) return;
  await new Promise<void>((resolve) => {
    res.body.once('end', resolve);
    res.body.once('close', resolve);
    res.body.once('error', () => resolve());
  });
}
