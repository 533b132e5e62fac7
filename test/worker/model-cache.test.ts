// The model cache on a real file system, with fills that are plain functions: what any number of
// workers sharing one cache directory may rely on. The real worker processes racing on one cache
// are in cache-race.test.ts.
import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { checkCopy, discardCached, ensureCached } from '../../modelstore/store.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { waitUntil } from '../helpers/wait.ts';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

const KEY = 'registry/iris/3';

/** A fill that writes a model directory (with a nested file) and counts its calls. */
function filler(content = 'onnx-bytes'): { fill: (dir: string) => Promise<void>; calls: () => number } {
  let calls = 0;
  return {
    fill: (dir) => {
      calls++;
      writeFileSync(join(dir, 'MLmodel'), 'flavors: {onnx: {data: model.onnx}}\n');
      writeFileSync(join(dir, 'model.onnx'), content);
      mkdirSync(join(dir, 'extra'));
      writeFileSync(join(dir, 'extra', 'weights.data'), 'w'.repeat(100));
      return Promise.resolve();
    },
    calls: () => calls,
  };
}

/** Names in the key's parent directory (the copy and any partial or trash directories). */
function siblings(cache: string): string[] {
  return readdirSync(join(cache, 'registry', 'iris')).sort();
}

/** The partial directories of the key (fills in progress). */
function partials(cache: string): string[] {
  try {
    return siblings(cache).filter((n) => n.startsWith('3.partial-'));
  } catch {
    return [];
  }
}

describe('model cache', () => {
  it('fills a key once; the next call is a hit on the same copy', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const f = filler();
    const first = await ensureCached(cache, KEY, f.fill);
    expect(first.hit).toBe(false);
    expect(first.dir).toBe(join(cache, KEY));
    const second = await ensureCached(cache, KEY, f.fill);
    expect(second).toEqual({ dir: first.dir, hit: true, id: first.id });
    expect(f.calls()).toBe(1);
    expect(readFileSync(join(first.dir, 'extra', 'weights.data'), 'utf8')).toBe('w'.repeat(100));
    expect(siblings(cache)).toEqual(['3']);
    expect(await checkCopy(first.dir)).toEqual({ ok: true, id: first.id });
  });

  it('a copy with a file cut short is discarded and filled again', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const f = filler();
    const first = await ensureCached(cache, KEY, f.fill);
    truncateSync(join(first.dir, 'extra', 'weights.data'), 40);
    expect(await checkCopy(first.dir)).toEqual({ ok: false, problem: 'extra/weights.data has 40 of its 100 bytes', id: first.id });
    const again = await ensureCached(cache, KEY, f.fill);
    expect(again.hit).toBe(false);
    expect(again.id).not.toBe(first.id);
    expect(f.calls()).toBe(2);
    expect(statSync(join(again.dir, 'extra', 'weights.data')).size).toBe(100);
    expect(siblings(cache)).toEqual(['3']);
  });

  it('a copy with a file missing is discarded and filled again', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const f = filler();
    const first = await ensureCached(cache, KEY, f.fill);
    rmSync(join(first.dir, 'model.onnx'));
    expect(await checkCopy(first.dir)).toEqual({ ok: false, problem: 'model.onnx: ENOENT', id: first.id });
    const again = await ensureCached(cache, KEY, f.fill);
    expect(again.hit).toBe(false);
    expect(readFileSync(join(again.dir, 'model.onnx'), 'utf8')).toBe('onnx-bytes');
  });

  it("a directory without a manifest (an older worker's copy) is replaced, not trusted", async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const dir = join(cache, KEY);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, '.kmj-complete'), '2026-11-30T00:00:00Z');
    writeFileSync(join(dir, 'model.onnx'), 'cut');
    expect(await checkCopy(dir)).toEqual({ ok: false, problem: 'no manifest' });
    const f = filler();
    const got = await ensureCached(cache, KEY, f.fill);
    expect(got.hit).toBe(false);
    expect(readFileSync(join(dir, 'model.onnx'), 'utf8')).toBe('onnx-bytes');
    expect(siblings(cache)).toEqual(['3']);
  });

  it('eight fills racing on one key: one copy wins and every caller gets it', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const gated =
      (i: number) =>
      async (dir: string): Promise<void> => {
        await gate;
        await filler(`copy ${i}`).fill(dir);
      };
    const all = Array.from({ length: 8 }, (_, i) => ensureCached(cache, KEY, gated(i)));
    // Every caller finds no copy and starts its own fill before any fill ends.
    await waitUntil(
      '8 fills in progress',
      () => partials(cache).length,
      (n) => n === 8,
      { timeoutMs: 5000, stepMs: 5 },
    );
    release();
    const results = await Promise.all(all);
    expect(new Set(results.map((r) => r.id)).size).toBe(1);
    expect(results.every((r) => r.dir === join(cache, KEY) && !r.hit)).toBe(true);
    expect(readFileSync(join(cache, KEY, 'model.onnx'), 'utf8')).toMatch(/^copy [0-7]$/);
    expect(siblings(cache)).toEqual(['3']);
  });

  it('a fill that ends after a peer published its copy uses that copy and leaves it alone while it is read', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const late = ensureCached(cache, KEY, async (dir) => {
      await gate;
      await filler('late copy').fill(dir);
    });
    await waitUntil(
      'the late fill in progress',
      () => partials(cache).length,
      (n) => n === 1,
      { timeoutMs: 5000, stepMs: 5 },
    );
    const first = await ensureCached(cache, KEY, filler('first copy').fill);
    // The first worker is loading its copy (by path, as onnxruntime does) when the late fill ends.
    const inode = statSync(join(first.dir, 'model.onnx')).ino;
    release();
    const got = await late;
    expect(got).toEqual({ dir: first.dir, hit: false, id: first.id });
    expect(readFileSync(join(first.dir, 'model.onnx'), 'utf8')).toBe('first copy');
    expect(statSync(join(first.dir, 'model.onnx')).ino).toBe(inode);
    expect(siblings(cache)).toEqual(['3']);
  });

  it("a partial directory untouched for longer than staleMs is a killed worker's and is removed; a fresh one is left to its filler", async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const parent = join(cache, 'registry', 'iris');
    mkdirSync(join(parent, '3.partial-dead'), { recursive: true });
    writeFileSync(join(parent, '3.partial-dead', 'model.onnx'), 'half');
    mkdirSync(join(parent, '3.partial-live'));
    mkdirSync(join(parent, '3.trash-left'));
    mkdirSync(join(parent, '4.partial-other-key'));
    const now = Date.now() + 10 * 60_000;
    // dead: last touched 5 minutes before "now"; live: touched 30 s before it.
    utimesSync(join(parent, '3.partial-dead'), new Date(now - 300_000), new Date(now - 300_000));
    utimesSync(join(parent, '3.partial-live'), new Date(now - 30_000), new Date(now - 30_000));
    utimesSync(join(parent, '4.partial-other-key'), new Date(now - 300_000), new Date(now - 300_000));
    await ensureCached(cache, KEY, filler().fill, { staleMs: 120_000, now: () => now });
    expect(siblings(cache)).toEqual(['3', '3.partial-live', '4.partial-other-key']);
  });

  it('a filler touches its partial directory while it fills, so it never looks stale', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    // The injected clock runs a minute ahead: the heartbeat's touches carry its time.
    const clock = Date.now() + 60_000;
    let touched = 0;
    await ensureCached(
      cache,
      KEY,
      async (dir) => {
        // Time let pass on purpose: a fill this long sees several 20 ms heartbeats.
        await new Promise((r) => setTimeout(r, 120));
        touched = statSync(dir).mtimeMs;
        await filler().fill(dir);
      },
      { heartbeatMs: 20, now: () => clock },
    );
    expect(Math.abs(touched - clock)).toBeLessThan(1000);
  });

  it('discardCached removes only the copy it was told of: a fresh copy a peer put in place stays', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    const f = filler();
    const damaged = await ensureCached(cache, KEY, f.fill);
    await discardCached(damaged.dir, damaged.id);
    expect(siblings(cache)).toEqual([]);
    const fresh = await ensureCached(cache, KEY, f.fill);
    // A second worker that also found the old copy damaged discards late: the fresh copy stays.
    await discardCached(fresh.dir, damaged.id);
    expect(siblings(cache)).toEqual(['3']);
    expect(await ensureCached(cache, KEY, f.fill)).toEqual({ dir: fresh.dir, hit: true, id: fresh.id });
    // Discarding what is already gone is fine.
    await discardCached(join(cache, 'registry', 'iris', '99'), 'nothing');
  });

  it('a fill that fails leaves no partial directory behind and publishes nothing', async () => {
    const cache = cleanups.tempDir('kmj-cache-');
    await expect(
      ensureCached(cache, KEY, (dir) => {
        writeFileSync(join(dir, 'model.onnx'), 'half');
        return Promise.reject(new Error('connection reset'));
      }),
    ).rejects.toThrow('connection reset');
    expect(siblings(cache)).toEqual([]);
  });
});
