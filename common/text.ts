/**
 * A value from outside (a dataset cell, a model output) as text: strings as they are, numbers,
 * booleans and bigints as JavaScript writes them, objects and arrays as JSON (never
 * "[object Object]"), missing values as the empty string.
 */
export function textOf(v: unknown): string {
  switch (typeof v) {
    case 'string':
      return v;
    case 'number':
    case 'boolean':
    case 'bigint':
      return String(v);
    case 'undefined':
      return '';
    case 'object':
      return v === null ? '' : JSON.stringify(v);
    default:
      return '';
  }
}
