// `kmj demo`, the README's main job, as a new user runs it: three times in a row, each time with
// an empty model cache shared by all its workers (the first run of a fresh clone). Every valid
// request must finish each time; the one bad request is dead-lettered with its reason.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Cleanups } from '../helpers/cleanups.ts';
import { RABBITMQ_URL } from '../helpers/env.ts';
import { lines, runKmj } from '../helpers/kmj.ts';
import { MLFLOW_URL } from '../helpers/worker.ts';

const cleanups = new Cleanups();
afterEach(() => cleanups.run());

describe('kmj demo', () => {
  it(
    'three runs in a row, each on an empty model cache: exit 0, 10 runs FINISHED and 1 dead-lettered each time',
    { timeout: 420_000 },
    async () => {
      for (let round = 0; round < 3; round++) {
        const cache = join(cleanups.tempDir('kmj-demo-cache-'), 'models');
        const result = await runKmj(
          ['demo'],
          { env: { RABBITMQ_URL, MLFLOW_TRACKING_URI: MLFLOW_URL, KMJ_MODEL_CACHE_DIR: cache } },
          cleanups,
        );
        const out = lines(result.stdout);
        expect(result.code, `round ${round}:\n${result.stdout}\n${result.stderr.slice(-2000)}`).toBe(0);
        const table = out.filter((l) => /^demo-[0-9a-f]{8} /.test(l));
        expect(table).toHaveLength(11);
        expect(table.filter((l) => / FINISHED /.test(l))).toHaveLength(10);
        expect(table.filter((l) => / FAILED /.test(l))).toHaveLength(1);
        expect(out.filter((l) => l.startsWith('dead-lettered: '))).toEqual([
          expect.stringMatching(
            /^dead-lettered: demo-[0-9a-f]{8}: model: registered model "kmj-iris-classifier" has no alias "no-such-alias"$/,
          ),
        ]);
        expect(out.at(-3)).toMatch(/^11 worker Jobs for 11 messages; MLflow UI: /);
        // Every worker had exited by the end; each one's log is kept, as kubectl logs would show it.
        expect(out.at(-2)).toMatch(/^worker logs: .*\.run\/demo-logs\/kmj-demo-/);
        expect(out.at(-1)).toBe('demo OK: 10 FINISHED, 1 dead-lettered, 11 Jobs for 11 messages');
        const logDir = (out.at(-2) ?? '').replace(/^worker logs: /, '');
        expect(readdirSync(logDir)).toHaveLength(11);
        // The workers filled the empty cache: the three sample models.
        expect(readdirSync(join(cache, 'registry')).sort()).toEqual(['kmj-iris-classifier', 'kmj-iris-mlp', 'kmj-iris-regressor']);
      }
    },
  );
});
