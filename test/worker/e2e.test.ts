// The real `kmj worker` process against a real RabbitMQ and a real MLflow server, with models made
// and registered by the real Python client. Runs are read back through the Python client too.
import { readFileSync } from 'node:fs';
import { machine } from 'node:os';
import { describe, expect, it } from 'vitest';
import {
  drain,
  fixtures,
  MLFLOW_AUTH_PASSWORD,
  MLFLOW_AUTH_URL,
  MLFLOW_AUTH_USER,
  parseCsv,
  publish,
  queueStateAfterExit,
  readRunWithPython,
  request,
  requestQueue,
  runsOf,
  runWorker,
  tagsOf,
  uniqueId,
} from '../helpers/worker.ts';

const f = fixtures();
const classifier = f.models['classifier'];
const expectedLabels = (key: string): number[] => (f.models[key]?.expected['output_label'] ?? []) as number[];

/** iris labels, from the CSV fixture. */
function irisLabels(): number[] {
  return parseCsv(readFileSync(f.datasets.csv, 'utf8')).map((r) => Number(r[f.label]));
}

describe('a request end to end', () => {
  it('runs the classifier on the CSV and logs a FINISHED run that Python reads back', async () => {
    const queue = await requestQueue();
    const req = request({ params: { owner: 'ml-team', batch: 7 }, tags: { team: 'vision' }, runName: 'iris-check' });
    await publish(queue, req);
    const result = await runWorker(queue);
    expect(result.code).toBe(0);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
    expect(await drain(`${queue}.dead`)).toEqual([]);

    const runs = await runsOf(req.experiment);
    expect(runs).toHaveLength(1);
    const run = await readRunWithPython(runs[0]?.info.run_id ?? '');
    expect(run.info.status).toBe('FINISHED');
    // The run names the logged model of the registry version it ran (MLflow 3), and its scores
    // are on that model's page, as an evaluation run's would be.
    expect(run.model_inputs).toHaveLength(1);
    expect(run.model_inputs[0]).toMatchObject({ name: 'model', source_run_id: f.models['classifier']?.runId });
    expect(run.model_inputs[0]?.model_id).toMatch(/^m-[0-9a-f]+$/);
    expect(run.model_inputs[0]?.run_metrics).toEqual(expect.arrayContaining(['accuracy_score', 'rows']));
    expect(run.info.run_name).toBe('iris-check');
    expect(run.info.end_time).toBeGreaterThanOrEqual(run.info.start_time);
    expect(run.params).toEqual({
      model_uri: req.model,
      dataset: f.datasets.csv,
      output_format: 'csv',
      label_column: f.label,
      owner: 'ml-team',
      batch: '7',
    });
    expect(run.tags).toMatchObject({
      'mlflow.source.type': 'JOB',
      'mlflow.source.name': `kmj worker --queue ${queue}`,
      'mlflow.runName': 'iris-check',
      'kmj.request_id': req.requestId,
      'kmj.model_uri': req.model,
      'kmj.model_name': classifier?.name,
      'kmj.model_version': String(classifier?.version),
      'kmj.model_kind': 'classifier',
      'kmj.model_cache': 'miss',
      'kmj.model_source': 'mlflow',
      'kmj.batch_rows': '16384',
      'kmj.queue': queue,
      'kmj.delivery_attempt': '1',
      // The machine the worker ran on, as the kernel names it (x86_64 here; aarch64 on a Pi 5:
      // test/image/arm64-worker.test.ts).
      'kmj.machine': machine(),
      team: 'vision',
    });
    expect(run.tags['mlflow.user']).toMatch(/.+/);
    expect(run.tags['kmj.error']).toBeUndefined();

    // Predictions: exactly what Python's onnxruntime gives for the same model and rows.
    const predictions = parseCsv(run.artifacts['predictions/predictions.csv'] ?? '');
    expect(predictions).toHaveLength(150);
    expect(predictions.map((p) => Number(p['output_label']))).toEqual(expectedLabels('classifier'));
    expect(predictions.map((p) => Number(p['row']))).toEqual(Array.from({ length: 150 }, (_, i) => i + 1));
    expect(predictions.map((p) => Number(p[f.label]))).toEqual(irisLabels());

    // Metrics: the counts and the scores scikit-learn's definitions give for these predictions.
    const truth = irisLabels();
    const pred = expectedLabels('classifier');
    const correct = truth.filter((t, i) => t === pred[i]).length;
    expect(run.metrics['rows']).toBe(150);
    expect(run.metrics['accuracy_score']).toBeCloseTo(correct / 150, 10);
    for (const key of ['precision_score', 'recall_score', 'f1_score']) {
      expect(run.metrics[key]).toBeGreaterThan(0.9);
      expect(run.metrics[key]).toBeLessThanOrEqual(1);
    }
    for (const key of ['model_load_seconds', 'inference_seconds', 'total_seconds', 'rows_per_second'])
      expect(run.metrics[key]).toBeGreaterThan(0);

    // The dataset input, as mlflow.log_input writes one.
    expect(run.inputs).toHaveLength(1);
    expect(run.inputs[0]).toMatchObject({
      name: 'iris.csv',
      digest: f.datasets.csvSha256.slice(0, 8),
      source_type: 'local',
      source: JSON.stringify({ uri: f.datasets.csv }),
      tags: { 'mlflow.data.context': 'inference' },
    });
    expect(JSON.parse(run.inputs[0]?.profile ?? '{}')).toEqual({ num_rows: 150, num_elements: 750 });
    expect(JSON.parse(run.inputs[0]?.schema ?? '{}')).toEqual({
      mlflow_colspec: [
        ...f.features.map((name) => ({ type: 'double', name, required: true })),
        { type: 'long', name: f.label, required: true },
      ],
    });
  });

  it('resolves models:/<name>@<alias>, models:/<name>/latest, runs:/ and mlflow-artifacts: URIs', async () => {
    const v2 = f.models['classifierV2'];
    const cases = [
      { model: `models:/${classifier?.name}@champion`, version: String(classifier?.version), expect: 'classifier' },
      { model: `models:/${classifier?.name}/latest`, version: String(v2?.version), expect: 'classifierV2' },
      { model: `runs:/${classifier?.runId}/model`, version: undefined, expect: 'classifier' },
    ];
    for (const c of cases) {
      const queue = await requestQueue();
      const req = request({ model: c.model });
      await publish(queue, req);
      const result = await runWorker(queue);
      expect(result.code, c.model).toBe(0);
      const [run] = await runsOf(req.experiment);
      expect(run?.info.status).toBe('FINISHED');
      expect(run ? tagsOf(run)['kmj.model_version'] : 'no run').toBe(c.version);
      const py = await readRunWithPython(run?.info.run_id ?? '');
      expect(
        parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label'])),
        c.model,
      ).toEqual(expectedLabels(c.expect));
    }
    // The artifact location of a registered version, as an mlflow-artifacts: URI.
    const first = await requestQueue();
    const aliased = request({ model: `models:/${classifier?.name}@champion` });
    await publish(first, aliased);
    expect((await runWorker(first)).code).toBe(0);
    const [aliasRun] = await runsOf(aliased.experiment);
    const artifactUri = aliasRun ? (tagsOf(aliasRun)['kmj.model_artifact_uri'] ?? '') : '';
    expect(artifactUri).toMatch(/^mlflow-artifacts:\//);
    const queue = await requestQueue();
    const req = request({ model: artifactUri });
    await publish(queue, req);
    expect((await runWorker(queue)).code).toBe(0);
    const [run] = await runsOf(req.experiment);
    expect(run?.info.status).toBe('FINISHED');
    expect(run ? tagsOf(run)['kmj.model_version'] : 'no run').toBeUndefined();
    // The same files by their MLflow 3 logged-model id.
    const modelId = /\/models\/(m-[0-9a-f]+)\//.exec(artifactUri)?.[1];
    expect(modelId).toMatch(/^m-/);
    const q2 = await requestQueue();
    const byId = request({ model: `models:/${modelId}` });
    await publish(q2, byId);
    expect((await runWorker(q2)).code).toBe(0);
    const [idRun] = await runsOf(byId.experiment);
    const py = await readRunWithPython(idRun?.info.run_id ?? '');
    expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label']))).toEqual(
      expectedLabels('classifier'),
    );
  });

  it('runs the regressor on JSON Lines and logs regression metrics', async () => {
    const reg = f.models['regressor'];
    const queue = await requestQueue();
    const req = request({
      model: `models:/${reg?.name}/${reg?.version}`,
      dataset: { uri: f.datasets.jsonl },
      labelColumn: f.regressorLabel,
      output: { format: 'jsonl' },
    });
    await publish(queue, req);
    expect((await runWorker(queue)).code).toBe(0);
    const [run] = await runsOf(req.experiment);
    const py = await readRunWithPython(run?.info.run_id ?? '');
    expect(py.tags['kmj.model_kind']).toBe('regressor');
    const lines = (py.artifacts['predictions/predictions.jsonl'] ?? '')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>);
    expect(lines).toHaveLength(150);
    const expected = (reg?.expected['variable'] ?? []) as number[][];
    lines.forEach((l, i) => expect(l['variable']).toBeCloseTo(expected[i]?.[0] ?? Number.NaN, 5));
    // r2 of a linear fit of petal width on iris is about 0.94; the errors follow from it.
    expect(py.metrics['r2_score']).toBeGreaterThan(0.9);
    expect(py.metrics['root_mean_squared_error']).toBeCloseTo(Math.sqrt(py.metrics['mean_squared_error'] ?? 0), 12);
    expect(py.metrics['mean_absolute_error']).toBeGreaterThan(0);
    expect(py.metrics['accuracy_score']).toBeUndefined();
  });

  it('loads a model whose weights are in an external data file', async () => {
    const mlp = f.models['mlp'];
    expect(mlp?.files.some((name) => name.endsWith('.data'))).toBe(true);
    const queue = await requestQueue();
    const req = request({ model: `models:/${mlp?.name}/${mlp?.version}` });
    await publish(queue, req);
    expect((await runWorker(queue)).code).toBe(0);
    const [run] = await runsOf(req.experiment);
    const py = await readRunWithPython(run?.info.run_id ?? '');
    expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label']))).toEqual(
      expectedLabels('mlp'),
    );
  });

  it('reads datasets from MLflow artifacts (mlflow-artifacts: and runs:/) and inline rows', async () => {
    for (const dataset of [{ uri: f.datasets.artifactCsvUri }, { uri: f.datasets.runsCsvUri }, { uri: f.datasets.artifactJsonlUri }]) {
      const queue = await requestQueue();
      const req = request({ dataset });
      await publish(queue, req);
      expect((await runWorker(queue)).code, dataset.uri).toBe(0);
      const [run] = await runsOf(req.experiment);
      const py = await readRunWithPython(run?.info.run_id ?? '');
      expect(py.metrics['rows']).toBe(150);
      expect(py.inputs[0]).toMatchObject({ source_type: 'mlflow-artifacts', source: JSON.stringify({ uri: dataset.uri }) });
      expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label']))).toEqual(
        expectedLabels('classifier'),
      );
    }
    const rows = [
      Object.fromEntries([...f.features.map((c, i) => [c, [5.1, 3.5, 1.4, 0.2][i]]), [f.label, 0]]),
      Object.fromEntries([...f.features.map((c, i) => [c, [6.7, 3.0, 5.2, 2.3][i]]), [f.label, 2]]),
    ];
    const queue = await requestQueue();
    const req = request({ dataset: { rows, name: 'two-flowers' } });
    await publish(queue, req);
    expect((await runWorker(queue)).code).toBe(0);
    const [run] = await runsOf(req.experiment);
    const py = await readRunWithPython(run?.info.run_id ?? '');
    expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => p['output_label'])).toEqual(['0', '2']);
    expect(py.metrics['accuracy_score']).toBe(1);
    expect(py.inputs[0]).toMatchObject({ name: 'two-flowers', source_type: 'code' });
  });
});

describe('consumer protocol', () => {
  it('exits 0 without touching MLflow when no message arrives within the idle timeout', async () => {
    const queue = await requestQueue();
    const started = Date.now();
    const result = await runWorker(queue, { KMJ_WORKER_IDLE_TIMEOUT_MS: '800', MLFLOW_TRACKING_URI: 'http://127.0.0.1:9' });
    expect(result.code).toBe(0);
    expect(Date.now() - started).toBeLessThan(8000);
    expect(result.logs.map((l) => l['msg'])).toContain('no message; exiting');
    expect(result.logs.some((l) => typeof l['mlflow'] === 'string')).toBe(false);
  });

  it('acknowledges a redelivered request whose run is FINISHED without running it again', async () => {
    const queue = await requestQueue();
    const req = request();
    await publish(queue, req);
    expect((await runWorker(queue)).code).toBe(0);
    const [first] = await runsOf(req.experiment);
    await publish(queue, req);
    const again = await runWorker(queue);
    expect(again.code).toBe(0);
    expect(again.logs.find((l) => l['msg'] === 'message acknowledged')).toMatchObject({ alreadyFinished: true, requestId: req.requestId });
    expect(again.logs.map((l) => l['msg'])).toContain('request already has a finished run; acknowledging');
    const runs = await runsOf(req.experiment);
    expect(runs.map((r) => r.info.run_id)).toEqual([first?.info.run_id]);
    expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  });
});

describe('MLflow with basic auth', () => {
  it('runs a request end to end against a server that requires a user and password', async () => {
    const auth = fixtures('fixtures-auth');
    const model = auth.models['classifier'];
    const queue = await requestQueue();
    const req = request({ model: `models:/${model?.name}@${model?.alias ?? 'champion'}`, dataset: { uri: auth.datasets.csv } });
    await publish(queue, req);
    const result = await runWorker(queue, {
      MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
      MLFLOW_TRACKING_USERNAME: MLFLOW_AUTH_USER,
      MLFLOW_TRACKING_PASSWORD: MLFLOW_AUTH_PASSWORD,
      KMJ_DATASET_ROOTS: auth.dir,
    });
    expect(result.code).toBe(0);
    expect(result.stderr).not.toContain(MLFLOW_AUTH_PASSWORD);
    const [run] = await runsOf(req.experiment, MLFLOW_AUTH_URL, true);
    expect(run?.info.status).toBe('FINISHED');
    const py = await readRunWithPython(run?.info.run_id ?? '', MLFLOW_AUTH_URL, true);
    expect(py.metrics['rows']).toBe(150);
    expect(parseCsv(py.artifacts['predictions/predictions.csv'] ?? '').map((p) => Number(p['output_label']))).toEqual(
      (model?.expected['output_label'] ?? []) as number[],
    );
  });

  /** A request run by a worker user of its own (not the admin), as manifests/setup.yaml makes it. */
  async function asWorkerUser(
    onModelExperiment: 'READ' | 'EDIT',
  ): Promise<{ tags: Record<string, string>; py: Awaited<ReturnType<typeof readRunWithPython>> }> {
    const auth = fixtures('fixtures-auth');
    const model = auth.models['classifier'];
    const admin = {
      'content-type': 'application/json',
      authorization: `Basic ${Buffer.from(`${MLFLOW_AUTH_USER}:${MLFLOW_AUTH_PASSWORD}`).toString('base64')}`,
    };
    const api = async (path: string, body: unknown, version = '2.0'): Promise<void> => {
      const res = await fetch(`${MLFLOW_AUTH_URL}/api/${version}/mlflow/${path}`, {
        method: 'POST',
        headers: admin,
        body: JSON.stringify(body),
      });
      expect(res.status, `${path}: ${await res.text()}`).toBe(200);
    };
    const user = { username: uniqueId('kmj-worker'), password: 'a-worker-password-of-24' };
    await api('users/create', user);
    // A grant on the model's experiment. (READ there, manifests/' default, cannot be shown on this
    // server, whose default permission is EDIT: the cluster's runs show it, test/cluster/from-empty.cases.ts.)
    const source = await fetch(`${MLFLOW_AUTH_URL}/api/2.0/mlflow/runs/get?run_id=${model?.runId}`, { headers: admin });
    const experimentId = ((await source.json()) as { run: { info: { experiment_id: string } } }).run.info.experiment_id;
    await api(
      'users/permissions/grant',
      { username: user.username, resource_type: 'experiment', resource_id: experimentId, permission: onModelExperiment },
      '3.0',
    );
    const queue = await requestQueue();
    const req = request({ model: `models:/${model?.name}@${model?.alias ?? 'champion'}`, dataset: { uri: auth.datasets.csv } });
    await publish(queue, req);
    const result = await runWorker(queue, {
      MLFLOW_TRACKING_URI: MLFLOW_AUTH_URL,
      MLFLOW_TRACKING_USERNAME: user.username,
      MLFLOW_TRACKING_PASSWORD: user.password,
      KMJ_DATASET_ROOTS: auth.dir,
    });
    expect(result.code, result.stderr).toBe(0);
    const [run] = await runsOf(req.experiment, MLFLOW_AUTH_URL, true);
    expect(run?.info.status).toBe('FINISHED');
    return { tags: tagsOf(run!), py: await readRunWithPython(run?.info.run_id ?? '', MLFLOW_AUTH_URL, true) };
  }

  it("a worker user with EDIT on the model's experiment links the run to the logged model that ran", async () => {
    const { tags, py } = await asWorkerUser('EDIT');
    expect(tags['kmj.model_link']).toBeUndefined();
    expect(py.metrics['rows']).toBe(150);
    expect(py.model_inputs.map((m) => m.model_id)).toHaveLength(1);
  });
});
