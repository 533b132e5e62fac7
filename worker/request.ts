/**
 * The request message: JSON, validated against schemas/request-v1.schema.json, plus the checks a
 * schema cannot say clearly. Every problem names its field: `dataset.format: must be one of csv, jsonl`.
 */
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import type { ErrorObject } from 'ajv';
import { packageFile } from '../common/paths.ts';
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
      const mod = (await import(pathToFileURL(packageFile('dist', 'generated', 'request-validator.js')).href)) as { default: RequestValidator };
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
  let data: unknown;
  try {
    data = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new PermanentError(`message: is not valid JSON (${(err as Error).message})`, { field: 'message' });
  }
  const problems: string[] = [];
  if (!validate(data)) {
    const errs = validate.errors ?? [];
    // A param value fails anyOf as a whole; a too-long string is the one case worth its own words.
    const tooLongParams = new Set(errs.filter((e) => e.keyword === 'maxLength' && /^\/params\//.test(e.instancePath)).map((e) => e.instancePath));
    for (const e of errs) {
      // propertyNames reports its sub-errors (minLength, maxLength, pattern) about the key name,
      // with the object's path: the propertyNames line itself says it.
      if (e.propertyName !== undefined) continue;
      // The branches of a param's anyOf: the anyOf line (or the too-long line) says it.
      if (/^\/params\//.test(e.instancePath) && e.keyword !== 'anyOf' && !(e.keyword === 'maxLength' && tooLongParams.has(e.instancePath))) continue;
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
