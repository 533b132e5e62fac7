/**
 * `make bench-kafka`: the scaler's Kafka source under the load KEDA puts on it.
 *
 * Setup: 100 topics of 12 partitions and one consumer group per topic (a ScaledJob per group, as
 * a deployment would have it), records produced to every partition and offsets committed so that
 * every group has a known, different, non-zero lag (some partitions fully consumed, some with
 * no commit at all). Every name starts with a prefix of this run; all of it is deleted at the end,
 * also when the bench fails.
 *
 * Measured, in one run:
 * 1. the baseline: one KafkaOffsetsReader.read of a 12-partition group, the read the scaler's
 *    background loop makes (kafka/offsets.ts over kafka/client.ts), timed in this process, many
 *    samples one after another, on a reader that has read every group (as the scaler's has) and
 *    on one that only ever read one; the samples also prove the setup (every end and committed
 *    offset as planned);
 * 2. a `kmj scaler` child process polled as KEDA polls: every ScaledJob once per polling interval,
 *    GetMetricSpec, GetMetrics and IsActive back to back (ScalerClient.poll's sequence), one gRPC
 *    channel for all of them. Three phases, each on a fresh scaler process so CPU and RSS are its
 *    own: the Kafka groups only, 100 RabbitMQ queues only, and both at once. Every answer is
 *    checked against the planned lag (or queue depth), threshold and activity: a wrong value fails
 *    the bench. The scaler's /metrics is scraped at both ends of the window: its own read
 *    durations (kmj_scaler_refresh_duration_seconds), the time inside the GetMetrics handler,
 *    event-loop delay and GC time.
 *
 * Printed: GetMetrics, IsActive and GetMetricSpec p50/p99 as the client sees them, the direct read's
 * p50/p99 and CPU, the ratio of the two (how much answering from the cache saves), the scaler's
 * reads per second and their duration, its CPU (% of one core) and RSS (max and end of the window),
 * and the machine's load average (the VM is shared). Also written to .run/bench-kafka.json.
 *
 * With BENCH_BASELINE_REF (default 4dc0bcc, the last commit with one admin client for every topic;
 * empty: none), the direct read and every phase with Kafka groups are measured a second time on
 * that commit's code (a built worktree under .run/), one after the other in this run, and the
 * summary prints this commit's figures against the baseline's.
 *
 * Options (env): BENCH_KAFKA_GROUPS (100), BENCH_KAFKA_QUEUES (100), BENCH_PHASE_SECONDS (30),
 * BENCH_POLL_INTERVAL_MS (1000), BENCH_READ_SAMPLES (1000), BENCH_KAFKA_PHASES (kafka,rabbitmq,both),
 * BENCH_SCALER_NODE_ARGS, KAFKA_BROKERS (127.0.0.1:19092), RABBITMQ_URL.
 */
import { randomUUID } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { connect as amqpConnect } from 'amqplib';
import type { Admin, Kafka, Producer } from 'kafkajs';
import type { FieldSpecs } from '../common/fields.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { kafkaClient } from '../kafka/client.ts';
import { commitAsMember } from '../kafka/group.ts';
import { KafkaOffsetsReader } from '../kafka/offsets.ts';
import { kafkaConnection, type KafkaConnection } from '../kafka/settings.ts';
import { kedaNumber, ScalerClient, type ScaledObjectRef } from '../scaler/client.ts';
import { baselineCheckout, benchHeader } from './harness.ts';
import { benchOptions, listOf, SCALER_NODE_ARGS_SPEC } from './options.ts';
import { cpuSeconds, loadAverages, memoryMb, startScaler, type ScalerProcess } from './process.ts';
import { bucketBoundMs, histogramDelta, histogramOf, parseMetrics, scrape, type Histogram, type PromSample } from './prometheus.ts';
import { ms, out, summary, type Summary } from './stats.ts';

// ---------------------------------------------------------------------------------------------
// Options

const PHASE_NAMES = ['kafka', 'rabbitmq', 'both'] as const;
type PhaseName = (typeof PHASE_NAMES)[number];

/** Partitions of every topic: the figure asked for is the read of a 12-partition group. */
const PARTITIONS = 12;

const OPTIONS = {
  BENCH_KAFKA_GROUPS: { kind: 'integer', min: 1, max: 500, default: 100 },
  BENCH_KAFKA_QUEUES: { kind: 'integer', min: 1, max: 1000, default: 100 },
  BENCH_PHASE_SECONDS: { kind: 'integer', min: 5, max: 120, default: 30 },
  BENCH_POLL_INTERVAL_MS: { kind: 'integer', min: 200, max: 30_000, default: 1000 },
  BENCH_READ_SAMPLES: { kind: 'integer', min: 10, max: 20_000, default: 1000 },
  BENCH_KAFKA_PHASES: { kind: 'string', default: PHASE_NAMES.join(','), ...listOf(PHASE_NAMES) },
  KAFKA_BROKERS: { kind: 'string', default: '127.0.0.1:19092' },
  RABBITMQ_URL: { kind: 'url', protocols: ['amqp', 'amqps'], default: 'amqp://guest:guest@127.0.0.1:5672' },
  BENCH_SCALER_NODE_ARGS: SCALER_NODE_ARGS_SPEC,
  BENCH_BASELINE_REF: { kind: 'string', default: '4dc0bcc', pattern: /^[\w./-]*$/, patternHint: 'a commit or ref' },
} as const satisfies FieldSpecs;

interface BenchOptions {
  readonly groups: number;
  readonly queues: number;
  readonly phaseSeconds: number;
  readonly pollIntervalMs: number;
  readonly readSamples: number;
  readonly phases: readonly PhaseName[];
  readonly brokers: string;
  readonly rabbitmqUrl: string;
  readonly scalerNodeArgs: readonly string[];
  /** The commit measured beside this one, or '' for none. */
  readonly baselineRef: string;
}

/** The bench's settings, read once; every bad one is reported together. */
function readOptions(env: NodeJS.ProcessEnv): BenchOptions {
  const v = benchOptions('bench-kafka', OPTIONS, env);
  return Object.freeze({
    groups: v.BENCH_KAFKA_GROUPS,
    queues: v.BENCH_KAFKA_QUEUES,
    phaseSeconds: v.BENCH_PHASE_SECONDS,
    pollIntervalMs: v.BENCH_POLL_INTERVAL_MS,
    readSamples: v.BENCH_READ_SAMPLES,
    phases: [...new Set(v.BENCH_KAFKA_PHASES.split(','))] as PhaseName[],
    brokers: v.KAFKA_BROKERS,
    rabbitmqUrl: v.RABBITMQ_URL,
    scalerNodeArgs: v.BENCH_SCALER_NODE_ARGS.split(' ').filter(Boolean),
    // Set but empty: no baseline (parseFields reads an empty value as unset, so it is looked at here).
    baselineRef: env['BENCH_BASELINE_REF'] === '' ? '' : v.BENCH_BASELINE_REF,
  });
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Waits `delayMs` (none when not positive), or less when `signal` aborts; resolves either way, callers check the signal. */
function sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
  // Node warns about a negative delay (TimeoutNegativeWarning); a poll that overran waits 0.
  delayMs = Math.max(0, delayMs);
  return new Promise((resolve) => {
    if (!signal) {
      setTimeout(resolve, delayMs);
      return;
    }
    if (signal.aborted) return resolve();
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, delayMs);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** `fn` over `items`, at most `limit` at a time: setup on a 2-core machine shared with the brokers. */
async function eachLimited<T>(items: readonly T[], limit: number, signal: AbortSignal, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      signal.throwIfAborted();
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(lanes);
}

/** Rejects after `timeoutMs` with a message naming the step; the timer is cleared either way. */
async function within<T>(promise: Promise<T>, timeoutMs: number, step: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${step} took longer than ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// What is set up, and what the scaler must answer for it

/** A target the bench polls, with the answers KEDA must get for it. */
interface PolledTarget {
  readonly kind: 'kafka' | 'rabbitmq';
  readonly name: string;
  /** Trigger metadata without scalerAddress (added per phase, the port changes). */
  readonly metadata: Readonly<Record<string, string>>;
  readonly expectedValue: number;
  readonly expectedTargetSize: number;
  readonly expectedActive: boolean;
}

interface GroupPlan {
  readonly topic: string;
  readonly group: string;
  /** Records produced to each partition, i.e. its end offset (the start offset stays 0). */
  readonly produced: readonly number[];
  /** Committed offset per partition; undefined: the group commits none there. */
  readonly committed: readonly (number | undefined)[];
  readonly lag: number;
  readonly target: PolledTarget;
}

/**
 * The lag plan of group `i`, and what the scaler must answer, worked out here from the rules the
 * Kafka source states (scaler/sources/kafka.ts), not by calling its lagReading: per partition end −
 * committed, 1 for a partition without a commit (offsetResetPolicy latest); the metric capped at
 * partitions × lagThreshold unless allowIdleConsumers; active when the lag is above
 * activationLagThreshold. The mix varies by group so every rule is exercised: partitions with no
 * lag, without a commit, groups whose cap binds, groups that are not active.
 */
function planGroup(prefix: string, i: number): GroupPlan {
  const produced: number[] = [];
  const committed: (number | undefined)[] = [];
  let lag = 0;
  for (let p = 0; p < PARTITIONS; p++) {
    const end = 2 + ((i * 7 + p * 5) % 11);
    const commit = i % 4 === 0 && p === PARTITIONS - 1 ? undefined : (i + p) % 3 === 0 ? end : (i * 3 + p) % end;
    produced.push(end);
    committed.push(commit);
    lag += commit === undefined ? 1 : end - commit;
  }
  const allowIdleConsumers = i % 2 === 0;
  const lagThreshold = 1 + (i % 3);
  const activationLagThreshold = i % 10 === 5 ? lag : 0;
  const topic = `${prefix}-t${i}`;
  const group = `${prefix}-g${i}`;
  const metadata: Record<string, string> = {
    source: 'kafka',
    topic,
    consumerGroup: group,
    lagThreshold: String(lagThreshold),
    allowIdleConsumers: String(allowIdleConsumers),
  };
  if (activationLagThreshold > 0) metadata['activationLagThreshold'] = String(activationLagThreshold);
  return {
    topic,
    group,
    produced,
    committed,
    lag,
    target: {
      kind: 'kafka',
      name: group,
      metadata,
      expectedValue: allowIdleConsumers ? lag : Math.min(lag, PARTITIONS * lagThreshold),
      expectedTargetSize: lagThreshold,
      expectedActive: lag > activationLagThreshold,
    },
  };
}

/** Queue `i`: a depth of 1–17 ready messages, no consumer, mode backlog (ready + consumers). */
function planQueue(prefix: string, i: number): { queue: string; ready: number; target: PolledTarget } {
  const queue = `${prefix}-q${i}`;
  const ready = 1 + ((i * 3) % 17);
  return {
    queue,
    ready,
    target: {
      kind: 'rabbitmq',
      name: queue,
      metadata: { source: 'rabbitmq', queueName: queue },
      expectedValue: ready,
      expectedTargetSize: 1,
      expectedActive: true,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Kafka setup and teardown

/**
 * Owns the bench's Kafka clients and everything they create. `close` deletes every topic and group
 * whose name starts with the run's prefix, so a setup that failed half-way leaves nothing behind.
 */
class KafkaSetup {
  readonly #kafka: Kafka;
  readonly #prefix: string;
  #admin: Admin | undefined;
  #producer: Producer | undefined;

  constructor(conn: KafkaConnection, prefix: string, log: Logger) {
    // Setup requests are large (createTopics of 120 partitions) and may be retried; the scaler's
    // clients keep their own tighter bounds.
    this.#kafka = kafkaClient(conn, { clientId: 'kmj-bench-setup', log, connectTimeoutMs: 5000, requestTimeoutMs: 30_000, retries: 5 });
    this.#prefix = prefix;
  }

  async #connectedAdmin(): Promise<Admin> {
    if (!this.#admin) {
      const admin = this.#kafka.admin();
      await admin.connect();
      this.#admin = admin;
    }
    return this.#admin;
  }

  async createTopics(plans: readonly GroupPlan[], signal: AbortSignal): Promise<void> {
    const admin = await this.#connectedAdmin();
    // Ten topics (120 partitions) a request: one request for all would keep the controller busy
    // for longer than a request timeout on this machine.
    for (let i = 0; i < plans.length; i += 10) {
      signal.throwIfAborted();
      const topics = plans.slice(i, i + 10).map((p) => p.topic);
      // Not kafkajs' waitForLeaders: it asks for the new topics by name and fails at once with
      // UNKNOWN_TOPIC_OR_PARTITION when the broker's metadata has not caught up with the controller.
      await admin.createTopics({
        topics: topics.map((topic) => ({ topic, numPartitions: PARTITIONS, replicationFactor: 1 })),
        waitForLeaders: false,
        timeout: 30_000,
      });
      await this.#waitForLeaders(admin, topics, signal);
    }
  }

  /** Until every partition of `topics` has a leader, from the metadata of all topics (asking by name would add them to kafkajs' target topics). */
  async #waitForLeaders(admin: Admin, topics: readonly string[], signal: AbortSignal): Promise<void> {
    const deadline = performance.now() + 30_000;
    for (;;) {
      const { topics: all } = await admin.fetchTopicMetadata();
      const byName = new Map(all.map((t) => [t.name, t.partitions]));
      const waiting = topics.filter((t) => {
        const parts = byName.get(t);
        return !parts || parts.length !== PARTITIONS || parts.some((p) => p.leader < 0 || p.partitionErrorCode !== 0);
      });
      if (waiting.length === 0) return;
      if (performance.now() > deadline) throw new Error(`topics ${waiting.join(', ')} have no leader for every partition after 30 s`);
      await sleep(100, signal);
      signal.throwIfAborted();
    }
  }

  async produce(plans: readonly GroupPlan[], signal: AbortSignal): Promise<void> {
    if (!this.#producer) {
      // Idempotent: right after createTopics a produce may get NOT_LEADER_OR_FOLLOWER for some
      // partitions, and a plain kafkajs producer then resends the whole request, duplicating the
      // records of the partitions that succeeded; the lag would no longer be the planned one.
      const producer = this.#kafka.producer({ allowAutoTopicCreation: false, idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      this.#producer = producer;
    }
    const producer = this.#producer;
    await eachLimited(plans, 4, signal, async (plan) => {
      const messages = plan.produced.flatMap((count, partition) =>
        Array.from({ length: count }, (_, k) => ({ partition, value: `r${k}` })),
      );
      await producer.send({ topic: plan.topic, acks: -1, messages });
    });
  }

  /** Commits each group's planned offsets as a consumer does (kafka/group.ts commitAsMember). */
  async commit(plans: readonly GroupPlan[], signal: AbortSignal): Promise<void> {
    await eachLimited(plans, 4, signal, async (plan) => {
      const offsets = plan.committed.flatMap((offset, partition) => (offset === undefined ? [] : [{ partition, offset: String(offset) }]));
      await within(commitAsMember(this.#kafka, plan.group, plan.topic, offsets), 30_000, `committing for consumer group ${plan.group}`);
    });
  }

  /** Deletes the run's groups, then its topics; returns what could not be deleted (empty: all gone). */
  async close(): Promise<string[]> {
    const left: string[] = [];
    try {
      await this.#producer?.disconnect();
      const admin = await this.#connectedAdmin();
      const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(this.#prefix));
      if (groups.length > 0) {
        const results = await admin.deleteGroups(groups).catch((err: unknown) => {
          // kafkajs names each group's own error in `groups` of its KafkaJSDeleteGroupsError.
          const each = (err as { groups?: Array<{ groupId: string; error?: unknown }> }).groups ?? [];
          const named = each.filter((g) => g.error !== undefined).map((g) => `${g.groupId}: ${messageOf(g.error)}`);
          left.push(
            `groups: ${messageOf(err)}${named.length > 0 ? ` (${named.slice(0, 5).join('; ')}${named.length > 5 ? '; …' : ''})` : ''}`,
          );
          return [];
        });
        for (const r of results) if (r.error) left.push(`group ${r.groupId}: ${messageOf(r.error)}`);
      }
      left.push(...(await this.#deleteTopics(admin)));
    } catch (err) {
      left.push(`Kafka cleanup failed: ${messageOf(err)}`);
    } finally {
      await this.#admin?.disconnect().catch((err: unknown) => left.push(`admin disconnect: ${messageOf(err)}`));
    }
    return left;
  }

  /**
   * Deletes the run's topics until the cluster lists none twice in a row, a second apart. The
   * listing comes from a broker's metadata, which trails the controller: a topic created just
   * before a failure may show up only later, and a deleted one stays listed for a moment.
   */
  async #deleteTopics(admin: Admin): Promise<string[]> {
    const deadline = performance.now() + 30_000;
    let lastError = '';
    let quiet = 0;
    while (performance.now() < deadline) {
      const listed = (await admin.listTopics()).filter((t) => t.startsWith(this.#prefix));
      if (listed.length === 0) {
        if (++quiet >= 2) return [];
        await sleep(1000);
        continue;
      }
      quiet = 0;
      // A topic already being deleted answers UNKNOWN_TOPIC_OR_PARTITION; the next listing tells.
      await admin.deleteTopics({ topics: listed, timeout: 30_000 }).catch((err: unknown) => {
        lastError = messageOf(err);
      });
      await sleep(500);
    }
    const remaining = (await admin.listTopics()).filter((t) => t.startsWith(this.#prefix));
    return remaining.length === 0 ? [] : [`topics ${remaining.join(', ')}${lastError ? ` (last error: ${lastError})` : ''}`];
  }
}

/**
 * The baseline: one KafkaOffsetsReader.read of a 12-partition group, as the scaler's refresh loop
 * makes it, `samples` times in a row, round-robin over `plans`, on a reader of its own. Every group
 * is read once first, untimed: that is start-up (connecting, the first listing, kafkajs learning
 * each topic), not a steady-state read. Each answer is checked against the plan, so this also
 * proves the setup before the scaler is asked anything.
 */
async function directReads(
  conn: KafkaConnection,
  plans: readonly GroupPlan[],
  samples: number,
  log: Logger,
  signal: AbortSignal,
  Reader: typeof KafkaOffsetsReader = KafkaOffsetsReader,
): Promise<Summary & { cpuMsPerRead: number }> {
  // The scaler's client settings (scaler/sources/kafka.ts and the defaults of scaler/config.ts).
  const kafka = kafkaClient(conn, { clientId: 'kmj-bench-reader', log, connectTimeoutMs: 3000, requestTimeoutMs: 2000, retries: 0 });
  const reader = new Reader({ kafka, brokers: conn.brokers.join(','), log });
  const readChecked = async (plan: GroupPlan): Promise<void> => {
    const got = await reader.read(plan.group, [plan.topic], signal);
    const wrong = got.partitions.filter(
      (p) => p.start !== 0 || p.end !== plan.produced[p.partition] || p.committed !== plan.committed[p.partition],
    );
    if (got.partitions.length !== plan.produced.length || wrong.length > 0) {
      throw new Error(
        `setup check: group ${plan.group} reads ${JSON.stringify(got.partitions)}, planned ends ${JSON.stringify(plan.produced)} and commits ${JSON.stringify(plan.committed)}`,
      );
    }
  };
  const times: number[] = [];
  let cpuMicros: number;
  try {
    for (const plan of plans) await readChecked(plan);
    // This process does nothing else meanwhile: its CPU time is the reads' (kafkajs encoding and
    // decoding; the checks are a few comparisons).
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < samples; i++) {
      const t0 = performance.now();
      await readChecked(plans[i % plans.length] as GroupPlan);
      times.push(performance.now() - t0);
    }
    const cpu = process.cpuUsage(cpu0);
    cpuMicros = cpu.user + cpu.system;
  } finally {
    await reader.close();
  }
  return { ...summary(times), cpuMsPerRead: cpuMicros / 1000 / samples };
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ setup and teardown

interface RabbitSetup {
  readonly targets: readonly PolledTarget[];
  close(): Promise<string[]>;
}

async function setUpQueues(url: string, prefix: string, count: number, signal: AbortSignal): Promise<RabbitSetup> {
  const conn = await amqpConnect(url);
  const ch = await conn.createConfirmChannel();
  const made: string[] = [];
  const close = async (): Promise<string[]> => {
    const left: string[] = [];
    // A fresh channel: the setup channel may be the one an error closed.
    try {
      const del = await conn.createChannel();
      for (const q of made) await del.deleteQueue(q).catch((err: unknown) => left.push(`queue ${q}: ${messageOf(err)}`));
      await del.close();
    } catch (err) {
      left.push(`RabbitMQ cleanup failed: ${messageOf(err)}`);
    }
    await conn.close().catch((err: unknown) => left.push(`RabbitMQ connection close: ${messageOf(err)}`));
    return left;
  };
  try {
    const plans = Array.from({ length: count }, (_, i) => planQueue(prefix, i));
    for (const plan of plans) {
      signal.throwIfAborted();
      await ch.assertQueue(plan.queue, { durable: false, autoDelete: false });
      made.push(plan.queue);
      for (let m = 0; m < plan.ready; m++) ch.sendToQueue(plan.queue, Buffer.from('x'));
    }
    await ch.waitForConfirms();
    for (const plan of plans) {
      const ok = await ch.checkQueue(plan.queue);
      if (ok.messageCount !== plan.ready)
        throw new Error(`setup check: queue ${plan.queue} holds ${ok.messageCount} messages, planned ${plan.ready}`);
    }
    return { targets: plans.map((p) => p.target), close };
  } catch (err) {
    const left = await close();
    if (left.length > 0) process.stderr.write(`bench-kafka: cleanup left ${left.join('; ')}\n`);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// The scaler process

function startScalerProcess(o: BenchOptions, root: string): Promise<ScalerProcess> {
  return startScaler({ root, nodeArgs: o.scalerNodeArgs, env: { KAFKA_BROKERS: o.brokers, RABBITMQ_URL: o.rabbitmqUrl } });
}

// ---------------------------------------------------------------------------------------------
// The scaler's own metrics (scaler/metrics.ts)

/** The scaler's figures over a window: two scrapes, at its start and at its end. */
interface ScalerFigures {
  /** kmj_scaler_refresh_duration_seconds by source: its broker reads. */
  readonly reads: Readonly<Record<PolledTarget['kind'], Histogram>>;
  /** kmj_scaler_refresh_errors_total by source. */
  readonly readErrors: Readonly<Record<PolledTarget['kind'], number>>;
  /** kmj_scaler_grpc_request_duration_seconds of GetMetrics: time inside the handler. */
  readonly getMetricsHandler: Histogram;
  /**
   * Event-loop delay over the window, ms. prom-client resets its monitor at every scrape, so the
   * end scrape's figures cover exactly the time since the start scrape.
   */
  readonly eventLoopLagMs: { readonly p50: number; readonly p99: number; readonly max: number };
  /** Time in V8's garbage collector over the window (nodejs_gc_duration_seconds, all kinds), ms. */
  readonly gcMs: number;
  /** V8 heap in use at the end of the window (nodejs_heap_size_used_bytes), MB. */
  readonly heapUsedMb: number;
}

function scalerFigures(beforeText: string, afterText: string): ScalerFigures {
  const before = parseMetrics(beforeText);
  const after = parseMetrics(afterText);
  const reads = (source: string): Histogram =>
    histogramDelta(
      histogramOf(after, 'kmj_scaler_refresh_duration_seconds', 'source', source),
      histogramOf(before, 'kmj_scaler_refresh_duration_seconds', 'source', source),
    );
  const errors = (samples: readonly PromSample[], source: string): number =>
    samples
      .filter((s) => s.name === 'kmj_scaler_refresh_errors_total' && s.labels.get('source') === source)
      .reduce((n, s) => n + s.value, 0);
  const gauge = (name: string): number => after.find((s) => s.name === name)?.value ?? Number.NaN;
  const gcSeconds = (samples: readonly PromSample[]): number =>
    samples.filter((s) => s.name === 'kmj_scaler_nodejs_gc_duration_seconds_sum').reduce((n, s) => n + s.value, 0);
  return {
    reads: { kafka: reads('kafka'), rabbitmq: reads('rabbitmq') },
    readErrors: {
      kafka: errors(after, 'kafka') - errors(before, 'kafka'),
      rabbitmq: errors(after, 'rabbitmq') - errors(before, 'rabbitmq'),
    },
    getMetricsHandler: histogramDelta(
      histogramOf(after, 'kmj_scaler_grpc_request_duration_seconds', 'method', 'GetMetrics'),
      histogramOf(before, 'kmj_scaler_grpc_request_duration_seconds', 'method', 'GetMetrics'),
    ),
    eventLoopLagMs: {
      p50: gauge('kmj_scaler_nodejs_eventloop_lag_p50_seconds') * 1000,
      p99: gauge('kmj_scaler_nodejs_eventloop_lag_p99_seconds') * 1000,
      max: gauge('kmj_scaler_nodejs_eventloop_lag_max_seconds') * 1000,
    },
    gcMs: (gcSeconds(after) - gcSeconds(before)) * 1000,
    heapUsedMb: gauge('kmj_scaler_nodejs_heap_size_used_bytes') / 1024 / 1024,
  };
}

// ---------------------------------------------------------------------------------------------
// KEDA-like polling

const METHODS = ['GetMetricSpec', 'GetMetrics', 'IsActive'] as const;
type Method = (typeof METHODS)[number];

/** What the polls of one phase saw: latencies by source and method, errors, wrong answers. */
class Tally {
  readonly samples = new Map<string, number[]>();
  readonly errors: Record<string, number> = {};
  /** The first error of each kind, with its details. */
  readonly errorExamples: string[] = [];
  polls = 0;
  checked = 0;
  wrong = 0;
  readonly wrongExamples: string[] = [];

  time(kind: PolledTarget['kind'], method: Method, msTaken: number): void {
    const key = `${kind}:${method}`;
    let list = this.samples.get(key);
    if (!list) this.samples.set(key, (list = []));
    list.push(msTaken);
  }

  error(method: Method, code: grpc.status, details: string): void {
    const key = `${method}:${grpc.status[code]}`;
    const seen = this.errors[key] ?? 0;
    this.errors[key] = seen + 1;
    if (seen === 0) this.errorExamples.push(`${key}: ${details}`);
  }

  check(target: PolledTarget, what: string, got: number | boolean | undefined, expected: number | boolean): void {
    this.checked++;
    if (got === expected) return;
    this.wrong++;
    if (this.wrongExamples.length < 5) this.wrongExamples.push(`${target.name}: ${what} ${String(got)}, expected ${String(expected)}`);
  }

  stats(kind: PolledTarget['kind'], method: Method): Summary {
    return summary(this.samples.get(`${kind}:${method}`) ?? []);
  }
}

/**
 * One KEDA poll of one ScaledJob: ScalerClient.poll's sequence (GetMetricSpec, GetMetrics with the
 * spec's metric name, IsActive), call by call so each is timed on its own, read with KEDA's rule
 * (kedaNumber) and checked against the plan.
 */
async function pollOnce(client: ScalerClient, target: PolledTarget, ref: ScaledObjectRef, tally: Tally): Promise<void> {
  tally.polls++;
  let t0 = performance.now();
  const spec = await client.getMetricSpec(ref);
  if (!spec.ok) return tally.error('GetMetricSpec', spec.error.code, spec.error.details);
  tally.time(target.kind, 'GetMetricSpec', performance.now() - t0);
  const first = spec.value.metricSpecs[0];
  tally.check(
    target,
    'GetMetricSpec targetSize',
    first ? kedaNumber(first.targetSize, first.targetSizeFloat) : undefined,
    target.expectedTargetSize,
  );
  if (!first) return;

  t0 = performance.now();
  const metrics = await client.getMetrics(ref, first.metricName);
  if (!metrics.ok) return tally.error('GetMetrics', metrics.error.code, metrics.error.details);
  tally.time(target.kind, 'GetMetrics', performance.now() - t0);
  const mv = metrics.value.metricValues[0];
  tally.check(target, 'GetMetrics value', mv ? kedaNumber(mv.metricValue, mv.metricValueFloat) : undefined, target.expectedValue);

  t0 = performance.now();
  const active = await client.isActive(ref);
  if (!active.ok) return tally.error('IsActive', active.error.code, active.error.details);
  tally.time(target.kind, 'IsActive', performance.now() - t0);
  tally.check(target, 'IsActive', active.value.result, target.expectedActive);
}

/**
 * Every target polled once per interval for `durationMs`, their start times spread over the
 * interval as independent ScaledJobs' would be. Bounded by the deadline: each call has the
 * client's 3 s deadline.
 */
async function pollAll(
  client: ScalerClient,
  targets: readonly PolledTarget[],
  address: string,
  o: BenchOptions,
  durationMs: number,
  tally: Tally,
  signal: AbortSignal,
): Promise<void> {
  const end = performance.now() + durationMs;
  await Promise.all(
    targets.map(async (target, i) => {
      const ref: ScaledObjectRef = {
        name: `job-${target.name}`,
        namespace: 'bench',
        scalerMetadata: { ...target.metadata, scalerAddress: address },
      };
      await sleep((i * o.pollIntervalMs) / targets.length, signal);
      while (performance.now() < end && !signal.aborted) {
        const started = performance.now();
        await pollOnce(client, target, ref, tally);
        await sleep(o.pollIntervalMs - (performance.now() - started), signal);
      }
    }),
  );
}

interface PhaseResult {
  readonly label: string;
  readonly kafkaTargets: number;
  readonly rabbitmqTargets: number;
  readonly wallSeconds: number;
  readonly polls: number;
  readonly checked: number;
  readonly wrong: number;
  readonly wrongExamples: readonly string[];
  readonly errors: Readonly<Record<string, number>>;
  readonly errorExamples: readonly string[];
  readonly warmupErrors: Readonly<Record<string, number>>;
  readonly rpc: Readonly<Record<string, Summary>>;
  readonly scaler: ScalerFigures;
  readonly cpuPercentOfOneCore: number;
  readonly rssMaxMb: number;
  readonly rssEndMb: number;
  readonly peakRssMb: number;
  readonly scalerWarnings: number;
  readonly scalerWarningExamples: readonly string[];
  /** The machine's 1-minute load average at the end of the window: this VM is shared. */
  readonly loadAverage: number;
}

async function runPhase(
  label: string,
  targets: readonly PolledTarget[],
  o: BenchOptions,
  signal: AbortSignal,
  root = PACKAGE_ROOT,
): Promise<PhaseResult> {
  const scaler = await startScalerProcess(o, root);
  const phase = AbortSignal.any([signal, scaler.exited]);
  const address = `127.0.0.1:${scaler.grpcPort}`;
  // KEDA keeps one gRPC connection per scaler address for all its ScaledJobs; so does the bench.
  const client = new ScalerClient(address);
  let rssTimer: NodeJS.Timeout | undefined;
  try {
    // Warm-up: every target registered and read, and the scaler has learnt the polling interval
    // (it reads each target four times per interval), so the window measures steady state.
    const warmup = new Tally();
    await pollAll(client, targets, address, o, 3 * o.pollIntervalMs, warmup, phase);

    const before = await scrape(scaler.metricsPort);
    const cpu0 = cpuSeconds(scaler.pid);
    let rssMaxMb = memoryMb(scaler.pid).rssMb;
    rssTimer = setInterval(() => {
      rssMaxMb = Math.max(rssMaxMb, memoryMb(scaler.pid).rssMb);
    }, 500);
    const t0 = performance.now();
    const tally = new Tally();
    await pollAll(client, targets, address, o, o.phaseSeconds * 1000, tally, phase);
    const wallSeconds = (performance.now() - t0) / 1000;
    const cpu = cpuSeconds(scaler.pid) - cpu0;
    const mem = memoryMb(scaler.pid);
    clearInterval(rssTimer);
    const after = await scrape(scaler.metricsPort);
    // The scaler exiting, or the bench being interrupted, ends the polls early: no figures then.
    phase.throwIfAborted();

    const rpc: Record<string, Summary> = {};
    for (const kind of ['kafka', 'rabbitmq'] as const) for (const m of METHODS) rpc[`${kind}:${m}`] = tally.stats(kind, m);
    return {
      label,
      kafkaTargets: targets.filter((t) => t.kind === 'kafka').length,
      rabbitmqTargets: targets.filter((t) => t.kind === 'rabbitmq').length,
      wallSeconds,
      polls: tally.polls,
      checked: tally.checked,
      wrong: tally.wrong,
      wrongExamples: tally.wrongExamples,
      errors: tally.errors,
      errorExamples: tally.errorExamples,
      warmupErrors: { ...warmup.errors, ...(warmup.wrong > 0 ? { wrong: warmup.wrong } : {}) },
      rpc,
      scaler: scalerFigures(before, after),
      cpuPercentOfOneCore: (cpu / wallSeconds) * 100,
      rssMaxMb: Math.max(rssMaxMb, mem.rssMb),
      rssEndMb: mem.rssMb,
      peakRssMb: mem.peakMb,
      scalerWarnings: scaler.warnings.count,
      scalerWarningExamples: [...scaler.warnings.first],
      loadAverage: loadAverages()[0],
    };
  } finally {
    clearInterval(rssTimer);
    client.close();
    await scaler.stop();
  }
}

function printPhase(r: PhaseResult): void {
  out(`-- ${r.label} --`);
  for (const kind of ['kafka', 'rabbitmq'] as const) {
    if ((kind === 'kafka' ? r.kafkaTargets : r.rabbitmqTargets) === 0) continue;
    for (const m of METHODS) {
      const s = r.rpc[`${kind}:${m}`];
      if (s) out(`  ${`${m} (${kind})`.padEnd(26)} n=${String(s.n).padEnd(6)} p50 ${ms(s.p50)}  p99 ${ms(s.p99)}`);
    }
  }
  for (const kind of ['kafka', 'rabbitmq'] as const) {
    const h = r.scaler.reads[kind];
    if (h.count === 0 && r.scaler.readErrors[kind] === 0) continue;
    out(
      `  scaler's ${kind} reads: ${h.count} (${(h.count / r.wallSeconds).toFixed(0)}/s), mean ${ms((h.sumSeconds / h.count) * 1000)}, p50 <= ${bucketBoundMs(h, 50)} ms, p99 <= ${bucketBoundMs(h, 99)} ms (its histogram), failed ${r.scaler.readErrors[kind]}`,
    );
  }
  const handler = r.scaler.getMetricsHandler;
  const lag = r.scaler.eventLoopLagMs;
  // prom-client samples the loop every 10 ms and records the whole gap: 10 ms is an idle loop.
  out(
    `  inside the scaler: GetMetrics handler p50 <= ${bucketBoundMs(handler, 50)} ms, p99 <= ${bucketBoundMs(handler, 99)} ms; event-loop gaps (10 ms = idle) p50 ${lag.p50.toFixed(1)} ms, p99 ${lag.p99.toFixed(1)} ms, max ${lag.max.toFixed(1)} ms`,
  );
  out(
    `  scaler CPU ${r.cpuPercentOfOneCore.toFixed(1)}% of one core (GC ${((r.scaler.gcMs / 1000 / r.wallSeconds) * 100).toFixed(1)}%)   RSS max ${r.rssMaxMb.toFixed(1)} MB, end ${r.rssEndMb.toFixed(1)} MB (VmHWM ${r.peakRssMb.toFixed(1)} MB), V8 heap used ${r.scaler.heapUsedMb.toFixed(1)} MB`,
  );
  out(`  machine load average (1 min) at the end: ${r.loadAverage.toFixed(2)} on ${availableParallelism()} cores`);
  out(
    `  answers checked ${r.checked} in ${r.polls} polls: wrong ${r.wrong}; RPC errors ${Object.keys(r.errors).length === 0 ? 'none' : JSON.stringify(r.errors)}; warm-up errors ${Object.keys(r.warmupErrors).length === 0 ? 'none' : JSON.stringify(r.warmupErrors)}`,
  );
  for (const e of [...r.wrongExamples, ...r.errorExamples]) out(`    ${e}`);
  if (r.scalerWarnings > 0) out(`  scaler logged ${r.scalerWarnings} warning/error lines, e.g. ${r.scalerWarningExamples.join(' | ')}`);
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = readOptions(process.env);
  const stop = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => stop.abort(new Error(`interrupted by ${sig}`));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('SIGHUP', onSignal);
  // Whoever read the output has gone (`| head`): without a listener the EPIPE would kill this
  // process before its cleanup ran. Stop the run instead; the cleanup still deletes everything.
  const onStdoutError = (err: Error): void => stop.abort(new Error(`stdout: ${err.message}`, { cause: err }));
  process.stdout.on('error', onStdoutError);
  const signal = stop.signal;

  const log = createLogger({ level: 'silent', name: 'kmj-bench' });
  const { value: conn, problems } = kafkaConnection({ KAFKA_BROKERS: o.brokers });
  if (!conn) throw new Error(`KAFKA_BROKERS: ${problems.join('; ')}`);
  // Unique per run: the cleanup deletes whatever starts with it, and only that.
  const prefix = `kmj-bench-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
  const plans = Array.from({ length: o.groups }, (_, i) => planGroup(prefix, i));
  const kafkaSetup = new KafkaSetup(conn, prefix, log);
  let rabbit: RabbitSetup | undefined;
  let failed = false;
  const t0 = performance.now();
  try {
    out(benchHeader('bench-kafka'));
    out(
      `kafka benchmark: ${o.groups} consumer groups, each on its own topic of ${PARTITIONS} partitions (${o.groups * PARTITIONS} partitions), ${o.queues} RabbitMQ queues; each ScaledJob polled every ${o.pollIntervalMs} ms (GetMetricSpec, GetMetrics, IsActive), ${o.phaseSeconds} s per phase; Node ${process.versions.node}; prefix ${prefix}`,
    );
    const lags = plans.map((p) => p.lag);
    const capped = plans.filter((p) => p.target.expectedValue < p.lag).length;
    const inactive = plans.filter((p) => !p.target.expectedActive).length;
    out(
      `lag per group ${Math.min(...lags)}-${Math.max(...lags)} records; ${capped} groups capped at partitions x lagThreshold, ${inactive} below their activation threshold`,
    );

    let t = performance.now();
    await kafkaSetup.createTopics(plans, signal);
    const topicsS = (performance.now() - t) / 1000;
    t = performance.now();
    await kafkaSetup.produce(plans, signal);
    const produceS = (performance.now() - t) / 1000;
    t = performance.now();
    await kafkaSetup.commit(plans, signal);
    const commitS = (performance.now() - t) / 1000;
    t = performance.now();
    if (o.phases.some((p) => p !== 'kafka')) rabbit = await setUpQueues(o.rabbitmqUrl, prefix, o.queues, signal);
    out(
      `setup: topics ${topicsS.toFixed(1)} s, produce ${produceS.toFixed(1)} s, commits ${commitS.toFixed(1)} s, RabbitMQ queues ${((performance.now() - t) / 1000).toFixed(1)} s`,
    );

    // Two readers: one that has read every group, as the scaler's is (the baseline), and one that
    // only ever read one group: kafkajs refreshes the metadata of every topic an admin client has
    // asked about, on almost every read, so a read costs more the more topics its client knows.
    const direct = await directReads(conn, plans, o.readSamples, log, signal);
    out(
      `direct KafkaOffsetsReader.read of one 12-partition group, reader that knows all ${plans.length} topics (this process, one at a time, ${direct.n} reads): p50 ${ms(direct.p50)}  p99 ${ms(direct.p99)}, CPU ${ms(direct.cpuMsPerRead)} a read; every end and committed offset as planned`,
    );
    const single = await directReads(conn, plans.slice(0, 1), Math.min(o.readSamples, 500), log, signal);
    out(
      `  the same, reader that knows one topic (${single.n} reads): p50 ${ms(single.p50)}  p99 ${ms(single.p99)}, CPU ${ms(single.cpuMsPerRead)} a read`,
    );
    // The baseline commit's reader, in this process: its module, from its own checkout.
    const baselineRoot = o.baselineRef === '' ? undefined : baselineCheckout(o.baselineRef);
    let baselineDirect: (Summary & { cpuMsPerRead: number }) | undefined;
    if (baselineRoot) {
      const module = (await import(pathToFileURL(join(baselineRoot, 'kafka', 'offsets.ts')).href)) as {
        KafkaOffsetsReader: typeof KafkaOffsetsReader;
      };
      baselineDirect = await directReads(conn, plans, o.readSamples, log, signal, module.KafkaOffsetsReader);
      out(
        `  the same on ${o.baselineRef} (baseline), reader that knows all ${plans.length} topics (${baselineDirect.n} reads): p50 ${ms(baselineDirect.p50)}  p99 ${ms(baselineDirect.p99)}, CPU ${ms(baselineDirect.cpuMsPerRead)} a read`,
      );
    }

    const kafkaTargets = plans.map((p) => p.target);
    const rabbitTargets = rabbit?.targets ?? [];
    const phases = new Map<PhaseName, PhaseResult>();
    const baselinePhases = new Map<PhaseName, PhaseResult>();
    for (const name of o.phases) {
      const [label, targets] =
        name === 'kafka'
          ? [`Kafka only: ${kafkaTargets.length} consumer groups`, kafkaTargets]
          : name === 'rabbitmq'
            ? [`RabbitMQ only: ${rabbitTargets.length} queues`, rabbitTargets]
            : [
                `both: ${kafkaTargets.length} Kafka groups + ${rabbitTargets.length} RabbitMQ queues, one scaler`,
                [...kafkaTargets, ...rabbitTargets],
              ];
      const r = await runPhase(label, targets, o, signal);
      printPhase(r);
      phases.set(name, r);
      if (baselineRoot && name !== 'rabbitmq') {
        const b = await runPhase(`${label} (baseline ${o.baselineRef})`, targets, o, signal, baselineRoot);
        printPhase(b);
        baselinePhases.set(name, b);
      }
    }

    out('-- summary --');
    for (const [name, r] of phases) {
      const gm = r.rpc['kafka:GetMetrics'];
      if (name === 'rabbitmq' || !gm) continue;
      out(
        `  ${name}: direct lag read / cached GetMetrics (Kafka): p50 ${ms(direct.p50)} / ${ms(gm.p50)} = ${(direct.p50 / gm.p50).toFixed(2)}x, p99 ${ms(direct.p99)} / ${ms(gm.p99)} = ${(direct.p99 / gm.p99).toFixed(2)}x (above 1: the cache answers faster than one read)`,
      );
    }
    // What serving Kafka groups costs the RabbitMQ triggers of the same scaler.
    const alone = phases.get('rabbitmq')?.rpc['rabbitmq:GetMetrics'];
    const beside = phases.get('both')?.rpc['rabbitmq:GetMetrics'];
    if (alone && beside)
      out(
        `  RabbitMQ GetMetrics beside Kafka / alone: p50 ${ms(beside.p50)} / ${ms(alone.p50)} = ${(beside.p50 / alone.p50).toFixed(2)}x, p99 ${ms(beside.p99)} / ${ms(alone.p99)} = ${(beside.p99 / alone.p99).toFixed(2)}x`,
      );
    for (const [name, r] of phases)
      out(
        `  ${name.padEnd(8)} scaler CPU ${r.cpuPercentOfOneCore.toFixed(1)}% of one core, RSS max ${r.rssMaxMb.toFixed(1)} MB, end ${r.rssEndMb.toFixed(1)} MB`,
      );
    if (baselineDirect)
      out(
        `  direct read, this / ${o.baselineRef}: p50 ${ms(direct.p50)} / ${ms(baselineDirect.p50)} = ${(direct.p50 / baselineDirect.p50).toFixed(2)}x, p99 ${ms(direct.p99)} / ${ms(baselineDirect.p99)} = ${(direct.p99 / baselineDirect.p99).toFixed(2)}x, CPU a read ${ms(direct.cpuMsPerRead)} / ${ms(baselineDirect.cpuMsPerRead)} = ${(direct.cpuMsPerRead / baselineDirect.cpuMsPerRead).toFixed(2)}x`,
      );
    for (const [name, b] of baselinePhases) {
      const r = phases.get(name);
      if (!r) continue;
      const [gm, bgm] = [r.rpc['kafka:GetMetrics'], b.rpc['kafka:GetMetrics']];
      const rabbit = r.rpc['rabbitmq:GetMetrics'];
      const brabbit = b.rpc['rabbitmq:GetMetrics'];
      out(
        `  ${name.padEnd(8)} this / ${o.baselineRef}: scaler CPU ${r.cpuPercentOfOneCore.toFixed(1)}% / ${b.cpuPercentOfOneCore.toFixed(1)}% = ${(r.cpuPercentOfOneCore / b.cpuPercentOfOneCore).toFixed(2)}x` +
          (gm && bgm
            ? `; Kafka GetMetrics p50 ${ms(gm.p50)} / ${ms(bgm.p50)}, p99 ${ms(gm.p99)} / ${ms(bgm.p99)} = ${(gm.p99 / bgm.p99).toFixed(2)}x`
            : '') +
          (rabbit && brabbit && rabbit.n > 0 ? `; RabbitMQ GetMetrics p99 ${ms(rabbit.p99)} / ${ms(brabbit.p99)}` : '') +
          `; RSS max ${r.rssMaxMb.toFixed(1)} / ${b.rssMaxMb.toFixed(1)} MB`,
      );
    }
    // The goal (issue 21): the cached answer's tail at most 1.2 x one direct read's.
    for (const [name, r] of phases) {
      const gm = r.rpc['kafka:GetMetrics'];
      if (name === 'rabbitmq' || !gm) continue;
      out(`  ${name.padEnd(8)} Kafka GetMetrics p99 / direct read p99: ${(gm.p99 / direct.p99).toFixed(2)}x (goal <= 1.20x)`);
    }
    // The baseline's answers are checked as strictly as this commit's.
    const all = [...phases.values(), ...baselinePhases.values()];
    const wrong = all.reduce((n, r) => n + r.wrong, 0);
    const checked = all.reduce((n, r) => n + r.checked, 0);
    const errors = all.reduce((n, r) => n + Object.values(r.errors).reduce((a, b) => a + b, 0), 0);
    out(`  correctness: ${checked} answers checked, ${wrong} wrong, ${errors} RPC errors`);
    if (wrong > 0 || checked === 0) {
      failed = true;
      process.stderr.write(`bench-kafka failed: ${wrong} wrong answers out of ${checked}\n`);
    }

    const dir = join(PACKAGE_ROOT, '.run');
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, 'bench-kafka.json'),
      `${JSON.stringify({ options: o, prefix, direct, directOneTopic: single, baselineDirect, phases: Object.fromEntries(phases), baselinePhases: Object.fromEntries(baselinePhases) }, null, 2)}\n`,
    );
  } finally {
    const left = [...(await kafkaSetup.close()), ...((await rabbit?.close()) ?? [])];
    if (left.length > 0) {
      failed = true;
      process.stderr.write(`bench-kafka: cleanup left ${left.join('; ')}\n`);
    } else {
      out(`cleanup: every topic, group and queue of ${prefix} deleted; whole run ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
  }
  if (failed) process.exitCode = 1;
}

main()
  .catch((err: unknown) => {
    process.stderr.write(`bench-kafka failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    // A bench stops by itself: everything is closed by now, so a client that still holds the event
    // loop (kafkajs after a failed clean-up did, at 6f7ad45) is named and the process ends anyway.
    setTimeout(() => {
      process.stderr.write('bench-kafka: something still held the process 10 s after the run ended; exiting\n');
      process.exit(process.exitCode ?? 1);
    }, 10_000).unref();
  });
