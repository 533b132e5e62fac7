// `kmj submit --kafka` and `kmj status --kafka` against the real broker: the topic and the group
// made where missing, records acknowledged by the broker keyed by request id, the group's lag per
// partition as the scaler reads it, and then a worker taking the record.
import { afterAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { KAFKA_BROKERS } from '../helpers/env.ts';
import { KafkaFixture } from '../helpers/kafka.ts';
import { closedPort, lines, runKmj } from '../helpers/kmj.ts';
import { fixtures, runsOf, startKafkaWorker, uniqueId } from '../helpers/worker.ts';

const kafka = new KafkaFixture();
afterAll(() => kafka.close());

function classifier(): string {
  const m = fixtures().models['classifier'];
  return `models:/${m?.name}/${m?.version}`;
}

describe('kmj submit --kafka, kmj status --kafka', () => {
  it('creates the topic and the group, publishes keyed by request id, shows the lag per partition, and a worker runs it', async () => {
    const topic = uniqueId('submit-topic');
    const group = kafka.group('submit-group');
    // The fixture deletes what it made; this topic is made by kmj, so it is registered by name.
    kafka.adopt(topic);
    const experiment = uniqueId('exp');
    const r = await runKmj(
      [
        'submit',
        '--kafka',
        '--topic',
        topic,
        '--partitions',
        '3',
        '--group',
        group,
        '--model',
        classifier(),
        '--dataset',
        fixtures().datasets.csv,
        '--experiment',
        experiment,
        '--request-id',
        'kafka-req-1',
      ],
      { env: { KAFKA_BROKERS } },
    );
    expect(r.code, r.stderr.slice(-3000)).toBe(EXIT.OK);
    expect(lines(r.stdout)).toEqual(['kafka-req-1']);
    expect(r.stderr).toBe(
      `kmj submit: created topic ${topic} with 3 partitions\nkmj submit: created consumer group ${group} at the start of ${topic}\n`,
    );
    const admin = await kafka.admin();
    const ends = await admin.fetchTopicOffsets(topic);
    expect(ends.map((p) => Number(p.high)).reduce((a, b) => a + b, 0)).toBe(1);
    const withRecord = ends.find((p) => p.high === '1')?.partition;

    const status = await runKmj(['status', '--kafka', '--group', group, '--topic', topic, '--json'], { env: { KAFKA_BROKERS } });
    expect(status.code, status.stderr.slice(-3000)).toBe(0);
    const doc = JSON.parse(status.stdout) as {
      lag: number;
      partitions: Array<{ partition: number; committed: number | null; end: number; lag: number | null }>;
    };
    expect(doc.lag).toBe(1);
    expect(doc.partitions.map((p) => [p.partition, p.committed, p.end, p.lag])).toEqual(
      [0, 1, 2].map((p) => [p, 0, p === withRecord ? 1 : 0, p === withRecord ? 1 : 0]),
    );
    const table = await runKmj(['status', '--kafka', '--group', group, '--topic', topic], { env: { KAFKA_BROKERS } });
    expect(lines(table.stdout)[0]).toBe(`consumer group ${group}: lag 1 over 3 partitions`);
    expect(lines(table.stdout)[1]).toMatch(/^TOPIC\s+PARTITION\s+COMMITTED\s+END\s+LAG$/);

    const w = await startKafkaWorker(topic, group).done;
    expect(w.code, w.stderr.slice(-3000)).toBe(0);
    expect((await runsOf(experiment)).map((x) => x.info.status)).toEqual(['FINISHED']);
    const after = JSON.parse((await runKmj(['status', '--kafka', '--group', group, '--json'], { env: { KAFKA_BROKERS } })).stdout) as {
      lag: number;
    };
    expect(after.lag).toBe(0);
  }, 60_000);

  it('status of a group that does not exist exits 1 naming it; an unreachable broker exits 69', async () => {
    const topic = await kafka.topic('status-missing', 1);
    const r = await runKmj(['status', '--kafka', '--group', 'kmj-no-such-group', '--topic', topic], { env: { KAFKA_BROKERS } });
    expect(r.code, r.stderr.slice(-3000)).toBe(1);
    expect(r.stderr).toBe(
      `kmj status: consumer group "kmj-no-such-group" does not exist on ${KAFKA_BROKERS} (no member has joined it and it has no committed offsets)\n`,
    );
    const down = await runKmj(['status', '--kafka', '--group', 'g', '--topic', topic], {
      env: { KAFKA_BROKERS: `127.0.0.1:${await closedPort()}` },
    });
    expect(down.code, down.stderr.slice(-3000)).toBe(69);
    expect(down.stderr).toMatch(/^kmj status: cannot read consumer group "g" from Kafka at 127\.0\.0\.1:\d+: .*ECONNREFUSED/);
  });

  it('refuses Kafka flags without --kafka, and --kafka without a topic or brokers, naming each', async () => {
    const r = await runKmj(['submit', '--queue', 'q', '--topic', 't', '--model', 'models:/m/1', '--dataset', '/tmp/x.csv'], { env: {} });
    expect(r.code, r.stderr.slice(-3000)).toBe(64);
    expect(r.stderr).toContain('--topic: needs --kafka');
    const noTopic = await runKmj(['submit', '--kafka', '--model', 'models:/m/1', '--dataset', '/tmp/x.csv'], { env: {} });
    expect(noTopic.code, noTopic.stderr.slice(-3000)).toBe(64);
    expect(noTopic.stderr).toContain('--topic: is required with --kafka');
    const noBrokers = await runKmj(['submit', '--kafka', '--topic', 't', '--model', 'models:/m/1', '--dataset', '/tmp/x.csv'], { env: {} });
    expect(noBrokers.code, noBrokers.stderr.slice(-3000)).toBe(78);
    expect(noBrokers.stderr).toContain('KAFKA_BROKERS: is required with --kafka');
  });
});
