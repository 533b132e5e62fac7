// Fails the run at once, with the reason, when a service the tests need is not reachable.
import { connect } from 'node:net';
import { RABBITMQ_URL } from './helpers/env.ts';

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

export default async function setup(): Promise<void> {
  const u = new URL(RABBITMQ_URL);
  if (!(await reachable(u.hostname, Number(u.port || 5672)))) {
    throw new Error(`RabbitMQ is not reachable at ${u.hostname}:${u.port}; run the tests with "make test", which starts it`);
  }
}
