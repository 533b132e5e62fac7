/**
 * A benchmark's options, read from the environment once with the project's field specs
 * (common/fields.ts): a value out of range or misspelled stops the bench before it sets anything
 * up, naming the variable, instead of turning into NaN halfway through a run.
 */
import { parseFields, type FieldSpecs, type Parsed } from '../common/fields.ts';

export function benchOptions<T extends FieldSpecs>(bench: string, specs: T, env: NodeJS.ProcessEnv = process.env): Parsed<T> {
  const { values, problems } = parseFields(specs, env);
  if (problems.length > 0) throw new Error(`invalid ${bench} options: ${problems.join('; ')}`);
  return Object.freeze(values);
}

/** A comma-separated list of positive integers ("10,100"). */
export const INTEGER_LIST = { pattern: /^\d+(,\d+)*$/, patternHint: 'positive integers separated by commas' } as const;

/** A comma-separated list of some of `values` ("kafka,both"): a string spec's pattern and its hint. */
export function listOf(values: readonly string[]): { readonly pattern: RegExp; readonly patternHint: string } {
  const one = `(${values.join('|')})`;
  return { pattern: new RegExp(`^${one}(,${one})*$`), patternHint: `some of ${values.join(', ')}, separated by commas` };
}

/** The integers of an INTEGER_LIST value. */
export function integers(list: string): number[] {
  return list.split(',').map(Number);
}

/** The Node flags of the scaler's container (manifests/scaler.yaml): bench-scaler and bench-kafka run it so. */
export const SCALER_NODE_ARGS_SPEC = {
  kind: 'string',
  default: '--max-semi-space-size=2 --max-old-space-size=64',
  help: "Node flags of the scaler process (its container's)",
} as const;
