/**
 * `kmj setup`: what a deployment needs before its first request, made from its Secrets, so that
 * `kubectl apply -k manifests/` is the only step (manifests/setup.yaml runs it as a Job). Every
 * part is idempotent: run again, it converges on the Secrets as they are now.
 *
 * - RabbitMQ: the scaler's and the worker's users, with the permissions of rabbitmq/users.ts and
 *   the passwords of their broker URLs; the request queue and its dead-letter queue, declared by
 *   the worker's user as `kmj submit` and the worker declare them;
 * - MLflow: the worker's user, made through the basic-auth app's API as the administrator.
 *
 * The servers may still be starting (the Job starts with them): each part waits for its server,
 * retrying what may succeed later, up to --timeout.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { sleep } from '../common/abort.ts';
import { ConfigError, failOnProblems, parseSettings } from '../common/config.ts';
import { messageOf } from '../common/errors.ts';
import type { FieldSpecs, Parsed, RawInput } from '../common/fields.ts';
import { displayUrl } from '../common/redact.ts';
import { MlflowHttp, MlflowHttpError } from '../mlflow/http.ts';
import { loadMlflowSettings } from '../mlflow/settings.ts';
import { ensureMlflowUser } from '../mlflow/users.ts';
import { isRefusal } from '../rabbitmq/reply-codes.ts';
import { deadLetterQueueOf, declareRequestTopologyAt } from '../rabbitmq/topology.ts';
import { ManagementClient, ManagementError, SCALER_PERMISSIONS, workerPermissions } from '../rabbitmq/users.ts';
import { createLogger } from '../common/log.ts';
import type { CommandContext } from './context.ts';
import { UsageError } from './usage.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const SETUP_HELP = `Usage: kmj setup [--rabbitmq] [--mlflow] [options]

Makes what a deployment needs before its first request, from its Secrets (manifests/setup.yaml
runs it as a Job on "kubectl apply -k"). Idempotent: run again, it sets the passwords and
permissions of the Secrets as they are now. Without --rabbitmq or --mlflow it does both.

  --rabbitmq               the broker users (the scaler's: vhost access only; the worker's: its
                           queues), and the request queue with its dead-letter queue
  --mlflow                 the worker's MLflow user
  --queue <name>           the request queue (default ml-requests)
  --max-deliveries <n>     the queue's delivery limit when it is made (default 5)
  --mlflow-auth-config <f> MLflow's basic_auth.ini: the administrator is its admin_username
                           and admin_password (else MLFLOW_TRACKING_USERNAME/PASSWORD)
  --timeout <duration>     how long to wait for RabbitMQ and MLflow to answer (default 5m)
  -h, --help               show this help

Environment:
  RABBITMQ_MANAGEMENT_URL          the management API, as an administrator (credentials in the URL,
                                   or KMJ_SETUP_RABBITMQ_USERNAME and KMJ_SETUP_RABBITMQ_PASSWORD)
  KMJ_SETUP_SCALER_BROKER_URL      the scaler's amqp:// URL (user and password)
  KMJ_SETUP_WORKER_BROKER_URL      the worker's amqp:// URL (user, password, vhost and host)
  MLFLOW_TRACKING_URI              the MLflow server
  KMJ_SETUP_MLFLOW_USERNAME        the worker's MLflow user and password
  KMJ_SETUP_MLFLOW_PASSWORD

Exit codes: 0 done, 1 a server did not answer in time or refused, 64 bad options, 78 bad settings.
`;

const SETUP_ENV = {
  RABBITMQ_MANAGEMENT_URL: { kind: 'url', protocols: ['http', 'https'] },
  KMJ_SETUP_RABBITMQ_USERNAME: { kind: 'string' },
  KMJ_SETUP_RABBITMQ_PASSWORD: { kind: 'string' },
  KMJ_SETUP_SCALER_BROKER_URL: { kind: 'url', protocols: ['amqp', 'amqps'] },
  KMJ_SETUP_WORKER_BROKER_URL: { kind: 'url', protocols: ['amqp', 'amqps'] },
  KMJ_SETUP_MLFLOW_USERNAME: { kind: 'string', pattern: /^[^\s:]{1,255}$/, patternHint: 'a user name without spaces or colons' },
  // MLflow's own rule for passwords (mlflow/utils/validation.py), checked before the server sees it.
  KMJ_SETUP_MLFLOW_PASSWORD: { kind: 'string', minLength: 12 },
  KMJ_SETUP_QUEUE: {
    kind: 'string',
    pattern: /^[A-Za-z0-9._:-]{1,250}$/,
    patternHint: 'a queue name (letters, digits, ".", "_", ":", "-")',
    default: 'ml-requests',
  },
  KMJ_SETUP_MAX_DELIVERIES: { kind: 'integer', min: 1, max: 1000, default: 5 },
  KMJ_SETUP_TIMEOUT_MS: { kind: 'integer', unit: 'ms', min: 1000, max: 3_600_000, default: 300_000 },
} as const satisfies FieldSpecs;

/** One user's name and password, from a broker URL. */
function credentialsOf(url: string): { user: string; password: string; vhost: string } {
  const u = new URL(url);
  const vhost = u.pathname === '' || u.pathname === '/' ? '/' : decodeURIComponent(u.pathname.slice(1));
  return { user: decodeURIComponent(u.username), password: decodeURIComponent(u.password), vhost };
}

/** admin_username and admin_password of MLflow's basic_auth.ini. */
function adminOf(iniPath: string): { username: string; password: string } {
  let text: string;
  try {
    text = readFileSync(iniPath, 'utf8');
  } catch (err) {
    throw new ConfigError('setup', [
      `--mlflow-auth-config: cannot read ${JSON.stringify(iniPath)}: ${(err as NodeJS.ErrnoException).code ?? messageOf(err)}`,
    ]);
  }
  const value = (key: string): string | undefined => text.match(new RegExp(`^\\s*${key}\\s*=\\s*(.*?)\\s*$`, 'm'))?.[1];
  const username = value('admin_username');
  const password = value('admin_password');
  const missing = [username === undefined ? 'admin_username' : undefined, password === undefined ? 'admin_password' : undefined].filter(
    (k) => k !== undefined,
  );
  if (username === undefined || password === undefined)
    throw new ConfigError('setup', [`--mlflow-auth-config: ${iniPath} has no ${missing.join(' or ')}`]);
  return { username, password };
}

/** Calls `step` until it succeeds, it fails for good (`retryable` false), or the deadline passes. */
async function untilDone<T>(
  what: string,
  step: () => Promise<T>,
  retryable: (err: unknown) => boolean,
  deadline: number,
  signal: AbortSignal,
  say: (text: string) => void,
): Promise<T> {
  let lastSaid = 0;
  for (;;) {
    try {
      return await step();
    } catch (err) {
      if (!retryable(err) || Date.now() >= deadline || signal.aborted) throw err;
      if (Date.now() - lastSaid >= 15_000) {
        say(`waiting for ${what}: ${messageOf(err)}`);
        lastSaid = Date.now();
      }
      await sleep(Math.min(2000, Math.max(0, deadline - Date.now())), signal).catch(() => undefined);
    }
  }
}

/** Errors worth another try while a broker starts: no connection, or the connection dropped. */
function amqpRetryable(err: unknown): boolean {
  return !isRefusal(err);
}

/** The settings each part needs that are not set. */
function missingForParts(raw: RawInput, doRabbit: boolean, doMlflow: boolean): string[] {
  const missing = (key: string): boolean => raw[key] === undefined || raw[key] === '';
  const problems: string[] = [];
  if (doRabbit) {
    for (const key of ['RABBITMQ_MANAGEMENT_URL', 'KMJ_SETUP_SCALER_BROKER_URL', 'KMJ_SETUP_WORKER_BROKER_URL']) {
      if (missing(key)) problems.push(`${key}: is required for the broker users`);
    }
  }
  if (doMlflow) {
    for (const key of ['KMJ_SETUP_MLFLOW_USERNAME', 'KMJ_SETUP_MLFLOW_PASSWORD']) {
      if (missing(key)) problems.push(`${key}: is required for the worker's MLflow user`);
    }
  }
  return problems;
}

/** The users' broker URLs must carry the user and the password kmj setup creates. */
function brokerUrlsWithoutCredentials(v: Parsed<typeof SETUP_ENV>): string[] {
  const problems: string[] = [];
  for (const key of ['KMJ_SETUP_SCALER_BROKER_URL', 'KMJ_SETUP_WORKER_BROKER_URL'] as const) {
    const url = v[key];
    if (url !== undefined && (new URL(url).username === '' || new URL(url).password === ''))
      problems.push(`${key}: must carry the user and the password`);
  }
  return problems;
}

export async function runSetup(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      rabbitmq: { type: 'boolean' },
      mlflow: { type: 'boolean' },
      queue: { type: 'string' },
      'max-deliveries': { type: 'string' },
      'mlflow-auth-config': { type: 'string' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    ctx.stdout.write(SETUP_HELP);
    return EXIT.OK;
  }
  const both = !values.rabbitmq && !values.mlflow;
  const doRabbit = both || values.rabbitmq === true;
  const doMlflow = both || values.mlflow === true;
  const flag = (name: string, value: string | undefined) => (value !== undefined ? { flag: `--${name}`, value } : undefined);
  const parsed = parseSettings(SETUP_ENV, ctx.env, {
    KMJ_SETUP_QUEUE: flag('queue', values.queue),
    KMJ_SETUP_MAX_DELIVERIES: flag('max-deliveries', values['max-deliveries']),
    KMJ_SETUP_TIMEOUT_MS: flag('timeout', values.timeout),
  });
  // What each part needs, told together with any malformed setting.
  failOnProblems('setup', parsed.problems, missingForParts(parsed.raw, doRabbit, doMlflow));
  const env = parsed.values;
  failOnProblems('setup', doRabbit ? brokerUrlsWithoutCredentials(env) : []);
  const log = createLogger({ level: 'silent', name: 'kmj-setup' });
  const say = (text: string): void => {
    ctx.stdout.write(`${text}\n`);
  };
  const deadline = Date.now() + env.KMJ_SETUP_TIMEOUT_MS;
  const signal = ctx.shutdownSignal;
  const queue = env.KMJ_SETUP_QUEUE;
  let mlflow: MlflowHttp | undefined;
  if (doMlflow) {
    const admin = values['mlflow-auth-config'] !== undefined ? adminOf(values['mlflow-auth-config']) : undefined;
    const settings = loadMlflowSettings('setup', {
      ...ctx.env,
      ...(admin ? { MLFLOW_TRACKING_USERNAME: admin.username, MLFLOW_TRACKING_PASSWORD: admin.password } : {}),
    });
    if (!settings) throw new ConfigError('setup', ["MLFLOW_TRACKING_URI: is required for the worker's MLflow user"]);
    if (settings.username === undefined && settings.token === undefined) {
      throw new ConfigError('setup', ['MLFLOW_TRACKING_USERNAME: the administrator is required (or --mlflow-auth-config)']);
    }
    mlflow = new MlflowHttp({ ...settings, maxRetries: 0, maxBackoffSeconds: 1, log });
  }
  try {
    if (doRabbit) {
      const managementUrl = env.RABBITMQ_MANAGEMENT_URL as string;
      const management = new ManagementClient({
        url: managementUrl,
        ...(env.KMJ_SETUP_RABBITMQ_USERNAME !== undefined ? { username: env.KMJ_SETUP_RABBITMQ_USERNAME } : {}),
        ...(env.KMJ_SETUP_RABBITMQ_PASSWORD !== undefined ? { password: env.KMJ_SETUP_RABBITMQ_PASSWORD } : {}),
      });
      const scaler = credentialsOf(env.KMJ_SETUP_SCALER_BROKER_URL as string);
      const worker = credentialsOf(env.KMJ_SETUP_WORKER_BROKER_URL as string);
      const retry = (err: unknown): boolean => err instanceof ManagementError && err.retryable;
      await untilDone(
        `RabbitMQ's management API at ${displayUrl(managementUrl)}`,
        () => management.ensureUser(scaler.user, scaler.password, scaler.vhost, SCALER_PERMISSIONS, signal),
        retry,
        deadline,
        signal,
        say,
      );
      say(`rabbitmq: user ${scaler.user} on vhost ${scaler.vhost}: access to the vhost, no queue permissions (the scaler's)`);
      await untilDone(
        'RabbitMQ',
        () => management.ensureUser(worker.user, worker.password, worker.vhost, workerPermissions(queue), signal),
        retry,
        deadline,
        signal,
        say,
      );
      say(`rabbitmq: user ${worker.user} on vhost ${worker.vhost}: queues ${queue} and ${deadLetterQueueOf(queue)} (the worker's)`);
      await untilDone(
        `RabbitMQ at ${displayUrl(env.KMJ_SETUP_WORKER_BROKER_URL as string)}`,
        () =>
          declareRequestTopologyAt(
            env.KMJ_SETUP_WORKER_BROKER_URL as string,
            queue,
            { deadLetterQueue: deadLetterQueueOf(queue), maxDeliveries: env.KMJ_SETUP_MAX_DELIVERIES },
            signal,
          ),
        amqpRetryable,
        deadline,
        signal,
        say,
      );
      say(`rabbitmq: queue ${queue} (delivery limit ${env.KMJ_SETUP_MAX_DELIVERIES}) and ${deadLetterQueueOf(queue)} are there`);
    }
    if (mlflow) {
      const http = mlflow;
      const username = env.KMJ_SETUP_MLFLOW_USERNAME as string;
      const made = await untilDone(
        `MLflow at ${http.baseUrl}`,
        () => ensureMlflowUser(http, username, env.KMJ_SETUP_MLFLOW_PASSWORD as string, signal),
        (err) => err instanceof MlflowHttpError && err.retryable,
        deadline,
        signal,
        say,
      );
      say(`mlflow: user ${username} ${made ? 'made' : 'there, password set'}`);
    }
    return EXIT.OK;
  } catch (err) {
    if (err instanceof ConfigError || err instanceof UsageError) throw err;
    ctx.stderr.write(`kmj setup: ${messageOf(err)}\n`);
    return EXIT.FAILED;
  } finally {
    await mlflow?.close();
  }
}
