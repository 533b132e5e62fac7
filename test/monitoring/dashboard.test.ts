// The Grafana dashboard (monitoring/dashboard.json, made from monitoring/dashboard.ts against
// @grafana/schema's types): up to date, well formed, and every query accepted by a real Prometheus
// as Grafana would send it. test/cluster/monitoring.cases.ts evaluates the same queries against
// the real cluster's series after a burst of requests.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { ROWS, VARIABLES } from '../../monitoring/dashboard.ts';
import { grafanaQuery, intervalSeconds, rateIntervalSeconds } from '../helpers/grafana.ts';
import { startPrometheus, type RunningPrometheus } from '../helpers/prometheus.ts';

interface JsonPanel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: Array<{ refId: string; expr: string; legendFormat: string; datasource: { uid: string } }>;
}

const json = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'monitoring', 'dashboard.json'), 'utf8')) as {
  uid: string;
  panels: JsonPanel[];
  templating: { list: Array<{ name: string; type: string; query: unknown }> };
};

let prom: RunningPrometheus | undefined;
beforeAll(async () => {
  prom = await startPrometheus({ port: 19091 });
});
afterAll(async () => {
  await prom?.close();
});
const prometheus = (): RunningPrometheus => {
  if (!prom) throw new Error('prometheus not started');
  return prom;
};

const VARS = { datasource: 'prometheus', namespace: 'kmj', scaledjob: 'ml-requests', queue: 'ml-requests' };

describe('the dashboard', () => {
  it('is what monitoring/dashboard.ts makes (scripts/monitoring.mjs --check)', () => {
    const r = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'scripts', 'monitoring.mjs'), '--check'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('has a data source variable, then namespace, ScaledJob and queue, each reading only the ones before it', () => {
    expect(json.templating.list.map((v) => [v.name, v.type])).toEqual([
      ['datasource', 'datasource'],
      ['namespace', 'query'],
      ['scaledjob', 'query'],
      ['queue', 'query'],
    ]);
    const names = VARIABLES.map((v) => v.name);
    VARIABLES.forEach((v, i) => {
      const text = JSON.stringify(v.query ?? '');
      for (const later of names.slice(i)) expect(text, v.name).not.toContain(`$${later}`);
    });
  });

  it('has every panel on the data source variable, with unique ids and refIds, and no two panels overlapping', () => {
    expect(new Set(json.panels.map((p) => p.id)).size).toBe(json.panels.length);
    const panels = json.panels.filter((p) => p.type !== 'row');
    expect(panels.length).toBe(ROWS.flatMap((r) => r.panels).length);
    for (const p of panels) {
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      const refs = (p.targets ?? []).map((t) => t.refId);
      expect(new Set(refs).size, p.title).toBe(refs.length);
      for (const t of p.targets ?? []) expect(t.datasource.uid).toBe('${datasource}');
    }
    for (const a of json.panels) {
      for (const b of json.panels) {
        if (a === b) continue;
        const overlap =
          a.gridPos.x < b.gridPos.x + b.gridPos.w &&
          b.gridPos.x < a.gridPos.x + a.gridPos.w &&
          a.gridPos.y < b.gridPos.y + b.gridPos.h &&
          b.gridPos.y < a.gridPos.y + a.gridPos.h;
        expect(overlap, `${a.title} / ${b.title}`).toBe(false);
      }
    }
  });

  it("sends only queries Prometheus accepts, with Grafana's interval variables for a 1-hour and a 3-minute range", async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const range of [
      { from: now - 3600, to: now },
      { from: now - 180, to: now },
    ]) {
      expect(rateIntervalSeconds(range)).toBeGreaterThanOrEqual(4 * 15);
      for (const row of ROWS) {
        for (const panel of row.panels) {
          for (const q of panel.queries) {
            const expr = grafanaQuery(q.expr, range, VARS);
            if (panel.type === 'stat') await prometheus().instant(expr, range.to);
            else await prometheus().range(expr, range.from, range.to, intervalSeconds(range));
          }
        }
      }
      for (const v of VARIABLES.filter((x) => x.type === 'query')) {
        const m = /^label_values\((.+), (\w+)\)$/.exec((v.query as { query: string }).query);
        expect(m, v.name).not.toBeNull();
        await prometheus().instant(`count by (${m?.[2] ?? ''}) (${grafanaQuery(m?.[1] ?? '', range, VARS)})`, range.to);
      }
    }
  });
});
