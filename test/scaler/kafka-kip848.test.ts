// Groups on Kafka 4's consumer-group protocol (KIP-848), made by the real Java client: classic
// DescribeGroups cannot see them as active, so the scaler reads them from offsets only. A member
// that has committed nothing yet is a group that exists (not NOT_FOUND), and a member's commits
// count while it is still in the group.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { KAFKA_BROKERS, KAFKA_LIBS } from '../helpers/env.ts';
import { KafkaFixture } from '../helpers/kafka.ts';
import { startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

let kafka: KafkaFixture;
let handle: ScalerHandle;
const members: ChildProcess[] = [];

beforeAll(async () => {
  kafka = new KafkaFixture();
  handle = await startTestScaler({ KAFKA_BROKERS });
});

afterAll(async () => {
  for (const m of members) m.stdin?.end();
  await Promise.all(members.filter((m) => m.exitCode === null).map((m) => new Promise((r) => m.once('exit', r))));
  await handle?.close();
  await kafka?.close();
}, 60_000);

/** Starts the Java member and resolves once it printed `line`. */
async function member(topic: string, group: string, commit: number, line: string): Promise<ChildProcess> {
  const child = spawn(
    'java',
    ['-cp', join(KAFKA_LIBS, '*'), packageFile('test', 'java', 'Kip848Consumer.java'), KAFKA_BROKERS, topic, group, String(commit)],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  members.push(child);
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the Java member did not print "${line}" within 60 s: ${out} ${err.slice(-2000)}`)),
      60_000,
    );
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.split('\n').includes(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the Java member exited ${code}: ${err.slice(-2000)}`));
    });
  });
  return child;
}

describe('consumer groups of the KIP-848 protocol (Java client, group.protocol=consumer)', () => {
  it('an active member with no commit yet: the group exists, its lag follows offsetResetPolicy', async () => {
    const topic = await kafka.topic('kip848-new', 2);
    await kafka.produce(topic, 0, 3);
    await kafka.produce(topic, 1, 2);
    const group = kafka.group('kip848-new');
    await member(topic, group, 0, 'joined');
    const meta = { source: 'kafka', topic, consumerGroup: group, allowIdleConsumers: 'true' };
    expect(
      await waitUntil(
        'the scaler to read the group of the member that joined',
        () => handle.client.poll({ ...meta, offsetResetPolicy: 'earliest' }),
        (r) => r.ok,
      ),
    ).toMatchObject({ ok: true, view: { value: 5, active: true } });
    expect(await handle.client.poll(meta)).toMatchObject({ ok: true, view: { value: 2 } });
  }, 90_000);

  it('an active member that committed: lag is end − its commits while it is still in the group', async () => {
    const topic = await kafka.topic('kip848-committed', 1);
    await kafka.produce(topic, 0, 5);
    const group = kafka.group('kip848-committed');
    await member(topic, group, 2, 'committed 2');
    const meta = { source: 'kafka', topic, consumerGroup: group, allowIdleConsumers: 'true' };
    expect(
      await waitUntil(
        "the scaler to report a lag of 3 after the member's commit of 2",
        () => handle.client.poll(meta),
        (r) => r.ok && r.view.value === 3,
      ),
    ).toMatchObject({ ok: true, view: { value: 3, active: true } });
  }, 90_000);
});
