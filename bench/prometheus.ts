/** The scaler's /metrics as a benchmark reads it: samples, histograms, and their change over a window. */

export interface PromSample {
  readonly name: string;
  readonly labels: ReadonlyMap<string, string>;
  readonly value: number;
}

export interface Histogram {
  readonly count: number;
  readonly sumSeconds: number;
  /** Cumulative counts by upper bound (seconds, ascending; the last is +Inf). */
  readonly buckets: readonly { readonly le: number; readonly count: number }[];
}

/** The samples of a /metrics text (the scaler's label values never hold quotes or braces). */
export function parseMetrics(text: string): PromSample[] {
  const samples: PromSample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1] ?? '', l[2] ?? '']));
    samples.push({ name: m[1] ?? '', labels, value: Number(m[3]) });
  }
  return samples;
}

/** Histogram `name` restricted to samples whose label `key` is `value`. */
export function histogramOf(samples: readonly PromSample[], name: string, key: string, value: string): Histogram {
  const mine = samples.filter((s) => s.labels.get(key) === value);
  const buckets = mine
    .filter((s) => s.name === `${name}_bucket`)
    .map((s) => ({ le: s.labels.get('le') === '+Inf' ? Infinity : Number(s.labels.get('le')), count: s.value }))
    .sort((a, b) => a.le - b.le);
  return {
    count: mine.find((s) => s.name === `${name}_count`)?.value ?? 0,
    sumSeconds: mine.find((s) => s.name === `${name}_sum`)?.value ?? 0,
    buckets,
  };
}

/** What a histogram gained between two scrapes. */
export function histogramDelta(after: Histogram, before: Histogram): Histogram {
  return {
    count: after.count - before.count,
    sumSeconds: after.sumSeconds - before.sumSeconds,
    buckets: after.buckets.map((b) => ({ le: b.le, count: b.count - (before.buckets.find((x) => x.le === b.le)?.count ?? 0) })),
  };
}

/** The bucket bound that percentile `p` falls under, in ms (a histogram knows no more than that). */
export function bucketBoundMs(h: Histogram, p: number): number {
  const rank = Math.ceil((p / 100) * h.count);
  return (h.buckets.find((b) => b.count >= rank)?.le ?? Number.NaN) * 1000;
}

/** One scrape of the scaler's metrics port, bounded by 5 s. */
export async function scrape(metricsPort: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`scaler /metrics answered ${res.status}`);
  return res.text();
}
