/**
 * A batch of dataset rows, column by column, holding only the columns the request uses: the
 * model's numeric inputs as numbers (one Float64Array a column, ready to copy into a tensor), and
 * the rest it needs (text inputs, the label) as values, as the dataset wrote them.
 */
import { PermanentError } from '../../common/errors.ts';

/** Which dataset columns (by index) a batch must carry, and how. */
export interface ColumnWants {
  readonly numbers: readonly number[];
  readonly values: readonly number[];
}

export interface DatasetBatch {
  /** 1-based number of the first row of the batch, for error messages. */
  readonly firstRow: number;
  readonly length: number;
  /** A column asked for as numbers. */
  numbers(column: number): Float64Array;
  /** A column asked for as values: text from CSV, JSON values from JSON Lines. */
  values(column: number): ReadonlyArray<unknown>;
}

export class ColumnBatch implements DatasetBatch {
  readonly firstRow: number;
  readonly length: number;
  readonly #numbers: ReadonlyMap<number, Float64Array>;
  readonly #values: ReadonlyMap<number, ReadonlyArray<unknown>>;

  constructor(
    firstRow: number,
    length: number,
    numbers: ReadonlyMap<number, Float64Array>,
    values: ReadonlyMap<number, ReadonlyArray<unknown>>,
  ) {
    this.firstRow = firstRow;
    this.length = length;
    this.#numbers = numbers;
    this.#values = values;
  }

  numbers(column: number): Float64Array {
    const c = this.#numbers.get(column);
    if (!c) throw new Error(`column ${column} was not asked for as numbers`);
    return c;
  }

  values(column: number): ReadonlyArray<unknown> {
    const c = this.#values.get(column);
    if (!c) throw new Error(`column ${column} was not asked for as values`);
    return c;
  }
}

/**
 * A dataset value as a number: numbers as they are, text the way Number() reads it (surrounding
 * spaces allowed, "nan" for NaN), booleans as 1 and 0. Anything else, and an empty cell, is refused
 * with the row and the column: Number('') would be a silent 0.
 */
export function toNumber(v: unknown, row: number, column: string): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    if (v.length > 0 && v.trim() !== '') {
      const n = +v;
      if (n === n || /^\s*nan\s*$/i.test(v)) return n;
    }
  } else if (typeof v === 'boolean') return v ? 1 : 0;
  const shown = v === undefined || v === null || v === '' ? 'an empty value' : JSON.stringify(v);
  throw new PermanentError(`dataset: row ${row}, column ${JSON.stringify(column)}: ${shown} is not a number`, { field: 'dataset' });
}

/** A batch out of whole rows (JSON Lines, inline rows). */
export function batchOfRows(
  rows: ReadonlyArray<ReadonlyArray<unknown>>,
  firstRow: number,
  wants: ColumnWants,
  columns: readonly string[],
): ColumnBatch {
  const n = rows.length;
  const numbers = new Map<number, Float64Array>();
  for (const j of wants.numbers) {
    const out = new Float64Array(n);
    const name = columns[j] ?? String(j);
    for (let r = 0; r < n; r++) out[r] = toNumber((rows[r] as ReadonlyArray<unknown>)[j], firstRow + r, name);
    numbers.set(j, out);
  }
  const values = new Map<number, unknown[]>();
  for (const j of wants.values)
    values.set(
      j,
      rows.map((row) => row[j]),
    );
  return new ColumnBatch(firstRow, n, numbers, values);
}
