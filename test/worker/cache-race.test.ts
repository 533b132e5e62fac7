// Eight real `kmj worker` processes started at once on one empty model cache, as eight Jobs on a
// node share a ReadWriteMany cache volume, with valid requests for the same model: every request
// must FINISH. Round after round, with the small classifier and with the MLP whose weights are in
// an external data file (the file onnxruntime opens by path while it loads). The old cache
// deleted a peer's complete copy while the peer was loading it, and dead-lettered a few requests
// in every such batch.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import {
  drain,
  fixtures,
  publish,
  queueStateAfterExit,
  request,
  requestQueue,
  runsOf,
  startWorker,
  tagsOf,
  uniqueId,
} from '../helpers/worker.ts';

const f = fixtures();
const WORKERS = 8;
const ROUNDS = 16;

describe('eight workers on one empty model cache', () => {
  it(`finishes every request, ${ROUNDS} rounds of ${WORKERS} workers`, { timeout: 300_000 }, async () => {
    const outcomes: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const key = round % 2 === 0 ? 'mlp' : 'classifier';
      const model = f.models[key];
      const queue = await requestQueue();
      const experiment = uniqueId('cache-race');
      const cache = join(PACKAGE_ROOT, '.run', 'test-model-caches', uniqueId('shared'));
      const reqs = Array.from({ length: WORKERS }, () => request({ model: `models:/${model?.name}/${model?.version}`, experiment }));
      for (const r of reqs) await publish(queue, r);
      const results = await Promise.all(
        reqs.map(() => startWorker(queue, { KMJ_MODEL_CACHE_DIR: cache, KMJ_ONNX_THREADS: '1', LOG_LEVEL: 'warn' }).done),
      );
      const dead = await drain(`${queue}.dead`);
      for (const d of dead)
        outcomes.push(`round ${round} (${key}): dead-lettered: ${String(d.properties.headers?.['x-kmj-dead-letter-reason'])}`);
      for (const r of results) if (r.code !== 0) outcomes.push(`round ${round} (${key}): exit ${r.code}: ${r.stderr.slice(0, 300)}`);
      expect(outcomes).toEqual([]);
      expect(await queueStateAfterExit(queue)).toEqual({ messages: 0, consumers: 0 });
      const runs = await runsOf(experiment);
      expect(runs.map((r) => r.info.status).sort()).toEqual(Array<string>(WORKERS).fill('FINISHED'));
      expect(new Set(runs.map((r) => tagsOf(r)['kmj.request_id']))).toEqual(new Set(reqs.map((r) => r.requestId)));
    }
  });
});
