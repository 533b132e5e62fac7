/**
 * The RabbitMQ consumer (the delivery contract of delivery.ts, for a request queue). Its protocol
 * makes the scaler's `backlog` count exact:
 *
 * 1. prefetch 1 and `basic.consume`, so this worker counts as one consumer from the moment it
 *    starts, and holds at most one message;
 * 2. keep the consumer open while working;
 * 3. when done: cancel the consumer, then settle the message (ack, requeue, or dead-letter), then
 *    close the channel (a round trip that proves the broker has the settle: closing the
 *    connection right after an ack can overtake it), then close the connection.
 *
 * If no message arrives within the idle timeout, the worker exits 0 and MLflow is never touched.
 * Exit codes say how the message was settled (docs/worker.md).
 */
import { randomUUID } from 'node:crypto';
import { connect, type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { raceAbort } from '../common/abort.ts';
import type { Logger } from '../common/log.ts';
import { displayUrl } from '../common/redact.ts';
import {
  DEAD_LETTER_HEADERS,
  declareDeadLetterQueue,
  declareRequestTopology,
  isDirectReplyAddress,
  type OutcomeNotice,
} from '../rabbitmq/topology.ts';
import type { RabbitMqInput } from './config.ts';
import { messageOf } from '../common/errors.ts';
import type { Consume, DeliveryInfo, Outcome } from './delivery.ts';
import { checkQueues } from '../rabbitmq/inspect.ts';
import { EXIT, type WorkerExitCode } from '../common/exit-codes.ts';
import { vhostOf } from '../rabbitmq/settings.ts';
import { reportOf, sendReport, type ModelTimes } from './report.ts';

/** Deliveries so far, from the quorum queue's x-delivery-count, or x-death counts on classic queues. */
export function attemptOf(msg: ConsumeMessage): number {
  const headers = (msg.properties.headers ?? {}) as Record<string, unknown>;
  const count = Number(headers['x-delivery-count']);
  if (Number.isFinite(count) && count >= 0) return count + 1;
  const deaths = headers['x-death'];
  if (Array.isArray(deaths)) {
    const total = deaths.reduce((s: number, d: unknown) => s + (Number((d as { count?: unknown }).count) || 0), 0);
    return total + 1;
  }
  return msg.fields.redelivered ? 2 : 1;
}

/** Declares the request queue and its dead-letter queue where they are missing (rabbitmq/topology.ts). */
async function ensureQueues(conn: ChannelModel, input: RabbitMqInput, maxDeliveries: number): Promise<void> {
  const found = await checkQueues(conn, [input.queue, input.deadLetterQueue]);
  const haveQueue = found.get(input.queue) !== undefined;
  if (haveQueue && found.get(input.deadLetterQueue) !== undefined) return;
  if (!haveQueue) await declareRequestTopology(conn, input.queue, { deadLetterQueue: input.deadLetterQueue, maxDeliveries });
  else await declareDeadLetterQueue(conn, input.deadLetterQueue);
}

/**
 * Waits for one message, the idle timeout, or shutdown. The consumer tag is chosen here, not
 * learned from basic.consume-ok: a message already waiting in the queue is delivered before that
 * reply is handled, and the consumer must be cancellable from the first delivery on.
 */
function firstMessage(
  ch: Channel,
  queue: string,
  idleMs: number,
  shutdown: AbortSignal,
): Promise<{ msg: ConsumeMessage | undefined; tag: string }> {
  const tag = `kmj-worker-${process.pid}-${randomUUID().slice(0, 8)}`;
  return new Promise((resolve, reject) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (msg: ConsumeMessage | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      shutdown.removeEventListener('abort', onShutdown);
      resolve({ msg, tag });
    };
    const onShutdown = (): void => finish(undefined);
    shutdown.addEventListener('abort', onShutdown, { once: true });
    ch.consume(
      queue,
      (msg) => {
        // null: the broker cancelled the consumer (queue deleted). Either way this is our one try.
        if (!settled) finish(msg ?? undefined);
      },
      { noAck: false, consumerTag: tag },
    ).then(
      () => {
        if (!settled) timer = setTimeout(() => finish(undefined), idleMs);
        if (shutdown.aborted) finish(undefined);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        shutdown.removeEventListener('abort', onShutdown);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

/** Takes at most one message from the queue, handles it, settles it, and returns the exit code. */
export const consumeRabbitMq: Consume<RabbitMqInput> = async (options) => {
  const { config, input, shutdown } = options;
  const log = options.log.child({ queue: input.queue, broker: displayUrl(input.url) });
  let conn: ChannelModel;
  try {
    // noDelay: with Nagle's algorithm on, the handshake, the first delivery and the close each
    // wait about 40 ms for the broker's delayed ACK (measured on loopback: 120 ms in all).
    conn = await connect(input.url, {
      timeout: 10_000,
      noDelay: true,
      clientProperties: { connection_name: `kmj-worker ${config.podName ?? process.pid}` },
    });
  } catch (err) {
    log.error({ err }, 'cannot reach the broker');
    return EXIT.UNAVAILABLE;
  }
  log.debug('broker connected');
  // Once a message is in hand, its report goes to the scaler after the settle (worker/report.ts).
  let received: { readonly receivedAtMs: number; readonly publishedAtMs: number | undefined } | undefined;
  let model: ModelTimes | undefined;
  const reported = async (code: WorkerExitCode): Promise<WorkerExitCode> => {
    if (received) {
      const times = { ...received, settledAtMs: Date.now(), model };
      await sendReport(config, reportOf({ source: 'rabbitmq', scope: vhostOf(input.url), name: input.queue }, code, times), log);
    }
    return code;
  };
  let connectionLost = false;
  conn.on('error', (err: unknown) => log.warn({ err }, 'broker connection error'));
  conn.on('close', () => {
    connectionLost = true;
  });
  try {
    await ensureQueues(conn, input, config.maxDeliveries);
    const ch = await conn.createChannel();
    ch.on('error', (err: unknown) => log.warn({ err }, 'channel error'));
    await ch.prefetch(1);
    const { msg, tag } = await firstMessage(ch, input.queue, config.idleTimeoutMs, shutdown);
    if (!msg) {
      await ch.cancel(tag).catch(() => undefined);
      await ch.close().catch(() => undefined);
      log.info(
        { idleTimeoutMs: config.idleTimeoutMs, stopped: shutdown.aborted },
        shutdown.aborted ? 'stopped before a message arrived' : 'no message; exiting',
      );
      return EXIT.OK;
    }
    const receivedAtMs = Date.now();
    // The AMQP timestamp is in seconds (kmj submit sets it; other publishers may not).
    const stamp: unknown = msg.properties.timestamp;
    received = { receivedAtMs, publishedAtMs: typeof stamp === 'number' && stamp > 0 ? stamp * 1000 : undefined };
    const delivery: DeliveryInfo = { attempt: attemptOf(msg), queue: input.queue };
    log.debug({ attempt: delivery.attempt, bytes: msg.content.length }, 'message received');
    // The handler decides the settle, the delivery limit included (worker/pipeline.ts); a requeue
    // stays a requeue here, so a run marked KILLED is never dead-lettered behind its back.
    const outcome = await options.handle(msg.content, delivery);
    model = outcome;
    if (connectionLost) {
      log.warn({ outcome: outcome.action }, 'broker connection lost while working; the broker requeues the message');
      return await reported(EXIT.UNSETTLED);
    }
    return await reported(await settle(conn, ch, tag, msg, outcome, delivery, input, log));
  } catch (err) {
    if (connectionLost) {
      log.warn({ err }, 'broker connection lost; the broker requeues any message held');
      return await reported(EXIT.UNSETTLED);
    }
    log.error({ err }, 'worker failed');
    return await reported(EXIT.INTERNAL);
  } finally {
    await conn.close().catch(() => undefined); // already closed after settle in the normal case
  }
};

async function settle(
  conn: ChannelModel,
  ch: Channel,
  tag: string,
  msg: ConsumeMessage,
  outcome: Outcome,
  delivery: DeliveryInfo,
  input: RabbitMqInput,
  log: Logger,
): Promise<WorkerExitCode> {
  const bound = AbortSignal.timeout(15_000);
  // basic.cancel goes out first; the settle follows on the same channel without waiting for
  // cancel-ok: the broker handles a channel's frames in order, so the consumer is gone before the
  // ack or requeue is seen, and no new message can be pushed to it.
  const cancelled = raceAbort(ch.cancel(tag), bound);
  cancelled.catch(() => undefined); // awaited below, after the settle is sent
  let code: WorkerExitCode;
  const fields = { requestId: outcome.requestId, runId: outcome.runId, reason: outcome.reason, attempt: delivery.attempt };
  if (outcome.action === 'ack') {
    ch.ack(msg);
    code = EXIT.OK;
  } else if (outcome.action === 'requeue') {
    ch.nack(msg, false, true);
    code = EXIT.REQUEUED;
  } else {
    try {
      await raceAbort(publishDeadLetter(conn, msg, outcome, delivery, input), bound);
      ch.ack(msg);
      code = EXIT.DEAD_LETTERED;
    } catch (err) {
      // Could not park it: better requeued than lost.
      log.error({ err, ...fields }, 'dead-lettering failed; requeueing instead');
      ch.nack(msg, false, true);
      code = EXIT.REQUEUED;
    }
  }
  await cancelled;
  await sendOutcomeNotice(conn, msg, outcome, code, log);
  // channel.close is answered only after the broker processed everything sent before it.
  await raceAbort(ch.close(), bound);
  await raceAbort(conn.close(), bound);
  const message = code === EXIT.OK ? 'message acknowledged' : code === EXIT.REQUEUED ? 'message requeued' : 'message dead-lettered';
  log.info({ ...fields, exitCode: code, alreadyFinished: outcome.alreadyFinished === true }, message);
  return code;
}

/**
 * Tells a requester that asked (reply-to set to a direct reply-to address, as `kmj submit --wait`
 * does) how its message was settled. After the settle, on a channel of its own, bounded, and
 * best effort: the MLflow run records the same outcome.
 */
async function sendOutcomeNotice(
  conn: ChannelModel,
  msg: ConsumeMessage,
  outcome: Outcome,
  code: WorkerExitCode,
  log: Logger,
): Promise<void> {
  const replyTo: unknown = msg.properties.replyTo;
  if (!isDirectReplyAddress(replyTo)) return;
  const requestId = outcome.requestId ?? (typeof msg.properties.messageId === 'string' ? msg.properties.messageId : undefined);
  if (requestId === undefined) return;
  const notice: OutcomeNotice = {
    requestId,
    outcome: code === EXIT.OK ? 'acknowledged' : code === EXIT.DEAD_LETTERED ? 'dead-lettered' : 'requeued',
    ...(outcome.reason !== undefined ? { reason: outcome.reason.slice(0, 4000) } : {}),
    ...(outcome.field !== undefined ? { field: outcome.field } : {}),
    ...(outcome.runId !== undefined ? { runId: outcome.runId } : {}),
  };
  try {
    const bound = AbortSignal.timeout(2000);
    const ch = await raceAbort(conn.createChannel(), bound);
    ch.on('error', () => undefined); // a requester gone away may close this channel: no matter
    ch.sendToQueue(replyTo, Buffer.from(JSON.stringify(notice)), { contentType: 'application/json', correlationId: requestId });
    await raceAbort(ch.close(), bound).catch(() => undefined);
  } catch (err) {
    log.debug({ err }, 'outcome notice not sent');
  }
}

async function publishDeadLetter(
  conn: ChannelModel,
  msg: ConsumeMessage,
  outcome: Outcome,
  delivery: DeliveryInfo,
  input: RabbitMqInput,
): Promise<void> {
  const ch = await conn.createConfirmChannel();
  let returned = false;
  ch.on('return', () => {
    returned = true;
  });
  try {
    const headers: Record<string, unknown> = {
      ...((msg.properties.headers ?? {}) as Record<string, unknown>),
      [DEAD_LETTER_HEADERS.reason]: (outcome.reason ?? 'unknown').slice(0, 4000),
      [DEAD_LETTER_HEADERS.at]: new Date().toISOString(),
      [DEAD_LETTER_HEADERS.queue]: input.queue,
      [DEAD_LETTER_HEADERS.attempt]: delivery.attempt,
    };
    if (outcome.field !== undefined) headers[DEAD_LETTER_HEADERS.field] = outcome.field;
    if (outcome.runId !== undefined) headers[DEAD_LETTER_HEADERS.runId] = outcome.runId;
    // amqplib types these properties `any`; they are what RabbitMQ delivered.
    const p = msg.properties as {
      contentType?: string;
      messageId?: string;
      correlationId?: string;
      timestamp?: number;
      type?: string;
      appId?: string;
    };
    ch.sendToQueue(input.deadLetterQueue, msg.content, {
      persistent: true,
      // Unroutable (the queue was deleted) comes back as basic.return before the confirm.
      mandatory: true,
      headers,
      ...(p.contentType ? { contentType: p.contentType } : {}),
      ...(p.messageId ? { messageId: p.messageId } : {}),
      ...(p.correlationId ? { correlationId: p.correlationId } : {}),
      ...(p.timestamp ? { timestamp: p.timestamp } : {}),
      ...(p.type ? { type: p.type } : {}),
      ...(p.appId ? { appId: p.appId } : {}),
    });
    await ch.waitForConfirms();
    if (returned) throw new Error(`queue ${input.deadLetterQueue} does not exist`);
  } catch (err) {
    throw new Error(`publishing to ${input.deadLetterQueue} failed: ${messageOf(err)}`, { cause: err });
  } finally {
    await ch.close().catch(() => undefined);
  }
}
