// The alert rules (monitoring/alerts.rules.yaml) checked and unit-tested by Debian 13's promtool
// (Prometheus 2.53), and the PrometheusRule made from them (scripts/monitoring.mjs).
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { prometheusRoot } from '../helpers/prometheus.ts';

const MONITORING = join(PACKAGE_ROOT, 'monitoring');

/** promtool from the Debian 13 root `make test` builds (scripts/debian-root.sh prometheus prometheus). */
const promtool = (): string => join(prometheusRoot(), 'usr', 'bin', 'promtool');

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface AlertTest {
  alert_rule_test?: Array<{ alertname: string; exp_alerts: Array<{ exp_labels: Record<string, string> }> }>;
}

const rules = (parse(readFileSync(join(MONITORING, 'alerts.rules.yaml'), 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap(
  (g) => g.rules,
);
const alerts = rules.filter((r) => r.alert !== undefined);

describe('alert rules', () => {
  it('pass promtool check rules', () => {
    const r = spawnSync(promtool(), ['check', 'rules', 'alerts.rules.yaml'], { cwd: MONITORING, encoding: 'utf8' });
    expect(r.stdout + r.stderr).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(r.status).toBe(0);
  });

  it('pass their unit tests (promtool test rules alerts.test.yaml)', () => {
    const r = spawnSync(promtool(), ['test', 'rules', 'alerts.test.yaml'], { cwd: MONITORING, encoding: 'utf8' });
    expect(r.stdout + r.stderr).toContain('SUCCESS');
    expect(r.status).toBe(0);
  });

  it('every alert is tested firing, and every firing carries the ScaledJob and the queue, a severity, a summary and a description', () => {
    const tests = (parse(readFileSync(join(MONITORING, 'alerts.test.yaml'), 'utf8')) as { tests: AlertTest[] }).tests;
    const fired = tests.flatMap((t) => t.alert_rule_test ?? []).filter((c) => c.exp_alerts.length > 0);
    const quiet = tests.flatMap((t) => t.alert_rule_test ?? []).filter((c) => c.exp_alerts.length === 0);
    expect(alerts.map((a) => a.alert).sort()).toEqual([...new Set(fired.map((c) => c.alertname))].sort());
    // Each is also shown quiet where it should be (before its `for`, or with healthy series beside).
    expect(alerts.map((a) => a.alert).sort()).toEqual([...new Set(quiet.map((c) => c.alertname))].sort());
    for (const c of fired) {
      for (const e of c.exp_alerts) {
        expect(Object.keys(e.exp_labels), c.alertname).toEqual(
          expect.arrayContaining(['queue', 'scaledjob', 'scaledjob_namespace', 'severity']),
        );
        expect(e.exp_labels['queue'], c.alertname).not.toBe('');
      }
    }
    for (const a of alerts) {
      expect(['warning', 'critical'], a.alert).toContain(a.labels?.['severity']);
      expect(Object.keys(a.annotations ?? {}).sort(), a.alert).toEqual(['description', 'summary']);
    }
  });

  it('are the same in the PrometheusRule as in the plain rules file', () => {
    const check = spawnSync(process.execPath, [join(PACKAGE_ROOT, 'scripts', 'monitoring.mjs'), '--check'], { encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
    const pr = parse(readFileSync(join(MONITORING, 'prometheusrule.yaml'), 'utf8')) as {
      kind: string;
      spec: { groups: Array<{ rules: Rule[] }> };
    };
    expect(pr.kind).toBe('PrometheusRule');
    expect(pr.spec.groups.flatMap((g) => g.rules)).toEqual(rules);
  });
});
