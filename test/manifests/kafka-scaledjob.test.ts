// keda/scaledjob-kafka.yaml, held to what it says: the strategy that pairs with lag, a trigger
// the real scaler compiles, worker arguments the real worker accepts, and the same hardening as
// the RabbitMQ ScaledJob.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { createLogger } from '../../common/log.ts';
import { packageFile } from '../../common/paths.ts';
import { loadScalerConfig } from '../../scaler/config.ts';
import { createSources } from '../../scaler/sources/registry.ts';
import { TriggerCompiler } from '../../scaler/triggers.ts';
import { loadWorkerConfig } from '../../worker/config.ts';

interface Container {
  args: string[];
  env: Array<{ name: string; value?: string }>;
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  securityContext: { allowPrivilegeEscalation: boolean; readOnlyRootFilesystem: boolean; capabilities: { drop: string[] } };
}
interface ScaledJob {
  kind: string;
  metadata: { name: string; namespace: string };
  spec: {
    maxReplicaCount: number;
    scalingStrategy: { strategy: string };
    triggers: Array<{ type: string; metadata: Record<string, string> }>;
    jobTargetRef: { backoffLimit: number; template: { spec: { securityContext: { runAsNonRoot: boolean }; containers: Container[] } } };
  };
}

const text = readFileSync(packageFile('keda', 'scaledjob-kafka.yaml'), 'utf8');
const job = parse(text) as ScaledJob;
const container = job.spec.jobTargetRef.template.spec.containers[0] as Container;

describe('keda/scaledjob-kafka.yaml', () => {
  it('uses the default strategy, and says why in a comment', () => {
    expect(job.kind).toBe('ScaledJob');
    expect(job.spec.scalingStrategy.strategy).toBe('default');
    expect(text).toMatch(/ceil\(lag \/ lagThreshold\) - unfinishedJobs/);
  });

  it("asks for one Job per partition with lag: a partition's records run in order, so more would idle", () => {
    expect(job.spec.triggers[0]?.metadata['limitToPartitionsWithLag']).toBe('true');
    expect(text).toMatch(/limitToPartitionsWithLag caps the metric at \(partitions with lag\) x lagThreshold/);
  });

  it("has a trigger the scaler compiles, with lagThreshold equal to the workers' --max-messages", async () => {
    const [trigger] = job.spec.triggers;
    expect(trigger?.type).toBe('external');
    const config = loadScalerConfig({ KAFKA_BROKERS: '127.0.0.1:19092' });
    const sources = createSources(config.sources, config.tuning, createLogger({ level: 'silent', name: 'manifest-test' }));
    try {
      const compiled = new TriggerCompiler(sources).compile(trigger?.metadata ?? {});
      expect(compiled.target.labels).toMatchObject({ source: 'kafka', scope: 'kmj-workers', name: 'ml-requests' });
      const maxMessages = container.args[container.args.indexOf('--max-messages') + 1];
      expect(String(compiled.targetSize)).toBe(maxMessages);
    } finally {
      await Promise.all([...sources.values()].map((s) => s.close()));
    }
  });

  it("runs a worker the worker accepts, on the trigger's topic and group", () => {
    const env: Record<string, string | undefined> = Object.fromEntries(
      container.env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value]),
    );
    // The node cache's token comes from a Secret: a stand-in of the shape the worker wants.
    expect(container.env.find((e) => e.name === 'KMJ_NODE_CACHE_TOKEN')).toEqual({
      name: 'KMJ_NODE_CACHE_TOKEN',
      valueFrom: { secretKeyRef: { name: 'kmj-model-cache', key: 'token' } },
    });
    env['KMJ_NODE_CACHE_TOKEN'] = 'stand-in-of-the-secret-token';
    const args = container.args;
    expect(args[0]).toBe('worker');
    const flag = (name: string): string | undefined => args[args.indexOf(name) + 1];
    const config = loadWorkerConfig(env, { topic: flag('--topic'), group: flag('--group'), maxMessages: flag('--max-messages') } as Record<
      string,
      string
    >);
    const meta = job.spec.triggers[0]?.metadata ?? {};
    expect(config.input).toMatchObject({ kind: 'kafka', topic: meta['topic'], group: meta['consumerGroup'], maxMessages: 1 });
  });

  it('is hardened as the RabbitMQ ScaledJob is', () => {
    expect(job.spec.jobTargetRef.backoffLimit).toBe(0);
    expect(job.spec.jobTargetRef.template.spec.securityContext.runAsNonRoot).toBe(true);
    expect(container.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(Object.keys(container.resources.requests).sort()).toEqual(['cpu', 'memory']);
    expect(Object.keys(container.resources.limits).sort()).toEqual(['cpu', 'memory']);
  });
});
