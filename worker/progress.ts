/**
 * Progress of a long request. Every `intervalMs` (10 s) between batches: a log line with the rows
 * done, rows per second and, when the dataset's size is known, the percentage and the time left;
 * and `rows` and `rows_per_second` as MLflow metric steps, so the MLflow UI plots a long run while
 * it runs and `kmj submit --wait` can show it. A request that takes less than one interval
 * reports nothing here.
 */
import type { Logger } from '../common/log.ts';
import type { Metric } from '../mlflow/tracking.ts';

export interface ProgressOptions {
  readonly log: Logger;
  readonly intervalMs: number;
  /** Sends the metric steps; a failure is logged, and the run goes on. */
  readonly report: (metrics: readonly Metric[]) => Promise<void>;
  /** The clock (performance.now by default). */
  readonly now?: () => number;
}

export class Progress {
  readonly #options: ProgressOptions;
  readonly #now: () => number;
  readonly #started: number;
  #last: number;
  #step = 0;
  #sending: Promise<void> | undefined;

  constructor(options: ProgressOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => performance.now());
    this.#started = this.#now();
    this.#last = this.#started;
  }

  /** The metric steps sent so far; the final figures come after them. */
  get steps(): number {
    return this.#step;
  }

  /** After each batch: `rows` done, and how far the bytes are read. Never throws, never waits. */
  batch(rows: number, read: { readonly bytes: number; readonly totalBytes: number | undefined }): void {
    const now = this.#now();
    if (now - this.#last < this.#options.intervalMs) return;
    this.#last = now;
    const seconds = (now - this.#started) / 1000;
    const rowsPerSecond = seconds > 0 ? rows / seconds : 0;
    const fraction = read.totalBytes !== undefined && read.totalBytes > 0 ? Math.min(1, read.bytes / read.totalBytes) : undefined;
    const eta =
      fraction !== undefined && fraction > 0 && fraction < 1
        ? { percent: Math.floor(fraction * 100), etaSeconds: Math.round((seconds * (1 - fraction)) / fraction) }
        : {};
    this.#options.log.info({ rows, rowsPerSecond: Math.round(rowsPerSecond), ...eta }, 'progress');
    // One send at a time: a slow MLflow skips steps instead of piling them up.
    if (this.#sending) return;
    const step = ++this.#step;
    const timestamp = Date.now();
    this.#sending = this.#options
      .report([
        { key: 'rows', value: rows, timestamp, step },
        { key: 'rows_per_second', value: rowsPerSecond, timestamp, step },
      ])
      .catch((err: unknown) => this.#options.log.warn({ err, step }, 'progress metrics not recorded'))
      .finally(() => {
        this.#sending = undefined;
      });
  }

  /** Waits for a send still under way (before the final figures go out). */
  async settle(): Promise<void> {
    await this.#sending;
  }
}
