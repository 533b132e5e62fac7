// `kmj doctor`: the real command against the real RabbitMQ and MLflow servers, with the failures
// this machine can provoke (wrong credentials, an unreachable broker, a model that does not load),
// and its node checks given a Raspberry Pi's files where this machine cannot be one (a 16 KB-page
// kernel, a boot line without the memory cgroup, a 32-bit userland). test/image/arm64.test.ts runs
// it from the arm64 image under emulation.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  checkMemoryCgroup,
  checkPageSize,
  checkUserland,
  loadAlignment,
  mappedFiles,
  pageSizeOf,
  type ReadFile,
} from '../../cli/doctor-platform.ts';
import { displayUrl } from '../../common/redact.ts';
import { tinyOnnxModel } from '../../worker/doctor.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { RABBITMQ_URL } from '../helpers/env.ts';
import { closedPort, kmjWorkerEnv, runKmj } from '../helpers/kmj.ts';
import { fixtures, MLFLOW_AUTH_PASSWORD, MLFLOW_AUTH_URL, MLFLOW_AUTH_USER, MLFLOW_URL } from '../helpers/worker.ts';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

interface DoctorReport {
  ok: boolean;
  platform: string;
  machine: string;
  checks: Array<{ name: string; status: 'ok' | 'fail' | 'skip'; detail: string; fix?: string }>;
}

/** `kmj doctor -o json` with the worker's environment plus `env`; its exit code and report. */
async function doctor(args: string[], env: Record<string, string>): Promise<{ code: number | null; report: DoctorReport; stderr: string }> {
  const exit = await runKmj(['doctor', '-o', 'json', ...args], { env: kmjWorkerEnv(cleanups, env) }, cleanups);
  return { code: exit.code, report: JSON.parse(exit.stdout) as DoctorReport, stderr: exit.stderr };
}

const check = (r: DoctorReport, name: string): DoctorReport['checks'][number] | undefined => r.checks.find((c) => c.name === name);

/** A ReadFile that answers from `files`, and reads nothing else. */
const filesOf =
  (files: Record<string, string | Buffer>): ReadFile =>
  (path, maxBytes) => {
    const f = files[path];
    if (f === undefined) return undefined;
    const buf = Buffer.isBuffer(f) ? f : Buffer.from(f);
    return maxBytes === undefined ? buf : buf.subarray(0, maxBytes);
  };

/** An auxiliary vector holding AT_PAGESZ = `page`. */
function auxv(page: number): Buffer {
  const buf = Buffer.alloc(48);
  buf.writeBigUInt64LE(33n, 0); // AT_SYSINFO_EHDR, first as on a real kernel
  buf.writeBigUInt64LE(0x7fff0000n, 8);
  buf.writeBigUInt64LE(6n, 16); // AT_PAGESZ
  buf.writeBigUInt64LE(BigInt(page), 24);
  return buf; // then AT_NULL (zeros)
}

describe('kmj doctor against the real services', () => {
  it('passes every check with the worker’s settings, and loads the model it is given', async () => {
    const queue = await cleanups.requestQueue();
    const f = fixtures();
    const model = `models:/${f.models['classifier']?.name}/${f.models['classifier']?.version}`;
    const { code, report } = await doctor(['--queue', queue, '--model', model], { MLFLOW_TRACKING_URI: MLFLOW_URL });
    expect(report.checks.filter((c) => c.status === 'fail')).toEqual([]);
    expect(code).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.checks.map((c) => [c.name, c.status])).toEqual([
      ['userland', 'ok'],
      ['onnxruntime', 'ok'],
      ['page-size', 'ok'],
      ['memory-cgroup', 'ok'],
      ['configuration', 'ok'],
      ['rabbitmq', 'ok'],
      ['mlflow', 'ok'],
      ['model', 'ok'],
      ['keda', 'skip'],
      ['scaler', 'skip'],
    ]);
    expect(check(report, 'rabbitmq')?.detail).toBe(`queue ${queue} on ${displayUrl(RABBITMQ_URL)}: 0 waiting, 0 consumer(s)`);
    expect(check(report, 'model')?.detail).toContain(
      `${model} (version ${f.models['classifier']?.version}) loads: a classifier with output(s) output_label`,
    );
    expect(check(report, 'onnxruntime')?.detail).toMatch(/^onnxruntime 1\.\d+\.\d+ ran a model in \d+ ms$/);
  });

  it('fails, naming the check and the fix, on wrong credentials for RabbitMQ and for MLflow, and never prints them', async () => {
    const queue = await cleanups.requestQueue();
    const wrongAmqp = RABBITMQ_URL.replace(/:\/\/([^:]+):([^@]+)@/, '://$1:not-the-password@');
    const { code, report, stderr } = await doctor(['--queue', queue], {
      RABBITMQ_URL: wrongAmqp,
      MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
      MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
      MLFLOW_TRACKING_PASSWORD: 'not-the-admin-password',
    });
    expect(code).toBe(1);
    expect(report.ok).toBe(false);
    expect(check(report, 'rabbitmq')).toEqual({
      name: 'rabbitmq',
      status: 'fail',
      detail: `${displayUrl(wrongAmqp)} refused the credentials in RABBITMQ_URL`,
      fix: 'check the user and password in RABBITMQ_URL (the Secret kmj-rabbitmq) against the broker users kmj setup made',
    });
    expect(check(report, 'mlflow')).toMatchObject({
      status: 'fail',
      detail: `${MLFLOW_AUTH_URL} refused the worker's credentials (HTTP 401)`,
    });
    expect(check(report, 'mlflow')?.fix).toContain('MLFLOW_TRACKING_PASSWORD');
    const printed = JSON.stringify(report) + stderr;
    expect(printed).not.toContain('not-the-password');
    expect(printed).not.toContain('not-the-admin-password');
    expect(printed).not.toContain(MLFLOW_AUTH_PASSWORD);
  });

  it('passes the MLflow check with the right credentials on the auth server', async () => {
    const queue = await cleanups.requestQueue();
    const { report } = await doctor(['--queue', queue], {
      MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
      MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
      MLFLOW_TRACKING_PASSWORD: MLFLOW_AUTH_PASSWORD,
    });
    expect(check(report, 'mlflow')).toEqual({ name: 'mlflow', status: 'ok', detail: `${MLFLOW_AUTH_URL} answers as ${MLFLOW_AUTH_USER}` });
  });

  it('fails on an unreachable broker, a missing queue, a scaler nobody listens for, and a missing configuration', async () => {
    const port = await closedPort();
    const down = await doctor(['--queue', 'any', '--scaler', `127.0.0.1:${port}`], {
      RABBITMQ_URL: `amqp://guest:guest@127.0.0.1:${port}`,
    });
    expect(down.code).toBe(1);
    expect(check(down.report, 'rabbitmq')).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(new RegExp(`^cannot reach amqp://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`)),
    });
    expect(check(down.report, 'scaler')).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(new RegExp(`^cannot reach 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`)),
    });

    const missing = await doctor(['--queue', 'kmj-doctor-no-such-queue'], {});
    expect(check(missing.report, 'rabbitmq')).toMatchObject({
      status: 'fail',
      detail: `queue "kmj-doctor-no-such-queue" does not exist on ${displayUrl(RABBITMQ_URL)}`,
    });

    const unset = await doctor([], {});
    expect(unset.code).toBe(1);
    expect(check(unset.report, 'configuration')).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining('KMJ_WORKER_QUEUE: set a queue or KMJ_WORKER_TOPIC, exactly one of them'),
    });
    expect(check(unset.report, 'rabbitmq')).toBeUndefined();
    expect(check(unset.report, 'broker')).toMatchObject({ status: 'skip' });
  });

  it('fails on a model that does not load: a registry version that does not exist, and a file that is not ONNX', async () => {
    const queue = await cleanups.requestQueue();
    const f = fixtures();
    const absent = await doctor(['--queue', queue, '--model', `models:/${f.models['classifier']?.name}/999`], {
      MLFLOW_TRACKING_URI: MLFLOW_URL,
    });
    expect(absent.code).toBe(1);
    expect(check(absent.report, 'model')).toMatchObject({
      status: 'fail',
      detail: `models:/${f.models['classifier']?.name}/999 does not load: model: registered model "${f.models['classifier']?.name}" version 999 does not exist`,
    });

    const dir = join(cleanups.tempDir('kmj-doctor-model-'), 'broken');
    mkdirSync(dir);
    writeFileSync(join(dir, 'MLmodel'), 'flavors:\n  onnx:\n    data: model.onnx\n');
    writeFileSync(join(dir, 'model.onnx'), 'this is not an ONNX model');
    const broken = await doctor(['--queue', queue, '--model', `file://${dir}`], { KMJ_MODEL_ROOTS: dir.slice(0, dir.lastIndexOf('/')) });
    expect(broken.code).toBe(1);
    expect(check(broken.report, 'model')).toMatchObject({
      status: 'fail',
      detail: expect.stringMatching(new RegExp(`^file://${dir.replace(/[/.]/g, '\\$&')} does not load: model: `)),
    });
  });
});

describe('the node checks, given another machine’s files', () => {
  it('reads the page size from the auxiliary vector, and the segment alignment from ELF headers', () => {
    expect(pageSizeOf(auxv(16384))).toBe(16384);
    expect(pageSizeOf(auxv(4096))).toBe(4096);
    expect(pageSizeOf(undefined)).toBeUndefined();
    // The host's own Node binary: its segments are aligned to at least 4 KB.
    expect(loadAlignment(readFileSync(process.execPath).subarray(0, 65536))).toBeGreaterThanOrEqual(4096);
    expect(
      loadAlignment(Buffer.from('#!/bin/sh\necho not an ELF file, long enough to be read as a header of sixty-four bytes\n')),
    ).toBeUndefined();
    expect(
      mappedFiles(
        '7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n7f02-7f03 rw-p 00000000 00:00 0 [heap]\n7f04-7f05 r--p 0 08:01 43 /usr/lib/libc.so.6\n7f06-7f07 r-xp 0 00:01 44 /memfd:x (deleted)\n',
      ),
    ).toEqual(['/usr/lib/libc.so.6']);
  });

  it('fails on a 16 KB-page kernel when a loaded file aligns its segments to 4 KB, and says how to boot 4 KB pages', () => {
    const elf4k = readFileSync(process.execPath).subarray(0, 65536);
    const align = loadAlignment(elf4k) ?? 0;
    const maps = `400000-500000 r-xp 00000000 08:01 42 /usr/local/bin/node\n`;
    const pi = checkPageSize(filesOf({ '/proc/self/auxv': auxv(16384), '/proc/self/maps': maps, '/usr/local/bin/node': elf4k }));
    if (align < 16384) {
      expect(pi).toEqual({
        name: 'page-size',
        status: 'fail',
        detail: `page size 16 KB, but node (${align / 1024} KB) align their segments to less`,
        fix: 'boot the 4 KB-page kernel: add "kernel=kernel8.img" to /boot/firmware/config.txt and reboot, or use an image whose native files are built for larger pages',
      });
    } else {
      expect(pi.status).toBe('ok');
    }
    const small = checkPageSize(filesOf({ '/proc/self/auxv': auxv(4096), '/proc/self/maps': maps, '/usr/local/bin/node': elf4k }));
    expect(small).toMatchObject({
      status: 'ok',
      detail: expect.stringMatching(/^page size 4 KB; the 1 native files loaded align their segments to \d+ KB or more/),
    });
  });

  it('fails when the boot line leaves the memory cgroup off, as Raspberry Pi OS does, and names the boot line to fix', () => {
    const cgroups = (enabled: 0 | 1): string =>
      `#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t1\t1\ncpu\t0\t1\t1\nmemory\t0\t1\t${enabled}\n`;
    const off = checkMemoryCgroup(
      false,
      filesOf({
        '/proc/cmdline': 'console=serial0,115200 root=PARTUUID=1-02 rootwait cgroup_disable=memory',
        '/proc/cgroups': cgroups(0),
        '/proc/self/cgroup': '0::/\n',
      }),
    );
    expect(off).toEqual({
      name: 'memory-cgroup',
      status: 'fail',
      detail: 'the kernel has the memory cgroup disabled (/proc/cgroups)',
      fix: 'add "cgroup_memory=1 cgroup_enable=memory" to the one line of /boot/firmware/cmdline.txt and reboot',
    });
    // Enabled on the boot line, in a pod with a 512 MiB limit (cgroup v2, its own namespace).
    const pod = {
      '/proc/cmdline': 'root=PARTUUID=1-02 cgroup_memory=1 cgroup_enable=memory',
      '/proc/cgroups': cgroups(1),
      '/proc/self/cgroup': '0::/\n',
    };
    expect(checkMemoryCgroup(true, filesOf({ ...pod, '/sys/fs/cgroup/memory.max': '536870912\n' }))).toEqual({
      name: 'memory-cgroup',
      status: 'ok',
      detail: "the memory cgroup is enabled; this process's limit is 512 MiB",
    });
    expect(checkMemoryCgroup(true, filesOf({ ...pod, '/sys/fs/cgroup/memory.max': 'max\n' }))).toMatchObject({
      status: 'fail',
      detail: 'the memory cgroup is enabled, but this pod runs without a memory limit',
    });
    expect(checkMemoryCgroup(false, filesOf(pod))).toMatchObject({
      status: 'fail',
      detail: 'the memory cgroup is enabled, but this process has no memory controller (no memory.max)',
    });
  });

  it('fails on a 32-bit userland, for which onnxruntime has no build', () => {
    expect(checkUserland('arm64', 'aarch64')).toEqual({
      name: 'userland',
      status: 'ok',
      detail: '64-bit arm64 userland on a aarch64 kernel',
    });
    expect(checkUserland('arm', 'aarch64')).toMatchObject({
      status: 'fail',
      detail: 'arm userland on a aarch64 kernel',
      fix: expect.stringContaining('Raspberry Pi OS (64-bit)'),
    });
  });

  it('writes a valid ONNX model by hand: onnxruntime runs it to x + x', async () => {
    const ort = await import('onnxruntime-node');
    const session = await ort.InferenceSession.create(tinyOnnxModel());
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([0.5, -1, 3]), [1, 3]) });
    expect(Array.from(out['y']?.data as Float32Array)).toEqual([1, -2, 6]);
    await session.release();
  });
});
