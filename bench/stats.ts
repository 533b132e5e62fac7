/** What the benchmarks share: printing, percentiles, medians and ranges. */

export function out(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** The nearest-rank percentile `p` (0–100) of `sorted` (ascending); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

/** Sorts a copy, ascending. */
export function sorted(values: readonly number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

export function median(values: readonly number[]): number {
  const s = sorted(values);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** "median m (min a, max b)". */
export function fmt(values: readonly number[], digits = 3): string {
  return `median ${median(values).toFixed(digits)} (min ${Math.min(...values).toFixed(digits)}, max ${Math.max(...values).toFixed(digits)})`;
}

/** Count, p50 and p99 of a sample (NaN percentiles when it is empty). */
export interface Summary {
  readonly n: number;
  readonly p50: number;
  readonly p99: number;
}

export function summary(samples: readonly number[]): Summary {
  const s = sorted(samples);
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99) };
}

/** Milliseconds with three decimals and the unit. */
export function ms(v: number): string {
  return `${v.toFixed(3)} ms`;
}
