/**
 * The error classes more than one component throws, one meaning each.
 *
 * The worker's two: every failure in the pipeline ends up as one of
 * them, and the consumer turns them into the settle: PermanentError dead-letters the message (never
 * retried), TransientError requeues it after in-process retries. Messages are safe to log and to put
 * in message headers and MLflow tags: they never carry credentials.
 */
import { scrubSecrets } from './redact.ts';

/** The request cannot succeed as it is: bad request, unknown model, unreadable dataset, input mismatch. */
export class PermanentError extends Error {
  override readonly name = 'PermanentError';
  /** The request field the problem is about, e.g. "dataset.uri", when there is one. */
  readonly field: string | undefined;
  constructor(message: string, options?: ErrorOptions & { field?: string }) {
    super(scrubSecrets(message), options);
    this.field = options?.field;
  }
}

/** Might succeed later: MLflow 5xx or 429, timeouts, network trouble, the broker going away. */
export class TransientError extends Error {
  override readonly name = 'TransientError';
  /**
   * Whether retrying inside this process can help. False for problems only an operator fixes
   * (MLflow refusing our credentials): the message is requeued at once.
   */
  readonly retryInProcess: boolean;
  constructor(message: string, options?: ErrorOptions & { retryInProcess?: boolean }) {
    super(scrubSecrets(message), options);
    this.retryInProcess = options?.retryInProcess ?? true;
  }
}

/** Something asked for by name does not exist (a queue, a ScaledJob): "not found", not "unreachable". */
export class NotFoundError extends Error {
  override readonly name: string = 'NotFoundError';
  constructor(message: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
  }
}

/** The thing to measure or read does not exist (queue, topic, vhost): the scaler answers NOT_FOUND. */
export class BacklogNotFoundError extends NotFoundError {
  override readonly name = 'BacklogNotFoundError';
}

/** The broker cannot be read right now, or the scaler's snapshot is too old to trust: UNAVAILABLE. */
export class BacklogUnavailableError extends Error {
  override readonly name = 'BacklogUnavailableError';
  constructor(message: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
  }
}

export { messageOf } from './redact.ts';

/**
 * A document from another process (a worker's report, the node cache's listing) that is not what
 * it should be; `field` names what is wrong, and the message starts with it.
 */
export class FieldError extends Error {
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

/**
 * The JSON object `text` holds; otherwise the error `fail` makes for the field `body` (the
 * document's own FieldError class).
 */
export function jsonObject(text: string, fail: (field: string, message: string) => FieldError): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw fail('body', 'is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail('body', 'must be a JSON object');
  return v as Record<string, unknown>;
}
