// parseRequest: every way a request message is refused, with the exact message the worker puts in
// the dead-letter headers and the MLflow tag, and the requests it lets through unchanged. Every case
// runs with each validator the worker may use (the one requestValidator() gives, the precompiled
// dist/generated module when it is built, the schema compiled now): they must agree exactly.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { beforeAll, describe, expect, it } from 'vitest';
import { PACKAGE_ROOT } from '../../common/paths.ts';
import { PermanentError } from '../../common/errors.ts';
import {
  parseRequest as parseWith,
  REQUEST_SCHEMA_PATH,
  requestValidator,
  type InferenceRequest,
  type RequestValidator,
} from '../../common/request.ts';

const MAX_BYTES = 1024 * 1024;

const REQUEST_ID_RULE = 'requestId: must be 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit';
const MODEL_RULE = 'model: must start with models:/, runs:/, mlflow-artifacts: or file:///';

/** The smallest valid request. */
const MINIMAL = {
  version: 1,
  requestId: 'req-1',
  model: 'models:/iris/1',
  dataset: { uri: '/data/iris.csv' },
  experiment: 'iris',
} as const;

const GENERATED_VALIDATOR = join(PACKAGE_ROOT, 'dist', 'generated', 'request-validator.js');

let validators: Array<readonly [string, RequestValidator]> = [];

beforeAll(async () => {
  const schema = JSON.parse(readFileSync(REQUEST_SCHEMA_PATH, 'utf8')) as object;
  validators = [
    ['requestValidator()', await requestValidator()],
    ['the schema compiled now', new Ajv2020({ allErrors: true, strict: true }).compile(schema) as RequestValidator],
  ];
  // When built, the precompiled module must load (requestValidator() would silently fall back).
  if (existsSync(GENERATED_VALIDATOR)) {
    const mod = (await import(pathToFileURL(GENERATED_VALIDATOR).href)) as { default: RequestValidator };
    validators.push(['dist/generated/request-validator.js', mod.default]);
  }
});

function body(value: unknown): Buffer {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
}

type Outcome = { ok: true; request: InferenceRequest } | { ok: false; message: string; field: string | undefined };

/** What parseRequest does with `buf`, the same with every validator, or the test fails. */
function outcome(buf: Buffer, maxBytes: number): Outcome {
  const results = validators.map(([, validate]): Outcome => {
    try {
      return { ok: true, request: parseWith(buf, maxBytes, validate) };
    } catch (err) {
      expect(err).toBeInstanceOf(PermanentError);
      const e = err as PermanentError;
      return { ok: false, message: e.message, field: e.field };
    }
  });
  expect(results.length).toBeGreaterThanOrEqual(2);
  for (let i = 1; i < results.length; i++) expect(results[i], `${validators[i]?.[0]} vs ${validators[0]?.[0]}`).toEqual(results[0]);
  return results[0] as Outcome;
}

function parseRequest(buf: Buffer, maxBytes: number): InferenceRequest {
  const o = outcome(buf, maxBytes);
  if (!o.ok) throw new Error(`parseRequest refused it: ${o.message}`);
  return o.request;
}

/** The PermanentError parseRequest throws for `value`; fails the test when it does not throw one. */
function refusal(value: unknown, maxBytes = MAX_BYTES): { message: string; field: string | undefined } {
  const o = outcome(body(value), maxBytes);
  if (o.ok) throw new Error(`parseRequest accepted ${JSON.stringify(value).slice(0, 200)}`);
  return { message: o.message, field: o.field };
}

function without(key: string): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...MINIMAL };
  delete copy[key];
  return copy;
}

describe('parseRequest refuses', () => {
  it('a body that is not JSON, naming the parser error', () => {
    let v8: string = '';
    try {
      JSON.parse('{"version": 1,');
    } catch (err) {
      v8 = (err as Error).message;
    }
    expect(v8).not.toBe('');
    expect(refusal('{"version": 1,')).toEqual({ message: `message: is not valid JSON (${v8})`, field: 'message' });
    expect(refusal('')).toEqual({ message: 'message: is not valid JSON (Unexpected end of JSON input)', field: 'message' });
  });

  it('JSON that is not an object', () => {
    for (const v of ['[]', 'null', '"text"', '42', 'true']) {
      expect(refusal(v), v).toEqual({ message: 'invalid request: message: must be object', field: 'message' });
    }
  });

  it('a body larger than the limit, counted in bytes, before parsing it', () => {
    const text = JSON.stringify({ ...MINIMAL, experiment: 'é'.repeat(100) });
    const bytes = Buffer.byteLength(text);
    expect(bytes).toBe(text.length + 100);
    expect(parseRequest(Buffer.from(text), bytes).experiment).toBe('é'.repeat(100));
    expect(refusal(text, bytes - 1)).toEqual({
      message: `message: is ${bytes} bytes, more than the limit of ${bytes - 1}`,
      field: 'message',
    });
    // The size check comes first: a huge non-JSON body is refused for its size.
    expect(refusal('x'.repeat(2000), 1024)).toEqual({ message: 'message: is 2000 bytes, more than the limit of 1024', field: 'message' });
  });

  it('each required field when it is missing', () => {
    for (const key of ['version', 'requestId', 'model', 'dataset', 'experiment']) {
      expect(refusal(without(key)), key).toEqual({ message: `invalid request: ${key}: is required`, field: key });
    }
    expect(refusal({}).message).toBe(
      'invalid request: version: is required; requestId: is required; model: is required; dataset: is required; experiment: is required',
    );
  });

  it('a version other than 1', () => {
    for (const version of [2, 0, '1', null]) {
      expect(refusal({ ...MINIMAL, version }), String(version)).toEqual({
        message: 'invalid request: version: must be 1',
        field: 'version',
      });
    }
  });

  it('a requestId that breaks the pattern, and one that is not a string', () => {
    for (const requestId of ['', '-starts-with-dash', '.dot', 'has space', 'slash/no', 'ünïcode', 'a'.repeat(129)]) {
      expect(refusal({ ...MINIMAL, requestId }), requestId).toEqual({ message: `invalid request: ${REQUEST_ID_RULE}`, field: 'requestId' });
    }
    expect(refusal({ ...MINIMAL, requestId: 7 })).toEqual({ message: 'invalid request: requestId: must be string', field: 'requestId' });
    // The edges of the pattern pass.
    for (const requestId of ['a', '0', `A${'._:-z'.repeat(25)}12`, 'b'.repeat(128)]) {
      expect(parseRequest(body({ ...MINIMAL, requestId }), MAX_BYTES).requestId, requestId).toBe(requestId);
    }
  });

  it('a model without one of the known schemes', () => {
    for (const model of ['s3://bucket/model', 'models:', 'runs:', 'Models:/iris/1', '/models/iris', 'file://host/m', ' models:/iris/1']) {
      expect(refusal({ ...MINIMAL, model }), model).toEqual({ message: `invalid request: ${MODEL_RULE}`, field: 'model' });
    }
    expect(refusal({ ...MINIMAL, model: '' }).message).toBe(`invalid request: model: must not be empty; ${MODEL_RULE}`);
    expect(refusal({ ...MINIMAL, model: `models:/${'m'.repeat(1000)}` }).message).toBe(
      'invalid request: model: must be at most 1000 characters',
    );
    for (const model of [
      'models:/iris/1',
      'models:/iris@champion',
      'models:/iris/latest',
      'models:/m-0123abcd',
      'runs:/abc123/model',
      'mlflow-artifacts:/1/abc/artifacts/model',
      'mlflow-artifacts://host/1/m',
      'file:///models/iris',
    ]) {
      expect(parseRequest(body({ ...MINIMAL, model }), MAX_BYTES).model, model).toBe(model);
    }
  });

  it('a dataset with both uri and rows, or neither', () => {
    const both = { message: 'invalid request: dataset: must have exactly one of uri and rows', field: 'dataset' };
    expect(refusal({ ...MINIMAL, dataset: { uri: '/data/a.csv', rows: [{ a: 1 }] } })).toEqual(both);
    expect(refusal({ ...MINIMAL, dataset: {} })).toEqual(both);
    expect(refusal({ ...MINIMAL, dataset: { name: 'only-a-name' } })).toEqual(both);
  });

  it('a format given with inline rows', () => {
    expect(refusal({ ...MINIMAL, dataset: { rows: [{ a: 1 }], format: 'jsonl' } })).toEqual({
      message: 'invalid request: dataset.format: is only used with dataset.uri',
      field: 'dataset.format',
    });
  });

  it('a format other than csv or jsonl, in dataset and in output', () => {
    expect(refusal({ ...MINIMAL, dataset: { uri: '/data/a', format: 'parquet' } })).toEqual({
      message: 'invalid request: dataset.format: must be one of csv, jsonl',
      field: 'dataset.format',
    });
    expect(refusal({ ...MINIMAL, dataset: { uri: '/data/a', format: 'CSV' } }).message).toBe(
      'invalid request: dataset.format: must be one of csv, jsonl',
    );
    expect(refusal({ ...MINIMAL, output: { format: 'xml' } })).toEqual({
      message: 'invalid request: output.format: must be one of csv, jsonl',
      field: 'output.format',
    });
  });

  it('unknown keys at the top level and inside dataset and output', () => {
    expect(refusal({ ...MINIMAL, priority: 1 })).toEqual({ message: 'invalid request: priority: is not allowed here', field: 'priority' });
    expect(refusal({ ...MINIMAL, dataset: { uri: '/data/a.csv', sep: ';' } })).toEqual({
      message: 'invalid request: dataset.sep: is not allowed here',
      field: 'dataset.sep',
    });
    expect(refusal({ ...MINIMAL, output: { format: 'csv', path: '/tmp/x' } })).toEqual({
      message: 'invalid request: output.path: is not allowed here',
      field: 'output.path',
    });
    // A near miss of a real key is unknown too.
    expect(refusal({ ...MINIMAL, label_column: 'y' }).message).toBe('invalid request: label_column: is not allowed here');
  });

  it('reserved tag keys (mlflow.*, kmj.*), one line per bad key', () => {
    expect(refusal({ ...MINIMAL, tags: { 'mlflow.user': 'eve' } })).toEqual({
      message: 'invalid request: tags: has a key that is not allowed (mlflow.user)',
      field: 'tags',
    });
    expect(refusal({ ...MINIMAL, tags: { team: 'a', 'kmj.request_id': 'other', 'mlflow.runName': 'x' } }).message).toBe(
      'invalid request: tags: has a key that is not allowed (kmj.request_id); tags: has a key that is not allowed (mlflow.runName)',
    );
    // Only the prefixes with their dot are reserved.
    const ok = parseRequest(body({ ...MINIMAL, tags: { mlflow: 'a', kmj: 'b', mlflowish: 'c', 'kmj-x': 'd' } }), MAX_BYTES);
    expect(ok.tags).toEqual({ mlflow: 'a', kmj: 'b', mlflowish: 'c', 'kmj-x': 'd' });
  });

  it('tag values that are not strings or too long, and too many tags', () => {
    expect(refusal({ ...MINIMAL, tags: { n: 1 } })).toEqual({ message: 'invalid request: tags.n: must be string', field: 'tags.n' });
    expect(refusal({ ...MINIMAL, tags: { long: 'x'.repeat(8001) } }).message).toBe(
      'invalid request: tags.long: must be at most 8000 characters',
    );
    expect(parseRequest(body({ ...MINIMAL, tags: { long: 'x'.repeat(8000) } }), MAX_BYTES).tags?.['long']).toHaveLength(8000);
    const tags = Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`t${i}`, 'v']));
    expect(refusal({ ...MINIMAL, tags })).toEqual({ message: 'invalid request: tags: must have at most 50 entries', field: 'tags' });
    delete tags['t50'];
    expect(Object.keys(parseRequest(body({ ...MINIMAL, tags }), MAX_BYTES).tags ?? {})).toHaveLength(50);
  });

  it('more than 90 params', () => {
    const params = Object.fromEntries(Array.from({ length: 91 }, (_, i) => [`p${i}`, i]));
    expect(refusal({ ...MINIMAL, params })).toEqual({ message: 'invalid request: params: must have at most 90 entries', field: 'params' });
    delete params['p90'];
    expect(Object.keys(parseRequest(body({ ...MINIMAL, params }), MAX_BYTES).params ?? {})).toHaveLength(90);
  });

  it('params that are not a string, a number or a boolean, one line each', () => {
    expect(refusal({ ...MINIMAL, params: { nested: { depth: 2 } } })).toEqual({
      message: 'invalid request: params.nested: must be a string, a number or a boolean',
      field: 'params.nested',
    });
    expect(refusal({ ...MINIMAL, params: { ok: 1, list: [1, 2], nothing: null } }).message).toBe(
      'invalid request: params.list: must be a string, a number or a boolean; params.nothing: must be a string, a number or a boolean',
    );
    expect(refusal({ ...MINIMAL, params: 'lr=0.1' }).message).toBe('invalid request: params: must be object');
  });

  it('empty strings in every string field', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ experiment: '' }, 'experiment: must not be empty'],
      [{ runName: '' }, 'runName: must not be empty'],
      [{ labelColumn: '' }, 'labelColumn: must not be empty'],
      [{ dataset: { uri: '' } }, 'dataset.uri: must not be empty'],
      [{ dataset: { uri: '/data/a.csv', name: '' } }, 'dataset.name: must not be empty'],
      [{ requestId: '' }, REQUEST_ID_RULE],
    ];
    for (const [patch, line] of cases) {
      const field = line.slice(0, line.indexOf(':'));
      expect(refusal({ ...MINIMAL, ...patch }), line).toEqual({ message: `invalid request: ${line}`, field });
    }
  });

  it('inline rows that are empty, too many, or not objects', () => {
    expect(refusal({ ...MINIMAL, dataset: { rows: [] } })).toEqual({
      message: 'invalid request: dataset.rows: must have at least 1 item(s)',
      field: 'dataset.rows',
    });
    expect(refusal({ ...MINIMAL, dataset: { rows: [{ a: 1 }, [1, 2], 3] } }).message).toBe(
      'invalid request: dataset.rows[1]: must be object; dataset.rows[2]: must be object',
    );
    expect(refusal({ ...MINIMAL, dataset: { rows: Array.from({ length: 10_001 }, () => ({})) } }).message).toBe(
      'invalid request: dataset.rows: must have at most 10000 items',
    );
  });

  it('several problems at once, in one message, the first one naming the field', () => {
    const bad = {
      version: 2,
      requestId: '',
      model: 'gs://m',
      dataset: { uri: '/data/a.csv', sep: ';' },
      experiment: '',
      params: { deep: {} },
      tags: { 'kmj.queue': 'x' },
      extra: true,
    };
    expect(refusal(bad)).toEqual({
      message:
        'invalid request: extra: is not allowed here; version: must be 1; ' +
        `${REQUEST_ID_RULE}; ${MODEL_RULE}; dataset.sep: is not allowed here; experiment: must not be empty; ` +
        'tags: has a key that is not allowed (kmj.queue); params.deep: must be a string, a number or a boolean',
      field: 'extra',
    });
    // The example docs/requests.md gives under "Refusals".
    expect(refusal({ ...without('requestId'), dataset: { uri: '/data/a', format: 'xlsx' } }).message).toBe(
      'invalid request: requestId: is required; dataset.format: must be one of csv, jsonl',
    );
    // The cross-field checks run once the schema passes, and report together too.
    expect(refusal({ ...MINIMAL, dataset: { uri: '/data/a.csv', rows: [{ a: 1 }], format: 'csv' } }).message).toBe(
      'invalid request: dataset: must have exactly one of uri and rows; dataset.format: is only used with dataset.uri',
    );
  });

  it('a bad tag or param key with the key-name line only, not a line about the object', () => {
    expect(refusal({ ...MINIMAL, tags: { '': 'x' } }).message).toBe('invalid request: tags: has a key that is not allowed ()');
    const long = 'k'.repeat(251);
    expect(refusal({ ...MINIMAL, params: { [long]: 1 } }).message).toBe(`invalid request: params: has a key that is not allowed (${long})`);
  });

  it('a param string longer than 6000 characters as too long', () => {
    const message = refusal({ ...MINIMAL, params: { notes: 'x'.repeat(6001) } }).message;
    expect(message).not.toContain('must be a string, a number or a boolean');
    expect(message).toContain('params.notes: must be at most 6000 characters');
  });
});

describe('parseRequest and text encoding', () => {
  /** The JSON of `value` with `bad` (bytes that are not UTF-8) put where the text MARK is. */
  function withBytes(value: unknown, bad: number[]): Buffer {
    const [before, after] = JSON.stringify(value).split('MARK') as [string, string];
    return Buffer.concat([Buffer.from(before), Buffer.from(bad), Buffer.from(after)]);
  }
  const refused = (buf: Buffer): { message: string; field: string | undefined } => {
    const o = outcome(buf, MAX_BYTES);
    if (o.ok) throw new Error('parseRequest accepted bytes that are not UTF-8');
    return { message: o.message, field: o.field };
  };

  it('refuses bytes that are not UTF-8, naming the field they are in', () => {
    // A lone continuation byte, a Latin-1 "é", a truncated 3-byte sequence, an overlong "/", a UTF-8 surrogate, past U+10FFFF.
    for (const bad of [[0x80], [0xe9], [0xe2, 0x82], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xff]]) {
      expect(refused(withBytes({ ...MINIMAL, experiment: 'caf MARK' }, bad)), bad.join(' ')).toEqual({
        message: 'invalid request: experiment: is not valid UTF-8 text',
        field: 'experiment',
      });
    }
    expect(refused(withBytes({ ...MINIMAL, tags: { team: 'MARK' } }, [0xfe]))).toEqual({
      message: 'invalid request: tags.team: is not valid UTF-8 text',
      field: 'tags.team',
    });
    expect(refused(withBytes({ ...MINIMAL, dataset: { rows: [{ a: 1 }, { city: 'MARK' }] } }, [0xe9]))).toEqual({
      message: 'invalid request: dataset.rows[1].city: is not valid UTF-8 text',
      field: 'dataset.rows[1].city',
    });
    expect(refused(withBytes({ ...MINIMAL, params: { MARK: 1 } }, [0xe9]))).toEqual({
      message: 'invalid request: params (a key): is not valid UTF-8 text',
      field: 'params (a key)',
    });
    // Two fields at once: both named, the first as the field.
    const [a, b, c] = JSON.stringify({ ...MINIMAL, experiment: 'X1', runName: 'X2' }).split(/X[12]/) as [string, string, string];
    expect(refused(Buffer.concat([Buffer.from(a), Buffer.from([0xe9]), Buffer.from(b), Buffer.from([0x80]), Buffer.from(c)]))).toEqual({
      message: 'invalid request: experiment: is not valid UTF-8 text; runName: is not valid UTF-8 text',
      field: 'experiment',
    });
  });

  it('refuses bytes that are not UTF-8 outside any string, naming the byte', () => {
    const buf = Buffer.concat([Buffer.from('{"version": 1,'), Buffer.from([0xff]), Buffer.from(' "requestId": "r"}')]);
    expect(refused(buf)).toEqual({ message: 'message: is not valid UTF-8 (byte 14)', field: 'message' });
  });

  it('refuses a JSON escape of a lone surrogate, which is no text either', () => {
    expect(refusal(`{"version":1,"requestId":"r1","model":"models:/m/1","dataset":{"uri":"/d.csv"},"experiment":"a\\ud800b"}`)).toEqual({
      message: 'invalid request: experiment: is not valid UTF-8 text',
      field: 'experiment',
    });
  });

  it('accepts a UTF-8 byte-order mark before the JSON, and every valid character, U+FFFD included', () => {
    const req = { ...MINIMAL, experiment: 'café – 東京 – 🐍 – \uFFFD', tags: { schlüssel: 'wert' } };
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body(req)]);
    expect(parseRequest(bom, MAX_BYTES)).toEqual(req);
    expect(parseRequest(body(req), MAX_BYTES)).toEqual(req);
    // The mark is counted in the size limit like any other byte.
    expect(refused(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{')])).message).toMatch(/^message: is not valid JSON/);
  });

  it('dataset.nonFinite is refuse or allow', () => {
    expect(parseRequest(body({ ...MINIMAL, dataset: { uri: '/d.csv', nonFinite: 'allow' } }), MAX_BYTES).dataset.nonFinite).toBe('allow');
    expect(refusal({ ...MINIMAL, dataset: { uri: '/d.csv', nonFinite: 'ignore' } })).toEqual({
      message: 'invalid request: dataset.nonFinite: must be one of refuse, allow',
      field: 'dataset.nonFinite',
    });
  });
});

describe('parseRequest accepts', () => {
  it('the minimal request, unchanged', () => {
    expect(parseRequest(body(MINIMAL), MAX_BYTES)).toEqual(MINIMAL);
  });

  it('a request with every field, keeping every value and its type', () => {
    const full = {
      version: 1,
      requestId: 'batch-2024.06:17_a',
      model: 'models:/fraud@champion',
      dataset: { uri: 'mlflow-artifacts:/3/abc/artifacts/data.txt', format: 'jsonl', name: 'june' },
      experiment: 'fraud/scoring',
      runName: 'june scoring',
      tags: { team: 'risk', 'owner.email': 'a@b.c' },
      params: { threshold: 0.75, batch: 3, dryRun: false, region: 'eu' },
      labelColumn: 'is_fraud',
      output: { format: 'jsonl' },
    };
    const req = parseRequest(body(full), MAX_BYTES);
    expect(req).toEqual(full);
    expect(typeof req.params?.['threshold']).toBe('number');
    expect(typeof req.params?.['dryRun']).toBe('boolean');
  });

  it('inline rows of any shape, and an empty output object', () => {
    const rows = [
      { a: 1, b: 'x' },
      { a: null, c: [1, 2], d: { e: true } },
    ];
    const req = parseRequest(body({ ...MINIMAL, dataset: { rows, name: 'two' }, output: {} }), MAX_BYTES);
    expect(req.dataset).toEqual({ rows, name: 'two' });
    expect(req.output).toEqual({});
  });
});

const REQUESTS_DOC = join(PACKAGE_ROOT, 'docs', 'requests.md');

describe('docs/requests.md', () => {
  // The schema's description points at this file for its examples.
  it('has JSON examples that the schema and parseRequest accept', () => {
    const text = readFileSync(REQUESTS_DOC, 'utf8');
    const examples = [...text.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1] ?? '').filter((j) => j.includes('"version"'));
    expect(examples.length).toBeGreaterThan(0);
    const validate = new Ajv2020({ allErrors: true, strict: true }).compile(
      JSON.parse(readFileSync(REQUEST_SCHEMA_PATH, 'utf8')) as object,
    );
    for (const example of examples) {
      expect(validate(JSON.parse(example)), `${example}\n${JSON.stringify(validate.errors)}`).toBe(true);
      expect(parseRequest(Buffer.from(example), MAX_BYTES)).toEqual(JSON.parse(example));
    }
  });
});
