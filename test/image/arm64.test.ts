// The arm64 image a Raspberry Pi 5 runs, proven on this amd64 machine under emulation: its own
// files (unpacked from the OCI archive's linux/arm64 image: its Node, its onnxruntime, its C and
// C++ runtime and loader) run by Debian's qemu-aarch64-static in user mode, against the real
// RabbitMQ and the real MLflow. The worker takes a real request, runs a real ONNX model, and logs
// a FINISHED run that says it ran on aarch64; the scaler answers a real GetMetrics.
//
// What emulation shows: the arm64 binaries are complete and correct (they load, link, run the
// model and give the same predictions as Python's onnxruntime), the image's layout works from
// its own root, and nothing in it needs the build machine's architecture. What it cannot show:
// - timing: the emulator translates every instruction; a Pi 5 is many times faster than this;
// - 16 KB pages: the emulated process gets this kernel's 4 KB pages (test/image/image.test.ts
//   checks instead that every arm64 file's segments are aligned for 16 KB pages);
// - the memory cgroup, the real CPU's features, or the Pi's kernel: onnxruntime sees the
//   Cortex-A76 /proc/cpuinfo the test gives it (test/helpers/image.ts says why it must).
import { rmSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Cleanups } from '../helpers/cleanups.ts';
import { RABBITMQ_URL } from '../helpers/env.ts';
import { arm64KmjCommand, imageFor, qemuAarch64, readImage, unpackLayer } from '../helpers/image.ts';
import { kmjWorkerEnv, startKmj, type KmjProcess } from '../helpers/kmj.ts';
import { RabbitFixture } from '../helpers/rabbit.ts';
import { KedaLikeClient } from '../helpers/scaler.ts';
import {
  drain,
  fixtures,
  MLFLOW_URL,
  parseCsv,
  publish,
  queueStateAfterExit,
  readRunWithPython,
  request,
  runsOf,
} from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const cleanups = new Cleanups();
let root: string;
let command: string[];
let rabbit: RabbitFixture;

beforeAll(async () => {
  const { images } = await readImage();
  root = await unpackLayer(imageFor(images, 'arm64'));
  command = arm64KmjCommand(root, await qemuAarch64());
  rabbit = new RabbitFixture();
}, 180_000);

afterEach(() => cleanups.run());

afterAll(async () => {
  await rabbit?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** The log line with this message, once the process has written it. */
async function logLine(p: KmjProcess, msg: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const line = await waitUntil(
    `a "${msg}" log line`,
    () => {
      const hit = p.logs().find((l) => l['msg'] === msg);
      // An exit ends the wait (undefined): the line will not come after it.
      if (hit || p.child.exitCode !== null) return hit;
      throw new Error(`stderr:\n${p.stderr().slice(-4000)}`);
    },
    () => true,
    { timeoutMs, stepMs: 100 },
  );
  if (!line) throw new Error(`no "${msg}" log line (exit ${p.child.exitCode}); stderr:\n${p.stderr().slice(-4000)}`);
  return line;
}

describe('the linux/arm64 image under emulation', () => {
  it('runs a request end to end: the worker acks it and its FINISHED run says aarch64', async () => {
    const f = fixtures();
    const queue = await cleanups.requestQueue();
    const req = request({ runName: 'arm64-check' });
    await publish(queue, req);
    const worker = startKmj(
      ['worker', '--queue', queue],
      { env: kmjWorkerEnv(cleanups, { MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_WORKER_IDLE_TIMEOUT_MS: '60000' }), command },
      cleanups,
    );
    const exit = await worker.done;
    expect(exit.code, exit.stderr.slice(-4000)).toBe(0);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);

    const runs = await runsOf(req.experiment);
    expect(runs).toHaveLength(1);
    const run = await readRunWithPython(runs[0]?.info.run_id ?? '');
    expect(run.info.status).toBe('FINISHED');
    expect(run.tags).toMatchObject({
      'kmj.machine': 'aarch64',
      'kmj.request_id': req.requestId,
      'kmj.model_kind': 'classifier',
      'mlflow.runName': 'arm64-check',
    });
    // The arm64 onnxruntime predicts what Python's onnxruntime (x86_64) predicted for the same rows.
    const predictions = parseCsv(run.artifacts['predictions/predictions.csv'] ?? '');
    expect(predictions.map((p) => Number(p['output_label']))).toEqual(f.models['classifier']?.expected['output_label']);
    expect(run.metrics['rows']).toBe(f.datasets.rows);
  }, 300_000);

  it('runs kmj doctor: a 64-bit arm64 userland, onnxruntime running a model, native files fit for 16 KB pages', async () => {
    const queue = await cleanups.requestQueue();
    const exit = await startKmj(
      ['doctor', '--queue', queue, '-o', 'json'],
      { env: kmjWorkerEnv(cleanups, { MLFLOW_TRACKING_URI: MLFLOW_URL }), command },
      cleanups,
    ).done;
    const report = JSON.parse(exit.stdout) as {
      ok: boolean;
      platform: string;
      machine: string;
      checks: Array<{ name: string; status: string; detail: string }>;
    };
    expect(report.checks.filter((c) => c.status === 'fail')).toEqual([]);
    expect(exit.code).toBe(0);
    expect(report).toMatchObject({ ok: true, platform: 'linux/arm64', machine: 'aarch64' });
    const detail = (name: string): string | undefined => report.checks.find((c) => c.name === name)?.detail;
    expect(detail('userland')).toBe('64-bit arm64 userland on a aarch64 kernel');
    expect(detail('onnxruntime')).toMatch(/^onnxruntime 1\.\d+\.\d+ ran a model in \d+ ms$/);
    // Emulation gives 4 KB pages; what the check reads of the files is what a Pi's 16 KB kernel needs.
    expect(detail('page-size')).toMatch(
      /^page size 4 KB; the \d+ native files loaded align their segments to \d+ KB or more: all of them would load on a 16 KB-page kernel too$/,
    );
  }, 300_000);

  it('runs the scaler: a real GetMetrics gives the queue’s backlog', async () => {
    const queue = await rabbit.queue('arm64');
    await rabbit.publish(queue, 3);
    const scaler = startKmj(
      ['scaler', '--port', '0', '--metrics-port', '0'],
      { env: { KMJ_SCALER_HOST: '127.0.0.1', RABBITMQ_URL }, command },
      cleanups,
    );
    const listening = await logLine(scaler, 'scaler listening', 120_000);
    const client = new KedaLikeClient(`127.0.0.1:${String(listening['grpcPort'])}`);
    try {
      const values = await waitUntil(
        'the scaler to report the 3 messages published',
        () => client.getMetrics({ queueName: queue }),
        (r) => r.ok && r.value.metricValues[0]?.metricValue === 3,
        { timeoutMs: 60_000, stepMs: 500 },
      );
      expect(values).toMatchObject({ ok: true, value: { metricValues: [{ metricValue: 3 }] } });
    } finally {
      client.close();
    }
    scaler.child.kill('SIGTERM');
    expect((await scaler.done).code).toBe(0);
  }, 300_000);
});
