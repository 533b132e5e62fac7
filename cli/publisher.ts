/**
 * Publishes requests to a request queue the way nothing gets lost: the queue and its dead-letter
 * queue are declared (common/topology.ts), messages are persistent and `mandatory`, and every
 * one is confirmed by the broker (publisher confirms). A message the broker cannot route
 * (basic.return), refuses (basic.nack) or never confirms fails the publish, loudly.
 */
import { connect, type ChannelModel, type ConfirmChannel } from 'amqplib';
import { raceAbort } from '../common/abort.ts';
import { messageOf, scrubSecrets } from '../common/redact.ts';
import { declareRequestTopology, deadLetterQueueOf } from '../common/topology.ts';

export class PublishError extends Error {
  override readonly name = 'PublishError';
  constructor(message: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
  }
}

export interface PublisherOptions {
  readonly url: string;
  readonly queue: string;
  readonly maxDeliveries: number;
  /** How long to wait for the broker's confirms of one batch. */
  readonly confirmTimeoutMs: number;
}

export class RequestPublisher {
  readonly #options: PublisherOptions;
  #conn: ChannelModel | undefined;
  #ch: ConfirmChannel | undefined;
  #failure: Error | undefined;
  #returned: string[] = [];

  constructor(options: PublisherOptions) {
    this.#options = options;
  }

  async open(): Promise<void> {
    const o = this.#options;
    try {
      this.#conn = await connect(o.url, { timeout: 10_000, clientProperties: { connection_name: 'kmj submit' } });
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
    try {
      await declareRequestTopology(ch, o.queue, { deadLetterQueue: deadLetterQueueOf(o.queue), maxDeliveries: o.maxDeliveries });
    } catch (err) {
      const detail = messageOf(err);
      const hint = /PRECONDITION_FAILED/.test(detail) ? ` (queue ${JSON.stringify(o.queue)} exists with other arguments; kmj expects a quorum queue with x-delivery-limit and a dead-letter queue)` : '';
      throw new PublishError(`cannot declare queue ${JSON.stringify(o.queue)}: ${detail}${hint}`, { cause: err });
    }
    this.#ch = ch;
  }

  /**
   * Publishes a batch and waits until the broker has confirmed all of it. Throws PublishError
   * naming the request ids that were not routed, refused or not confirmed.
   */
  async publish(batch: ReadonlyArray<{ readonly requestId: string; readonly body: Buffer }>): Promise<void> {
    const ch = this.#ch;
    if (!ch) throw new PublishError('the publisher is not open');
    const o = this.#options;
    this.#returned = [];
    const nacked: string[] = [];
    const pending: Array<Promise<void>> = [];
    for (const item of batch) {
      if (this.#failure) break;
      pending.push(
        new Promise<void>((resolve) => {
          ch.sendToQueue(o.queue, item.body, { persistent: true, mandatory: true, contentType: 'application/json', messageId: item.requestId, timestamp: Math.floor(Date.now() / 1000), appId: 'kmj' }, (err) => {
            if (err) nacked.push(item.requestId);
            resolve();
          });
        }),
      );
    }
    try {
      await raceAbort(Promise.all(pending), AbortSignal.timeout(o.confirmTimeoutMs));
    } catch (err) {
      throw new PublishError(`the broker did not confirm ${batch.length} message(s) within ${o.confirmTimeoutMs} ms: ${messageOf(this.#failure ?? err)}`, { cause: err });
    }
    if (this.#failure) {
      throw new PublishError(`publishing to queue ${JSON.stringify(o.queue)} failed: ${messageOf(this.#failure)}`, { cause: this.#failure });
    }
    if (this.#returned.length > 0) {
      throw new PublishError(`the broker could not route ${this.#returned.length} message(s) to queue ${JSON.stringify(o.queue)} (does it still exist?): ${this.#returned.join(', ')}`);
    }
    if (nacked.length > 0) throw new PublishError(`the broker refused ${nacked.length} message(s): ${nacked.join(', ')}`);
  }

  async close(): Promise<void> {
    await this.#ch?.close().catch(() => undefined); // may already be closed by the broker
    await this.#conn?.close().catch(() => undefined);
  }
}
