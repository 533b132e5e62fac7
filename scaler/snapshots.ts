/**
 * The scaler's cache of backlog readings. RPC handlers answer from here; a background loop keeps
 * it fresh, so no RPC waits on a broker in steady state.
 *
 * - A target is registered the first time an RPC names it, and dropped after `idleTargetTtlMs`
 *   without any RPC or open stream asking for it.
 * - Each registered target is read once per KEDA poll, just before it: KEDA's polling interval
 *   and phase are learned from the polls that ask for it (KEDA's GetMetricSpec, GetMetrics and
 *   IsActive come together, less than 100 ms apart), and the read starts a lead (READ_LEAD_MS
 *   plus twice the target's usual read time) before the next poll is due, so the poll finds a
 *   reading about that old. Besides, a target is read at least every `refreshIntervalMs` (for
 *   slow polls, streams and /metrics) and never more often than every `minRefreshIntervalMs`. A
 *   ScaledJob polled every second costs one read a second, with a reading ~0.1 s old at each
 *   poll (a read every quarter interval, as before, cost four and gave readings up to 0.25 s
 *   old); one polled every 30 s costs one read a second. At most one read per target at a
 *   time: concurrent wants share it.
 * - An answer is given only from a successful reading that is at most `maxSnapshotAgeMs` old and
 *   not followed by a failed read. Otherwise the caller gets the read's error (NOT_FOUND,
 *   UNAVAILABLE) or an UNAVAILABLE that says how old the reading is. Never a made-up 0: 0 tells
 *   KEDA to scale to zero.
 * - The one wait: the very first RPC for a new target waits up to `firstReadWaitMs` for the first
 *   read, so a fresh ScaledJob is not refused on its first poll. Later RPCs never wait.
 */
import type { Logger } from '../common/log.ts';
import { BacklogNotFoundError, BacklogUnavailableError, messageOf } from '../common/errors.ts';
import type { BacklogReading, BacklogTarget } from './sources/source.ts';

/**
 * How long before KEDA's next poll of a target its read starts (plus twice its usual read time):
 * two ticks of the loop, and room for the poll to come a little early.
 */
const READ_LEAD_MS = 100;

export interface SnapshotOptions {
  /** Each target is read at least this often. Default 1000 ms (KEDA polls every 30 s by default). */
  readonly refreshIntervalMs: number;
  /** ...and at most this often, however often KEDA polls it. Default 200 ms (at most refreshIntervalMs). */
  readonly minRefreshIntervalMs?: number;
  /** Oldest reading still served. Default 5000 ms. */
  readonly maxSnapshotAgeMs: number;
  /** Bound on one broker read. Default 3000 ms, below maxSnapshotAgeMs. */
  readonly readTimeoutMs: number;
  /** How long the first RPC of a new target waits for its first read. Default 2000 ms. */
  readonly firstReadWaitMs: number;
  /** A target nobody asked about for this long is dropped. Default 10 min. */
  readonly idleTargetTtlMs: number;
}

/** A change of state that stream listeners receive. */
export type SnapshotEvent = { readonly reading: BacklogReading } | { readonly error: Error };

type Listener = (event: SnapshotEvent) => void;

interface Entry {
  readonly target: BacklogTarget;
  reading: BacklogReading | undefined;
  readAt: number;
  error: Error | undefined;
  inFlight: Promise<void> | undefined;
  lastStartAt: number;
  lastWantedAt: number;
  /** When the latest KEDA poll of this target began, and the smoothed time between polls. */
  pollAt: number;
  pollPeriodMs: number | undefined;
  /** The smoothed time a read of this target takes, once one has ended. */
  readMs: number | undefined;
  readonly listeners: Set<Listener>;
  /** The ScaledJobs (or ScaledObjects) whose polls name this target, by "namespace/name". */
  readonly owners: Map<string, OwnerSeen>;
  /** When a read last found nothing waiting (performance.now()); undefined before that. */
  lastEmptyAt: number | undefined;
}

/** Who polls a target, as KEDA's ScaledObjectRef names it. */
export interface TargetOwner {
  readonly name: string;
  readonly namespace: string;
}

interface OwnerSeen {
  readonly owner: TargetOwner;
  polls: number;
  lastAt: number;
}

/** An owner is shown from its second poll (a one-off call is not a ScaledJob) ... */
const OWNER_MIN_POLLS = 2;
/** ... until it misses three of its polls, and at least this long. */
const OWNER_MIN_KEEP_MS = 60_000;

/** RPCs for one target closer together than this belong to one KEDA poll. */
const SAME_POLL_MS = 100;

/**
 * What the store tells about its work, for metrics: nothing of the store's own state leaks, and
 * a second store has its own observer (scaler/metrics.ts implements this).
 */
export interface SnapshotObserver {
  /** How many targets the store keeps fresh, after each change. */
  targets(count: number): void;
  read(labels: BacklogTarget['labels'], seconds: number): void;
  readFailed(labels: BacklogTarget['labels'], error: Error, seconds: number): void;
}

const NO_OBSERVER: SnapshotObserver = { targets: () => undefined, read: () => undefined, readFailed: () => undefined };

/** What the debug and status views show of one target. */
export interface SnapshotView {
  readonly labels: BacklogTarget['labels'];
  readonly description: string;
  readonly value: number | undefined;
  readonly details: Readonly<Record<string, number>> | undefined;
  readonly ageMs: number | undefined;
  readonly error: string | undefined;
  /** The ScaledJobs polling it (see OWNER_MIN_POLLS). */
  readonly owners: readonly TargetOwner[];
  /**
   * An upper bound of how long the oldest waiting message has waited: the time since a read last
   * found nothing waiting (every message waiting now came after that read). 0 when nothing waits;
   * undefined while no read has found the queue empty yet, or the latest read failed.
   */
  readonly oldestWaitingMaxMs: number | undefined;
}

/** What a reading says is waiting: ready messages (RabbitMQ), the lag (Kafka), else its value. */
function waitingOf(reading: BacklogReading): number {
  return reading.details['ready'] ?? reading.details['lag'] ?? reading.value;
}

export class SnapshotStore {
  readonly #options: SnapshotOptions;
  readonly #observer: SnapshotObserver;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  /** Entries per (source, scope, name), for `serves`. */
  readonly #served = new Map<string, number>();
  readonly #stopping = new AbortController();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: SnapshotOptions, log: Logger, observer: SnapshotObserver = NO_OBSERVER) {
    this.#options = options;
    this.#observer = observer;
    this.#log = log;
  }

  start(): void {
    if (this.#timer) return;
    const tickMs = Math.max(25, Math.min(250, Math.floor(this.#minRefreshMs() / 4)));
    this.#timer = setInterval(() => this.#tick(), tickMs);
  }

  #minRefreshMs(): number {
    return Math.min(this.#options.minRefreshIntervalMs ?? 200, this.#options.refreshIntervalMs);
  }

  /**
   * Whether the target is due for a read at `now`: its floor (`refreshIntervalMs`) has passed, or
   * the next KEDA poll is less than a lead away and no read has started since the lead began.
   */
  #due(e: Entry, now: number): boolean {
    const since = now - e.lastStartAt;
    if (since < this.#minRefreshMs()) return false;
    if (since >= this.#options.refreshIntervalMs) return true;
    if (e.pollPeriodMs === undefined) return false;
    const lead = Math.min(e.pollPeriodMs / 2, READ_LEAD_MS + 2 * (e.readMs ?? 0));
    const leadStart = e.pollAt + e.pollPeriodMs - lead;
    return now >= leadStart && e.lastStartAt < leadStart;
  }

  /** Stops the loop and aborts reads in flight; waits for them to settle. */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#stopping.abort(new BacklogUnavailableError('scaler is shutting down'));
    await Promise.allSettled([...this.#entries.values()].flatMap((e) => (e.inFlight ? [e.inFlight] : [])));
  }

  /** Registers interest in a target without waiting (GetMetricSpec does this). */
  want(target: BacklogTarget, owner?: TargetOwner): void {
    this.#entry(target, owner);
  }

  /** True when a target with this source, scope and name is kept fresh (the worker reports' check). */
  serves(source: string, scope: string, name: string): boolean {
    return this.#served.has(servedKey(source, scope, name));
  }

  /**
   * The current reading of a target, or the typed error explaining why there is none. Waits only
   * when the target is new (see the module comment).
   */
  async read(target: BacklogTarget, owner?: TargetOwner): Promise<BacklogReading> {
    const e = this.#entry(target, owner);
    if (e.reading === undefined && e.error === undefined) await this.#waitFirst(e);
    return this.#answer(e, performance.now());
  }

  /** Subscribes to every read of a target. The listener first gets the current state, if any. */
  subscribe(target: BacklogTarget, listener: Listener): () => void {
    const e = this.#entry(target);
    e.listeners.add(listener);
    if (e.reading !== undefined || e.error !== undefined) {
      listener(this.#event(e, performance.now()));
    }
    return () => {
      e.listeners.delete(listener);
      e.lastWantedAt = performance.now();
    };
  }

  views(): SnapshotView[] {
    const now = performance.now();
    return [...this.#entries.values()].map((e) => ({
      labels: e.target.labels,
      description: e.target.description,
      value: e.reading?.value,
      details: e.reading?.details,
      ageMs: e.reading ? Math.round(now - e.readAt) : undefined,
      error: e.error?.message,
      owners: this.#ownersOf(e, now),
      oldestWaitingMaxMs: oldestWaitingMax(e, now),
    }));
  }

  #ownersOf(e: Entry, now: number): TargetOwner[] {
    const keepMs = Math.max(OWNER_MIN_KEEP_MS, 3 * (e.pollPeriodMs ?? 0));
    const out: TargetOwner[] = [];
    for (const [key, seen] of e.owners) {
      if (now - seen.lastAt > keepMs) e.owners.delete(key);
      else if (seen.polls >= OWNER_MIN_POLLS) out.push(seen.owner);
    }
    return out;
  }

  #entry(target: BacklogTarget, owner?: TargetOwner): Entry {
    const now = performance.now();
    let e = this.#entries.get(target.key);
    if (!e) {
      e = {
        target,
        reading: undefined,
        readAt: 0,
        error: undefined,
        inFlight: undefined,
        lastStartAt: 0,
        lastWantedAt: now,
        pollAt: now,
        pollPeriodMs: undefined,
        readMs: undefined,
        listeners: new Set(),
        owners: new Map(),
        lastEmptyAt: undefined,
      };
      this.#entries.set(target.key, e);
      const served = servedKey(target.labels.source, target.labels.scope, target.labels.name);
      this.#served.set(served, (this.#served.get(served) ?? 0) + 1);
      this.#observer.targets(this.#entries.size);
      this.#refresh(e);
    } else if (now - e.lastWantedAt > SAME_POLL_MS) {
      // A new poll: learn KEDA's polling interval for this target.
      const period = now - e.pollAt;
      e.pollPeriodMs = e.pollPeriodMs === undefined ? period : (e.pollPeriodMs + period) / 2;
      e.pollAt = now;
    }
    if (owner !== undefined && owner.name !== '') {
      const key = `${owner.namespace}/${owner.name}`;
      const seen = e.owners.get(key);
      if (!seen) e.owners.set(key, { owner: { name: owner.name, namespace: owner.namespace }, polls: 1, lastAt: now });
      else {
        // RPCs of one poll come together: count polls, not calls.
        if (now - seen.lastAt > SAME_POLL_MS) seen.polls++;
        seen.lastAt = now;
      }
    }
    e.lastWantedAt = now;
    return e;
  }

  async #waitFirst(e: Entry): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.#options.firstReadWaitMs);
    });
    try {
      // Before the first reading or error, the first read is in flight (its promise never rejects).
      await Promise.race([e.inFlight, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  #answer(e: Entry, now: number): BacklogReading {
    if (e.error) throw e.error;
    if (!e.reading) {
      throw new BacklogUnavailableError(`no reading of ${e.target.description} yet: the first read is still running`);
    }
    const ageMs = now - e.readAt;
    if (ageMs > this.#options.maxSnapshotAgeMs) {
      throw new BacklogUnavailableError(
        `the last reading of ${e.target.description} is ${Math.round(ageMs)} ms old (limit ${this.#options.maxSnapshotAgeMs} ms): the broker is slow or unreachable`,
      );
    }
    return e.reading;
  }

  #event(e: Entry, now: number): SnapshotEvent {
    try {
      return { reading: this.#answer(e, now) };
    } catch (err) {
      return { error: err instanceof Error ? err : new Error(String(err)) };
    }
  }

  #tick(): void {
    const now = performance.now();
    for (const [key, e] of this.#entries) {
      if (e.listeners.size === 0 && now - e.lastWantedAt > this.#options.idleTargetTtlMs) {
        if (!e.inFlight) {
          this.#entries.delete(key);
          const served = servedKey(e.target.labels.source, e.target.labels.scope, e.target.labels.name);
          const left = (this.#served.get(served) ?? 1) - 1;
          if (left > 0) this.#served.set(served, left);
          else this.#served.delete(served);
          this.#observer.targets(this.#entries.size);
          this.#log.info({ target: e.target.labels }, 'target dropped after idle ttl');
        }
        continue;
      }
      if (!e.inFlight && this.#due(e, now)) this.#refresh(e);
      else if (e.listeners.size > 0 && e.reading && !e.error && now - e.readAt > this.#options.maxSnapshotAgeMs) {
        // A read is stuck past the age bound: streams must hear that the value is no longer known.
        this.#notify(e, now);
      }
    }
  }

  #refresh(e: Entry): void {
    if (e.inFlight || this.#stopping.signal.aborted) return;
    const started = performance.now();
    e.lastStartAt = started;
    const controller = new AbortController();
    const onStop = (): void => controller.abort(this.#stopping.signal.reason);
    this.#stopping.signal.addEventListener('abort', onStop, { once: true });
    const timer = setTimeout(
      () =>
        controller.abort(new BacklogUnavailableError(`reading ${e.target.description} took longer than ${this.#options.readTimeoutMs} ms`)),
      this.#options.readTimeoutMs,
    );
    e.inFlight = e.target
      .read(controller.signal)
      .then(
        (reading) => {
          const now = performance.now();
          e.reading = reading;
          e.readAt = now;
          e.readMs = e.readMs === undefined ? now - started : 0.8 * e.readMs + 0.2 * (now - started);
          if (waitingOf(reading) <= 0) e.lastEmptyAt = now;
          if (e.error) this.#log.info({ target: e.target.labels }, 'target readable again');
          e.error = undefined;
          this.#observer.read(e.target.labels, (now - started) / 1000);
        },
        (err: unknown) => {
          const error = normalize(err, e.target);
          const wasError = e.error?.message;
          e.error = error;
          this.#observer.readFailed(e.target.labels, error, (performance.now() - started) / 1000);
          if (wasError !== error.message) this.#log.warn({ target: e.target.labels, err: error }, 'target read failed');
        },
      )
      .finally(() => {
        clearTimeout(timer);
        this.#stopping.signal.removeEventListener('abort', onStop);
        e.inFlight = undefined;
        this.#notify(e, performance.now());
      });
  }

  #notify(e: Entry, now: number): void {
    if (e.listeners.size === 0) return;
    const event = this.#event(e, now);
    for (const listener of e.listeners) {
      try {
        listener(event);
      } catch (err) {
        this.#log.error({ err }, 'snapshot listener failed');
      }
    }
  }
}

function servedKey(source: string, scope: string, name: string): string {
  return `${source}\u0000${scope}\u0000${name}`;
}

function oldestWaitingMax(e: Entry, now: number): number | undefined {
  if (!e.reading || e.error) return undefined;
  if (waitingOf(e.reading) <= 0) return 0;
  return e.lastEmptyAt === undefined ? undefined : Math.round(now - e.lastEmptyAt);
}

function normalize(err: unknown, target: BacklogTarget): Error {
  if (err instanceof BacklogNotFoundError || err instanceof BacklogUnavailableError) return err;
  return new BacklogUnavailableError(`reading ${target.description} failed: ${messageOf(err)}`, { cause: err });
}
