/**
 * The request message: JSON, validated against schemas/request-v1.schema.json, plus the checks a
 * schema cannot say clearly. Every problem names its field: `dataset.format: must be one of csv, jsonl`.
 */
import { isUtf8 } from 'node:buffer';
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import type { ErrorObject } from 'ajv';
import { packageFile } from './paths.ts';
import { PermanentError } from './errors.ts';

export type DataFormat = 'csv' | 'jsonl';

export interface InferenceRequest {
  readonly version: 1;
  readonly requestId: string;
  readonly model: string;
  readonly dataset: {
    readonly uri?: string;
    readonly rows?: ReadonlyArray<Readonly<Record<string, unknown>>>;
    readonly format?: DataFormat;
    readonly name?: string;
    readonly nonFinite?: 'refuse' | 'allow';
  };
  readonly experiment: string;
  readonly runName?: string;
  readonly tags?: Readonly<Record<string, string>>;
  readonly params?: Readonly<Record<string, string | number | boolean>>;
  readonly labelColumn?: string;
  readonly output?: { readonly format?: DataFormat };
}

export const REQUEST_SCHEMA_PATH = packageFile('schemas', 'request-v1.schema.json');

/** A compiled JSON Schema validator, as ajv makes them. */
export type RequestValidator = ((data: unknown) => boolean) & { errors?: ErrorObject[] | null };

let loading: Promise<RequestValidator> | undefined;

/**
 * The request validator: the one `npm run build` precompiled from the schema
 * (dist/generated/request-validator.js, no schema compilation at start-up), or, when running from
 * source without a build, the schema compiled now.
 */
export function requestValidator(): Promise<RequestValidator> {
  loading ??= (async () => {
    try {
      const mod = (await import(pathToFileURL(packageFile('dist', 'generated', 'request-validator.js')).href)) as {
        default: RequestValidator;
      };
      return mod.default;
    } catch {
      const { Ajv2020 } = await import('ajv/dist/2020.js');
      const ajv = new Ajv2020({ allErrors: true, strict: true });
      return ajv.compile(JSON.parse(await readFile(REQUEST_SCHEMA_PATH, 'utf8')) as object) as RequestValidator;
    }
  })();
  return loading;
}

/** `/dataset/format` → `dataset.format`; array indexes as `[3]`. */
function fieldOf(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, part) => (/^\d+$/.test(part) ? `${acc}[${part}]` : acc ? `${acc}.${part}` : part), '');
}

function describe(e: ErrorObject): string {
  const at = fieldOf(e.instancePath);
  const p = e.params as Record<string, unknown>;
  const field = (extra: string): string => (at ? `${at}.${extra}` : extra);
  switch (e.keyword) {
    case 'required':
      return `${field(String(p['missingProperty']))}: is required`;
    case 'additionalProperties':
      return `${field(String(p['additionalProperty']))}: is not allowed here`;
    case 'enum':
      return `${at}: must be one of ${(p['allowedValues'] as unknown[]).join(', ')}`;
    case 'const':
      return `${at}: must be ${JSON.stringify(p['allowedValue'])}`;
    case 'type':
      return `${at || 'message'}: must be ${String(p['type']).replace(',', ' or ')}`;
    case 'pattern':
      if (at === 'requestId') return 'requestId: must be 1 to 128 letters, digits, ".", "_", ":" or "-", starting with a letter or digit';
      if (at === 'model') return 'model: must start with models:/, runs:/, mlflow-artifacts: or file:///';
      return `${at}: has an invalid format`;
    case 'propertyNames':
      return `${at}: has a key that is not allowed (${String(p['propertyName'])})`;
    case 'minLength':
      return `${at}: must not be empty`;
    case 'maxLength':
      return `${at}: must be at most ${String(p['limit'])} characters`;
    case 'minItems':
      return `${at}: must have at least ${String(p['limit'])} item(s)`;
    case 'maxItems':
      return `${at}: must have at most ${String(p['limit'])} items`;
    case 'maxProperties':
      return `${at}: must have at most ${String(p['limit'])} entries`;
    case 'anyOf':
      return `${at}: must be a string, a number or a boolean`;
    default:
      return `${at || 'message'}: ${e.message ?? 'is invalid'}`;
  }
}

/** Parses and validates one message body. Throws PermanentError listing every problem. */
export function parseRequest(body: Buffer, maxBytes: number, validate: RequestValidator): InferenceRequest {
  if (body.length > maxBytes) {
    throw new PermanentError(`message: is ${body.length} bytes, more than the limit of ${maxBytes}`, { field: 'message' });
  }
  // A byte-order mark is no part of the JSON; some tools on some platforms write one.
  const bytes = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? body.subarray(3) : body;
  const firstBad = isUtf8(bytes) ? -1 : firstInvalidUtf8(bytes);
  let data: unknown;
  try {
    // Bytes that are not UTF-8 become lone surrogates (which valid UTF-8 can never decode to), so
    // the walk below can name the field they were in.
    data = JSON.parse(firstBad < 0 ? bytes.toString('utf8') : markInvalidUtf8(bytes));
  } catch (err) {
    if (firstBad >= 0)
      throw new PermanentError(`message: is not valid UTF-8 (byte ${firstBad + (bytes === body ? 0 : 3)})`, { field: 'message' });
    throw new PermanentError(`message: is not valid JSON (${(err as Error).message})`, { field: 'message' });
  }
  const badText = notWellFormed(data, '');
  if (badText.length > 0) {
    throw new PermanentError(`invalid request: ${badText.map((f) => `${f || 'message'}: is not valid UTF-8 text`).join('; ')}`, {
      field: badText[0] || 'message',
    });
  }
  if (firstBad >= 0)
    throw new PermanentError(`message: is not valid UTF-8 (byte ${firstBad + (bytes === body ? 0 : 3)})`, { field: 'message' });
  const problems: string[] = [];
  if (!validate(data)) {
    const errs = validate.errors ?? [];
    // A param value fails anyOf as a whole; a too-long string is the one case worth its own words.
    const tooLongParams = new Set(
      errs.filter((e) => e.keyword === 'maxLength' && /^\/params\//.test(e.instancePath)).map((e) => e.instancePath),
    );
    for (const e of errs) {
      // propertyNames reports its sub-errors (minLength, maxLength, pattern) about the key name,
      // with the object's path: the propertyNames line itself says it.
      if (e.propertyName !== undefined) continue;
      // The branches of a param's anyOf: the anyOf line (or the too-long line) says it.
      if (/^\/params\//.test(e.instancePath) && e.keyword !== 'anyOf' && !(e.keyword === 'maxLength' && tooLongParams.has(e.instancePath)))
        continue;
      if (e.keyword === 'anyOf' && tooLongParams.has(e.instancePath)) continue;
      const line = describe(e);
      if (!problems.includes(line)) problems.push(line);
    }
  }
  if (problems.length === 0) {
    const req = data as InferenceRequest;
    const hasUri = req.dataset.uri !== undefined;
    const hasRows = req.dataset.rows !== undefined;
    if (hasUri === hasRows) problems.push('dataset: must have exactly one of uri and rows');
    if (hasRows && req.dataset.format !== undefined) problems.push('dataset.format: is only used with dataset.uri');
  }
  if (problems.length > 0) {
    const first = problems[0] ?? 'message';
    throw new PermanentError(`invalid request: ${problems.join('; ')}`, { field: first.slice(0, first.indexOf(':')) });
  }
  return data as InferenceRequest;
}

/** Length of the valid UTF-8 sequence at `i`, or 0 when the byte there starts none. */
function utf8SequenceAt(b: Buffer, i: number): number {
  const c = b[i] as number;
  if (c < 0x80) return 1;
  const cont = (k: number): boolean => i + k < b.length && ((b[i + k] as number) & 0xc0) === 0x80;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const c1 = b[i + 1] as number;
    // No overlong forms (E0 80..9F) and no surrogates (ED A0..BF).
    if ((c === 0xe0 && c1 < 0xa0) || (c === 0xed && c1 > 0x9f)) return 0;
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const c1 = b[i + 1] as number;
    // No overlong forms (F0 80..8F) and nothing past U+10FFFF (F4 90..).
    if ((c === 0xf0 && c1 < 0x90) || (c === 0xf4 && c1 > 0x8f)) return 0;
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

function firstInvalidUtf8(b: Buffer): number {
  for (let i = 0; i < b.length;) {
    const n = utf8SequenceAt(b, i);
    if (n === 0) return i;
    i += n;
  }
  return -1;
}

/** The text with every byte that is not part of valid UTF-8 written as the JSON escape of U+DFFF. */
function markInvalidUtf8(b: Buffer): string {
  const parts: string[] = [];
  let start = 0;
  for (let i = 0; i < b.length;) {
    const n = utf8SequenceAt(b, i);
    if (n > 0) {
      i += n;
      continue;
    }
    parts.push(b.toString('utf8', start, i), '\\udfff');
    start = ++i;
  }
  parts.push(b.toString('utf8', start));
  return parts.join('');
}

/** Fields (as `tags.owner`, `dataset.rows[2].city`) whose text or key is not well-formed Unicode. */
function notWellFormed(v: unknown, at: string): string[] {
  if (typeof v === 'string') return v.isWellFormed() ? [] : [at];
  if (Array.isArray(v)) return v.flatMap((x, i) => notWellFormed(x, `${at}[${i}]`));
  if (v !== null && typeof v === 'object') {
    return Object.entries(v).flatMap(([k, x]) =>
      k.isWellFormed() ? notWellFormed(x, at ? `${at}.${k}` : k) : [at ? `${at} (a key)` : 'message (a key)'],
    );
  }
  return [];
}
