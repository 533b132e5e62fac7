/**
 * Reads a queue through RabbitMQ's HTTP management API (`GET /api/queues/{vhost}/{name}`). These
 * figures are sampled by the management plugin (every `collect_statistics_interval`, 5 s by
 * default), so they lag the queue; in exchange they include unacknowledged messages and the
 * publish and deliver rates that AMQP cannot give.
 */
import { raceAbort } from '../common/abort.ts';
import { BacklogNotFoundError, BacklogUnavailableError, messageOf } from '../common/errors.ts';

export interface ManagementQueueStats {
  readonly ready: number;
  readonly unacked: number;
  readonly consumers: number;
  /** Messages per second published into the queue, averaged by the plugin. */
  readonly publishRate: number;
  /** Messages per second delivered or fetched from the queue. */
  readonly deliverRate: number;
}

export interface ManagementReaderOptions {
  /** http(s):// base URL of the management API; credentials in it become Basic auth. */
  readonly url: string;
}

export class ManagementQueueReader {
  readonly #base: string;
  readonly #authorization: string | undefined;

  constructor(options: ManagementReaderOptions) {
    const u = new URL(options.url);
    this.#authorization =
      u.username !== ''
        ? `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`
        : undefined;
    u.username = '';
    u.password = '';
    this.#base = u.toString().replace(/\/+$/, '');
  }

  async read(vhost: string, queue: string, signal: AbortSignal): Promise<ManagementQueueStats> {
    const url = `${this.#base}/api/queues/${encodeURIComponent(vhost)}/${encodeURIComponent(queue)}`;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#authorization) headers['authorization'] = this.#authorization;
    let res: Response;
    try {
      res = await raceAbort(fetch(url, { headers, signal }), signal);
    } catch (err) {
      throw new BacklogUnavailableError(`management API did not answer for queue ${JSON.stringify(queue)}: ${messageOf(err)}`, {
        cause: err,
      });
    }
    if (res.status === 404) {
      await res.body?.cancel();
      throw new BacklogNotFoundError(`queue ${JSON.stringify(queue)} does not exist in vhost ${JSON.stringify(vhost)}`);
    }
    if (!res.ok) {
      await res.body?.cancel();
      const hint = res.status === 401 || res.status === 403 ? " (check the connection credentials and the user's monitoring tag)" : '';
      throw new BacklogUnavailableError(`management API answered HTTP ${res.status} for queue ${JSON.stringify(queue)}${hint}`);
    }
    let body: unknown;
    try {
      body = await raceAbort(res.json(), signal);
    } catch (err) {
      throw new BacklogUnavailableError(`management API sent an unreadable answer for queue ${JSON.stringify(queue)}: ${messageOf(err)}`, {
        cause: err,
      });
    }
    return parseQueueStats(body, queue);
  }
}

function numberAt(obj: unknown, ...path: string[]): number | undefined {
  let cur: unknown = obj;
  for (const key of path) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return typeof cur === 'number' && Number.isFinite(cur) ? cur : undefined;
}

/** Extracts the figures; a queue the plugin has not sampled yet lacks them and is UNAVAILABLE. */
export function parseQueueStats(body: unknown, queue: string): ManagementQueueStats {
  const ready = numberAt(body, 'messages_ready');
  const unacked = numberAt(body, 'messages_unacknowledged');
  const consumers = numberAt(body, 'consumers');
  if (ready === undefined || unacked === undefined || consumers === undefined) {
    throw new BacklogUnavailableError(`management statistics for queue ${JSON.stringify(queue)} are not available yet`);
  }
  return {
    ready,
    unacked,
    consumers,
    publishRate: numberAt(body, 'message_stats', 'publish_details', 'rate') ?? 0,
    deliverRate: numberAt(body, 'message_stats', 'deliver_get_details', 'rate') ?? 0,
  };
}
