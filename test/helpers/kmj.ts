/**
 * The real `kmj` command as a user runs it: `node bin/kmj.js <args>` in its own process, with an
 * explicit environment (nothing of the test runner's leaks in), its output collected as it comes,
 * and its exit. Plus the RabbitMQ and port helpers the CLI tests share.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect as connectTcp } from 'node:net';
import { connect } from 'amqplib';
import { packageFile } from '../../common/paths.ts';
import { RABBITMQ_MANAGEMENT_URL, RABBITMQ_URL } from './env.ts';
import type { Cleanups } from './cleanups.ts';
import { waitUntil } from './wait.ts';
import { workerEnv } from './worker.ts';

export const KMJ = packageFile('bin', 'kmj.js');

export interface KmjExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface KmjProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited and its pipes are drained. */
  readonly done: Promise<KmjExit>;
  /** Resolves once `ok(stdout)` holds; fails when the process exits first or after `timeoutMs`. */
  waitForStdout(ok: (stdout: string) => boolean, timeoutMs?: number): Promise<string>;
  /** The JSON log lines on stderr so far (the worker's and the scaler's logs). */
  logs(): Array<Record<string, unknown>>;
}

export interface KmjOptions {
  /** The whole environment besides PATH (and HOME, unless given). */
  readonly env?: Record<string, string>;
  readonly cwd?: string;
  /**
   * The command that runs `kmj`, the arguments following it: this checkout's bin/kmj.js under the
   * test's Node by default (test/helpers/image.ts runs an image's own Node and kmj under emulation).
   */
  readonly command?: readonly string[];
}

/**
 * Starts `kmj <args>`; with `cleanups`, a process still running after the test is killed. The
 * environment is PATH, HOME and `options.env` only.
 */
export function startKmj(args: readonly string[], options: KmjOptions = {}, cleanups?: Cleanups): KmjProcess {
  const [file = process.execPath, ...prefix] = options.command ?? [process.execPath, KMJ];
  const child = spawn(file, [...prefix, ...args], {
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/tmp', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
  });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  let exited = false;
  const done = new Promise<KmjExit>((resolve) => {
    child.once('close', (code, signal) => {
      exited = true;
      resolve({ code, signal, stdout: out, stderr: err });
    });
  });
  cleanups?.defer(async () => {
    if (!exited && child.pid !== undefined) {
      child.kill('SIGKILL');
      await done;
    }
  });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    done,
    waitForStdout: async (ok, timeoutMs = 30_000) => {
      const output = (): string => `stdout:\n${out}\nstderr:\n${err.slice(-3000)}`;
      const matched = await waitUntil(
        'kmj to print what the test waits for',
        () => {
          // An exit ends the wait (false): the output will not change after it.
          const hit = ok(out);
          if (hit || exited) return hit;
          throw new Error(output());
        },
        () => true,
        { timeoutMs, stepMs: 20 },
      );
      if (!matched) throw new Error(`stdout never matched (exited ${child.exitCode}); ${output()}`);
      return out;
    },
    logs: () =>
      err
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

/**
 * The environment of a test `kmj worker`, without MLFLOW_TRACKING_URI (add it for an online
 * worker): its HOME and model cache are temp dirs the cleanups remove, its dataset roots the
 * fixtures and the temp dir, quick MLflow retries, debug logs. `extra` overrides it.
 */
export function kmjWorkerEnv(cleanups: Cleanups, extra: Record<string, string> = {}): Record<string, string> {
  const { MLFLOW_TRACKING_URI: _online, ...env } = workerEnv({
    HOME: cleanups.tempDir('kmj-home-'),
    KMJ_MODEL_CACHE_DIR: cleanups.tempDir('kmj-cache-'),
    KMJ_WORKER_IDLE_TIMEOUT_MS: '5000',
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: '1',
  });
  return { ...env, ...extra };
}

/** Runs `kmj <args>` to its exit. */
export function runKmj(args: readonly string[], options: KmjOptions = {}, cleanups?: Cleanups): Promise<KmjExit> {
  return startKmj(args, options, cleanups).done;
}

/**
 * A loopback port nothing listens on, from 21000-29999: below the kernel's ephemeral range
 * (net.ipv4.ip_local_port_range, 32768-60999 by default), so no other test's listen(0) can be
 * given it meanwhile and no outgoing connection can have it as its own source port (connecting
 * to a free ephemeral port on loopback can meet itself), and clear of every fixed port the
 * services and the cluster use. Checked: a connection to it is refused.
 */
export async function closedPort(): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const port = 21000 + Math.floor(Math.random() * 9000);
    const refused = await new Promise<boolean>((resolve) => {
      const socket = connectTcp({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(false);
      });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
    });
    if (refused) return port;
  }
  throw new Error('no closed loopback port found in 21000-29999 after 50 tries');
}

/** True when the queue exists (passive declare). */
export async function queueExists(queue: string): Promise<boolean> {
  const conn = await connect(RABBITMQ_URL);
  conn.on('error', () => undefined);
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    try {
      await ch.checkQueue(queue);
      return true;
    } catch (err) {
      if ((err as { code?: unknown }).code === 404) return false;
      throw err;
    }
  } finally {
    await conn.close().catch(() => undefined);
  }
}

export interface ManagementQueue {
  readonly name: string;
  readonly type: string;
  readonly durable: boolean;
  readonly arguments: Record<string, unknown>;
  readonly messages_ready?: number;
  readonly messages_unacknowledged?: number;
  readonly consumers?: number;
}

/** A queue as the management API describes it (its type and arguments, which AMQP cannot tell). */
export async function managementQueue(queue: string): Promise<ManagementQueue> {
  const res = await management(`queues/%2F/${encodeURIComponent(queue)}`);
  if (!res.ok) throw new Error(`management API: HTTP ${res.status} for queue ${queue}`);
  return (await res.json()) as ManagementQueue;
}

/** A call to RabbitMQ's management HTTP API, `path` under /api/. */
async function management(path: string, init: { method?: string; body?: unknown } = {}): Promise<Response> {
  const u = new URL(RABBITMQ_MANAGEMENT_URL);
  const auth = `Basic ${Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')}`;
  u.username = '';
  u.password = '';
  return fetch(`${u.toString().replace(/\/+$/, '')}/api/${path}`, {
    method: init.method ?? 'GET',
    headers: { authorization: auth, 'content-type': 'application/json' },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
}

/**
 * Gives one queue a policy (e.g. a delivery limit, as RabbitMQ 4 gives every quorum queue by
 * default), removed after the test.
 */
export async function queuePolicy(queue: string, definition: Record<string, unknown>, cleanups: Cleanups): Promise<void> {
  const name = `kmj-test-${queue}`;
  const pattern = `^${queue.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`;
  const res = await management(`policies/%2F/${encodeURIComponent(name)}`, {
    method: 'PUT',
    body: { pattern, definition, 'apply-to': 'queues', priority: 100 },
  });
  if (!res.ok) throw new Error(`management API: HTTP ${res.status} setting policy ${name}: ${await res.text()}`);
  cleanups.defer(async () => {
    await management(`policies/%2F/${encodeURIComponent(name)}`, { method: 'DELETE' });
  });
}

/**
 * A broker user with these permissions on vhost "/" (configure, write, read patterns), deleted
 * after the test; its AMQP URL.
 */
export async function brokerUser(
  name: string,
  permissions: { configure: string; write: string; read: string },
  cleanups: Cleanups,
  tags = '',
): Promise<string> {
  const password = `pw-${name}`;
  const user = await management(`users/${encodeURIComponent(name)}`, { method: 'PUT', body: { password, tags } });
  if (!user.ok) throw new Error(`management API: HTTP ${user.status} making user ${name}: ${await user.text()}`);
  cleanups.defer(async () => {
    await management(`users/${encodeURIComponent(name)}`, { method: 'DELETE' });
  });
  const perms = await management(`permissions/%2F/${encodeURIComponent(name)}`, { method: 'PUT', body: permissions });
  if (!perms.ok) throw new Error(`management API: HTTP ${perms.status} setting permissions of ${name}: ${await perms.text()}`);
  const u = new URL(RABBITMQ_URL);
  u.username = name;
  u.password = password;
  return u.toString();
}

/** The non-empty lines of a command's output. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}
