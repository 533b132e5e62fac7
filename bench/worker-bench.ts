/**
 * `make bench-worker`: the TypeScript worker beside a Python worker doing the same job
 * (bench/python_worker.py: pika, mlflow, pandas, onnxruntime), in the same run, alternating.
 *
 * - Cold start: from process spawn until the process exits, right after it acknowledged its one
 *   message; iris model (150 rows), MLflow on loopback, an empty model cache each time, as in a new
 *   pod.
 * - Throughput: a 100k-row CSV; rows per second over reading the dataset, inference and writing
 *   the predictions, as each worker logs it to MLflow (`rows_per_second`).
 * - Peak RSS of each worker process (getrusage of the child).
 *
 * Options (env): BENCH_COLD_RUNS (5), BENCH_BIG_RUNS (3), BENCH_BIG_ROWS (100000).
 */
import { mkdtempSync, readFileSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { benchHeader, leftover, measure, queueWith, runMetrics, type Measured } from './harness.ts';
import { benchOptions } from './options.ts';
import { fmt, median, out } from './stats.ts';

const OPTIONS = benchOptions('bench-worker', {
  BENCH_COLD_RUNS: { kind: 'integer', min: 1, max: 100, default: 5 },
  BENCH_BIG_RUNS: { kind: 'integer', min: 1, max: 20, default: 3 },
  BENCH_BIG_ROWS: { kind: 'integer', min: 1000, max: 10_000_000, default: 100_000 },
  RABBITMQ_URL: { kind: 'url', protocols: ['amqp', 'amqps'], default: 'amqp://guest:guest@127.0.0.1:5672' },
  MLFLOW_TRACKING_URI: { kind: 'url', protocols: ['http', 'https'], default: 'http://127.0.0.1:5000' },
  /** The worker's Node flags, as keda/scaledjob.yaml sets them. */
  BENCH_WORKER_NODE_OPTIONS: { kind: 'string', default: '--max-semi-space-size=8' },
});
const COLD_RUNS = OPTIONS.BENCH_COLD_RUNS;
const BIG_RUNS = OPTIONS.BENCH_BIG_RUNS;
const BIG_ROWS = OPTIONS.BENCH_BIG_ROWS;
const RABBITMQ_URL = OPTIONS.RABBITMQ_URL;
const MLFLOW = OPTIONS.MLFLOW_TRACKING_URI;
const PYTHON = join(PACKAGE_ROOT, '.venv', 'bin', 'python');
const WORKER_NODE_OPTIONS = OPTIONS.BENCH_WORKER_NODE_OPTIONS;

interface Fixtures {
  models: Record<string, { name: string; version: number }>;
  datasets: { csv: string };
  bigDataset: Record<string, string>;
}

type Impl = 'node' | 'python';

/** Rows of the fixtures' iris CSV. */
const IRIS_ROWS = 150;

/** One worker run on a queue of its own; checked: exit 0, the queue empty, the run's `rows` as the dataset's. */
async function once(
  impl: Impl,
  model: string,
  dataset: string,
  rows: number,
  tag: string,
): Promise<Measured & { metrics: Record<string, number> }> {
  const experiment = `bench-${tag}-${impl}-${Date.now().toString(36)}`;
  const queue = await queueWith(RABBITMQ_URL, {
    version: 1,
    requestId: `${tag}-${impl}-${Date.now().toString(36)}`,
    model,
    dataset: { uri: dataset },
    experiment,
  });
  const cache = mkdtempSync(join(tmpdir(), 'kmj-bench-cache-'));
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '',
    HOME: process.env['HOME'] ?? '/tmp',
    RABBITMQ_URL,
    MLFLOW_TRACKING_URI: MLFLOW,
    KMJ_DATASET_ROOTS: '/',
    KMJ_MODEL_CACHE_DIR: cache,
    ONNXRUNTIME_NODE_INSTALL: 'skip',
    ...(impl === 'node' ? { NODE_OPTIONS: WORKER_NODE_OPTIONS } : {}),
  };
  const cmd =
    impl === 'node'
      ? [process.execPath, join(PACKAGE_ROOT, 'bin', 'kmj.js'), 'worker', '--queue', queue]
      : [PYTHON, join(PACKAGE_ROOT, 'bench', 'python_worker.py'), '--queue', queue];
  try {
    const m = await measure(cmd, env);
    const left = await leftover(RABBITMQ_URL, queue);
    if (m.code !== 0 || left !== 0) throw new Error(`${impl} worker exited ${m.code} with ${left} message(s) left on ${queue}`);
    const metrics = await runMetrics(MLFLOW, experiment);
    if (metrics['rows'] !== rows) throw new Error(`${impl} worker's run logged rows ${metrics['rows']}, the dataset has ${rows}`);
    return { ...m, metrics };
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const f = JSON.parse(readFileSync(join(PACKAGE_ROOT, '.run', 'fixtures', 'fixtures.json'), 'utf8')) as Fixtures;
  const c = f.models['classifier'];
  if (!c) throw new Error('fixtures.json has no classifier');
  const model = `models:/${c.name}/${c.version}`;
  const small = f.datasets.csv;
  const big = f.bigDataset[String(BIG_ROWS)];
  if (!big) throw new Error(`no ${BIG_ROWS}-row dataset: run scripts/fixtures.sh --big-rows ${BIG_ROWS}`);

  out(benchHeader('bench-worker'));
  out(
    `worker benchmark: Node ${process.versions.node} worker vs Python worker (pika, mlflow, pandas, onnxruntime), MLflow ${MLFLOW}, RabbitMQ on loopback`,
  );
  const cold: Record<Impl, Measured[]> = { node: [], python: [] };
  await once('node', model, small, IRIS_ROWS, 'warm');
  await once('python', model, small, IRIS_ROWS, 'warm');
  for (let i = 0; i < COLD_RUNS; i++) {
    for (const impl of ['node', 'python'] as const) cold[impl].push(await once(impl, model, small, IRIS_ROWS, 'cold'));
  }
  const thr: Record<Impl, Array<Measured & { metrics: Record<string, number> }>> = { node: [], python: [] };
  for (let i = 0; i < BIG_RUNS; i++) {
    for (const impl of ['node', 'python'] as const) thr[impl].push(await once(impl, model, big, BIG_ROWS, 'big'));
  }

  const coldNode = cold.node.map((m) => m.seconds);
  const coldPy = cold.python.map((m) => m.seconds);
  const ratios = coldNode.map((n, i) => (coldPy[i] as number) / n);
  out(`-- cold start: spawn to exit after the ack, iris (150 rows), empty model cache, ${COLD_RUNS} runs each --`);
  out(
    `  node    ${fmt(coldNode)} s   peak RSS ${fmt(
      cold.node.map((m) => m.maxRssMb),
      1,
    )} MB`,
  );
  out(
    `  python  ${fmt(coldPy)} s   peak RSS ${fmt(
      cold.python.map((m) => m.maxRssMb),
      1,
    )} MB`,
  );
  out(`  python/node, pair by pair: ${fmt(ratios, 2)}x`);
  const rpsNode = thr.node.map((m) => m.metrics['rows_per_second'] ?? Number.NaN);
  const rpsPy = thr.python.map((m) => m.metrics['rows_per_second'] ?? Number.NaN);
  out(`-- throughput: ${BIG_ROWS} rows, read + infer + write predictions, ${BIG_RUNS} runs each --`);
  out(
    `  node    ${fmt(rpsNode, 0)} rows/s   whole job ${fmt(thr.node.map((m) => m.seconds))} s   peak RSS ${fmt(
      thr.node.map((m) => m.maxRssMb),
      1,
    )} MB`,
  );
  out(
    `  python  ${fmt(rpsPy, 0)} rows/s   whole job ${fmt(thr.python.map((m) => m.seconds))} s   peak RSS ${fmt(
      thr.python.map((m) => m.maxRssMb),
      1,
    )} MB`,
  );
  out(
    `  node/python rows per second, pair by pair: ${fmt(
      rpsNode.map((n, i) => n / (rpsPy[i] as number)),
      2,
    )}x`,
  );
  const peak = Math.max(...cold.node.map((m) => m.maxRssMb), ...thr.node.map((m) => m.maxRssMb));
  out('-- goals --');
  out(
    `  cold start >= 7x faster than Python (median of the pairs): ${median(ratios).toFixed(2)}x; under 1 s: ${median(coldNode).toFixed(3)} s`,
  );
  out(`  rows/s >= 0.8x Python: ${median(rpsNode.map((n, i) => n / (rpsPy[i] as number))).toFixed(2)}x`);
  out(`  node peak RSS < 150 MB: ${peak.toFixed(1)} MB`);
  mkdirSync(join(PACKAGE_ROOT, '.run'), { recursive: true });
  writeFileSync(join(PACKAGE_ROOT, '.run', 'bench-worker.json'), `${JSON.stringify({ cold, thr }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-worker failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
