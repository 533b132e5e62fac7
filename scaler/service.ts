/**
 * What the external scaler answers, without any gRPC: the transport lives in grpc-server.ts.
 * Every method takes the trigger's scalerMetadata and answers from the snapshot store; `owner`
 * is the ScaledJob (or ScaledObject) KEDA names in the call, for kmj_scaler_target_info.
 */
import { BacklogNotFoundError } from '../common/errors.ts';
import type { SnapshotEvent, SnapshotStore, TargetOwner } from './snapshots.ts';
import type { BacklogReading } from './sources/source.ts';
import type { CompiledTrigger, TriggerCompiler } from './triggers.ts';

export interface MetricSpecAnswer {
  readonly metricName: string;
  readonly targetSize: number;
  readonly targetSizeFloat: number;
}

export interface MetricValueAnswer {
  readonly metricName: string;
  readonly metricValue: number;
  readonly metricValueFloat: number;
}

export type Metadata = Readonly<Record<string, string>>;

export class ExternalScalerService {
  readonly #triggers: TriggerCompiler;
  readonly #store: SnapshotStore;

  constructor(triggers: TriggerCompiler, store: SnapshotStore) {
    this.#triggers = triggers;
    this.#store = store;
  }

  /** Exactly one metric spec per trigger. Needs no broker; registers the target for refresh. */
  getMetricSpec(metadata: Metadata, owner?: TargetOwner): MetricSpecAnswer[] {
    const t = this.#triggers.compile(metadata);
    this.#store.want(t.target, owner);
    // The deprecated integer is what KEDA uses when the float is 0; a fractional size rounds up.
    return [{ metricName: t.metricName, targetSize: Math.max(1, Math.ceil(t.targetSize)), targetSizeFloat: t.targetSize }];
  }

  async getMetrics(metadata: Metadata, metricName: string, owner?: TargetOwner): Promise<MetricValueAnswer[]> {
    const t = this.#triggers.compile(metadata);
    checkMetricName(t, metricName);
    const reading = await this.#store.read(t.target, owner);
    // Both fields carry the value: KEDA reads the float only when it is above 0.
    return [{ metricName: t.metricName, metricValue: Math.ceil(reading.value), metricValueFloat: reading.value }];
  }

  async isActive(metadata: Metadata, owner?: TargetOwner): Promise<boolean> {
    const t = this.#triggers.compile(metadata);
    const reading = await this.#store.read(t.target, owner);
    return activityOf(reading) > t.activationThreshold;
  }

  /**
   * Follows a trigger's activity: `onActive` gets the current state at once (or as soon as the
   * first read lands), then each change; `onError` gets the first error, after which the
   * subscription is over. Returns the function that ends it.
   */
  watchActive(metadata: Metadata, onActive: (active: boolean) => void, onError: (err: Error) => void): () => void {
    const t = this.#triggers.compile(metadata);
    let last: boolean | undefined;
    let done = false;
    let unsubscribe: () => void = () => undefined;
    const listener = (event: SnapshotEvent): void => {
      if (done) return;
      if ('error' in event) {
        done = true;
        unsubscribe();
        onError(event.error);
        return;
      }
      const active = activityOf(event.reading) > t.activationThreshold;
      if (active !== last) {
        last = active;
        onActive(active);
      }
    };
    unsubscribe = this.#store.subscribe(t.target, listener);
    if (done) unsubscribe();
    return () => {
      done = true;
      unsubscribe();
    };
  }
}

/** KEDA sends back the name from GetMetricSpec, without its own `sN-` trigger-index prefix. */
function checkMetricName(t: CompiledTrigger, metricName: string): void {
  if (metricName === '' || metricName === t.metricName) return;
  if (/^s\d+-/.test(metricName) && metricName.slice(metricName.indexOf('-') + 1) === t.metricName) return;
  throw new BacklogNotFoundError(
    `metric ${JSON.stringify(metricName)} is not served for this metadata; GetMetricSpec names it ${JSON.stringify(t.metricName)}`,
  );
}

/** What the activation threshold is compared with: the reading's activity figure, or its value. */
function activityOf(reading: BacklogReading): number {
  return reading.activity ?? reading.value;
}
