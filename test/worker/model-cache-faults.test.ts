// A model cache damaged under the worker, with the real `kmj worker` process, RabbitMQ and MLflow:
// a copy cut short, a copy whose damage its manifest cannot see, a file gone. Each is the
// machine's fault, never the request's: the model is fetched again and the request finishes.
import { readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import {
  drain,
  fixtures,
  logsWith,
  publish,
  queueStateAfterExit,
  request,
  runsOf,
  runWorker,
  tagsOf,
  type WorkerResult,
} from '../helpers/worker.ts';

const f = fixtures();
const mlp = f.models['mlp'];
const MODEL = `models:/${mlp?.name}/${mlp?.version}`;
const dataFile = mlp?.files.find((n) => n.endsWith('.data')) ?? '';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

/** A cache holding the MLP, put there by a real worker's run; returns the cache and the copy's directory. */
async function warmCache(queue: string): Promise<{ cache: string; copy: string }> {
  const cache = cleanups.tempDir('kmj-cache-');
  await publish(queue, request({ model: MODEL }));
  const warm = await runWorker(queue, { KMJ_MODEL_CACHE_DIR: cache });
  expect(warm.code, warm.stderr.slice(-2000)).toBe(EXIT.OK);
  const copy = join(cache, 'registry', encodeURIComponent(mlp?.name ?? ''), String(mlp?.version));
  expect(readdirSync(copy)).toEqual(expect.arrayContaining(['.kmj-manifest.json', 'MLmodel', 'model.onnx', dataFile]));
  return { cache, copy };
}

/** The next request on the damaged cache: it must finish, and the copy must be whole again. */
async function expectFinished(queue: string, cache: string): Promise<{ result: WorkerResult; tags: Record<string, string> }> {
  const req = request({ model: MODEL });
  await publish(queue, req);
  const result = await runWorker(queue, { KMJ_MODEL_CACHE_DIR: cache });
  expect(result.code, result.stderr.slice(-2000)).toBe(EXIT.OK);
  expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
  expect(await drain(`${queue}.dead`)).toEqual([]);
  const runs = await runsOf(req.experiment);
  expect(runs.map((r) => r.info.status)).toEqual(['FINISHED']);
  return { result, tags: tagsOf(runs[0] as (typeof runs)[number]) };
}

describe('a damaged model cache', () => {
  it('the external data file cut short: the copy fails its manifest check, is fetched again, and the request finishes', async () => {
    const queue = await cleanups.requestQueue();
    const { cache, copy } = await warmCache(queue);
    const full = statSync(join(copy, dataFile)).size;
    truncateSync(join(copy, dataFile), Math.floor(full / 2));
    const { tags } = await expectFinished(queue, cache);
    expect(tags['kmj.model_cache']).toBe('miss');
    expect(statSync(join(copy, dataFile)).size).toBe(full);
  });

  it('model.onnx gone from a copy: fetched again, the request finishes', async () => {
    const queue = await cleanups.requestQueue();
    const { cache, copy } = await warmCache(queue);
    rmSync(join(copy, 'model.onnx'));
    const { tags } = await expectFinished(queue, cache);
    expect(tags['kmj.model_cache']).toBe('miss');
    expect(statSync(join(copy, 'model.onnx')).size).toBeGreaterThan(0);
  });

  it('model.onnx cut short with a manifest that agrees (damage no size check sees): onnxruntime refuses it, the copy is discarded and fetched again, the request finishes', async () => {
    const queue = await cleanups.requestQueue();
    const { cache, copy } = await warmCache(queue);
    const onnx = join(copy, 'model.onnx');
    const full = statSync(onnx).size;
    truncateSync(onnx, Math.floor(full / 3));
    const manifestPath = join(copy, '.kmj-manifest.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as { files: Array<{ path: string; size: number }> };
    for (const file of manifest.files) if (file.path === 'model.onnx') file.size = Math.floor(full / 3);
    writeFileSync(manifestPath, JSON.stringify(manifest));
    const { result, tags } = await expectFinished(queue, cache);
    const refetch = logsWith(result, 'the cached model could not be loaded; fetching it again');
    expect(refetch).toHaveLength(1);
    expect(refetch[0]).toMatchObject({ level: 'warn', hit: true, dir: copy });
    expect(String((refetch[0]?.['err'] as { message?: unknown } | undefined)?.message)).toMatch(
      /^model: onnxruntime cannot load model\.onnx: /,
    );
    expect(tags['kmj.model_cache']).toBe('miss');
    expect(statSync(onnx).size).toBe(full);
  });

  it('a copy left without its manifest (a killed worker of an older version): not trusted, fetched again', async () => {
    const queue = await cleanups.requestQueue();
    const { cache, copy } = await warmCache(queue);
    rmSync(join(copy, '.kmj-manifest.json'));
    truncateSync(join(copy, 'MLmodel'), 10);
    const { tags } = await expectFinished(queue, cache);
    expect(tags['kmj.model_cache']).toBe('miss');
    expect(readFileSync(join(copy, 'MLmodel'), 'utf8')).toMatch(/flavors:/);
  });
});
