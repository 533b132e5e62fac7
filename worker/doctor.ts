/**
 * What `kmj doctor` checks of the worker's side, with the worker's own settings (the same
 * environment and flags, read by loadWorkerConfig): the broker it takes requests from, the MLflow
 * it logs to with its credentials, onnxruntime running a model, and optionally the model a
 * request would name, loaded the way the worker loads it. Each check says what it found and, when
 * it fails, what fixes it. No check changes anything: no message is taken, no run is made.
 */
import { connect } from 'amqplib';
import { performance } from 'node:perf_hooks';
import { displayUrl, scrubSecrets } from '../common/redact.ts';
import type { Logger } from '../common/log.ts';
import { kafkaClient } from '../kafka/client.ts';
import { MlflowHttp, MlflowHttpError } from '../mlflow/http.ts';
import { MlflowTracking } from '../mlflow/tracking.ts';
import type { WorkerConfig } from './config.ts';
import { loadOnnxRuntime } from './model/onnx.ts';
import { loadModel } from './model/load.ts';

export type CheckStatus = 'ok' | 'fail' | 'skip';

export interface Check {
  /** A short stable name (`rabbitmq`, `mlflow`, `page-size`…), for scripts reading `-o json`. */
  readonly name: string;
  readonly status: CheckStatus;
  /** What was found, in one line. */
  readonly detail: string;
  /** On a failure: what to do about it. */
  readonly fix?: string;
}

/** Each network check gives up after this long: a doctor that hangs explains nothing. */
export const CHECK_TIMEOUT_MS = 10_000;

const ok = (name: string, detail: string): Check => ({ name, status: 'ok', detail });
const fail = (name: string, detail: string, fix: string): Check => ({ name, status: 'fail', detail: scrubSecrets(detail), fix });
const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** The broker the worker reads: the RabbitMQ queue (passively declared), or the Kafka topic. */
export async function checkBroker(config: WorkerConfig, log: Logger): Promise<Check> {
  const input = config.input;
  if (input.kind === 'kafka') {
    const kafka = kafkaClient(input.connection, {
      clientId: 'kmj-doctor',
      log,
      connectTimeoutMs: CHECK_TIMEOUT_MS,
      requestTimeoutMs: CHECK_TIMEOUT_MS,
      retries: 0,
    });
    const admin = kafka.admin();
    const brokers = input.connection.brokers.join(',');
    try {
      await admin.connect();
      const topics = await admin.listTopics();
      if (!topics.includes(input.topic))
        return fail(
          'kafka',
          `topic ${JSON.stringify(input.topic)} does not exist on ${brokers}`,
          'create the topic, or give the worker the right one (--topic, KMJ_WORKER_TOPIC)',
        );
      const ends = await admin.fetchTopicOffsets(input.topic);
      return ok('kafka', `topic ${input.topic} on ${brokers}: ${ends.length} partition(s)`);
    } catch (err) {
      const text = errorText(err);
      if (/SASL|authenticat/i.test(text))
        return fail(
          'kafka',
          `${brokers} refused the worker's credentials: ${text}`,
          'check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (the Secret the worker reads)',
        );
      return fail(
        'kafka',
        `cannot read ${brokers}: ${text}`,
        'check KAFKA_BROKERS, and that the brokers are up and reachable from this node',
      );
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }
  const where = displayUrl(input.url);
  let conn: Awaited<ReturnType<typeof connect>> | undefined;
  try {
    conn = await connect(input.url, { timeout: CHECK_TIMEOUT_MS });
    conn.on('error', () => undefined);
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    try {
      const q = await ch.checkQueue(input.queue);
      return ok('rabbitmq', `queue ${input.queue} on ${where}: ${q.messageCount} waiting, ${q.consumerCount} consumer(s)`);
    } catch (err) {
      if ((err as { code?: unknown }).code === 404)
        return fail(
          'rabbitmq',
          `queue ${JSON.stringify(input.queue)} does not exist on ${where}`,
          'run the setup Job (manifests/setup.yaml) or `kmj setup`, which declares it; or give the worker the right queue (--queue, KMJ_WORKER_QUEUE)',
        );
      if ((err as { code?: unknown }).code === 403)
        return fail(
          'rabbitmq',
          `the user in RABBITMQ_URL may not read queue ${input.queue} on ${where}`,
          'grant the worker user configure/read on the queue (kmj setup does)',
        );
      throw err;
    }
  } catch (err) {
    const text = errorText(err);
    if (/ACCESS.REFUSED|403/i.test(text))
      return fail(
        'rabbitmq',
        `${where} refused the credentials in RABBITMQ_URL`,
        'check the user and password in RABBITMQ_URL (the Secret kmj-rabbitmq) against the broker users kmj setup made',
      );
    if (/NOT.ALLOWED|vhost/i.test(text))
      return fail(
        'rabbitmq',
        `${where}: the user may not use the virtual host: ${text}`,
        "check the vhost in RABBITMQ_URL and the user's permissions on it",
      );
    return fail(
      'rabbitmq',
      `cannot reach ${where}: ${text}`,
      'check RABBITMQ_URL (host and port), and that RabbitMQ is up and reachable from this node',
    );
  } finally {
    await conn?.close().catch(() => undefined);
  }
}

/** The MLflow tracking server, called as the worker calls it (its credentials, its TLS settings). */
export async function checkMlflow(config: WorkerConfig, log: Logger): Promise<Check> {
  const settings = config.mlflow;
  if (!settings)
    return {
      name: 'mlflow',
      status: 'skip',
      detail: 'MLFLOW_TRACKING_URI is not set: the worker records runs in its spool (kmj replay uploads them)',
    };
  const http = new MlflowHttp({ ...settings, maxRetries: 0, maxBackoffSeconds: 1, requestTimeoutMs: CHECK_TIMEOUT_MS, log });
  const where = http.baseUrl;
  try {
    await http.api('experiments/search', { method: 'POST', json: { max_results: 1 }, signal: AbortSignal.timeout(CHECK_TIMEOUT_MS) });
    return ok('mlflow', `${where} answers${settings.username !== undefined ? ` as ${settings.username}` : ''}`);
  } catch (err) {
    if (err instanceof MlflowHttpError && err.status === 401) {
      return fail(
        'mlflow',
        `${where} refused the worker's credentials (HTTP 401)`,
        'check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the Secret kmj-mlflow) against the MLflow user kmj setup made',
      );
    }
    if (err instanceof MlflowHttpError && err.status === 403)
      return fail('mlflow', `${where} denies the worker's user (HTTP 403)`, 'grant the worker user its permissions (kmj setup does)');
    return fail(
      'mlflow',
      `cannot call ${where}: ${errorText(err)}`,
      'check MLFLOW_TRACKING_URI, and that MLflow is up and reachable from this node (its /health answers OK)',
    );
  } finally {
    await http.close();
  }
}

/**
 * A tiny ONNX model, written here byte by byte (protobuf): y = x + x for a float tensor [1, 3].
 * It needs nothing from MLflow or the disk, so a failure to run it is onnxruntime's alone.
 */
export function tinyOnnxModel(): Uint8Array {
  const varint = (n: number): number[] => {
    const out: number[] = [];
    for (let v = n; ; v = Math.floor(v / 128)) {
      if (v < 128) {
        out.push(v);
        return out;
      }
      out.push((v % 128) | 128);
    }
  };
  const key = (field: number, wire: number): number[] => varint(field * 8 + wire);
  const int = (field: number, n: number): number[] => [...key(field, 0), ...varint(n)];
  const bytes = (field: number, body: readonly number[]): number[] => [...key(field, 2), ...varint(body.length), ...body];
  const str = (field: number, s: string): number[] => bytes(field, [...Buffer.from(s, 'utf8')]);
  // TypeProto { tensor_type: { elem_type: FLOAT, shape: { dim: [1], dim: [3] } } }
  const floatTensor = bytes(1, [...int(1, 1), ...bytes(2, [...bytes(1, int(1, 1)), ...bytes(1, int(1, 3))])]);
  const valueInfo = (name: string): number[] => [...str(1, name), ...bytes(2, floatTensor)];
  const node = [...str(1, 'x'), ...str(1, 'x'), ...str(2, 'y'), ...str(4, 'Add')];
  const graph = [...bytes(1, node), ...str(2, 'kmj-doctor'), ...bytes(11, valueInfo('x')), ...bytes(12, valueInfo('y'))];
  // ModelProto { ir_version: 8, graph, opset_import: { domain: "", version: 13 } }
  return Uint8Array.from([...int(1, 8), ...bytes(7, graph), ...bytes(8, [...str(1, ''), ...int(2, 13)])]);
}

/** onnxruntime loads on this machine and runs a model (tinyOnnxModel) to the right answer. */
export async function checkOnnxRuntime(): Promise<Check> {
  const started = performance.now();
  let ort: Awaited<ReturnType<typeof loadOnnxRuntime>>;
  try {
    ort = await loadOnnxRuntime();
  } catch (err) {
    const arch = `${process.platform}/${process.arch}`;
    return fail(
      'onnxruntime',
      `onnxruntime-node does not load on ${arch}: ${errorText(err)}`,
      process.arch === 'arm'
        ? 'use a 64-bit OS (Raspberry Pi OS 64-bit): onnxruntime has no 32-bit ARM build'
        : 'use the image built for this architecture (linux/arm64 on a Raspberry Pi)',
    );
  }
  try {
    const session = await ort.InferenceSession.create(tinyOnnxModel(), { intraOpNumThreads: 1 });
    try {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 2, 3]), [1, 3]) });
      const y = Array.from((out['y']?.data ?? []) as Float32Array);
      if (y.join(',') !== '2,4,6')
        return fail(
          'onnxruntime',
          `a model of one Add gave [${y.join(', ')}] for [1, 2, 3] + [1, 2, 3]`,
          'this onnxruntime build computes wrongly on this CPU: report it with `kmj doctor -o json`',
        );
    } finally {
      await session.release();
    }
  } catch (err) {
    return fail(
      'onnxruntime',
      `onnxruntime-node loads but cannot run a model: ${errorText(err)}`,
      "check the node's CPU and memory limits; report it with `kmj doctor -o json`",
    );
  }
  return ok('onnxruntime', `onnxruntime ${ort.env.versions.common} ran a model in ${Math.round(performance.now() - started)} ms`);
}

/** The model a request would name, resolved, fetched into the model cache and loaded, as the worker does. */
export async function checkModel(uri: string, config: WorkerConfig, log: Logger): Promise<Check> {
  const http = config.mlflow ? new MlflowHttp({ ...config.mlflow, maxRetries: 0, maxBackoffSeconds: 1, log }) : undefined;
  try {
    const loaded = await loadModel(
      uri,
      { config, tracking: http ? new MlflowTracking(http) : undefined, log },
      AbortSignal.timeout(config.timeBudgetMs),
    );
    const version = loaded.resolved.version !== undefined ? ` (version ${loaded.resolved.version})` : '';
    return ok(
      'model',
      `${uri}${version} loads: a ${loaded.model.kind} with output(s) ${loaded.model.outputNames.join(', ')}, in ${loaded.seconds.toFixed(2)} s (cache ${loaded.cacheHit ? 'hit' : 'miss'})`,
    );
  } catch (err) {
    return fail(
      'model',
      `${uri} does not load: ${errorText(err)}`,
      'check the model URI, that its registry version or alias exists, and that it was logged with mlflow.onnx.log_model',
    );
  } finally {
    await http?.close();
  }
}
