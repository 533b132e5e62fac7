// Table-driven tests of trigger-metadata parsing (scaler/triggers.ts), in the manner of KEDA's
// testRabbitMQMetadata tables: metadata in, compiled trigger or the exact problems out. The
// RabbitMQ source is the real one; compiling opens no connection. A fake BacklogSource (our own
// interface) counts compiles to pin the per-metadata cache.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScalerConfig } from '../../scaler/config.ts';
import { afterAll, describe, expect, it } from 'vitest';
import type { Checked, RawInput } from '../../common/fields.ts';
import { createLogger } from '../../common/log.ts';
import { InvalidMetadataError } from '../../scaler/errors.ts';
import { createSources } from '../../scaler/sources/registry.ts';
import type { BacklogSource, BacklogTarget } from '../../scaler/sources/source.ts';
import { TriggerCompiler, canonicalMetadata, type CompiledTrigger } from '../../scaler/triggers.ts';

const log = createLogger({ level: 'silent', name: 'triggers-test' });
const connectionsDir = mkdtempSync(join(tmpdir(), 'kmj-triggers-'));
const connectionsFile = join(connectionsDir, 'connections.json');
writeFileSync(
  connectionsFile,
  JSON.stringify({
    prod: { amqpUrl: 'amqps://scaler:pw@rabbit.prod:5671/jobs%2Fml', managementUrl: 'https://scaler:pw@rabbit.prod:15671' },
  }),
);
const config = loadScalerConfig({
  RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:5672',
  KMJ_SCALER_CONNECTIONS_FILE: connectionsFile,
  KMJ_SCALER_CHANNELS_PER_CONNECTION: '4',
});
const sources = createSources(config.sources, config.tuning, log);
afterAll(async () => {
  rmSync(connectionsDir, { recursive: true, force: true });
  await Promise.all([...sources.values()].map((s) => s.close()));
});

const ALLOWED = 'allowed keys are activationThreshold, connection, measure, mode, queueName, source, targetSize, vhost';
const CREDENTIALS = 'credentials are not accepted in trigger metadata; configure them in the scaler and select them with "connection"';

function hashOf(metadata: Record<string, string>): string {
  return createHash('sha256').update(canonicalMetadata(metadata)).digest('hex').slice(0, 10);
}

/** The parts of a compiled trigger that do not depend on the broker. */
function shape(t: CompiledTrigger): Record<string, unknown> {
  return {
    metricName: t.metricName,
    targetSize: t.targetSize,
    activationThreshold: t.activationThreshold,
    labels: t.target.labels,
    description: t.target.description,
    key: t.target.key,
  };
}

interface Valid {
  readonly name: string;
  readonly metadata: Record<string, string>;
  readonly targetSize?: number;
  readonly activationThreshold?: number;
  /** labels.mode */
  readonly mode?: string;
  readonly connection?: string;
  readonly vhost?: string;
  readonly queue?: string;
  /** The readable part of the metric name, before the hash. */
  readonly stem?: string;
}

const VALID: readonly Valid[] = [
  { name: 'only queueName: every default', metadata: { queueName: 'jobs' } },
  {
    name: "KEDA's own keys are accepted",
    metadata: { queueName: 'jobs', scalerAddress: 'kmj-scaler.kmj.svc:6000', enableTLS: 'true', unsafeSsl: 'false' },
  },
  { name: 'mode backlog, said out loud', metadata: { queueName: 'jobs', mode: 'backlog' } },
  { name: 'mode ready', metadata: { queueName: 'jobs', mode: 'ready' }, mode: 'ready' },
  {
    name: 'mode management, measure defaults to messages',
    metadata: { queueName: 'jobs', mode: 'management' },
    mode: 'management-messages',
  },
  {
    name: 'mode management, measure messages',
    metadata: { queueName: 'jobs', mode: 'management', measure: 'messages' },
    mode: 'management-messages',
  },
  {
    name: 'mode management, measure publishRate',
    metadata: { queueName: 'jobs', mode: 'management', measure: 'publishRate' },
    mode: 'management-publishRate',
  },
  {
    name: 'mode management, measure deliverRate',
    metadata: { queueName: 'jobs', mode: 'management', measure: 'deliverRate' },
    mode: 'management-deliverRate',
  },
  { name: 'targetSize a whole number', metadata: { queueName: 'jobs', targetSize: '5' }, targetSize: 5 },
  { name: 'targetSize a fraction', metadata: { queueName: 'jobs', targetSize: '0.5' }, targetSize: 0.5 },
  { name: 'activationThreshold 0 is allowed', metadata: { queueName: 'jobs', activationThreshold: '0' } },
  { name: 'activationThreshold a fraction', metadata: { queueName: 'jobs', activationThreshold: '2.5' }, activationThreshold: 2.5 },
  { name: 'an empty value counts as not set', metadata: { queueName: 'jobs', targetSize: '', mode: '' } },
  { name: 'vhost given', metadata: { queueName: 'jobs', vhost: 'ml' }, vhost: 'ml' },
  {
    name: "connection prod: its URL's vhost, decoded",
    metadata: { queueName: 'jobs', connection: 'prod' },
    connection: 'prod',
    vhost: 'jobs/ml',
  },
  {
    name: "vhost given overrides the connection's",
    metadata: { queueName: 'jobs', connection: 'prod', vhost: 'other' },
    connection: 'prod',
    vhost: 'other',
  },
  { name: 'source rabbitmq, said out loud', metadata: { queueName: 'jobs', source: 'rabbitmq' } },
  { name: 'queueNameFromEnv is queueName', metadata: { queueNameFromEnv: 'jobs' } },
  { name: 'targetSizeFromEnv is targetSize', metadata: { queueName: 'jobs', targetSizeFromEnv: '3' }, targetSize: 3 },
  { name: 'modeFromEnv is mode', metadata: { queueName: 'jobs', modeFromEnv: 'ready' }, mode: 'ready' },
  {
    name: 'queueName of 255 characters',
    metadata: { queueName: 'q'.repeat(255) },
    queue: 'q'.repeat(255),
    stem: `rabbitmq-${'q'.repeat(40)}`,
  },
  {
    name: 'a queue name with spaces and capitals: the stem is lowercase [a-z0-9-]',
    metadata: { queueName: 'ML Requests_v2.high' },
    queue: 'ML Requests_v2.high',
    stem: 'rabbitmq-ml-requests-v2-high',
  },
  { name: 'a queue name of symbols only', metadata: { queueName: '***' }, queue: '***', stem: 'rabbitmq-queue' },
  {
    name: '"basic" followed by a short word is not a credential',
    metadata: { queueName: 'basic orders' },
    queue: 'basic orders',
    stem: 'rabbitmq-basic-orders',
  },
];

describe('TriggerCompiler: valid metadata', () => {
  const compiler = new TriggerCompiler(sources);

  it.each(VALID)('$name', (c) => {
    const queue = c.queue ?? 'jobs';
    const vhost = c.vhost ?? '/';
    const connection = c.connection ?? 'default';
    const mode = c.mode ?? 'backlog';
    const t = compiler.compile(c.metadata);
    expect(shape(t)).toEqual({
      metricName: `${c.stem ?? `rabbitmq-${queue}`}-${hashOf(c.metadata)}`,
      targetSize: c.targetSize ?? 1,
      activationThreshold: c.activationThreshold ?? 0,
      labels: { source: 'rabbitmq', connection, scope: vhost, name: queue, mode },
      description: `queue ${JSON.stringify(queue)} in vhost ${JSON.stringify(vhost)}`,
      key: `rabbitmq\u0000${connection}\u0000${vhost}\u0000${queue}\u0000${mode}`,
    });
    expect(t.metricName).toMatch(/^[a-z0-9-]+$/);
  });

  it('the metric name is stable for the same metadata and differs for different metadata', () => {
    const a = new TriggerCompiler(sources).compile({ queueName: 'jobs', targetSize: '2' });
    const b = new TriggerCompiler(sources).compile({ targetSize: '2', queueName: 'jobs' });
    const c = new TriggerCompiler(sources).compile({ queueName: 'jobs', targetSize: '3' });
    expect(a.metricName).toBe(b.metricName);
    expect(c.metricName).not.toBe(a.metricName);
    expect(c.metricName.startsWith('rabbitmq-jobs-')).toBe(true);
  });

  it('two triggers on one queue in one mode share the read key, whatever else differs', () => {
    const a = compiler.compile({ queueName: 'shared', targetSize: '1' });
    const b = compiler.compile({ queueName: 'shared', targetSize: '4', activationThreshold: '2' });
    expect(a.target.key).toBe(b.target.key);
    expect(a.metricName).not.toBe(b.metricName);
  });
});

interface Invalid {
  readonly name: string;
  readonly metadata: Record<string, string>;
  readonly problems: readonly string[];
  /** Values that must not appear in the error message. */
  readonly secrets?: readonly string[];
}

const INVALID: readonly Invalid[] = [
  { name: 'no metadata at all', metadata: {}, problems: ['queueName: is required'] },
  { name: 'queueName empty', metadata: { queueName: '' }, problems: ['queueName: is required'] },
  {
    name: 'queueName over 255 characters',
    metadata: { queueName: 'q'.repeat(256) },
    problems: ['queueName: must be at most 255 characters, got 256'],
  },
  {
    name: 'vhost over 255 characters',
    metadata: { queueName: 'jobs', vhost: 'v'.repeat(256) },
    problems: ['vhost: must be at most 255 characters, got 256'],
  },
  {
    name: 'mode not one of the three',
    metadata: { queueName: 'jobs', mode: 'fast' },
    problems: ['mode: "fast" must be one of backlog, ready, management'],
  },
  {
    name: 'mode in the wrong case',
    metadata: { queueName: 'jobs', mode: 'Ready' },
    problems: ['mode: "Ready" must be one of backlog, ready, management'],
  },
  {
    name: 'measure not one of the three',
    metadata: { queueName: 'jobs', mode: 'management', measure: 'rate' },
    problems: ['measure: "rate" must be one of messages, publishRate, deliverRate'],
  },
  {
    name: 'measure without mode management',
    metadata: { queueName: 'jobs', measure: 'messages' },
    problems: ['measure: is only allowed with mode management, got mode "backlog"'],
  },
  {
    name: 'measure with mode ready',
    metadata: { queueName: 'jobs', mode: 'ready', measure: 'publishRate' },
    problems: ['measure: is only allowed with mode management, got mode "ready"'],
  },
  { name: 'targetSize 0', metadata: { queueName: 'jobs', targetSize: '0' }, problems: ['targetSize: "0" must be a number greater than 0'] },
  {
    name: 'targetSize negative',
    metadata: { queueName: 'jobs', targetSize: '-1' },
    problems: ['targetSize: "-1" must be a number greater than 0'],
  },
  {
    name: 'targetSize not a number',
    metadata: { queueName: 'jobs', targetSize: 'one' },
    problems: ['targetSize: "one" must be a number greater than 0'],
  },
  {
    name: 'targetSize Infinity',
    metadata: { queueName: 'jobs', targetSize: 'Infinity' },
    problems: ['targetSize: "Infinity" must be a number greater than 0'],
  },
  {
    name: 'activationThreshold negative',
    metadata: { queueName: 'jobs', activationThreshold: '-1' },
    problems: ['activationThreshold: "-1" must be a number at least 0'],
  },
  {
    name: 'activationThreshold not a number',
    metadata: { queueName: 'jobs', activationThreshold: 'x' },
    problems: ['activationThreshold: "x" must be a number at least 0'],
  },
  {
    name: 'source unknown: nothing else is checked against a source',
    metadata: { source: 'nats', subject: 'x' },
    problems: ['source: "nats" must be one of rabbitmq, kafka'],
  },
  {
    name: 'connection not an alias',
    metadata: { queueName: 'jobs', connection: 'Prod' },
    problems: ['connection: "Prod" must be a connection alias of lowercase letters, digits, ".", "_" and "-"'],
  },
  {
    name: 'connection the scaler does not know',
    metadata: { queueName: 'jobs', connection: 'staging' },
    problems: ['connection: "staging" is not a connection the scaler knows for this source (configured: default, prod)'],
  },
  {
    name: 'an unknown key (a typo)',
    metadata: { queueName: 'jobs', queueLength: '5' },
    problems: [`queueLength: unknown key; ${ALLOWED}`],
  },
  {
    name: 'key names are case-sensitive',
    metadata: { queuename: 'jobs' },
    problems: [`queuename: unknown key; ${ALLOWED}`, 'queueName: is required'],
  },
  {
    name: "KEDA's built-in RabbitMQ keys are not ours",
    metadata: { queueName: 'jobs', host: 'amqp://rabbit:5672', protocol: 'amqp' },
    problems: [`host: unknown key; ${ALLOWED}`, `protocol: unknown key; ${ALLOWED}`],
  },
  {
    name: 'both a key and its FromEnv',
    metadata: { queueName: 'jobs', queueNameFromEnv: 'other' },
    problems: ['queueNameFromEnv: set either queueName or queueNameFromEnv, not both'],
  },
  {
    name: 'FromEnv of a bad value is checked like the key',
    metadata: { queueName: 'jobs', targetSizeFromEnv: '0' },
    problems: ['targetSize: "0" must be a number greater than 0'],
  },
  {
    name: 'several problems, all at once (the docs example)',
    metadata: { queueName: 'jobs', targetSize: '0', mode: 'fast' },
    problems: ['targetSize: "0" must be a number greater than 0', 'mode: "fast" must be one of backlog, ready, management'],
  },
  {
    name: 'every kind of problem at once',
    metadata: { targetSize: 'x', activationThreshold: '-2', mode: 'fast', connection: 'Bad', vhots: '/' },
    problems: [
      'targetSize: "x" must be a number greater than 0',
      'activationThreshold: "-2" must be a number at least 0',
      `vhots: unknown key; ${ALLOWED}`,
      'queueName: is required',
      'mode: "fast" must be one of backlog, ready, management',
      'connection: "Bad" must be a connection alias of lowercase letters, digits, ".", "_" and "-"',
    ],
  },
  // Credentials: refused, the value never echoed.
  {
    name: 'a URL with a password as queueName',
    metadata: { queueName: 'amqp://admin:s3cr3t@rabbit:5672/' },
    problems: [`queueName: ${CREDENTIALS}`],
    secrets: ['s3cr3t', 'admin', 'rabbit'],
  },
  {
    name: 'a URL with a password under an unknown key',
    metadata: { queueName: 'jobs', host: 'amqp://admin:s3cr3t@rabbit:5672/' },
    problems: [`host: ${CREDENTIALS}`],
    secrets: ['s3cr3t', 'admin'],
  },
  {
    name: 'a URL with a bare user token',
    metadata: { queueName: 'jobs', vhost: 'https://ghp_abcdef123456@example.com' },
    problems: [`vhost: ${CREDENTIALS}`],
    secrets: ['ghp_abcdef123456'],
  },
  {
    name: 'an Authorization value',
    metadata: { queueName: 'jobs', connection: 'Bearer eyJhbGciOiJIUzI1NiJ9.payload' },
    problems: [`connection: ${CREDENTIALS}`],
    secrets: ['eyJhbGciOiJIUzI1NiJ9'],
  },
  {
    name: 'a Basic auth value',
    metadata: { queueName: 'jobs', vhost: 'Basic Z3Vlc3Q6Z3Vlc3QxMjM0NQ==' },
    problems: [`vhost: ${CREDENTIALS}`],
    secrets: ['Z3Vlc3Q6Z3Vlc3QxMjM0NQ'],
  },
  {
    name: 'a password query parameter',
    metadata: { queueName: 'jobs?password=hunter2' },
    problems: [`queueName: ${CREDENTIALS}`],
    secrets: ['hunter2'],
  },
  {
    name: 'a credential in a FromEnv key: named as given, no "is required" beside it',
    metadata: { queueNameFromEnv: 'amqp://u:p4ss@h/' },
    problems: [`queueNameFromEnv: ${CREDENTIALS}`],
    secrets: ['p4ss'],
  },
  {
    name: 'a credential among other problems',
    metadata: { queueName: 'amqp://admin:s3cr3t@rabbit/', targetSize: '0' },
    problems: [`queueName: ${CREDENTIALS}`, 'targetSize: "0" must be a number greater than 0'],
    secrets: ['s3cr3t'],
  },
];

describe('TriggerCompiler: invalid metadata', () => {
  const compiler = new TriggerCompiler(sources);

  it.each(INVALID)('$name', ({ metadata, problems, secrets = [] }) => {
    let thrown: unknown;
    try {
      compiler.compile(metadata);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(InvalidMetadataError);
    const e = thrown as InvalidMetadataError;
    expect(e.problems).toEqual(problems);
    expect(e.message).toBe(`invalid trigger metadata: ${problems.join('; ')}`);
    for (const s of secrets) expect(e.message).not.toContain(s);
  });
});

/** A source of our own interface that counts how often metadata is parsed. */
class CountingSource implements BacklogSource {
  readonly name = 'rabbitmq';
  readonly fields = { queueName: { kind: 'string', required: true } } as const;
  compiles = 0;
  compile(raw: RawInput): Checked<BacklogTarget | undefined> {
    this.compiles++;
    const queue = raw['queueName'];
    if (queue === undefined || queue === '') return { value: undefined, problems: ['queueName: is required'] };
    const target: BacklogTarget = {
      key: queue,
      labels: { source: 'rabbitmq', connection: 'default', scope: '/', name: queue, mode: 'backlog' },
      description: `queue ${JSON.stringify(queue)}`,
      metricStem: 'counting',
      read: () => Promise.reject(new Error('not read in these tests')),
    };
    return { value: target, problems: [] };
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

describe('TriggerCompiler: parses once per distinct metadata', () => {
  it('the same metadata again is the same compiled trigger, not parsed again', () => {
    const source = new CountingSource();
    const compiler = new TriggerCompiler(new Map([['rabbitmq', source]]));
    const first = compiler.compile({ queueName: 'a', targetSize: '2' });
    expect(compiler.compile({ queueName: 'a', targetSize: '2' })).toBe(first);
    expect(compiler.compile({ targetSize: '2', queueName: 'a' })).toBe(first);
    expect(source.compiles).toBe(1);
    const other = compiler.compile({ queueName: 'a', targetSize: '3' });
    expect(other).not.toBe(first);
    expect(other.targetSize).toBe(3);
    expect(source.compiles).toBe(2);
  });

  it('bad metadata again throws the same error, not parsed again', () => {
    const source = new CountingSource();
    const compiler = new TriggerCompiler(new Map([['rabbitmq', source]]));
    const errors: unknown[] = [];
    for (const md of [{ targetSize: '0' }, { targetSize: '0' }]) {
      try {
        compiler.compile(md);
      } catch (err) {
        errors.push(err);
      }
    }
    expect(errors).toHaveLength(2);
    expect(errors[1]).toBe(errors[0]);
    expect((errors[0] as InvalidMetadataError).problems).toEqual([
      'targetSize: "0" must be a number greater than 0',
      'queueName: is required',
    ]);
    expect(source.compiles).toBe(1);
  });

  it('the cache is bounded: after 10,000 other distinct metadata the first is parsed again', () => {
    const source = new CountingSource();
    const compiler = new TriggerCompiler(new Map([['rabbitmq', source]]));
    compiler.compile({ queueName: 'first' });
    for (let i = 0; i < 10_000; i++) compiler.compile({ queueName: `q${i}` });
    expect(source.compiles).toBe(10_001);
    compiler.compile({ queueName: 'first' });
    expect(source.compiles).toBe(10_002);
  });

  it('the metric name carries the hash of the canonical metadata after the source stem', () => {
    const compiler = new TriggerCompiler(new Map([['rabbitmq', new CountingSource()]]));
    const md = { queueName: 'a', activationThreshold: '1' };
    expect(compiler.compile(md).metricName).toBe(`counting-${hashOf(md)}`);
  });
});

describe('canonicalMetadata', () => {
  const CASES: ReadonlyArray<{ name: string; a: Record<string, string>; b: Record<string, string>; same: boolean }> = [
    { name: 'same map, same order', a: { x: '1', y: '2' }, b: { x: '1', y: '2' }, same: true },
    {
      name: 'same map, other key order',
      a: { queueName: 'jobs', mode: 'ready', targetSize: '2' },
      b: { targetSize: '2', queueName: 'jobs', mode: 'ready' },
      same: true,
    },
    { name: 'a value differs', a: { x: '1' }, b: { x: '2' }, same: false },
    { name: 'a key differs', a: { x: '1' }, b: { y: '1' }, same: false },
    { name: 'an extra key', a: { x: '1' }, b: { x: '1', y: '' }, same: false },
    { name: 'a value moved to another key', a: { x: '1', y: '' }, b: { x: '', y: '1' }, same: false },
    { name: 'key and value boundary moved', a: { ab: 'c' }, b: { a: 'bc' }, same: false },
    { name: 'empty maps', a: {}, b: {}, same: true },
    // A value holding what used to be the separators must not pass for two entries.
    {
      name: 'a value imitating a second entry',
      a: { queueName: 'jobs', mode: 'ready' },
      b: { mode: 'ready\u0001queueName\u0000jobs' },
      same: false,
    },
    { name: 'a value holding quotes and brackets', a: { x: '1","y":"2' }, b: { x: '1', y: '2' }, same: false },
  ];

  it.each(CASES)('$name', ({ a, b, same }) => {
    expect(canonicalMetadata(a) === canonicalMetadata(b)).toBe(same);
  });

  it('is the JSON of the [key, value] pairs in key order', () => {
    expect(canonicalMetadata({ b: '2', a: '1' })).toBe('[["a","1"],["b","2"]]');
    expect(canonicalMetadata({})).toBe('[]');
  });

  it('a compiler that has seen one map answers a look-alike with its own verdict, not the cached one', () => {
    const compiler = new TriggerCompiler(sources);
    expect(compiler.compile({ queueName: 'jobs', mode: 'ready' }).metricName).toMatch(/^rabbitmq-jobs-/);
    expect(() => compiler.compile({ mode: 'ready\u0001queueName\u0000jobs' })).toThrow(/queueName: is required/);
  });
});
