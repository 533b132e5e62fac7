/**
 * The queues a request queue comes with, declared the same way by `kmj submit` and `kmj worker`:
 *
 * - `<queue>`: a durable quorum queue. Its `x-delivery-limit` dead-letters a message the broker
 *   has delivered too often (a worker killed mid-run, again and again) to `<queue>.dead`, so a
 *   poison message cannot loop forever.
 * - `<queue>.dead`: a durable quorum queue where dead-lettered requests wait, with the reason in
 *   their headers (the worker's own dead-letters) or in `x-death` (the broker's).
 *
 * Declaring is idempotent for the same arguments; a queue declared before with other arguments
 * makes the broker refuse (PRECONDITION_FAILED), which the caller reports.
 */
import type { Channel } from 'amqplib';

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

/** Declares a dead-letter queue (a durable quorum queue). */
export async function declareDeadLetterQueue(ch: Channel, queue: string): Promise<void> {
  await ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
}

export async function declareRequestTopology(ch: Channel, queue: string, options: TopologyOptions): Promise<void> {
  await declareDeadLetterQueue(ch, options.deadLetterQueue);
  await ch.assertQueue(queue, { durable: true, arguments: requestQueueArguments(options) });
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
  return String(headers?.[DEAD_LETTER_HEADERS.reason] ?? 'dead-lettered by the broker');
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
