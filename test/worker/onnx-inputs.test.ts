// Integer model inputs on the real onnxruntime: whole numbers pass (fractions dropped, as numpy's
// astype does), NaN and values out of the input's range are refused naming the row and the column.
// The models are made with the onnx package of the project's Python venv: one Cast node from an
// int64 (or int32) input `x` of shape [N, 1] to a double output `y`.
import { execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { ColumnBatch } from '../../worker/dataset/batch.ts';
import { PermanentError } from '../../common/errors.ts';
import { readMlModel } from '../../worker/model/mlmodel.ts';
import { OnnxModel } from '../../worker/model/onnx.ts';

const run = promisify(execFile);
const MAKE_MODELS = `
import sys, onnx
from onnx import helper, TensorProto
for kind, t in (("int64", TensorProto.INT64), ("int32", TensorProto.INT32)):
    x = helper.make_tensor_value_info("x", t, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], "cast", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, f"{sys.argv[1]}/{kind}/model.onnx")
`;

let root = '';
const models = new Map<string, OnnxModel>();

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kmj-onnx-inputs-'));
  for (const kind of ['int64', 'int32']) {
    mkdirSync(join(root, kind));
    writeFileSync(join(root, kind, 'MLmodel'), 'flavors:\n  onnx:\n    data: model.onnx\n');
  }
  await run(join(PACKAGE_ROOT, '.venv', 'bin', 'python'), ['-c', MAKE_MODELS, root]);
  for (const kind of ['int64', 'int32']) {
    const dir = join(root, kind);
    models.set(kind, await OnnxModel.load(dir, await readMlModel(dir), { intraOpThreads: 1 }));
  }
}, 60_000);

afterAll(async () => {
  for (const m of models.values()) await m.release();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Runs the model on one column `x` of these values, the batch's first row numbered `firstRow`. */
async function cast(kind: string, values: number[], firstRow = 1): Promise<number[]> {
  const model = models.get(kind);
  if (!model) throw new Error(`no ${kind} model`);
  const plan = model.plan(['x'], undefined);
  const batch = new ColumnBatch(firstRow, values.length, new Map([[0, Float64Array.from(values)]]), new Map());
  const out = await model.run(plan, batch);
  return [...(out.get('y')?.values ?? [])] as number[];
}

async function refusal(kind: string, values: number[], firstRow: number): Promise<{ message: string; field: string | undefined }> {
  try {
    await cast(kind, values, firstRow);
  } catch (err) {
    expect(err).toBeInstanceOf(PermanentError);
    return { message: (err as PermanentError).message, field: (err as PermanentError).field };
  }
  throw new Error('no error');
}

describe('integer model inputs', () => {
  it('feed whole numbers, dropping fractions toward zero', async () => {
    expect(await cast('int64', [1, 2.7, -3.9, 0, 2 ** 53, -(2 ** 62)])).toEqual([1, 2, -3, 0, 2 ** 53, -(2 ** 62)]);
    expect(await cast('int32', [1, -2.5, 2 ** 31 - 1, -(2 ** 31)])).toEqual([1, -2, 2 ** 31 - 1, -(2 ** 31)]);
  });

  it('refuse NaN, infinities and values out of range, naming the row and the column', async () => {
    expect(await refusal('int64', [1, Number.NaN, 3], 41)).toEqual({
      message: 'dataset: row 42, column "x": NaN does not fit the model\'s int64 input',
      field: 'dataset',
    });
    expect(await refusal('int64', [1e19], 7)).toEqual({
      message: 'dataset: row 7, column "x": 10000000000000000000 does not fit the model\'s int64 input',
      field: 'dataset',
    });
    expect(await refusal('int64', [0, -Infinity], 1)).toEqual({
      message: 'dataset: row 2, column "x": -Infinity does not fit the model\'s int64 input',
      field: 'dataset',
    });
    expect(await refusal('int32', [3e9], 5)).toEqual({
      message: 'dataset: row 5, column "x": 3000000000 does not fit the model\'s int32 input',
      field: 'dataset',
    });
    expect(await refusal('int32', [2, 2 ** 31], 1)).toEqual({
      message: 'dataset: row 2, column "x": 2147483648 does not fit the model\'s int32 input',
      field: 'dataset',
    });
  });
});
