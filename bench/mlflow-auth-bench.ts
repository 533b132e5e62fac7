/**
 * `make bench-mlflow-auth`: what MLflow's basic-auth app costs per call, with and without the
 * credential cache that manifests/ turn on (`auth_cache_ttl_seconds = 60` in basic_auth.ini).
 *
 * Two MLflow servers from .venv, both with the basic-auth app and two worker processes (as
 * manifests/mlflow.yaml runs it): "off" with auth_cache_ttl_seconds 0 (MLflow's default: every
 * call checks the password's hash) and "on" with 60. The same authenticated call (get the Default
 * experiment by name, a read the worker makes) is made:
 * - one at a time, the two servers interleaved, BENCH_AUTH_CALLS each: latency p50/p95/p99;
 * - BENCH_AUTH_CLIENTS at once, BENCH_AUTH_CALLS each in all: calls per second, and the server's
 *   CPU seconds per 100 calls (the server process and its workers, from /proc).
 * Every answer is checked (200 and the Default experiment); failed calls are counted, never left
 * out. Last, a wrong password after the right one has been remembered must still be refused (401)
 * by both.
 *
 * Options (env): BENCH_AUTH_CALLS (200), BENCH_AUTH_CLIENTS (8), BENCH_AUTH_PORTS (5611,5612).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { benchHeader } from './harness.ts';
import { benchOptions, INTEGER_LIST, integers } from './options.ts';
import { treeCpuSeconds } from './process.ts';
import { out, percentile, sorted } from './stats.ts';

const OPTIONS = benchOptions('bench-mlflow-auth', {
  BENCH_AUTH_CALLS: { kind: 'integer', min: 10, max: 100_000, default: 200 },
  BENCH_AUTH_CLIENTS: { kind: 'integer', min: 1, max: 64, default: 8 },
  BENCH_AUTH_PORTS: { kind: 'string', default: '5611,5612', ...INTEGER_LIST },
});
const CALLS = OPTIONS.BENCH_AUTH_CALLS;
const CLIENTS = OPTIONS.BENCH_AUTH_CLIENTS;
const [OFF_PORT = 5611, ON_PORT = 5612] = integers(OPTIONS.BENCH_AUTH_PORTS);
const ADMIN = { user: 'admin', password: 'kmj-bench-admin-pw' };

interface Server {
  readonly label: string;
  readonly name: string;
  readonly port: number;
  readonly ttlSeconds: number;
  pid: number;
}

const servers: Server[] = [
  { label: 'cache off (MLflow default)', name: 'bench-auth-off', port: OFF_PORT, ttlSeconds: 0, pid: 0 },
  { label: 'cache on (60 s, manifests/)', name: 'bench-auth-on', port: ON_PORT, ttlSeconds: 60, pid: 0 },
];

function mlflowScript(args: string[], ttlSeconds: number): void {
  execFileSync(join(PACKAGE_ROOT, 'scripts', 'mlflow.sh'), args, {
    env: {
      ...process.env,
      KMJ_MLFLOW_AUTH_CACHE_TTL_S: String(ttlSeconds),
      KMJ_MLFLOW_ADMIN_PASSWORD: ADMIN.password,
      KMJ_MLFLOW_WORKERS: '2',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/** One authenticated read; its latency in ms, or the reason it failed. */
async function call(s: Server, password = ADMIN.password): Promise<{ ok: true; ms: number } | { ok: false; why: string; status?: number }> {
  const started = performance.now();
  try {
    const res = await fetch(`http://127.0.0.1:${s.port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default`, {
      headers: { authorization: basic(ADMIN.user, password) },
      signal: AbortSignal.timeout(30_000),
    });
    const body = (await res.json().catch(() => undefined)) as { experiment?: { name?: string } } | undefined;
    const took = performance.now() - started;
    if (res.status !== 200) return { ok: false, why: `HTTP ${res.status}`, status: res.status };
    if (body?.experiment?.name !== 'Default') return { ok: false, why: 'not the Default experiment' };
    return { ok: true, ms: took };
  } catch (err) {
    return { ok: false, why: (err as Error).message };
  }
}

interface Tally {
  readonly latencies: number[];
  failed: number;
  readonly reasons: Set<string>;
}

const tally = (): Tally => ({ latencies: [], failed: 0, reasons: new Set() });

function record(t: Tally, r: Awaited<ReturnType<typeof call>>): void {
  if (r.ok) t.latencies.push(r.ms);
  else {
    t.failed++;
    t.reasons.add(r.why);
  }
}

async function main(): Promise<void> {
  out(benchHeader('bench-mlflow-auth'));
  out(
    `${CALLS} calls per server one at a time (interleaved), then ${CALLS} by ${CLIENTS} clients at once; MLflow basic auth, 2 workers each`,
  );
  try {
    for (const s of servers) {
      mlflowScript(['start', s.name, String(s.port), 'basic'], s.ttlSeconds);
      s.pid = Number(readFileSync(join(PACKAGE_ROOT, '.run', `mlflow-${s.name}`, 'pid'), 'utf8'));
    }
    for (const s of servers) for (let i = 0; i < 4; i++) await call(s); // every worker process warm, the "on" cache filled

    const serial = new Map(servers.map((s) => [s.name, tally()]));
    for (let i = 0; i < CALLS; i++) for (const s of servers) record(serial.get(s.name) as Tally, await call(s));

    const burst = new Map<string, { tally: Tally; seconds: number; cpu: number }>();
    for (const s of servers) {
      const t = tally();
      const cpu0 = treeCpuSeconds(s.pid);
      const started = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: CLIENTS }, async () => {
          while (next < CALLS) {
            next++;
            record(t, await call(s));
          }
        }),
      );
      burst.set(s.name, { tally: t, seconds: (performance.now() - started) / 1000, cpu: treeCpuSeconds(s.pid) - cpu0 });
    }

    const refused = await Promise.all(servers.map(async (s) => ({ s, r: await call(s, `${ADMIN.password}-wrong`) })));

    out('');
    out('| server | one at a time p50 / p95 / p99 ms | failed | at once: calls/s | server CPU s per 100 calls | failed |');
    out('|---|---|---|---|---|---|');
    for (const s of servers) {
      const one = serial.get(s.name) as Tally;
      const many = burst.get(s.name) as { tally: Tally; seconds: number; cpu: number };
      const l = sorted(one.latencies);
      const done = many.tally.latencies.length + many.tally.failed;
      out(
        `| ${s.label} | ${percentile(l, 50).toFixed(1)} / ${percentile(l, 95).toFixed(1)} / ${percentile(l, 99).toFixed(1)} | ${one.failed} | ${(done / many.seconds).toFixed(1)} | ${((many.cpu / done) * 100).toFixed(2)} | ${many.tally.failed} |`,
      );
      for (const why of [...one.reasons, ...many.tally.reasons]) out(`  ${s.name} failed: ${why}`);
    }
    const [off, on] = servers.map((s) => ({
      p50: percentile(sorted((serial.get(s.name) as Tally).latencies), 50),
      cpu: (burst.get(s.name) as { cpu: number }).cpu,
    })) as [{ p50: number; cpu: number }, { p50: number; cpu: number }];
    out('');
    out(`on / off: p50 ${(on.p50 / off.p50).toFixed(2)}x, server CPU per call ${(on.cpu / off.cpu).toFixed(2)}x`);
    const wrong = refused.filter(({ r }) => r.ok || r.status !== 401);
    out(
      wrong.length === 0
        ? 'a wrong password after the right one was remembered: 401 from both'
        : `WRONG: a wrong password was not refused with 401 by ${wrong.map(({ s }) => s.name).join(', ')}`,
    );
    const failed = [...serial.values(), ...[...burst.values()].map((b) => b.tally)].reduce((n, t) => n + t.failed, 0);
    if (wrong.length > 0 || failed > 0) process.exitCode = 1;
  } finally {
    for (const s of servers) mlflowScript(['stop', s.name], s.ttlSeconds);
  }
}

await main();
