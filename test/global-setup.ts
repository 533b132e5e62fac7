// Fails the run at once, with the reason, when a service the tests need is not reachable.
import { connect } from 'node:net';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { KAFKA_BROKERS, KAFKA_SASL_BROKERS, KAFKA_SSL_BROKERS, RABBITMQ_URL } from './helpers/env.ts';
import { MLFLOW_AUTH_URL, MLFLOW_URL } from './helpers/worker.ts';

function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port, timeout: 2000 }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.on('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
}

async function mlflowHealthy(base: string): Promise<boolean> {
  try {
    const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(3000) });
    return res.ok && (await res.text()).includes('OK');
  } catch {
    return false;
  }
}

/** Runs after every test file: removes the model caches the test workers made. */
async function teardown(): Promise<void> {
  await rm(join(PACKAGE_ROOT, '.run', 'test-model-caches'), { recursive: true, force: true });
}

export async function setup(): Promise<() => Promise<void>> {
  const u = new URL(RABBITMQ_URL);
  if (!(await reachable(u.hostname, Number(u.port || 5672)))) {
    throw new Error(`RabbitMQ is not reachable at ${u.hostname}:${u.port}; run the tests with "make test", which starts it`);
  }
  for (const base of [MLFLOW_URL, MLFLOW_AUTH_URL]) {
    if (!(await mlflowHealthy(base)))
      throw new Error(`MLflow does not answer ${base}/health; run the tests with "make test", which starts it`);
  }
  for (const address of [KAFKA_BROKERS, KAFKA_SASL_BROKERS, KAFKA_SSL_BROKERS]) {
    const [host = '', port = ''] = address.split(':');
    if (!(await reachable(host, Number(port)))) {
      throw new Error(
        `Kafka is not reachable at ${address}; run the tests with "make test", which starts it (a broker started before the TLS listener existed: scripts/kafka.sh stop, then make test)`,
      );
    }
  }
  for (const dir of ['fixtures', 'fixtures-auth']) {
    if (!existsSync(join(PACKAGE_ROOT, '.run', dir, 'fixtures.json'))) {
      throw new Error(`.run/${dir}/fixtures.json is missing; run the tests with "make test", which makes the test models`);
    }
  }
  return teardown;
}
