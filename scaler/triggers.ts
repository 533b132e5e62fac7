/**
 * Turns a trigger's `scalerMetadata` into a compiled trigger: the backlog target, the metric name
 * and the scaling thresholds. Parsing happens once per distinct metadata (cached by its canonical
 * form), never inside every RPC.
 *
 * Rules, KEDA style:
 * - every problem is reported at once, each naming the key, the bad value and what is allowed;
 * - KEDA's own keys (`scalerAddress`, `enableTLS`, `unsafeSsl`) are accepted and ignored;
 * - `<key>FromEnv` is the same as `<key>`: KEDA resolves it from the workload's environment and
 *   passes the value under the original key name;
 * - an unknown key is an error (it is almost always a typo of a real one);
 * - a value that carries a credential is refused without echoing it: credentials live in the
 *   scaler's own configuration and are picked with `connection`.
 */
import { createHash } from 'node:crypto';
import { parseFields, type Checked, type FieldSpecs, type RawInput } from '../common/fields.ts';
import { looksSecret } from '../common/redact.ts';
import { InvalidMetadataError } from './errors.ts';
import type { BacklogSource, BacklogTarget } from './sources/source.ts';
import { DEFAULT_SOURCE } from './sources/registry.ts';

export interface CompiledTrigger {
  readonly metricName: string;
  readonly targetSize: number;
  readonly activationThreshold: number;
  readonly target: BacklogTarget;
}

const KEDA_KEYS: ReadonlySet<string> = new Set(['scalerAddress', 'enableTLS', 'unsafeSsl']);

function commonFields(sourceNames: readonly string[]) {
  return {
    source: { kind: 'enum', values: sourceNames, default: DEFAULT_SOURCE, help: 'backlog source' },
    targetSize: { kind: 'number', min: 0, exclusiveMin: true, default: 1, help: 'backlog per Job (ScaledJob) or per replica' },
    activationThreshold: { kind: 'number', min: 0, default: 0, help: 'active when the backlog is above this' },
  } as const satisfies FieldSpecs;
}

/**
 * Canonical text of a metadata map: same map, same text, whatever the key order; different maps,
 * different texts (the entries are JSON-encoded, so no key or value can imitate a separator).
 */
export function canonicalMetadata(metadata: Readonly<Record<string, string>>): string {
  return JSON.stringify(
    Object.keys(metadata)
      .sort()
      .map((k) => [k, metadata[k] ?? '']),
  );
}

/** Bounds the cache against a client that sends endless distinct metadata. */
const MAX_CACHED = 10_000;

export class TriggerCompiler {
  readonly #sources: ReadonlyMap<string, BacklogSource>;
  readonly #common: ReturnType<typeof commonFields>;
  readonly #cache = new Map<string, CompiledTrigger | InvalidMetadataError>();

  constructor(sources: ReadonlyMap<string, BacklogSource>) {
    this.#sources = sources;
    this.#common = commonFields([...sources.keys()]);
  }

  /** The compiled trigger for this metadata; throws InvalidMetadataError listing every problem. */
  compile(metadata: Readonly<Record<string, string>>): CompiledTrigger {
    const key = canonicalMetadata(metadata);
    let hit = this.#cache.get(key);
    if (hit === undefined) {
      hit = this.#compileFresh(metadata, key);
      if (this.#cache.size >= MAX_CACHED) this.#cache.clear();
      this.#cache.set(key, hit);
    }
    if (hit instanceof InvalidMetadataError) throw hit;
    return hit;
  }

  #compileFresh(metadata: Readonly<Record<string, string>>, canonical: string): CompiledTrigger | InvalidMetadataError {
    const resolved = this.#resolveFromEnv(metadata);
    const source = this.#sources.get(resolved.value.raw['source'] ?? DEFAULT_SOURCE);
    const renaming = source
      ? this.#thresholdsOf(resolved.value.raw, source)
      : { value: { raw: resolved.value.raw, renamed: new Map<string, string>() }, problems: [] };
    const { raw, renamed } = renaming.value;
    const { values, problems: common } = parseFields(this.#common, raw, { nameOf: (k) => renamed.get(k) ?? k });
    // With a bad threshold the source is still compiled, for its own problems.
    const thresholds = { targetSize: values.targetSize || 1, activationThreshold: values.activationThreshold || 0 };
    const compiled = source?.compile(raw, thresholds);
    const refused = resolved.value.refused;
    const problems = [
      ...resolved.problems,
      ...renaming.problems,
      ...common,
      ...(source ? this.#unknownKeys(raw, source) : []),
      // A refused credential already has its problem; "is required" for the same key adds nothing.
      ...(compiled?.problems ?? []).filter((p) => ![...refused].some((k) => p === `${k}: is required`)),
    ];
    const target = compiled?.value;
    if (problems.length > 0 || !target) return new InvalidMetadataError(problems.length > 0 ? problems : ['no backlog target']);
    const hash = createHash('sha256').update(canonical).digest('hex').slice(0, 10);
    return {
      metricName: `${target.metricStem}-${hash}`,
      targetSize: values.targetSize,
      activationThreshold: values.activationThreshold,
      target,
    };
  }

  /** Maps `xFromEnv` to `x`; refuses values carrying credentials (`refused`: the keys whose values were refused). */
  #resolveFromEnv(metadata: Readonly<Record<string, string>>): Checked<{ raw: RawInput; refused: ReadonlySet<string> }> {
    const out: Record<string, string> = {};
    const problems: string[] = [];
    const refused = new Set<string>();
    for (const [key, value] of Object.entries(metadata)) {
      const base = key.endsWith('FromEnv') ? key.slice(0, -'FromEnv'.length) : key;
      if (looksSecret(value)) {
        problems.push(
          `${key}: credentials are not accepted in trigger metadata; configure them in the scaler and select them with "connection"`,
        );
        refused.add(base);
        continue;
      }
      if (base !== key && metadata[base] !== undefined) {
        problems.push(`${key}: set either ${base} or ${key}, not both`);
        continue;
      }
      out[base] = value;
    }
    return { value: { raw: out, refused }, problems };
  }

  /**
   * A source's own names for the thresholds (Kafka's lagThreshold) become the common keys;
   * `renamed` maps a common key to the key the user wrote, for problems to name.
   */
  #thresholdsOf(raw: RawInput, source: BacklogSource): Checked<{ raw: RawInput; renamed: ReadonlyMap<string, string> }> {
    const renamed = new Map<string, string>();
    const names = source.thresholdKeys;
    if (!names) return { value: { raw, renamed }, problems: [] };
    const out: Record<string, string | undefined> = { ...raw };
    const problems: string[] = [];
    for (const [common, own] of [
      ['targetSize', names.targetSize],
      ['activationThreshold', names.activationThreshold],
    ] as const) {
      const value = raw[own];
      if (value === undefined) continue;
      if (raw[common] !== undefined) problems.push(`${own}: set either ${own} or ${common}, not both`);
      out[common] = value;
      renamed.set(common, own);
      delete out[own];
    }
    return { value: { raw: out, renamed }, problems };
  }

  /** A problem for each key that is neither common, the source's own, nor KEDA's. */
  #unknownKeys(raw: RawInput, source: BacklogSource): string[] {
    const own = source.thresholdKeys ? [source.thresholdKeys.targetSize, source.thresholdKeys.activationThreshold] : [];
    const allowed = new Set([...Object.keys(this.#common), ...own, ...Object.keys(source.fields)]);
    return Object.keys(raw)
      .filter((key) => !allowed.has(key) && !KEDA_KEYS.has(key))
      .map((key) => `${key}: unknown key; allowed keys are ${[...allowed].sort().join(', ')}`);
  }
}
