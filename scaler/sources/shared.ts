/**
 * What every source does the same way. Connection aliases: the scaler's configuration names its
 * broker connections (credentials included), and a trigger picks one with `connection`;
 * credentials never travel in trigger metadata. Metric names: a readable stem from the queue or
 * group name.
 */
import { quote } from '../../common/fields.ts';

/** A broker connection alias, as the scaler's configuration names them and triggers refer to them. */
export const CONNECTION_ALIAS = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

/** The `connection` trigger-metadata field. */
export const CONNECTION_FIELD = {
  kind: 'string',
  default: 'default',
  pattern: CONNECTION_ALIAS,
  patternHint: 'a connection alias of lowercase letters, digits, ".", "_" and "-"',
  help: "broker connection alias from the scaler's configuration",
} as const;

/** The problem of a trigger naming an alias this source has no connection for. */
export function unknownConnection(alias: string, known: ReadonlyMap<string, unknown>): string {
  const names = [...known.keys()].join(', ') || 'none';
  return `connection: ${quote(alias)} is not a connection the scaler knows for this source (configured: ${names})`;
}

/**
 * `<prefix>-<text>` in lowercase [a-z0-9-], `text` cut to 40 characters, `fallback` when nothing
 * of it is left (the stem of a metric name).
 */
export function metricStem(prefix: string, text: string, fallback: string): string {
  const s = text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return `${prefix}-${s.slice(0, 40).replace(/-+$/, '') || fallback}`;
}
