/** Real-RabbitMQ helpers: unique queues per test, publishing, consumers that hold messages. */
import { randomUUID } from 'node:crypto';
import { connect, type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { RABBITMQ_URL } from './env.ts';

/** `<prefix>-<8 hex digits>`: one word after the prefix, so metric names built from it keep their shape. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

export class RabbitFixture {
  #conns: ChannelModel[] = [];
  #queues = new Set<string>();
  readonly url: string;

  constructor(url = RABBITMQ_URL) {
    this.url = url;
  }

  async channel(): Promise<Channel> {
    const conn = await connect(this.url);
    conn.on('error', () => undefined);
    this.#conns.push(conn);
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    return ch;
  }

  #admin: Promise<Channel> | undefined;

  /** Declares a durable queue owned by this fixture, deleted in `close`. */
  async queue(prefix = 'q', args: Record<string, unknown> = {}): Promise<string> {
    const name = uniqueName(prefix);
    this.#admin ??= this.channel();
    await (await this.#admin).assertQueue(name, { durable: true, arguments: args });
    this.#queues.add(name);
    return name;
  }

  async publish(queue: string, count: number, body: (i: number) => string = (i) => `m${i}`): Promise<void> {
    const conn = await connect(this.url);
    try {
      const ch = await conn.createConfirmChannel();
      for (let i = 0; i < count; i++) ch.sendToQueue(queue, Buffer.from(body(i)), { persistent: true });
      await ch.waitForConfirms();
    } finally {
      await conn.close();
    }
  }

  /**
   * Opens `count` consumers with prefetch 1, each on its own connection, and resolves once each
   * holds one unacknowledged message (as a running worker does).
   */
  async holdingConsumers(queue: string, count: number): Promise<{ release: () => Promise<void> }> {
    const held: Array<{ ch: Channel; msg: ConsumeMessage; conn: ChannelModel }> = [];
    await Promise.all(
      Array.from({ length: count }, async () => {
        const conn = await connect(this.url);
        conn.on('error', () => undefined);
        this.#conns.push(conn);
        const ch = await conn.createChannel();
        await ch.prefetch(1);
        await new Promise<void>((resolve) => {
          void ch.consume(queue, (msg) => {
            if (msg) {
              held.push({ ch, msg, conn });
              resolve();
            }
          });
        });
      }),
    );
    return {
      release: async () => {
        for (const h of held) h.ch.nack(h.msg, false, true);
        await Promise.all(held.map((h) => h.conn.close().catch(() => undefined)));
      },
    };
  }

  /** Opens idle consumers (no message held). */
  async idleConsumers(queue: string, count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const ch = await this.channel();
      await ch.prefetch(1);
      await ch.consume(queue, () => undefined);
    }
  }

  async close(): Promise<void> {
    this.#admin = undefined;
    for (const c of this.#conns) await c.close().catch(() => undefined);
    this.#conns = [];
    if (this.#queues.size > 0) {
      const conn = await connect(this.url).catch(() => undefined);
      if (conn) {
        conn.on('error', () => undefined);
        for (const q of this.#queues) {
          const ch = await conn.createChannel().catch(() => undefined);
          await ch?.deleteQueue(q).catch(() => undefined);
        }
        await conn.close().catch(() => undefined);
      }
    }
    this.#queues.clear();
  }
}
