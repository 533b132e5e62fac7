/**
 * The delivery contract between a broker's consumer and the pipeline. A consumer
 * (rabbitmq-consumer.ts, kafka-consumer.ts) takes messages from its broker, hands each one's body
 * and DeliveryInfo to the Handler (the pipeline's handleDelivery), settles the message as the
 * Outcome says (ack, requeue, dead-letter: each broker's own way) and returns the exit code
 * (common/exit-codes.ts). The pipeline knows no broker; a consumer decides nothing about a
 * request.
 */
import type { Logger } from '../common/log.ts';
import type { WorkerExitCode } from '../common/exit-codes.ts';
import type { WorkerConfig, WorkerInput } from './config.ts';

/** What the pipeline is told of a message besides its body. */
export interface DeliveryInfo {
  /** 1 for the first delivery of this message. */
  readonly attempt: number;
  /** The queue or topic it came from (the name the run is tagged with). */
  readonly queue: string;
  /**
   * The broker does not count deliveries that died (Kafka: the attempt is a header the worker
   * writes when it requeues). Then a run left RUNNING by a killed attempt counts too: the attempt
   * is at least that run's attempt + 1, so a record that keeps killing its worker reaches the
   * delivery limit. (A quorum queue counts every delivery itself.)
   */
  readonly attemptsFromRun?: boolean;
}

/** What the consumer must do with the message. */
export interface Outcome {
  readonly action: 'ack' | 'requeue' | 'dead-letter';
  /** Why, for logs, dead-letter headers and exit reporting. */
  readonly reason?: string;
  readonly field?: string;
  readonly requestId?: string;
  readonly runId?: string;
  /** True when a FINISHED run already existed and nothing was run. */
  readonly alreadyFinished?: boolean;
  /** How long loading the model took, when it was loaded (the worker's report, worker/report.ts). */
  readonly modelLoadSeconds?: number;
  /** Of that: getting its files (resolving, checking, fetching), then opening them. */
  readonly modelFetchSeconds?: number;
  readonly modelOpenSeconds?: number;
}

/** Runs one message's request and says how to settle it; never throws. */
export type Handler = (body: Buffer, delivery: DeliveryInfo) => Promise<Outcome>;

/** What a consumer is given: its broker's input, the worker's settings, and the handler. */
export interface ConsumeOptions<I extends WorkerInput = WorkerInput> {
  readonly input: I;
  readonly config: WorkerConfig;
  readonly log: Logger;
  /** Aborted on SIGTERM: stop taking messages, settle the one in hand. */
  readonly shutdown: AbortSignal;
  readonly handle: Handler;
}

/** A broker's consumer: takes its messages, settles each as the handler says, returns the exit code. */
export type Consume<I extends WorkerInput> = (options: ConsumeOptions<I>) => Promise<WorkerExitCode>;
