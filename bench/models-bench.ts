/**
 * `make bench-models`: the worker with models of realistic sizes, made as users make them
 * (bench/make_bench_models.py: scikit-learn MLPs of about 15, 70 and 150 MB, exported by skl2onnx,
 * registered with mlflow.onnx.log_model), beside the iris classifier and beside onnxruntime's bare
 * session start for the same file, measured in the same run (bench/session-probe.ts: a fresh
 * process creating the session with the worker's options, nothing else).
 *
 *   node bench/models-bench.ts host      the local MLflow and RabbitMQ (make services)
 *   node bench/models-bench.ts cluster   the cluster of make cluster (scripts/cluster-deploy.sh --env)
 *
 * host: per model, a worker on an empty cache (a miss: the files come from MLflow), then
 * BENCH_MODELS_HITS (3) workers on that cache (hits), and BENCH_MODELS_PROBES (3) bare sessions of
 * its file: model_load_seconds of a hit against the bare session start (goal: at most 1.2x).
 *
 * cluster: per model, two bursts of BENCH_MODELS_REQUESTS (20) requests on the deployed ScaledJob,
 * the first on a node cache without the model (cold), the second with it (warm). Per request:
 * fetch, session start, inference, total, publish → FINISHED; per burst: bytes MLflow's pod sent
 * (its network interface, read from its network namespace), the node cache's bytes fetched from
 * MLflow, and MLflow's CPU (its pod's cgroup) over the burst. Goals: one copy of a model fetched
 * from MLflow per burst; publish → FINISHED p50 of the 70 MB model, warm, within 1 s of iris'.
 *
 * Every request must end FINISHED (or the bench fails naming it). Figures also go to
 * .run/bench-models-<mode>.json.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect } from 'amqplib';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { benchHeader, leftover, measure, queueWith, runMetrics } from './harness.ts';
import { benchOptions, INTEGER_LIST, listOf } from './options.ts';
import { median, out, percentile, sorted } from './stats.ts';

const run = promisify(execFile);
const env = process.env;
const MODE = process.argv[2] ?? 'host';
const OPTIONS = benchOptions('bench-models', {
  BENCH_MODELS_SIZES: { kind: 'string', default: '15,70,150', ...INTEGER_LIST },
  BENCH_MODELS_HITS: { kind: 'integer', min: 1, max: 50, default: 3 },
  BENCH_MODELS_PROBES: { kind: 'integer', min: 1, max: 50, default: 3 },
  BENCH_MODELS_REQUESTS: { kind: 'integer', min: 1, max: 500, default: 20 },
  BENCH_MODELS_SINGLES: { kind: 'integer', min: 1, max: 100, default: 5 },
  BENCH_MODELS_PHASES: { kind: 'string', default: 'cold,warm,single', ...listOf(['cold', 'warm', 'single']) },
  BENCH_MODELS_BURST_TIMEOUT_S: { kind: 'integer', min: 10, max: 7200, default: 900 },
});
const SIZES = OPTIONS.BENCH_MODELS_SIZES;
const HITS = OPTIONS.BENCH_MODELS_HITS;
const PROBES = OPTIONS.BENCH_MODELS_PROBES;
const REQUESTS = OPTIONS.BENCH_MODELS_REQUESTS;
const SINGLES = OPTIONS.BENCH_MODELS_SINGLES;
type Phase = 'cold' | 'warm' | 'single';
const PHASES = OPTIONS.BENCH_MODELS_PHASES.split(',') as Phase[];
const BURST_TIMEOUT_MS = OPTIONS.BENCH_MODELS_BURST_TIMEOUT_S * 1000;
const PYTHON = join(PACKAGE_ROOT, '.venv', 'bin', 'python');
const NS = 'kmj';
const QUEUE = 'ml-requests';

interface BenchModel {
  readonly label: string;
  readonly name: string;
  readonly version: number;
  readonly onnxBytes: number;
}

function header(what: string): void {
  out(benchHeader(`bench-models ${what}`));
}

/** The bench's models in the MLflow the environment names, made and registered when missing. */
async function benchModels(mlflowEnv: Record<string, string>): Promise<BenchModel[]> {
  const { stdout } = await run(PYTHON, [join(PACKAGE_ROOT, 'bench', 'make_bench_models.py'), '--sizes', SIZES], {
    env: { PATH: env['PATH'] ?? '', HOME: env['HOME'] ?? '/tmp', ORT_DISABLE_TELEMETRY: '1', ...mlflowEnv },
    maxBuffer: 1 << 20,
    timeout: 1_800_000,
  });
  const made = JSON.parse(stdout.trim().split('\n').at(-1) ?? '[]') as Array<{
    name: string;
    version: number;
    mb: number;
    onnx_bytes: number;
  }>;
  return made.map((m) => ({ label: `mlp ${m.mb} MB`, name: m.name, version: m.version, onnxBytes: m.onnx_bytes }));
}

/** The ONNX file of a model directory (the biggest .onnx file). */
function onnxFileIn(dir: string): string {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.onnx')) files.push(join(d, e.name));
    }
  };
  walk(dir);
  const biggest = files.sort((a, b) => statSync(b).size - statSync(a).size)[0];
  if (!biggest) throw new Error(`no .onnx file under ${dir}`);
  return biggest;
}

async function bareSessions(file: string): Promise<number[]> {
  const seconds: number[] = [];
  for (let i = 0; i < PROBES; i++) {
    const { stdout } = await run(process.execPath, [join(PACKAGE_ROOT, 'bench', 'session-probe.ts'), file], {
      env: { ...env, ORT_DISABLE_TELEMETRY: '1' },
      maxBuffer: 1 << 20,
    });
    seconds.push((JSON.parse(stdout) as { seconds: number }).seconds);
  }
  return seconds;
}

const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

// ---------------------------------------------------------------------------------------------
// host

async function host(): Promise<void> {
  const RABBITMQ_URL = env['RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
  const MLFLOW = env['MLFLOW_TRACKING_URI'] ?? 'http://127.0.0.1:5000';
  header('host (local MLflow and RabbitMQ)');
  const fixtures = JSON.parse(readFileSync(join(PACKAGE_ROOT, '.run', 'fixtures', 'fixtures.json'), 'utf8')) as {
    models: Record<string, { name: string; version: number }>;
    datasets: { csv: string };
  };
  const iris = fixtures.models['classifier'];
  if (!iris) throw new Error('fixtures.json has no classifier');
  const models: BenchModel[] = [
    { label: 'iris', name: iris.name, version: iris.version, onnxBytes: 0 },
    ...(await benchModels({ MLFLOW_TRACKING_URI: MLFLOW })),
  ];
  const results: Array<Record<string, unknown>> = [];
  out(
    'model          bytes     miss load  fetch   session  | hit load (median of N)  session  | bare session (median)  hit/bare  | worker peak RSS',
  );
  for (const m of models) {
    const cache = mkdtempSync(join(tmpdir(), 'kmj-bench-models-'));
    try {
      const once = async (): Promise<{ metrics: Record<string, number>; maxRssMb: number }> => {
        const experiment = `bench-models-${randomUUID().slice(0, 8)}`;
        const queue = await queueWith(RABBITMQ_URL, {
          version: 1,
          requestId: `bench-${randomUUID()}`,
          model: `models:/${m.name}/${m.version}`,
          dataset: { uri: fixtures.datasets.csv },
          experiment,
        });
        const r = await measure([process.execPath, join(PACKAGE_ROOT, 'bin', 'kmj.js'), 'worker', '--queue', queue], {
          PATH: env['PATH'] ?? '',
          HOME: env['HOME'] ?? '/tmp',
          RABBITMQ_URL,
          MLFLOW_TRACKING_URI: MLFLOW,
          KMJ_DATASET_ROOTS: '/',
          KMJ_MODEL_CACHE_DIR: cache,
          NODE_OPTIONS: '--max-semi-space-size=8',
        });
        const left = await leftover(RABBITMQ_URL, queue);
        if (r.code !== 0 || left !== 0) throw new Error(`${m.label}: the worker exited ${r.code} with ${left} message(s) left`);
        return { metrics: await runMetrics(MLFLOW, experiment), maxRssMb: r.maxRssMb };
      };
      const miss = await once();
      const hits = [];
      for (let i = 0; i < HITS; i++) hits.push(await once());
      const bare = await bareSessions(onnxFileIn(cache));
      const hitLoad = median(hits.map((h) => h.metrics['model_load_seconds'] ?? Number.NaN));
      const bareMedian = median(bare);
      const row = {
        model: m.label,
        bytes: miss.metrics['model_load/fetched_bytes'] ?? 0,
        missLoadSeconds: miss.metrics['model_load_seconds'],
        missFetchSeconds: miss.metrics['model_load/fetch_seconds'],
        missSessionSeconds: miss.metrics['model_load/session_seconds'],
        hitLoadSeconds: hits.map((h) => h.metrics['model_load_seconds']),
        hitSessionSeconds: hits.map((h) => h.metrics['model_load/session_seconds']),
        hitCalls: hits.map((h) => h.metrics['model_load/mlflow_calls']),
        bareSessionSeconds: bare,
        hitOverBare: hitLoad / bareMedian,
        peakRssMb: Math.max(miss.maxRssMb, ...hits.map((h) => h.maxRssMb)),
      };
      results.push(row);
      out(
        `${m.label.padEnd(14)} ${mb(row.bytes).padStart(9)}  ${f3(row.missLoadSeconds ?? Number.NaN).padStart(7)} s ${f3(row.missFetchSeconds ?? Number.NaN)} s ${f3(row.missSessionSeconds ?? Number.NaN)} s | ${f3(hitLoad)} s (${HITS})  ${f3(median(row.hitSessionSeconds.map((x) => x ?? Number.NaN)))} s | ${f3(bareMedian)} s (${PROBES})  ${f2(row.hitOverBare)}x | ${row.peakRssMb.toFixed(0)} MB`,
      );
      const calls = new Set(row.hitCalls);
      if (calls.size !== 1 || !calls.has(1)) throw new Error(`${m.label}: a hit made ${[...calls].join(', ')} MLflow calls, not 1`);
      if (hits.some((h) => (h.metrics['model_load/fetched_bytes'] ?? -1) !== 0)) throw new Error(`${m.label}: a hit fetched bytes`);
    } finally {
      rmSync(cache, { recursive: true, force: true });
    }
  }
  out("-- goal: a hit's model_load_seconds at most 1.2x the bare session start --");
  for (const r of results) out(`  ${String(r['model']).padEnd(14)} ${f2(r['hitOverBare'] as number)}x`);
  mkdirSync(join(PACKAGE_ROOT, '.run'), { recursive: true });
  writeFileSync(join(PACKAGE_ROOT, '.run', 'bench-models-host.json'), `${JSON.stringify(results, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------
// cluster

const KUBECONFIG = env['KUBECONFIG'] ?? '';

async function kubectl(args: readonly string[]): Promise<string> {
  const { stdout } = await run('kubectl', ['--kubeconfig', KUBECONFIG, '-n', NS, ...args], { maxBuffer: 64 << 20, timeout: 60_000 });
  return stdout;
}

/**
 * How to read a pod's CPU time on this node: its cgroup directory and the file that counts it,
 * cgroup v2 (`cpu.stat` usage_usec) or v1 (`cpuacct.usage`, ns), systemd or cgroupfs layout.
 */
interface PodCgroup {
  readonly dir: string;
  readonly cpuSeconds: () => number;
}

function podCgroup(uid: string): PodCgroup {
  const names = [uid, uid.replace(/-/g, '_')];
  const find = (root: string): string | undefined => {
    const walk = (dir: string, depth: number): string | undefined => {
      if (depth > 4) return undefined;
      let entries;
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return undefined;
      }
      for (const e of entries) {
        if (!e.isDirectory()) continue;
        const p = join(dir, e.name);
        if (names.some((n) => e.name.includes(n))) return p;
        const deeper = walk(p, depth + 1);
        if (deeper) return deeper;
      }
      return undefined;
    };
    return walk(root, 0);
  };
  const v1 = find('/sys/fs/cgroup/cpuacct');
  if (v1) return { dir: v1, cpuSeconds: () => Number(readFileSync(join(v1, 'cpuacct.usage'), 'utf8')) / 1e9 };
  const v2 = find('/sys/fs/cgroup');
  if (v2)
    return {
      dir: v2,
      cpuSeconds: () => Number(/usage_usec (\d+)/.exec(readFileSync(join(v2, 'cpu.stat'), 'utf8'))?.[1] ?? Number.NaN) / 1e6,
    };
  throw new Error(`no cgroup of pod ${uid} on this node`);
}

interface PodCounters {
  readonly cpuSeconds: number;
  readonly txBytes: number;
}

/** CPU the pod has used and bytes its network interface has sent, read on the node. */
function podCounters(cgroup: PodCgroup): PodCounters {
  const procs = (function all(dir: string): string[] {
    const own = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
    const kids = readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .flatMap((e) => all(join(dir, e.name)));
    return [...own, ...kids];
  })(cgroup.dir);
  let tx = Number.NaN;
  for (const pid of procs) {
    try {
      const dev = readFileSync(`/proc/${pid}/net/dev`, 'utf8');
      const line = dev.split('\n').find((l) => l.trim().startsWith('eth0:'));
      if (!line) continue;
      // Receive: bytes packets errs drop fifo frame compressed multicast; then Transmit: bytes …
      tx = Number(line.split(':')[1]?.trim().split(/\s+/)[8]);
      break;
    } catch {
      // the process ended meanwhile: another one of the pod's will do
    }
  }
  return { cpuSeconds: cgroup.cpuSeconds(), txBytes: tx };
}

async function nodeCacheFetched(): Promise<number> {
  const pods = JSON.parse(await kubectl(['get', 'pods', '-l', 'app.kubernetes.io/name=kmj-model-cache', '-o', 'json'])) as {
    items: Array<{ status: { podIP?: string; phase?: string } }>;
  };
  const ip = pods.items.find((p) => p.status.phase === 'Running')?.status.podIP;
  if (!ip) throw new Error('no running node cache pod');
  const text = await (await fetch(`http://${ip}:8090/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  return Number(/^kmj_node_cache_fetched_bytes_total (\S+)$/m.exec(text)?.[1] ?? Number.NaN);
}

interface RunRow {
  readonly status: string;
  readonly requestId: string;
  readonly endMs: number;
  readonly metrics: Record<string, number>;
  readonly tags: Record<string, string>;
}

async function clusterRuns(mlflow: string, auth: string, experiment: string): Promise<RunRow[]> {
  const headers = { authorization: auth, 'content-type': 'application/json' };
  const got = await fetch(`${mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(experiment)}`, {
    headers,
  });
  if (got.status === 404) return [];
  const exp = (await got.json()) as { experiment?: { experiment_id: string } };
  if (!exp.experiment) return [];
  const r = (await (
    await fetch(`${mlflow}/api/2.0/mlflow/runs/search`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ experiment_ids: [exp.experiment.experiment_id], max_results: 1000 }),
    })
  ).json()) as {
    runs?: Array<{
      info: { status: string; end_time?: number };
      data: { metrics?: Array<{ key: string; value: number }>; tags?: Array<{ key: string; value: string }> };
    }>;
  };
  return (r.runs ?? []).map((x) => {
    const tags = Object.fromEntries((x.data.tags ?? []).map((t) => [t.key, t.value]));
    return {
      status: x.info.status,
      endMs: x.info.end_time ?? 0,
      requestId: tags['kmj.request_id'] ?? '',
      tags,
      metrics: Object.fromEntries((x.data.metrics ?? []).map((m) => [m.key, m.value])),
    };
  });
}

async function cluster(): Promise<void> {
  const RABBITMQ_URL = env['RABBITMQ_URL'] ?? '';
  const MLFLOW = env['MLFLOW_TRACKING_URI'] ?? '';
  const user = env['MLFLOW_TRACKING_USERNAME'] ?? '';
  const password = env['MLFLOW_TRACKING_PASSWORD'] ?? '';
  if (!RABBITMQ_URL || !MLFLOW || !KUBECONFIG)
    throw new Error('RABBITMQ_URL, MLFLOW_TRACKING_URI and KUBECONFIG must name the cluster (make bench-models sets them)');
  const auth = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  header('cluster (make cluster: KEDA, the ScaledJob ml-requests, a node cache, MLflow with basic auth)');
  const fixtures = JSON.parse(readFileSync(join(PACKAGE_ROOT, '.run', 'fixtures-cluster', 'fixtures.json'), 'utf8')) as {
    models: Record<string, { name: string; version: number }>;
    datasets: { runsCsvUri: string };
  };
  const iris = fixtures.models['classifier'];
  if (!iris) throw new Error('fixtures-cluster has no classifier');
  const models: BenchModel[] = [
    { label: 'iris', name: iris.name, version: iris.version, onnxBytes: 0 },
    ...(await benchModels({ MLFLOW_TRACKING_URI: MLFLOW, MLFLOW_TRACKING_USERNAME: user, MLFLOW_TRACKING_PASSWORD: password })),
  ];
  const mlflowPod = JSON.parse(await kubectl(['get', 'pods', '-l', 'app.kubernetes.io/name=mlflow', '-o', 'json'])) as {
    items: Array<{ metadata: { uid: string } }>;
  };
  const uid = mlflowPod.items[0]?.metadata.uid;
  if (!uid) throw new Error('no MLflow pod');
  const mlflowCgroup = podCgroup(uid);
  const deployed = JSON.parse(await kubectl(['get', 'scaledjob', QUEUE, '-o', 'json'])) as { spec: { pollingInterval?: number } };
  await kubectl(['patch', 'scaledjob', QUEUE, '--type', 'merge', '-p', JSON.stringify({ spec: { pollingInterval: 2 } })]);
  const bursts: Array<Record<string, unknown>> = [];
  /**
   * One phase of one model: `count` requests published at once (a burst), or one after the other
   * (single: each published when the previous one has FINISHED).
   */
  const requestsOf = async (m: BenchModel, phase: Phase): Promise<Record<string, unknown>> => {
    const count = phase === 'single' ? SINGLES : REQUESTS;
    const experiment = `bench-models-${phase}-${randomUUID().slice(0, 8)}`;
    const requests = Array.from({ length: count }, () => ({
      version: 1,
      requestId: `bench-${randomUUID()}`,
      model: `models:/${m.name}/${m.version}`,
      dataset: { uri: fixtures.datasets.runsCsvUri },
      experiment,
    }));
    const before = podCounters(mlflowCgroup);
    const cacheBefore = await nodeCacheFetched();
    const firstPublishMs = Date.now();
    const publishedAt = new Map<string, number>();
    const publish = async (batch: ReadonlyArray<(typeof requests)[number]>): Promise<void> => {
      const conn = await connect(RABBITMQ_URL);
      try {
        const ch = await conn.createConfirmChannel();
        const now = Date.now();
        for (const r of batch) {
          publishedAt.set(r.requestId, now);
          ch.sendToQueue(QUEUE, Buffer.from(JSON.stringify(r)), {
            persistent: true,
            contentType: 'application/json',
            timestamp: Math.floor(now / 1000),
          });
        }
        await ch.waitForConfirms();
      } finally {
        await conn.close();
      }
    };
    const waitFor = async (n: number): Promise<RunRow[]> => {
      const deadline = Date.now() + BURST_TIMEOUT_MS;
      for (;;) {
        const runs = await clusterRuns(MLFLOW, auth, experiment);
        if (runs.filter((r) => r.status === 'FINISHED').length >= n) return runs;
        if (Date.now() > deadline) {
          const failed = runs
            .filter((r) => r.status !== 'FINISHED' && r.status !== 'RUNNING')
            .map((r) => `${r.requestId}: ${r.status} ${r.tags['kmj.error'] ?? ''}`);
          throw new Error(
            `${m.label} ${phase}: ${runs.filter((r) => r.status === 'FINISHED').length} of ${n} FINISHED within ${BURST_TIMEOUT_MS / 1000} s; ${failed.join('; ') || 'none failed in MLflow'}`,
          );
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    };
    let runs: RunRow[] = [];
    if (phase === 'single') {
      for (let i = 0; i < count; i++) {
        await publish([requests[i] as (typeof requests)[number]]);
        runs = await waitFor(i + 1);
      }
    } else {
      await publish(requests);
      runs = await waitFor(count);
    }
    const lastEnd = Math.max(...runs.map((r) => r.endMs));
    // The workers' pods have ended by now, or are about to: a few seconds for their last calls.
    await new Promise((r) => setTimeout(r, 3000));
    const after = podCounters(mlflowCgroup);
    const cacheAfter = await nodeCacheFetched();
    const ids = new Set(requests.map((r) => r.requestId));
    if (runs.length !== count || runs.some((r) => !ids.has(r.requestId)))
      throw new Error(`${m.label} ${phase}: ${runs.length} runs for ${count} requests`);
    const col = (key: string): number[] => sorted(runs.map((r) => r.metrics[key] ?? Number.NaN));
    const e2e = sorted(runs.map((r) => (r.endMs - (publishedAt.get(r.requestId) ?? Number.NaN)) / 1000));
    const pp = (xs: number[]): string => `${f2(percentile(xs, 50))} / ${f2(percentile(xs, 95))}`.padEnd(14);
    const cpu = after.cpuSeconds - before.cpuSeconds;
    const window = (lastEnd - firstPublishMs) / 1000 + 3;
    const row = {
      model: m.label,
      phase,
      requests: count,
      fetch: col('model_load/fetch_seconds'),
      session: col('model_load/session_seconds'),
      inference: col('inference_seconds'),
      total: col('total_seconds'),
      publishToFinished: e2e,
      sources: [...new Set(runs.map((r) => r.tags['kmj.model_source']))],
      mlflowSentBytes: after.txBytes - before.txBytes,
      nodeCacheFetchedBytes: cacheAfter - cacheBefore,
      modelBytes: runs[0]?.metrics['model_load/fetched_bytes'] ?? Number.NaN,
      mlflowCpuSeconds: cpu,
      mlflowCpuShare: cpu / window,
    };
    out(
      `${m.label.padEnd(14)} ${`${phase} ${count}`.padEnd(9)} ${pp(row.fetch)} ${pp(row.session)} ${pp(row.inference)} ${pp(row.total)} ${pp(e2e)}     | ${mb(row.mlflowSentBytes)}, ${mb(row.nodeCacheFetchedBytes)} (model ${mb(row.modelBytes)}) | ${cpu.toFixed(1)} s, ${(100 * row.mlflowCpuShare).toFixed(0)} % of a core`,
    );
    return row;
  };
  try {
    out(
      `per model: ${PHASES.join(', ')} (bursts of ${REQUESTS} requests, ${SINGLES} single requests one after the other) on the ScaledJob ml-requests (maxReplicaCount as deployed), per request p50 / p95:`,
    );
    out(
      'model          phase     fetch          session        inference      total          publish→FINISHED   | from MLflow: pod sent, node cache fetched | MLflow CPU',
    );
    for (const m of models) {
      for (const phase of PHASES) bursts.push(await requestsOf(m, phase));
    }
  } finally {
    await kubectl([
      'patch',
      'scaledjob',
      QUEUE,
      '--type',
      'merge',
      '-p',
      JSON.stringify({ spec: { pollingInterval: deployed.spec.pollingInterval ?? 10 } }),
    ]);
  }
  out('-- goals --');
  for (const b of bursts) {
    const copies = (b['nodeCacheFetchedBytes'] as number) / (b['modelBytes'] as number);
    out(
      `  ${String(b['model']).padEnd(14)} ${String(b['phase']).padEnd(6)} model copies fetched from MLflow by the node cache: ${f2(copies)} (goal: at most 1); sources ${(b['sources'] as string[]).join(', ')}`,
    );
  }
  const p50 = (label: string, phase: Phase): number =>
    percentile((bursts.find((b) => b['model'] === label && b['phase'] === phase)?.['publishToFinished'] as number[] | undefined) ?? [], 50);
  const big = models.find((m) => m.label.includes(' 70 '))?.label;
  for (const phase of PHASES.filter((p) => p !== 'cold')) {
    if (big)
      out(
        `  publish → FINISHED p50, cache warm, ${phase}: ${big} ${f2(p50(big, phase))} s, iris ${f2(p50('iris', phase))} s, difference ${f2(p50(big, phase) - p50('iris', phase))} s (goal: at most 1 s)`,
      );
  }
  mkdirSync(join(PACKAGE_ROOT, '.run'), { recursive: true });
  writeFileSync(join(PACKAGE_ROOT, '.run', 'bench-models-cluster.json'), `${JSON.stringify(bursts, null, 2)}\n`);
}

(MODE === 'cluster' ? cluster() : host()).catch((err: unknown) => {
  process.stderr.write(`bench-models failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
