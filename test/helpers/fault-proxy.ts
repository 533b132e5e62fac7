/**
 * Chaos on loopback: an HTTP reverse proxy on 127.0.0.1:0 in front of the real MLflow server that
 * injects faults on chosen request paths (answer N times with a status, 429 with Retry-After, add a
 * delay, drop the connection) and forwards everything else unchanged, bodies streamed both ways
 * (artifact uploads are PUTs, model downloads are streamed GETs). It records every request it
 * receives, so a test can check what the worker sent and when. The real server stays behind it:
 * this is not a mock, only a bad network and a flaky load balancer.
 */
import { Agent, createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { waitUntil } from './wait.ts';
import { MLFLOW_URL } from './worker.ts';

/** The path of an MLflow REST endpoint: `mlflowPath('runs/create')` is `/api/2.0/mlflow/runs/create`. */
export function mlflowPath(endpoint: string): string {
  return `/api/2.0/mlflow/${endpoint}`;
}

export interface Fault {
  /** The request path without the query: exact when a string. */
  readonly path: string | RegExp;
  /** Only this method (any when unset). */
  readonly method?: string;
  /** How many matching requests get the fault; then it is used up (default: every one). */
  readonly times?: number;
  /** Answer with this status instead of forwarding, with an MLflow-style JSON error body. */
  readonly status?: number;
  /** Retry-After header value sent with `status`. */
  readonly retryAfter?: string;
  /** Wait this long before answering or forwarding. */
  readonly delayMs?: number;
  /** Destroy the client connection instead of answering (after `delayMs`, if any). */
  readonly drop?: boolean;
  /**
   * Let the request reach MLflow and apply the fault to its answer instead: MLflow has done the
   * work, but the client sees `status` or a dropped connection (after `delayMs`), as when a load
   * balancer times out or a connection breaks on the way back.
   */
  readonly afterForward?: boolean;
}

export interface RecordedRequest {
  readonly method: string;
  /** Path without the query. */
  readonly path: string;
  readonly query: string;
  /** Date.now() when the request arrived. */
  readonly at: number;
  /**
   * What became of it: the injected status; 'dropped' (connection destroyed by a fault);
   * 'client-gone' (the client hung up while the proxy held it, so MLflow never saw it);
   * 'forwarding' (sent to MLflow, no answer yet); 'abandoned' (the client hung up after it was
   * sent to MLflow); 'forwarded' (MLflow's answer was passed back); 'upstream-error'; or 'pending'.
   */
  outcome: number | 'pending' | 'dropped' | 'client-gone' | 'forwarding' | 'abandoned' | 'forwarded' | 'upstream-error';
  /** The upstream status when forwarded. */
  upstreamStatus?: number;
}

interface ActiveFault {
  readonly fault: Fault;
  remaining: number;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer']);

export class FaultProxy {
  readonly #server: Server;
  readonly #target: URL;
  readonly #faults: ActiveFault[] = [];
  readonly #requests: RecordedRequest[] = [];
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  /** Connections to MLflow, owned here so `close` ends them. */
  readonly #upstream = new Agent({ keepAlive: true });
  #port = 0;

  private constructor(target: string) {
    this.#target = new URL(target);
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
    });
  }

  /** Starts a proxy to `target` (the real MLflow server without auth by default). */
  static async start(target: string = MLFLOW_URL): Promise<FaultProxy> {
    const p = new FaultProxy(target);
    await new Promise<void>((resolve, reject) => {
      p.#server.once('error', reject);
      p.#server.listen(0, '127.0.0.1', () => {
        p.#server.off('error', reject);
        resolve();
      });
    });
    p.#port = (p.#server.address() as AddressInfo).port;
    return p;
  }

  /** The proxy's base URL, to use as MLFLOW_TRACKING_URI. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  /** Adds a fault; faults are checked in the order added, and the first that matches applies. */
  inject(fault: Fault): void {
    this.#faults.push({ fault, remaining: fault.times ?? Number.POSITIVE_INFINITY });
  }

  /** Every request received so far, in arrival order. */
  requests(filter?: { path?: string | RegExp; method?: string }): RecordedRequest[] {
    return this.#requests.filter(
      (r) => (filter?.method === undefined || r.method === filter.method) && (filter?.path === undefined || matches(filter.path, r.path)),
    );
  }

  /** Resolves with the first request to `path` (already received or still to come). */
  waitForRequest(path: string | RegExp, timeoutMs = 20_000): Promise<RecordedRequest> {
    return waitUntil(
      `a request to ${String(path)}`,
      () => {
        const hit = this.#requests.find((r) => matches(path, r.path));
        // What did come goes into the timeout's message.
        if (!hit) throw new Error(`seen: ${this.#requests.map((r) => `${r.method} ${r.path}`).join(', ')}`);
        return hit;
      },
      () => true,
      { timeoutMs, stepMs: 25 },
    );
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    this.#upstream.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #match(req: IncomingMessage, path: string): Fault | undefined {
    for (const f of this.#faults) {
      if (f.remaining <= 0) continue;
      if (f.fault.method !== undefined && f.fault.method !== req.method) continue;
      if (!matches(f.fault.path, path)) continue;
      f.remaining--;
      return f.fault;
    }
    return undefined;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const raw = req.url ?? '/';
    const q = raw.indexOf('?');
    const path = q === -1 ? raw : raw.slice(0, q);
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path,
      query: q === -1 ? '' : raw.slice(q + 1),
      at: Date.now(),
      outcome: 'pending',
    };
    this.#requests.push(record);
    const fault = this.#match(req, path);
    let timer: NodeJS.Timeout | undefined;
    res.once('close', () => {
      if (res.writableFinished) return;
      if (record.outcome === 'forwarding') record.outcome = 'abandoned';
      if (record.outcome !== 'pending') return;
      // The client hung up while the proxy held its request: it never reaches MLflow.
      record.outcome = 'client-gone';
      if (timer !== undefined) {
        clearTimeout(timer);
        this.#timers.delete(timer);
      }
    });
    const act = (): void => {
      if (record.outcome === 'client-gone') return;
      if (fault?.afterForward) {
        this.#forward(req, res, record, fault);
        return;
      }
      if (fault?.drop) {
        record.outcome = 'dropped';
        req.socket.destroy();
        return;
      }
      if (fault?.status !== undefined) {
        req.resume(); // read and discard the body, as a server answering early does
        answer(res, record, fault.status, fault.retryAfter);
        return;
      }
      this.#forward(req, res, record, undefined);
    };
    const delay = fault?.afterForward ? 0 : (fault?.delayMs ?? 0);
    if (delay > 0) {
      const t = setTimeout(() => {
        this.#timers.delete(t);
        timer = undefined;
        act();
      }, delay);
      timer = t;
      this.#timers.add(t);
    } else act();
  }

  #forward(req: IncomingMessage, res: ServerResponse, record: RecordedRequest, onAnswer: Fault | undefined): void {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
    headers['host'] = this.#target.host;
    record.outcome = 'forwarding';
    const upstream = httpRequest(
      { host: this.#target.hostname, port: this.#target.port || 80, method: req.method, path: req.url, headers, agent: this.#upstream },
      (up) => {
        record.upstreamStatus = up.statusCode ?? 0;
        if (onAnswer) {
          up.resume(); // MLflow's answer is read and thrown away
          const spoil = (): void => {
            if (onAnswer.drop) {
              record.outcome = 'dropped';
              req.socket.destroy();
            } else answer(res, record, onAnswer.status ?? 502, onAnswer.retryAfter);
          };
          if ((onAnswer.delayMs ?? 0) > 0) {
            const t = setTimeout(() => {
              this.#timers.delete(t);
              spoil();
            }, onAnswer.delayMs);
            this.#timers.add(t);
          } else up.once('end', spoil);
          return;
        }
        record.outcome = 'forwarded';
        const back: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) back[k] = v;
        res.writeHead(up.statusCode ?? 502, back);
        up.pipe(res);
        up.once('error', () => res.destroy());
      },
    );
    upstream.once('error', () => {
      if (record.outcome === 'abandoned') return; // destroyed below because the client left
      record.outcome = 'upstream-error';
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('fault proxy: upstream error');
    });
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }
}

/** Answers with an injected status and an MLflow-style JSON error body. */
function answer(res: ServerResponse, record: RecordedRequest, status: number, retryAfter: string | undefined): void {
  record.outcome = status;
  const body = JSON.stringify({
    error_code: status === 429 ? 'REQUEST_LIMIT_EXCEEDED' : 'TEMPORARILY_UNAVAILABLE',
    message: `injected HTTP ${status} by the test's fault proxy`,
  });
  res.writeHead(status, { 'content-type': 'application/json', ...(retryAfter !== undefined ? { 'retry-after': retryAfter } : {}) });
  res.end(body);
}

function matches(pattern: string | RegExp, path: string): boolean {
  return typeof pattern === 'string' ? pattern === path : pattern.test(path);
}
