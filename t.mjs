import ort from 'onnxruntime-node';
const t0 = performance.now();
for (const m of ['classifier','regressor','mlp']) {
  const s = await ort.InferenceSession.create(`.run/fixtures/models/${m}/model.onnx`);
  console.log(m, s.inputNames, s.outputNames, JSON.stringify(s.inputMetadata), JSON.stringify(s.outputMetadata));
}
console.log('load ms', performance.now()-t0);
