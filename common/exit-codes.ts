/**
 * Every exit code of `kmj`, in one table. A worker's code says what became of its one message
 * (docs/worker.md; its Job's pod shows it, `kmj status` and the scaler's reports read it); the
 * other commands use the rest, sysexits.h's values where one fits. A command's --help lists the
 * codes it uses.
 */
export const EXIT = {
  /** Done: the worker's message acknowledged (its run FINISHED, now or before), or none came. */
  OK: 0,
  /** A check or step the command reports on failed (kmj setup, doctor, demo); the output says which. */
  FAILED: 1,
  /** Dead-lettered: the request cannot succeed; the reason is in the dead-letter's headers. */
  DEAD_LETTERED: 10,
  /** Requeued: a transient failure outlasted the retries, or the worker was stopped. */
  REQUEUED: 11,
  /** The broker connection was lost while the message was held: the broker requeues it. */
  UNSETTLED: 12,
  /** Bad flags or arguments (EX_USAGE). */
  USAGE: 64,
  /** Input refused before anything was sent, e.g. a request that is not valid (EX_DATAERR). */
  INVALID: 65,
  /** The broker, or another service the command needs, could not be reached (EX_UNAVAILABLE). */
  UNAVAILABLE: 69,
  /** A bug; a worker's message, if any, goes back to the queue when the connection closes (EX_SOFTWARE). */
  INTERNAL: 70,
  /** Gave up waiting, e.g. kmj submit --wait's timeout (EX_TEMPFAIL). */
  TIMEOUT: 75,
  /** Bad settings (EX_CONFIG). */
  CONFIG: 78,
  /** Stopped by Ctrl-C (128 + SIGINT). */
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The codes a worker exits with. */
export const WORKER_EXIT_CODES = [EXIT.OK, EXIT.DEAD_LETTERED, EXIT.REQUEUED, EXIT.UNSETTLED, EXIT.UNAVAILABLE, EXIT.INTERNAL] as const;

export type WorkerExitCode = (typeof WORKER_EXIT_CODES)[number];
