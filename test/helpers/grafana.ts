/**
 * How Grafana turns a panel's query into the PromQL it sends, for the dashboard's tests: the
 * dashboard's variables, and Grafana's own interval variables for a Prometheus data source:
 *
 * - $__interval: the time range over the panel's data points, rounded as Grafana rounds it
 *   (its roundInterval table), and never below the data source's scrape interval;
 * - $__rate_interval: max($__interval + scrape interval, 4 × scrape interval);
 * - $__range: the time range in whole seconds ("3600s").
 */

/** Grafana's roundInterval, in milliseconds: the nearest "nice" interval below each bound. */
const ROUND: ReadonlyArray<readonly [number, number]> = [
  [15, 10],
  [35, 20],
  [75, 50],
  [150, 100],
  [350, 200],
  [750, 500],
  [1500, 1000],
  [3500, 2000],
  [7500, 5000],
  [12_500, 10_000],
  [17_500, 15_000],
  [25_000, 20_000],
  [45_000, 30_000],
  [90_000, 60_000],
  [210_000, 120_000],
  [450_000, 300_000],
  [750_000, 600_000],
  [1_050_000, 900_000],
  [1_500_000, 1_200_000],
  [2_700_000, 1_800_000],
  [5_400_000, 3_600_000],
  [9_000_000, 7_200_000],
  [16_200_000, 10_800_000],
  [32_400_000, 21_600_000],
  [86_400_000, 43_200_000],
];

export function roundInterval(ms: number): number {
  for (const [below, value] of ROUND) if (ms < below) return value;
  return 86_400_000;
}

export interface GrafanaRange {
  /** Seconds since the epoch. */
  readonly from: number;
  readonly to: number;
  /** The Prometheus data source's scrape interval (Grafana's default: 15 s). */
  readonly scrapeIntervalSeconds?: number;
  /** The panel's data points (Grafana: about the panel's width in pixels). */
  readonly maxDataPoints?: number;
}

/** $__interval in seconds, as Grafana computes it for this range. */
export function intervalSeconds(r: GrafanaRange): number {
  const scrape = r.scrapeIntervalSeconds ?? 15;
  const raw = roundInterval(((r.to - r.from) * 1000) / (r.maxDataPoints ?? 1000)) / 1000;
  return Math.max(raw, scrape);
}

/** $__rate_interval in seconds. */
export function rateIntervalSeconds(r: GrafanaRange): number {
  const scrape = r.scrapeIntervalSeconds ?? 15;
  return Math.max(intervalSeconds(r) + scrape, 4 * scrape);
}

/** The PromQL Grafana sends for `expr` over `range`, with the dashboard's variables set to `vars`. */
export function grafanaQuery(expr: string, range: GrafanaRange, vars: Readonly<Record<string, string>>): string {
  let out = expr
    .replaceAll('$__rate_interval', `${rateIntervalSeconds(range)}s`)
    .replaceAll('$__interval', `${intervalSeconds(range)}s`)
    .replaceAll('$__range', `${Math.round(range.to - range.from)}s`);
  // Longest names first, so $queue does not eat the start of a longer one.
  for (const name of Object.keys(vars).sort((a, b) => b.length - a.length))
    out = out.replaceAll(`$${name}`, vars[name] ?? '').replaceAll(`\${${name}}`, vars[name] ?? '');
  const left = /\$\{?[a-zA-Z_]\w*/.exec(out);
  if (left && !/^\$\d/.test(left[0])) throw new Error(`variable ${left[0]} is not set in ${expr}`);
  return out;
}
