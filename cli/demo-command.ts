/**
 * `kmj demo`: the scaler against a local RabbitMQ, seen the way KEDA sees it.
 *
 * Publishes sample requests to a fresh queue, runs the scaler, and each second polls it as KEDA
 * polls a ScaledJob (GetMetricSpec, GetMetrics, IsActive), applies KEDA's `default` scaling
 * strategy to decide how many Jobs to start, and starts them. Each Job is a consumer that behaves
 * like a worker pod: it starts after a random delay (slow pods), takes exactly one message with
 * prefetch 1, holds it while it "works", then cancels its consumer, acknowledges and exits, and is
 * seen as complete a moment later, as Kubernetes reports Jobs. The last line says how many Jobs
 * were created for how many messages.
 */
import { parseArgs } from 'node:util';
import { connect, type ChannelModel } from 'amqplib';
import { sleep } from '../common/abort.ts';
import { createLogger } from '../common/log.ts';
import { startScaler } from '../scaler/app.ts';
import { ScalerClient, defaultStrategyJobs } from '../scaler/client.ts';
import { loadScalerConfig } from '../scaler/config.ts';
import type { CommandContext } from './context.ts';

export const DEMO_HELP = `Usage: kmj demo [--messages <n>] [--max-jobs <n>] [--work-ms <ms>]

Runs the scaler against the RabbitMQ at RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672),
publishes sample messages to a new queue, and prints each second what KEDA would see and do with
a ScaledJob using the "default" scaling strategy and the scaler's "backlog" mode.

Options:
  --messages <n>   messages to publish (default 12)
  --max-jobs <n>   the ScaledJob's maxReplicaCount (default 4)
  --work-ms <ms>   how long each Job holds its message (default 1500)
  -h, --help       show this help
`;

interface DemoJob {
  readonly id: number;
  state: 'starting' | 'consuming' | 'done';
  outcome?: 'acked' | 'idle' | 'failed';
}

function positiveInt(flag: string, raw: string | undefined, dflt: number): number {
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new TypeError(`${flag}: ${JSON.stringify(raw)} must be a positive integer`);
  return n;
}

/** One simulated worker pod: slow start, one message, prefetch 1, cancel, ack, exit. */
async function runJob(url: string, queue: string, job: DemoJob, workMs: number, idleMs: number, conns: Set<ChannelModel>): Promise<void> {
  await sleep(300 + Math.random() * 2700);
  const conn = await connect(url);
  conns.add(conn);
  try {
    const ch = await conn.createChannel();
    await ch.prefetch(1);
    job.state = 'consuming';
    let settle: (v: 'acked' | 'idle') => void = () => undefined;
    const done = new Promise<'acked' | 'idle'>((resolve) => {
      settle = resolve;
    });
    let taken = false;
    const { consumerTag } = await ch.consume(queue, (msg) => {
      if (!msg || taken) return;
      taken = true;
      // Cancel, then ack, then close the channel: channel.close is a round trip on the same channel,
      // so its reply proves the broker has processed the ack. Closing the connection right after
      // an ack can overtake it, and the message would be redelivered.
      setTimeout(() => {
        ch.cancel(consumerTag)
          .then(() => ch.ack(msg))
          .then(() => ch.close())
          .then(() => settle('acked'), () => settle('idle'));
      }, workMs);
    });
    const idle = setTimeout(() => {
      if (!taken) settle('idle');
    }, idleMs);
    job.outcome = await done;
    clearTimeout(idle);
  } finally {
    conns.delete(conn);
    await conn.close().catch(() => undefined); // the demo is ending this Job either way
    // Kubernetes marks a Job complete a moment after its pod exits (kubelet status, then the Job
    // controller); until then KEDA counts it as unfinished.
    await sleep(JOB_COMPLETION_LAG_MS);
    job.state = 'done';
  }
}

/** How long after its pod exits Kubernetes reports a Job complete, as modelled here. */
const JOB_COMPLETION_LAG_MS = 1500;

export async function runDemo(argv: readonly string[], ctx: CommandContext): Promise<number> {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      messages: { type: 'string' },
      'max-jobs': { type: 'string' },
      'work-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    ctx.stdout.write(DEMO_HELP);
    return 0;
  }
  const messages = positiveInt('--messages', values.messages, 12);
  const maxJobs = positiveInt('--max-jobs', values['max-jobs'], 4);
  const workMs = positiveInt('--work-ms', values['work-ms'], 1500);

  const config = loadScalerConfig({ ...ctx.env, KMJ_SCALER_HOST: '127.0.0.1', KMJ_SCALER_PORT: '0', KMJ_SCALER_METRICS_PORT: '0' });
  const amqpUrl = config.sources.rabbitmq.connections.get('default')?.amqpUrl ?? '';
  const log = createLogger({ level: 'warn', name: 'kmj-demo' });
  const scaler = await startScaler(config, log);
  const client = new ScalerClient(`127.0.0.1:${scaler.grpcPort}`);
  const queue = `kmj-demo-${Date.now().toString(36)}`;
  const conns = new Set<ChannelModel>();
  const admin = await connect(amqpUrl);
  const out = (line: string): boolean => ctx.stdout.write(`${line}\n`);
  try {
    const ch = await admin.createConfirmChannel();
    await ch.assertQueue(queue, { durable: true });
    for (let i = 0; i < messages; i++) ch.sendToQueue(queue, Buffer.from(JSON.stringify({ sample: i })), { persistent: true });
    await ch.waitForConfirms();
    out(`published ${messages} messages to queue ${queue}; scaler on 127.0.0.1:${scaler.grpcPort}, ScaledJob maxReplicaCount ${maxJobs}`);
    out(' time  metric  active  unfinished Jobs  new Jobs   (metric = ready + consumers, mode "backlog")');

    const jobs: DemoJob[] = [];
    const running: Promise<void>[] = [];
    const metadata = { queueName: queue, mode: 'backlog', targetSize: '1' };
    const started = Date.now();
    for (let tick = 0; tick < 600 && !ctx.shutdownSignal.aborted; tick++) {
      const poll = await client.poll(metadata, 'demo', 'default');
      const unfinished = jobs.filter((j) => j.state !== 'done').length;
      const t = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
      if (!poll.ok) {
        out(`${t}s  ${poll.code}: ${poll.details}`);
      } else {
        const create = defaultStrategyJobs(poll.view, unfinished, maxJobs);
        out(`${t}s  ${String(poll.view.value).padStart(6)}  ${String(poll.view.active).padStart(6)}  ${String(unfinished).padStart(15)}  ${String(create).padStart(8)}`);
        for (let i = 0; i < create; i++) {
          const job: DemoJob = { id: jobs.length + 1, state: 'starting' };
          jobs.push(job);
          running.push(
            runJob(amqpUrl, queue, job, workMs, 5000, conns).catch((err: unknown) => {
              job.outcome = 'failed';
              log.error({ err, job: job.id }, 'demo job failed');
            }),
          );
        }
        if (!poll.view.active && unfinished === 0 && jobs.length > 0) break;
      }
      await sleep(1000, ctx.shutdownSignal).catch(() => undefined);
    }
    await Promise.allSettled(running);
    const acked = jobs.filter((j) => j.outcome === 'acked').length;
    const idle = jobs.filter((j) => j.outcome === 'idle').length;
    out(`done: ${messages} messages, ${jobs.length} Jobs created, ${acked} processed one message each, ${idle} found none`);
    await ch.deleteQueue(queue);
    return acked === messages ? 0 : 1;
  } finally {
    for (const c of conns) await c.close().catch(() => undefined);
    await admin.close().catch(() => undefined);
    client.close();
    await scaler.close(1000);
  }
}
