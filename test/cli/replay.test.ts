// The offline spool end to end with the real processes: `kmj worker` recording runs in the spool
// when MLflow cannot be used (unset, or out of reach), and `kmj replay` uploading them to the real
// MLflow server once and only once, even when killed halfway and run again. Runs are read back over
// REST and through the real Python client.
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { REPLAY_HELP } from '../../cli/replay-command.ts';
import { EXIT } from '../../common/exit-codes.ts';
import type { SpooledRun } from '../../worker/spool.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { FaultProxy, mlflowPath } from '../helpers/fault-proxy.ts';
import { closedPort, kmjWorkerEnv, runKmj, startKmj, type KmjExit, type KmjProcess } from '../helpers/kmj.ts';
import {
  drain,
  fixtures,
  MLFLOW_AUTH_URL,
  MLFLOW_AUTH_USER,
  MLFLOW_URL,
  parseCsv,
  publish,
  queueStateAfterExit,
  readRunWithPython,
  request,
  runsOf,
  tagsOf,
  type RestRun,
} from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const expectedLabels = (classifier?.expected['output_label'] ?? []) as number[];
const ARTIFACT_PUT = /^\/api\/2\.0\/mlflow-artifacts\/artifacts\/.+\/predictions\/predictions\.csv$/;

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A model directory on a "volume": the classifier's files copied under a model root of its own. */
let modelRoot = '';
let modelUri = '';
beforeAll(() => {
  modelRoot = mkdtempSync(join(tmpdir(), 'kmj-model-root-'));
  cpSync(join(f.dir, 'models', 'classifier'), join(modelRoot, 'classifier'), { recursive: true });
  modelUri = `file://${join(modelRoot, 'classifier')}`;
});
afterAll(() => rmSync(modelRoot, { recursive: true, force: true }));

/**
 * A worker's environment without MLFLOW_TRACKING_URI: runs go to `spool`. HOME is a temp dir so
 * nothing reaches the user's own spool or model cache.
 */
function spoolEnv(spool: string, extra: Record<string, string> = {}): Record<string, string> {
  return kmjWorkerEnv(cleanups, { KMJ_SPOOL_DIR: spool, KMJ_MODEL_ROOTS: modelRoot, ...extra });
}

function worker(queue: string, env: Record<string, string>): KmjProcess {
  return startKmj(['worker', '--queue', queue], { env }, cleanups);
}

function msgs(p: KmjExit): string[] {
  return p.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => String((JSON.parse(l) as Record<string, unknown>)['msg']));
}

function logLine(p: KmjExit, msg: string): Record<string, unknown> | undefined {
  return p.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l['msg'] === msg);
}

/** A classifier request on the iris CSV, with the model from the model root. */
function offlineRequest(overrides: Record<string, unknown> = {}): ReturnType<typeof request> {
  return request({ model: modelUri, ...overrides });
}

/** Publishes the requests and runs one offline worker per request, side by side; each must ack. */
async function spoolAll(spool: string, reqs: ReadonlyArray<Record<string, unknown>>): Promise<void> {
  const queue = await cleanups.requestQueue();
  for (const r of reqs) await publish(queue, r);
  const env = spoolEnv(spool);
  const results = await Promise.all(reqs.map(() => worker(queue, env).done));
  for (const r of results) expect(r.code, r.stderr.slice(-2000)).toBe(EXIT.OK);
  expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
}

function spooled(dir: string): SpooledRun {
  return JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8')) as SpooledRun;
}

function replay(args: readonly string[], env: Record<string, string> = {}): Promise<KmjExit> {
  return runKmj(['replay', ...args], { env: { HOME: cleanups.tempDir('kmj-home-'), ...env } }, cleanups);
}

/** The runs of an experiment carrying the request id. */
async function runsOfRequest(experiment: string, requestId: string, base = MLFLOW_URL): Promise<RestRun[]> {
  return (await runsOf(experiment, base)).filter((r) => tagsOf(r)['kmj.request_id'] === requestId);
}

async function metricHistory(runId: string, key: string): Promise<Array<{ value: number; timestamp: number; step: number }>> {
  const res = await fetch(`${MLFLOW_URL}/api/2.0/mlflow/metrics/get-history?run_id=${runId}&metric_key=${encodeURIComponent(key)}`);
  const body = (await res.json()) as { metrics?: Array<{ value: number; timestamp: number; step: number }> };
  return body.metrics ?? [];
}

describe('kmj worker records runs in the spool', () => {
  it('without MLFLOW_TRACKING_URI: the whole run goes to KMJ_SPOOL_DIR, the message is acked, a redelivery adds nothing', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const queue = await cleanups.requestQueue();
    const req = offlineRequest({ runName: 'offline-check', params: { owner: 'ml-team', batch: 7 }, tags: { team: 'vision' } });
    await publish(queue, req);
    const env = spoolEnv(spool);
    const first = await worker(queue, env).done;
    expect(first.code, first.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(msgs(first)).toEqual(
      expect.arrayContaining([
        'MLFLOW_TRACKING_URI is not set; runs are recorded in the spool (kmj replay uploads them)',
        'recording the run in the spool',
        'run written to the spool',
        'message acknowledged',
      ]),
    );
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);

    // One whole entry, nothing half-written beside it.
    expect(readdirSync(spool)).toEqual([req.requestId]);
    const entry = join(spool, req.requestId);
    expect(readdirSync(entry).sort()).toEqual(['artifacts', 'run.json']);
    const run = spooled(entry);
    expect(run).toMatchObject({
      version: 1,
      requestId: req.requestId,
      experiment: req.experiment,
      runName: 'offline-check',
      status: 'FINISHED',
      artifacts: ['predictions/predictions.csv'],
    });
    expect(run.endTime).toBeGreaterThanOrEqual(run.startTime);
    expect(run.params).toEqual([
      { key: 'model_uri', value: modelUri },
      { key: 'dataset', value: f.datasets.csv },
      { key: 'output_format', value: 'csv' },
      { key: 'label_column', value: f.label },
      { key: 'owner', value: 'ml-team' },
      { key: 'batch', value: '7' },
    ]);
    const tags = Object.fromEntries(run.tags.map((t) => [t.key, t.value]));
    expect(tags).toMatchObject({
      'mlflow.runName': 'offline-check',
      'mlflow.source.type': 'JOB',
      'kmj.request_id': req.requestId,
      'kmj.model_uri': modelUri,
      'kmj.queue': queue,
      'kmj.delivery_attempt': '1',
      'kmj.spooled': 'true',
      'kmj.model_kind': 'classifier',
      team: 'vision',
    });
    const metrics = Object.fromEntries(run.metrics.map((m) => [m.key, m.value]));
    const truth = parseCsv(readFileSync(f.datasets.csv, 'utf8')).map((r) => Number(r[f.label]));
    expect(metrics['rows']).toBe(150);
    expect(metrics['accuracy_score']).toBeCloseTo(truth.filter((t, i) => t === expectedLabels[i]).length / 150, 10);
    expect(run.inputs).toHaveLength(1);
    expect(run.inputs[0]).toMatchObject({
      name: 'iris.csv',
      digest: f.datasets.csvSha256.slice(0, 8),
      sourceType: 'local',
      source: JSON.stringify({ uri: f.datasets.csv }),
      context: 'inference',
    });
    const predictions = parseCsv(readFileSync(join(entry, 'artifacts', 'predictions', 'predictions.csv'), 'utf8'));
    expect(predictions.map((p) => Number(p['output_label']))).toEqual(expectedLabels);

    // The same request delivered again: acknowledged, and the entry is left as it was.
    const before = readFileSync(join(entry, 'run.json'), 'utf8');
    await publish(queue, req);
    const again = await worker(queue, env).done;
    expect(again.code).toBe(EXIT.OK);
    expect(msgs(again)).toContain('request is already in the spool; acknowledging');
    expect(logLine(again, 'message acknowledged')).toMatchObject({ alreadyFinished: true, requestId: req.requestId });
    expect(msgs(again)).not.toContain('run written to the spool');
    expect(readdirSync(spool)).toEqual([req.requestId]);
    expect(readFileSync(join(entry, 'run.json'), 'utf8')).toBe(before);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await runsOf(req.experiment)).toEqual([]);
  });

  it('MLflow out of reach with KMJ_SPOOL_DIR set: falls back to the spool, the model from the local cache, exit 0', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const cache = cleanups.tempDir('kmj-cache-');
    const model = `models:/${classifier?.name}/${classifier?.version}`;
    // An earlier online run with the same cache dir puts the model in it.
    const queue = await cleanups.requestQueue();
    const warm = request({ model });
    await publish(queue, warm);
    const online = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_MODEL_CACHE_DIR: cache })).done;
    expect(online.code, online.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(readdirSync(spool)).toEqual([]);

    const port = await closedPort();
    const req = request({ model });
    await publish(queue, req);
    const offline = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: `http://127.0.0.1:${port}`, KMJ_MODEL_CACHE_DIR: cache }))
      .done;
    expect(offline.code, offline.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(logLine(offline, 'MLflow is out of reach; recording the run in the spool')).toMatchObject({ level: 'warn', spool });
    expect(logLine(offline, 'message acknowledged')).toMatchObject({ requestId: req.requestId });
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
    expect(readdirSync(spool)).toEqual([req.requestId]);
    const run = spooled(join(spool, req.requestId));
    const tags = Object.fromEntries(run.tags.map((t) => [t.key, t.value]));
    expect(tags).toMatchObject({
      'kmj.spooled': 'true',
      'kmj.model_cache': 'hit',
      'kmj.model_name': classifier?.name,
      'kmj.model_version': String(classifier?.version),
    });
    expect(run.metrics.find((m) => m.key === 'rows')?.value).toBe(150);
    expect(await runsOf(req.experiment)).toEqual([]);
  });
});

describe('kmj worker: MLflow cut after the run started, with KMJ_SPOOL_DIR set', () => {
  const model = `models:/${classifier?.name}/${classifier?.version}`;
  const RUN_WRITES = /^\/api\/2\.0\/mlflow\/runs\/(log-batch|log-inputs|update|set-tag)$/;
  /** Everything but the calls that find or make the run. */
  const AFTER_BEGIN = /^(?!\/api\/2\.0\/mlflow\/(experiments\/get-by-name|experiments\/create|runs\/search|runs\/create)$)/;
  const cuts: Array<{ name: string; cut: (p: FaultProxy) => void }> = [
    {
      name: 'every write to the run dropped (the results go to the spool as they are)',
      cut: (p) => {
        p.inject({ path: RUN_WRITES, drop: true });
        p.inject({ path: ARTIFACT_PUT, method: 'PUT', drop: true });
      },
    },
    {
      name: 'every call after runs/create dropped, the registry too (the request runs again offline)',
      cut: (p) => p.inject({ path: AFTER_BEGIN, drop: true }),
    },
  ];

  it.each(cuts)('$name: acked, spooled, and replayed once into the run MLflow already had', async ({ cut }) => {
    const spool = cleanups.tempDir('kmj-spool-');
    const cache = cleanups.tempDir('kmj-cache-');
    const queue = await cleanups.requestQueue();
    // An earlier online run puts the model in the cache.
    await publish(queue, request({ model }));
    const warm = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_MODEL_CACHE_DIR: cache })).done;
    expect(warm.code, warm.stderr.slice(-2000)).toBe(EXIT.OK);

    const p = await FaultProxy.start(MLFLOW_URL);
    cleanups.defer(() => p.close());
    cut(p);
    const req = request({ model });
    await publish(queue, req);
    const cutOff = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: p.url, KMJ_MODEL_CACHE_DIR: cache })).done;
    expect(cutOff.code, cutOff.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(logLine(cutOff, 'run started')).toBeDefined();
    expect(logLine(cutOff, 'MLflow is out of reach; recording the run in the spool')).toMatchObject({ level: 'warn', spool });
    expect(logLine(cutOff, 'message acknowledged')).toMatchObject({ requestId: req.requestId, runId: `spool:${req.requestId}` });
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
    expect(readdirSync(spool)).toEqual([req.requestId]);
    const entry = spooled(join(spool, req.requestId));
    expect(entry.metrics.find((m) => m.key === 'rows')?.value).toBe(150);
    // The run MLflow got before the cut is there, unfinished.
    const before = await runsOfRequest(req.experiment, req.requestId);
    expect(before.map((r) => r.info.status)).toEqual(['RUNNING']);

    const replayed = await replay(['--to', MLFLOW_URL, '--spool', spool]);
    expect(replayed.code, replayed.stderr).toBe(0);
    const runId = before[0]?.info.run_id ?? '';
    expect(replayed.stdout).toBe(`${'replayed'.padEnd(17)} ${req.requestId} → run ${runId}\n1 of 1 spooled runs are in MLflow\n`);
    const after = await runsOfRequest(req.experiment, req.requestId);
    expect(after.map((r) => [r.info.run_id, r.info.status])).toEqual([[runId, 'FINISHED']]);
    const py = await readRunWithPython(runId);
    expect(py.metrics['rows']).toBe(150);
    expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((r) => Number(r['output_label']))).toEqual(expectedLabels);
    expect(py.tags['kmj.error']).toBeUndefined();
  });
});

describe('kmj worker with the spool and a dataset in MLflow', () => {
  it('MLflow out of reach, dataset in MLflow artifacts: the request is requeued, not dead-lettered', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const queue = await cleanups.requestQueue();
    const req = offlineRequest({ dataset: { uri: f.datasets.artifactCsvUri } });
    await publish(queue, req);
    const port = await closedPort();
    const result = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: `http://127.0.0.1:${port}` })).done;
    expect(logLine(result, 'MLflow is out of reach; recording the run in the spool')).toBeDefined();
    expect((await drain(`${queue}.dead`)).map((m): unknown => m.properties.headers?.['x-kmj-dead-letter-reason'])).toEqual([]);
    expect(result.code).toBe(EXIT.REQUEUED);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    expect(readdirSync(spool)).toEqual([]);
  });
});

describe('kmj replay', () => {
  it('uploads every entry once: a FINISHED run per request with params, metrics, tags, input and predictions; a second replay adds nothing', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const expA = request().experiment;
    const expB = request().experiment;
    const reqs = [
      offlineRequest({ experiment: expA }),
      offlineRequest({ experiment: expA, output: { format: 'jsonl' } }),
      offlineRequest({ experiment: expB, params: { owner: 'ml-team' } }),
    ];
    await spoolAll(spool, reqs);
    const ids = reqs.map((r) => r.requestId).sort();
    expect(readdirSync(spool).sort()).toEqual(ids);
    const entries = new Map(ids.map((id) => [id, spooled(join(spool, id))]));
    const artifactOf = (id: string): string => {
      const rel = entries.get(id)?.artifacts[0] ?? '';
      return readFileSync(join(spool, id, 'artifacts', rel), 'utf8');
    };
    const artifacts = new Map(ids.map((id) => [id, artifactOf(id)]));

    const started = Date.now();
    const result = await replay(['--to', MLFLOW_URL, '--spool', spool]);
    expect(result.code, result.stderr).toBe(0);
    const out = result.stdout.split('\n').filter(Boolean);
    expect(out).toHaveLength(4);
    expect(out[3]).toBe('3 of 3 spooled runs are in MLflow');

    for (const [i, id] of ids.entries()) {
      const entry = entries.get(id) as SpooledRun;
      const runs = await runsOfRequest(entry.experiment, id);
      expect(runs).toHaveLength(1);
      const runId = runs[0]?.info.run_id ?? '';
      expect(out[i]).toBe(`${'replayed'.padEnd(17)} ${id} → run ${runId}`);
      const py = await readRunWithPython(runId);
      expect(py.info).toMatchObject({ status: 'FINISHED', run_name: entry.runName, start_time: entry.startTime, end_time: entry.endTime });
      expect(py.params).toEqual(Object.fromEntries(entry.params.map((p) => [p.key, p.value])));
      expect(py.metrics).toEqual(Object.fromEntries(entry.metrics.map((m) => [m.key, m.value])));
      for (const key of Object.keys(py.metrics)) expect(py.metric_history[key], key).toHaveLength(1);
      expect(py.tags).toMatchObject(Object.fromEntries(entry.tags.map((t) => [t.key, t.value])));
      expect(py.tags['kmj.spooled']).toBe('true');
      expect(Date.parse(py.tags['kmj.replayed_at'] ?? '')).toBeGreaterThanOrEqual(started - 1000);
      expect(py.tags['kmj.error']).toBeUndefined();
      const input = entry.inputs[0];
      expect(py.inputs).toEqual([
        {
          name: input?.name,
          digest: input?.digest,
          source_type: input?.sourceType,
          source: input?.source,
          schema: input?.schema,
          profile: input?.profile,
          tags: { 'mlflow.data.context': 'inference' },
        },
      ]);
      const rel = entry.artifacts[0] ?? '';
      expect(Object.keys(py.artifacts)).toEqual([rel]);
      expect(py.artifacts[rel]).toBe(artifacts.get(id));
    }
    expect(entries.get(reqs[1]?.requestId ?? '')?.artifacts).toEqual(['predictions/predictions.jsonl']);

    // Every entry moved to .replayed/, with its journal.
    expect(readdirSync(spool)).toEqual(['.replayed']);
    expect(readdirSync(join(spool, '.replayed')).sort()).toEqual(ids);
    for (const id of ids) {
      const journal = JSON.parse(readFileSync(join(spool, '.replayed', id, 'replay.json'), 'utf8')) as { runId: string; steps: string[] };
      expect(journal.steps).toEqual(['data', 'inputs', 'artifacts', 'finished']);
      expect(journal.runId).toBe((await runsOfRequest(entries.get(id)?.experiment ?? '', id))[0]?.info.run_id);
    }

    // Again, this time from MLFLOW_TRACKING_URI and KMJ_SPOOL_DIR: nothing left to upload.
    const second = await replay([], { MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_SPOOL_DIR: spool });
    expect(second).toMatchObject({ code: 0, stdout: '0 of 0 spooled runs are in MLflow\n' });
    for (const id of ids) expect(await runsOfRequest(entries.get(id)?.experiment ?? '', id)).toHaveLength(1);

    // A late redelivery of a replayed request is acknowledged without a new entry.
    const queue = await cleanups.requestQueue();
    await publish(queue, reqs[0]);
    const late = await worker(queue, spoolEnv(spool)).done;
    expect(late.code).toBe(EXIT.OK);
    expect(msgs(late)).toContain('request is already in the spool; acknowledging');
    expect(readdirSync(spool)).toEqual(['.replayed']);
  });

  it(
    'killed halfway (several times, at different steps) and run again: one FINISHED run per request, no metric logged twice',
    { timeout: 120_000 },
    async () => {
      const spool = cleanups.tempDir('kmj-spool-');
      const experiment = request().experiment;
      const reqs = Array.from({ length: 6 }, () => offlineRequest({ experiment }));
      await spoolAll(spool, reqs);
      const ids = reqs.map((r) => r.requestId).sort();
      const entries = new Map(ids.map((id) => [id, spooled(join(spool, id))]));

      /** Runs `kmj replay` through a fresh fault proxy and SIGKILLs it once `ready` holds. */
      async function replayKilled(faults: (p: FaultProxy) => void, ready: (p: FaultProxy, stdout: string) => boolean): Promise<string[]> {
        const proxy = await FaultProxy.start(MLFLOW_URL);
        cleanups.defer(() => proxy.close());
        faults(proxy);
        const p = startKmj(['replay', '--to', proxy.url, '--spool', spool], { env: { HOME: cleanups.tempDir('kmj-home-') } }, cleanups);
        await p.waitForStdout((out) => ready(proxy, out), 60_000);
        p.child.kill('SIGKILL');
        const r = await p.done;
        expect(r.signal).toBe('SIGKILL');
        return r.stdout.split('\n').filter(Boolean);
      }

      // 1. The fourth artifact upload hangs (the first three go through): killed during it.
      const first = await replayKilled(
        (p) => {
          p.inject({ path: ARTIFACT_PUT, method: 'PUT', times: 3 });
          p.inject({ path: ARTIFACT_PUT, method: 'PUT', delayMs: 120_000 });
        },
        (p, out) =>
          out.split('\n').filter((l) => l.startsWith('replayed')).length === 3 &&
          p.requests({ path: ARTIFACT_PUT, method: 'PUT' }).length === 4,
      );
      expect(first.map((l) => l.split(' ')[0])).toEqual(['replayed', 'replayed', 'replayed']);
      const fourth = ids[3] as string;
      expect(JSON.parse(readFileSync(join(spool, fourth, 'replay.json'), 'utf8'))).toMatchObject({ steps: ['data', 'inputs'] });

      // 2. MLflow logs the next fresh entry's params and metrics but its answer never arrives.
      const second = await replayKilled(
        (p) => p.inject({ path: mlflowPath('runs/log-batch'), afterForward: true, delayMs: 120_000, times: 1 }),
        (p) => p.requests({ path: mlflowPath('runs/log-batch') })[0]?.upstreamStatus === 200,
      );
      const fifth = ids[4] as string;
      expect(second.map((l) => l.split(' → ')[0])).toEqual([`${'replayed'.padEnd(17)} ${fourth}`]);
      expect(JSON.parse(readFileSync(join(spool, fifth, 'replay.json'), 'utf8'))).toEqual({ runId: expect.any(String), steps: [] });

      // 3. MLflow creates the last entry's run but the answer never arrives: no journal yet.
      const third = await replayKilled(
        (p) => p.inject({ path: mlflowPath('runs/create'), afterForward: true, delayMs: 120_000, times: 1 }),
        (p) => p.requests({ path: mlflowPath('runs/create') })[0]?.upstreamStatus === 200,
      );
      const sixth = ids[5] as string;
      expect(third.map((l) => l.split(' → ')[0])).toEqual([`${'replayed'.padEnd(17)} ${fifth}`]);
      expect(existsSync(join(spool, sixth, 'replay.json'))).toBe(false);
      expect(await runsOfRequest(experiment, sixth)).toHaveLength(1);

      // Then a replay against the real server finishes everything.
      const last = await replay(['--to', MLFLOW_URL, '--spool', spool]);
      expect(last.code, last.stderr).toBe(0);
      expect(
        last.stdout
          .split('\n')
          .filter(Boolean)
          .map((l) => l.split(' → ')[0]),
      ).toEqual([`${'replayed'.padEnd(17)} ${sixth}`, '1 of 1 spooled runs are in MLflow']);
      expect(readdirSync(spool)).toEqual(['.replayed']);
      expect(readdirSync(join(spool, '.replayed')).sort()).toEqual(ids);

      const runs = await runsOf(experiment);
      expect(runs).toHaveLength(ids.length);
      for (const id of ids) {
        const mine = runs.filter((r) => tagsOf(r)['kmj.request_id'] === id);
        expect(mine, id).toHaveLength(1);
        const run = mine[0] as RestRun;
        expect(run.info.status).toBe('FINISHED');
        const entry = entries.get(id) as SpooledRun;
        for (const m of entry.metrics) {
          const history = await metricHistory(run.info.run_id, m.key);
          expect(history, `${id} ${m.key}`).toEqual([{ key: m.key, value: m.value, timestamp: m.timestamp, step: m.step }]);
        }
        const py = await readRunWithPython(run.info.run_id);
        expect(py.inputs, id).toHaveLength(1);
        expect(Object.keys(py.artifacts), id).toEqual(['predictions/predictions.csv']);
      }
    },
  );

  it('a spooled request that reached MLflow another way (a later online delivery): "already in MLflow", no second run', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const req = offlineRequest();
    await spoolAll(spool, [req]);
    const queue = await cleanups.requestQueue();
    await publish(queue, req);
    const online = await worker(queue, spoolEnv(cleanups.tempDir('kmj-other-spool-'), { MLFLOW_TRACKING_URI: MLFLOW_URL })).done;
    expect(online.code, online.stderr.slice(-2000)).toBe(EXIT.OK);
    const [run] = await runsOf(req.experiment);
    expect(run?.info.status).toBe('FINISHED');

    const result = await replay(['--to', MLFLOW_URL, '--spool', spool]);
    expect(result).toMatchObject({
      code: 0,
      stdout: `${'already in MLflow'.padEnd(17)} ${req.requestId} → run ${run?.info.run_id}\n1 of 1 spooled runs are in MLflow\n`,
    });
    expect((await runsOf(req.experiment)).map((r) => r.info.run_id)).toEqual([run?.info.run_id]);
    expect(tagsOf((await runsOf(req.experiment))[0] as RestRun)['kmj.spooled']).toBeUndefined();
    expect(readdirSync(spool)).toEqual(['.replayed']);
    expect(readdirSync(join(spool, '.replayed'))).toEqual([req.requestId]);
  });

  it('a wrong MLflow password: every entry stays in the spool, exit 1, the password shown nowhere', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const req = offlineRequest();
    await spoolAll(spool, [req]);
    const before = readFileSync(join(spool, req.requestId, 'run.json'), 'utf8');
    const result = await replay(['--to', MLFLOW_AUTH_URL, '--spool', spool], {
      MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
      MLFLOW_TRACKING_PASSWORD: 'not-the-password-x9',
    });
    expect(result.code).toBe(1);
    const out = result.stdout.split('\n').filter(Boolean);
    expect(out).toHaveLength(2);
    expect(out[0]).toMatch(new RegExp(`^${'failed'.padEnd(17)} ${req.requestId}: .*401`));
    expect(out[1]).toBe(`0 of 1 spooled runs are in MLflow; 1 failed and stay in ${spool}`);
    expect(`${result.stdout}${result.stderr}`).not.toContain('not-the-password-x9');
    expect(readdirSync(spool)).toEqual([req.requestId]);
    expect(readdirSync(join(spool, req.requestId)).sort()).toEqual(['artifacts', 'run.json']);
    expect(readFileSync(join(spool, req.requestId, 'run.json'), 'utf8')).toBe(before);
    expect(await runsOf(req.experiment, MLFLOW_AUTH_URL, true)).toEqual([]);
  });

  it('a spooled request whose earlier online run failed: replay finishes that run without its stale error tags', async () => {
    const spool = cleanups.tempDir('kmj-spool-');
    const queue = await cleanups.requestQueue();
    const req = offlineRequest();
    await publish(queue, req);
    // Delivery 1, by a worker without a spool: MLflow reachable but the artifact store fails; the
    // run is marked FAILED and the message requeued. (With a spool the run would go there.)
    const proxy = await FaultProxy.start(MLFLOW_URL);
    cleanups.defer(() => proxy.close());
    proxy.inject({ path: ARTIFACT_PUT, method: 'PUT', status: 503 });
    const one = await worker(queue, kmjWorkerEnv(cleanups, { KMJ_MODEL_ROOTS: modelRoot, MLFLOW_TRACKING_URI: proxy.url })).done;
    expect(one.code, one.stderr.slice(-2000)).toBe(EXIT.REQUEUED);
    const [failed] = await runsOf(req.experiment);
    expect(failed?.info.status).toBe('FAILED');
    expect(tagsOf(failed as RestRun)['kmj.outcome']).toBe('requeued');
    // Delivery 2: MLflow out of reach; the run goes to the spool.
    const port = await closedPort();
    const two = await worker(queue, spoolEnv(spool, { MLFLOW_TRACKING_URI: `http://127.0.0.1:${port}` })).done;
    expect(two.code, two.stderr.slice(-2000)).toBe(EXIT.OK);
    expect(readdirSync(spool)).toEqual([req.requestId]);

    const result = await replay(['--to', MLFLOW_URL, '--spool', spool]);
    expect(result.code, result.stdout).toBe(0);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.run_id)).toEqual([failed?.info.run_id]);
    expect(runs[0]?.info.status).toBe('FINISHED');
    const tags = tagsOf(runs[0] as RestRun);
    expect(tags['kmj.error']).toBeUndefined();
    expect(tags['kmj.outcome']).toBeUndefined();
  });

  describe('configuration', () => {
    it('no --to and no MLFLOW_TRACKING_URI: exit 78', async () => {
      const result = await replay(['--spool', cleanups.tempDir('kmj-spool-')]);
      expect(result).toMatchObject({
        code: 78,
        stdout: '',
        stderr: 'kmj replay: invalid replay configuration: --to: is required (or set MLFLOW_TRACKING_URI)\n',
      });
    });

    it('--to that is not an http(s) URL: exit 78 naming --to', async () => {
      const result = await replay(['--to', 'ftp://127.0.0.1/mlflow', '--spool', cleanups.tempDir('kmj-spool-')]);
      expect(result).toMatchObject({
        code: 78,
        stdout: '',
        stderr: 'kmj replay: invalid replay configuration: --to: "ftp://127.0.0.1/mlflow" must be a http or https URL\n',
      });
    });

    it('--help prints the help, exit 0', async () => {
      expect(await replay(['--help'])).toMatchObject({ code: 0, stdout: REPLAY_HELP, stderr: '' });
    });

    it('an empty or missing spool: nothing to do, exit 0', async () => {
      const result = await replay(['--to', MLFLOW_URL, '--spool', join(cleanups.tempDir('kmj-spool-'), 'never-made')]);
      expect(result).toMatchObject({ code: 0, stdout: '0 of 0 spooled runs are in MLflow\n' });
    });
  });
});
