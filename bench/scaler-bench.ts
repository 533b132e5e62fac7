/**
 * `make bench-scaler`: the scaler under the load KEDA puts on it.
 *
 * 200 queues, each polled the way KEDA polls a ScaledJob (GetMetricSpec, GetMetrics, IsActive)
 * once a second, for the phase length (30 s by default), against a `kmj scaler` child process.
 * In the same run, on the same gRPC channel, a grpc.health.v1 Check on every 2nd poll: the
 * floor for any RPC on this server. Two phases: the broker as it is, then the broker behind a
 * proxy that delays every byte (a slow broker). Printed: GetMetrics and Check p50/p99 and their
 * ratio, the round trip of a bare amqplib passive declare (direct and slowed), and the scaler's
 * CPU and RSS, beside the CPU and RSS of the same server answering only health Checks at the same
 * RPC rate (the transport's own floor).
 *
 * As Prometheus does, /metrics is scraped every 15 s in every phase. The scaler of
 * BENCH_BASELINE_REF (default 129071d, the commit before the dashboards' metrics and the reports),
 * built in a worktree under .run/, runs twice under the same load, alternating with this commit's
 * phases: the cost of those metrics is the ratio of the means, measured in the same run. A last
 * phase adds workers' reports (POST /v1/reports) at BENCH_REPORTS_PER_SECOND, spread over every
 * queue: the report intake's own cost (the baseline has none).
 *
 * Options (env): BENCH_QUEUES (200), BENCH_PHASE_SECONDS (30), BENCH_DELAY_MS (40, one way),
 * BENCH_REPORTS_PER_SECOND (5: a Pi cluster's four pods finish a request a second at most),
 * BENCH_BASELINE_REF (129071d; empty: no baseline phase).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { connect } from 'amqplib';
import { packageFile, PACKAGE_ROOT } from '../common/paths.ts';
import { REPORT_STEPS } from '../common/report.ts';
import { kedaNumber } from '../scaler/client.ts';
import { loadExternalScalerPackage } from '../scaler/grpc-server.ts';
import { baselineCheckout, benchHeader } from './harness.ts';
import { benchOptions, SCALER_NODE_ARGS_SPEC } from './options.ts';
import { cpuSeconds, memoryMb, startScaler } from './process.ts';
import { ms, out, summary } from './stats.ts';

const OPTIONS = benchOptions('bench-scaler', {
  BENCH_QUEUES: { kind: 'integer', min: 1, max: 5000, default: 200 },
  BENCH_PHASE_SECONDS: { kind: 'integer', min: 5, max: 600, default: 30 },
  BENCH_DELAY_MS: { kind: 'integer', min: 0, max: 1000, default: 40 },
  RABBITMQ_URL: { kind: 'url', protocols: ['amqp'], default: 'amqp://guest:guest@127.0.0.1:5672' },
  BENCH_SCALER_NODE_ARGS: SCALER_NODE_ARGS_SPEC,
  BENCH_REPORTS_PER_SECOND: { kind: 'integer', min: 0, max: 1000, default: 5 },
  BENCH_BASELINE_REF: { kind: 'string', default: '129071d', pattern: /^[\w./-]*$/, patternHint: 'a commit or ref' },
});
const QUEUES = OPTIONS.BENCH_QUEUES;
const PHASE_SECONDS = OPTIONS.BENCH_PHASE_SECONDS;
const DELAY_MS = OPTIONS.BENCH_DELAY_MS;
const RABBITMQ_URL = OPTIONS.RABBITMQ_URL;
const SCALER_NODE_ARGS = OPTIONS.BENCH_SCALER_NODE_ARGS.split(' ').filter(Boolean);
const REPORTS_PER_SECOND = OPTIONS.BENCH_REPORTS_PER_SECOND;
// Set but empty: no baseline phase (an empty value reads as unset, so it is looked at here).
const BASELINE_REF = process.env['BENCH_BASELINE_REF'] === '' ? '' : OPTIONS.BENCH_BASELINE_REF;
const SCRAPE_EVERY_MS = 15_000;

type Unary = (req: unknown, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

/** One RPC as the client saw it: how long it took, and its answer or its status code. */
interface Answer {
  readonly ms: number;
  readonly err?: string;
  readonly res?: unknown;
}

/** Why a GetMetricSpec answer is not the trigger's (one metric, targetSize 1), or undefined. */
function specProblem(res: unknown, job: string): string | undefined {
  const specs = (res as { metricSpecs?: Array<{ targetSize?: unknown; targetSizeFloat?: unknown }> } | undefined)?.metricSpecs ?? [];
  const size = specs[0] ? kedaNumber(Number(specs[0].targetSize ?? 0), Number(specs[0].targetSizeFloat ?? 0)) : undefined;
  return specs.length === 1 && size === 1 ? undefined : `${job}: ${JSON.stringify(res)}, want one metric of targetSize 1`;
}

/** Why a GetMetrics answer is not the queue's backlog, or undefined. */
function metricsProblem(res: unknown, job: string, ready: number): string | undefined {
  const values = (res as { metricValues?: Array<{ metricValue?: unknown; metricValueFloat?: unknown }> } | undefined)?.metricValues ?? [];
  const v = values[0] ? kedaNumber(Number(values[0].metricValue ?? 0), Number(values[0].metricValueFloat ?? 0)) : undefined;
  return v === ready ? undefined : `${job}: value ${v}, want ${ready}`;
}

/** Why an IsActive answer is not the queue's, or undefined. */
function activeProblem(res: unknown, job: string, active: boolean): string | undefined {
  const got = (res as { result?: unknown } | undefined)?.result;
  return got === active ? undefined : `${job}: active ${String(got)}, want ${String(active)}`;
}

/** TCP proxy that holds every chunk for `delayMs` in each direction, preserving order. */
function delayProxy(upstreamPort: number, delayMs: number): Promise<{ port: number; server: Server; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = netConnect({ host: '127.0.0.1', port: upstreamPort });
    sockets.add(client);
    sockets.add(upstream);
    const pipeDelayed = (from: Socket, to: Socket): void => {
      from.on('data', (chunk) => {
        setTimeout(() => {
          if (!to.destroyed) to.write(chunk);
        }, delayMs);
      });
      from.on('close', () => setTimeout(() => to.destroy(), delayMs));
      from.on('error', () => to.destroy());
    };
    pipeDelayed(client, upstream);
    pipeDelayed(upstream, client);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      resolve({ port: typeof addr === 'object' && addr ? addr.port : 0, server, sockets });
    });
  });
}

async function declareRtt(url: string, queues: string[], samples: number): Promise<{ p50: number; p99: number }> {
  const conn = await connect(url);
  const ch = await conn.createChannel();
  const times: number[] = [];
  for (let i = 0; i < samples; i++) {
    const q = queues[i % queues.length] as string;
    const t0 = performance.now();
    await ch.checkQueue(q);
    times.push(performance.now() - t0);
  }
  await conn.close();
  return summary(times);
}

interface PhaseResult {
  getMetrics: { n: number; p50: number; p99: number };
  isActive: { n: number; p50: number; p99: number };
  getMetricSpec: { n: number; p50: number; p99: number };
  check: { n: number; p50: number; p99: number };
  errors: Record<string, number>;
  /** Answers checked against the queue's contents, and how many were not its. */
  checked: number;
  wrong: number;
  cpuPercentOfOneCore: number;
  rssMb: number;
  peakRssMb: number;
}

interface PhaseOptions {
  /** The same RPC rate, all of it health Checks. */
  readonly floorOnly?: boolean;
  /** Worker reports a second, spread over the queues. */
  readonly reportsPerSecond?: number;
  /** The checkout whose scaler runs (a baseline's). */
  readonly root?: string;
}

async function runPhase(label: string, amqpUrl: string, queues: string[], options: PhaseOptions = {}): Promise<PhaseResult> {
  const floorOnly = options.floorOnly === true;
  const scaler = await startScaler({ root: options.root ?? PACKAGE_ROOT, nodeArgs: SCALER_NODE_ARGS, env: { RABBITMQ_URL: amqpUrl } });
  const pid = scaler.pid;
  const address = `127.0.0.1:${scaler.grpcPort}`;
  const scalerCtor = (
    grpc.loadPackageDefinition(loadExternalScalerPackage()) as unknown as {
      externalscaler: { ExternalScaler: grpc.ServiceClientConstructor };
    }
  ).externalscaler.ExternalScaler;
  const healthDef = protoLoader.loadSync(packageFile('node_modules', 'grpc-health-check', 'proto', 'health', 'v1', 'health.proto'), {
    keepCase: true,
  });
  const healthCtor = (
    grpc.loadPackageDefinition(healthDef) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } }
  ).grpc.health.v1.Health;
  // KEDA shares one gRPC connection per scaler address; so do we, for both services.
  const channel = new grpc.Channel(address, grpc.credentials.createInsecure(), {});
  const client = new scalerCtor(address, grpc.credentials.createInsecure(), { channelOverride: channel }) as unknown as Record<
    string,
    Unary
  >;
  const health = new healthCtor(address, grpc.credentials.createInsecure(), { channelOverride: channel }) as unknown as Record<
    string,
    Unary
  >;

  const call = (c: Record<string, Unary>, method: string, req: unknown): Promise<Answer> =>
    new Promise((resolve) => {
      const t0 = performance.now();
      (c[method] as Unary).call(c, req, (err, res) => {
        const dt = performance.now() - t0;
        resolve(err ? { ms: dt, err: grpc.status[err.code] } : { ms: dt, res });
      });
    });

  const refs = queues.map((q, i) => ({ name: `job-${i}`, namespace: 'bench', scalerMetadata: { queueName: q, scalerAddress: address } }));
  // Warm-up: every queue registered and read once, so the phase measures steady state.
  for (let round = 0; round < 3; round++) {
    await Promise.all(
      refs.map((ref) =>
        call(client, 'GetMetricSpec', ref).then(() => call(client, 'GetMetrics', { scaledObjectRef: ref, metricName: '' })),
      ),
    );
    await new Promise((r) => setTimeout(r, 1000));
  }

  const samples = { GetMetricSpec: [] as number[], GetMetrics: [] as number[], IsActive: [] as number[], Check: [] as number[] };
  const errors: Record<string, number> = {};
  const wrong: string[] = [];
  let checked = 0;
  /**
   * Every call counts in its method's percentiles, a failed one too (at the time it took to fail);
   * a failure is also counted by its code, and an answer that is not the queue's is counted wrong.
   */
  const note = (method: keyof typeof samples, r: Answer, expected?: (res: unknown) => string | undefined): void => {
    samples[method].push(r.ms);
    if (r.err) {
      errors[`${method}:${r.err}`] = (errors[`${method}:${r.err}`] ?? 0) + 1;
      return;
    }
    if (!expected) return;
    checked++;
    const problem = expected(r.res);
    if (problem !== undefined) wrong.push(`${method}: ${problem}`);
  };

  const cpu0 = cpuSeconds(pid);
  const t0 = performance.now();
  const end = t0 + PHASE_SECONDS * 1000;
  // Prometheus' scrapes, and the workers' reports, beside KEDA's polls.
  const metricsUrl = `http://127.0.0.1:${scaler.metricsPort}`;
  let scrapes = 0;
  const scraper = setInterval(() => {
    fetch(`${metricsUrl}/metrics`).then(
      async (r) => {
        await r.text();
        scrapes++;
      },
      () => undefined,
    );
  }, SCRAPE_EVERY_MS);
  const reports = { sent: 0, refused: 0 };
  const steps = REPORT_STEPS;
  const reporter =
    (options.reportsPerSecond ?? 0) > 0
      ? setInterval(
          () => {
            const queue = queues[reports.sent % queues.length] as string;
            const body = JSON.stringify({
              version: 1,
              source: 'rabbitmq',
              scope: '/',
              name: queue,
              outcome: reports.sent % 10 === 0 ? 'dead_lettered' : 'finished',
              seconds: Object.fromEntries(steps.map((st, k) => [st, (k + 1) * 0.37])),
            });
            reports.sent++;
            fetch(`${metricsUrl}/v1/reports`, { method: 'POST', body, headers: { 'content-type': 'application/json' } }).then(
              async (r) => {
                await r.text();
                if (r.status !== 204) reports.refused++;
              },
              () => reports.refused++,
            );
          },
          1000 / (options.reportsPerSecond ?? 1),
        )
      : undefined;
  // Each queue is one ScaledJob polled every second, start times spread over the second.
  await Promise.all(
    refs.map(async (ref, i) => {
      await new Promise((r) => setTimeout(r, (i * 1000) / refs.length));
      let polls = 0;
      while (performance.now() < end) {
        const started = performance.now();
        // Calls run in a random order each poll, so no method gains from its place in the burst
        // (the first call after the timer wakes up is the slowest).
        // Queue i holds i % 5 messages and no consumer: the backlog KEDA must be told.
        const ready = i % 5;
        const calls: Array<() => Promise<void>> = floorOnly
          ? // The transport's floor: the same number of RPCs, all of them health Checks.
            [0, 1, 2].map(() => async () => note('Check', await call(health, 'Check', { service: '' })))
          : [
              async () => note('GetMetricSpec', await call(client, 'GetMetricSpec', ref), (res) => specProblem(res, ref.name)),
              async () =>
                note('GetMetrics', await call(client, 'GetMetrics', { scaledObjectRef: ref, metricName: '' }), (res) =>
                  metricsProblem(res, ref.name, ready),
                ),
              async () => note('IsActive', await call(client, 'IsActive', ref), (res) => activeProblem(res, ref.name, ready > 0)),
            ];
        // The floor probe rides on every 2nd poll: a sixth of the RPC load, enough samples for a p99.
        if (!floorOnly && ++polls % 2 === i % 2) calls.push(async () => note('Check', await call(health, 'Check', { service: '' })));
        for (let k = calls.length - 1; k > 0; k--) {
          const j = Math.floor(Math.random() * (k + 1));
          [calls[k], calls[j]] = [calls[j] as () => Promise<void>, calls[k] as () => Promise<void>];
        }
        for (const c of calls) await c();
        const wait = 1000 - (performance.now() - started);
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
    }),
  );
  clearInterval(scraper);
  clearInterval(reporter);
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(pid) - cpu0;
  const mem = memoryMb(pid);
  const scraped = await fetch(`http://127.0.0.1:${scaler.metricsPort}/metrics`).then((r) => r.text());
  const heapLines = scraped
    .split('\n')
    .filter((l) => /^kmj_scaler_nodejs_(heap_size_(used|total)_bytes|external_memory_bytes|heap_space_size_used_bytes)/.test(l));
  channel.close();
  await scaler.stop();

  const result: PhaseResult = {
    getMetrics: summary(samples.GetMetrics),
    isActive: summary(samples.IsActive),
    getMetricSpec: summary(samples.GetMetricSpec),
    check: summary(samples.Check),
    errors,
    checked,
    wrong: wrong.length,
    cpuPercentOfOneCore: (cpu / wall) * 100,
    rssMb: mem.rssMb,
    peakRssMb: mem.peakMb,
  };
  out(`-- ${label} --`);
  if (!floorOnly) {
    out(`  GetMetrics      n=${result.getMetrics.n}  p50 ${ms(result.getMetrics.p50)}  p99 ${ms(result.getMetrics.p99)}`);
    out(`  IsActive        n=${result.isActive.n}  p50 ${ms(result.isActive.p50)}  p99 ${ms(result.isActive.p99)}`);
    out(`  GetMetricSpec   n=${result.getMetricSpec.n}  p50 ${ms(result.getMetricSpec.p50)}  p99 ${ms(result.getMetricSpec.p99)}`);
  }
  out(`  health Check    n=${result.check.n}  p50 ${ms(result.check.p50)}  p99 ${ms(result.check.p99)}   (floor)`);
  if (!floorOnly)
    out(
      `  GetMetrics / Check: p50 ${(result.getMetrics.p50 / result.check.p50).toFixed(2)}x  p99 ${(result.getMetrics.p99 / result.check.p99).toFixed(2)}x`,
    );
  out(
    `  scaler CPU ${result.cpuPercentOfOneCore.toFixed(1)}% of one core   RSS ${result.rssMb.toFixed(1)} MB (peak ${result.peakRssMb.toFixed(1)} MB)`,
  );
  out(`  answers checked ${checked}: wrong ${wrong.length}${wrong.length > 0 ? `, e.g. ${wrong.slice(0, 3).join(' | ')}` : ''}`);
  out(
    `  errors (counted in the percentiles above too) ${Object.keys(errors).length === 0 ? 'none' : JSON.stringify(errors)}; /metrics scraped ${scrapes} times; worker reports ${reports.sent} sent, ${reports.refused} refused`,
  );
  if (reports.refused > 0) throw new Error(`${label}: the scaler refused ${reports.refused} of ${reports.sent} worker reports`);
  if (process.env['BENCH_VERBOSE']) for (const l of heapLines) out(`  ${l}`);
  return result;
}

async function main(): Promise<void> {
  const setup = await connect(RABBITMQ_URL);
  const ch = await setup.createChannel();
  const queues: string[] = [];
  const tag = Date.now().toString(36);
  for (let i = 0; i < QUEUES; i++) {
    const q = `bench-${tag}-${i}`;
    await ch.assertQueue(q, { durable: false, autoDelete: false });
    for (let m = 0; m < i % 5; m++) ch.sendToQueue(q, Buffer.from('x'));
    queues.push(q);
  }
  const brokerPort = Number(new URL(RABBITMQ_URL).port || 5672);
  const proxy = await delayProxy(brokerPort, DELAY_MS);
  const slowUrl = (() => {
    const u = new URL(RABBITMQ_URL);
    u.port = String(proxy.port);
    return u.toString();
  })();

  out(benchHeader('bench-scaler'));
  out(
    `scaler benchmark: ${QUEUES} queues, 3 KEDA RPCs per queue per second + a health Check every 2nd poll, ${PHASE_SECONDS} s per phase, Node ${process.versions.node}`,
  );
  const directDeclare = await declareRtt(RABBITMQ_URL, queues, 2000);
  const slowDeclare = await declareRtt(slowUrl, queues, 50);
  out(
    `bare amqplib passive declare: direct p50 ${ms(directDeclare.p50)} p99 ${ms(directDeclare.p99)}; slowed (+${DELAY_MS} ms each way) p50 ${ms(slowDeclare.p50)} p99 ${ms(slowDeclare.p99)}`,
  );
  const commit = execFileSync('git', ['-C', PACKAGE_ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  out(`worker reports ${REPORTS_PER_SECOND}/s; /metrics scraped every ${SCRAPE_EVERY_MS / 1000} s`);
  // The baseline's phases alternate with this commit's (a process's CPU and RSS drift from one
  // phase to the next by more than the 10% asked of the comparison): this commit, the baseline,
  // the slowed broker and the floor, then this commit and the baseline again.
  const baselineRoot = BASELINE_REF === '' ? undefined : baselineCheckout(BASELINE_REF);
  const baselinePhase = async (n: number): Promise<PhaseResult | undefined> =>
    baselineRoot === undefined
      ? undefined
      : runPhase(`baseline ${BASELINE_REF} (${n}): broker as is, no reports`, RABBITMQ_URL, queues, { root: baselineRoot });
  // The comparison with the baseline is made under KEDA's load alone (the baseline has no report
  // intake); the intake's own cost is the phase with reports beside this commit's.
  const normal = await runPhase('broker as is', RABBITMQ_URL, queues);
  const baseline1 = await baselinePhase(1);
  const slow = await runPhase(`broker slowed by ${DELAY_MS} ms each way`, slowUrl, queues);
  const floor = await runPhase('transport floor: same RPC rate, health Checks only', RABBITMQ_URL, queues, { floorOnly: true });
  const normal2 = baselineRoot === undefined ? undefined : await runPhase('broker as is (2)', RABBITMQ_URL, queues);
  const baseline2 = await baselinePhase(2);
  const reported =
    REPORTS_PER_SECOND > 0
      ? await runPhase(`broker as is, worker reports ${REPORTS_PER_SECOND}/s over all the queues`, RABBITMQ_URL, queues, {
          reportsPerSecond: REPORTS_PER_SECOND,
        })
      : undefined;

  out('-- summary --');
  out(
    `  GetMetrics p50/p99 vs health Check: ${(normal.getMetrics.p50 / normal.check.p50).toFixed(2)}x / ${(normal.getMetrics.p99 / normal.check.p99).toFixed(2)}x (goal <= 1.2x)`,
  );
  out(
    `  GetMetrics p50 slowed/normal: ${(slow.getMetrics.p50 / normal.getMetrics.p50).toFixed(2)}x, p99 ${(slow.getMetrics.p99 / normal.getMetrics.p99).toFixed(2)}x (goal: no change), while a declare takes ${(slowDeclare.p50 / directDeclare.p50).toFixed(0)}x longer`,
  );
  out(
    `  the same against each phase's own health Check (machine drift removed): p50 ${(slow.getMetrics.p50 / slow.check.p50 / (normal.getMetrics.p50 / normal.check.p50)).toFixed(2)}x, p99 ${(slow.getMetrics.p99 / slow.check.p99 / (normal.getMetrics.p99 / normal.check.p99)).toFixed(2)}x`,
  );
  out(
    `  scaler RSS peak ${Math.max(normal.peakRssMb, slow.peakRssMb).toFixed(1)} MB (goal < 100 MB); the same server answering only health Checks: ${floor.peakRssMb.toFixed(1)} MB`,
  );
  out(
    `  scaler CPU ${normal.cpuPercentOfOneCore.toFixed(1)}% of one core (goal < 10%); the same server answering only health Checks at the same rate: ${floor.cpuPercentOfOneCore.toFixed(1)}% (ratio ${(normal.cpuPercentOfOneCore / floor.cpuPercentOfOneCore).toFixed(2)}x)`,
  );
  if (baseline1 && baseline2 && normal2) {
    const mean = (a: number, b: number): number => (a + b) / 2;
    const cpu = [
      mean(normal.cpuPercentOfOneCore, normal2.cpuPercentOfOneCore),
      mean(baseline1.cpuPercentOfOneCore, baseline2.cpuPercentOfOneCore),
    ] as const;
    const peak = [mean(normal.peakRssMb, normal2.peakRssMb), mean(baseline1.peakRssMb, baseline2.peakRssMb)] as const;
    out(
      `  against ${BASELINE_REF}, KEDA's load, mean of two alternating phases each: CPU ${cpu[0].toFixed(1)}% vs ${cpu[1].toFixed(1)}% (${(cpu[0] / cpu[1]).toFixed(2)}x), RSS peak ${peak[0].toFixed(1)} vs ${peak[1].toFixed(1)} MB (${(peak[0] / peak[1]).toFixed(2)}x) (goal <= 1.10x); phases: CPU ${[normal, baseline1, normal2, baseline2].map((x) => x.cpuPercentOfOneCore.toFixed(1)).join(' / ')} %, RSS peak ${[normal, baseline1, normal2, baseline2].map((x) => x.peakRssMb.toFixed(1)).join(' / ')} MB (this, baseline, this, baseline)`,
    );
    if (reported)
      out(
        `  the report intake at ${REPORTS_PER_SECOND}/s, every queue's step histograms exported by the end (${QUEUES} queues x ${REPORT_STEPS.length} steps): CPU ${reported.cpuPercentOfOneCore.toFixed(1)}% (${(reported.cpuPercentOfOneCore / cpu[0]).toFixed(2)}x this commit without reports), RSS peak ${reported.peakRssMb.toFixed(1)} MB (${(reported.peakRssMb / peak[0]).toFixed(2)}x)`,
      );
  }

  const dir = join(PACKAGE_ROOT, '.run');
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'bench-scaler.json'),
    `${JSON.stringify({ commit, queues: QUEUES, phaseSeconds: PHASE_SECONDS, delayMs: DELAY_MS, nodeArgs: SCALER_NODE_ARGS, reportsPerSecond: REPORTS_PER_SECOND, baselineRef: BASELINE_REF, directDeclare, slowDeclare, normal, normal2, slow, floor, baseline1, baseline2, reported }, null, 2)}\n`,
  );

  for (const s of proxy.sockets) s.destroy();
  proxy.server.close();
  for (const q of queues) await ch.deleteQueue(q);
  await setup.close();

  // A figure from wrong answers is no figure: any wrong answer fails the bench.
  const phases = [normal, normal2, slow, floor, baseline1, baseline2, reported].filter((x): x is PhaseResult => x !== undefined);
  const wrong = phases.reduce((n, x) => n + x.wrong, 0);
  out(`correctness: ${phases.reduce((n, x) => n + x.checked, 0)} answers checked, ${wrong} wrong`);
  if (wrong > 0) {
    process.stderr.write(`bench-scaler failed: ${wrong} wrong answers\n`);
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-scaler failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
