/**
 * A request queue as a person asks about it (`kmj status`): ready messages and consumers in real
 * time over AMQP (passive declares, what the scaler reads), the unacknowledged count from the
 * management API (the only source of it), and the dead-letter queue's depth. When AMQP cannot be
 * read, the management API's sampled figures stand in, said to be such and why.
 */
import { raceAbort } from '../common/abort.ts';
import { BacklogNotFoundError, NotFoundError } from '../common/errors.ts';
import { messageOf } from '../common/redact.ts';
import { checkQueues } from './inspect.ts';
import { ManagementQueueReader } from './management.ts';
import { defaultManagementUrl, vhostOf } from './settings.ts';
import { deadLetterQueueOf, onConnectionTo } from './topology.ts';

/**
 * The queue as RabbitMQ reports it. `ready` and `consumers` come from AMQP (a passive declare:
 * real time, what the scaler reads) unless AMQP failed; `unacked` only from the management API,
 * whose statistics are sampled (every 5 s by default) and so lag the queue.
 */
export interface QueueStatus {
  readonly source: 'amqp' | 'management';
  readonly ready: number;
  readonly consumers: number;
  readonly unacked?: number;
  readonly deadLettered?: number;
  /** Why a figure is missing or came from the lagging source. */
  readonly note?: string;
}

export interface QueueStatusSource {
  /** amqp(s):// URL with credentials and vhost. */
  readonly url: string;
  /** The management API; default: derived from `url` (`defaultManagementUrl`). */
  readonly managementUrl?: string | undefined;
  /** Bound of the whole reading (5 s). */
  readonly timeoutMs?: number;
}

/** Reads `queue` and its dead-letter queue; throws BacklogNotFoundError when the queue does not exist. */
export async function readQueueStatus(source: QueueStatusSource, queue: string): Promise<QueueStatus> {
  const dead = deadLetterQueueOf(queue);
  const signal = AbortSignal.timeout(source.timeoutMs ?? 5000);
  const sampled = (async () => {
    const mgmt = new ManagementQueueReader({ url: source.managementUrl ?? defaultManagementUrl(source.url) });
    const vhost = vhostOf(source.url);
    const q = await mgmt.read(vhost, queue, signal);
    const d = await mgmt.read(vhost, dead, signal).catch(() => undefined); // no dead-letter queue: its figure is left out
    return { q, d };
  })();
  sampled.catch(() => undefined); // awaited below
  let amqp: { ready: number; consumers: number; deadLettered?: number };
  try {
    amqp = await readAmqp(source.url, queue, dead, signal);
  } catch (err) {
    if (err instanceof NotFoundError) throw err;
    // No AMQP answer: the management API's sampled figures, said to be such, and why.
    const m = await sampled.catch((mgmtErr: unknown) => {
      throw new Error(`AMQP: ${messageOf(err)}; management API: ${messageOf(mgmtErr)}`);
    });
    return {
      source: 'management',
      ready: m.q.ready,
      consumers: m.q.consumers,
      unacked: m.q.unacked,
      ...(m.d ? { deadLettered: m.d.ready + m.d.unacked } : {}),
      note: `AMQP failed (${messageOf(err)}): management statistics, up to 5 s old`,
    };
  }
  const m = await sampled.catch((mgmtErr: unknown) => messageOf(mgmtErr));
  if (typeof m === 'string') return { source: 'amqp', ...amqp, note: `unacknowledged: n/a (management API: ${m})` };
  return { source: 'amqp', ...amqp, unacked: m.q.unacked };
}

/** Ready messages and consumers of `queue`, and the dead-letter queue's depth, by passive declares. */
async function readAmqp(
  url: string,
  queue: string,
  dead: string,
  signal: AbortSignal,
): Promise<{ ready: number; consumers: number; deadLettered?: number }> {
  return onConnectionTo(
    url,
    signal,
    async (conn) => {
      const found = await raceAbort(checkQueues(conn, [queue, dead]), signal);
      const q = found.get(queue);
      if (!q) throw new BacklogNotFoundError(`queue ${JSON.stringify(queue)}: not found in vhost ${JSON.stringify(vhostOf(url))}`);
      const d = found.get(dead);
      return { ready: q.messageCount, consumers: q.consumerCount, ...(d ? { deadLettered: d.messageCount } : {}) };
    },
    5000,
  );
}
