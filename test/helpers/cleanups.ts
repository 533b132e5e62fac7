/**
 * What a test started or made (worker processes, servers, proxies, queues, temp directories),
 * undone after it, last first, whatever happened. Use one per test file:
 * `const cleanups = new Cleanups(); afterEach(() => cleanups.run());`
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'amqplib';
import { deadLetterQueueOf } from '../../rabbitmq/topology.ts';
import { RABBITMQ_URL } from './env.ts';
import { requestQueue } from './worker.ts';

export class Cleanups {
  #undo: Array<() => Promise<void> | void> = [];

  defer(undo: () => Promise<void> | void): void {
    this.#undo.push(undo);
  }

  /** Runs every undo step, even when one fails; throws the first failure afterwards. */
  async run(): Promise<void> {
    let first: unknown;
    for (const undo of this.#undo.splice(0).reverse()) {
      try {
        await undo();
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first instanceof Error ? first : new Error('a cleanup failed', { cause: first });
  }

  /** A request queue with its dead-letter queue (as the worker declares them), deleted after the test. */
  async requestQueue(maxDeliveries?: number): Promise<string> {
    const queue = await requestQueue(maxDeliveries);
    this.defer(() => deleteQueues([queue, deadLetterQueueOf(queue)]));
    return queue;
  }

  /** A fresh directory under the temp dir (one of the test worker's dataset roots), removed after the test. */
  tempDir(prefix: string): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.defer(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }
}

/** Deletes queues (missing ones are fine), for a test's cleanups. */
export async function deleteQueues(queues: readonly string[]): Promise<void> {
  const conn = await connect(RABBITMQ_URL);
  try {
    const ch = await conn.createChannel();
    for (const q of queues) await ch.deleteQueue(q);
  } finally {
    await conn.close();
  }
}
