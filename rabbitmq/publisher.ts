/**
 * Publishes requests to a request queue the way nothing gets lost: the queue and its dead-letter
 * queue are declared (common/topology.ts), messages are persistent and `mandatory`, and every
 * one is confirmed by the broker (publisher confirms). A message the broker cannot route
 * (basic.return), refuses (basic.nack) or never confirms fails the publish, loudly.
 */
import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { raceAbort } from '../common/abort.ts';
import { messageOf, scrubSecrets } from '../common/redact.ts';
import { checkQueues } from './inspect.ts';
import { AMQP_REPLY, replyCodeOf } from './reply-codes.ts';
import { DIRECT_REPLY_TO, declareRequestTopology, deadLetterQueueOf, parseOutcomeNotice, type OutcomeNotice } from './topology.ts';

export class PublishError extends Error {
  override readonly name = 'PublishError';
  /** Request ids of the failed batch that the broker did confirm: they are in the queue. */
  readonly confirmed: readonly string[];
  constructor(message: string, options?: ErrorOptions & { confirmed?: readonly string[] }) {
    super(scrubSecrets(message), options);
    this.confirmed = options?.confirmed ?? [];
  }
}

export interface PublisherOptions {
  readonly url: string;
  readonly queue: string;
  readonly maxDeliveries: number;
  /** How long to wait for the broker's confirms of one batch. */
  readonly confirmTimeoutMs: number;
  /**
   * Ask workers for their outcome notices (RabbitMQ direct reply-to): messages carry reply-to,
   * and `outcome()` hands out what comes back while the publisher stays open.
   */
  readonly replies?: boolean;
}

export class RequestPublisher {
  readonly #options: PublisherOptions;
  #conn: ChannelModel | undefined;
  #ch: ConfirmChannel | undefined;
  #failure: Error | undefined;
  #returned: string[] = [];
  readonly #notices = new Map<string, OutcomeNotice>();

  constructor(options: PublisherOptions) {
    this.#options = options;
  }

  /** Consumers of the queue now (a passive declare on the open connection); undefined when unknown. */
  async consumers(): Promise<number | undefined> {
    if (!this.#conn) return undefined;
    try {
      return (await checkQueues(this.#conn, [this.#options.queue])).get(this.#options.queue)?.consumerCount;
    } catch {
      return undefined;
    }
  }

  async open(): Promise<void> {
    const o = this.#options;
    try {
      this.#conn = await connect(o.url, { timeout: 10_000, noDelay: true, clientProperties: { connection_name: 'kmj submit' } });
    } catch (err) {
      throw new PublishError(`cannot reach the broker: ${messageOf(err)}`, { cause: err });
    }
    this.#conn.on('error', (err: unknown) => {
      this.#failure ??= err instanceof Error ? err : new Error(String(err));
    });
    const ch = await this.#conn.createConfirmChannel();
    ch.on('error', (err: unknown) => {
      this.#failure ??= err instanceof Error ? err : new Error(String(err));
    });
    ch.on('close', () => {
      this.#failure ??= new Error('the channel was closed');
    });
    ch.on('return', (msg: { properties: { messageId?: string } }) => {
      this.#returned.push(msg.properties.messageId ?? '(no id)');
    });
    if (o.replies) {
      // Direct reply-to: the consumer must exist, on this channel, before the first publish.
      await ch.consume(
        DIRECT_REPLY_TO,
        (m) => {
          const notice = m ? parseOutcomeNotice(m.content) : undefined;
          if (m && notice) this.#notices.set(String(m.properties.correlationId ?? notice.requestId), notice);
        },
        { noAck: true },
      );
    }
    try {
      await declareRequestTopology(this.#conn, o.queue, { deadLetterQueue: deadLetterQueueOf(o.queue), maxDeliveries: o.maxDeliveries });
    } catch (err) {
      const detail = messageOf(err);
      const hint =
        replyCodeOf(err) === AMQP_REPLY.PRECONDITION_FAILED
          ? ` (queue ${JSON.stringify(o.queue)} exists with other arguments; kmj expects a quorum queue with x-delivery-limit and a dead-letter queue)`
          : '';
      throw new PublishError(`cannot declare queue ${JSON.stringify(o.queue)}: ${detail}${hint}`, { cause: err });
    }
    this.#ch = ch;
  }

  /**
   * Publishes a batch and waits until the broker has confirmed all of it; returns the ids in
   * batch order. Throws PublishError naming the request ids that were not routed, refused or not
   * confirmed, and carrying those that were. `signal` (Ctrl-C) stops the wait at once.
   */
  async publish(batch: ReadonlyArray<{ readonly requestId: string; readonly body: Buffer }>, signal: AbortSignal): Promise<string[]> {
    const ch = this.#ch;
    if (!ch) throw new PublishError('the publisher is not open');
    const o = this.#options;
    this.#returned = [];
    const acked = new Set<string>();
    const nacked: string[] = [];
    const pending: Array<Promise<void>> = [];
    for (const item of batch) {
      if (this.#failure) break;
      pending.push(
        new Promise<void>((resolve) => {
          ch.sendToQueue(
            o.queue,
            item.body,
            {
              persistent: true,
              mandatory: true,
              contentType: 'application/json',
              messageId: item.requestId,
              timestamp: Math.floor(Date.now() / 1000),
              appId: 'kmj',
              ...(o.replies ? { replyTo: DIRECT_REPLY_TO } : {}),
            },
            (err) => {
              if (err) nacked.push(item.requestId);
              else acked.add(item.requestId);
              resolve();
            },
          );
        }),
      );
    }
    // A returned message is confirmed too (it was "handled": dropped): it is not in the queue.
    const confirmed = (): string[] => batch.map((b) => b.requestId).filter((id) => acked.has(id) && !this.#returned.includes(id));
    try {
      await raceAbort(Promise.all(pending), AbortSignal.any([signal, AbortSignal.timeout(o.confirmTimeoutMs)]));
    } catch (err) {
      const why = signal.aborted
        ? 'interrupted while waiting for the broker to confirm'
        : `the broker did not confirm ${batch.length - acked.size} message(s) within ${o.confirmTimeoutMs} ms`;
      throw new PublishError(`${why}: ${messageOf(this.#failure ?? err)}`, { cause: err, confirmed: confirmed() });
    }
    if (this.#failure) {
      throw new PublishError(`publishing to queue ${JSON.stringify(o.queue)} failed: ${messageOf(this.#failure)}`, {
        cause: this.#failure,
        confirmed: confirmed(),
      });
    }
    // Both can happen in one batch: a queue deleted mid-publish refuses what it had routed and
    // returns what came after.
    const problems: string[] = [];
    if (this.#returned.length > 0)
      problems.push(
        `the broker could not route ${this.#returned.length} message(s) to queue ${JSON.stringify(o.queue)} (does it still exist?): ${this.#returned.join(', ')}`,
      );
    if (nacked.length > 0) problems.push(`the broker refused ${nacked.length} message(s): ${nacked.join(', ')}`);
    if (problems.length > 0) throw new PublishError(problems.join('; '), { confirmed: confirmed() });
    return confirmed();
  }

  /** The latest outcome notice a worker sent for the request, if any (with `replies`). */
  outcome(requestId: string): OutcomeNotice | undefined {
    return this.#notices.get(requestId);
  }

  /** Closes politely, but never waits long: a broker that stopped answering never sends close-ok. */
  async close(): Promise<void> {
    const bound = AbortSignal.timeout(3000);
    await raceAbort(this.#ch?.close() ?? Promise.resolve(), bound).catch(() => undefined); // may already be closed
    await raceAbort(this.#conn?.close() ?? Promise.resolve(), bound).catch(() => undefined);
  }
}
