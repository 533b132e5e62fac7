/**
 * Scores computed while predictions stream past, when the request names a label column: for
 * classifiers the metrics mlflow.evaluate logs (accuracy_score, and macro-averaged precision_score,
 * recall_score and f1_score), for regressors the error metrics (mean_absolute_error,
 * mean_squared_error, root_mean_squared_error, r2_score). Memory: three counters per class.
 */
import { PermanentError } from '../common/errors.ts';

export interface Scorer {
  add(truth: unknown, predicted: unknown, row: number): void;
  metrics(): Record<string, number>;
}

function labelKey(v: unknown): string {
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') {
    const t = v.trim();
    const n = Number(t);
    // "1", "1.0" and 1 are the same class.
    return t !== '' && Number.isFinite(n) ? String(n) : t;
  }
  if (typeof v === 'boolean') return v ? '1' : '0';
  return JSON.stringify(v);
}

export class ClassificationScorer implements Scorer {
  /** Per label: rows with it as truth, as prediction, and as both. */
  readonly #truths = new Map<string, number>();
  readonly #predictions = new Map<string, number>();
  readonly #hits = new Map<string, number>();
  readonly #labels = new Set<string>();
  #n = 0;
  #correct = 0;
  readonly #labelColumn: string;

  constructor(labelColumn: string) {
    this.#labelColumn = labelColumn;
  }

  add(truth: unknown, predicted: unknown, row: number): void {
    if (truth === undefined || truth === null || truth === '') {
      throw new PermanentError(`dataset: row ${row}, label column ${JSON.stringify(this.#labelColumn)} is empty`, { field: 'labelColumn' });
    }
    const t = labelKey(truth);
    const p = labelKey(predicted);
    this.#n++;
    if (t === p) {
      this.#correct++;
      this.#hits.set(t, (this.#hits.get(t) ?? 0) + 1);
    }
    this.#labels.add(t);
    this.#labels.add(p);
    this.#truths.set(t, (this.#truths.get(t) ?? 0) + 1);
    this.#predictions.set(p, (this.#predictions.get(p) ?? 0) + 1);
  }

  metrics(): Record<string, number> {
    if (this.#n === 0) return {};
    let precision = 0;
    let recall = 0;
    let f1 = 0;
    // Macro average over the labels seen in truth or predictions, as scikit-learn does.
    for (const label of this.#labels) {
      const tp = this.#hits.get(label) ?? 0;
      const predicted = this.#predictions.get(label) ?? 0; // tp + fp
      const actual = this.#truths.get(label) ?? 0; // tp + fn
      const pr = predicted === 0 ? 0 : tp / predicted;
      const rc = actual === 0 ? 0 : tp / actual;
      precision += pr;
      recall += rc;
      f1 += pr + rc === 0 ? 0 : (2 * pr * rc) / (pr + rc);
    }
    const k = this.#labels.size;
    return {
      accuracy_score: this.#correct / this.#n,
      precision_score: precision / k,
      recall_score: recall / k,
      f1_score: f1 / k,
    };
  }
}

export class RegressionScorer implements Scorer {
  #n = 0;
  #absErr = 0;
  #sqErr = 0;
  // Welford's running mean and sum of squared deviations: exact enough when labels are large
  // next to their spread, where sum(y²) − n·mean² cancels to noise.
  #mean = 0;
  #m2 = 0;
  readonly #labelColumn: string;

  constructor(labelColumn: string) {
    this.#labelColumn = labelColumn;
  }

  add(truth: unknown, predicted: unknown, row: number): void {
    const y = typeof truth === 'number' ? truth : typeof truth === 'string' && truth.trim() !== '' ? Number(truth) : Number.NaN;
    if (!Number.isFinite(y)) {
      throw new PermanentError(
        `dataset: row ${row}, label column ${JSON.stringify(this.#labelColumn)}: ${JSON.stringify(truth ?? null)} is not a number`,
        { field: 'labelColumn' },
      );
    }
    const p = Array.isArray(predicted) ? Number(predicted[0]) : Number(predicted);
    const e = p - y;
    this.#n++;
    this.#absErr += Math.abs(e);
    this.#sqErr += e * e;
    const d = y - this.#mean;
    this.#mean += d / this.#n;
    this.#m2 += d * (y - this.#mean);
  }

  metrics(): Record<string, number> {
    if (this.#n === 0) return {};
    const mse = this.#sqErr / this.#n;
    const ssTot = this.#m2;
    // scikit-learn: with constant labels, 1 for perfect predictions and 0 otherwise.
    const r2 = ssTot > 0 ? 1 - this.#sqErr / ssTot : this.#sqErr === 0 ? 1 : 0;
    return {
      mean_absolute_error: this.#absErr / this.#n,
      mean_squared_error: mse,
      root_mean_squared_error: Math.sqrt(mse),
      r2_score: r2,
    };
  }
}
