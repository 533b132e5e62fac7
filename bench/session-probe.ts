/**
 * onnxruntime-node's bare session start for one ONNX file, in a fresh process as a worker's is:
 * the time of InferenceSession.create alone, with the worker's session options, printed as JSON.
 * `make bench-models` compares the worker's model load with it.
 *
 *   node bench/session-probe.ts <model.onnx>
 */
import { loadOnnxRuntime, sessionOptions } from '../worker/model/onnx.ts';

const file = process.argv[2];
if (!file) throw new Error('usage: node bench/session-probe.ts <model.onnx>');
const ort = await loadOnnxRuntime();
const started = performance.now();
const session = await ort.InferenceSession.create(file, sessionOptions(0));
const seconds = (performance.now() - started) / 1000;
await session.release();
process.stdout.write(`${JSON.stringify({ seconds, rssMb: process.memoryUsage().rss / 1048576 })}\n`);
