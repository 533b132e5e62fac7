/**
 * The gRPC edge of the scaler: KEDA's ExternalScaler service, grpc.health.v1 and server
 * reflection on one server, with optional TLS or mutual TLS. This file knows no broker; it maps
 * the service's typed errors to status codes in one function, `toStatus`.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from '../common/log.ts';
import { DeadlineError } from '../common/abort.ts';
import { packageFile } from '../common/paths.ts';
import { scrubSecrets } from '../common/redact.ts';
import { InvalidMetadataError } from './errors.ts';
import { BacklogNotFoundError, BacklogUnavailableError } from '../common/errors.ts';
import type { ScalerMetrics } from './metrics.ts';
import type { ExternalScalerService, Metadata } from './service.ts';

export const SERVICE_NAME = 'externalscaler.ExternalScaler';

/** Message shapes of proto/externalscaler.proto as proto-loader decodes them (keepCase). */
export interface ScaledObjectRef {
  name: string;
  namespace: string;
  scalerMetadata: Record<string, string>;
}
export interface GetMetricsRequest {
  scaledObjectRef: ScaledObjectRef | null;
  metricName: string;
}

export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

export function loadExternalScalerPackage(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(packageFile('proto', 'externalscaler.proto'), PROTO_LOADER_OPTIONS);
}

export interface TlsFiles {
  /** PEM server certificate chain. */
  readonly cert: Buffer;
  readonly key: Buffer;
  /** PEM CA that client certificates must chain to; when set, clients must present one (mTLS). */
  readonly clientCa?: Buffer;
}

export interface GrpcServerOptions {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  readonly tls?: TlsFiles;
  readonly service: ExternalScalerService;
  readonly metrics: ScalerMetrics;
  readonly log: Logger;
}

export interface RunningGrpcServer {
  readonly port: number;
  readonly health: HealthImplementation;
  /** Stops accepting calls, ends open streams, and waits up to `graceMs` for calls to finish. */
  close(graceMs: number): Promise<void>;
}

/** Maps an error to a gRPC status. Unknown errors become INTERNAL with a generic detail. */
export function toStatus(err: unknown): { code: grpc.status; details: string; internal: boolean } {
  if (err instanceof InvalidMetadataError) return { code: grpc.status.INVALID_ARGUMENT, details: err.message, internal: false };
  if (err instanceof BacklogNotFoundError) return { code: grpc.status.NOT_FOUND, details: err.message, internal: false };
  if (err instanceof BacklogUnavailableError) return { code: grpc.status.UNAVAILABLE, details: err.message, internal: false };
  if (err instanceof DeadlineError) return { code: grpc.status.DEADLINE_EXCEEDED, details: scrubSecrets(err.message), internal: false };
  return { code: grpc.status.INTERNAL, details: 'internal error in the scaler; see its log', internal: true };
}

function metadataOf(ref: ScaledObjectRef | null | undefined): Metadata {
  return ref?.scalerMetadata ?? {};
}

function ownerOf(ref: ScaledObjectRef | null | undefined): { name: string; namespace: string } | undefined {
  return ref && ref.name !== '' ? { name: ref.name, namespace: ref.namespace } : undefined;
}

export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const { service, metrics, log } = options;
  // grpc-js reports its own trouble through a console-like logger: keep stderr JSON lines.
  grpc.setLogger({
    error: (...args: unknown[]) => log.warn({ grpc: args.map(String).join(' ') }, 'grpc-js message'),
  });
  grpc.setLogVerbosity(grpc.logVerbosity.ERROR);
  const pkgDef = loadExternalScalerPackage();
  const loaded = grpc.loadPackageDefinition(pkgDef) as unknown as {
    externalscaler: { ExternalScaler: grpc.ServiceClientConstructor };
  };

  const fail = (method: string, started: number, err: unknown, ref: ScaledObjectRef | null | undefined): grpc.ServiceError => {
    const s = toStatus(err);
    const codeName = grpc.status[s.code] ?? String(s.code);
    metrics.observeRpc(method, codeName, (performance.now() - started) / 1000);
    const fields = { method, code: codeName, scaledObject: ref ? `${ref.namespace}/${ref.name}` : undefined };
    if (s.internal) log.error({ ...fields, err }, 'rpc failed');
    else log.debug({ ...fields, details: s.details }, 'rpc refused');
    return Object.assign(new Error(s.details), { code: s.code, details: s.details, metadata: new grpc.Metadata() });
  };

  /** grpc-js does not catch rejections of async handlers: every handler goes through here. */
  function unary<Req, Res>(
    method: string,
    refOf: (req: Req) => ScaledObjectRef | null | undefined,
    fn: (req: Req) => Res | Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const started = performance.now();
      const onOk = (res: Res): void => {
        metrics.observeRpc(method, 'OK', (performance.now() - started) / 1000);
        callback(null, res);
      };
      const onErr = (err: unknown): void => callback(fail(method, started, err, refOf(call.request)));
      try {
        const out = fn(call.request);
        if (out instanceof Promise) out.then(onOk, onErr);
        else onOk(out);
      } catch (err) {
        onErr(err);
      }
    };
  }

  /** Ends of the open StreamIsActive calls, so shutdown can close them and their subscriptions. */
  const streams = new Set<() => void>();

  const handlers: grpc.UntypedServiceImplementation = {
    GetMetricSpec: unary<ScaledObjectRef, { metricSpecs: unknown[] }>(
      'GetMetricSpec',
      (r) => r,
      (req) => ({
        metricSpecs: service.getMetricSpec(metadataOf(req), ownerOf(req)),
      }),
    ),
    GetMetrics: unary<GetMetricsRequest, { metricValues: unknown[] }>(
      'GetMetrics',
      (r) => r.scaledObjectRef,
      async (req) => ({
        metricValues: await service.getMetrics(metadataOf(req.scaledObjectRef), req.metricName, ownerOf(req.scaledObjectRef)),
      }),
    ),
    IsActive: unary<ScaledObjectRef, { result: boolean }>(
      'IsActive',
      (r) => r,
      async (req) => ({
        result: await service.isActive(metadataOf(req), ownerOf(req)),
      }),
    ),
    StreamIsActive: (call: grpc.ServerWritableStream<ScaledObjectRef, { result: boolean }>) => {
      const started = performance.now();
      let finished = false;
      let stop: () => void = () => undefined;
      const end = (err?: unknown): void => {
        if (finished) return;
        finished = true;
        stop();
        streams.delete(end);
        if (err === undefined) {
          metrics.observeRpc('StreamIsActive', 'OK', (performance.now() - started) / 1000);
          call.end();
        } else {
          // grpc-js turns an 'error' event on a server stream into the call's final status.
          call.emit('error', fail('StreamIsActive', started, err, call.request));
        }
      };
      streams.add(end);
      call.on('cancelled', () => end());
      call.on('error', () => end());
      try {
        stop = service.watchActive(
          metadataOf(call.request),
          (active) => {
            if (!finished) call.write({ result: active });
          },
          (err) => end(err),
        );
        if (finished) stop();
      } catch (err) {
        end(err);
      }
    },
  };

  // channelz bookkeeping costs CPU on every call and nothing here reads it.
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 1024 * 1024, 'grpc.enable_channelz': 0 });
  server.addService(loaded.externalscaler.ExternalScaler.service, handlers);
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);
  // Reflection describes every service this server answers, health included.
  new ReflectionService({ ...pkgDef, ...protoLoader.loadSync(healthProtoPath, PROTO_LOADER_OPTIONS) }).addToServer(server);

  const credentials = options.tls
    ? grpc.ServerCredentials.createSsl(
        options.tls.clientCa ?? null,
        [{ cert_chain: options.tls.cert, private_key: options.tls.key }],
        options.tls.clientCa !== undefined,
      )
    : grpc.ServerCredentials.createInsecure();

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${options.host.includes(':') ? `[${options.host}]` : options.host}:${options.port}`, credentials, (err, bound) => {
      if (err) reject(new Error(`cannot listen for gRPC on ${options.host}:${options.port}: ${err.message}`, { cause: err }));
      else resolve(bound);
    });
  });

  return {
    port,
    health,
    close: async (graceMs: number) => {
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(SERVICE_NAME, 'NOT_SERVING');
      for (const end of [...streams]) end();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
