/**
 * The scaler's error classes, one meaning each. The gRPC edge maps them to status codes in one
 * place (scaler/grpc-server.ts); nothing else decides codes. Messages are safe to show to KEDA:
 * they never carry credentials.
 */
import { scrubSecrets } from '../common/redact.ts';

/** Trigger metadata that cannot be used: INVALID_ARGUMENT. Lists every problem at once. */
export class InvalidMetadataError extends Error {
  override readonly name = 'InvalidMetadataError';
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid trigger metadata: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** The thing to measure does not exist (queue, topic, vhost): NOT_FOUND. */
export class BacklogNotFoundError extends Error {
  override readonly name = 'BacklogNotFoundError';
  constructor(message: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
  }
}

/** The broker cannot be read right now, or the snapshot is too old to trust: UNAVAILABLE. */
export class BacklogUnavailableError extends Error {
  override readonly name = 'BacklogUnavailableError';
  constructor(message: string, options?: ErrorOptions) {
    super(scrubSecrets(message), options);
  }
}

export { messageOf } from '../common/redact.ts';
