/**
 * A client of the scaler that asks what KEDA asks: GetMetricSpec, GetMetrics, IsActive, in that
 * order, with the trigger's metadata. Used by `kmj demo` and `kmj status` to show what KEDA sees.
 */
import * as grpc from '@grpc/grpc-js';
import { loadExternalScalerPackage } from './grpc-server.ts';

export interface KedaView {
  readonly metricName: string;
  readonly targetSize: number;
  readonly value: number;
  readonly active: boolean;
}

export type KedaPoll = { readonly ok: true; readonly view: KedaView } | { readonly ok: false; readonly code: string; readonly details: string };

type Unary = (req: unknown, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export class ScalerClient {
  readonly #client: grpc.Client & Record<string, unknown>;
  readonly #timeoutMs: number;

  constructor(address: string, options: { credentials?: grpc.ChannelCredentials; timeoutMs?: number } = {}) {
    const ctor = (grpc.loadPackageDefinition(loadExternalScalerPackage()) as unknown as {
      externalscaler: { ExternalScaler: grpc.ServiceClientConstructor };
    }).externalscaler.ExternalScaler;
    this.#client = new ctor(address, options.credentials ?? grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>;
    this.#timeoutMs = options.timeoutMs ?? 3000;
  }

  #call<T>(method: string, req: unknown): Promise<T> {
    const fn = this.#client[method] as Unary;
    return new Promise((resolve, reject) => {
      fn.call(this.#client, req, { deadline: Date.now() + this.#timeoutMs }, (err, res) => (err ? reject(err) : resolve(res as T)));
    });
  }

  /** One KEDA poll of a trigger. Errors come back as data, with the gRPC code name. */
  async poll(metadata: Readonly<Record<string, string>>, name = 'kmj', namespace = 'default'): Promise<KedaPoll> {
    const ref = { name, namespace, scalerMetadata: metadata };
    try {
      const spec = await this.#call<{ metricSpecs: Array<{ metricName: string; targetSize: number; targetSizeFloat: number }> }>('GetMetricSpec', ref);
      const first = spec.metricSpecs[0];
      if (!first) return { ok: false, code: 'INTERNAL', details: 'GetMetricSpec returned no metric spec' };
      const metrics = await this.#call<{ metricValues: Array<{ metricValue: number; metricValueFloat: number }> }>('GetMetrics', {
        scaledObjectRef: ref,
        metricName: first.metricName,
      });
      const mv = metrics.metricValues[0];
      const active = await this.#call<{ result: boolean }>('IsActive', ref);
      // KEDA reads the float only when it is above 0, else the integer.
      const value = mv ? (mv.metricValueFloat > 0 ? mv.metricValueFloat : mv.metricValue) : 0;
      const targetSize = first.targetSizeFloat > 0 ? first.targetSizeFloat : first.targetSize;
      return { ok: true, view: { metricName: first.metricName, targetSize, value, active: active.result } };
    } catch (err) {
      const e = err as Partial<grpc.ServiceError>;
      return { ok: false, code: grpc.status[e.code ?? grpc.status.UNKNOWN] ?? 'UNKNOWN', details: e.details ?? String(err) };
    }
  }

  close(): void {
    this.#client.close();
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
