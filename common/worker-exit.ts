/**
 * The worker's exit codes: how a `kmj worker` process, and so its Job's pod, says what became of
 * its one message (docs/worker.md). The worker sets them; `kmj status` and the tests read them.
 */
export const EXIT = {
  /** Acknowledged (the run FINISHED, now or before), or no message within the idle timeout. */
  OK: 0,
  /** Dead-lettered: the request cannot succeed; the reason is in the dead-letter's headers. */
  DEAD_LETTERED: 10,
  /** Requeued: a transient failure outlasted the retries, or the worker was stopped. */
  REQUEUED: 11,
  /** The broker connection was lost while the message was held: the broker requeues it. */
  UNSETTLED: 12,
  /** The broker could not be reached at start; nothing was consumed. */
  BROKER_UNAVAILABLE: 69,
  /** A bug; the message, if any, goes back to the queue when the connection closes. */
  INTERNAL: 70,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];
