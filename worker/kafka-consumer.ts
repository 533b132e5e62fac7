/**
 * The worker's Kafka input: join the group, take up to `maxMessages` records one at a time, run
 * each through the same pipeline as a RabbitMQ message, settle it, leave the group, exit.
 *
 * Settling a record, always before its offset is committed (synchronously, offset + 1):
 * - ack (the run is FINISHED, now or on an earlier delivery): commit;
 * - dead-letter: produce it to the dead-letter topic with the reason in its headers (acks from
 *   all in-sync replicas), then commit; if that produce fails, nothing is committed;
 * - requeue (a transient failure outlasted the retries, or SIGTERM): produce it again to the end
 *   of its partition with the next attempt number in a header, then commit. Kafka has no
 *   delivery count; this header is it, so a record that keeps failing reaches KMJ_MAX_DELIVERIES
 *   and is dead-lettered, and the records behind it are not held up meanwhile.
 *
 * Nothing is lost: a record's offset is committed only after the record is FINISHED or safely
 * written elsewhere. A worker killed before its commit leaves the record to the next member of
 * the group, which finds the FINISHED run (the request id tag) and only commits: no second run.
 * After the last record the worker pauses, so records kafkajs fetched ahead are never handled or
 * committed; they go to the next worker.
 *
 * Exit code: the one record's, as with RabbitMQ; with several, the first that is not OK.
 */
import type { Consumer, KafkaMessage, Producer } from 'kafkajs';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/errors.ts';
import { EXIT, type ExitCode } from '../common/worker-exit.ts';
import { kafkaClient } from '../kafka/client.ts';
import { describeConnection } from '../kafka/settings.ts';
import { ensureTopic, headerText, KAFKA_HEADERS } from '../kafka/topics.ts';
import type { ConsumeOptions } from './consumer.ts';
import type { Outcome } from './pipeline.ts';
import type { DeliveryInfo } from './run-store.ts';

/** The attempt a record is on: its header's, 1 when it has none. */
export function attemptOfRecord(message: KafkaMessage): number {
  const n = Number(headerText(message.headers as Record<string, unknown> | undefined, KAFKA_HEADERS.attempt));
  return Number.isSafeInteger(n) && n >= 1 ? n : 1;
}

/** How often the group hears from a worker busy with one record (kafkajs heartbeats only between records). */
const HEARTBEAT_MS = 3000;

export async function consumeKafka(options: ConsumeOptions): Promise<ExitCode> {
  const { config, shutdown } = options;
  const input = config.kafka;
  if (!input) throw new Error('consumeKafka without a Kafka input');
  const log = options.log.child({ topic: input.topic, group: input.group, ...describeConnection(input.connection) });
  const kafka = kafkaClient(input.connection, {
    clientId: `kmj-worker-${config.podName ?? process.pid}`,
    log,
    connectTimeoutMs: 10_000,
    requestTimeoutMs: 30_000,
    retries: 5,
  });
  // A fetch waits at most 500 ms, so leaving the group is quick. kafkajs rejoins a rebalance only
  // between records. The rebalance timeout is how long the whole group waits for a member that
  // does not rejoin: one that outlasted every record (630 s by default) froze the group for that
  // long whenever a worker went away in the middle of a rebalance (seen in the cluster test). So
  // it is kafkajs' 60 s: a member busy longer than that during a rebalance loses its partitions,
  // the next worker resumes the same run (never a second one), and the first one's commit fails.
  const rebalanceTimeoutMs = 60_000;
  const consumer = kafka.consumer({
    groupId: input.group,
    sessionTimeout: input.sessionTimeoutMs,
    rebalanceTimeout: rebalanceTimeoutMs,
    heartbeatInterval: Math.min(HEARTBEAT_MS, Math.floor(input.sessionTimeoutMs / 3)),
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  try {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const topics = await admin.listTopics();
      if (!topics.includes(input.topic)) {
        log.error('the request topic does not exist');
        return EXIT.BROKER_UNAVAILABLE;
      }
      await ensureTopic(admin, input.deadLetterTopic, 1, topics);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
    await Promise.all([consumer.connect(), producer.connect()]);
  } catch (err) {
    log.error({ err }, 'cannot reach the broker');
    await Promise.allSettled([consumer.disconnect(), producer.disconnect()]);
    return EXIT.BROKER_UNAVAILABLE;
  }

  const codes: ExitCode[] = [];
  let taken = 0;
  let stopping = false;
  let idleTimer: NodeJS.Timeout | undefined;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    clearTimeout(idleTimer);
    try {
      consumer.pause([{ topic: input.topic }]);
    } catch (err) {
      // Not subscribed yet (stopped while joining): there is nothing to pause.
      log.debug({ err }, 'pause before subscribe');
    }
    finish();
  };
  const armIdle = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      log.info({ idleTimeoutMs: config.idleTimeoutMs, taken }, taken === 0 ? 'no message; exiting' : 'no further message; exiting');
      stop();
    }, config.idleTimeoutMs);
  };
  // The idle timeout counts from the join: a worker waiting in a rebalance for a busy member is
  // not idle. The join itself is bounded by the rebalance timeout.
  let joined = false;
  let joinTimedOut = false;
  const joinTimer = setTimeout(() => {
    joinTimedOut = true;
    log.error({ rebalanceTimeoutMs }, 'could not join the consumer group');
    stop();
  }, config.idleTimeoutMs + rebalanceTimeoutMs);
  consumer.on(consumer.events.GROUP_JOIN, () => {
    joined = true;
    clearTimeout(joinTimer);
    if (!stopping && codes.length === taken) armIdle();
  });
  const onShutdown = (): void => {
    if (taken === 0 || codes.length === taken) {
      log.info({ taken }, 'stopped between records');
      stop();
    }
    // A record in hand: the pipeline sees the same signal, returns requeue, and settles it.
  };
  shutdown.addEventListener('abort', onShutdown, { once: true });
  let crashed: Error | undefined;
  consumer.on(consumer.events.CRASH, (event) => {
    // A retriable error (no group coordinator yet on a fresh broker, say): kafkajs restarts the
    // consumer by itself and the worker carries on. Otherwise the consumer is gone.
    if (event.payload.restart) {
      log.warn({ err: messageOf(event.payload.error) }, 'consumer restarting after an error');
      return;
    }
    crashed = event.payload.error;
    log.error({ err: event.payload.error }, 'consumer crashed');
    stop();
  });

  try {
    await consumer.subscribe({ topic: input.topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic, partition, message, heartbeat }) => {
        if (stopping) return; // fetched ahead: never handled, never committed
        taken++;
        clearTimeout(idleTimer);
        const beat = setInterval(() => {
          // A rebalance under way answers REBALANCE_IN_PROGRESS: this member rejoins after the record.
          heartbeat().catch((err: unknown) => log.debug({ err: messageOf(err) }, 'heartbeat during a record'));
        }, HEARTBEAT_MS);
        let code: ExitCode;
        try {
          code = await settleRecord(topic, partition, message, options, producer, consumer, log);
        } finally {
          clearInterval(beat);
        }
        codes.push(code);
        if (taken >= input.maxMessages || code !== EXIT.OK || shutdown.aborted) stop();
        else armIdle();
      },
    });
    if (shutdown.aborted && taken === 0) stop();
    await finished;
  } catch (err) {
    log.error({ err }, 'worker failed');
    codes.push(EXIT.INTERNAL);
  } finally {
    clearTimeout(idleTimer);
    clearTimeout(joinTimer);
    shutdown.removeEventListener('abort', onShutdown);
    // disconnect waits for a record in hand; it sends LeaveGroup, so the next worker gets the
    // partitions at once instead of after the session timeout.
    await Promise.allSettled([consumer.disconnect(), producer.disconnect()]);
  }
  if (crashed && codes.length < taken) return EXIT.UNSETTLED;
  const worst = codes.find((c) => c !== EXIT.OK);
  if (worst !== undefined) return worst;
  // Nothing went wrong with a record, but the group could not be used: not a success.
  if ((crashed || joinTimedOut) && !shutdown.aborted) return taken === 0 || !joined ? EXIT.BROKER_UNAVAILABLE : EXIT.UNSETTLED;
  return EXIT.OK;
}

async function settleRecord(topic: string, partition: number, message: KafkaMessage, options: ConsumeOptions, producer: Producer, consumer: Consumer, parent: Logger): Promise<ExitCode> {
  const { config } = options;
  const input = config.kafka;
  if (!input) throw new Error('no Kafka input');
  const delivery: DeliveryInfo = { attempt: attemptOfRecord(message), queue: topic, attemptsFromRun: true };
  const log = parent.child({ partition, offset: message.offset, attempt: delivery.attempt });
  log.debug({ bytes: message.value?.length ?? 0 }, 'record received');
  const outcome: Outcome = await options.handle(message.value ?? Buffer.alloc(0), delivery);
  const fields = { requestId: outcome.requestId, runId: outcome.runId, reason: outcome.reason };
  const next = String(Number(message.offset) + 1);
  let code: ExitCode;
  try {
    if (outcome.action === 'dead-letter') {
      await producer.send({ topic: input.deadLetterTopic, acks: -1, messages: [deadLetter(message, outcome, delivery, topic, partition)] });
      code = EXIT.DEAD_LETTERED;
    } else if (outcome.action === 'requeue') {
      const headers = { ...(message.headers ?? {}), [KAFKA_HEADERS.attempt]: String(delivery.attempt + 1) };
      await producer.send({ topic, acks: -1, messages: [{ key: message.key, value: message.value, headers, partition }] });
      code = EXIT.REQUEUED;
    } else {
      code = EXIT.OK;
    }
  } catch (err) {
    // Not written elsewhere: not committed either, so the next worker gets it again.
    log.error({ err, ...fields }, outcome.action === 'dead-letter' ? 'dead-lettering failed; the record stays uncommitted' : 'requeueing failed; the record stays uncommitted');
    return EXIT.UNSETTLED;
  }
  try {
    await consumer.commitOffsets([{ topic, partition, offset: next }]);
  } catch (err) {
    // Delivered again to the next worker: after an ack it finds the run FINISHED and commits;
    // after a requeue or dead-letter it handles the original again (resuming the same run, or
    // writing a second dead letter) besides the copy. Never a second FINISHED run.
    log.warn({ err: messageOf(err), ...fields }, 'commit failed; the record will be delivered again');
    return EXIT.UNSETTLED;
  }
  const text = code === EXIT.OK ? 'record committed' : code === EXIT.REQUEUED ? 'record requeued' : 'record dead-lettered';
  log.info({ ...fields, exitCode: code, alreadyFinished: outcome.alreadyFinished === true }, text);
  return code;
}

function deadLetter(message: KafkaMessage, outcome: Outcome, delivery: DeliveryInfo, topic: string, partition: number): { key: Buffer | null; value: Buffer | null; headers: Record<string, string | Buffer> } {
  const headers: Record<string, string | Buffer> = {};
  for (const [k, v] of Object.entries(message.headers ?? {})) {
    if (Buffer.isBuffer(v) || typeof v === 'string') headers[k] = v;
  }
  headers[KAFKA_HEADERS.reason] = (outcome.reason ?? 'unknown').slice(0, 4000);
  headers[KAFKA_HEADERS.at] = new Date().toISOString();
  headers[KAFKA_HEADERS.topic] = topic;
  headers[KAFKA_HEADERS.partition] = String(partition);
  headers[KAFKA_HEADERS.offset] = message.offset;
  headers[KAFKA_HEADERS.attempt] = String(delivery.attempt);
  if (outcome.field !== undefined) headers[KAFKA_HEADERS.field] = outcome.field;
  if (outcome.runId !== undefined) headers[KAFKA_HEADERS.runId] = outcome.runId;
  return { key: message.key, value: message.value, headers };
}
