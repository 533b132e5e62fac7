/**
 * Reads a component's settings once, at start-up, from the environment and command-line flags,
 * into a frozen typed object. A bad setting fails start-up with one error listing every problem;
 * nothing is silently corrected. Only the CLI passes `process.env` in: nothing else reads it.
 */
import { readFileSync } from 'node:fs';
import { parseFields, type Checked, type FieldSpecs, type Parsed, type RawInput } from './fields.ts';
import { messageOf } from './redact.ts';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly problems: readonly string[];
  constructor(component: string, problems: readonly string[]) {
    super(`invalid ${component} configuration: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** A flag given on the command line that overrides the env var `key`. */
export interface FlagOverride {
  readonly flag: string;
  readonly value: string;
}

/** Settings parsed from the environment and flags: the typed values, every problem, and the raw strings (for checks that read files). */
export interface ParsedSettings<T extends FieldSpecs> {
  readonly values: Parsed<T>;
  readonly problems: readonly string[];
  /** Each key's string as given, the flag's when a flag gave it. */
  readonly raw: RawInput;
  /** How a key is named in problems: the flag when the value came from one, the env var otherwise. */
  readonly nameOf: (key: string) => string;
}

/**
 * Parses `specs` (keyed by env var name) from `env`, with `flags` taking precedence. Throws
 * nothing: a component's loader adds its own checks' problems (cross-field rules, files to read)
 * and then calls `failOnProblems` once, so every problem is listed together.
 */
export function parseSettings<T extends FieldSpecs>(
  specs: T,
  env: RawInput,
  flags: Readonly<Record<string, FlagOverride | undefined>> = {},
): ParsedSettings<T> {
  const raw: Record<string, string | undefined> = {};
  for (const key of Object.keys(specs)) raw[key] = flags[key]?.value ?? env[key];
  const nameOf = (key: string): string => flags[key]?.flag ?? key;
  const { values, problems } = parseFields(specs, raw, { nameOf });
  return { values, problems, raw, nameOf };
}

/** Throws one ConfigError listing every problem of `lists`, in order; returns when there are none. */
export function failOnProblems(component: string, ...lists: ReadonlyArray<readonly string[]>): void {
  const problems = lists.flat();
  if (problems.length > 0) throw new ConfigError(component, problems);
}

/** Parses `specs` as `parseSettings` does and fails on any problem: for settings with no rules across fields. */
export function readConfig<T extends FieldSpecs>(
  component: string,
  specs: T,
  env: RawInput,
  flags: Readonly<Record<string, FlagOverride | undefined>> = {},
): Parsed<T> {
  const { values, problems } = parseSettings(specs, env, flags);
  failOnProblems(component, problems);
  return Object.freeze(values);
}

/** Reads the file a setting names; when it cannot, the problem names the setting (the value is then undefined). */
export function readSettingFile(setting: string, path: string): Checked<Buffer | undefined> {
  try {
    return { value: readFileSync(path), problems: [] };
  } catch (err) {
    return { value: undefined, problems: [`${setting}: cannot read ${JSON.stringify(path)}: ${messageOf(err)}`] };
  }
}
