/**
 * The run store of one delivery: MLflow's (run-store.ts), falling back to the spool (spool.ts)
 * when MLflow is out of reach and KMJ_SPOOL_DIR is set, behind the same RunStore interface. Once
 * fallen back it stays with the spool for the rest of the delivery; `kmj replay` later finds the
 * MLflow run by its request id and finishes it.
 *
 * Where MLflow can drop away, and what happens then:
 * - `begin`: the run is found or made in the spool instead;
 * - `complete`: the results are in hand, so they go to the spool as they are (begin there, then
 *   complete), with no second inference;
 * - anywhere else in the attempt (a progress step, the dataset read from MLflow): the pipeline
 *   asks `fallBack(err)` and, when it fell back, runs the attempt again on the spool.
 *
 * Each attempt gets a store of its own (`nextAttempt`): a store keeps per-attempt state (the
 * run, the attempt number, the start's log call in flight).
 */
import type { Logger } from '../common/log.ts';
import { MlflowHttpError } from '../mlflow/http.ts';
import type { Metric } from '../mlflow/tracking.ts';
import type { RunResults, RunStore } from './run-store.ts';

export interface FallbackStores {
  /** A new MLflow store; undefined when MLFLOW_TRACKING_URI is unset (then only the spool). */
  readonly mlflow: (() => RunStore) | undefined;
  /** The spool's directory and a new spool store; undefined when KMJ_SPOOL_DIR is unset. */
  readonly spool: { readonly dir: string; readonly open: () => RunStore } | undefined;
  readonly log: Logger;
}

/**
 * True when MLflow itself is out of reach (after the HTTP client's retries), not the request:
 * the error, or what it wraps (a dataset read from MLflow), is a retryable MLflow error.
 */
export function mlflowUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof MlflowHttpError) return e.retryable;
  }
  return false;
}

export class FallbackRunStore implements RunStore {
  readonly #stores: FallbackStores;
  #current: RunStore;
  #offline: boolean;

  constructor(stores: FallbackStores) {
    const first = stores.mlflow ?? stores.spool?.open;
    if (!first) throw new Error('a run store needs MLflow or a spool directory');
    this.#stores = stores;
    this.#offline = stores.mlflow === undefined;
    this.#current = first();
  }

  get kind(): RunStore['kind'] {
    return this.#current.kind;
  }

  get runId(): string | undefined {
    return this.#current.runId;
  }

  get attempt(): number {
    return this.#current.attempt;
  }

  /** True when the run goes to the spool: MLflow is unset, or it dropped away in this delivery. */
  get offline(): boolean {
    return this.#offline;
  }

  /** Starts the next attempt on a store of its own, in the spool once fallen back. */
  nextAttempt(): void {
    const open = this.#offline ? this.#stores.spool?.open : this.#stores.mlflow;
    if (open) this.#current = open();
  }

  /**
   * Falls back to the spool when `err` says MLflow is out of reach, the spool is configured and
   * the work was not cancelled; true when it did (false when already there).
   */
  fallBack(err: unknown, signal: AbortSignal): boolean {
    const spool = this.#stores.spool;
    if (this.#offline || !spool || signal.aborted || !mlflowUnreachable(err)) return false;
    this.#stores.log.warn({ err, spool: spool.dir }, 'MLflow is out of reach; recording the run in the spool');
    this.#offline = true;
    this.#current = spool.open();
    return true;
  }

  async begin(signal: AbortSignal): Promise<'finished' | 'started'> {
    try {
      return await this.#current.begin(signal);
    } catch (err) {
      if (!this.fallBack(err, signal)) throw err;
      return this.#current.begin(signal);
    }
  }

  async complete(results: RunResults, signal: AbortSignal): Promise<void> {
    try {
      await this.#current.complete(results, signal);
    } catch (err) {
      if (!this.fallBack(err, signal)) throw err;
      await this.#current.begin(signal);
      await this.#current.complete(results, signal);
    }
  }

  progress(metrics: readonly Metric[], signal: AbortSignal): Promise<void> {
    return this.#current.progress(metrics, signal);
  }

  fail(status: 'FAILED' | 'KILLED', error: string, outcome: 'dead-lettered' | 'requeued', log: Logger, signal: AbortSignal): Promise<void> {
    return this.#current.fail(status, error, outcome, log, signal);
  }
}
