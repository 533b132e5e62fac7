// The scaler's Kafka source against a real broker, through a real gRPC client polling the way
// KEDA does: lag over partitions, topics and groups, the reset policies, the partition cap,
// persistent lag, missing topics and groups, SASL/SCRAM. Each test has its own topics and groups.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KAFKA_BROKERS, KAFKA_PASSWORD, KAFKA_SASL_BROKERS, KAFKA_SSL_BROKERS, KAFKA_TLS_CA_FILE, KAFKA_USER } from '../helpers/env.ts';
import { KafkaFixture } from '../helpers/kafka.ts';
import { createLogger } from '../../common/log.ts';
import { kafkaClient } from '../../kafka/client.ts';
import { KafkaOffsetsReader, type GroupOffsets } from '../../kafka/offsets.ts';
import { messageOf } from '../../common/redact.ts';
import { BacklogNotFoundError } from '../../common/errors.ts';
import { kafkaConnection } from '../../kafka/settings.ts';
import { loadScalerConfig } from '../../scaler/config.ts';
import { startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

let kafka: KafkaFixture;
let handle: ScalerHandle;
let dir: string;

beforeAll(async () => {
  kafka = new KafkaFixture();
  dir = mkdtempSync(join(tmpdir(), 'kmj-kafka-scaler-'));
  const connections = join(dir, 'connections.json');
  writeFileSync(
    connections,
    JSON.stringify({
      scram256: {
        source: 'kafka',
        brokers: KAFKA_SASL_BROKERS,
        saslMechanism: 'scram-sha-256',
        username: KAFKA_USER,
        password: KAFKA_PASSWORD,
      },
      scram512: {
        source: 'kafka',
        brokers: KAFKA_SASL_BROKERS,
        saslMechanism: 'scram-sha-512',
        username: KAFKA_USER,
        password: KAFKA_PASSWORD,
      },
      wrongpw: {
        source: 'kafka',
        brokers: KAFKA_SASL_BROKERS,
        saslMechanism: 'scram-sha-256',
        username: KAFKA_USER,
        password: 'not-the-Secret-42',
      },
      tls: {
        source: 'kafka',
        brokers: KAFKA_SSL_BROKERS,
        saslMechanism: 'scram-sha-512',
        username: KAFKA_USER,
        password: KAFKA_PASSWORD,
        tls: 'true',
        caFile: KAFKA_TLS_CA_FILE,
      },
      untrusted: {
        source: 'kafka',
        brokers: KAFKA_SSL_BROKERS,
        saslMechanism: 'scram-sha-512',
        username: KAFKA_USER,
        password: KAFKA_PASSWORD,
        tls: 'true',
      },
    }),
  );
  handle = await startTestScaler({ KAFKA_BROKERS, KMJ_SCALER_CONNECTIONS_FILE: connections });
});

afterAll(async () => {
  await handle?.close();
  await kafka?.close();
  rmSync(dir, { recursive: true, force: true });
});

const poll = (metadata: Record<string, string>) => handle.client.poll({ source: 'kafka', ...metadata });

describe('lag of a consumer group', () => {
  it('sums end − committed over partitions, per group, and is 0 and inactive when caught up', async () => {
    const topic = await kafka.topic('lag', 3);
    await kafka.produce(topic, 0, 5);
    await kafka.produce(topic, 1, 3);
    await kafka.produce(topic, 2, 4);
    const behind = kafka.group('behind');
    const caughtUp = kafka.group('caught-up');
    const fromStart = kafka.group('from-start');
    await kafka.commit(behind, topic, { 0: 2, 1: 3, 2: 1 });
    await kafka.commit(caughtUp, topic, { 0: 5, 1: 3, 2: 4 });
    await kafka.commit(fromStart, topic, { 0: 0, 1: 0, 2: 0 });
    // lagThreshold 1 with 3 partitions caps at 3 (as KEDA does unless allowIdleConsumers).
    const idle = { allowIdleConsumers: 'true' };
    expect(await poll({ topic, consumerGroup: behind, ...idle })).toMatchObject({ ok: true, view: { value: 6, active: true } });
    expect(await poll({ topic, consumerGroup: caughtUp, ...idle })).toMatchObject({ ok: true, view: { value: 0, active: false } });
    expect(await poll({ topic, consumerGroup: fromStart, ...idle })).toMatchObject({ ok: true, view: { value: 12, active: true } });

    // New records show on the next reads.
    await kafka.produce(topic, 1, 2);
    const after = await waitUntil(
      'the lag of the caught-up group to show the 2 new records',
      () => poll({ topic, consumerGroup: caughtUp, ...idle }),
      (r) => r.ok && r.view.value === 2,
    );
    expect(after).toMatchObject({ ok: true, view: { value: 2, active: true } });
  });

  it('sums over several topics, and over every committed topic when none is named', async () => {
    const a = await kafka.topic('multi-a', 2);
    const b = await kafka.topic('multi-b', 1);
    await kafka.produce(a, 0, 4);
    await kafka.produce(a, 1, 4);
    await kafka.produce(b, 0, 10);
    const group = kafka.group('multi');
    await kafka.commit(group, a, { 0: 1, 1: 4 });
    await kafka.commit(group, b, { 0: 7 });
    const idle = { allowIdleConsumers: 'true' };
    expect(await poll({ topic: `${a},${b}`, consumerGroup: group, ...idle })).toMatchObject({ ok: true, view: { value: 6 } });
    expect(await poll({ topic: b, consumerGroup: group, ...idle })).toMatchObject({ ok: true, view: { value: 3 } });
    expect(await poll({ consumerGroup: group, ...idle })).toMatchObject({ ok: true, view: { value: 6 } });
  });

  it('counts partitions without a commit by offsetResetPolicy, and 0 with scaleToZeroOnInvalidOffset', async () => {
    const topic = await kafka.topic('reset', 2);
    const other = await kafka.topic('reset-other', 1);
    await kafka.produce(topic, 0, 7);
    await kafka.produce(topic, 1, 2);
    // The group exists (it has a commit elsewhere) but has never committed on `topic`.
    const group = kafka.group('uncommitted');
    await kafka.commit(group, other, { 0: 0 });
    const base = { topic, consumerGroup: group, allowIdleConsumers: 'true' };
    expect(await poll(base)).toMatchObject({ ok: true, view: { value: 2, active: true } });
    expect(await poll({ ...base, offsetResetPolicy: 'latest' })).toMatchObject({ ok: true, view: { value: 2 } });
    expect(await poll({ ...base, offsetResetPolicy: 'earliest' })).toMatchObject({ ok: true, view: { value: 9, active: true } });
    for (const offsetResetPolicy of ['latest', 'earliest']) {
      expect(await poll({ ...base, offsetResetPolicy, scaleToZeroOnInvalidOffset: 'true' })).toMatchObject({
        ok: true,
        view: { value: 0, active: false },
      });
    }
    // One partition committed, one not: the committed one by its offsets, the other by the policy.
    await kafka.commit(group, topic, { 0: 3 });
    expect(
      await waitUntil(
        "a lag of 4 on the committed partition + 2 on the other by 'earliest'",
        () => poll({ ...base, offsetResetPolicy: 'earliest' }),
        (r) => r.ok && r.view.value === 6,
      ),
    ).toMatchObject({ ok: true, view: { value: 6 } });
    expect(
      await waitUntil(
        "a lag of 4 on the committed partition + 1 for the other by 'latest'",
        () => poll({ ...base, offsetResetPolicy: 'latest' }),
        (r) => r.ok && r.view.value === 5,
      ),
    ).toMatchObject({ ok: true, view: { value: 5 } });
  });

  it('caps at partitions × lagThreshold unless allowIdleConsumers, at partitions with lag with limitToPartitionsWithLag', async () => {
    const topic = await kafka.topic('cap', 3);
    await kafka.produce(topic, 0, 40);
    await kafka.produce(topic, 1, 25);
    const group = kafka.group('cap');
    await kafka.commit(group, topic, { 0: 0, 1: 0, 2: 0 });
    const base = { topic, consumerGroup: group, lagThreshold: '10' };
    // Jobs asked for, ceil(value / lagThreshold): 3 (one per partition), 7, 2 (partitions with lag).
    expect(await poll(base)).toMatchObject({ ok: true, view: { value: 30, targetSize: 10, active: true } });
    expect(await poll({ ...base, allowIdleConsumers: 'true' })).toMatchObject({ ok: true, view: { value: 65 } });
    expect(await poll({ ...base, limitToPartitionsWithLag: 'true' })).toMatchObject({ ok: true, view: { value: 20 } });
    // Below the cap nothing changes.
    expect(await poll({ ...base, lagThreshold: '50' })).toMatchObject({ ok: true, view: { value: 65, targetSize: 50 } });
  });

  it('activates above activationLagThreshold', async () => {
    const topic = await kafka.topic('activation', 1);
    await kafka.produce(topic, 0, 5);
    const group = kafka.group('activation');
    await kafka.commit(group, topic, { 0: 0 });
    expect(await poll({ topic, consumerGroup: group, activationLagThreshold: '5', allowIdleConsumers: 'true' })).toMatchObject({
      ok: true,
      view: { value: 5, active: false },
    });
    expect(await poll({ topic, consumerGroup: group, activationLagThreshold: '4', allowIdleConsumers: 'true' })).toMatchObject({
      ok: true,
      view: { value: 5, active: true },
    });
  });

  it('with excludePersistentLag leaves out lag whose commit does not move, but stays active', async () => {
    const topic = await kafka.topic('persistent', 2);
    await kafka.produce(topic, 0, 4);
    await kafka.produce(topic, 1, 4);
    const group = kafka.group('persistent');
    await kafka.commit(group, topic, { 0: 1, 1: 2 });
    const meta = { topic, consumerGroup: group, excludePersistentLag: 'true', allowIdleConsumers: 'true' };
    // The first read counts everything; from the second on, commits that did not move count 0.
    const stuck = await waitUntil(
      'the lag whose commits did not move to count 0',
      () => poll(meta),
      (r) => r.ok && r.view.value === 0,
    );
    expect(stuck).toMatchObject({ ok: true, view: { value: 0, active: true } });
    await kafka.commit(group, topic, { 0: 2 });
    const moved = await waitUntil(
      'the lag of the partition whose commit moved to count 2',
      () => poll(meta),
      (r) => r.ok && r.view.value === 2,
      { timeoutMs: 5000, stepMs: 50 },
    );
    expect(moved).toMatchObject({ ok: true, view: { value: 2, active: true } });
  });
});

describe('what the scaler never reports as 0', () => {
  it('a missing topic is NOT_FOUND, and the source still reads other topics after it', async () => {
    const group = kafka.group('missing-topic');
    const r = await poll({ topic: 'kmj-no-such-topic', consumerGroup: group });
    expect(r).toEqual({
      ok: false,
      error: { code: grpc.status.NOT_FOUND, reached: true, details: `topic "kmj-no-such-topic" does not exist on ${KAFKA_BROKERS}` },
    });
    const topic = await kafka.topic('after-missing', 1);
    await kafka.produce(topic, 0, 2);
    await kafka.commit(group, topic, { 0: 0 });
    expect(await poll({ topic, consumerGroup: group })).toMatchObject({ ok: true, view: { value: 1 } });
  });

  it('a group that does not exist is NOT_FOUND, not an uncommitted group', async () => {
    const topic = await kafka.topic('no-group', 2);
    await kafka.produce(topic, 0, 3);
    const r = await poll({ topic, consumerGroup: 'kmj-no-such-group' });
    expect(r).toEqual({
      ok: false,
      error: {
        code: grpc.status.NOT_FOUND,
        reached: true,
        details: `consumer group "kmj-no-such-group" does not exist on ${KAFKA_BROKERS} (no member has joined it and it has no committed offsets)`,
      },
    });
    const none = await poll({ consumerGroup: 'kmj-no-such-group' });
    expect(none).toMatchObject({
      ok: false,
      error: { code: grpc.status.NOT_FOUND, details: expect.stringContaining('has committed no offsets') },
    });
  });

  it('refuses bad metadata with every problem named', async () => {
    const r = await handle.client.getMetricSpec({
      source: 'kafka',
      topic: 'a b',
      lagThreshold: '0',
      limitToPartitionsWithLag: 'true',
      allowIdleConsumers: 'true',
      targetSize: '2',
    });
    expect(r).toEqual({
      ok: false,
      error: {
        code: grpc.status.INVALID_ARGUMENT,
        reached: true,
        details:
          'invalid trigger metadata: lagThreshold: set either lagThreshold or targetSize, not both; lagThreshold: "0" must be a number greater than 0; consumerGroup: is required; topic: "a b" must be topic names (letters, digits, ".", "_", "-"), comma-separated; limitToPartitionsWithLag: cannot be true together with allowIdleConsumers true',
      },
    });
    const conn = await handle.client.getMetricSpec({ source: 'kafka', consumerGroup: 'g', connection: 'nope' });
    expect(conn).toMatchObject({
      ok: false,
      error: {
        code: grpc.status.INVALID_ARGUMENT,
        details:
          'invalid trigger metadata: connection: "nope" is not a connection the scaler knows for this source (configured: default, scram256, scram512, wrongpw, tls, untrusted)',
      },
    });
  });
});

describe('SASL', () => {
  it('reads lag over SCRAM-SHA-256 and SCRAM-SHA-512 connections', async () => {
    const topic = await kafka.topic('scram', 1);
    await kafka.produce(topic, 0, 3);
    const group = kafka.group('scram');
    await kafka.commit(group, topic, { 0: 1 });
    for (const connection of ['scram256', 'scram512']) {
      expect(await poll({ topic, consumerGroup: group, connection })).toMatchObject({ ok: true, view: { value: 1, active: true } });
      expect(await poll({ topic, consumerGroup: group, connection, allowIdleConsumers: 'true' })).toMatchObject({
        ok: true,
        view: { value: 2 },
      });
    }
  });

  it('a wrong password is UNAVAILABLE with a clear error, never 0, and the password shows nowhere', async () => {
    const topic = await kafka.topic('wrong-pw', 1);
    const group = kafka.group('wrong-pw');
    await kafka.commit(group, topic, { 0: 0 });
    const r = await poll({ topic, consumerGroup: group, connection: 'wrongpw' });
    expect(r).toMatchObject({
      ok: false,
      error: {
        code: grpc.status.UNAVAILABLE,
        details: expect.stringContaining(`Kafka at ${KAFKA_SASL_BROKERS} refused the SASL credentials`),
      },
    });
    expect(JSON.stringify(r)).not.toContain('not-the-Secret-42');
    const active = await handle.client.isActive({ source: 'kafka', topic, consumerGroup: group, connection: 'wrongpw' });
    expect(active).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE } });
    expect(handle.logs()).not.toContain('not-the-Secret-42');
    expect(handle.logs()).not.toContain(KAFKA_PASSWORD);
  });
});

describe('TLS', () => {
  it('reads lag over SASL_SSL with the CA that signs the broker, and refuses a broker it cannot verify with UNAVAILABLE', async () => {
    const topic = await kafka.topic('tls', 2);
    await kafka.produce(topic, 1, 4);
    const group = kafka.group('tls');
    await kafka.commit(group, topic, { 0: 0, 1: 1 });
    expect(await poll({ topic, consumerGroup: group, connection: 'tls', allowIdleConsumers: 'true' })).toMatchObject({
      ok: true,
      view: { value: 3, active: true },
    });
    const r = await poll({ topic, consumerGroup: group, connection: 'untrusted' });
    expect(r).toMatchObject({
      ok: false,
      error: { code: grpc.status.UNAVAILABLE, details: expect.stringContaining('unable to verify the first certificate') },
    });
  });

  it('a CA file that cannot be read stops start-up naming the setting', () => {
    expect(() =>
      loadScalerConfig({ KAFKA_BROKERS: KAFKA_SSL_BROKERS, KAFKA_TLS: 'true', KAFKA_TLS_CA_FILE: '/nonexistent/ca.crt' }),
    ).toThrow(/^invalid scaler configuration: KAFKA_TLS_CA_FILE: cannot read "\/nonexistent\/ca\.crt": ENOENT/);
    expect(() => loadScalerConfig({ KAFKA_BROKERS: KAFKA_SSL_BROKERS, KAFKA_TLS_CA_FILE: KAFKA_TLS_CA_FILE })).toThrow(
      'invalid scaler configuration: KAFKA_TLS_CA_FILE: needs KAFKA_TLS true',
    );
  });
});

describe('the offsets reader (kafka/offsets.ts)', () => {
  it('shares one ListOffsets round among reads started together, and a deleted topic fails only the reads that name it', async () => {
    const log = createLogger({ level: 'silent', name: 'kmj-test' });
    const { value: conn, problems } = kafkaConnection({ KAFKA_BROKERS });
    if (!conn) throw new Error(problems.join('; '));
    const client = kafkaClient(conn, { clientId: 'kmj-test-reader', log, connectTimeoutMs: 3000, requestTimeoutMs: 2000, retries: 0 });
    // The topic listing kept for a minute: the deleted topic is still listed, so its read reaches
    // the broker's ListOffsets, as it does in the seconds after a deletion.
    const reader = new KafkaOffsetsReader({ kafka: client, brokers: KAFKA_BROKERS, log, listTtlMs: 60_000 });
    const signal = (): AbortSignal => AbortSignal.timeout(10_000);
    try {
      const [kept, doomed] = [await kafka.topic('reader-kept', 2), await kafka.topic('reader-doomed', 1)];
      const group = kafka.group('reader');
      await kafka.produce(kept, 0, 3);
      await kafka.produce(doomed, 0, 2);
      await kafka.commit(group, kept, { 0: 1, 1: 0 });
      await kafka.commit(group, doomed, { 0: 1 });
      const rows = (r: GroupOffsets): (string | number | undefined)[][] =>
        r.partitions.map((p) => [p.topic, p.partition, p.end, p.committed]);
      const keptRows = [
        [kept, 0, 3, 1],
        [kept, 1, 0, 0],
      ];
      const doomedRows = [[doomed, 0, 2, 1]];
      const both = await reader.read(group, [kept, doomed], signal());
      expect(rows(both)).toEqual(kept < doomed ? [...keptRows, ...doomedRows] : [...doomedRows, ...keptRows]);
      // Every committed topic of the group when none is named.
      expect((await reader.read(group, [], signal())).topics).toEqual([kept, doomed].sort());

      // Three reads started in one turn of the event loop: one round of ListOffsets for all.
      const before = reader.batches;
      const together = await Promise.all([
        reader.read(group, [kept], signal()),
        reader.read(group, [doomed], signal()),
        reader.read(group, [kept, doomed], signal()),
      ]);
      expect(reader.batches).toBe(before + 1);
      expect(together.map(rows)).toEqual([keptRows, doomedRows, rows(both)]);

      await (await kafka.admin()).deleteTopics({ topics: [doomed] });
      const [keptAfter, doomedAfter] = await Promise.allSettled([
        reader.read(group, [kept], signal()),
        reader.read(group, [doomed], signal()),
      ]);
      expect(keptAfter.status === 'fulfilled' && rows(keptAfter.value)).toEqual(keptRows);
      // Its shared round failed; the round made again for it alone lists the topics anew.
      expect(doomedAfter.status === 'rejected' && doomedAfter.reason).toBeInstanceOf(BacklogNotFoundError);
      expect(doomedAfter.status === 'rejected' && messageOf(doomedAfter.reason)).toBe(
        `topic "${doomed}" does not exist on ${KAFKA_BROKERS}`,
      );
      const after = await reader.read(group, [kept], signal());
      expect(after.partitions.map((p) => p.end - (p.committed ?? 0))).toEqual([2, 0]);
    } finally {
      await reader.close();
    }
  });
});
