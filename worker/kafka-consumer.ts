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
 *
 * The group (kafka/group.ts, kafka/assigner.ts): a record runs beside kafkajs' fetch loop, not
 * inside it, so the worker heartbeats and rejoins a rebalance at once while it works, and another
 * Job's join never waits for this worker's record. While a record runs the worker reads nothing
 * else (the topic is paused) and says so when it joins: the record's partition stays with it,
 * and every other partition goes to members that can take a record. After its last record (or
 * when it stops) it takes no partition at all, and leaves.
 *
 * Exit code: the one record's, as with RabbitMQ; with several, the first that is not OK.
 */
import type { KafkaMessage, Producer } from 'kafkajs';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/errors.ts';
import { EXIT, type WorkerExitCode } from '../common/exit-codes.ts';
import type { MemberState } from '../kafka/assigner.ts';
import { kafkaClient } from '../kafka/client.ts';
import { groupMember, type GroupMember } from '../kafka/group.ts';
import { committedLag, KafkaOffsetsReader, type GroupOffsets } from '../kafka/offsets.ts';
import { describeConnection } from '../kafka/settings.ts';
import { ensureTopic, headerText, KAFKA_HEADERS } from '../kafka/topics.ts';
import type { KafkaInput } from './config.ts';
import type { Consume, ConsumeOptions, DeliveryInfo, Outcome } from './delivery.ts';
import { reportOf, sendReport } from './report.ts';

/** The attempt a record is on: its header's, 1 when it has none. */
export function attemptOfRecord(message: KafkaMessage): number {
  const n = Number(headerText(message.headers, KAFKA_HEADERS.attempt));
  return Number.isSafeInteger(n) && n >= 1 ? n : 1;
}

/** How often the group hears from a worker at most (a third of the session timeout when that is shorter). */
const HEARTBEAT_MS = 3000;
/**
 * How long the group waits for its members to rejoin a rebalance. Members rejoin within a
 * heartbeat and a fetch wait (3.5 s), busy or not; this only bounds a member whose process has
 * stalled, which its session timeout removes anyway.
 */
const REBALANCE_TIMEOUT_MS = 60_000;
/** The leader's read of the group's lag while the group waits for its assignment. */
const LAG_READ_TIMEOUT_MS = 2000;

export const consumeKafka: Consume<KafkaInput> = async (options) => {
  const { config, input, shutdown } = options;
  const log = options.log.child({ topic: input.topic, group: input.group, ...describeConnection(input.connection) });
  const kafka = kafkaClient(input.connection, {
    clientId: `kmj-worker-${config.podName ?? process.pid}`,
    log,
    connectTimeoutMs: 10_000,
    requestTimeoutMs: 30_000,
    retries: 5,
  });

  let taken = 0;
  let inFlight: { readonly partition: number; readonly offset: string } | undefined;
  let stopping = false;
  const state = (): MemberState => ({
    // Busy: no partition besides the record's own. Stopping or done: none at all.
    capacity: stopping || inFlight !== undefined ? 0 : input.maxMessages - taken,
    busy: inFlight ? { [input.topic]: [inFlight.partition] } : {},
  });
  const offsets = new KafkaOffsetsReader({ kafka, brokers: input.connection.brokers.join(','), log });
  const member: GroupMember = groupMember(kafka, {
    groupId: input.group,
    state,
    lagOf: async (topic) => waitingOf(await offsets.read(input.group, [topic], AbortSignal.timeout(LAG_READ_TIMEOUT_MS))),
    log,
    consumer: {
      sessionTimeout: input.sessionTimeoutMs,
      rebalanceTimeout: REBALANCE_TIMEOUT_MS,
      heartbeatInterval: Math.min(HEARTBEAT_MS, Math.floor(input.sessionTimeoutMs / 3)),
      // A fetch waits at most 500 ms: a paused or idle member heartbeats and notices a rebalance that soon.
      maxWaitTimeInMs: 500,
      allowAutoTopicCreation: false,
    },
  });
  const { consumer } = member;
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  try {
    const admin = kafka.admin();
    await admin.connect();
    try {
      const topics = await admin.listTopics();
      if (!topics.includes(input.topic)) {
        log.error('the request topic does not exist');
        return EXIT.UNAVAILABLE;
      }
      await ensureTopic(admin, input.deadLetterTopic, 1, topics);
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
    await Promise.all([consumer.connect(), producer.connect()]);
  } catch (err) {
    log.error({ err }, 'cannot reach the broker');
    await Promise.allSettled([member.close(), producer.disconnect(), offsets.close()]);
    return EXIT.UNAVAILABLE;
  }

  const codes: WorkerExitCode[] = [];
  let settling: Promise<void> = Promise.resolve();
  let idleTimer: NodeJS.Timeout | undefined;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const pauseAll = (): void => {
    try {
      consumer.pause([{ topic: input.topic }]);
    } catch (err) {
      // Not subscribed yet (stopped while joining): there is nothing to pause.
      log.debug({ err }, 'pause before subscribe');
    }
  };
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    clearTimeout(idleTimer);
    pauseAll();
    finish();
  };
  const armIdle = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      log.info({ idleTimeoutMs: config.idleTimeoutMs, taken }, taken === 0 ? 'no message; exiting' : 'no further message; exiting');
      stop();
    }, config.idleTimeoutMs);
  };
  // The idle timeout counts from the latest assignment: a worker waiting for the group to
  // rebalance is not idle, and a new assignment (a member left) may bring it work. The join
  // itself is bounded.
  let joined = false;
  let joinTimedOut = false;
  const joinTimer = setTimeout(() => {
    joinTimedOut = true;
    log.error({ rebalanceTimeoutMs: REBALANCE_TIMEOUT_MS }, 'could not join the consumer group');
    stop();
  }, config.idleTimeoutMs + REBALANCE_TIMEOUT_MS);
  // Longest queue first: of the partitions it holds, a worker reads the one with the most waiting
  // records. Their records run one after another whatever the number of Jobs, so the worker that
  // can start on the longest queue shortens the drain (with records on every partition and as many
  // Jobs as partitions, each first record starts at once).
  let choosing = 0;
  const readLongestQueue = (): void => {
    const owned = member.assigned(input.topic);
    if (stopping || inFlight !== undefined || owned.length < 2) return;
    const choice = ++choosing;
    pauseAll();
    offsets
      .read(input.group, [input.topic], AbortSignal.timeout(LAG_READ_TIMEOUT_MS))
      .then(
        (read) => {
          const waiting = [...waitingOf(read)].filter(([partition, lag]) => owned.includes(partition) && lag > 0);
          return waiting.sort(([pa, la], [pb, lb]) => lb - la || pa - pb)[0]?.[0];
        },
        (err: unknown) => {
          log.debug({ err: messageOf(err) }, 'lag not read; reading every partition');
          return undefined;
        },
      )
      .then((best) => {
        // A record taken meanwhile, a new assignment or a stop: that one decides.
        if (choice !== choosing || stopping || inFlight !== undefined) return;
        consumer.resume([{ topic: input.topic, ...(best === undefined ? {} : { partitions: [best] }) }]);
      })
      .catch((err: unknown) => log.warn({ err }, 'choosing a partition failed'));
  };
  consumer.on(consumer.events.GROUP_JOIN, (event) => {
    joined = true;
    clearTimeout(joinTimer);
    log.debug({ assignment: member.assigned(input.topic), leader: event.payload.isLeader }, 'assigned');
    if (!stopping && inFlight === undefined) {
      armIdle();
      readLongestQueue();
    }
  });
  const onShutdown = (): void => {
    if (inFlight === undefined) {
      log.info({ taken }, 'stopped between records');
      stop();
    }
    // A record in hand: the pipeline sees the same signal, returns requeue, and settles it.
  };
  shutdown.addEventListener('abort', onShutdown, { once: true });
  let crashed: Error | undefined;
  consumer.on(consumer.events.CRASH, (event) => {
    // A retriable error (no group coordinator yet on a fresh broker, say): kafkajs restarts the
    // consumer by itself and the worker carries on (kafka/group.ts refuses that once stopping).
    if (event.payload.restart) {
      log.warn({ err: messageOf(event.payload.error) }, 'consumer restarting after an error');
      return;
    }
    if (member.closing) return;
    crashed = event.payload.error;
    log.error({ err: event.payload.error }, 'consumer crashed');
    stop();
  });

  try {
    await consumer.subscribe({ topic: input.topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      // Hands the record over and returns: the fetch loop goes on heartbeating while it runs.
      eachMessage: ({ topic, partition, message }) => {
        if (stopping || inFlight !== undefined || taken >= input.maxMessages) {
          // Fetched ahead: not this worker's now. Back to it, so it is read again when the topic
          // resumes (this worker, after its record) or by the member that gets the partition.
          consumer.seek({ topic, partition, offset: message.offset });
          pauseAll();
          return Promise.resolve();
        }
        taken++;
        inFlight = { partition, offset: message.offset };
        clearTimeout(idleTimer);
        pauseAll();
        settling = settleRecord(topic, partition, message, options, producer, member, log).then(
          (code) => {
            codes.push(code);
            inFlight = undefined;
            if (taken >= input.maxMessages || code !== EXIT.OK || shutdown.aborted || stopping) {
              stop();
              return;
            }
            consumer.resume([{ topic: input.topic }]);
            armIdle();
            readLongestQueue();
          },
          (err: unknown) => {
            log.error({ err }, 'settling a record failed');
            codes.push(EXIT.INTERNAL);
            inFlight = undefined;
            stop();
          },
        );
        return Promise.resolve();
      },
    });
    if (shutdown.aborted && taken === 0) stop();
    await finished;
    await settling;
  } catch (err) {
    log.error({ err }, 'worker failed');
    codes.push(EXIT.INTERNAL);
  } finally {
    clearTimeout(idleTimer);
    clearTimeout(joinTimer);
    shutdown.removeEventListener('abort', onShutdown);
    // A record still settling is waited for (its commit needs the group); then LeaveGroup, so
    // the partitions move at once instead of after the session timeout.
    await settling;
    await Promise.allSettled([member.close(), producer.disconnect(), offsets.close()]);
  }
  if (crashed && codes.length < taken) return EXIT.UNSETTLED;
  const worst = codes.find((c) => c !== EXIT.OK);
  if (worst !== undefined) return worst;
  // Nothing went wrong with a record, but the group could not be used: not a success.
  if ((crashed || joinTimedOut) && !shutdown.aborted) return taken === 0 || !joined ? EXIT.UNAVAILABLE : EXIT.UNSETTLED;
  return EXIT.OK;
};

async function settleRecord(
  topic: string,
  partition: number,
  message: KafkaMessage,
  options: ConsumeOptions<KafkaInput>,
  producer: Producer,
  member: GroupMember,
  parent: Logger,
): Promise<WorkerExitCode> {
  const { config, input } = options;
  const delivery: DeliveryInfo = { attempt: attemptOfRecord(message), queue: topic, attemptsFromRun: true };
  const log = parent.child({ partition, offset: message.offset, attempt: delivery.attempt });
  log.debug({ bytes: message.value?.length ?? 0 }, 'record received');
  const receivedAtMs = Date.now();
  const outcome: Outcome = await options.handle(message.value ?? Buffer.alloc(0), delivery);
  // After the commit (or its failure), the request's report goes to the scaler (worker/report.ts).
  const reported = async (code: WorkerExitCode): Promise<WorkerExitCode> => {
    const publishedAtMs = Number(message.timestamp);
    const times = {
      receivedAtMs,
      publishedAtMs: Number.isFinite(publishedAtMs) && publishedAtMs > 0 ? publishedAtMs : undefined,
      settledAtMs: Date.now(),
      model: outcome,
    };
    await sendReport(config, reportOf({ source: 'kafka', scope: input.group, name: topic }, code, times), log);
    return code;
  };
  const fields = { requestId: outcome.requestId, runId: outcome.runId, reason: outcome.reason };
  const next = String(Number(message.offset) + 1);
  let code: WorkerExitCode;
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
    log.error(
      { err, ...fields },
      outcome.action === 'dead-letter'
        ? 'dead-lettering failed; the record stays uncommitted'
        : 'requeueing failed; the record stays uncommitted',
    );
    return reported(EXIT.UNSETTLED);
  }
  try {
    await member.commit(topic, partition, next);
  } catch (err) {
    // Delivered again to the next worker: after an ack it finds the run FINISHED and commits;
    // after a requeue or dead-letter it handles the original again (resuming the same run, or
    // writing a second dead letter) besides the copy. Never a second FINISHED run.
    log.warn({ err: messageOf(err), ...fields }, 'commit failed; the record will be delivered again');
    return reported(EXIT.UNSETTLED);
  }
  const text = code === EXIT.OK ? 'record committed' : code === EXIT.REQUEUED ? 'record requeued' : 'record dead-lettered';
  log.info({ ...fields, exitCode: code, alreadyFinished: outcome.alreadyFinished === true }, text);
  return reported(code);
}

/** Records waiting per partition; a partition without a commit is read from its first record. */
function waitingOf(read: GroupOffsets): Map<number, number> {
  return new Map(read.partitions.map((p) => [p.partition, committedLag(p) ?? p.end - p.start]));
}

function deadLetter(
  message: KafkaMessage,
  outcome: Outcome,
  delivery: DeliveryInfo,
  topic: string,
  partition: number,
): { key: Buffer | null; value: Buffer | null; headers: Record<string, string | Buffer> } {
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
