import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'vitest';
import { fixtures, publish, request, requestQueue, runWorker } from '../helpers/worker.ts';
it('dbg', async () => {
  const f = fixtures();
  const lines = readFileSync(f.datasets.csv, 'utf8').trimEnd().split('\n');
  const edited = lines.map((l, i) => (i === 140 ? l.split(',').map((v, j) => (j === 0 ? '' : v)).join(',') : l));
  const path = join(mkdtempSync(join(tmpdir(), 'kmj-data-')), 'late.csv');
  writeFileSync(path, edited.join('\n') + '\n');
  const queue = await requestQueue();
  await publish(queue, request({ dataset: { uri: path } }));
  const r = await runWorker(queue, { KMJ_BATCH_ROWS: '32' });
  console.log(r.code, r.signal, r.stderr.slice(-3000));
}, 60000);
