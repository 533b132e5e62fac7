// The worker's life around one request, with the real `kmj worker` process, a real RabbitMQ and a
// real MLflow server: stopped by SIGTERM or killed mid-run (made slow by a fault proxy delaying
// runs/log-inputs), stopped while idle, racing another worker for one message, and its model cache.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { RUN_TAG } from '../../common/run-tags.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { FaultProxy, mlflowPath } from '../helpers/fault-proxy.ts';
import {
  drain,
  fixtures,
  logsWith,
  MLFLOW_URL,
  metricsOf,
  mlflowApi,
  parseCsv,
  publish,
  queueState,
  queueStateAfterExit,
  readRunWithPython,
  request,
  runsOf,
  runWorker,
  startWorker,
  tagsOf,
  type QueueState,
  type RestRun,
  type WorkerProcess,
  type WorkerResult,
  uniqueId,
  waitForLog,
} from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const LOG_INPUTS = mlflowPath('runs/log-inputs');

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A fault proxy in front of MLflow that holds every runs/log-inputs call for `delayMs`. */
async function slowMlflow(delayMs = 3000): Promise<FaultProxy> {
  const p = await FaultProxy.start();
  p.inject({ path: LOG_INPUTS, delayMs });
  cleanups.defer(() => p.close());
  return p;
}

/** Starts a worker that is killed after the test if it is still running. */
function worker(queue: string, env: Record<string, string> = {}): WorkerProcess {
  const w = startWorker(queue, env);
  cleanups.defer(async () => {
    if (w.child.exitCode === null && w.child.signalCode === null) {
      w.child.kill('SIGKILL');
      await w.done;
    }
  });
  return w;
}

function waitForQueue(queue: string, want: QueueState): Promise<QueueState> {
  return waitUntil(
    `queue ${queue} at ${JSON.stringify(want)}`,
    () => queueState(queue),
    (s) => s.messages === want.messages && s.consumers === want.consumers,
    { timeoutMs: 10_000, stepMs: 50 },
  );
}

/** The run is FINISHED, complete (150 rows predicted, one dataset input) and has no error tag. */
async function expectCompleteRun(runId: string): Promise<void> {
  const py = await readRunWithPython(runId);
  expect(py.info.status).toBe('FINISHED');
  expect(py.tags[RUN_TAG.error]).toBeUndefined();
  expect(py.metrics['rows']).toBe(150);
  expect(py.inputs).toHaveLength(1);
  expect(py.inputs[0]).toMatchObject({ name: 'iris.csv', source_type: 'local' });
  const labels = parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label']));
  expect(labels).toEqual(classifier?.expected['output_label']);
}

describe('stopping a worker mid-run', () => {
  it('SIGTERM: exit 11 within the shutdown grace, run KILLED with kmj.error, message requeued; a fresh worker finishes the same run', async () => {
    const graceMs = 5000;
    const p = await slowMlflow();
    const queue = await cleanups.requestQueue();
    const req = request();
    await publish(queue, req);
    const w = worker(queue, { MLFLOW_TRACKING_URI: p.url, KMJ_WORKER_SHUTDOWN_GRACE_MS: String(graceMs) });
    const started = await waitForLog(w, 'run started');
    await p.waitForRequest(LOG_INPUTS);
    const killedAt = Date.now();
    w.child.kill('SIGTERM');
    const result = await w.done;
    expect(Date.now() - killedAt).toBeLessThan(graceMs);
    expect(result.code).toBe(EXIT.REQUEUED);
    expect(logsWith(result, 'message requeued')[0]).toMatchObject({
      requestId: req.requestId,
      runId: started['runId'],
      reason: 'the worker was stopped (SIGTERM)',
    });
    // The held call never reached MLflow: the worker hung up on it.
    expect(p.requests({ path: LOG_INPUTS }).map((r) => r.outcome)).toEqual(['client-gone']);

    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'KILLED']]);
    expect(tagsOf(runs[0] as RestRun)[RUN_TAG.error]).toBe('the worker was stopped (SIGTERM); the request was requeued');
    expect(runs[0]?.info.end_time).toBeGreaterThanOrEqual(runs[0]?.info.start_time ?? Number.POSITIVE_INFINITY);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);

    const again = await runWorker(queue);
    expect(again.code).toBe(EXIT.OK);
    expect(logsWith(again, 'resuming the unfinished run of this request')[0]).toMatchObject({ runId: started['runId'], status: 'KILLED' });
    const after = await runsOf(req.experiment);
    expect(after.map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'FINISHED']]);
    await expectCompleteRun(String(started['runId']));
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });

  it('SIGTERM on the last allowed delivery: still a requeue; the run is KILLED with outcome requeued and the message is back, not dead-lettered', async () => {
    const p = await slowMlflow();
    const queue = await cleanups.requestQueue();
    const req = request();
    await publish(queue, req);
    const w = worker(queue, { MLFLOW_TRACKING_URI: p.url, KMJ_MAX_DELIVERIES: '1', KMJ_WORKER_SHUTDOWN_GRACE_MS: '5000' });
    const started = await waitForLog(w, 'run started');
    await p.waitForRequest(LOG_INPUTS);
    w.child.kill('SIGTERM');
    const result = await w.done;
    expect(result.code).toBe(EXIT.REQUEUED);
    expect(logsWith(result, 'message requeued')[0]).toMatchObject({ requestId: req.requestId, attempt: 1 });
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[started['runId'], 'KILLED']]);
    expect(tagsOf(runs[0] as RestRun)[RUN_TAG.outcome]).toBe('requeued');
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });

  it('SIGKILL, twice: the broker requeues each time, the next worker resumes the RUNNING run; one run, FINISHED, nothing lost', async () => {
    const p = await slowMlflow();
    const queue = await cleanups.requestQueue();
    const req = request();
    await publish(queue, req);
    let runId: unknown;
    for (let kill = 1; kill <= 2; kill++) {
      const w = worker(queue, { MLFLOW_TRACKING_URI: p.url });
      if (kill === 1) runId = (await waitForLog(w, 'run started'))['runId'];
      else expect(await waitForLog(w, 'resuming the unfinished run of this request')).toMatchObject({ runId, status: 'RUNNING' });
      await waitUntil(
        `log-inputs call ${kill}`,
        () => p.requests({ path: LOG_INPUTS }).length,
        (n) => n === kill,
        { timeoutMs: 10_000, stepMs: 50 },
      );
      w.child.kill('SIGKILL');
      const result = await w.done;
      expect(result.signal).toBe('SIGKILL');
      // The connection is gone, so the broker puts the unacknowledged message back.
      await waitForQueue(queue, { messages: 1, consumers: 0 });
      const runs = await runsOf(req.experiment);
      expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[runId, 'RUNNING']]);
    }
    expect(p.requests({ path: LOG_INPUTS }).map((r) => r.outcome)).toEqual(['client-gone', 'client-gone']);

    const last = await runWorker(queue);
    expect(last.code).toBe(EXIT.OK);
    expect(logsWith(last, 'resuming the unfinished run of this request')[0]).toMatchObject({ runId, status: 'RUNNING' });
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => [r.info.run_id, r.info.status])).toEqual([[runId, 'FINISHED']]);
    expect(tagsOf(runs[0] as RestRun)['kmj.delivery_attempt']).toBe(String(logsWith(last, 'message acknowledged')[0]?.['attempt']));
    await expectCompleteRun(String(runId));
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);
  });
});

describe('the consumer', () => {
  it('SIGTERM while waiting for a message: exit 0 at once, nothing consumed, MLflow never called', async () => {
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    const queue = await cleanups.requestQueue();
    const w = worker(queue, { MLFLOW_TRACKING_URI: p.url, KMJ_WORKER_IDLE_TIMEOUT_MS: '60000' });
    await waitForQueue(queue, { messages: 0, consumers: 1 });
    const killedAt = Date.now();
    w.child.kill('SIGTERM');
    const result = await w.done;
    expect(Date.now() - killedAt).toBeLessThan(2000);
    expect(result.code).toBe(EXIT.OK);
    expect(logsWith(result, 'stopped before a message arrived')).toHaveLength(1);
    expect(logsWith(result, 'stopped before a message arrived')[0]).toMatchObject({ stopped: true });
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    const req = request();
    await publish(queue, req);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    expect(p.requests()).toEqual([]);
  });

  it('two workers on one queue with one message: exactly one runs it, the other exits 0 idle', async () => {
    const queue = await cleanups.requestQueue();
    const env = { KMJ_WORKER_IDLE_TIMEOUT_MS: '4000' };
    const a = worker(queue, env);
    const b = worker(queue, env);
    await waitForQueue(queue, { messages: 0, consumers: 2 });
    const req = request();
    await publish(queue, req);
    const results = await Promise.all([a.done, b.done]);
    expect(results.map((r) => r.code)).toEqual([EXIT.OK, EXIT.OK]);
    const messages = results
      .map((r) => r.logs.map((l) => l['msg']).find((m) => m === 'message acknowledged' || m === 'no message; exiting'))
      .sort();
    expect(messages).toEqual(['message acknowledged', 'no message; exiting']);
    const idle = results.find((r) => logsWith(r, 'no message; exiting').length === 1) as WorkerResult;
    expect(idle.logs.some((l) => l['requestId'] !== undefined)).toBe(false);
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });

  it('a worker takes exactly one message: the next one in the queue is left untouched', async () => {
    const queue = await cleanups.requestQueue();
    const first = request();
    const second = request();
    await publish(queue, first);
    await publish(queue, second);
    expect((await runWorker(queue)).code).toBe(EXIT.OK);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 1, consumers: 0 });
    const next = await runWorker(queue);
    expect(next.code).toBe(EXIT.OK);
    expect(logsWith(next, 'message acknowledged')[0]).toMatchObject({ requestId: second.requestId, attempt: 1 });
    const [run] = await runsOf(second.experiment);
    expect(run ? tagsOf(run)['kmj.delivery_attempt'] : 'no run').toBe('1');
  });
});

describe('the model cache', () => {
  it('a registry version made again under the same name and number is fetched again, not taken from the cache', async () => {
    // A registered model deleted and registered again starts at version 1 again: the cache key
    // (name and version) is the same, the files need not be. The copy keeps which registration it
    // came from (the version's creation time and source), and a hit must match it.
    const name = uniqueId('kmj-remade');
    // The new registration is made from the fixture's own logged model, as mlflow.register_model does.
    const { model_version: of } = await mlflowApi<{ model_version: { source: string; run_id: string } }>(
      MLFLOW_URL,
      `model-versions/get?name=${encodeURIComponent(classifier?.name ?? '')}&version=${classifier?.version}`,
      { method: 'GET' },
    );
    const register = async (): Promise<void> => {
      await mlflowApi(MLFLOW_URL, 'registered-models/create', { method: 'POST', body: { name } });
      await mlflowApi(MLFLOW_URL, 'model-versions/create', {
        method: 'POST',
        body: { name, source: of.source, run_id: of.run_id, model_id: of.source.replace('models:/', '') },
      });
    };
    cleanups.defer(() =>
      mlflowApi(MLFLOW_URL, 'registered-models/delete', { method: 'DELETE', body: { name } }).then(
        () => undefined,
        () => undefined,
      ),
    );
    await register();
    const cacheDir = cleanups.tempDir('kmj-remade-cache-');
    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    const modelFiles = (): number =>
      p.requests({ method: 'GET', path: /^\/api\/2\.0\/mlflow-artifacts\/artifacts\/.*\/model\.onnx$/ }).length;
    const runOne = async (): Promise<RestRun | undefined> => {
      const q = await cleanups.requestQueue();
      const r = request({ model: `models:/${name}/1` });
      await publish(q, r);
      expect((await runWorker(q, { KMJ_MODEL_CACHE_DIR: cacheDir, MLFLOW_TRACKING_URI: p.url })).code).toBe(EXIT.OK);
      return (await runsOf(r.experiment))[0];
    };
    const first = await runOne();
    expect(modelFiles()).toBe(1);
    const second = await runOne();
    expect(modelFiles()).toBe(1);
    await mlflowApi(MLFLOW_URL, 'registered-models/delete', { method: 'DELETE', body: { name } });
    await register();
    const third = await runOne();
    expect(modelFiles()).toBe(2);
    expect([first, second, third].map((r) => (r ? tagsOf(r)['kmj.model_cache'] : 'no run'))).toEqual(['miss', 'hit', 'miss']);
    expect(third ? tagsOf(third)['kmj.model_version'] : 'no run').toBe('1');
  });

  it('the second request with the same KMJ_MODEL_CACHE_DIR is a hit and downloads nothing', async () => {
    const cacheDir = cleanups.tempDir('kmj-shared-cache-');
    const q1 = await cleanups.requestQueue();
    const r1 = request();
    await publish(q1, r1);
    expect((await runWorker(q1, { KMJ_MODEL_CACHE_DIR: cacheDir })).code).toBe(EXIT.OK);
    expect(
      existsSync(join(cacheDir, 'registry', encodeURIComponent(classifier?.name ?? ''), String(classifier?.version), 'model.onnx')),
    ).toBe(true);

    const p = await FaultProxy.start();
    cleanups.defer(() => p.close());
    const q2 = await cleanups.requestQueue();
    const r2 = request();
    await publish(q2, r2);
    expect((await runWorker(q2, { KMJ_MODEL_CACHE_DIR: cacheDir, MLFLOW_TRACKING_URI: p.url })).code).toBe(EXIT.OK);
    // The predictions upload is a PUT; the model files would be GETs through the artifact proxy.
    expect(p.requests({ method: 'GET', path: /^\/api\/2\.0\/mlflow-artifacts\// })).toEqual([]);
    expect(
      p.requests({ method: 'PUT', path: /^\/api\/2\.0\/mlflow-artifacts\/artifacts\/.*\/predictions\/predictions\.csv$/ }),
    ).toHaveLength(1);

    // The hit asks the registry only what resolving the version needs: one call, and not where
    // the files are (the copy says it).
    const registry = p
      .requests({ path: /^\/api\/2\.0\/mlflow\/(model-versions|registered-models|logged-models)\// })
      .map((r) => `${r.method} ${r.path.replace('/api/2.0/mlflow/', '')}`);
    expect(registry).toEqual(['GET model-versions/get']);

    const [run1] = await runsOf(r1.experiment);
    const [run2] = await runsOf(r2.experiment);
    expect(run1 ? tagsOf(run1)['kmj.model_cache'] : 'no run').toBe('miss');
    expect(run2 ? tagsOf(run2)['kmj.model_cache'] : 'no run').toBe('hit');
    // Both name where the files came from: the miss asked, the hit read it from the copy.
    expect(run2 ? tagsOf(run2)['kmj.model_artifact_uri'] : 'no run').toBe(run1 ? tagsOf(run1)['kmj.model_artifact_uri'] : 'no run 1');
    expect(run2 ? tagsOf(run2)['kmj.model_artifact_uri'] : 'no run').toMatch(/^mlflow-artifacts:\//);
    await expectCompleteRun(run2?.info.run_id ?? '');

    // Where model_load_seconds went, on the run: the miss fetched the files (their bytes, as the
    // copy's manifest lists them), the hit fetched nothing.
    const m1 = metricsOf(run1);
    const m2 = metricsOf(run2);
    const manifest = JSON.parse(
      readFileSync(
        join(cacheDir, 'registry', encodeURIComponent(classifier?.name ?? ''), String(classifier?.version), '.kmj-manifest.json'),
        'utf8',
      ),
    ) as {
      files: Array<{ size: number }>;
      meta: Record<string, string>;
    };
    // The copy keeps where it came from and what its MLmodel says: the hit asks and parses nothing.
    expect(manifest.meta['artifactUri']).toBe(run1 ? tagsOf(run1)['kmj.model_artifact_uri'] : 'no run');
    expect(JSON.parse(manifest.meta['mlmodel'] ?? '{}')).toMatchObject({
      onnxFile: 'model.onnx',
      inputColumns: f.features.map((name) => ({ name, type: 'double', required: true })),
    });
    expect(m1['model_load/fetched_bytes']).toBe(manifest.files.reduce((n, x) => n + x.size, 0));
    expect(m1['model_load/mlflow_calls']).toBe(2);
    expect(m1['model_load/fetch_seconds']).toBeGreaterThan(0);
    expect(
      Object.keys(m1)
        .filter((k) => k.startsWith('model_load/call/'))
        .sort(),
    ).toEqual(['model_load/call/model-versions.get-download-uri_seconds', 'model_load/call/model-versions.get_seconds']);
    expect(m2['model_load/fetched_bytes']).toBe(0);
    expect(m2['model_load/fetch_seconds']).toBe(0);
    expect(m2['model_load/mlflow_calls']).toBe(1);
    expect(Object.keys(m2).filter((k) => k.startsWith('model_load/call/'))).toEqual(['model_load/call/model-versions.get_seconds']);
    const sum = (m: Record<string, number>, parts: string[]): number =>
      parts.reduce((n, k) => n + (m[`model_load/${k}_seconds`] ?? Number.NaN), 0);
    const opening = ['verify', 'mlmodel', 'runtime', 'session', 'warmup'];
    for (const m of [m1, m2]) expect(m['model_load/session_seconds']).toBeGreaterThan(0);
    // The miss's steps follow one another and fit in the whole.
    expect(sum(m1, ['resolve', 'fetch', ...opening])).toBeLessThanOrEqual((m1['model_load_seconds'] ?? 0) + 1e-6);
    expect(sum(m1, ['resolve', 'fetch', ...opening])).toBeGreaterThan((m1['model_load_seconds'] ?? 0) * 0.5);
    // The hit opened its copy while the registry answered: each of the two fits in the whole.
    expect(Math.max(sum(m2, ['resolve']), sum(m2, opening))).toBeLessThanOrEqual((m2['model_load_seconds'] ?? 0) + 1e-6);
    expect(Math.max(sum(m2, ['resolve']), sum(m2, opening))).toBeGreaterThan((m2['model_load_seconds'] ?? 0) * 0.5);
  });
});
