// `kmj setup` against the real RabbitMQ and the real MLflow with basic auth: the broker users with
// exactly their permissions, the queue, the worker's MLflow user; run again with new passwords,
// it converges; servers out of reach or refusing are exit 1, bad settings exit 78.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'amqplib';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Cleanups, deleteQueues } from '../helpers/cleanups.ts';
import { RABBITMQ_MANAGEMENT_URL, RABBITMQ_URL } from '../helpers/env.ts';
import { closedPort, managementQueue, runKmj } from '../helpers/kmj.ts';
import { uniqueName } from '../helpers/rabbit.ts';
import { MLFLOW_AUTH_PASSWORD, MLFLOW_AUTH_URL, MLFLOW_AUTH_USER } from '../helpers/worker.ts';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());
const dir = mkdtempSync(join(tmpdir(), 'kmj-setup-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/** The management API as the test's administrator. */
async function management(path: string, init: { method?: string } = {}): Promise<Response> {
  const u = new URL(RABBITMQ_MANAGEMENT_URL);
  return fetch(`${u.origin}/api/${path}`, {
    method: init.method ?? 'GET',
    headers: { authorization: basic(decodeURIComponent(u.username), decodeURIComponent(u.password)) },
  });
}

/** An MLflow auth API call as the administrator. */
async function mlflowAdmin(path: string, init: { method: string; body?: unknown }): Promise<Response> {
  return fetch(`${MLFLOW_AUTH_URL}/api/2.0/mlflow/${path}`, {
    method: init.method,
    headers: { authorization: basic(MLFLOW_AUTH_USER, MLFLOW_AUTH_PASSWORD), 'content-type': 'application/json' },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
}

/** A deployment's names and passwords, and the environment `kmj setup` gets from its Secrets. */
function deployment(passwordSuffix = 'one'): {
  names: { scaler: string; worker: string; mlflow: string; queue: string };
  env: Record<string, string>;
} {
  const id = uniqueName('setup').slice(6);
  const names = { scaler: `kmj-scaler-${id}`, worker: `kmj-worker-${id}`, mlflow: `kmj-worker-${id}`, queue: `requests-${id}` };
  return { names, env: envFor(names, passwordSuffix) };
}

function envFor(names: { scaler: string; worker: string; mlflow: string }, suffix: string): Record<string, string> {
  const broker = new URL(RABBITMQ_URL);
  const url = (user: string): string => `amqp://${user}:${encodeURIComponent(`pw/${suffix}@`)}@${broker.host}/`;
  return {
    RABBITMQ_MANAGEMENT_URL,
    KMJ_SETUP_SCALER_BROKER_URL: url(names.scaler),
    KMJ_SETUP_WORKER_BROKER_URL: url(names.worker),
    MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
    MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
    MLFLOW_TRACKING_PASSWORD: MLFLOW_AUTH_PASSWORD,
    KMJ_SETUP_MLFLOW_USERNAME: names.mlflow,
    KMJ_SETUP_MLFLOW_PASSWORD: `mlflow-password-${suffix}`,
  };
}

function forget(names: { scaler: string; worker: string; mlflow: string; queue: string }): void {
  cleanups.defer(async () => {
    await management(`users/${names.scaler}`, { method: 'DELETE' });
    await management(`users/${names.worker}`, { method: 'DELETE' });
    await mlflowAdmin('users/delete', { method: 'DELETE', body: { username: names.mlflow } });
    await deleteQueues([names.queue, `${names.queue}.dead`]).catch(() => undefined);
  });
}

describe('kmj setup', () => {
  it("makes the broker users with exactly their permissions, the queue, and the worker's MLflow user; run again with new passwords, it converges", async () => {
    const { names, env } = deployment('one');
    forget(names);
    const first = await runKmj(['setup', '--queue', names.queue, '--max-deliveries', '7'], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout.trim().split('\n')).toEqual([
      `rabbitmq: user ${names.scaler} on vhost /: access to the vhost, no queue permissions (the scaler's)`,
      `rabbitmq: user ${names.worker} on vhost /: queues ${names.queue} and ${names.queue}.dead (the worker's)`,
      `rabbitmq: queue ${names.queue} (delivery limit 7) and ${names.queue}.dead are there`,
      `mlflow: user ${names.mlflow} made`,
    ]);
    const perms = async (user: string): Promise<unknown> => {
      const res = await management(`permissions/%2F/${user}`);
      const p = (await res.json()) as Record<string, string>;
      return { configure: p['configure'], write: p['write'], read: p['read'] };
    };
    const q = names.queue;
    expect(await perms(names.scaler)).toEqual({ configure: '^$', write: '^$', read: '^$' });
    expect(await perms(names.worker)).toEqual({
      configure: `^${q}(\\.dead)?$`,
      write: `^(amq\\.default|${q}(\\.dead)?)$`,
      read: `^${q}(\\.dead)?$`,
    });
    expect((await managementQueue(q)).arguments).toMatchObject({
      'x-queue-type': 'quorum',
      'x-delivery-limit': 7,
      'x-dead-letter-routing-key': `${q}.dead`,
    });
    expect((await managementQueue(`${q}.dead`)).arguments).toEqual({ 'x-queue-type': 'quorum', 'x-delivery-limit': -1 });
    const asWorker = (password: string) =>
      fetch(`${MLFLOW_AUTH_URL}/api/2.0/mlflow/experiments/search?max_results=1`, {
        headers: { authorization: basic(names.mlflow, password) },
      });
    expect((await asWorker('mlflow-password-one')).status).toBe(200);

    // New passwords in the Secrets: the same command sets them; the queue is left as it is.
    const again = await runKmj(['setup', '--queue', names.queue, '--max-deliveries', '7'], { env: envFor(names, 'two') });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout.trim().split('\n').at(-1)).toBe(`mlflow: user ${names.mlflow} there, password set`);
    expect([(await asWorker('mlflow-password-two')).status, (await asWorker('mlflow-password-one')).status]).toEqual([200, 401]);
    // The broker users' new password opens a connection; the old one is refused.
    const conn = await connect(envFor(names, 'two')['KMJ_SETUP_WORKER_BROKER_URL'] as string);
    await conn.close();
    await expect(connect(envFor(names, 'one')['KMJ_SETUP_WORKER_BROKER_URL'] as string)).rejects.toThrow(/ACCESS_REFUSED|403/);
  }, 60_000);

  it("reads MLflow's administrator from basic_auth.ini with --mlflow-auth-config", async () => {
    const { names, env } = deployment();
    forget(names);
    const ini = join(dir, 'basic_auth.ini');
    writeFileSync(
      ini,
      `[mlflow]\ndefault_permission = READ\nadmin_username = ${MLFLOW_AUTH_USER}\nadmin_password = ${MLFLOW_AUTH_PASSWORD}\n`,
    );
    const { MLFLOW_TRACKING_USERNAME: _u, MLFLOW_TRACKING_PASSWORD: _p, ...rest } = env;
    const res = await runKmj(['setup', '--mlflow', '--mlflow-auth-config', ini], { env: rest });
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toBe(`mlflow: user ${names.mlflow} made\n`);
  });

  it('a server that does not answer: exit 1 after --timeout, naming it, no password shown', async () => {
    const { names, env } = deployment();
    const port = await closedPort();
    const started = Date.now();
    const res = await runKmj(['setup', '--rabbitmq', '--queue', names.queue, '--timeout', '3s'], {
      env: { ...env, RABBITMQ_MANAGEMENT_URL: `http://admin:secret-admin@127.0.0.1:${port}` },
    });
    expect(res.code).toBe(1);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(res.stderr).toMatch(new RegExp(`^kmj setup: RabbitMQ's management API at http://127\\.0\\.0\\.1:${port} did not answer: `));
    expect(`${res.stdout}${res.stderr}`).not.toMatch(/secret-admin|pw\/one/);
  });

  it('a wrong MLflow administrator: exit 1 at once, it was refused', async () => {
    const { names, env } = deployment();
    forget(names);
    const res = await runKmj(['setup', '--mlflow'], { env: { ...env, MLFLOW_TRACKING_PASSWORD: 'not-the-password' } });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^kmj setup: MLflow GET \/api\/2\.0\/mlflow\/users\/get answered HTTP 401/);
    expect(res.stderr).not.toContain('not-the-password');
  });

  it('settings missing or wrong: exit 78 naming every one', async () => {
    const res = await runKmj(['setup', '--timeout', '0'], { env: { KMJ_SETUP_MLFLOW_PASSWORD: 'short' } });
    expect(res.code).toBe(78);
    expect(res.stderr).toContain('RABBITMQ_MANAGEMENT_URL: is required for the broker users');
    expect(res.stderr).toContain('KMJ_SETUP_SCALER_BROKER_URL: is required for the broker users');
    expect(res.stderr).toContain("KMJ_SETUP_MLFLOW_USERNAME: is required for the worker's MLflow user");
    expect(res.stderr).toContain('KMJ_SETUP_MLFLOW_PASSWORD: must be at least 12 characters, got 5');
    expect(res.stderr).toMatch(/--timeout: "0" must be a duration/);
    // A broker URL without its user's password, on its own.
    const noPassword = await runKmj(['setup', '--rabbitmq'], {
      env: {
        RABBITMQ_MANAGEMENT_URL,
        KMJ_SETUP_SCALER_BROKER_URL: 'amqp://a:b@127.0.0.1/',
        KMJ_SETUP_WORKER_BROKER_URL: 'amqp://127.0.0.1/',
      },
    });
    expect(noPassword.code).toBe(78);
    expect(noPassword.stderr).toBe(
      'kmj setup: invalid setup configuration: KMJ_SETUP_WORKER_BROKER_URL: must carry the user and the password\n',
    );
  });
});
