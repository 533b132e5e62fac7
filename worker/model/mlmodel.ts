/** The parts of an MLflow `MLmodel` file the worker needs: the ONNX flavor and the signature. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PermanentError } from '../errors.ts';

/** One column of a column-based MLflow signature. */
export interface ColumnSpec {
  readonly name: string;
  /** MLflow's data type: double, float, long, integer, boolean, string, binary, datetime. */
  readonly type: string;
  readonly required: boolean;
}

export interface MlModel {
  /** The ONNX file inside the model directory (flavors.onnx.data). */
  readonly onnxFile: string;
  /** Column-based input signature, when the model has one. */
  readonly inputColumns: readonly ColumnSpec[] | undefined;
}

export async function readMlModel(dir: string): Promise<MlModel> {
  // yaml is loaded here, not at start-up: only a model load needs it.
  const { parse } = await import('yaml');
  let doc: unknown;
  try {
    doc = parse(await readFile(join(dir, 'MLmodel'), 'utf8'));
  } catch (err) {
    throw new PermanentError(`model: the model directory has no readable MLmodel file (${(err as Error).message})`, { field: 'model', cause: err });
  }
  const d = (doc ?? {}) as { flavors?: { onnx?: { data?: unknown } }; signature?: { inputs?: unknown } };
  const onnxFile = d.flavors?.onnx?.data;
  if (typeof onnxFile !== 'string' || onnxFile === '' || onnxFile.includes('..')) {
    const flavors = Object.keys(d.flavors ?? {}).join(', ') || 'none';
    throw new PermanentError(`model: is not an ONNX model (MLmodel flavors: ${flavors}); log it with mlflow.onnx.log_model`, { field: 'model' });
  }
  let inputColumns: ColumnSpec[] | undefined;
  if (typeof d.signature?.inputs === 'string') {
    try {
      const specs = JSON.parse(d.signature.inputs) as Array<{ name?: unknown; type?: unknown; required?: unknown }>;
      // A tensor-based signature has no names; only column-based ones say which column is which.
      if (specs.length > 0 && specs.every((s) => typeof s.name === 'string' && typeof s.type === 'string' && s.type !== 'tensor')) {
        inputColumns = specs.map((s) => ({ name: s.name as string, type: s.type as string, required: s.required !== false }));
      }
    } catch (err) {
      throw new PermanentError(`model: MLmodel has an unreadable signature (${(err as Error).message})`, { field: 'model', cause: err });
    }
  }
  return { onnxFile, inputColumns };
}
