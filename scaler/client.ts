/**
 * A client of the scaler that asks what KEDA asks: GetMetricSpec, GetMetrics, IsActive, in that
 * order, with the trigger's metadata, and reads the answers by KEDA's rules (`kedaNumber`). Used by
 * `kmj demo` and `kmj status` to show what KEDA sees, and by the tests.
 */
import * as grpc from '@grpc/grpc-js';
import { probeTcp } from '../common/tcp-probe.ts';
import { loadExternalScalerPackage } from './grpc-server.ts';

export interface KedaView {
  readonly metricName: string;
  readonly targetSize: number;
  readonly value: number;
  readonly active: boolean;
}

/**
 * A failed call: the gRPC status code (its name is grpc.status[code]) and the details.
 * `reached` says whether the channel was connected (READY) when the call ended: false when no
 * gRPC server answered at all (nothing listening, a name that does not resolve, a TLS handshake
 * that failed, a peer that never spoke HTTP/2), true when one did and this is its status. Two
 * edges: an HTTP/2 proxy in front of a dead scaler counts as reached (it answered), and a scaler
 * that is shutting down sends GOAWAY, which leaves the channel IDLE before its last answers
 * arrive, so an answer in that moment can read as not reached.
 */
export interface RpcError {
  readonly code: grpc.status;
  readonly details: string;
  readonly reached: boolean;
}

export type RpcResult<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: RpcError };

export type KedaPoll = { readonly ok: true; readonly view: KedaView } | { readonly ok: false; readonly error: RpcError };

/** What KEDA sends with every call: the ScaledObject's (or ScaledJob's) name and the trigger's metadata. */
export interface ScaledObjectRef {
  readonly name: string;
  readonly namespace: string;
  readonly scalerMetadata: Readonly<Record<string, string>>;
}

export interface MetricSpec {
  readonly metricName: string;
  readonly targetSize: number;
  readonly targetSizeFloat: number;
}

export interface MetricValue {
  readonly metricName: string;
  readonly metricValue: number;
  readonly metricValueFloat: number;
}

/**
 * KEDA's rule for a number the scaler sends twice, as int64 and as double (targetSize,
 * metricValue): the double when it is above 0, else the integer.
 */
export function kedaNumber(integer: number, float: number): number {
  return float > 0 ? float : integer;
}

export interface ScalerClientOptions {
  readonly credentials?: grpc.ChannelCredentials;
  /** Deadline of each call (3 s). KEDA sets none; a person waiting on `kmj status` should not wait forever. */
  readonly timeoutMs?: number;
  readonly channelOptions?: grpc.ClientOptions;
}

type Unary = (req: unknown, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

function rpcError(err: unknown, reached: boolean): RpcError {
  const e = err as Partial<grpc.ServiceError>;
  return { code: e.code ?? grpc.status.UNKNOWN, details: e.details ?? String(err), reached };
}

export class ScalerClient {
  readonly #client: grpc.Client & Record<string, unknown>;
  readonly #timeoutMs: number;

  constructor(address: string, options: ScalerClientOptions = {}) {
    const ctor = (
      grpc.loadPackageDefinition(loadExternalScalerPackage()) as unknown as {
        externalscaler: { ExternalScaler: grpc.ServiceClientConstructor };
      }
    ).externalscaler.ExternalScaler;
    this.#client = new ctor(address, options.credentials ?? grpc.credentials.createInsecure(), options.channelOptions);
    this.#timeoutMs = options.timeoutMs ?? 3000;
  }

  #connected(): boolean {
    return this.#client.getChannel().getConnectivityState(false) === grpc.connectivityState.READY;
  }

  #call<T>(method: string, req: unknown): Promise<RpcResult<T>> {
    const fn = this.#client[method] as Unary;
    return new Promise((resolve) => {
      fn.call(this.#client, req, { deadline: Date.now() + this.#timeoutMs }, (err, res) =>
        resolve(err ? { ok: false, error: rpcError(err, this.#connected()) } : { ok: true, value: res as T }),
      );
    });
  }

  getMetricSpec(ref: ScaledObjectRef): Promise<RpcResult<{ metricSpecs: MetricSpec[] }>> {
    return this.#call('GetMetricSpec', ref);
  }

  getMetrics(ref: ScaledObjectRef, metricName: string): Promise<RpcResult<{ metricValues: MetricValue[] }>> {
    return this.#call('GetMetrics', { scaledObjectRef: ref, metricName });
  }

  isActive(ref: ScaledObjectRef): Promise<RpcResult<{ result: boolean }>> {
    return this.#call('IsActive', ref);
  }

  streamIsActive(ref: ScaledObjectRef): grpc.ClientReadableStream<{ result: boolean }> {
    const fn = this.#client['StreamIsActive'] as (req: unknown) => grpc.ClientReadableStream<{ result: boolean }>;
    return fn.call(this.#client, ref);
  }

  /** One KEDA poll of a ScaledJob's trigger: GetMetricSpec, GetMetrics, IsActive, read as KEDA reads them. */
  async poll(metadata: Readonly<Record<string, string>>, name = 'kmj', namespace = 'default'): Promise<KedaPoll> {
    const ref = { name, namespace, scalerMetadata: metadata };
    const spec = await this.getMetricSpec(ref);
    if (!spec.ok) return spec;
    const first = spec.value.metricSpecs[0];
    if (!first)
      return { ok: false, error: { code: grpc.status.INTERNAL, details: 'GetMetricSpec returned no metric spec', reached: true } };
    const metrics = await this.getMetrics(ref, first.metricName);
    if (!metrics.ok) return metrics;
    const active = await this.isActive(ref);
    if (!active.ok) return active;
    const mv = metrics.value.metricValues[0];
    const value = mv ? kedaNumber(mv.metricValue, mv.metricValueFloat) : 0;
    return {
      ok: true,
      view: {
        metricName: first.metricName,
        targetSize: kedaNumber(first.targetSize, first.targetSizeFloat),
        value,
        active: active.value.result,
      },
    };
  }

  close(): void {
    this.#client.close();
  }
}

/**
 * How old the scaler's reading of a target is, in ms, from its metrics port's `/debug/targets`
 * (the target named `name` with `mode`); undefined when the page cannot be read or has no such
 * target. Extra to a poll, never instead of it: what KEDA sees is the poll's answer.
 */
export async function readingAgeMs(metricsUrl: string, name: string, mode: string, timeoutMs = 3000): Promise<number | undefined> {
  try {
    const res = await fetch(`${metricsUrl.replace(/\/$/, '')}/debug/targets`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await res.json()) as { targets?: Array<{ labels?: { name?: string; mode?: string }; ageMs?: number }> };
    return body.targets?.find((t) => t.labels?.name === name && t.labels.mode === mode)?.ageMs;
  } catch {
    return undefined; // the age is extra; its absence is shown as such
  }
}

/**
 * Why nothing answered at a scaler address (`RpcError.reached` false), in the operating system's
 * words where it has them: a plain TCP connect, bounded by `timeoutMs`, gives "connect
 * ECONNREFUSED 127.0.0.1:6000" (nothing listens), "getaddrinfo ENOTFOUND kmj-scaler.kmj.svc" (the
 * name does not resolve) or "no TCP answer within 2000 ms". When TCP connects, the trouble is
 * above it (TLS refused, a peer that is not a gRPC server): grpc-js' details say what, or, when
 * the call only ran out of time, that the peer is not speaking gRPC. The probe goes direct: with
 * grpc_proxy or https_proxy set, grpc-js goes through the proxy and the probe's reason may differ.
 */
export async function explainUnreached(address: string, error: RpcError, timeoutMs = 2000): Promise<string> {
  // For a person: grpc-js wraps the reason in "No connection established. Last error: Error: …"
  // and ends it with a "Resolution note:" that says nothing.
  const details = error.details.replace(/\. Resolution note:.*$/s, '').replace(/^No connection established\. Last error: (Error: )?/, '');
  const probe = await probeTcp(address, timeoutMs);
  switch (probe.kind) {
    case 'bad-address':
      return details;
    case 'timeout':
      return `no TCP answer within ${timeoutMs} ms`;
    case 'error':
      return probe.message;
    case 'connected':
      return error.code === grpc.status.DEADLINE_EXCEEDED
        ? 'it takes TCP connections but gave no gRPC answer before the deadline: not a gRPC server, or TLS on one side only'
        : details;
  }
}

/**
 * How many Jobs KEDA's ScaledJob `default` scaling strategy creates on one poll (KEDA v2.20,
 * pkg/scaling/scaledjob/metrics.go and executor/scale_jobs.go): maxScale = ceil(min(metric /
 * targetSize, maxReplicaCount)), minus the unfinished Jobs, and never more than ceil(metric) at
 * once (KEDA's scaleTo); never below 0. The last bound matters only for a targetSize below 1.
 */
export function defaultStrategyJobs(view: KedaView, unfinishedJobs: number, maxReplicaCount: number): number {
  if (!view.active) return 0;
  const effective = Math.min(Math.ceil(view.value / view.targetSize), maxReplicaCount) - unfinishedJobs;
  return Math.max(0, Math.min(Math.ceil(view.value), effective));
}
