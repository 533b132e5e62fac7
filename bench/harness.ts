/**
 * What the benchmarks share: a request queue holding one request, a child process measured (wall
 * time and peak RSS), the metrics of the run it made, and a built checkout of an earlier commit to
 * measure beside the current code in the same run.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, symlinkSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { promisify } from 'node:util';
import { connect } from 'amqplib';
import { declareRequestTopology, deadLetterQueueOf } from '../rabbitmq/topology.ts';
import { loadAverages } from './process.ts';

const run = promisify(execFile);

export interface Measured {
  code: number;
  seconds: number;
  maxRssMb: number;
}

/** Runs a command under a small wrapper that reports its wall time and the child's peak RSS. */
export async function measure(cmd: string[], env: Record<string, string>): Promise<Measured> {
  const wrapper = [
    'import json, resource, subprocess, sys, time',
    't = time.perf_counter()',
    'r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)',
    'd = time.perf_counter() - t',
    "print(json.dumps({'code': r.returncode, 'seconds': d, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))",
  ].join('\n');
  const { stdout } = await run('python3', ['-c', wrapper, ...cmd], { env, maxBuffer: 1 << 20 });
  const r = JSON.parse(stdout) as { code: number; seconds: number; maxrss_kb: number };
  return { code: r.code, seconds: r.seconds, maxRssMb: r.maxrss_kb / 1024 };
}

/** A new request queue (with its dead-letter queue) holding `body`. */
export async function queueWith(rabbitmqUrl: string, body: object): Promise<string> {
  const queue = `bench-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const conn = await connect(rabbitmqUrl);
  try {
    const ch = await conn.createConfirmChannel();
    await declareRequestTopology(conn, queue, { deadLetterQueue: deadLetterQueueOf(queue), maxDeliveries: 5 });
    ch.sendToQueue(queue, Buffer.from(JSON.stringify(body)), { persistent: true });
    await ch.waitForConfirms();
  } finally {
    await conn.close();
  }
  return queue;
}

/** Deletes the queue and its dead-letter queue; resolves with the messages it still held. */
export async function leftover(rabbitmqUrl: string, queue: string): Promise<number> {
  const conn = await connect(rabbitmqUrl);
  try {
    const ch = await conn.createChannel();
    const n = (await ch.checkQueue(queue)).messageCount;
    await ch.deleteQueue(queue);
    await ch.deleteQueue(deadLetterQueueOf(queue));
    return n;
  } finally {
    await conn.close();
  }
}

/** The metrics of the one FINISHED run of `experiment` (MLflow without auth, on loopback). */
export async function runMetrics(mlflow: string, experiment: string): Promise<Record<string, number>> {
  const exp = (await (
    await fetch(`${mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(experiment)}`)
  ).json()) as {
    experiment: { experiment_id: string };
  };
  const r = (await (
    await fetch(`${mlflow}/api/2.0/mlflow/runs/search`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ experiment_ids: [exp.experiment.experiment_id] }),
    })
  ).json()) as { runs: Array<{ info: { status: string }; data: { metrics: Array<{ key: string; value: number }> } }> };
  const first = r.runs[0];
  if (!first || first.info.status !== 'FINISHED') throw new Error(`experiment ${experiment} has no FINISHED run`);
  return Object.fromEntries(first.data.metrics.map((m) => [m.key, m.value]));
}

/**
 * The checkout of `ref`, built (dist/) in a worktree under .run/ with this checkout's node_modules;
 * made once per ref. Returns its root.
 */
export function baselineCheckout(ref: string): string {
  const commit = execFileSync('git', ['-C', PACKAGE_ROOT, 'rev-parse', '--short', `${ref}^{commit}`], { encoding: 'utf8' }).trim();
  const dir = join(PACKAGE_ROOT, '.run', `bench-baseline-${commit}`);
  if (!existsSync(join(dir, 'dist', 'cli', 'kmj.js'))) {
    if (!existsSync(dir)) execFileSync('git', ['-C', PACKAGE_ROOT, 'worktree', 'add', '--detach', dir, commit], { stdio: 'ignore' });
    if (!existsSync(join(dir, 'node_modules'))) symlinkSync(join(PACKAGE_ROOT, 'node_modules'), join(dir, 'node_modules'));
    execFileSync(join(PACKAGE_ROOT, 'node_modules', '.bin', 'tsc'), ['-p', join(dir, 'tsconfig.json')], { stdio: 'inherit' });
    execFileSync(process.execPath, [join(dir, 'scripts', 'build-validators.mjs')], { stdio: 'inherit', cwd: dir });
  }
  return dir;
}

/**
 * The line every benchmark prints first: which code it measured (the commit, and whether the
 * checkout had uncommitted changes), when, and on what machine, so that a figure copied into the
 * docs can be traced to the run that printed it.
 */
export function benchHeader(bench: string): string {
  const git = (args: string[]): string => {
    try {
      return execFileSync('git', ['-C', PACKAGE_ROOT, ...args], { encoding: 'utf8' }).trim();
    } catch {
      return '';
    }
  };
  const commit = git(['rev-parse', '--short', 'HEAD']) || 'unknown';
  const dirty = git(['status', '--porcelain', '--untracked-files=no']) !== '' ? ' (with uncommitted changes)' : '';
  const model = cpus()[0]?.model.trim() ?? 'unknown CPU';
  // The load averages: this machine may be shared.
  return `${bench}: commit ${commit}${dirty}, ${new Date().toISOString()}, ${cpus().length} cores (${model}), ${(totalmem() / 1024 ** 3).toFixed(1)} GiB, Node ${process.versions.node}, load average ${loadAverages().join(' ')}`;
}
