/** The parts of an MLflow `MLmodel` file the worker needs: the ONNX flavor and the signature. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type * as Yaml from 'yaml';
import { PermanentError, TransientError } from '../../common/errors.ts';

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

type YamlModule = typeof Yaml;

let yaml: Promise<YamlModule> | undefined;

/**
 * The yaml module, loaded once on first use (about 40 ms here): only a model fetched anew needs it,
 * a cached copy keeps what its MLmodel says (`mlModelOf`). Call early to have it ready.
 */
export function loadYaml(): Promise<YamlModule> {
  yaml ??= import('yaml');
  return yaml;
}

/** What a cached copy keeps of its MLmodel file, as text (a copy's meta holds strings). */
export function mlModelText(m: MlModel): string {
  return JSON.stringify({ onnxFile: m.onnxFile, inputColumns: m.inputColumns ?? null });
}

/** The MlModel a copy's meta kept (mlModelText), or undefined when it kept none or it is unreadable. */
export function mlModelOf(text: string | undefined): MlModel | undefined {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as { onnxFile?: unknown; inputColumns?: unknown };
    if (typeof v.onnxFile !== 'string' || v.onnxFile === '' || v.onnxFile.includes('..')) return undefined;
    if (v.inputColumns !== null && !Array.isArray(v.inputColumns)) return undefined;
    const cols = v.inputColumns as ColumnSpec[] | null;
    if (cols && !cols.every((c) => typeof c.name === 'string' && typeof c.type === 'string' && typeof c.required === 'boolean'))
      return undefined;
    return { onnxFile: v.onnxFile, inputColumns: cols ?? undefined };
  } catch {
    return undefined;
  }
}

/**
 * Reads `<dir>/MLmodel`. A file that cannot be read is the machine's fault (a cache entry gone,
 * a volume failing): TransientError. Only a file read whole that says the wrong thing is the
 * request's: PermanentError. `missingIsPermanent`: for a user's own model directory, where a
 * missing MLmodel means the URI names something that is not a model.
 */
export async function readMlModel(dir: string, options: { missingIsPermanent?: boolean } = {}): Promise<MlModel> {
  const { parse } = await loadYaml();
  let text: string;
  try {
    text = await readFile(join(dir, 'MLmodel'), 'utf8');
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (options.missingIsPermanent === true && (code === 'ENOENT' || code === 'ENOTDIR')) {
      throw new PermanentError(`model: the model directory has no MLmodel file`, { field: 'model', cause: err });
    }
    throw new TransientError(`model: the MLmodel file could not be read (${(err as Error).message})`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (err) {
    throw new PermanentError(`model: the MLmodel file is not valid YAML (${(err as Error).message})`, { field: 'model', cause: err });
  }
  const d = (doc ?? {}) as { flavors?: { onnx?: { data?: unknown } }; signature?: { inputs?: unknown } };
  const onnxFile = d.flavors?.onnx?.data;
  if (typeof onnxFile !== 'string' || onnxFile === '' || onnxFile.includes('..')) {
    const flavors = Object.keys(d.flavors ?? {}).join(', ') || 'none';
    throw new PermanentError(`model: is not an ONNX model (MLmodel flavors: ${flavors}); log it with mlflow.onnx.log_model`, {
      field: 'model',
    });
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
