// ClassificationScorer and RegressionScorer against scikit-learn itself: the same label and
// prediction vectors go through the scorers and through sklearn.metrics in the project's Python
// venv, and the numbers must agree to 1e-12 (relative to the value when it is larger than 1).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { PermanentError } from '../../common/errors.ts';
import { ClassificationScorer, RegressionScorer, type Scorer } from '../../worker/scores.ts';

const run = promisify(execFile);
const PYTHON = join(PACKAGE_ROOT, '.venv', 'bin', 'python');

/** Reads {name: {kind, truth, pred}} on stdin, prints {name: metrics} as sklearn computes them. */
const SKLEARN = `
import json, sys, warnings
warnings.filterwarnings("ignore")
from sklearn import metrics as m
cases = json.load(sys.stdin)
out = {}
for name, c in cases.items():
    t, p = c["truth"], c["pred"]
    if c["kind"] == "classification":
        out[name] = {
            "accuracy_score": m.accuracy_score(t, p),
            "precision_score": m.precision_score(t, p, average="macro", zero_division=0),
            "recall_score": m.recall_score(t, p, average="macro", zero_division=0),
            "f1_score": m.f1_score(t, p, average="macro", zero_division=0),
        }
    else:
        out[name] = {
            "mean_absolute_error": m.mean_absolute_error(t, p),
            "mean_squared_error": m.mean_squared_error(t, p),
            "root_mean_squared_error": m.root_mean_squared_error(t, p),
            "r2_score": m.r2_score(t, p),
        }
    out[name] = {k: float(v) for k, v in out[name].items()}
print(json.dumps(out))
`;

interface Case {
  readonly kind: 'classification' | 'regression';
  /** What the worker sees: CSV strings, JSON numbers, booleans, vector outputs. */
  readonly truth: readonly unknown[];
  readonly pred: readonly unknown[];
  /** The same values as scikit-learn should see them, when they differ from what the worker sees. */
  readonly sklearnTruth?: readonly unknown[];
  readonly sklearnPred?: readonly unknown[];
}

/** A deterministic generator, so a failure can be reproduced. */
function lcg(seed: number): (n: number) => number {
  let s = seed;
  return (n) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
}

const rand = lcg(42);
const manyTruth = Array.from({ length: 300 }, () => rand(6));
const manyPred = manyTruth.map((t) => (rand(10) < 6 ? t : rand(10) === 0 ? 9 : rand(6)));
const regTruth = Array.from({ length: 500 }, () => (rand(2_000_000) - 1_000_000) / 1000);
const regPred = regTruth.map((y) => y + (rand(20_001) - 10_000) / 997);

const CASES: Record<string, Case> = {
  'integer classes, some only in the predictions': {
    kind: 'classification',
    truth: [0, 1, 2, 2, 1, 0, 1, 0],
    pred: [0, 2, 2, 3, 1, 0, 4, 3],
  },
  'string labels': {
    kind: 'classification',
    truth: ['cat', 'dog', 'cat', 'bird', 'dog', 'dog'],
    pred: ['cat', 'cat', 'cat', 'dog', 'dog', 'fish'],
  },
  '"1", " 1.0 " and 1 as the same class': {
    kind: 'classification',
    truth: ['1', '2', '1.0', ' 2 ', '3', '2.50'],
    pred: [1.0, 2, 1, 3, 3, 2.5],
    // scikit-learn calls 2.5 among integer classes "continuous": give it the class names.
    sklearnTruth: ['1', '2', '1', '2', '3', '2.5'],
    sklearnPred: ['1', '2', '1', '3', '3', '2.5'],
  },
  'booleans as 1 and 0': {
    kind: 'classification',
    truth: [true, false, 'true', 'false', true],
    pred: [1, 0, 'true', 1, 0],
    sklearnTruth: ['1', '0', 'true', 'false', '1'],
    sklearnPred: ['1', '0', 'true', '1', '0'],
  },
  'every prediction wrong': {
    kind: 'classification',
    truth: ['a', 'a', 'b'],
    pred: ['b', 'c', 'a'],
  },
  'one class, all right': {
    kind: 'classification',
    truth: [7, 7, 7],
    pred: [7, 7, 7],
  },
  '300 rows, 6 classes and a class only predicted': {
    kind: 'classification',
    truth: manyTruth,
    pred: manyPred,
  },
  "scikit-learn's documented example": {
    kind: 'regression',
    truth: [3, -0.5, 2, 7],
    pred: [2.5, 0.0, 2, 8],
  },
  'labels as CSV strings, predictions as vectors of one': {
    kind: 'regression',
    truth: ['1.5', ' 2 ', '-3.25', '4e-1', '10'],
    pred: [[1.4], [2.5], [-3], [0.5], [8.75]],
    sklearnTruth: [1.5, 2, -3.25, 0.4, 10],
    sklearnPred: [1.4, 2.5, -3, 0.5, 8.75],
  },
  'perfect predictions': {
    kind: 'regression',
    truth: [1, 2, 3, 4],
    pred: [1, 2, 3, 4],
  },
  'constant labels, imperfect predictions (sklearn: r2 0)': {
    kind: 'regression',
    truth: [2, 2, 2, 2],
    pred: [2, 3, 2, 1],
  },
  '500 rows': {
    kind: 'regression',
    truth: regTruth,
    pred: regPred,
  },
};

/** Cases the scorers once got wrong against scikit-learn, each tested below. */
const BUG_CASES: Record<string, Case> = {
  'constant labels, perfect predictions (sklearn: r2 1)': {
    kind: 'regression',
    truth: [2, 2, 2, 2],
    pred: [2, 2, 2, 2],
  },
  'labels with a large offset and a small spread': {
    kind: 'regression',
    truth: Array.from({ length: 200 }, (_, i) => 1000 + ((i * 37) % 101) / 100),
    pred: Array.from({ length: 200 }, (_, i) => 1000 + ((i * 53) % 101) / 100),
  },
};

let sklearn: Record<string, Record<string, number>>;

beforeAll(async () => {
  const input = Object.fromEntries(
    Object.entries({ ...CASES, ...BUG_CASES }).map(([name, c]) => [
      name,
      { kind: c.kind, truth: c.sklearnTruth ?? c.truth, pred: c.sklearnPred ?? c.pred },
    ]),
  );
  const child = run(PYTHON, ['-c', SKLEARN], {
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '/tmp' },
    maxBuffer: 16 * 1024 * 1024,
  });
  child.child.stdin?.end(JSON.stringify(input));
  sklearn = JSON.parse((await child).stdout) as Record<string, Record<string, number>>;
});

function score(c: Case): Record<string, number> {
  const scorer: Scorer = c.kind === 'classification' ? new ClassificationScorer('label') : new RegressionScorer('label');
  c.truth.forEach((t, i) => scorer.add(t, c.pred[i], i + 1));
  return scorer.metrics();
}

function expectSame(name: string, ours: Record<string, number>, theirs: Record<string, number> | undefined): void {
  expect(theirs, `scikit-learn's answer for ${name}`).toBeDefined();
  expect(Object.keys(ours).sort(), name).toEqual(Object.keys(theirs ?? {}).sort());
  for (const [key, expected] of Object.entries(theirs ?? {})) {
    const got = ours[key] ?? Number.NaN;
    expect(Math.abs(got - expected), `${name}: ${key} is ${got}, scikit-learn says ${expected}`).toBeLessThanOrEqual(
      1e-12 * Math.max(1, Math.abs(expected)),
    );
  }
}

describe('scores agree with scikit-learn', () => {
  for (const [name, c] of Object.entries(CASES)) {
    it(`${c.kind}: ${name}`, () => {
      expectSame(name, score(c), sklearn[name]);
    });
  }

  it('the cases are not trivial: classes only in the predictions count in the macro average', () => {
    // Recall per class 0..4: 2/3, 1/3, 1/2, 0, 0. Over the true classes only it would be 0.5.
    const m = sklearn['integer classes, some only in the predictions'];
    expect(m?.['accuracy_score']).toBe(0.5);
    expect(m?.['recall_score']).toBeCloseTo(0.3, 15);
    expect(sklearn['constant labels, imperfect predictions (sklearn: r2 0)']?.['r2_score']).toBe(0);
  });

  it('regression: constant labels, perfect predictions give r2 1', () => {
    const name = 'constant labels, perfect predictions (sklearn: r2 1)';
    expect(sklearn[name]?.['r2_score']).toBe(1);
    expectSame(name, score(BUG_CASES[name] as Case), sklearn[name]);
  });

  it('regression: labels with a large offset and a small spread', () => {
    const name = 'labels with a large offset and a small spread';
    expectSame(name, score(BUG_CASES[name] as Case), sklearn[name]);
  });

  it('no rows give no metrics', () => {
    expect(new ClassificationScorer('y').metrics()).toEqual({});
    expect(new RegressionScorer('y').metrics()).toEqual({});
  });
});

describe('label errors', () => {
  function errorOf(fn: () => void): PermanentError {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(PermanentError);
      return err as PermanentError;
    }
    throw new Error('no error thrown');
  }

  it('an empty classification label names the row and the column', () => {
    for (const truth of [undefined, null, '']) {
      const s = new ClassificationScorer('species');
      s.add('a', 'a', 1);
      const e = errorOf(() => s.add(truth, 'a', 17));
      expect(e.message, String(truth)).toBe('dataset: row 17, label column "species" is empty');
      expect(e.field).toBe('labelColumn');
    }
  });

  it('a regression label that is not a number names the row, the column and the value', () => {
    const cases: Array<[unknown, string]> = [
      ['abc', '"abc"'],
      ['', '""'],
      ['   ', '"   "'],
      ['NaN', '"NaN"'],
      ['Infinity', '"Infinity"'],
      ['1,5', '"1,5"'],
      [null, 'null'],
      [undefined, 'null'],
      [true, 'true'],
      [[1], '[1]'],
      [Number.NaN, 'null'],
    ];
    for (const [truth, shown] of cases) {
      const s = new RegressionScorer('petal width (cm)');
      const e = errorOf(() => s.add(truth, 1, 3));
      expect(e.message, JSON.stringify(truth)).toBe(`dataset: row 3, label column "petal width (cm)": ${shown} is not a number`);
      expect(e.field).toBe('labelColumn');
    }
  });

  it('a refused label leaves the scores of the rows before it unchanged', () => {
    const s = new RegressionScorer('y');
    s.add(1, 2, 1);
    s.add(3, 3, 2);
    expect(() => s.add('x', 1, 3)).toThrow(PermanentError);
    expect(s.metrics()).toEqual({
      mean_absolute_error: 0.5,
      mean_squared_error: 0.5,
      root_mean_squared_error: Math.sqrt(0.5),
      r2_score: 0.5,
    });
  });
});
