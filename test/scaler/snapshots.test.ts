// The snapshot cache with fake backlog targets (our own interface), to pin its timing rules. Time
// is vitest's fake clock (timers and performance.now): each test moves it, none sleeps.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { abortReason } from '../../common/abort.ts';
import { createLogger } from '../../common/log.ts';
import { BacklogNotFoundError, BacklogUnavailableError } from '../../common/errors.ts';
import { ScalerMetrics } from '../../scaler/metrics.ts';
import { SnapshotStore, type SnapshotEvent, type SnapshotOptions } from '../../scaler/snapshots.ts';
import type { BacklogReading, BacklogTarget } from '../../scaler/sources/source.ts';

const silent = createLogger({ level: 'silent', name: 'test' });
const stores: SnapshotStore[] = [];

function store(overrides: Partial<SnapshotOptions> = {}, observer?: ScalerMetrics): SnapshotStore {
  const s = new SnapshotStore(
    { refreshIntervalMs: 100, maxSnapshotAgeMs: 600, readTimeoutMs: 300, firstReadWaitMs: 500, idleTargetTtlMs: 60_000, ...overrides },
    silent,
    observer,
  );
  s.start();
  stores.push(s);
  return s;
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'] });
});

afterEach(async () => {
  // A read still in flight (a fake delay) must be let finish for stop() to return.
  await settled(Promise.all(stores.splice(0).map((s) => s.stop())));
  vi.useRealTimers();
});

/** Moves the fake clock on. */
const sleep = (ms: number): Promise<void> => vi.advanceTimersByTimeAsync(ms).then(() => undefined);

/** Moves the fake clock in small steps until `p` settles, and returns (or throws) what it settled to. */
async function settled<T>(p: Promise<T>, stepMs = 5): Promise<T> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  while (!done) await vi.advanceTimersByTimeAsync(stepMs);
  return p;
}

/** A target whose reads are scripted by the test. */
class FakeTarget implements BacklogTarget {
  readonly key: string;
  readonly labels = { source: 'fake', connection: 'default', scope: '/', name: 'q', mode: 'backlog' };
  readonly description = 'fake queue "q"';
  readonly metricStem = 'fake-q';
  reads = 0;
  value = 0;
  delayMs = 0;
  fail: Error | undefined;
  hang = false;

  constructor(key: string) {
    this.key = key;
  }

  async read(signal: AbortSignal): Promise<BacklogReading> {
    this.reads++;
    if (this.hang) {
      await new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(abortReason(signal)), { once: true }));
    }
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.fail) throw this.fail;
    return { value: this.value, details: { ready: this.value } };
  }
}

describe('SnapshotStore', () => {
  it('shares one broker read among concurrent first requests', async () => {
    const s = store();
    const t = new FakeTarget('coalesce');
    t.value = 4;
    t.delayMs = 50;
    const all = await settled(Promise.all(Array.from({ length: 50 }, () => s.read(t))));
    expect(all.map((r) => r.value)).toEqual(Array(50).fill(4));
    expect(t.reads).toBe(1);
  });

  it('answers later requests from the cache without reading', async () => {
    const s = store({ refreshIntervalMs: 10_000, maxSnapshotAgeMs: 20_000, readTimeoutMs: 1000 });
    const t = new FakeTarget('cached');
    t.value = 2;
    await s.read(t);
    t.value = 9;
    for (let i = 0; i < 100; i++) expect((await s.read(t)).value).toBe(2);
    expect(t.reads).toBe(1);
  });

  it('refreshes in the background every refresh interval', async () => {
    const s = store({ refreshIntervalMs: 100 });
    const t = new FakeTarget('refresh');
    await s.read(t);
    t.value = 5;
    await sleep(450);
    expect((await s.read(t)).value).toBe(5);
    expect(t.reads).toBeGreaterThanOrEqual(3);
    expect(t.reads).toBeLessThanOrEqual(9);
  });

  it('refuses a reading older than the bound with UNAVAILABLE, never the stale value', async () => {
    const s = store({ refreshIntervalMs: 100, maxSnapshotAgeMs: 600, readTimeoutMs: 500 });
    const t = new FakeTarget('stale');
    t.value = 3;
    expect((await s.read(t)).value).toBe(3);
    // The broker goes slow: every read now hangs until its timeout.
    t.hang = true;
    await sleep(200);
    // Within the bound the last reading is still served...
    expect((await s.read(t)).value).toBe(3);
    // ...and once the read times out, the error is what the RPCs get.
    await sleep(700);
    await expect(s.read(t)).rejects.toThrow(BacklogUnavailableError);
    await expect(s.read(t)).rejects.toThrow(/^reading fake queue "q" took longer than 500 ms$/);
  });

  it('reports the age when reads succeed but too slowly for the bound', async () => {
    const s = store({ refreshIntervalMs: 100, maxSnapshotAgeMs: 500, readTimeoutMs: 2000 });
    const t = new FakeTarget('slow');
    await s.read(t);
    t.delayMs = 900;
    await sleep(700);
    await expect(s.read(t)).rejects.toThrow(
      /^the last reading of fake queue "q" is \d+ ms old \(limit 500 ms\): the broker is slow or unreachable$/,
    );
    await sleep(500);
    expect((await s.read(t)).value).toBe(0);
  });

  it('answers the latest error after a success, with its own class', async () => {
    const s = store();
    const t = new FakeTarget('error');
    t.value = 7;
    await s.read(t);
    t.fail = new BacklogNotFoundError('queue "q" does not exist in vhost "/"');
    await sleep(300);
    await expect(s.read(t)).rejects.toThrow(BacklogNotFoundError);
    t.fail = undefined;
    t.value = 8;
    await sleep(300);
    expect((await s.read(t)).value).toBe(8);
  });

  it('wraps unknown read errors as UNAVAILABLE', async () => {
    const s = store();
    const t = new FakeTarget('unknown');
    t.fail = new Error('socket hang up at amqp://user:pw@host');
    await expect(settled(s.read(t))).rejects.toThrow('reading fake queue "q" failed: socket hang up at amqp://***@host');
  });

  it('waits for a first read only up to firstReadWaitMs', async () => {
    const s = store({ firstReadWaitMs: 100, readTimeoutMs: 550, maxSnapshotAgeMs: 600 });
    const t = new FakeTarget('first');
    t.delayMs = 400;
    const started = performance.now();
    await expect(settled(s.read(t))).rejects.toThrow('no reading of fake queue "q" yet: the first read is still running');
    expect(performance.now() - started).toBeLessThan(300);
    await sleep(400);
    expect((await s.read(t)).value).toBe(0);
  });

  it('drops a target nobody asked about for the idle ttl', async () => {
    const s = store({ idleTargetTtlMs: 300 });
    const t = new FakeTarget('idle');
    await s.read(t);
    expect(s.views().map((v) => v.labels.name)).toEqual(['q']);
    await sleep(700);
    expect(s.views()).toEqual([]);
    const readsAfterDrop = t.reads;
    await sleep(300);
    expect(t.reads).toBe(readsAfterDrop);
  });

  it('keeps a target with a subscriber and tells it every read', async () => {
    const s = store({ idleTargetTtlMs: 200 });
    const t = new FakeTarget('sub');
    const events: SnapshotEvent[] = [];
    const stop = s.subscribe(t, (e) => events.push(e));
    await sleep(600);
    expect(s.views()).toHaveLength(1);
    expect(events.length).toBeGreaterThanOrEqual(3);
    expect(events.every((e) => 'reading' in e && e.reading.value === 0)).toBe(true);
    stop();
  });

  it('reads a target once per KEDA poll, just before it, and at least every refreshIntervalMs', async () => {
    const s = store({ refreshIntervalMs: 1000, minRefreshIntervalMs: 100, maxSnapshotAgeMs: 5000, readTimeoutMs: 500 });
    const everySecond = new FakeTarget('every-second');
    const everyFifth = new FakeTarget('every-fifth');
    const fast = new FakeTarget('fast-keda');
    (everySecond as { labels: FakeTarget['labels'] }).labels = { ...everySecond.labels, name: 'every-second' };
    const ageOf = (t: FakeTarget): number => s.views().find((v) => v.labels.name === t.labels.name)?.ageMs ?? Number.NaN;
    /** The reading's age each poll of `everySecond` found, once the interval is learnt. */
    const agesAtPoll: number[] = [];
    /** One KEDA poll: GetMetricSpec (want), GetMetrics and IsActive (reads), a few ms apart. */
    const poll = async (t: FakeTarget): Promise<void> => {
      if (t === everySecond) agesAtPoll.push(ageOf(t));
      s.want(t);
      await settled(s.read(t));
      await s.read(t);
    };
    // Eight seconds in steps of 50 ms: KEDA polls one target every second, one every 5 s, one
    // every 300 ms.
    const step = async (tick: number): Promise<void> => {
      if (tick % 20 === 0) await poll(everySecond);
      if (tick % 100 === 0) await poll(everyFifth);
      if (tick % 6 === 0) await poll(fast);
      await sleep(50);
    };
    for (let tick = 0; tick < 120; tick++) await step(tick);
    const readsBefore = [everySecond.reads, everyFifth.reads, fast.reads];
    agesAtPoll.length = 0;
    for (let tick = 120; tick < 160; tick++) await step(tick);
    const reads = [everySecond.reads - (readsBefore[0] ?? 0), everyFifth.reads - (readsBefore[1] ?? 0), fast.reads - (readsBefore[2] ?? 0)];
    // Over 2 s (to within one read, the loop's tick): polled every second, one read a poll.
    expect(Math.abs((reads[0] ?? 0) - 2), `every second: ${reads[0]} reads`).toBeLessThanOrEqual(1);
    // ...each found by its poll at most the lead and a tick old (a read every 250 ms, before,
    // left readings up to 250 ms old).
    expect(agesAtPoll).toHaveLength(2);
    for (const age of agesAtPoll) expect(age).toBeLessThanOrEqual(150);
    // Polled every 5 s: the floor, a read every second.
    expect(Math.abs((reads[1] ?? 0) - 2), `every 5 s: ${reads[1]} reads`).toBeLessThanOrEqual(1);
    // Polled every 300 ms: one read a poll, 2000 / 300 of them.
    expect(Math.abs((reads[2] ?? 0) - 7), `every 300 ms: ${reads[2]} reads`).toBeLessThanOrEqual(1);
  });

  it('two stores, each with its own metrics: each exports its own targets only', async () => {
    // Each store's metrics read that store's views at scrape time, after both exist.
    const metricsOfFirst = new ScalerMetrics(() => first.views());
    const metricsOfSecond = new ScalerMetrics(() => second.views());
    const first: SnapshotStore = store({}, metricsOfFirst);
    const second: SnapshotStore = store({}, metricsOfSecond);
    const a = new FakeTarget('a');
    a.value = 3;
    const b = new FakeTarget('b');
    (b as { labels: FakeTarget['labels'] }).labels = { ...b.labels, name: 'other' };
    b.value = 5;
    await settled(first.read(a));
    await settled(second.read(b));
    const backlog = async (m: ScalerMetrics) =>
      (await m.registry.getSingleMetric('kmj_scaler_backlog')?.get())?.values.map((v) => [v.labels['name'], v.value]);
    expect(await backlog(metricsOfFirst)).toEqual([['q', 3]]);
    expect(await backlog(metricsOfSecond)).toEqual([['other', 5]]);
    expect((await metricsOfFirst.registry.getSingleMetric('kmj_scaler_targets')?.get())?.values.map((v) => v.value)).toEqual([1]);
  });
});
