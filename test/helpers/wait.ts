/** The one way the suites wait for something to happen (STYLE.md 21), shared by every suite. */

export interface WaitOptions {
  /** How long to keep trying; 15 s by default, ample for what a local broker or MLflow does in a test. */
  readonly timeoutMs?: number;
  /** The pause between two tries; 200 ms by default, short next to a test and light on the services probed. */
  readonly stepMs?: number;
}

/**
 * Polls `probe` until `ok` holds and returns that value; after `timeoutMs` throws an Error naming
 * `what`, the last value (JSON) and the last error the probe threw. A probe (or `ok`) that throws
 * is tried again until the deadline, so a probe may also throw what is still missing, for the
 * timeout's message. The probe is always tried at least once, and the pause between two tries
 * never runs past the deadline: the last try is at the deadline.
 */
export async function waitUntil<T>(
  what: string,
  probe: () => T | Promise<T>,
  ok: (v: T) => boolean,
  options: WaitOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const stepMs = options.stepMs ?? 200;
  const deadline = Date.now() + timeoutMs;
  let last: { readonly value: T } | undefined;
  let failure: { readonly error: unknown } | undefined;
  for (;;) {
    try {
      const value = await probe();
      last = { value };
      if (ok(value)) return value;
    } catch (error) {
      failure = { error };
    }
    const leftMs = deadline - Date.now();
    if (leftMs <= 0) break;
    await new Promise((r) => setTimeout(r, Math.min(stepMs, leftMs)));
  }
  const parts = [`${what}: not reached in ${timeoutMs} ms`, `last: ${last ? json(last.value) : 'no value (every try threw)'}`];
  if (failure) parts.push(`last error: ${failure.error instanceof Error ? failure.error.message : String(failure.error)}`);
  throw new Error(parts.join('; '), failure ? { cause: failure.error } : undefined);
}

function json(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    // A value JSON cannot write (a cycle, a bigint) is still worth naming.
    return String(value);
  }
}
