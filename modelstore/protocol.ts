/**
 * The node cache's HTTP contract (docs/models.md): the node cache (nodecache/) serves it, the
 * worker (worker/model/node-cache.ts) asks it. One node cache runs on each node (a DaemonSet);
 * workers reach the one on their own node through a Service with `internalTrafficPolicy: Local`.
 *
 *   GET /v1/model?key=<cache key>&uri=<mlflow-artifacts: URI>[&origin=<origin>]
 *     → 200 ModelListing: the copy of `key` fetched from `uri`, fetched from MLflow first when
 *       the node has none (or has one of another origin). 400 names the bad parameter; 401 a
 *       missing or wrong token; 502 MLflow's failure; 507 a model larger than the cache's bound,
 *       or no room on its disk.
 *   GET /v1/file?key=<cache key>&id=<copy id>&path=<file>
 *     → 200 the file's bytes; 404 when that copy is gone (evicted or replaced) or has no such file.
 *
 * Every request carries `Authorization: Bearer <token>`: the node cache reads MLflow with its own
 * credentials, and must serve only the workers (who hold the same token as a Secret).
 */

import { FieldError, jsonObject } from '../common/errors.ts';

export const NODE_CACHE_MODEL_PATH = '/v1/model';
export const NODE_CACHE_FILE_PATH = '/v1/file';

export interface ListedFile {
  readonly path: string;
  readonly size: number;
  /** Hex SHA-256 of the bytes, computed when the node cache fetched the file. */
  readonly sha256: string;
}

export interface ModelListing {
  readonly version: 1;
  readonly key: string;
  readonly artifactUri: string;
  readonly origin?: string;
  /** The copy: a file request names it, so a copy replaced meanwhile is never mixed with another. */
  readonly id: string;
  readonly files: readonly ListedFile[];
}

/** A cache key: relative path segments of safe characters, no `.` or `..` segment. */
const KEY = /^(?!.*(?:^|\/)\.{1,2}(?:\/|$))[A-Za-z0-9%._-]+(?:\/[A-Za-z0-9%._-]+)*$/;
const SHA256 = /^[0-9a-f]{64}$/;

export function isCacheKey(key: string): boolean {
  return key.length <= 1024 && KEY.test(key);
}

/** A file path inside a model directory: relative, no `.` or `..` segment, no empty segment. */
export function isModelFilePath(path: string): boolean {
  return (
    path.length > 0 && path.length <= 1024 && !path.startsWith('/') && path.split('/').every((p) => p !== '' && p !== '.' && p !== '..')
  );
}

/** A listing that is not one; `field` names what is wrong. */
export class ListingError extends FieldError {
  override readonly name = 'ListingError';
}

/** Parses the node cache's answer to a model request. */
export function parseModelListing(text: string): ModelListing {
  const o = jsonObject(text, (field, message) => new ListingError(field, message));
  if (o['version'] !== 1) throw new ListingError('version', 'must be 1');
  const str = (field: string): string => {
    const x = o[field];
    if (typeof x !== 'string' || x === '') throw new ListingError(field, 'must be a non-empty string');
    return x;
  };
  const key = str('key');
  const artifactUri = str('artifactUri');
  const id = str('id');
  const origin = o['origin'];
  if (origin !== undefined && typeof origin !== 'string') throw new ListingError('origin', 'must be a string');
  const rawFiles = o['files'];
  if (!Array.isArray(rawFiles) || rawFiles.length === 0) throw new ListingError('files', 'must be a non-empty array');
  const files = rawFiles.map((f: unknown, i): ListedFile => {
    const e = (f ?? {}) as Record<string, unknown>;
    const path = e['path'];
    const size = e['size'];
    const sha256 = e['sha256'];
    if (typeof path !== 'string' || !isModelFilePath(path))
      throw new ListingError(`files[${i}].path`, 'must be a relative path without . or .. parts');
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0)
      throw new ListingError(`files[${i}].size`, 'must be a whole number of bytes');
    if (typeof sha256 !== 'string' || !SHA256.test(sha256)) throw new ListingError(`files[${i}].sha256`, 'must be 64 lowercase hex digits');
    return { path, size, sha256 };
  });
  return { version: 1, key, artifactUri, id, files, ...(typeof origin === 'string' ? { origin } : {}) };
}
