#!/usr/bin/env node
// Makes the files of monitoring/ that are made, not written:
// - prometheusrule.yaml (a PrometheusRule, for Prometheus Operator users) from alerts.rules.yaml
//   (the plain rules file), so the two never differ;
// - dashboard.json from dashboard.ts (typed against @grafana/schema; Node runs it from source).
//   node scripts/monitoring.mjs           writes them
//   node scripts/monitoring.mjs --check   exits 1 when a file on disk is not what it would write
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { dashboardText } from '../monitoring/dashboard.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const rulesFile = `${root}monitoring/alerts.rules.yaml`;

const { groups } = parse(readFileSync(rulesFile, 'utf8'));
const header = `# Generated from alerts.rules.yaml by \`node scripts/monitoring.mjs\`: edit that file, then run it.
# kube-prometheus-stack selects PrometheusRules by its release label (ruleSelector): set "release"
# to your Helm release's name, or make the selector match app.kubernetes.io/part-of.
`;
const doc = {
  apiVersion: 'monitoring.coreos.com/v1',
  kind: 'PrometheusRule',
  metadata: {
    name: 'keda-ml-jobs',
    namespace: 'kmj',
    labels: { 'app.kubernetes.io/part-of': 'keda-ml-jobs', release: 'kube-prometheus-stack' },
  },
  spec: { groups },
};
const made = {
  'monitoring/prometheusrule.yaml': header + stringify(doc, { lineWidth: 0 }),
  'monitoring/dashboard.json': dashboardText(),
};

const check = process.argv.includes('--check');
let stale = 0;
for (const [file, text] of Object.entries(made)) {
  if (!check) {
    writeFileSync(root + file, text);
    continue;
  }
  let current = '';
  try {
    current = readFileSync(root + file, 'utf8');
  } catch {
    // missing: differs
  }
  if (current !== text) {
    process.stderr.write(`${file} is not what scripts/monitoring.mjs makes: run node scripts/monitoring.mjs\n`);
    stale++;
  }
}
process.exit(stale > 0 ? 1 : 0);
