#!/usr/bin/env node
// Draws the figures of docs/observability.md from what the real Prometheus answered for the
// cluster suite's burst of requests (.run/monitoring-burst.json, written by
// test/cluster/monitoring.cases.ts): the panels Grafana would show, as PNGs in docs/images/.
// Grafana cannot be installed here; the lines are the panels' own query results, drawn as SVG and
// turned into PNG by Debian's rsvg-convert (a root of librsvg2-bin, scripts/debian-root.sh).
//
//   node scripts/render-figures.mjs [burst.json]
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const input = process.argv[2] ?? join(root, '.run', 'monitoring-burst.json');
const burst = JSON.parse(readFileSync(input, 'utf8'));

const FIGURES = [
  { file: 'burst-backlog.png', title: "Backlog: the scaler's, and KEDA's last read", unit: 'requests' },
  { file: 'burst-jobs.png', title: 'Jobs by state', unit: 'Jobs' },
  { file: 'burst-steps-p95.png', title: 'Steps of a request, p95', unit: 'seconds' },
];
const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const W = 720;
const H = 300;
const M = { left: 56, right: 170, top: 34, bottom: 36 };

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((x) => x >= v);
}

function svgOf(title, unit, series) {
  const t0 = burst.from;
  const t1 = burst.to;
  const yMax = niceMax(Math.max(...Object.values(series).flatMap((pts) => pts.map(([, v]) => v))));
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - (v / yMax) * (H - M.top - M.bottom);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="DejaVu Sans" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
  ];
  out.push(`<text x="${M.left}" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    out.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${y(v)}" y2="${y(v)}" stroke="#dddddd"/>`);
    out.push(`<text x="${M.left - 6}" y="${y(v) + 4}" text-anchor="end">${esc(Number(v.toFixed(2)))}</text>`);
  }
  const tick = t1 - t0 <= 90 ? 10 : 30;
  for (let s = 0; s <= t1 - t0; s += tick) out.push(`<text x="${x(t0 + s)}" y="${H - M.bottom + 16}" text-anchor="middle">${s} s</text>`);
  out.push(
    `<text x="14" y="${(H - M.bottom + M.top) / 2}" transform="rotate(-90 14 ${(H - M.bottom + M.top) / 2})" text-anchor="middle">${esc(unit)}</text>`,
  );
  Object.entries(series).forEach(([name, pts], i) => {
    const colour = COLOURS[i % COLOURS.length];
    if (pts.length > 0)
      out.push(
        `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}"/>`,
      );
    out.push(`<rect x="${W - M.right + 12}" y="${M.top + i * 18}" width="12" height="3" fill="${colour}"/>`);
    out.push(`<text x="${W - M.right + 30}" y="${M.top + i * 18 + 5}">${esc(name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n');
}

const rsvgRoot = execFileSync(join(root, 'scripts', 'debian-root.sh'), ['rsvg', 'librsvg2-bin', 'fonts-dejavu-core'], { encoding: 'utf8' })
  .trim()
  .split('\n')
  .pop();
const images = join(root, 'docs', 'images');
mkdirSync(images, { recursive: true });
const work = join(rsvgRoot, 'tmp', `kmj-figures-${process.pid}`);
mkdirSync(work, { recursive: true });
try {
  for (const f of FIGURES) {
    const series = burst.panels[f.title];
    if (!series) throw new Error(`${input} has no panel "${f.title}"`);
    writeFileSync(join(work, 'figure.svg'), svgOf(f.title, f.unit, series));
    const inRoot = `/tmp/kmj-figures-${process.pid}`;
    execFileSync('chroot', [rsvgRoot, '/usr/bin/rsvg-convert', '-o', `${inRoot}/figure.png`, `${inRoot}/figure.svg`]);
    copyFileSync(join(work, 'figure.png'), join(images, f.file));
    process.stdout.write(`docs/images/${f.file}: "${f.title}" from ${input} (${burst.requests} requests, ${burst.to - burst.from} s)\n`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
