// Workers joining and leaving one consumer group while records remain, against the real broker
// and MLflow: no member that has stopped comes back, none sits on partitions it will not read,
// and with Jobs made the way KEDA makes them, every record runs once with one Job per record.
import { createServer, type Server } from 'node:http';
import { readFileSync } from 'node:fs';
import { Kafka, logLevel } from 'kafkajs';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import type { MemberState } from '../../kafka/assigner.ts';
import { kafkaErrorType } from '../../kafka/client.ts';
import { groupMember, type GroupMember } from '../../kafka/group.ts';
import { Cleanups } from '../helpers/cleanups.ts';
import { KAFKA_BROKERS } from '../helpers/env.ts';
import { KafkaFixture } from '../helpers/kafka.ts';
import { fixtures, logsWith, request, runsOf, startKafkaWorker, type WorkerProcess, type WorkerResult } from '../helpers/worker.ts';
import { waitUntil } from '../helpers/wait.ts';

const kafka = new KafkaFixture();
const cleanups = new Cleanups();
afterEach(() => cleanups.run());
afterAll(() => kafka.close());

/**
 * A consumer whose record handler fails three times, closed by `close` during the last retry: the
 * crash then comes while the application is closing it. Afterwards the handler does nothing and
 * commits nothing, as the test fixture's group-making member did. Returns the group's members a
 * while after `close` resolved, and what the consumer reported.
 */
async function crashWhileClosing(
  make: (client: Kafka, group: string) => { consumer: ReturnType<Kafka['consumer']>; close: () => Promise<void> },
): Promise<{ events: string[]; membersAfterClose: string[][]; committed: Record<number, number> }> {
  const topic = await kafka.topic('crash-close', 1);
  const group = kafka.group('crash-close');
  await kafka.produce(topic, 0, 1);
  // Two retries: the handler's third failure is the one kafkajs gives up on.
  const client = new Kafka({
    clientId: 'kmj-crash-close',
    brokers: KAFKA_BROKERS.split(','),
    logLevel: logLevel.NOTHING,
    retry: { retries: 2, initialRetryTime: 100 },
  });
  const { consumer, close } = make(client, group);
  const events: string[] = [];
  consumer.on(consumer.events.CRASH, (e) => events.push(`crash, restart ${String(e.payload.restart)}`));
  consumer.on(consumer.events.GROUP_JOIN, () => events.push('joined'));
  let closing: Promise<void> | undefined;
  let calls = 0;
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: () => {
      calls++;
      if (calls > 3) return Promise.resolve();
      if (calls === 3) closing = close();
      return Promise.reject(new Error(`handler failure ${calls}`));
    },
  });
  await waitUntil(
    "the handler's third call",
    () => calls,
    (n) => n >= 3,
    { timeoutMs: 20_000, stepMs: 50 },
  );
  await closing;
  events.push('closed');
  cleanups.defer(() => consumer.disconnect());
  const admin = await kafka.admin();
  // kafkajs restarts a crashed consumer after its retry time (100-300 ms here): 3 s is ample.
  const membersAfterClose: string[][] = [];
  for (let i = 0; i < 6; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const [g] = (await admin.describeGroups([group])).groups;
    membersAfterClose.push((g?.members ?? []).map((m) => m.clientId));
  }
  return { events, membersAfterClose, committed: await kafka.committed(group, topic) };
}

describe('a group member that is closed', () => {
  it('with kafkajs alone, comes back: a crash during its close is restarted after the close resolved, and it joins the group again', async () => {
    const { events, membersAfterClose, committed } = await crashWhileClosing((client, group) => {
      const consumer = client.consumer({ groupId: group, maxWaitTimeInMs: 100, retry: { retries: 2, initialRetryTime: 100 } });
      return { consumer, close: () => consumer.disconnect() };
    });
    // This is the mechanism that stranded records: a member nobody runs, holding partitions.
    expect(events).toContain('crash, restart true');
    expect(events.indexOf('joined', events.indexOf('closed'))).toBeGreaterThan(0);
    expect(membersAfterClose.slice(-2)).toEqual([['kmj-crash-close'], ['kmj-crash-close']]);
    // It holds the partition, has read the record and never commits it: lag 1 for good.
    expect(committed).toEqual({ 0: -1 });
  });

  it('made by kafka/group.ts, stays closed: the crash is not restarted and the group is left empty', async () => {
    const { events, membersAfterClose } = await crashWhileClosing((client, group) => {
      const member = groupMember(client, { groupId: group, state: () => ({ capacity: 1, busy: {} }), consumer: { maxWaitTimeInMs: 100 } });
      return { consumer: member.consumer, close: () => member.close() };
    });
    expect(events.filter((e) => e !== 'closed')).toEqual(['joined', 'crash, restart false']);
    expect(membersAfterClose).toEqual(Array(6).fill([]));
  });
});

/** What the leader's assigner waits on while it is shut: the group then sits between generations. */
class Gate {
  #shut = false;
  readonly #waiting: Array<() => void> = [];
  /** Times the assigner reached the gate while it was shut. */
  held = 0;
  shut(): void {
    this.#shut = true;
  }
  open(): void {
    this.#shut = false;
    for (const go of this.#waiting.splice(0)) go();
  }
  pass(): Promise<void> {
    if (!this.#shut) return Promise.resolve();
    this.held++;
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
}

describe('a commit made while another member joins the group', () => {
  const REJOIN_ERRORS = ['ILLEGAL_GENERATION', 'REBALANCE_IN_PROGRESS', 'UNKNOWN_MEMBER_ID'];

  /**
   * A member of `group` on `topic` whose state is `state()`; as the group's leader, its assigner
   * waits at `gate`. Its handler takes nothing (it pauses): the test's commits are the only ones.
   * `joined` resolves at its first join, which a held leader delays.
   */
  function startMember(group: string, topic: string, state: () => MemberState, gate: Gate): { member: GroupMember; joined: Promise<void> } {
    const client = new Kafka({
      clientId: 'kmj-commit-rejoin',
      brokers: KAFKA_BROKERS.split(','),
      logLevel: logLevel.NOTHING,
      retry: { retries: 2, initialRetryTime: 100 },
    });
    const member = groupMember(client, {
      groupId: group,
      state,
      lagOf: async () => {
        await gate.pass();
        return undefined;
      },
      consumer: { maxWaitTimeInMs: 100, sessionTimeout: 10_000, rebalanceTimeout: 30_000, heartbeatInterval: 300 },
    });
    cleanups.defer(() => member.close());
    const { consumer } = member;
    const firstJoin = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    const joined = (async () => {
      await consumer.connect();
      await consumer.subscribe({ topic, fromBeginning: true });
      await consumer.run({
        autoCommit: false,
        eachMessage: ({ partition }) => Promise.resolve(consumer.pause([{ topic, partitions: [partition] }])),
      });
      await firstJoin;
    })();
    return { member, joined };
  }

  it('is refused to kafkajs alone, made by GroupMember.commit after the rejoin while the partition stays its own, and refused naming why once the rebalance moves the partition', async () => {
    const topic = await kafka.topic('commit-rejoin', 1);
    const group = kafka.group('commit-rejoin');
    await kafka.produce(topic, 0, 3);
    const gate = new Gate();
    let leaderState: MemberState = { capacity: 1, busy: { [topic]: [0] } };
    const first = startMember(group, topic, () => leaderState, gate);
    await first.joined;
    const leader = first.member;
    cleanups.defer(() => gate.open());
    expect(leader.assigned(topic)).toEqual([0]);

    // A second Job joins while the leader works on partition 0's record: the leader's rejoin stops
    // in its assigner, and the group is between generations.
    gate.shut();
    const second = startMember(group, topic, () => ({ capacity: 1, busy: {} }), gate);
    await waitUntil(
      'the leader held in its assignment',
      () => gate.held,
      (n) => n >= 1,
      { timeoutMs: 20_000, stepMs: 50 },
    );
    const own = await leader.consumer.commitOffsets([{ topic, partition: 0, offset: '1' }]).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(REJOIN_ERRORS).toContain(kafkaErrorType(own));
    let settled = false;
    const committing = leader.commit(topic, 0, '1').finally(() => {
      settled = true;
    });
    // Time let pass on purpose: the commit must still be waiting for the rejoin a second later.
    await new Promise((r) => setTimeout(r, 1000));
    expect(settled).toBe(false);
    gate.open();
    await committing;
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
    await second.joined;
    expect(leader.assigned(topic)).toEqual([0]);
    expect(second.member.assigned(topic)).toEqual([]);

    // The record is done and the leader takes no more: the next rebalance gives partition 0 away,
    // and a commit refused meanwhile is not made with the new generation.
    leaderState = { capacity: 0, busy: {} };
    gate.shut();
    const third = startMember(group, topic, () => ({ capacity: 1, busy: {} }), gate);
    await waitUntil(
      'the leader held in its second assignment',
      () => gate.held,
      (n) => n >= 2,
      { timeoutMs: 20_000, stepMs: 50 },
    );
    const refused = leader.commit(topic, 0, '2').then(
      () => undefined,
      (err: unknown) => err,
    );
    // Time let pass on purpose: the commit is tried and refused while the group is between generations.
    await new Promise((r) => setTimeout(r, 500));
    gate.open();
    expect(String((await refused) as Error)).toMatch(new RegExp(`the rebalance gave partition 0 of ${topic} to another member`));
    await third.joined;
    expect(leader.assigned(topic)).toEqual([]);
    // Each member hears of the new generation at its own join: the second may hear after the third.
    await waitUntil(
      'partition 0 with the second or third member',
      () => [...second.member.assigned(topic), ...third.member.assigned(topic)],
      (a) => a.length === 1 && a[0] === 0,
      { timeoutMs: 20_000, stepMs: 50 },
    );
    expect(await kafka.committed(group, topic)).toEqual({ 0: 1 });
  }, 90_000);
});

/** Serves the iris CSV; paths under /slow/ answer after `slowMs`, so a record can be made to run long. */
async function datasetServer(slowMs: number): Promise<{ url: (slow: boolean) => string; close: () => Promise<void> }> {
  const csv = readFileSync(fixtures().datasets.csv);
  const server: Server = createServer((req, res) => {
    const send = (): void => {
      res.writeHead(200, { 'content-type': 'text/csv' });
      res.end(csv);
    };
    if (req.url?.startsWith('/slow/')) setTimeout(send, slowMs);
    else send();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: (slow) => `http://127.0.0.1:${port}/${slow ? 'slow' : 'fast'}/iris.csv`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('workers made the way KEDA makes them, joining and leaving while records remain', () => {
  it('every record runs once, each Job takes exactly one record, and every offset is committed', async () => {
    const PARTITIONS = 3;
    const PER_PARTITION = 3;
    const POLL_MS = 500;
    const topic = await kafka.topic('churn', PARTITIONS);
    const group = kafka.group('churn');
    await kafka.commit(group, topic, { 0: 0, 1: 0, 2: 0 });
    const data = await datasetServer(2500);
    cleanups.defer(() => data.close());
    // Partition 0's records run for seconds, the others' at once: workers join and leave while
    // others hold a record, and later records wait behind a running one on their partition.
    const requests = Array.from({ length: PARTITIONS }, (_, p) =>
      Array.from({ length: PER_PARTITION }, () => request({ dataset: { uri: data.url(p === 0) } })),
    );
    for (let p = 0; p < PARTITIONS; p++) await kafka.produce(topic, p, PER_PARTITION, (i) => JSON.stringify(requests[p]?.[i]));

    // KEDA's default strategy with limitToPartitionsWithLag and lagThreshold 1, as
    // keda/scaledjob-kafka.yaml asks: min(lag, partitions with lag) Jobs, less the unfinished ones.
    const workers: WorkerProcess[] = [];
    const results: WorkerResult[] = [];
    const admin = await kafka.admin();
    const deadline = Date.now() + 90_000;
    for (;;) {
      const [committed, ends] = await Promise.all([kafka.committed(group, topic), admin.fetchTopicOffsets(topic)]);
      const lags = ends.map((e) => Number(e.high) - Math.max(0, committed[e.partition] ?? 0));
      const lag = lags.reduce((a, b) => a + b, 0);
      const running = workers.length - results.length;
      if (lag === 0 && running === 0) break;
      if (Date.now() > deadline)
        throw new Error(`not drained in 90 s: lag per partition ${JSON.stringify(lags)}, ${running} workers running`);
      const wanted = Math.min(lag, lags.filter((l) => l > 0).length) - running;
      for (let i = 0; i < wanted; i++) {
        const w = startKafkaWorker(topic, group, { KMJ_WORKER_IDLE_TIMEOUT_MS: '5000' });
        workers.push(w);
        cleanups.defer(async () => {
          if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
          await w.done;
        });
        void w.done.then((r) => results.push(r));
      }
      // KEDA's polling interval: this loop plays KEDA, scaling on each look, rather than waiting for one state.
      await new Promise((r) => setTimeout(r, POLL_MS));
    }

    expect(await kafka.committed(group, topic)).toEqual({ 0: PER_PARTITION, 1: PER_PARTITION, 2: PER_PARTITION });
    for (const r of requests.flat()) expect((await runsOf(r.experiment)).map((x) => x.info.status)).toEqual(['FINISHED']);
    // One Job per record, each exiting 0 after its one record; no record went to two workers.
    expect(results.map((r) => r.code)).toEqual(Array(PARTITIONS * PER_PARTITION).fill(EXIT.OK));
    expect(results.map((r) => logsWith(r, 'record committed').length)).toEqual(Array(PARTITIONS * PER_PARTITION).fill(1));
    expect(results.flatMap((r) => logsWith(r, 'resuming the unfinished run of this request'))).toEqual([]);
    // Each partition's records ran in order.
    for (let p = 0; p < PARTITIONS; p++) {
      const order = results
        .flatMap((r) => logsWith(r, 'record committed'))
        .filter((l) => l['partition'] === p)
        .sort((a, b) => String(a['time']).localeCompare(String(b['time'])))
        .map((l) => l['requestId']);
      expect(order).toEqual(requests[p]?.map((r) => r.requestId));
    }
  }, 120_000);
});
