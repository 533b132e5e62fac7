// The stand-in images of scripts/stand-in-images.sh against the contracts manifests/rabbitmq.yaml,
// postgres.yaml and mlflow.yaml write down at their tops: the user and group, the entrypoint, the
// environment, the version and the commands the manifests' probes run. Read from the very archives
// the cluster imports (the config and the layer's file list), not from the script. What the
// entrypoints do on a first start is shown by the cluster suite, which deploys from empty
// (test/cluster/from-empty.cases.ts).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';

const run = promisify(execFile);

interface ImageConfig {
  User?: string;
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  StopSignal?: string;
}

interface Image {
  readonly tag: string;
  readonly config: ImageConfig;
  readonly env: Map<string, string>;
  /** Every path in the layer, without a leading ./ or /. */
  readonly files: Set<string>;
  /** A file of the layer, as text. */
  text(path: string): Promise<string>;
}

async function tarRead(archive: string, member: string): Promise<string> {
  return (await run('tar', ['-xOf', archive, member], { maxBuffer: 64 * 1024 * 1024 })).stdout;
}

async function open(archive: string): Promise<Image> {
  const [manifest] = JSON.parse(await tarRead(archive, 'manifest.json')) as Array<{ Config: string; RepoTags: string[]; Layers: string[] }>;
  if (!manifest || manifest.Layers.length !== 1) throw new Error(`${archive}: not a one-layer docker archive`);
  const config = (JSON.parse(await tarRead(archive, manifest.Config)) as { config: ImageConfig }).config;
  const layer = manifest.Layers[0] ?? '';
  const listing = await run('bash', ['-c', 'tar -xOf "$1" "$2" | tar -t', 'list', archive, layer], { maxBuffer: 512 * 1024 * 1024 });
  const files = new Set(
    listing.stdout
      .split('\n')
      .map((f) => f.replace(/^\.?\//, '').replace(/\/$/, ''))
      .filter((f) => f !== ''),
  );
  const env = new Map((config.Env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)] as [string, string]));
  const text = async (path: string): Promise<string> =>
    (await run('bash', ['-c', 'tar -xOf "$1" "$2" | tar -xOf - "$3"', 'read', archive, layer, path], { maxBuffer: 64 * 1024 * 1024 }))
      .stdout;
  return { tag: manifest.RepoTags[0] ?? '', config, env, files, text };
}

/** The first directory of PATH holding `command`, or undefined. */
function onPath(image: Image, command: string): string | undefined {
  return (image.env.get('PATH') ?? '').split(':').find((d) => image.files.has(`${d.replace(/^\//, '')}/${command}`));
}

/** The image a manifest gives a container, as written. */
function manifestImage(file: string): string {
  const m = /^\s+image: (\S+)$/m.exec(readFileSync(packageFile('manifests', file), 'utf8'));
  return m?.[1] ?? '';
}

/** The passwd entry of a uid in the image: [name, uid, gid, home]. */
async function passwdOf(image: Image, uid: string): Promise<string[] | undefined> {
  const line = (await image.text('etc/passwd')).split('\n').find((l) => l.split(':')[2] === uid);
  return line ? [line.split(':')[0] ?? '', ...line.split(':').slice(2, 4), line.split(':')[5] ?? ''] : undefined;
}

const images = new Map<string, Image>();
beforeAll(async () => {
  // Built once per machine (cached); the cluster's deployment has usually built them already.
  const { stdout } = await run('bash', [packageFile('scripts', 'stand-in-images.sh'), 'archives'], {
    maxBuffer: 16 * 1024 * 1024,
    timeout: 1_500_000,
  });
  for (const line of stdout.trim().split('\n')) {
    const [name = '', archive = ''] = line.split(' ');
    images.set(name, await open(archive));
  }
}, 1_600_000);

const image = (name: string): Image => {
  const i = images.get(name);
  if (!i) throw new Error(`no stand-in ${name}`);
  return i;
};

describe('the stand-in images honour the contracts their manifests write down', () => {
  it('RabbitMQ (manifests/rabbitmq.yaml): uid and gid 999 at home in /var/lib/rabbitmq, the server in the foreground with no argument, rabbitmq-diagnostics on PATH, the management and prometheus plugins', async () => {
    const r = image('rabbitmq');
    expect(r.tag).toBe(`kmj.local/${manifestImage('rabbitmq.yaml')}`);
    expect(r.config.User).toBe('999:999');
    expect(await passwdOf(r, '999')).toEqual(['rabbitmq', '999', '999', '/var/lib/rabbitmq']);
    expect(r.config.Entrypoint?.map((p) => p.split('/').pop())).toEqual(['rabbitmq-server']);
    expect(r.config.Cmd ?? []).toEqual([]);
    expect([...r.env.keys()].sort()).toEqual(['HOME', 'LANG', 'PATH', 'RABBITMQ_DATA_DIR']);
    expect(r.env.get('HOME')).toBe('/var/lib/rabbitmq');
    expect(onPath(r, 'rabbitmq-diagnostics')).toBeDefined();
    const version = manifestImage('rabbitmq.yaml')
      .replace(/^rabbitmq:/, '')
      .replace(/-management$/, '');
    for (const plugin of ['rabbitmq_management', 'rabbitmq_prometheus']) {
      expect(
        [...r.files].some((f) => new RegExp(`/rabbitmq_server-${version}/plugins/${plugin}-${version}(\\.ez)?$`).test(f)),
        plugin,
      ).toBe(true);
    }
  }, 120_000);

  it('Postgres (manifests/postgres.yaml): uid and gid 999, stop signal SIGINT, the entrypoint that initialises a first start, then postgres; initdb, pg_ctl, postgres, psql and pg_isready on PATH', async () => {
    const p = image('postgres');
    expect(p.tag).toBe(`kmj.local/${manifestImage('postgres.yaml')}`);
    expect(p.config.User).toBe('999:999');
    expect((await passwdOf(p, '999'))?.slice(0, 3)).toEqual(['postgres', '999', '999']);
    expect(p.config.Entrypoint).toEqual(['/usr/local/bin/docker-entrypoint.sh']);
    expect(p.config.Cmd).toEqual(['postgres']);
    // The official image's STOPSIGNAL: a fast shutdown, not the smart one that waits for MLflow's pooled connections.
    expect(p.config.StopSignal).toBe('SIGINT');
    expect([...p.env.keys()].sort()).toEqual(['LANG', 'PATH', 'PGDATA', 'PG_MAJOR']);
    const major = /^postgres:(\d+)/.exec(manifestImage('postgres.yaml'))?.[1];
    expect(p.env.get('PG_MAJOR')).toBe(major);
    for (const command of ['initdb', 'pg_ctl', 'postgres', 'psql', 'pg_isready']) expect(onPath(p, command), command).toBeDefined();
    expect(p.files.has('docker-entrypoint-initdb.d')).toBe(true);
    // postgresql-common made no cluster at install: a first start is the entrypoint's.
    expect([...p.files].some((f) => f.startsWith(`var/lib/postgresql/${major}/main`))).toBe(false);
  }, 120_000);

  it("MLflow (manifests/mlflow.yaml): the Dockerfile's user, entrypoint and pins, exactly", async () => {
    const m = image('mlflow');
    const dockerfile = readFileSync(packageFile('manifests', 'mlflow-image', 'Dockerfile'), 'utf8');
    expect(m.tag).toBe(`kmj.local/${manifestImage('mlflow.yaml').split('/').pop()}`);
    expect(m.config.User).toBe(/^USER (\S+)$/m.exec(dockerfile)?.[1]);
    expect(m.config.Entrypoint?.map((p) => p.split('/').pop())).toEqual(JSON.parse(/^ENTRYPOINT (.+)$/m.exec(dockerfile)?.[1] ?? '[]'));
    expect(onPath(m, 'mlflow')).toBe(m.config.Entrypoint?.[0]?.replace(/\/mlflow$/, ''));
    expect((await passwdOf(m, '1000'))?.slice(0, 3)).toEqual(['mlflow', '1000', '1000']);
    const pins = [...dockerfile.matchAll(/"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([^"]+)"/g)].map((x): [string, string] => [
      x[1] ?? '',
      x[2] ?? '',
    ]);
    expect(pins.map(([n]) => n)).toEqual(['mlflow', 'psycopg2-binary']);
    for (const [name, version] of pins) {
      const dist = `${name.replace(/-/g, '_')}-${version}.dist-info`;
      expect(
        [...m.files].some((f) => f.endsWith(`/site-packages/${dist}`)),
        dist,
      ).toBe(true);
    }
  }, 120_000);
});
