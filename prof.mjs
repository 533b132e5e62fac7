import { openDataset } from './dist/worker/dataset/open.js';
import { readMlModel } from './dist/worker/model/mlmodel.js';
import { OnnxModel } from './dist/worker/model/onnx.js';
import { PredictionsWriter } from './dist/worker/predictions.js';
const dir = '.run/fixtures/models/classifier';
const model = await OnnxModel.load(dir, await readMlModel(dir), { intraOpThreads: 0 });
for (let rep = 0; rep < 4; rep++) {
  const t0 = performance.now();
  const ds = await openDataset({ dataset: { uri: process.cwd() + '/.run/fixtures/iris-100000.csv' } }, undefined, { maxBytes: 1e9, maxRows: 1e9, localRoots: ['/'], httpTimeoutMs: 1000 }, AbortSignal.timeout(60000));
  const cols = await ds.columns();
  const plan = model.plan(cols, 'species');
  const w = new PredictionsWriter('/tmp/p.csv', 'csv', model.outputNames, undefined);
  let tRead = 0, tInf = 0, tWrite = 0; let t = performance.now();
  for await (const b of ds.batches(Number(process.env.B ?? 8192))) {
    const a = performance.now(); tRead += a - t;
    const out = await model.run(plan, b.rows, b.firstRow);
    const c = performance.now(); tInf += c - a;
    await w.write(out, b.firstRow, undefined);
    t = performance.now(); tWrite += t - c;
  }
  await w.close();
  console.log(`total ${(performance.now()-t0).toFixed(1)} read ${tRead.toFixed(1)} infer ${tInf.toFixed(1)} write ${tWrite.toFixed(1)}`);
}
