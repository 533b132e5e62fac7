/** Starts the real scaler in-process on free ports and talks to it with a real gRPC client. */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { Writable } from 'node:stream';
import { afterAll, beforeAll } from 'vitest';
import { createLogger } from '../../common/log.ts';
import { loadScalerConfig } from '../../scaler/config.ts';
import { startScaler, type RunningScaler } from '../../scaler/app.ts';
import {
  ScalerClient,
  type KedaPoll,
  type MetricSpec,
  type MetricValue,
  type RpcResult,
  type ScaledObjectRef,
} from '../../scaler/client.ts';
import { RABBITMQ_MANAGEMENT_URL, RABBITMQ_URL } from './env.ts';
import { RabbitFixture } from './rabbit.ts';

export interface ScalerHandle {
  readonly scaler: RunningScaler;
  readonly client: KedaLikeClient;
  /** Every log line the scaler wrote, as text. */
  readonly logs: () => string;
  close(): Promise<void>;
}

export async function startTestScaler(env: Record<string, string> = {}): Promise<ScalerHandle> {
  const config = loadScalerConfig({
    RABBITMQ_URL,
    RABBITMQ_MANAGEMENT_URL,
    KMJ_SCALER_HOST: '127.0.0.1',
    KMJ_SCALER_PORT: '0',
    KMJ_SCALER_METRICS_PORT: '0',
    LOG_LEVEL: 'debug',
    ...env,
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString('utf8'));
      cb();
    },
  });
  const log = createLogger({ level: 'debug', name: 'test-scaler', destination: sink });
  const scaler = await startScaler(config, log);
  const client = new KedaLikeClient(`127.0.0.1:${scaler.grpcPort}`);
  return {
    scaler,
    client,
    logs: () => lines.join(''),
    close: async () => {
      client.close();
      await scaler.close(1000);
    },
  };
}

/**
 * The production client (scaler/client.ts), called the way KEDA calls it for a ScaledJob "jobs" in
 * namespace "ml", with KEDA's own scalerAddress key in the metadata; the tests give bare metadata.
 */
export class KedaLikeClient {
  readonly client: ScalerClient;

  constructor(address: string, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(), options: grpc.ClientOptions = {}) {
    this.client = new ScalerClient(address, { credentials, channelOptions: options, timeoutMs: 20_000 });
  }

  getMetricSpec(metadata: Record<string, string>): Promise<RpcResult<{ metricSpecs: MetricSpec[] }>> {
    return this.client.getMetricSpec(ref(metadata));
  }

  getMetrics(metadata: Record<string, string>, metricName = ''): Promise<RpcResult<{ metricValues: MetricValue[] }>> {
    return this.client.getMetrics(ref(metadata), metricName);
  }

  isActive(metadata: Record<string, string>): Promise<RpcResult<{ result: boolean }>> {
    return this.client.isActive(ref(metadata));
  }

  /** What KEDA does on each poll of a ScaledJob: spec, metrics, activity, read by KEDA's rules. */
  poll(metadata: Record<string, string>): Promise<KedaPoll> {
    const r = ref(metadata);
    return this.client.poll(r.scalerMetadata, r.name, r.namespace);
  }

  streamIsActive(metadata: Record<string, string>): grpc.ClientReadableStream<{ result: boolean }> {
    return this.client.streamIsActive(ref(metadata));
  }

  close(): void {
    this.client.close();
  }
}

export function ref(metadata: Record<string, string>): ScaledObjectRef {
  return { name: 'jobs', namespace: 'ml', scalerMetadata: { scalerAddress: 'kmj-scaler.ml:6000', ...metadata } };
}

const HealthClient = (
  grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true })) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  }
).grpc.health.v1.Health;

/** One grpc.health.v1 Check on a channel of its own. */
export function healthCheck(
  address: string,
  service: string,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
): Promise<{ code: grpc.status; status?: string; details?: string }> {
  const c = new HealthClient(address, credentials);
  const check = c['Check'] as (req: unknown, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void) => void;
  return new Promise((resolve) => {
    check.call(c, { service }, (err, res) => {
      c.close();
      if (err) resolve({ code: err.code, details: err.details });
      else resolve({ code: grpc.status.OK, ...(res ? { status: res.status } : {}) });
    });
  });
}

/**
 * Registers beforeAll/afterAll hooks that start a scaler and a RabbitMQ fixture for a test file;
 * the returned getters are valid inside tests.
 */
export function useScalerAndRabbit(env: Record<string, string> = {}): { scaler: () => ScalerHandle; rabbit: () => RabbitFixture } {
  let rabbit: RabbitFixture | undefined;
  let handle: ScalerHandle | undefined;
  beforeAll(async () => {
    rabbit = new RabbitFixture();
    handle = await startTestScaler(env);
  });
  afterAll(async () => {
    await handle?.close();
    await rabbit?.close();
  });
  return {
    scaler: () => {
      if (!handle) throw new Error('scaler not started');
      return handle;
    },
    rabbit: () => {
      if (!rabbit) throw new Error('rabbit fixture not started');
      return rabbit;
    },
  };
}
