/** `kmj worker --queue <name>`: takes one request from the queue, runs it, settles it, exits. */
import { parseArgs } from 'node:util';
import { describeFields } from '../common/fields.ts';
import { createLogger } from '../common/log.ts';
import { packageVersion } from '../common/paths.ts';
import { loadWorkerConfig, WORKER_ENV, type WorkerFlags } from '../worker/config.ts';
import type { Handler } from '../worker/delivery.ts';
import { consumeRabbitMq } from '../worker/rabbitmq-consumer.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';
import type { CommandContext } from './context.ts';

export const WORKER_HELP = `Usage: kmj worker --queue <name>
       kmj worker --topic <name> --group <name> [--max-messages <n>]

Takes exactly one request from the queue (prefetch 1, consumer kept open while working), runs
the model on the dataset with onnxruntime, logs params, metrics, inputs and a predictions
artifact to MLflow, then cancels its consumer, settles the message and exits. One worker per
request: run it as a KEDA ScaledJob (keda/scaledjob.yaml).

With --topic, it joins the Kafka consumer group instead and takes up to --max-messages records
(default 1) one at a time, committing each record's offset only after its run is FINISHED (or
after it was written to the dead-letter topic, or back to its partition for a retry), then
leaves the group (keda/scaledjob-kafka.yaml).

Without MLFLOW_TRACKING_URI (local runs), or with KMJ_SPOOL_DIR set and MLflow out of reach, the
run is written to a spool directory instead; "kmj replay --to <tracking uri>" uploads it later.

Exit codes:
  0   acknowledged (the run finished, now or on an earlier delivery), or no message arrived
      within KMJ_WORKER_IDLE_TIMEOUT_MS
  10  dead-lettered: the request cannot succeed; the reason is in the dead-letter's headers
  11  requeued: a transient failure outlasted the retries, or the worker was stopped (SIGTERM)
  12  the broker connection was lost while the message was held; the broker requeues it
  69  the broker could not be reached; nothing was consumed
  70  internal error
  78  bad configuration

Options:
  --queue <name>         RabbitMQ request queue (KMJ_WORKER_QUEUE)
  --topic <name>         Kafka request topic (KMJ_WORKER_TOPIC), instead of a queue
  --group <name>         Kafka consumer group (KMJ_WORKER_GROUP)
  --max-messages <n>     Kafka records per worker (KMJ_WORKER_MAX_MESSAGES, default 1)
  -h, --help             show this help

Environment:
${describeFields(WORKER_ENV)}

The request format is schemas/request-v1.schema.json; see docs/requests.md.
`;

/** The flags as the worker's configuration takes them (they override its environment); no I/O. */
export function parseWorkerArgs(
  argv: readonly string[],
): { readonly kind: 'help' } | { readonly kind: 'run'; readonly flags: WorkerFlags } {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      queue: { type: 'string' },
      topic: { type: 'string' },
      group: { type: 'string' },
      'max-messages': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  return {
    kind: 'run',
    flags: {
      ...(values.queue !== undefined ? { queue: values.queue } : {}),
      ...(values.topic !== undefined ? { topic: values.topic } : {}),
      ...(values.group !== undefined ? { group: values.group } : {}),
      ...(values['max-messages'] !== undefined ? { maxMessages: values['max-messages'] } : {}),
    },
  };
}

/** Parse, configure (worker/config.ts), then one delivery through the broker's consumer; the exit code is the settle's. */
export async function runWorker(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseWorkerArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(WORKER_HELP);
    return EXIT.OK;
  }
  const config = loadWorkerConfig(ctx.env, request.flags);
  const log = createLogger({ level: config.logLevel, name: 'kmj-worker', sync: true });
  const mlflow = config.mlflow;
  if (!mlflow)
    log.info({ spool: config.spoolDir }, 'MLFLOW_TRACKING_URI is not set; runs are recorded in the spool (kmj replay uploads them)');
  // Load the pipeline (onnxruntime, the request validator, MLflow client) while the broker
  // connection opens and the worker waits for its message: cold start pays for it only once.
  const pipeline = (async () => {
    const [{ handleDelivery }, { MlflowHttp }, { MlflowTracking }, { requestValidator }] = await Promise.all([
      import('../worker/pipeline.ts'),
      import('../mlflow/http.ts'),
      import('../mlflow/tracking.ts'),
      import('../common/request.ts'),
    ]);
    await requestValidator();
    const http = mlflow ? new MlflowHttp({ ...mlflow, maxBackoffSeconds: 60, log }) : undefined;
    return { handleDelivery, http, tracking: http ? new MlflowTracking(http) : undefined };
  })();
  pipeline.catch(() => undefined); // awaited below; this only keeps an early failure from being unhandled
  try {
    // kafkajs and the Kafka input are loaded only for a Kafka worker: about 80 ms of a RabbitMQ
    // worker's cold start otherwise (make bench-worker).
    const handle: Handler = async (body, delivery) => {
      const p = await pipeline;
      return p.handleDelivery(body, delivery, {
        config,
        tracking: p.tracking,
        log,
        shutdown: ctx.shutdownSignal,
        workerVersion: packageVersion(),
      });
    };
    const common = { config, log, shutdown: ctx.shutdownSignal, handle };
    const input = config.input;
    return input.kind === 'kafka'
      ? await (await import('../worker/kafka-consumer.ts')).consumeKafka({ ...common, input })
      : await consumeRabbitMq({ ...common, input });
  } catch (err) {
    log.error({ err }, 'worker failed');
    return EXIT.INTERNAL;
  } finally {
    const p = await pipeline.catch(() => undefined);
    await p?.http?.close();
    log.flush();
  }
}
