/**
 * Reads queue depth and consumer count over AMQP 0-9-1 with a passive queue declare
 * (`queue.declare` with passive=true). The broker answers from the queue process itself, so the
 * figures are real time, unlike the management API's sampled statistics. A passive declare of a
 * missing queue fails with 404 NOT_FOUND and closes the channel it ran on, never the connection.
 *
 * `checkQueues`: one look at a few queues on a connection the caller owns (the worker at start,
 * `kmj status`).
 *
 * `AmqpQueueInspector`: the scaler's long-lived reader. One connection per broker URL (connection
 * alias + vhost), a bounded pool of channels; a channel a 404 closed is thrown away and the next
 * read opens a fresh one, so every other queue keeps being served. When the connection drops, reads fail at once with UNAVAILABLE while reconnects run with
 * capped exponential backoff; the first read after the broker's return reconnects.
 */
import { connect, type Channel, type ChannelModel } from 'amqplib';
import type { Logger } from '../common/log.ts';
import { raceAbort } from '../common/abort.ts';
import { displayUrl } from '../common/redact.ts';
import { BacklogNotFoundError, BacklogUnavailableError, messageOf } from '../common/errors.ts';
import { AMQP_REPLY, replyCodeOf } from './reply-codes.ts';

export interface QueueDeclareOk {
  readonly messageCount: number;
  readonly consumerCount: number;
}

export interface AmqpInspectorOptions {
  /** amqp(s):// URL with credentials and vhost. Never logged as given. */
  readonly url: string;
  /** The vhost the URL selects, for messages. */
  readonly vhost: string;
  /** Channels open at once on the connection; bounds concurrent declares. */
  readonly maxChannels: number;
  readonly connectTimeoutMs: number;
  /** First reconnect delay; doubles after each failure up to `maxBackoffMs`. */
  readonly minBackoffMs: number;
  readonly maxBackoffMs: number;
  /** AMQP heartbeat; detects a broker that stopped answering without closing the socket. */
  readonly heartbeatSeconds: number;
  readonly log: Logger;
}

/** 404 NOT_FOUND: what the broker answers a passive declare of a queue that does not exist. */
export function isNotFound(err: unknown): boolean {
  return replyCodeOf(err) === AMQP_REPLY.NOT_FOUND;
}

/**
 * Each queue's counts, or undefined for a queue that does not exist. The usual case, every queue
 * there, costs one channel; only after a 404 (which closes it) is each queue looked at on a
 * channel of its own.
 */
export async function checkQueues(conn: ChannelModel, queues: readonly string[]): Promise<Map<string, QueueDeclareOk | undefined>> {
  const found = new Map<string, QueueDeclareOk | undefined>();
  const look = async (names: readonly string[]): Promise<void> => {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined); // a 404 closes this channel; that is the answer
    for (const q of names) {
      const ok = await ch.checkQueue(q);
      found.set(q, { messageCount: ok.messageCount, consumerCount: ok.consumerCount });
    }
    await ch.close();
  };
  try {
    await look(queues);
    return found;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  for (const q of queues) {
    try {
      await look([q]);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      found.set(q, undefined);
    }
  }
  return found;
}

interface Waiter {
  resolve: (ch: Channel) => void;
  reject: (err: Error) => void;
}

export class AmqpQueueInspector {
  readonly #options: AmqpInspectorOptions;
  readonly #log: Logger;
  #connection: ChannelModel | undefined;
  #connecting: Promise<ChannelModel> | undefined;
  #backoffMs: number;
  #nextAttemptAt = 0;
  #lastFailure: Error | undefined;
  #idle: Channel[] = [];
  #open = 0;
  #waiters: Waiter[] = [];
  #closed = false;

  constructor(options: AmqpInspectorOptions) {
    this.#options = options;
    this.#backoffMs = options.minBackoffMs;
    this.#log = options.log.child({ broker: displayUrl(options.url) });
  }

  /** Passive-declares `queue`: NOT_FOUND when it does not exist, UNAVAILABLE when the broker can't answer. */
  async inspect(queue: string, signal: AbortSignal): Promise<QueueDeclareOk> {
    const conn = await this.#getConnection(signal);
    const ch = await this.#acquire(conn, signal);
    let reusable = false;
    try {
      const ok = await raceAbort(ch.checkQueue(queue), signal);
      reusable = true;
      return { messageCount: ok.messageCount, consumerCount: ok.consumerCount };
    } catch (err) {
      if (isNotFound(err)) {
        throw new BacklogNotFoundError(`queue ${JSON.stringify(queue)} does not exist in vhost ${JSON.stringify(this.#options.vhost)}`, {
          cause: err,
        });
      }
      if (signal.aborted) {
        throw new BacklogUnavailableError(`broker did not answer the passive declare of queue ${JSON.stringify(queue)} in time`, {
          cause: err,
        });
      }
      throw new BacklogUnavailableError(`passive declare of queue ${JSON.stringify(queue)} failed: ${messageOf(err)}`, { cause: err });
    } finally {
      this.#release(conn, ch, reusable);
    }
  }

  /** Closes the connection and fails every waiting read. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w.reject(new BacklogUnavailableError('scaler is shutting down'));
    this.#idle = [];
    const conn = this.#connection;
    this.#connection = undefined;
    if (conn) await conn.close().catch((err: unknown) => this.#log.debug({ err }, 'error closing broker connection'));
  }

  async #getConnection(signal: AbortSignal): Promise<ChannelModel> {
    if (this.#closed) throw new BacklogUnavailableError('scaler is shutting down');
    if (this.#connection) return this.#connection;
    if (!this.#connecting) {
      const wait = this.#nextAttemptAt - Date.now();
      if (wait > 0) {
        if (this.#lastFailure instanceof BacklogNotFoundError) throw this.#lastFailure;
        throw new BacklogUnavailableError(
          `cannot reach the broker (${this.#lastFailure?.message ?? 'connection lost'}); next attempt in ${wait} ms`,
        );
      }
      this.#connecting = this.#connect().finally(() => {
        this.#connecting = undefined;
      });
    }
    return raceAbort(this.#connecting, signal).catch((err: unknown) => {
      if (err instanceof BacklogUnavailableError || err instanceof BacklogNotFoundError) throw err;
      throw new BacklogUnavailableError(`cannot reach the broker: ${messageOf(err)}`, { cause: err });
    });
  }

  async #connect(): Promise<ChannelModel> {
    const url = withHeartbeat(this.#options.url, this.#options.heartbeatSeconds);
    try {
      const conn = await connect(url, {
        timeout: this.#options.connectTimeoutMs,
        noDelay: true,
        clientProperties: { connection_name: 'kmj-scaler' },
      });
      if (this.#closed) {
        await conn.close().catch(() => undefined); // closed while connecting: nobody owns this connection
        throw new BacklogUnavailableError('scaler is shutting down');
      }
      conn.on('error', (err: unknown) => this.#log.warn({ err }, 'broker connection error'));
      conn.on('close', () => this.#onConnectionClosed(conn));
      this.#connection = conn;
      this.#backoffMs = this.#options.minBackoffMs;
      this.#nextAttemptAt = 0;
      this.#lastFailure = undefined;
      this.#log.info('broker connection open');
      return conn;
    } catch (err) {
      // The broker answers connection.open for a vhost that does not exist, or that the user may not
      // use, with connection.close (530 NOT_ALLOWED); amqplib reports it without the reply text.
      const failure = /Expected ConnectionOpenOk; got <ConnectionClose/.test(messageOf(err))
        ? new BacklogNotFoundError(`vhost ${JSON.stringify(this.#options.vhost)} does not exist or the connection's user may not use it`, {
            cause: err,
          })
        : new BacklogUnavailableError(`cannot reach the broker: ${messageOf(err)}`, { cause: err });
      this.#lastFailure = failure;
      this.#nextAttemptAt = Date.now() + this.#backoffMs;
      this.#log.warn({ err, retryInMs: this.#backoffMs }, 'broker connection failed');
      this.#backoffMs = Math.min(this.#backoffMs * 2, this.#options.maxBackoffMs);
      throw failure;
    }
  }

  #onConnectionClosed(conn: ChannelModel): void {
    if (this.#connection !== conn) return;
    this.#connection = undefined;
    this.#idle = [];
    this.#open = 0;
    // Reconnect on the next read, after the minimum backoff so a flapping broker isn't hammered.
    this.#nextAttemptAt = Date.now() + this.#backoffMs;
    this.#lastFailure = new BacklogUnavailableError('broker connection closed');
    for (const w of this.#waiters.splice(0)) w.reject(new BacklogUnavailableError('broker connection closed'));
    if (!this.#closed) this.#log.warn('broker connection closed');
  }

  async #acquire(conn: ChannelModel, signal: AbortSignal): Promise<Channel> {
    const idle = this.#idle.pop();
    if (idle) return idle;
    if (this.#open < this.#options.maxChannels) {
      this.#open++;
      try {
        const ch = await raceAbort(conn.createChannel(), signal);
        // A failed passive declare makes the broker close the channel; amqplib then emits 'error'.
        ch.on('error', (err: unknown) => this.#log.debug({ err }, 'channel closed by broker'));
        return ch;
      } catch (err) {
        this.#open--;
        throw new BacklogUnavailableError(`cannot open a channel: ${messageOf(err)}`, { cause: err });
      }
    }
    return new Promise<Channel>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (ch) => {
          signal.removeEventListener('abort', onAbort);
          resolve(ch);
        },
        reject: (err) => {
          signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      const onAbort = (): void => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new BacklogUnavailableError('no channel became free in time'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  #release(conn: ChannelModel, ch: Channel, reusable: boolean): void {
    if (conn !== this.#connection) return; // the connection is gone and with it every channel
    if (reusable) {
      const waiter = this.#waiters.shift();
      if (waiter) waiter.resolve(ch);
      else this.#idle.push(ch);
      return;
    }
    // The channel may be closed by the broker (404) or hold a late reply (timeout): never reuse it.
    this.#open--;
    ch.close().catch(() => undefined); // already closed by the broker in the common case
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.#acquire(conn, AbortSignal.timeout(this.#options.connectTimeoutMs)).then(waiter.resolve, waiter.reject);
    }
  }
}

function withHeartbeat(url: string, seconds: number): string {
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(seconds));
  return u.toString();
}
