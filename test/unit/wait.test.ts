// test/helpers/wait.ts, the one way the suites wait: what waitUntil returns, when it tries, and
// what its timeout says. Short real timeouts, and the fake clock where the exact times matter.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { waitUntil } from '../helpers/wait.ts';

/** A probe that answers `answers` in turn (an Error is thrown), then the last one for good. */
function scripted<T>(...answers: Array<T | Error>): { probe: () => Promise<T>; calls: () => number } {
  let calls = 0;
  return {
    probe: () => {
      const answer = answers[Math.min(calls, answers.length - 1)];
      calls++;
      return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer as T);
    },
    calls: () => calls,
  };
}

/** The message waitUntil rejected with, or 'resolved'. */
function outcome(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'resolved',
    (err: unknown) => (err instanceof Error ? err.message : `not an Error: ${String(err)}`),
  );
}

afterEach(() => {
  vi.useRealTimers();
});

describe('waitUntil', () => {
  it('returns the first value for which ok holds, and tries no more', async () => {
    const p = scripted(1, 2, 3, 4);
    expect(await waitUntil('the counter to reach 3', p.probe, (n) => n >= 3, { timeoutMs: 1000, stepMs: 1 })).toBe(3);
    expect(p.calls()).toBe(3);
  });

  it('returns at the first try without waiting, a probe that is not async included', async () => {
    const started = Date.now();
    expect(
      await waitUntil(
        'a value at once',
        () => 'there',
        (v) => v === 'there',
        { timeoutMs: 60_000, stepMs: 60_000 },
      ),
    ).toBe('there');
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('tries a probe that throws again until it answers', async () => {
    const p = scripted<string>(new Error('not up yet'), new Error('still not up'), 'up');
    expect(await waitUntil('the service up', p.probe, (v) => v === 'up', { timeoutMs: 1000, stepMs: 1 })).toBe('up');
    expect(p.calls()).toBe(3);
  });

  it('after the timeout, throws naming what it waited for, the last value as JSON and the last error, kept as the cause', async () => {
    const boom = new Error('connection refused');
    const p = scripted<{ ready: number }>(boom, { ready: 1 });
    const waiting = waitUntil('3 ready messages', p.probe, (v) => v.ready === 3, { timeoutMs: 50, stepMs: 5 });
    await expect(waiting).rejects.toThrow(
      new Error('3 ready messages: not reached in 50 ms; last: {"ready":1}; last error: connection refused'),
    );
    await expect(waiting).rejects.toMatchObject({ cause: boom });
  });

  it('names no error when the probe never threw, and says so when it never answered', async () => {
    expect(
      await outcome(
        waitUntil(
          'an empty queue',
          () => 4,
          (n) => n === 0,
          { timeoutMs: 20, stepMs: 5 },
        ),
      ),
    ).toBe('an empty queue: not reached in 20 ms; last: 4');
    const down = scripted<number>(new Error('ECONNREFUSED'));
    expect(await outcome(waitUntil('the broker', down.probe, () => true, { timeoutMs: 20, stepMs: 5 }))).toBe(
      'the broker: not reached in 20 ms; last: no value (every try threw); last error: ECONNREFUSED',
    );
  });

  it('tries the probe once with no time at all', async () => {
    const p = scripted(7);
    expect(await waitUntil('seven', p.probe, (n) => n === 7, { timeoutMs: 0 })).toBe(7);
    const q = scripted(7);
    expect(await outcome(waitUntil('eight', q.probe, (n) => n === 8, { timeoutMs: 0 }))).toBe('eight: not reached in 0 ms; last: 7');
    expect(q.calls()).toBe(1);
  });

  it('tries every stepMs, and the last pause ends at the deadline, where the last try is', async () => {
    vi.useFakeTimers();
    const started = Date.now();
    const tries: number[] = [];
    const waiting = outcome(
      waitUntil(
        'never',
        () => tries.push(Date.now() - started),
        () => false,
        { timeoutMs: 1000, stepMs: 300 },
      ),
    );
    await vi.advanceTimersByTimeAsync(1000);
    expect(await waiting).toBe('never: not reached in 1000 ms; last: 5');
    expect(tries).toEqual([0, 300, 600, 900, 1000]);
  });

  it('waits 15 s in 200 ms steps by default', async () => {
    vi.useFakeTimers();
    const started = Date.now();
    const tries: number[] = [];
    const waiting = outcome(
      waitUntil(
        'never',
        () => tries.push(Date.now() - started),
        () => false,
      ),
    );
    await vi.advanceTimersByTimeAsync(15_000);
    expect(await waiting).toBe('never: not reached in 15000 ms; last: 76');
    expect(tries.slice(0, 3)).toEqual([0, 200, 400]);
    expect(tries.at(-1)).toBe(15_000);
  });
});
