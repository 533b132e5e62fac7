// The run store that falls back from MLflow to the spool (worker/fallback-store.ts), with stores
// of our own standing in for both behind the RunStore interface: when it falls back, when it
// does not, and that the results of a run that finished while MLflow went away reach the spool
// as they are. The real MLflow and spool are in test/cli/replay.test.ts.
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../common/log.ts';
import { MlflowHttpError } from '../../mlflow/http.ts';
import type { Metric } from '../../mlflow/tracking.ts';
import { FallbackRunStore, mlflowUnreachable } from '../../worker/fallback-store.ts';
import type { RunResults, RunStore } from '../../worker/run-store.ts';

const log = createLogger({ level: 'silent', name: 'kmj-test' });
const signal = new AbortController().signal;

/** A store that records its calls and fails the ones it is told to. */
class RecordingStore implements RunStore {
  readonly calls: string[] = [];
  readonly failing = new Map<string, Error>();
  runId: string | undefined;
  readonly kind: 'mlflow' | 'spool';
  readonly attempt = 1;
  constructor(kind: 'mlflow' | 'spool') {
    this.kind = kind;
  }
  #call(name: string): Promise<void> {
    this.calls.push(name);
    const err = this.failing.get(name);
    return err ? Promise.reject(err) : Promise.resolve();
  }
  async begin(): Promise<'finished' | 'started'> {
    await this.#call('begin');
    this.runId = `${this.kind}-run`;
    return 'started';
  }
  complete(results: RunResults): Promise<void> {
    return this.#call(`complete ${results.metrics.length} metrics`);
  }
  progress(metrics: readonly Metric[]): Promise<void> {
    return this.#call(`progress ${metrics.length}`);
  }
  fail(status: 'FAILED' | 'KILLED'): Promise<void> {
    return this.#call(`fail ${status}`);
  }
}

const unreachable = (): MlflowHttpError => new MlflowHttpError('MLflow: connect ECONNREFUSED 127.0.0.1:5000', 0);
const refused = (): MlflowHttpError => new MlflowHttpError('MLflow: RESOURCE_DOES_NOT_EXIST', 404, 'RESOURCE_DOES_NOT_EXIST');
const results: RunResults = {
  metrics: [{ key: 'rows', value: 3, timestamp: 1, step: 0 }],
  tags: [],
  input: { name: 'd', digest: 'x', sourceType: 'local', source: '/d', schema: '{}', profile: '{}', context: 'inference' },
  artifact: { file: '/tmp/p.csv', path: 'predictions/p.csv', contentType: 'text/csv' },
  endTime: 2,
};

/** Both sides, every store each side opened kept in order; `setUp` readies each MLflow store. */
function stores(options: { spool?: boolean; mlflow?: boolean; setUp?: (s: RecordingStore) => void } = {}) {
  const opened = { mlflow: [] as RecordingStore[], spool: [] as RecordingStore[] };
  const open = (kind: 'mlflow' | 'spool') => (): RecordingStore => {
    const s = new RecordingStore(kind);
    if (kind === 'mlflow') options.setUp?.(s);
    opened[kind].push(s);
    return s;
  };
  const store = new FallbackRunStore({
    mlflow: options.mlflow === false ? undefined : open('mlflow'),
    spool: options.spool === false ? undefined : { dir: '/spool', open: open('spool') },
    log,
  });
  return { store, opened };
}

describe('mlflowUnreachable', () => {
  it('is true for a retryable MLflow error, also wrapped, and false otherwise', () => {
    expect(mlflowUnreachable(unreachable())).toBe(true);
    expect(mlflowUnreachable(new MlflowHttpError('busy', 503))).toBe(true);
    expect(mlflowUnreachable(new Error('dataset read failed', { cause: unreachable() }))).toBe(true);
    expect(mlflowUnreachable(refused())).toBe(false);
    expect(mlflowUnreachable(new Error('ECONNREFUSED'))).toBe(false);
  });
});

describe('FallbackRunStore', () => {
  it('records in MLflow while MLflow answers', async () => {
    const { store, opened } = stores();
    expect(await store.begin(signal)).toBe('started');
    await store.progress([], signal);
    await store.complete(results, signal);
    expect([store.kind, store.runId, store.offline]).toEqual(['mlflow', 'mlflow-run', false]);
    expect(opened.mlflow.map((s) => s.calls)).toEqual([['begin', 'progress 0', 'complete 1 metrics']]);
    expect(opened.spool).toEqual([]);
  });

  it('begins in the spool when MLflow is out of reach at the start', async () => {
    const { store, opened } = stores({ setUp: (s) => s.failing.set('begin', unreachable()) });
    expect(await store.begin(signal)).toBe('started');
    expect([store.kind, store.runId, store.offline]).toEqual(['spool', 'spool-run', true]);
    expect(opened.mlflow.map((m) => m.calls)).toEqual([['begin']]);
    expect(opened.spool.map((m) => m.calls)).toEqual([['begin']]);
  });

  it('sends finished results to the spool as they are when MLflow goes away at the end', async () => {
    const { store, opened } = stores({ setUp: (s) => s.failing.set('complete 1 metrics', unreachable()) });
    await store.begin(signal);
    await store.complete(results, signal);
    expect(store.kind).toBe('spool');
    expect(opened.mlflow.map((s) => s.calls)).toEqual([['begin', 'complete 1 metrics']]);
    expect(opened.spool.map((s) => s.calls)).toEqual([['begin', 'complete 1 metrics']]);
  });

  it('does not fall back for a refusal, for a cancelled attempt, or without a spool', async () => {
    const refusing = stores({ setUp: (s) => s.failing.set('begin', refused()) });
    await expect(refusing.store.begin(signal)).rejects.toThrow('RESOURCE_DOES_NOT_EXIST');
    expect(refusing.opened.spool).toEqual([]);

    const cancelled = stores({ setUp: (s) => s.failing.set('begin', unreachable()) });
    const abort = new AbortController();
    abort.abort(new Error('SIGTERM'));
    await expect(cancelled.store.begin(abort.signal)).rejects.toThrow('ECONNREFUSED');
    expect(cancelled.opened.spool).toEqual([]);

    const noSpool = stores({ spool: false, setUp: (s) => s.failing.set('begin', unreachable()) });
    await expect(noSpool.store.begin(signal)).rejects.toThrow('ECONNREFUSED');
    expect(noSpool.store.fallBack(unreachable(), signal)).toBe(false);
  });

  it('stays with the spool for the rest of the delivery: each later attempt opens a spool store', async () => {
    const { store, opened } = stores();
    await store.begin(signal);
    expect(store.fallBack(new Error('progress failed', { cause: unreachable() }), signal)).toBe(true);
    expect(store.fallBack(unreachable(), signal)).toBe(false);
    store.nextAttempt();
    await store.begin(signal);
    await store.fail('FAILED', 'x', 'requeued', log, signal);
    expect(opened.mlflow).toHaveLength(1);
    expect(opened.spool.map((s) => s.calls)).toEqual([[], ['begin', 'fail FAILED']]);
  });

  it('starts in the spool when MLflow is not configured, and needs one of the two', async () => {
    const { store, opened } = stores({ mlflow: false });
    expect(store.offline).toBe(true);
    await store.begin(signal);
    expect(opened.spool.map((s) => s.calls)).toEqual([['begin']]);
    expect(() => new FallbackRunStore({ mlflow: undefined, spool: undefined, log })).toThrow(
      'a run store needs MLflow or a spool directory',
    );
  });
});
