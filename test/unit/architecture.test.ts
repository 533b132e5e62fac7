// docs/architecture.md, kept true: every relative import between the top-level modules follows
// the rules written there.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';

const MODULES = ['cli', 'common', 'kafka', 'kubernetes', 'mlflow', 'modelstore', 'nodecache', 'rabbitmq', 'scaler', 'worker'] as const;
type Module = (typeof MODULES)[number];

/** What each module may import, besides itself. */
const ALLOWED: Record<Module, readonly Module[]> = {
  common: [],
  rabbitmq: ['common'],
  kafka: ['common'],
  mlflow: ['common'],
  kubernetes: ['common'],
  modelstore: ['common'],
  scaler: ['common', 'rabbitmq', 'kafka'],
  worker: ['common', 'rabbitmq', 'kafka', 'mlflow', 'modelstore'],
  nodecache: ['common', 'mlflow', 'modelstore'],
  cli: ['common', 'rabbitmq', 'kafka', 'mlflow', 'kubernetes', 'scaler', 'worker', 'nodecache'],
};

/** The files of scaler/ and worker/ that cli/ may import: their public entry points. */
const PUBLIC = new Set([
  'nodecache/app.ts',
  'nodecache/config.ts',
  'scaler/app.ts',
  'scaler/config.ts',
  'scaler/client.ts',
  'worker/config.ts',
  'worker/delivery.ts',
  'worker/rabbitmq-consumer.ts',
  'worker/kafka-consumer.ts',
  'worker/pipeline.ts',
  'worker/spool.ts',
  'worker/doctor.ts',
]);

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? tsFiles(path) : name.endsWith('.ts') ? [path] : [];
  });
}

interface Import {
  readonly from: string;
  readonly to: string;
}

function imports(): Import[] {
  const found: Import[] = [];
  const spec = /(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const m of MODULES) {
    for (const file of tsFiles(join(PACKAGE_ROOT, m))) {
      const from = relative(PACKAGE_ROOT, file);
      for (const hit of readFileSync(file, 'utf8').matchAll(spec)) {
        found.push({ from, to: normalize(join(dirname(from), hit[1] ?? '')) });
      }
    }
  }
  return found;
}

const moduleOf = (path: string): string => path.split('/')[0] ?? '';

describe('the import rules of docs/architecture.md', () => {
  const all = imports();

  it('finds the imports it checks', () => {
    expect(all.length).toBeGreaterThan(100);
    expect(all.some((i) => i.from === 'cli/status-command.ts' && i.to === 'kubernetes/scaledjob.ts')).toBe(true);
  });

  it.each(MODULES)('%s/ imports only what it may', (m) => {
    const outside = all.filter((i) => moduleOf(i.from) === m && moduleOf(i.to) !== m);
    const wrong = outside.filter((i) => !(ALLOWED[m] as readonly string[]).includes(moduleOf(i.to))).map((i) => `${i.from} -> ${i.to}`);
    expect(wrong).toEqual([]);
  });

  it('cli/ reaches scaler/, worker/ and nodecache/ through their public files only', () => {
    const wrong = all
      .filter((i) => moduleOf(i.from) === 'cli' && ['scaler', 'worker', 'nodecache'].includes(moduleOf(i.to)) && !PUBLIC.has(i.to))
      .map((i) => `${i.from} -> ${i.to}`);
    expect(wrong).toEqual([]);
  });

  it('cli/ opens no connection of its own: no broker, HTTP, socket or Kubernetes client is imported there', () => {
    // grpc-js is allowed for its status names only (grpc.status[code] in the text); the gRPC
    // client is scaler/client.ts.
    const clients =
      /(?:from|import)\s*\(?\s*['"](amqplib|kafkajs|undici|node:net|node:tls|node:http|node:https|@kubernetes\/client-node)['"]/g;
    const wrong = tsFiles(join(PACKAGE_ROOT, 'cli')).flatMap((file) =>
      [...readFileSync(file, 'utf8').matchAll(clients)].map((hit) => `${relative(PACKAGE_ROOT, file)} -> ${hit[1] ?? ''}`),
    );
    expect(wrong).toEqual([]);
  });

  it('every import names a file that exists', () => {
    const missing = all.filter((i) => {
      try {
        return !statSync(join(PACKAGE_ROOT, i.to)).isFile();
      } catch {
        return true;
      }
    });
    expect(missing).toEqual([]);
  });
});
