/**
 * Reads a component's settings once, at start-up, from the environment and command-line flags,
 * into a frozen typed object. A bad setting fails start-up with one error listing every problem;
 * nothing is silently corrected. Only the CLI passes `process.env` in: nothing else reads it.
 */
import { readFileSync } from 'node:fs';
import { parseFields, type FieldSpecs, type Parsed, type RawInput } from './fields.ts';
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

/**
 * Parses `specs` (keyed by env var name) from `env`, with `flags` taking precedence. Problems
 * name the flag when the value came from one, the env var otherwise. `alwaysChecks` runs on the
 * raw values whatever else is wrong (reading the files settings point to, say), so its problems
 * are listed with the others; `extraChecks` runs only when every field parsed, for cross-field
 * rules that need typed values.
 */
export function readConfig<T extends FieldSpecs>(
  component: string,
  specs: T,
  env: RawInput,
  flags: Readonly<Record<string, FlagOverride | undefined>> = {},
  extraChecks?: (values: Parsed<T>, problems: string[]) => void,
  alwaysChecks?: (raw: RawInput, problems: string[]) => void,
): Parsed<T> {
  const merged: Record<string, string | undefined> = {};
  for (const key of Object.keys(specs)) merged[key] = flags[key]?.value ?? env[key];
  const { values, problems } = parseFields(specs, merged, { nameOf: (key) => flags[key]?.flag ?? key });
  alwaysChecks?.(merged, problems);
  if (problems.length === 0 && extraChecks) extraChecks(values, problems);
  if (problems.length > 0) throw new ConfigError(component, problems);
  return Object.freeze(values);
}

/** Reads the file a setting names; when it cannot, adds the problem (naming the setting) and returns undefined. */
export function readSettingFile(setting: string, path: string, problems: string[]): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (err) {
    problems.push(`${setting}: cannot read ${JSON.stringify(path)}: ${messageOf(err)}`);
    return undefined;
  }
}
