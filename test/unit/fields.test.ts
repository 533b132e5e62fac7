// Table-driven tests of the declarative field spec (common/fields.ts): each kind, required,
// default, range and pattern, with the exact values and problem lines a user sees.
import { describe, expect, it } from 'vitest';
import {
  describeFields,
  formatDuration,
  formatSize,
  parseDuration,
  parseFields,
  parseSize,
  type FieldSpec,
  type RawInput,
} from '../../common/fields.ts';

interface Case {
  readonly name: string;
  readonly spec: FieldSpec;
  /** The raw value of key `x`; undefined: the key is absent. */
  readonly raw: string | undefined;
  /** The parsed value of `x` (undefined: not set). */
  readonly value?: unknown;
  /** The exact problem lines; none when omitted. */
  readonly problems?: readonly string[];
}

const CASES: readonly Case[] = [
  // string
  { name: 'string: a value is returned as given, untrimmed', spec: { kind: 'string' }, raw: ' a b ', value: ' a b ' },
  { name: 'string: optional and absent is left unset', spec: { kind: 'string' }, raw: undefined, value: undefined },
  { name: 'string: required and absent', spec: { kind: 'string', required: true }, raw: undefined, problems: ['x: is required'] },
  { name: 'string: required and empty counts as not set', spec: { kind: 'string', required: true }, raw: '', problems: ['x: is required'] },
  { name: 'string: default when absent', spec: { kind: 'string', default: 'dflt' }, raw: undefined, value: 'dflt' },
  { name: 'string: default when empty', spec: { kind: 'string', default: 'dflt', required: true }, raw: '', value: 'dflt' },
  { name: 'string: the value wins over the default', spec: { kind: 'string', default: 'dflt' }, raw: 'given', value: 'given' },
  { name: 'string: exactly maxLength is allowed', spec: { kind: 'string', maxLength: 3 }, raw: 'abc', value: 'abc' },
  {
    name: 'string: over maxLength',
    spec: { kind: 'string', maxLength: 3 },
    raw: 'abcd',
    problems: ['x: must be at most 3 characters, got 4'],
  },
  { name: 'string: pattern matches', spec: { kind: 'string', pattern: /^[a-z]+$/ }, raw: 'abc', value: 'abc' },
  {
    name: 'string: pattern fails, with its hint',
    spec: { kind: 'string', pattern: /^[a-z]+$/, patternHint: 'lowercase letters' },
    raw: 'ABC',
    problems: ['x: "ABC" must be lowercase letters'],
  },
  {
    name: 'string: pattern fails, no hint: the pattern is shown',
    spec: { kind: 'string', pattern: /^[a-z]+$/ },
    raw: 'A1',
    problems: ['x: "A1" must be a string matching /^[a-z]+$/'],
  },
  {
    name: 'string: a value over 200 characters is cut in the message',
    spec: { kind: 'string', pattern: /^a$/ },
    raw: 'b'.repeat(201),
    problems: [`x: "${'b'.repeat(200)}…" must be a string matching /^a$/`],
  },
  {
    name: 'string: credentials in a bad value are masked in the message',
    spec: { kind: 'string', pattern: /^[a-z]+$/ },
    raw: 'amqp://user:s3cret@host',
    problems: ['x: "amqp://***@host" must be a string matching /^[a-z]+$/'],
  },

  // enum
  { name: 'enum: an allowed value', spec: { kind: 'enum', values: ['a', 'b'] }, raw: 'b', value: 'b' },
  {
    name: 'enum: not allowed, every value listed',
    spec: { kind: 'enum', values: ['a', 'b', 'c'] },
    raw: 'd',
    problems: ['x: "d" must be one of a, b, c'],
  },
  { name: 'enum: case matters', spec: { kind: 'enum', values: ['a', 'b'] }, raw: 'A', problems: ['x: "A" must be one of a, b'] },
  { name: 'enum: default when absent', spec: { kind: 'enum', values: ['a', 'b'], default: 'a' }, raw: undefined, value: 'a' },
  {
    name: 'enum: required and absent',
    spec: { kind: 'enum', values: ['a', 'b'], required: true },
    raw: undefined,
    problems: ['x: is required'],
  },
  { name: 'enum: optional and absent is left unset', spec: { kind: 'enum', values: ['a'] }, raw: undefined, value: undefined },

  // integer
  { name: 'integer: in range', spec: { kind: 'integer', min: 0, max: 10 }, raw: '7', value: 7 },
  { name: 'integer: surrounding spaces are trimmed', spec: { kind: 'integer', min: 0, max: 10 }, raw: ' 7 ', value: 7 },
  { name: 'integer: negative within range', spec: { kind: 'integer', min: -5, max: 5 }, raw: '-5', value: -5 },
  { name: 'integer: min and max are inclusive', spec: { kind: 'integer', min: 1, max: 3 }, raw: '3', value: 3 },
  { name: 'integer: below min', spec: { kind: 'integer', min: 1, max: 3 }, raw: '0', problems: ['x: "0" must be an integer from 1 to 3'] },
  {
    name: 'integer: above max',
    spec: { kind: 'integer', min: 0, max: 65535 },
    raw: '99999',
    problems: ['x: "99999" must be an integer from 0 to 65535'],
  },
  {
    name: 'integer: a fraction',
    spec: { kind: 'integer', min: 0, max: 10 },
    raw: '1.5',
    problems: ['x: "1.5" must be an integer from 0 to 10'],
  },
  {
    name: 'duration: milliseconds as a bare number',
    spec: { kind: 'integer', unit: 'ms', min: 100, max: 60_000 },
    raw: '1500',
    value: 1500,
  },
  { name: 'duration: seconds', spec: { kind: 'integer', unit: 'ms', min: 100, max: 60_000 }, raw: '30s', value: 30_000 },
  { name: 'duration: a fraction of a minute', spec: { kind: 'integer', unit: 'ms', min: 100, max: 3_600_000 }, raw: '1.5m', value: 90_000 },
  { name: 'duration: milliseconds with the unit', spec: { kind: 'integer', unit: 'ms', min: 100, max: 60_000 }, raw: '250ms', value: 250 },
  { name: 'duration: hours', spec: { kind: 'integer', unit: 'ms', min: 100, max: 86_400_000 }, raw: '2h', value: 7_200_000 },
  {
    name: 'duration: too long, shown as a duration',
    spec: { kind: 'integer', unit: 'ms', min: 100, max: 60_000 },
    raw: '2m',
    problems: ['x: "2m" must be a duration from 100ms to 1m (e.g. 30s, 250ms, 5m, or milliseconds)'],
  },
  {
    name: 'duration: an unknown unit',
    spec: { kind: 'integer', unit: 'ms', min: 100, max: 60_000 },
    raw: '3 days',
    problems: ['x: "3 days" must be a duration from 100ms to 1m (e.g. 30s, 250ms, 5m, or milliseconds)'],
  },
  { name: 'size: bytes as a bare number', spec: { kind: 'integer', unit: 'bytes', min: 1024, max: 1024 ** 3 }, raw: '4096', value: 4096 },
  { name: 'size: mebibytes', spec: { kind: 'integer', unit: 'bytes', min: 1024, max: 1024 ** 3 }, raw: '512Mi', value: 512 * 1024 ** 2 },
  { name: 'size: megabytes', spec: { kind: 'integer', unit: 'bytes', min: 1024, max: 1024 ** 3 }, raw: '10M', value: 10_000_000 },
  {
    name: 'size: too big, shown as a size',
    spec: { kind: 'integer', unit: 'bytes', min: 1024, max: 1024 ** 3 },
    raw: '2Gi',
    problems: ['x: "2Gi" must be a size from 1Ki to 1Gi (e.g. 512Mi, 1Gi, or bytes)'],
  },
  {
    name: 'integer: exponent notation',
    spec: { kind: 'integer', min: 0, max: 10_000 },
    raw: '1e3',
    problems: ['x: "1e3" must be an integer from 0 to 10000'],
  },
  {
    name: 'integer: hexadecimal',
    spec: { kind: 'integer', min: 0, max: 100 },
    raw: '0x10',
    problems: ['x: "0x10" must be an integer from 0 to 100'],
  },
  {
    name: 'integer: not a number',
    spec: { kind: 'integer', min: 100, max: 60000 },
    raw: 'abc',
    problems: ['x: "abc" must be an integer from 100 to 60000'],
  },
  {
    name: 'integer: only spaces',
    spec: { kind: 'integer', min: 0, max: 10 },
    raw: '  ',
    problems: ['x: "  " must be an integer from 0 to 10'],
  },
  {
    name: 'integer: beyond a safe integer',
    spec: { kind: 'integer', min: 0, max: Number.MAX_VALUE },
    raw: '9007199254740993',
    problems: [`x: "9007199254740993" must be an integer from 0 to ${Number.MAX_VALUE}`],
  },
  { name: 'integer: default when absent', spec: { kind: 'integer', min: 0, max: 10, default: 4 }, raw: undefined, value: 4 },
  {
    name: 'integer: required and empty',
    spec: { kind: 'integer', min: 0, max: 10, required: true },
    raw: '',
    problems: ['x: is required'],
  },

  // number
  { name: 'number: a fraction', spec: { kind: 'number', min: 0 }, raw: '2.5', value: 2.5 },
  { name: 'number: exponent notation', spec: { kind: 'number', min: 0 }, raw: '1e3', value: 1000 },
  { name: 'number: spaces are trimmed', spec: { kind: 'number', min: 0 }, raw: ' 3 ', value: 3 },
  { name: 'number: inclusive min allows min', spec: { kind: 'number', min: 0 }, raw: '0', value: 0 },
  { name: 'number: inclusive min', spec: { kind: 'number', min: 0 }, raw: '-1', problems: ['x: "-1" must be a number at least 0'] },
  {
    name: 'number: exclusive min refuses min',
    spec: { kind: 'number', min: 0, exclusiveMin: true },
    raw: '0',
    problems: ['x: "0" must be a number greater than 0'],
  },
  { name: 'number: exclusive min allows just above', spec: { kind: 'number', min: 0, exclusiveMin: true }, raw: '0.001', value: 0.001 },
  { name: 'number: max is inclusive', spec: { kind: 'number', min: 0, max: 1 }, raw: '1', value: 1 },
  {
    name: 'number: above max',
    spec: { kind: 'number', min: 0, max: 1 },
    raw: '1.5',
    problems: ['x: "1.5" must be a number at least 0 and at most 1'],
  },
  {
    name: 'number: exclusive min and max in one message',
    spec: { kind: 'number', min: 0, exclusiveMin: true, max: 1 },
    raw: '2',
    problems: ['x: "2" must be a number greater than 0 and at most 1'],
  },
  {
    name: 'number: Infinity is not a number here',
    spec: { kind: 'number', min: 0 },
    raw: 'Infinity',
    problems: ['x: "Infinity" must be a number at least 0'],
  },
  { name: 'number: NaN', spec: { kind: 'number', min: 0 }, raw: 'NaN', problems: ['x: "NaN" must be a number at least 0'] },
  { name: 'number: only spaces is not zero', spec: { kind: 'number', min: 0 }, raw: ' ', problems: ['x: " " must be a number at least 0'] },
  { name: 'number: words', spec: { kind: 'number', min: 0 }, raw: 'ten', problems: ['x: "ten" must be a number at least 0'] },
  { name: 'number: default when absent', spec: { kind: 'number', min: 0, exclusiveMin: true, default: 1 }, raw: undefined, value: 1 },

  // boolean
  ...(['true', 'TRUE', ' True ', '1', 'yes', 'YES'] as const).map((raw): Case => ({
    name: `boolean: ${JSON.stringify(raw)} is true`,
    spec: { kind: 'boolean' },
    raw,
    value: true,
  })),
  ...(['false', 'False', '0', 'no', ' No '] as const).map((raw): Case => ({
    name: `boolean: ${JSON.stringify(raw)} is false`,
    spec: { kind: 'boolean' },
    raw,
    value: false,
  })),
  { name: 'boolean: anything else', spec: { kind: 'boolean' }, raw: 'maybe', problems: ['x: "maybe" must be true or false'] },
  { name: 'boolean: on is not a boolean', spec: { kind: 'boolean' }, raw: 'on', problems: ['x: "on" must be true or false'] },
  { name: 'boolean: default false when absent', spec: { kind: 'boolean', default: false }, raw: undefined, value: false },
  { name: 'boolean: required and absent', spec: { kind: 'boolean', required: true }, raw: undefined, problems: ['x: is required'] },

  // url
  {
    name: 'url: an allowed scheme is returned as given',
    spec: { kind: 'url', protocols: ['http', 'https'] },
    raw: 'https://mlflow.example:5000/base',
    value: 'https://mlflow.example:5000/base',
  },
  {
    name: 'url: another scheme',
    spec: { kind: 'url', protocols: ['http', 'https'] },
    raw: 'ftp://x',
    problems: ['x: "ftp://x" must be a http or https URL'],
  },
  {
    name: 'url: not a URL',
    spec: { kind: 'url', protocols: ['amqp', 'amqps'] },
    raw: 'localhost:5672',
    problems: ['x: "localhost:5672" must be a amqp or amqps URL'],
  },
  {
    name: 'url: no scheme at all',
    spec: { kind: 'url', protocols: ['http'] },
    raw: 'not a url',
    problems: ['x: "not a url" must be a http URL'],
  },
  {
    name: 'url: the password of a refused URL is not echoed',
    spec: { kind: 'url', protocols: ['http', 'https'] },
    raw: 'ftp://user:hunter2@host/x',
    problems: ['x: "ftp://***@host/x" must be a http or https URL'],
  },
  {
    name: 'url: default when absent',
    spec: { kind: 'url', protocols: ['http'], default: 'http://127.0.0.1:5000' },
    raw: undefined,
    value: 'http://127.0.0.1:5000',
  },
  { name: 'url: required and empty', spec: { kind: 'url', protocols: ['http'], required: true }, raw: '', problems: ['x: is required'] },
];

describe('parseFields, one field', () => {
  it.each(CASES)('$name', ({ spec, raw, value, problems = [] }) => {
    const input: RawInput = raw === undefined ? {} : { x: raw };
    const out = parseFields({ x: spec }, input);
    expect(out.problems).toEqual(problems);
    if (problems.length === 0) {
      expect(out.values.x).toEqual(value);
      expect(Object.hasOwn(out.values, 'x')).toBe(value !== undefined);
    } else {
      // A field with a problem has no value.
      expect(Object.hasOwn(out.values, 'x')).toBe(false);
    }
  });
});

describe('parseFields, a whole input', () => {
  const SPECS = {
    host: { kind: 'string', default: '0.0.0.0' },
    port: { kind: 'integer', min: 0, max: 65535, default: 6000 },
    refreshMs: { kind: 'integer', min: 100, max: 60000, default: 1000 },
    url: { kind: 'url', protocols: ['amqp', 'amqps'], required: true },
    level: { kind: 'enum', values: ['info', 'debug'], default: 'info' },
  } as const;

  it('reports every problem at once, in the order of the spec', () => {
    const out = parseFields(SPECS, { port: '99999', refreshMs: 'abc', level: 'loud' });
    expect(out.problems).toEqual([
      'port: "99999" must be an integer from 0 to 65535',
      'refreshMs: "abc" must be an integer from 100 to 60000',
      'url: is required',
      'level: "loud" must be one of info, debug',
    ]);
  });

  it('returns every value, defaults filled in, when nothing is wrong', () => {
    const out = parseFields(SPECS, { url: 'amqp://127.0.0.1', port: '0' });
    expect(out.problems).toEqual([]);
    expect(out.values).toEqual({ host: '0.0.0.0', port: 0, refreshMs: 1000, url: 'amqp://127.0.0.1', level: 'info' });
  });

  it('ignores keys the spec does not name', () => {
    const out = parseFields({ a: { kind: 'string', default: 'x' } }, { a: 'y', b: 'z' });
    expect(out).toEqual({ values: { a: 'y' }, problems: [] });
  });

  it('names a key in messages through nameOf', () => {
    const out = parseFields(SPECS, { port: '-1' }, { nameOf: (k) => `KMJ_${k.toUpperCase()}` });
    expect(out.problems).toEqual(['KMJ_PORT: "-1" must be an integer from 0 to 65535', 'KMJ_URL: is required']);
  });

  it('reads each key where sourceKeyOf says, and only there', () => {
    const sourceKeyOf = (k: string): string => `KMJ_${k.toUpperCase()}`;
    const out = parseFields(SPECS, { KMJ_PORT: '7000', KMJ_URL: 'amqps://broker', port: '1' }, { sourceKeyOf });
    expect(out.problems).toEqual([]);
    expect(out.values.port).toBe(7000);
    expect(out.values.url).toBe('amqps://broker');
  });

  it('an empty input gives the defaults and the required problems only', () => {
    const out = parseFields(SPECS, {});
    expect(out.problems).toEqual(['url: is required']);
    expect(out.values).toEqual({ host: '0.0.0.0', port: 6000, refreshMs: 1000, level: 'info' });
  });
});

describe('durations and sizes as people write them', () => {
  it.each([
    [30_000, '30s'],
    [250, '250ms'],
    [600_000, '10m'],
    [3_600_000, '1h'],
    [1500, '1500ms'],
  ])('formatDuration(%i) = %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    [512 * 1024 ** 2, '512Mi'],
    [1024 ** 3, '1Gi'],
    [1000, '1000'],
  ])('formatSize(%i) = %s', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
    expect(parseSize(text)).toBe(bytes);
  });

  it('a bare number is seconds where the caller says so (kmj submit --timeout)', () => {
    expect(parseDuration('90', 's')).toBe(90_000);
    expect(parseDuration('90')).toBe(90);
    expect(parseDuration('-1', 's')).toBeNaN();
  });

  it('help shows defaults the same way', () => {
    const help = describeFields({
      A_MS: { kind: 'integer', unit: 'ms', min: 1, max: 1e9, default: 30_000, help: 'wait' },
      B_BYTES: { kind: 'integer', unit: 'bytes', min: 1, max: 1e12, default: 512 * 1024 ** 2, help: 'cap' },
    });
    expect(help).toBe('  A_MS     wait (default: 30s)\n  B_BYTES  cap (default: 512Mi)');
  });
});
