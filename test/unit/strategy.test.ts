// KEDA's ScaledJob "default" scaling strategy, as `kmj demo` and `kmj status` compute it
// (scaler/client.ts defaultStrategyJobs): min(ceil(metric / targetSize), maxReplicaCount) minus
// the unfinished Jobs, at most ceil(metric) at once (KEDA's scaleTo), never below 0, and nothing
// when the trigger is not active. See
// docs/scaler.md, "Why backlog gives exactly one Job per message", and KEDA's
// pkg/scaling/executor/scale_jobs.go (defaultScalingStrategy: maxScale − runningJobCount, where
// maxScale is already capped by maxReplicaCount and "running" counts every unfinished Job).
import { describe, expect, it } from 'vitest';
import { defaultStrategyJobs, type KedaView } from '../../scaler/client.ts';

interface Case {
  readonly name: string;
  readonly value: number;
  readonly targetSize: number;
  readonly active?: boolean;
  readonly unfinished: number;
  readonly max: number;
  readonly jobs: number;
}

const CASES: readonly Case[] = [
  { name: 'an empty queue, nothing running', value: 0, targetSize: 1, active: false, unfinished: 0, max: 100, jobs: 0 },
  { name: 'one message, nothing running', value: 1, targetSize: 1, unfinished: 0, max: 100, jobs: 1 },
  { name: 'ten messages, nothing running', value: 10, targetSize: 1, unfinished: 0, max: 100, jobs: 10 },
  { name: 'ten messages, four Jobs unfinished', value: 10, targetSize: 1, unfinished: 4, max: 100, jobs: 6 },
  { name: 'as many unfinished Jobs as the metric', value: 5, targetSize: 1, unfinished: 5, max: 100, jobs: 0 },
  { name: 'more unfinished Jobs than the metric: never negative', value: 2, targetSize: 1, unfinished: 7, max: 100, jobs: 0 },
  { name: 'capped by maxReplicaCount', value: 500, targetSize: 1, unfinished: 0, max: 100, jobs: 100 },
  { name: 'the cap applies before the unfinished Jobs are subtracted', value: 500, targetSize: 1, unfinished: 30, max: 100, jobs: 70 },
  { name: 'at the cap with every replica unfinished', value: 500, targetSize: 1, unfinished: 100, max: 100, jobs: 0 },
  { name: 'more unfinished than the cap', value: 500, targetSize: 1, unfinished: 120, max: 100, jobs: 0 },
  { name: 'maxReplicaCount 0', value: 10, targetSize: 1, unfinished: 0, max: 0, jobs: 0 },
  { name: 'targetSize 2: ceil of an even split', value: 10, targetSize: 2, unfinished: 0, max: 100, jobs: 5 },
  { name: 'targetSize 2: ceil of an odd split', value: 11, targetSize: 2, unfinished: 0, max: 100, jobs: 6 },
  { name: 'targetSize 3: ceil, less unfinished', value: 10, targetSize: 3, unfinished: 1, max: 100, jobs: 3 },
  { name: 'targetSize above the metric: one Job', value: 1, targetSize: 10, unfinished: 0, max: 100, jobs: 1 },
  { name: 'targetSize 1.5', value: 4, targetSize: 1.5, unfinished: 0, max: 100, jobs: 3 },
  { name: 'a fractional metric (a rate) rounds up', value: 2.2, targetSize: 1, unfinished: 0, max: 100, jobs: 3 },
  {
    name: 'the backlog argument: R=3 ready, C=2 consumers, P=1 pending',
    value: 3 + 2,
    targetSize: 1,
    unfinished: 2 + 1,
    max: 100,
    jobs: 3 - 1,
  },
  {
    name: 'the backlog argument: every ready message has a pending Job',
    value: 4 + 3,
    targetSize: 1,
    unfinished: 3 + 4,
    max: 100,
    jobs: 0,
  },
  { name: 'targetSize 0.5: no more Jobs than ceil(metric) at once', value: 3, targetSize: 0.5, unfinished: 0, max: 100, jobs: 3 },
  { name: 'targetSize 0.5: maxScale 6 less 4 unfinished', value: 3, targetSize: 0.5, unfinished: 4, max: 100, jobs: 2 },
  { name: 'targetSize 0.5: capped first', value: 3, targetSize: 0.5, unfinished: 1, max: 4, jobs: 3 },
  { name: 'not active: no Jobs whatever the metric', value: 10, targetSize: 1, active: false, unfinished: 0, max: 100, jobs: 0 },
];

describe('defaultStrategyJobs', () => {
  it.each(CASES)('$name', ({ value, targetSize, active = true, unfinished, max, jobs }) => {
    const view: KedaView = { metricName: 'rabbitmq-jobs-0123456789', targetSize, value, active };
    expect(defaultStrategyJobs(view, unfinished, max)).toBe(jobs);
  });
});
