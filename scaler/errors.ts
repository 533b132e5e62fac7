/**
 * The scaler's own error class; BacklogNotFoundError and BacklogUnavailableError, shared with the
 * RabbitMQ inspection and the CLI, are in common/errors.ts. The gRPC edge maps them all to status
 * codes in one place (scaler/grpc-server.ts); nothing else decides codes. Messages are safe to
 * show to KEDA: they never carry credentials.
 */

/** Trigger metadata that cannot be used: INVALID_ARGUMENT. Lists every problem at once. */
export class InvalidMetadataError extends Error {
  override readonly name = 'InvalidMetadataError';
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(`invalid trigger metadata: ${problems.join('; ')}`);
    this.problems = problems;
  }
}
