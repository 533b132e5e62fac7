/**
 * A TCP proxy on 127.0.0.1:0 in front of the real RabbitMQ that cuts the client's stream of AMQP
 * frames at exact points, for the timing a test cannot get by racing the broker:
 *
 * - `stall()`: the broker "stops reading", as one under a resource alarm or flow control does:
 *   every frame the client sends from then on is read and dropped except heartbeats, so the
 *   connection stays alive (both sides keep seeing heartbeats) while nothing the client asks for
 *   is ever answered.
 * - `pauseBeforePublish(n)`: the client's frames are held from its (n+1)-th basic.publish on, until
 *   `resume()` sends them on in order; meanwhile the test can change the broker (delete a queue)
 *   between two messages of one batch.
 *
 * The broker's frames always reach the client. Frames are cut at their boundaries, so the broker
 * always sees a well-formed stream. Not a mock: the real broker stays behind it.
 */
import { connect as tcpConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** AMQP 0-9-1 frame: type (1 byte), channel (2), payload size (4), payload, frame-end 0xCE. */
const FRAME_HEADER_BYTES = 7;
const FRAME_METHOD = 1;
const FRAME_HEARTBEAT = 8;
/** basic.publish: class 60, method 40. */
const BASIC_CLASS = 60;
const PUBLISH_METHOD = 40;
/** "AMQP" 0 0 9 1: the protocol header the client sends first. */
const PROTOCOL_HEADER_BYTES = 8;

export class AmqpFaultProxy {
  readonly #server: Server;
  readonly #target: URL;
  readonly #sockets = new Set<Socket>();
  #stalled = false;
  #dropped = 0;
  #publishes = 0;
  #pauseAt = Number.POSITIVE_INFINITY;
  #held: Array<{ upstream: Socket; frame: Buffer }> = [];
  #port = 0;

  private constructor(target: string) {
    this.#target = new URL(target);
    this.#server = createServer((client) => this.#handle(client));
  }

  /** Starts a proxy to the broker of `amqpUrl`. */
  static async start(amqpUrl: string): Promise<AmqpFaultProxy> {
    const p = new AmqpFaultProxy(amqpUrl);
    await new Promise<void>((resolve, reject) => {
      p.#server.once('error', reject);
      p.#server.listen(0, '127.0.0.1', () => resolve());
    });
    p.#port = (p.#server.address() as AddressInfo).port;
    return p;
  }

  /** The broker URL through the proxy (credentials and vhost of the target kept). */
  get url(): string {
    const u = new URL(this.#target.toString());
    u.hostname = '127.0.0.1';
    u.port = String(this.#port);
    return u.toString();
  }

  /** From now on the broker gets nothing but heartbeats. */
  stall(): void {
    this.#stalled = true;
  }

  /** Frames dropped since `stall()`. */
  get dropped(): number {
    return this.#dropped;
  }

  /** basic.publish frames sent on to the broker so far (all connections). */
  get publishes(): number {
    return this.#publishes;
  }

  /** Holds every client frame from the (n+1)-th basic.publish on (heartbeats still pass). */
  pauseBeforePublish(n: number): void {
    this.#pauseAt = n;
  }

  /** Sends the held frames on, in order, and stops holding. */
  resume(): void {
    this.#pauseAt = Number.POSITIVE_INFINITY;
    const held = this.#held.splice(0);
    for (const h of held) h.upstream.write(h.frame);
  }

  /** Frames held since the pause began. */
  get held(): number {
    return this.#held.length;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #handle(client: Socket): void {
    const upstream = tcpConnect({ host: this.#target.hostname, port: Number(this.#target.port || 5672) });
    for (const s of [client, upstream]) {
      this.#sockets.add(s);
      s.once('close', () => this.#sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
    upstream.pipe(client);
    let pending = Buffer.alloc(0);
    let headerSeen = false;
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!headerSeen) {
        if (pending.length < PROTOCOL_HEADER_BYTES) return;
        upstream.write(pending.subarray(0, PROTOCOL_HEADER_BYTES));
        pending = pending.subarray(PROTOCOL_HEADER_BYTES);
        headerSeen = true;
      }
      for (;;) {
        if (pending.length < FRAME_HEADER_BYTES) return;
        const size = pending.readUInt32BE(3);
        const total = FRAME_HEADER_BYTES + size + 1;
        if (pending.length < total) return;
        const frame = Buffer.from(pending.subarray(0, total));
        pending = pending.subarray(total);
        this.#frame(upstream, frame);
      }
    });
  }

  #frame(upstream: Socket, frame: Buffer): void {
    if (frame[0] === FRAME_HEARTBEAT) {
      upstream.write(frame);
      return;
    }
    if (this.#stalled) {
      this.#dropped++;
      return;
    }
    const isPublish =
      frame[0] === FRAME_METHOD &&
      frame.length >= FRAME_HEADER_BYTES + 4 &&
      frame.readUInt16BE(FRAME_HEADER_BYTES) === BASIC_CLASS &&
      frame.readUInt16BE(FRAME_HEADER_BYTES + 2) === PUBLISH_METHOD;
    if (this.#held.length > 0 || (isPublish && this.#publishes >= this.#pauseAt)) {
      this.#held.push({ upstream, frame });
      return;
    }
    if (isPublish) this.#publishes++;
    upstream.write(frame);
  }
}
