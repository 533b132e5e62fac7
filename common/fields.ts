/**
 * Declarative parsing of string key/value settings: environment variables, KEDA trigger metadata,
 * CLI flags. Every field is described once (kind, required, default, allowed range) and a whole
 * input is parsed in one pass that collects every problem, so a user fixes them all in one go.
 */
import { scrubSecrets } from './redact.ts';

interface BaseSpec {
  /** One line shown in help text and docs. */
  readonly help?: string;
}

export interface StringSpec extends BaseSpec {
  readonly kind: 'string';
  readonly required?: boolean;
  readonly default?: string;
  readonly pattern?: RegExp;
  /** Says in words what `pattern` allows; used in the error message. */
  readonly patternHint?: string;
  readonly minLength?: number;
  readonly maxLength?: number;
}

export interface EnumSpec<V extends string = string> extends BaseSpec {
  readonly kind: 'enum';
  readonly values: readonly V[];
  readonly required?: boolean;
  readonly default?: V;
}

export interface IntegerSpec extends BaseSpec {
  readonly kind: 'integer';
  readonly required?: boolean;
  readonly default?: number;
  readonly min: number;
  readonly max: number;
  /**
   * A duration in milliseconds or a size in bytes: then "30s", "250ms", "5m" or "512Mi", "1Gi"
   * are accepted beside the bare number, and help and errors show values that way.
   */
  readonly unit?: 'ms' | 'bytes';
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
};

/** Milliseconds from "250ms", "30s", "1.5m", "2h", or a bare number of `bareUnit`s; NaN when it is none. */
export function parseDuration(raw: string, bareUnit: 'ms' | 's' = 'ms'): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(raw.trim());
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * (DURATION_UNITS[m[2] ?? bareUnit] as number));
}

/** Bytes from "512Mi", "1Gi", "10M", "64Ki", or a bare number; NaN when it is none. */
export function parseSize(raw: string): number {
  const m = /^(\d+(?:\.\d+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(raw.trim());
  if (!m) return Number.NaN;
  return Math.round(Number(m[1]) * (SIZE_UNITS[m[2] ?? ''] as number));
}

/** A duration as people write it: "30s", "250ms", "10m", "1h". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** A size as Kubernetes writes it: "512Mi", "1Gi", or bytes. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [
    ['Ti', 1024 ** 4],
    ['Gi', 1024 ** 3],
    ['Mi', 1024 ** 2],
    ['Ki', 1024],
  ] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

function formatInteger(spec: IntegerSpec, n: number): string {
  return spec.unit === 'ms' ? formatDuration(n) : spec.unit === 'bytes' ? formatSize(n) : String(n);
}

export interface NumberSpec extends BaseSpec {
  readonly kind: 'number';
  readonly required?: boolean;
  readonly default?: number;
  readonly min: number;
  /** When true, `min` itself is not allowed (e.g. a target size must be > 0). */
  readonly exclusiveMin?: boolean;
  readonly max?: number;
}

export interface BooleanSpec extends BaseSpec {
  readonly kind: 'boolean';
  readonly default?: boolean;
  readonly required?: boolean;
}

export interface UrlSpec extends BaseSpec {
  readonly kind: 'url';
  /** Allowed schemes without the colon, e.g. ['http', 'https']. */
  readonly protocols: readonly string[];
  readonly required?: boolean;
  readonly default?: string;
}

export type FieldSpec = StringSpec | EnumSpec | IntegerSpec | NumberSpec | BooleanSpec | UrlSpec;
export type FieldSpecs = Readonly<Record<string, FieldSpec>>;

type ValueOf<S extends FieldSpec> = S extends IntegerSpec | NumberSpec
  ? number
  : S extends BooleanSpec
    ? boolean
    : S extends EnumSpec<infer V>
      ? V
      : string;

type Present<S extends FieldSpec> = S extends { readonly required: true } ? true : S extends { readonly default: unknown } ? true : false;

/** The typed result of parsing `T`: required or defaulted fields are always set. */
export type Parsed<T extends FieldSpecs> = {
  readonly [K in keyof T]: Present<T[K]> extends true ? ValueOf<T[K]> : ValueOf<T[K]> | undefined;
};

export type RawInput = Readonly<Record<string, string | undefined>>;

/**
 * What a parse or check gives back: its value and every problem it found, each naming the
 * setting or key. The value is meaningful only when `problems` is empty. Parsers return this
 * rather than push onto a list they are handed, so each one can be read and tested alone and the
 * caller decides how problems combine.
 */
export interface Checked<T> {
  readonly value: T;
  readonly problems: readonly string[];
}

export interface ParseOptions {
  /** How a key is named in messages, e.g. the env var name for a config field. */
  readonly nameOf?: (key: string) => string;
  /** Where to read each key in `input`; defaults to the key itself. */
  readonly sourceKeyOf?: (key: string) => string;
}

/** Quotes a value for an error message, with credentials in URLs removed. */
export function quote(value: string): string {
  const shown = value.length > 200 ? `${value.slice(0, 200)}…` : value;
  return JSON.stringify(scrubSecrets(shown));
}

/** One value, or what is wrong with it (naming the setting as `name`). */
function parseOne(spec: FieldSpec, raw: string, name: string): { value: unknown } | { problem: string } {
  switch (spec.kind) {
    case 'string': {
      if (spec.maxLength !== undefined && raw.length > spec.maxLength) {
        return { problem: `${name}: must be at most ${spec.maxLength} characters, got ${raw.length}` };
      }
      if (spec.minLength !== undefined && raw.length < spec.minLength) {
        return { problem: `${name}: must be at least ${spec.minLength} characters, got ${raw.length}` };
      }
      if (spec.pattern && !spec.pattern.test(raw)) {
        return { problem: `${name}: ${quote(raw)} must be ${spec.patternHint ?? `a string matching ${String(spec.pattern)}`}` };
      }
      return { value: raw };
    }
    case 'enum': {
      if (!spec.values.includes(raw)) {
        return { problem: `${name}: ${quote(raw)} must be one of ${spec.values.join(', ')}` };
      }
      return { value: raw };
    }
    case 'integer': {
      const trimmed = raw.trim();
      const n = /^-?\d+$/.test(trimmed)
        ? Number(trimmed)
        : spec.unit === 'ms'
          ? parseDuration(trimmed)
          : spec.unit === 'bytes'
            ? parseSize(trimmed)
            : Number.NaN;
      if (!Number.isSafeInteger(n) || n < spec.min || n > spec.max) {
        const what = spec.unit === 'ms' ? 'a duration' : spec.unit === 'bytes' ? 'a size' : 'an integer';
        const example =
          spec.unit === 'ms' ? ' (e.g. 30s, 250ms, 5m, or milliseconds)' : spec.unit === 'bytes' ? ' (e.g. 512Mi, 1Gi, or bytes)' : '';
        return {
          problem: `${name}: ${quote(raw)} must be ${what} from ${formatInteger(spec, spec.min)} to ${formatInteger(spec, spec.max)}${example}`,
        };
      }
      return { value: n };
    }
    case 'number': {
      const trimmed = raw.trim();
      const n = trimmed === '' ? Number.NaN : Number(trimmed);
      const belowMin = spec.exclusiveMin ? n <= spec.min : n < spec.min;
      if (!Number.isFinite(n) || belowMin || (spec.max !== undefined && n > spec.max)) {
        const lower = spec.exclusiveMin ? `greater than ${spec.min}` : `at least ${spec.min}`;
        const upper = spec.max !== undefined ? ` and at most ${spec.max}` : '';
        return { problem: `${name}: ${quote(raw)} must be a number ${lower}${upper}` };
      }
      return { value: n };
    }
    case 'boolean': {
      const v = raw.trim().toLowerCase();
      if (v === 'true' || v === '1' || v === 'yes') return { value: true };
      if (v === 'false' || v === '0' || v === 'no') return { value: false };
      return { problem: `${name}: ${quote(raw)} must be true or false` };
    }
    case 'url': {
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        return { problem: `${name}: ${quote(raw)} must be a ${spec.protocols.join(' or ')} URL` };
      }
      if (!spec.protocols.includes(url.protocol.replace(/:$/, ''))) {
        return { problem: `${name}: ${quote(raw)} must be a ${spec.protocols.join(' or ')} URL` };
      }
      return { value: raw };
    }
  }
}

/**
 * Parses `input` against `specs`. Returns the typed values and the list of problems; the values
 * are only meaningful when `problems` is empty. An empty string counts as "not set".
 */
export function parseFields<T extends FieldSpecs>(
  specs: T,
  input: RawInput,
  options: ParseOptions = {},
): { values: Parsed<T>; problems: string[] } {
  const nameOf = options.nameOf ?? ((k: string) => k);
  const sourceKeyOf = options.sourceKeyOf ?? ((k: string) => k);
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    const raw = input[sourceKeyOf(key)];
    const name = nameOf(key);
    if (raw === undefined || raw === '') {
      if (spec.default !== undefined) values[key] = spec.default;
      else if (spec.required) problems.push(`${name}: is required`);
      continue;
    }
    const parsed = parseOne(spec, raw, name);
    if ('problem' in parsed) problems.push(parsed.problem);
    else values[key] = parsed.value;
  }
  return { values: values as Parsed<T>, problems };
}

/** One line per field for help text: `  NAME  help (default: x)`. */
export function describeFields(specs: FieldSpecs, nameOf: (key: string) => string = (k) => k): string {
  const rows = Object.entries(specs).map(([key, spec]) => {
    const allowed = spec.kind === 'enum' ? ` [${spec.values.join('|')}]` : '';
    const shown = spec.kind === 'integer' && spec.default !== undefined ? formatInteger(spec, spec.default) : String(spec.default);
    const dflt = spec.default !== undefined ? ` (default: ${scrubSecrets(shown)})` : spec.required ? ' (required)' : '';
    return [nameOf(key), `${spec.help ?? ''}${allowed}${dflt}`] as const;
  });
  const width = Math.max(0, ...rows.map(([n]) => n.length));
  return rows.map(([n, text]) => `  ${n.padEnd(width)}  ${text}`).join('\n');
}
