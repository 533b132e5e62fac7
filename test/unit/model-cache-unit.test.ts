// The promises of the local model cache (modelstore/store.ts ensureCached), in one process on
// a fresh temporary directory per test: filled once then a hit, whole or not at all, the loser of
// a race uses the winner's copy, damaged copies are filled again, and leftovers of killed workers
// are swept. The "peer" of a race is a second call in this process; the cross-process race is
// test/worker/cache-race.test.ts.
import { mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ensureCached } from '../../modelstore/store.ts';
import { waitUntil } from '../helpers/wait.ts';

const MANIFEST = '.kmj-manifest.json';

let cache: string;
beforeEach(async () => {
  cache = await mkdtemp(join(tmpdir(), 'kmj-cache-unit-'));
});
afterEach(async () => {
  vi.useRealTimers();
  await rm(cache, { recursive: true, force: true });
});

/** A fill that writes `files` and records every directory it was given. */
function filler(files: Readonly<Record<string, string>>): { fill: (dir: string) => Promise<void>; dirs: string[] } {
  const dirs: string[] = [];
  return {
    dirs,
    fill: async (dir: string) => {
      dirs.push(dir);
      for (const [path, content] of Object.entries(files)) {
        await mkdir(join(dir, path, '..'), { recursive: true });
        await writeFile(join(dir, path), content);
      }
    },
  };
}

async function tree(dir: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const path = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) Object.assign(out, await tree(dir, path));
    else out[path] = await readFile(join(dir, path), 'utf8');
  }
  return out;
}

const MODEL = { MLmodel: 'flavors: {}\n', 'model.onnx': 'onnx-bytes', 'data/weights.bin': 'w'.repeat(100) };

describe('ensureCached', () => {
  it('fills a missing key once, into an empty partial directory beside it, then answers hits without filling', async () => {
    const f = filler(MODEL);
    const seen: string[][] = [];
    const first = await ensureCached(cache, 'm', async (dir) => {
      seen.push(await readdir(dir));
      await f.fill(dir);
    });
    expect(first).toEqual({ dir: join(cache, 'm'), hit: false, id: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect(f.dirs).toHaveLength(1);
    expect(f.dirs[0]?.startsWith(join(cache, 'm.partial-'))).toBe(true);
    expect(seen).toEqual([[]]);

    const files = await tree(first.dir);
    expect(Object.keys(files).sort()).toEqual([MANIFEST, 'MLmodel', 'data/weights.bin', 'model.onnx']);
    expect(files['model.onnx']).toBe('onnx-bytes');
    const manifest = JSON.parse(files[MANIFEST] ?? '') as { version: number; id: string; files: Array<{ path: string; size: number }> };
    expect(manifest.version).toBe(1);
    expect(manifest.id).toBe(first.id);
    expect([...manifest.files].sort((a, b) => (a.path < b.path ? -1 : 1))).toEqual([
      { path: 'MLmodel', size: 12 },
      { path: 'data/weights.bin', size: 100 },
      { path: 'model.onnx', size: 10 },
    ]);
    expect(await readdir(cache)).toEqual(['m']);

    const again = filler(MODEL);
    const second = await ensureCached(cache, 'm', again.fill);
    expect(second).toEqual({ dir: first.dir, hit: true, id: first.id });
    expect(again.dirs).toEqual([]);
  });

  it('a key with slashes lives in nested directories', async () => {
    const got = await ensureCached(cache, 'registry/iris/3', filler(MODEL).fill);
    expect(got.dir).toBe(join(cache, 'registry', 'iris', '3'));
    expect(got.hit).toBe(false);
    expect((await ensureCached(cache, 'registry/iris/3', filler({}).fill)).hit).toBe(true);
    expect(await readdir(join(cache, 'registry', 'iris'))).toEqual(['3']);
  });

  it('a failing fill rejects with its error and leaves nothing behind; the next call fills again', async () => {
    const boom = new Error('download failed half way');
    await expect(
      ensureCached(cache, 'm', async (dir) => {
        await writeFile(join(dir, 'model.onnx'), 'half');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await readdir(cache)).toEqual([]);

    const f = filler(MODEL);
    const got = await ensureCached(cache, 'm', f.fill);
    expect(got.hit).toBe(false);
    expect(f.dirs).toHaveLength(1);
    expect((await tree(got.dir))['model.onnx']).toBe('onnx-bytes');
  });

  it('two fills of one key at once: both get the one copy that won, no partial is left', async () => {
    // Both fills are inside the cache before either finishes.
    let arrived = 0;
    let release: () => void = () => undefined;
    const bothIn = new Promise<void>((resolve) => {
      release = resolve;
    });
    const fill =
      (content: string) =>
      async (dir: string): Promise<void> => {
        await writeFile(join(dir, 'model.onnx'), content);
        if (++arrived === 2) release();
        await bothIn;
      };
    const [a, b] = await Promise.all([ensureCached(cache, 'm', fill('from-a')), ensureCached(cache, 'm', fill('from-b'))]);
    expect(arrived).toBe(2);
    expect(a.dir).toBe(join(cache, 'm'));
    expect(b.dir).toBe(a.dir);
    expect(a.hit).toBe(false);
    expect(b.hit).toBe(false);
    expect(b.id).toBe(a.id);
    const files = await tree(a.dir);
    expect(['from-a', 'from-b']).toContain(files['model.onnx']);
    expect((JSON.parse(files[MANIFEST] ?? '') as { id: string }).id).toBe(a.id);
    expect(await readdir(cache)).toEqual(['m']);
    // And it is a complete copy: the next call is a hit on it.
    expect(await ensureCached(cache, 'm', filler({}).fill)).toEqual({ dir: a.dir, hit: true, id: a.id });
  });

  const DAMAGE: ReadonlyArray<{ name: string; damage: (dir: string) => Promise<void> }> = [
    { name: 'a file cut short', damage: (dir) => truncate(join(dir, 'data/weights.bin'), 10) },
    { name: 'a file grown', damage: (dir) => writeFile(join(dir, 'model.onnx'), 'onnx-bytes-and-more') },
    { name: 'a file missing', damage: (dir) => unlink(join(dir, 'model.onnx')) },
    { name: 'a nested file missing', damage: (dir) => rm(join(dir, 'data'), { recursive: true }) },
    { name: 'the manifest missing', damage: (dir) => unlink(join(dir, MANIFEST)) },
    { name: 'the manifest unreadable', damage: (dir) => writeFile(join(dir, MANIFEST), '{not json') },
    {
      name: 'the manifest of another version',
      damage: (dir) => writeFile(join(dir, MANIFEST), JSON.stringify({ version: 2, id: 'x', files: [] })),
    },
  ];

  it.each(DAMAGE)('a copy with $name is filled again, whole', async ({ damage }) => {
    const first = await ensureCached(cache, 'm', filler(MODEL).fill);
    await damage(first.dir);
    const f = filler({ ...MODEL, 'model.onnx': 'fresh-bytes' });
    const again = await ensureCached(cache, 'm', f.fill);
    expect(again.dir).toBe(first.dir);
    expect(again.hit).toBe(false);
    expect(again.id).not.toBe(first.id);
    expect(f.dirs).toHaveLength(1);
    const files = await tree(again.dir);
    expect(files['model.onnx']).toBe('fresh-bytes');
    expect(files['data/weights.bin']).toBe('w'.repeat(100));
    expect(await readdir(cache)).toEqual(['m']);
    expect(await ensureCached(cache, 'm', filler({}).fill)).toEqual({ dir: first.dir, hit: true, id: again.id });
  });

  it('a directory at the key without a manifest is not trusted, and is replaced by the fill', async () => {
    await mkdir(join(cache, 'm'));
    await writeFile(join(cache, 'm', 'model.onnx'), 'left over');
    const got = await ensureCached(cache, 'm', filler(MODEL).fill);
    expect(got.hit).toBe(false);
    const files = await tree(got.dir);
    expect(files['model.onnx']).toBe('onnx-bytes');
    expect(await readdir(cache)).toEqual(['m']);
  });

  it("removes stale partial fills and trash of that key, and leaves live partials and other keys' alone", async () => {
    const NOW = Date.UTC(2030, 0, 1);
    const at = async (path: string, ms: number): Promise<void> => {
      await mkdir(path, { recursive: true });
      await writeFile(join(path, 'x'), 'x');
      await utimes(path, new Date(ms), new Date(ms));
    };
    await at(join(cache, 'm.partial-dead'), NOW - 120_001);
    await at(join(cache, 'm.partial-live'), NOW - 60_000);
    await at(join(cache, 'm.trash-old'), NOW);
    await at(join(cache, 'other.partial-dead'), NOW - 10 * 120_000);
    await at(join(cache, 'm2.partial-dead'), NOW - 10 * 120_000);
    const got = await ensureCached(cache, 'm', filler(MODEL).fill, { now: () => NOW });
    expect(got.hit).toBe(false);
    expect((await readdir(cache)).sort()).toEqual(['m', 'm.partial-live', 'm2.partial-dead', 'other.partial-dead']);
  });

  it('staleMs sets how old a partial fill must be to count as dead', async () => {
    const NOW = Date.UTC(2030, 0, 1);
    for (const [name, age] of [
      ['m.partial-a', 1001],
      ['m.partial-b', 999],
    ] as const) {
      await mkdir(join(cache, name));
      await utimes(join(cache, name), new Date(NOW - age), new Date(NOW - age));
    }
    await ensureCached(cache, 'm', filler(MODEL).fill, { now: () => NOW, staleMs: 1000 });
    expect((await readdir(cache)).sort()).toEqual(['m', 'm.partial-b']);
  });

  it('the filler touches its partial directory every heartbeatMs, with the injected clock', async () => {
    const NOW = Date.UTC(2030, 0, 1);
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const mtimes: number[] = [];
    await ensureCached(
      cache,
      'm',
      async (dir) => {
        await utimes(dir, new Date(0), new Date(0));
        vi.advanceTimersByTime(5000);
        // The touch runs utimes without waiting for it: look until it has landed.
        await waitUntil(
          'the heartbeat touch to land',
          async () => (await stat(dir)).mtimeMs,
          (mtimeMs) => mtimeMs === NOW,
          { timeoutMs: 1000, stepMs: 1 },
        );
        mtimes.push((await stat(dir)).mtimeMs);
        await writeFile(join(dir, 'model.onnx'), 'x');
      },
      { now: () => NOW, heartbeatMs: 5000 },
    );
    expect(mtimes).toEqual([NOW]);
  });
});

describe('ensureCached: what a copy says of itself', () => {
  it('keeps what the filler returns in the manifest, and gives it back on every hit', async () => {
    const meta = { artifactUri: 'mlflow-artifacts:/1/models/m-1/artifacts', origin: '1700000000000 models:/m-1' };
    const first = await ensureCached(cache, 'm', async (dir) => {
      await filler(MODEL).fill(dir);
      return meta;
    });
    expect(first).toEqual({ dir: join(cache, 'm'), hit: false, id: expect.any(String), meta });
    expect(await ensureCached(cache, 'm', filler({}).fill)).toEqual({ dir: join(cache, 'm'), hit: true, id: first.id, meta });
  });

  it('a complete copy that `accept` refuses is discarded and filled again; the fresh one is accepted', async () => {
    await ensureCached(cache, 'm', async (dir) => {
      await filler({ 'model.onnx': 'old registration' }).fill(dir);
      return { origin: 'old' };
    });
    const accept = (m: Readonly<Record<string, string>>): string | undefined =>
      m['origin'] === 'new' ? undefined : `origin ${m['origin'] ?? 'none'}`;
    const again = await ensureCached(
      cache,
      'm',
      async (dir) => {
        await filler({ 'model.onnx': 'new registration' }).fill(dir);
        return { origin: 'new' };
      },
      { accept },
    );
    expect(again).toMatchObject({ hit: false, meta: { origin: 'new' } });
    expect(await tree(join(cache, 'm'))).toMatchObject({ 'model.onnx': 'new registration' });
    // Nothing of the refused copy is left beside it.
    expect((await readdir(cache)).sort()).toEqual(['m']);
    const hit = await ensureCached(cache, 'm', filler({}).fill, { accept });
    expect(hit).toEqual({ dir: join(cache, 'm'), hit: true, id: again.id, meta: { origin: 'new' } });
  });

  it('with `hash`, the manifest lists each file with its SHA-256', async () => {
    const got = await ensureCached(cache, 'm', filler(MODEL).fill, { hash: true });
    const manifest = JSON.parse(await readFile(join(got.dir, MANIFEST), 'utf8')) as {
      files: Array<{ path: string; size: number; sha256: string }>;
    };
    const { createHash } = await import('node:crypto');
    const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
    expect([...manifest.files].sort((a, b) => (a.path < b.path ? -1 : 1))).toEqual([
      { path: 'MLmodel', size: MODEL.MLmodel.length, sha256: sha(MODEL.MLmodel) },
      { path: 'data/weights.bin', size: 100, sha256: sha(MODEL['data/weights.bin']) },
      { path: 'model.onnx', size: MODEL['model.onnx'].length, sha256: sha(MODEL['model.onnx']) },
    ]);
  });
});
