/**
 * An ONNX model on onnxruntime-node (CPU), and how dataset columns feed it.
 *
 * Two input layouts are understood, the two skl2onnx produces:
 * - one tensor input of shape [N, k] (e.g. `X` or `float_input`): the k feature columns, in the
 *   order of the MLflow signature when the model has one, else the dataset's order without the
 *   label column;
 * - one input per column, each [N] or [N, 1], named after the column.
 *
 * Only tensor outputs are fetched: a classifier's ZipMap output (a sequence of maps) is not a
 * tensor, and its label output is.
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { PermanentError } from '../errors.ts';
import type { MlModel } from './mlmodel.ts';

export type ModelKind = 'classifier' | 'regressor';

type TensorType = 'float32' | 'float64' | 'int64' | 'int32' | 'string' | 'bool';
const SUPPORTED: ReadonlySet<string> = new Set(['float32', 'float64', 'int64', 'int32', 'string', 'bool']);

interface InputInfo {
  readonly name: string;
  readonly type: TensorType;
  /** Columns this input takes per row: k for [N, k], 1 for [N] or [N, 1]. */
  readonly width: number | undefined;
}

/** How dataset columns become model inputs; made once per dataset, used for every batch. */
export interface FeedPlan {
  /** Dataset column indexes feeding the model, in feed order. */
  readonly columnIndexes: readonly number[];
  readonly columnNames: readonly string[];
  /** One entry per model input: which positions of `columnIndexes` it takes. */
  readonly inputs: ReadonlyArray<{ readonly name: string; readonly type: TensorType; readonly from: number; readonly width: number; readonly rank: number }>;
}

/** One batch of model outputs: per output name, one value per row (arrays for [N, k] outputs). */
export type Outputs = ReadonlyMap<string, ReadonlyArray<number | string | readonly number[]>>;

export interface OnnxOptions {
  /** onnxruntime intra-op threads; 0 lets onnxruntime decide. */
  readonly intraOpThreads: number;
}

export class OnnxModel {
  readonly #session: ort.InferenceSession;
  readonly #inputs: readonly InputInfo[];
  readonly #inputRanks: ReadonlyMap<string, number>;
  readonly outputNames: readonly string[];
  readonly kind: ModelKind;
  readonly signature: MlModel['inputColumns'];

  private constructor(session: ort.InferenceSession, mlmodel: MlModel) {
    this.#session = session;
    const inputs: InputInfo[] = [];
    const ranks = new Map<string, number>();
    for (const m of session.inputMetadata) {
      if (!m.isTensor || !SUPPORTED.has(m.type)) {
        throw new PermanentError(`model: input ${JSON.stringify(m.name)} has type ${m.isTensor ? m.type : 'non-tensor'}, which the worker cannot feed`, { field: 'model' });
      }
      const dims = m.shape;
      const last = dims.length >= 2 ? dims[dims.length - 1] : 1;
      inputs.push({ name: m.name, type: m.type as TensorType, width: typeof last === 'number' && last > 0 ? last : undefined });
      ranks.set(m.name, dims.length);
    }
    this.#inputs = inputs;
    this.#inputRanks = ranks;
    const tensorOutputs = session.outputMetadata.filter((o) => o.isTensor);
    if (tensorOutputs.length === 0) throw new PermanentError('model: has no tensor output the worker can read', { field: 'model' });
    this.outputNames = tensorOutputs.map((o) => o.name);
    const first = tensorOutputs[0];
    this.kind = first && first.isTensor && (first.type === 'int64' || first.type === 'int32' || first.type === 'string') ? 'classifier' : 'regressor';
    this.signature = mlmodel.inputColumns;
  }

  static async load(dir: string, mlmodel: MlModel, options: OnnxOptions): Promise<OnnxModel> {
    let session: ort.InferenceSession;
    try {
      // Loading by path lets onnxruntime find external data files next to the model.
      session = await ort.InferenceSession.create(join(dir, mlmodel.onnxFile), {
        executionProviders: ['cpu'],
        intraOpNumThreads: options.intraOpThreads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
      });
    } catch (err) {
      throw new PermanentError(`model: onnxruntime cannot load ${mlmodel.onnxFile}: ${(err as Error).message}`, { field: 'model', cause: err });
    }
    const model = new OnnxModel(session, mlmodel);
    await model.#warmUp();
    return model;
  }

  /**
   * One inference on a row of zeros. onnxruntime prepares much of a session on its first run; doing
   * that here, while the worker is still waiting on MLflow, keeps it off the dataset's time.
   */
  async #warmUp(): Promise<void> {
    const feeds: Record<string, ort.Tensor> = {};
    for (const inp of this.#inputs) {
      const width = inp.width ?? 1;
      const dims = (this.#inputRanks.get(inp.name) ?? 2) === 1 ? [1] : [1, width];
      feeds[inp.name] = buildTensor(inp.type, dims, [Array.from({ length: width }, () => (inp.type === 'string' ? '' : 0))], Array.from({ length: width }, (_, j) => j), () => ({ row: 0, column: inp.name }));
    }
    try {
      await this.#session.run(feeds, [...this.outputNames]);
    } catch {
      // A model that refuses zeros is judged on the real rows, with a message naming them.
    }
  }

  /** Decides which dataset columns feed which input; refuses a dataset that does not match. */
  plan(datasetColumns: readonly string[], labelColumn: string | undefined): FeedPlan {
    const index = new Map(datasetColumns.map((c, i) => [c, i]));
    const indexOf = (name: string): number => {
      const i = index.get(name);
      if (i === undefined) {
        throw new PermanentError(`dataset: input does not match the model's signature: column ${JSON.stringify(name)} is missing (dataset columns: ${datasetColumns.join(', ')})`, { field: 'dataset' });
      }
      return i;
    };
    if (this.signature) {
      for (const c of this.signature) if (c.required) indexOf(c.name);
    }
    const [single] = this.#inputs;
    if (this.#inputs.length === 1 && single && (single.width ?? 0) >= 1 && !index.has(single.name)) {
      // One matrix input: k feature columns.
      const names = this.signature
        ? this.signature.map((c) => c.name)
        : datasetColumns.filter((c) => c !== labelColumn);
      if (single.width !== undefined && names.length !== single.width) {
        const where = this.signature ? "the model's signature lists" : `the dataset has (without the label column ${labelColumn === undefined ? '' : JSON.stringify(labelColumn)})`;
        throw new PermanentError(`dataset: input does not match the model: input ${JSON.stringify(single.name)} takes ${single.width} columns, ${where} ${names.length}: ${names.join(', ')}`, { field: 'dataset' });
      }
      return {
        columnIndexes: names.map(indexOf),
        columnNames: names,
        inputs: [{ name: single.name, type: single.type, from: 0, width: names.length, rank: this.#inputRanks.get(single.name) ?? 2 }],
      };
    }
    // One input per column, named after it.
    const names = this.#inputs.map((i) => i.name);
    return {
      columnIndexes: names.map(indexOf),
      columnNames: names,
      inputs: this.#inputs.map((inp, k) => ({ name: inp.name, type: inp.type, from: k, width: 1, rank: this.#inputRanks.get(inp.name) ?? 2 })),
    };
  }

  /** Runs one batch. `rows` are dataset rows; `firstRow` numbers them (1-based) for error messages. */
  async run(plan: FeedPlan, rows: ReadonlyArray<ReadonlyArray<unknown>>, firstRow: number): Promise<Outputs> {
    const n = rows.length;
    const feeds: Record<string, ort.Tensor> = {};
    for (const inp of plan.inputs) {
      const dims = inp.rank === 1 ? [n] : [n, inp.width];
      const cols = plan.columnIndexes.slice(inp.from, inp.from + inp.width);
      feeds[inp.name] = buildTensor(inp.type, dims, rows, cols, (r, j) => ({ row: firstRow + r, column: plan.columnNames[inp.from + j] as string }));
    }
    let results: ort.InferenceSession.OnnxValueMapType;
    try {
      results = await this.#session.run(feeds, [...this.outputNames]);
    } catch (err) {
      throw new PermanentError(`dataset: the model refused the input: ${(err as Error).message}`, { field: 'dataset', cause: err });
    }
    const out = new Map<string, Array<number | string | number[]>>();
    for (const name of this.outputNames) {
      const t = results[name] as ort.Tensor | undefined;
      if (!t) continue;
      out.set(name, columnOf(t, n));
    }
    return out;
  }

  async release(): Promise<void> {
    await this.#session.release();
  }
}

type Where = (r: number, j: number) => { row: number; column: string };

/** A dataset value as a number; CSV gives strings, JSON Lines numbers. Refuses anything else. */
function numberOf(v: unknown, r: number, j: number, where: Where): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    // Number('') is 0 and Number(' ') is 0: an empty cell must not become a zero.
    if (v.length > 0 && v.trim() !== '') {
      const n = +v;
      if (n === n || /^\s*nan\s*$/i.test(v)) return n;
    }
  } else if (typeof v === 'boolean') return v ? 1 : 0;
  const at = where(r, j);
  const shown = v === undefined || v === null || v === '' ? 'an empty value' : JSON.stringify(v);
  throw new PermanentError(`dataset: row ${at.row}, column ${JSON.stringify(at.column)}: ${shown} is not a number`, { field: 'dataset' });
}

function fillNumbers(data: { [i: number]: number }, rows: ReadonlyArray<ReadonlyArray<unknown>>, cols: readonly number[], where: Where, map: (x: number) => number = (x) => x): void {
  const width = cols.length;
  const n = rows.length;
  for (let r = 0; r < n; r++) {
    const row = rows[r] as ReadonlyArray<unknown>;
    const base = r * width;
    for (let j = 0; j < width; j++) {
      const v = row[cols[j] as number];
      // Fast path: a plain decimal number as text or a number; everything else goes the careful way.
      let x: number;
      if (typeof v === 'number') x = v;
      else if (typeof v === 'string' && v.length > 0) {
        x = +v;
        if (x !== x || v.trim() === '') x = numberOf(v, r, j, where);
      } else x = numberOf(v, r, j, where);
      data[base + j] = map(x);
    }
  }
}

function buildTensor(type: TensorType, dims: number[], rows: ReadonlyArray<ReadonlyArray<unknown>>, cols: readonly number[], where: Where): ort.Tensor {
  const size = rows.length * cols.length;
  switch (type) {
    case 'float32':
    case 'float64': {
      const data = type === 'float32' ? new Float32Array(size) : new Float64Array(size);
      fillNumbers(data, rows, cols, where);
      return new ort.Tensor(type, data, dims);
    }
    case 'int32': {
      const data = new Int32Array(size);
      fillNumbers(data, rows, cols, where, Math.trunc);
      return new ort.Tensor('int32', data, dims);
    }
    case 'int64': {
      const tmp = new Float64Array(size);
      fillNumbers(tmp, rows, cols, where, Math.trunc);
      return new ort.Tensor('int64', BigInt64Array.from(tmp, (x) => BigInt(x)), dims);
    }
    case 'bool': {
      const data = new Uint8Array(size);
      fillNumbers(data, rows, cols, where, (x) => (x ? 1 : 0));
      return new ort.Tensor('bool', data, dims);
    }
    case 'string': {
      const data: string[] = new Array<string>(size);
      const width = cols.length;
      rows.forEach((row, r) => {
        for (let j = 0; j < width; j++) data[r * width + j] = String(row[cols[j] as number] ?? '');
      });
      return new ort.Tensor('string', data, dims);
    }
  }
}

function columnOf(t: ort.Tensor, n: number): Array<number | string | number[]> {
  const width = t.dims.length >= 2 ? Number(t.dims[t.dims.length - 1]) : 1;
  const data = t.data as ArrayLike<number | bigint | string>;
  const at = (i: number): number | string => {
    const v = data[i] as number | bigint | string;
    return typeof v === 'bigint' ? Number(v) : v;
  };
  const out: Array<number | string | number[]> = new Array(n);
  if (width === 1) {
    for (let r = 0; r < n; r++) out[r] = at(r);
  } else {
    for (let r = 0; r < n; r++) {
      const row: number[] = new Array<number>(width);
      for (let j = 0; j < width; j++) row[j] = Number(at(r * width + j));
      out[r] = row;
    }
  }
  return out;
}
