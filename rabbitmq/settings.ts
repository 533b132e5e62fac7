/**
 * Broker settings every component reads the same way: the variables, their defaults, and what is
 * derived from the AMQP URL (its vhost, the management API's address).
 */
import type { FieldSpecs } from '../common/fields.ts';

export const DEFAULT_RABBITMQ_URL = 'amqp://guest:guest@127.0.0.1:5672';

/** RABBITMQ_URL and RABBITMQ_MANAGEMENT_URL, for a component's own settings to spread in. */
export const RABBITMQ_ENV = {
  RABBITMQ_URL: {
    kind: 'url',
    protocols: ['amqp', 'amqps'],
    default: DEFAULT_RABBITMQ_URL,
    help: 'broker (amqp:// or amqps://, credentials and vhost in the URL)',
  },
  RABBITMQ_MANAGEMENT_URL: {
    kind: 'url',
    protocols: ['http', 'https'],
    help: 'management API (default: RABBITMQ_URL host, port 15672, same credentials)',
  },
} as const satisfies FieldSpecs;

/** The vhost an AMQP URL names: its path, "/" when there is none. */
export function vhostOf(amqpUrl: string): string {
  const path = new URL(amqpUrl).pathname;
  return path === '' || path === '/' ? '/' : decodeURIComponent(path.slice(1));
}

/** The management API beside an AMQP URL: same host and credentials, port 15672 (15671 for amqps). */
export function defaultManagementUrl(amqpUrl: string): string {
  const a = new URL(amqpUrl);
  const m = new URL(a.protocol === 'amqps:' ? 'https://localhost:15671/' : 'http://localhost:15672/');
  m.hostname = a.hostname;
  m.username = a.username;
  m.password = a.password;
  return m.toString();
}
