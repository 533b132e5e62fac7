/**
 * The broker users of a deployment and what each may do (docs/deploy.md gives the same list, and
 * test/worker/rabbitmq4.test.ts checks that these are enough against a real broker):
 *
 * - the scaler's: access to the vhost and nothing else: a passive queue declare is answered for a
 *   user with empty configure, write and read patterns;
 * - the worker's: configure and read the request queue and its dead-letter queue (it declares them
 *   when they are missing, and consumes), write them and `amq.default` (it publishes dead letters
 *   through the default exchange, which RabbitMQ checks as `amq.default`).
 *
 * Made through the management API with an administrator's credentials (`kmj setup`), idempotent:
 * a user that exists gets the password and permissions given.
 */
import { raceAbort } from '../common/abort.ts';
import { messageOf } from '../common/errors.ts';

export interface Permissions {
  readonly configure: string;
  readonly write: string;
  readonly read: string;
}

export const SCALER_PERMISSIONS: Permissions = { configure: '^$', write: '^$', read: '^$' };

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** What the worker's user may do on one request queue and its dead-letter queue, `<queue>.dead`. */
export function workerPermissions(queue: string): Permissions {
  const q = escapeRegex(queue);
  return { configure: `^${q}(\\.dead)?$`, write: `^(amq\\.default|${q}(\\.dead)?)$`, read: `^${q}(\\.dead)?$` };
}

/** Thrown when the management API refuses or cannot be reached; `retryable` while it may be starting. */
export class ManagementError extends Error {
  override readonly name = 'ManagementError';
  readonly retryable: boolean;
  constructor(message: string, retryable: boolean, options?: ErrorOptions) {
    super(message, options);
    this.retryable = retryable;
  }
}

export interface ManagementClientOptions {
  /** http(s):// base URL of the management API; credentials in it become Basic auth. */
  readonly url: string;
  /** Overrides the URL's credentials (a password that would need escaping in a URL). */
  readonly username?: string;
  readonly password?: string;
}

/** The management API calls `kmj setup` makes, as an administrator. */
export class ManagementClient {
  readonly #base: string;
  readonly #authorization: string | undefined;

  constructor(options: ManagementClientOptions) {
    const u = new URL(options.url);
    const user = options.username ?? (u.username !== '' ? decodeURIComponent(u.username) : undefined);
    const pass = options.password ?? decodeURIComponent(u.password);
    this.#authorization = user !== undefined ? `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` : undefined;
    u.username = '';
    u.password = '';
    this.#base = u.toString().replace(/\/+$/, '');
  }

  /** The user exists, with this password, no tags, and these permissions on `vhost`. */
  async ensureUser(name: string, password: string, vhost: string, permissions: Permissions, signal: AbortSignal): Promise<void> {
    await this.#put(`users/${encodeURIComponent(name)}`, { password, tags: '' }, `user ${JSON.stringify(name)}`, signal);
    await this.#put(
      `permissions/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}`,
      permissions,
      `permissions of ${JSON.stringify(name)}`,
      signal,
    );
  }

  async #put(path: string, body: unknown, what: string, signal: AbortSignal): Promise<void> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.#authorization) headers['authorization'] = this.#authorization;
    let res: Response;
    try {
      res = await raceAbort(fetch(`${this.#base}/api/${path}`, { method: 'PUT', headers, body: JSON.stringify(body), signal }), signal);
    } catch (err) {
      throw new ManagementError(`RabbitMQ's management API at ${this.#base} did not answer: ${messageOf(err)}`, true, { cause: err });
    }
    const text = await res.text();
    if (res.ok) return;
    if (res.status === 401 || res.status === 403) {
      throw new ManagementError(
        `RabbitMQ's management API refused the administrator's credentials (HTTP ${res.status}) setting ${what}`,
        false,
      );
    }
    // 5xx while the node starts (or a 503 from a proxy in front of it): worth another try.
    throw new ManagementError(
      `RabbitMQ's management API answered HTTP ${res.status} setting ${what}: ${text.slice(0, 300)}`,
      res.status >= 500,
    );
  }
}
