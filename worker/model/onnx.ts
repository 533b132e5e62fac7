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
import type * as Ort from 'onnxruntime-node';
import { PermanentError, TransientError } from '../../common/errors.ts';
import { textOf } from '../../common/text.ts';
import type { ColumnWants, DatasetBatch } from '../dataset/batch.ts';
import type { MlModel } from './mlmodel.ts';

export type ModelKind = 'classifier' | 'regressor';

type TensorType = 'float32' | 'float64' | 'int64' | 'int32' | 'string' | 'bool';
const SUPPORTED: ReadonlySet<string> = new Set(['float32', 'float64', 'int64', 'int32', 'string', 'bool']);

interface InputInfo {
  readonly name: string;
  readonly type: TensorType;
  /** Columns this input takes per row: k for [N, k], 1 for [N] or [N, 1]. */
  readonly width: number | undefined;
  /** Dimensions of the input: 1 for [N], 2 for [N, k]. */
  readonly rank: number;
}

/** How dataset columns become model inputs; made once per dataset, used for every batch. */
export interface FeedPlan {
  /** Dataset column indexes feeding the model, in feed order. */
  readonly columnIndexes: readonly number[];
  readonly columnNames: readonly string[];
  /** One entry per model input: which positions of `columnIndexes` it takes. */
  readonly inputs: ReadonlyArray<{
    readonly name: string;
    readonly type: TensorType;
    readonly from: number;
    readonly width: number;
    readonly rank: number;
  }>;
  /** The dataset columns the model reads as numbers, and as values (its text inputs). */
  readonly wants: ColumnWants;
}

/** One model output for a batch: `width` values a row, row after row. */
export interface OutputColumn {
  readonly width: number;
  readonly values: Float64Array | readonly string[];
}

/** One batch of model outputs, by output name. */
export type Outputs = ReadonlyMap<string, OutputColumn>;

export interface OnnxOptions {
  /** onnxruntime intra-op threads; 0 lets onnxruntime decide. */
  readonly intraOpThreads: number;
  /** Rows of zeros for the warm-up run (default 1). */
  readonly warmUpRows?: number;
}

/** How long opening the model took, in its steps. */
export interface OpenTimes {
  /** Waiting for onnxruntime-node's module to load (started early; 0 once it is loaded). */
  readonly runtimeSeconds: number;
  /** onnxruntime's InferenceSession.create: reading the file, optimising the graph. */
  readonly sessionSeconds: number;
  /** The warm-up run. */
  readonly warmUpSeconds: number;
}

/**
 * onnxruntime's words for a model file (or its external data) it could not open or read, as
 * opposed to one it read and refused.
 */
const FILE_FAULT =
  /doesn't exist|does not exist|no such file|permission denied|input\/output error|failed to open|cannot open|couldn't open|unable to open|bad file descriptor|stale file handle|too many open files|read error|errno/i;

/** onnxruntime-node, loaded on first use: the worker starts (and reaches the broker) without it. */
let runtime: typeof Ort | undefined;
let loading: Promise<typeof Ort> | undefined;

/** Starts loading onnxruntime-node, once; call early to have it ready when the model is. */
export function loadOnnxRuntime(): Promise<typeof Ort> {
  // onnxruntime 1.29+ collects telemetry on Linux too, and tries to upload it (and writes a
  // device id) unless this is set before it loads. A worker sends nothing anywhere but to its
  // broker and MLflow; set ORT_DISABLE_TELEMETRY=0 explicitly to allow it.
  process.env['ORT_DISABLE_TELEMETRY'] ??= '1';
  loading ??= import('onnxruntime-node').then((m) => (runtime = m));
  return loading;
}

/** The options every session is created with (`make bench-models` creates bare sessions with them too). */
export function sessionOptions(intraOpThreads: number): Ort.InferenceSession.SessionOptions {
  return {
    executionProviders: ['cpu'],
    intraOpNumThreads: intraOpThreads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    // No spin-waiting between runs: the JavaScript thread parses the next batch meanwhile, and
    // spinning pool threads would take the cores it needs (measured: 10% faster, 1/3 less CPU).
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  };
}

export class OnnxModel {
  readonly #session: Ort.InferenceSession;
  readonly #inputs: readonly InputInfo[];
  readonly outputNames: readonly string[];
  readonly kind: ModelKind;
  readonly signature: MlModel['inputColumns'];
  #times: OpenTimes;

  private constructor(session: Ort.InferenceSession, mlmodel: MlModel, times: OpenTimes) {
    this.#session = session;
    this.#times = times;
    const inputs: InputInfo[] = [];
    for (const m of session.inputMetadata) {
      if (!m.isTensor || !SUPPORTED.has(m.type)) {
        throw new PermanentError(
          `model: input ${JSON.stringify(m.name)} has type ${m.isTensor ? m.type : 'non-tensor'}, which the worker cannot feed`,
          { field: 'model' },
        );
      }
      const dims = m.shape;
      const last = dims.length >= 2 ? dims[dims.length - 1] : 1;
      inputs.push({
        name: m.name,
        type: m.type as TensorType,
        width: typeof last === 'number' && last > 0 ? last : undefined,
        rank: dims.length,
      });
    }
    this.#inputs = inputs;
    const tensorOutputs = session.outputMetadata.filter((o) => o.isTensor);
    if (tensorOutputs.length === 0) throw new PermanentError('model: has no tensor output the worker can read', { field: 'model' });
    this.outputNames = tensorOutputs.map((o) => o.name);
    const first = tensorOutputs[0];
    this.kind =
      first && first.isTensor && (first.type === 'int64' || first.type === 'int32' || first.type === 'string') ? 'classifier' : 'regressor';
    this.signature = mlmodel.inputColumns;
  }

  static async load(dir: string, mlmodel: MlModel, options: OnnxOptions): Promise<OnnxModel> {
    // Outside the try: a worker that cannot load onnxruntime is broken, the request is not.
    const waiting = performance.now();
    const rt = await loadOnnxRuntime();
    const runtimeSeconds = (performance.now() - waiting) / 1000;
    let session: Ort.InferenceSession;
    const started = performance.now();
    try {
      // Loading by path lets onnxruntime find external data files next to the model.
      session = await rt.InferenceSession.create(join(dir, mlmodel.onnxFile), sessionOptions(options.intraOpThreads));
    } catch (err) {
      const message = `model: onnxruntime cannot load ${mlmodel.onnxFile}: ${(err as Error).message}`;
      // A file that is not there or cannot be read is the machine's fault; only a model read
      // whole that onnxruntime refuses is the request's.
      if (FILE_FAULT.test((err as Error).message)) throw new TransientError(message, { cause: err });
      throw new PermanentError(message, { field: 'model', cause: err });
    }
    const model = new OnnxModel(session, mlmodel, {
      runtimeSeconds,
      sessionSeconds: (performance.now() - started) / 1000,
      warmUpSeconds: 0,
    });
    const warming = performance.now();
    await model.#warmUp(Math.max(1, options.warmUpRows ?? 1));
    model.#times = { ...model.#times, warmUpSeconds: (performance.now() - warming) / 1000 };
    return model;
  }

  /**
   * One inference on rows of zeros. onnxruntime prepares much of a session on its first run; doing
   * that here, while the worker is still waiting on MLflow, keeps it off the dataset's time. One
   * row is enough for that: a warm-up the size of a batch costs a whole batch's inference, 2.6 s
   * for 4096 rows of a 67 MB MLP (0.003 s for one row), more than the session's creation.
   */
  async #warmUp(rows: number): Promise<void> {
    const feeds: Record<string, Ort.Tensor> = {};
    for (const inp of this.#inputs) {
      const width = inp.width ?? 1;
      const dims = inp.rank === 1 ? [rows] : [rows, width];
      const column = (): Float64Array | string[] => (inp.type === 'string' ? new Array<string>(rows).fill('') : new Float64Array(rows));
      feeds[inp.name] = buildTensor(inp.type, dims, rows, Array.from({ length: width }, column), () => 'the warm-up');
    }
    try {
      await this.#session.run(feeds, [...this.outputNames]);
    } catch {
      // A model that refuses zeros is judged on the real rows, with a message naming them.
    }
  }

  /** How long opening it took. */
  get times(): OpenTimes {
    return this.#times;
  }

  /** Decides which dataset columns feed which input; refuses a dataset that does not match. */
  plan(datasetColumns: readonly string[], labelColumn: string | undefined): FeedPlan {
    const index = new Map(datasetColumns.map((c, i) => [c, i]));
    const indexOf = (name: string): number => {
      const i = index.get(name);
      if (i === undefined) {
        throw new PermanentError(
          `dataset: input does not match the model's signature: column ${JSON.stringify(name)} is missing (dataset columns: ${datasetColumns.join(', ')})`,
          { field: 'dataset' },
        );
      }
      return i;
    };
    if (this.signature) {
      for (const c of this.signature) if (c.required) indexOf(c.name);
    }
    const [single] = this.#inputs;
    if (this.#inputs.length === 1 && single && (single.width ?? 0) >= 1 && !index.has(single.name)) {
      // One matrix input: k feature columns.
      const names = this.signature ? this.signature.map((c) => c.name) : datasetColumns.filter((c) => c !== labelColumn);
      if (single.width !== undefined && names.length !== single.width) {
        const where = this.signature
          ? "the model's signature lists"
          : `the dataset has (without the label column ${labelColumn === undefined ? '' : JSON.stringify(labelColumn)})`;
        throw new PermanentError(
          `dataset: input does not match the model: input ${JSON.stringify(single.name)} takes ${single.width} columns, ${where} ${names.length}: ${names.join(', ')}`,
          { field: 'dataset' },
        );
      }
      const columnIndexes = names.map(indexOf);
      return {
        columnIndexes,
        columnNames: names,
        inputs: [{ name: single.name, type: single.type, from: 0, width: names.length, rank: single.rank }],
        wants: single.type === 'string' ? { numbers: [], values: columnIndexes } : { numbers: columnIndexes, values: [] },
      };
    }
    // One input per column, named after it.
    const names = this.#inputs.map((i) => i.name);
    const columnIndexes = names.map(indexOf);
    return {
      columnIndexes,
      columnNames: names,
      inputs: this.#inputs.map((inp, k) => ({ name: inp.name, type: inp.type, from: k, width: 1, rank: inp.rank })),
      wants: {
        numbers: columnIndexes.filter((_, k) => this.#inputs[k]?.type !== 'string'),
        values: columnIndexes.filter((_, k) => this.#inputs[k]?.type === 'string'),
      },
    };
  }

  /** Runs one batch, read with `plan.wants`. */
  async run(plan: FeedPlan, batch: DatasetBatch): Promise<Outputs> {
    const n = batch.length;
    const feeds: Record<string, Ort.Tensor> = {};
    for (const inp of plan.inputs) {
      const dims = inp.rank === 1 ? [n] : [n, inp.width];
      const cols = plan.columnIndexes.slice(inp.from, inp.from + inp.width);
      const names = plan.columnNames.slice(inp.from, inp.from + inp.width);
      const where = (r: number, j: number): string => `row ${batch.firstRow + r}, column ${JSON.stringify(names[j] ?? '')}`;
      feeds[inp.name] = buildTensor(
        inp.type,
        dims,
        n,
        cols.map((j) => (inp.type === 'string' ? batch.values(j) : batch.numbers(j))),
        where,
      );
    }
    let results: Ort.InferenceSession.OnnxValueMapType;
    try {
      results = await this.#session.run(feeds, [...this.outputNames]);
    } catch (err) {
      throw new PermanentError(`dataset: the model refused the input: ${(err as Error).message}`, { field: 'dataset', cause: err });
    }
    const out = new Map<string, OutputColumn>();
    for (const name of this.outputNames) {
      const t = results[name];
      if (!t) continue;
      out.set(name, columnOf(t));
    }
    return out;
  }

  async release(): Promise<void> {
    await this.#session.release();
  }
}

/** Row-major [n, width] numbers out of width columns; `map` gets the cell's row and column. */
function interleave(
  data: { [i: number]: number },
  n: number,
  cols: readonly Float64Array[],
  map?: (x: number, r: number, j: number) => number,
): void {
  const width = cols.length;
  for (let j = 0; j < width; j++) {
    const col = cols[j] as Float64Array;
    if (map) for (let r = 0; r < n; r++) data[r * width + j] = map(col[r] as number, r, j);
    else for (let r = 0; r < n; r++) data[r * width + j] = col[r] as number;
  }
}

/** Says where a cell is, for error messages: `row N, column "c"`. */
type Where = (r: number, j: number) => string;

/**
 * A whole number for an integer input of `bits` bits: the fraction is dropped (as numpy's astype
 * does); NaN, infinities and values out of range are refused with the cell named.
 */
function integer(bits: 32 | 64, where: Where): (x: number, r: number, j: number) => number {
  const limit = 2 ** (bits - 1);
  return (x, r, j) => {
    const t = Math.trunc(x);
    if (t >= -limit && t < limit) return t; // false for NaN
    throw new PermanentError(`dataset: ${where(r, j)}: ${x} does not fit the model's int${bits} input`, { field: 'dataset' });
  };
}

/** A tensor of `dims` from `n` rows of columns: Float64Arrays for numeric types, values for strings. */
/** The Tensor class; buildTensor only runs once a model is loaded, so onnxruntime is there. */
function tensorClass(): typeof Ort.Tensor {
  if (!runtime) throw new Error('onnxruntime-node is not loaded yet');
  return runtime.Tensor;
}

function buildTensor(
  type: TensorType,
  dims: number[],
  n: number,
  cols: ReadonlyArray<Float64Array | ReadonlyArray<unknown>>,
  where: Where,
): Ort.Tensor {
  const size = n * cols.length;
  const numeric = cols as readonly Float64Array[];
  switch (type) {
    case 'float32':
    case 'float64': {
      const data = type === 'float32' ? new Float32Array(size) : new Float64Array(size);
      if (cols.length === 1) data.set(numeric[0] as Float64Array);
      else interleave(data, n, numeric);
      return new (tensorClass())(type, data, dims);
    }
    case 'int32': {
      const data = new Int32Array(size);
      interleave(data, n, numeric, integer(32, where));
      return new (tensorClass())('int32', data, dims);
    }
    case 'int64': {
      const tmp = new Float64Array(size);
      interleave(tmp, n, numeric, integer(64, where));
      return new (tensorClass())(
        'int64',
        BigInt64Array.from(tmp, (x) => BigInt(x)),
        dims,
      );
    }
    case 'bool': {
      const data = new Uint8Array(size);
      interleave(data, n, numeric, (x) => (x ? 1 : 0));
      return new (tensorClass())('bool', data, dims);
    }
    case 'string': {
      const data: string[] = new Array<string>(size);
      const width = cols.length;
      for (let j = 0; j < width; j++) {
        const col = cols[j] as ReadonlyArray<unknown>;
        for (let r = 0; r < n; r++) data[r * width + j] = textOf(col[r]);
      }
      return new (tensorClass())('string', data, dims);
    }
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Tensor data as doubles; int64 without a BigInt a value (exact up to 2^53). */
function numbersOf(data: unknown): Float64Array {
  if (data instanceof Float64Array) return data;
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
    const out = new Float64Array(data.length);
    if (LITTLE_ENDIAN) {
      const words = new Int32Array(data.buffer, data.byteOffset, data.length * 2);
      const signed = data instanceof BigInt64Array;
      for (let i = 0; i < data.length; i++) {
        const lo = (words[2 * i] as number) >>> 0;
        const hi = words[2 * i + 1] as number;
        out[i] = (signed ? hi : hi >>> 0) * 4294967296 + lo;
      }
    } else for (let i = 0; i < data.length; i++) out[i] = Number(data[i]);
    return out;
  }
  return Float64Array.from(data as ArrayLike<number>);
}

function columnOf(t: Ort.Tensor): OutputColumn {
  // A row is everything after the first dimension: [N, k] gives k values, [N, a, b] a × b.
  const width = t.dims.slice(1).reduce((w, d) => w * Number(d), 1);
  if (t.type === 'string') return { width, values: t.data as string[] };
  return { width, values: numbersOf(t.data) };
}
