/**
 * The queues a request queue comes with, declared the same way by `kmj submit` and `kmj worker`:
 *
 * - `<queue>`: a durable quorum queue. Its `x-delivery-limit` dead-letters a message the broker
 *   has delivered too often (a worker killed mid-run, again and again) to `<queue>.dead`, so a
 *   poison message cannot loop forever.
 * - `<queue>.dead`: a durable quorum queue where dead-lettered requests wait, with the reason in
 *   their headers (the worker's own dead-letters) or in `x-death` (the broker's). No delivery
 *   limit (`x-delivery-limit: -1`): RabbitMQ 4 gives every quorum queue a limit of 20 by default,
 *   and a dead letter looked at with a requeue (the management UI's "Get messages") more often
 *   than that would be dropped.
 *
 * Only what is missing is declared: a dead-letter queue made before that (under RabbitMQ 3, or by
 * an older kmj) has other arguments, and declaring it again with these would be refused. Such a
 * queue keeps RabbitMQ 4's limit; `rabbitmqctl set_policy` with `delivery-limit: -1` lifts it
 * (docs/deploy.md). A request queue declared before with other arguments makes the broker refuse
 * (PRECONDITION_FAILED), which the caller reports.
 */
import { connect, type ChannelModel } from 'amqplib';
import { raceAbort } from '../common/abort.ts';
import { checkQueues } from './inspect.ts';

export interface TopologyOptions {
  readonly deadLetterQueue: string;
  /** Deliveries after which the broker dead-letters a message by itself. */
  readonly maxDeliveries: number;
}

/** The default dead-letter queue of a request queue. */
export function deadLetterQueueOf(queue: string): string {
  return `${queue}.dead`;
}

export function requestQueueArguments(options: TopologyOptions): Record<string, unknown> {
  return {
    'x-queue-type': 'quorum',
    'x-delivery-limit': options.maxDeliveries,
    'x-dead-letter-exchange': '',
    'x-dead-letter-routing-key': options.deadLetterQueue,
  };
}

export const DEAD_LETTER_QUEUE_ARGUMENTS = { 'x-queue-type': 'quorum', 'x-delivery-limit': -1 } as const;

/**
 * Declares the request queue and its dead-letter queue where they are missing, on a channel of its
 * own. The request queue is declared whether it exists or not, so a queue with other arguments is
 * refused (PRECONDITION_FAILED) rather than used as if it were ours.
 */
export async function declareRequestTopology(conn: ChannelModel, queue: string, options: TopologyOptions): Promise<void> {
  const found = await checkQueues(conn, [options.deadLetterQueue]);
  const ch = await conn.createChannel();
  try {
    if (found.get(options.deadLetterQueue) === undefined)
      await ch.assertQueue(options.deadLetterQueue, { durable: true, arguments: DEAD_LETTER_QUEUE_ARGUMENTS });
    await ch.assertQueue(queue, { durable: true, arguments: requestQueueArguments(options) });
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/**
 * `declareRequestTopology` on a connection of its own to `url` (`kmj setup`, as the worker's
 * user), closed afterwards; the connect is bounded by 10 s and `signal`.
 */
export async function declareRequestTopologyAt(url: string, queue: string, options: TopologyOptions, signal: AbortSignal): Promise<void> {
  await onConnectionTo(url, signal, (conn) => declareRequestTopology(conn, queue, options));
}

/**
 * `work` on a connection of its own to `url`, closed afterwards whatever `work` did; the connect
 * is bounded by `connectTimeoutMs` (default 10 s) and `signal`. A connection that drops fails
 * `work`'s calls, which say so.
 */
export async function onConnectionTo<T>(
  url: string,
  signal: AbortSignal,
  work: (conn: ChannelModel) => Promise<T>,
  connectTimeoutMs = 10_000,
): Promise<T> {
  const conn = await raceAbort(connect(url, { timeout: connectTimeoutMs, noDelay: true }), signal);
  conn.on('error', () => undefined); // reported by the calls it fails
  try {
    return await work(conn);
  } finally {
    await conn.close().catch(() => undefined); // the work is done or failed; a failed close changes nothing
  }
}

/** Declares a dead-letter queue where it is missing. */
export async function declareDeadLetterQueue(conn: ChannelModel, queue: string): Promise<void> {
  if ((await checkQueues(conn, [queue])).get(queue) !== undefined) return;
  const ch = await conn.createChannel();
  try {
    await ch.assertQueue(queue, { durable: true, arguments: DEAD_LETTER_QUEUE_ARGUMENTS });
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** Header names of the worker's dead-letters. */
export const DEAD_LETTER_HEADERS = {
  reason: 'x-kmj-dead-letter-reason',
  field: 'x-kmj-dead-letter-field',
  at: 'x-kmj-dead-lettered-at',
  queue: 'x-kmj-source-queue',
  runId: 'x-kmj-run-id',
  attempt: 'x-kmj-delivery-attempt',
} as const;

/** Why a message in a dead-letter queue is there: the worker's reason, or the broker's doing. */
export function deadLetterReason(headers: Record<string, unknown> | undefined): string {
  const reason = headers?.[DEAD_LETTER_HEADERS.reason];
  // amqplib gives a string header as a string, or as a Buffer when it came as bytes.
  if (typeof reason === 'string') return reason;
  if (Buffer.isBuffer(reason)) return reason.toString('utf8');
  return 'dead-lettered by the broker';
}

/** A message taken off a dead-letter queue: its message id (the request id) and why it is there. */
export interface DeadLetter {
  readonly messageId?: string;
  readonly reason: string;
}

/**
 * Takes every message off `queue`'s dead-letter queue, on a connection of its own to `url`
 * (`kmj demo`, whose queue is its own and deleted afterwards). The messages are acknowledged as
 * they are read: this empties the queue, so it is not for a queue someone else still reads.
 */
export async function takeDeadLettersAt(url: string, queue: string, signal: AbortSignal): Promise<DeadLetter[]> {
  return onConnectionTo(url, signal, async (conn) => {
    const ch = await conn.createChannel();
    const taken: DeadLetter[] = [];
    for (;;) {
      const m = await ch.get(deadLetterQueueOf(queue), { noAck: true });
      if (m === false) break;
      const messageId: unknown = m.properties.messageId;
      taken.push({ ...(typeof messageId === 'string' ? { messageId } : {}), reason: deadLetterReason(m.properties.headers) });
    }
    await ch.close();
    return taken;
  });
}

/** Deletes a request queue and its dead-letter queue, on a connection of its own to `url`. */
export async function deleteRequestTopologyAt(url: string, queue: string, signal: AbortSignal): Promise<void> {
  await onConnectionTo(url, signal, async (conn) => {
    const ch = await conn.createChannel();
    await ch.deleteQueue(queue);
    await ch.deleteQueue(deadLetterQueueOf(queue));
    await ch.close();
  });
}

/**
 * RabbitMQ's direct reply-to pseudo-queue. `kmj submit --wait` consumes it and publishes its
 * request with reply-to set to it; the broker rewrites that into a per-channel address, to which
 * the worker sends an OutcomeNotice once it has settled the message. At most once: a notice to a
 * requester that has gone is dropped, and the MLflow run says the same thing anyway.
 */
export const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

/** True for an address the broker made from DIRECT_REPLY_TO; the worker replies to no other. */
export function isDirectReplyAddress(replyTo: unknown): replyTo is string {
  return typeof replyTo === 'string' && replyTo.startsWith(`${DIRECT_REPLY_TO}.`);
}

/** What a worker tells the requester after settling its message. */
export interface OutcomeNotice {
  readonly requestId: string;
  readonly outcome: 'acknowledged' | 'requeued' | 'dead-lettered';
  readonly reason?: string;
  readonly field?: string;
  readonly runId?: string;
}

export function parseOutcomeNotice(body: Buffer): OutcomeNotice | undefined {
  try {
    const n = JSON.parse(body.toString('utf8')) as Partial<OutcomeNotice>;
    if (typeof n.requestId !== 'string' || !['acknowledged', 'requeued', 'dead-lettered'].includes(String(n.outcome))) return undefined;
    return n as OutcomeNotice;
  } catch {
    return undefined; // not a notice of ours: ignored
  }
}
