/** A RabbitMQ node of a test's own, for tests that stop and start the broker. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../../common/paths.ts';

const run = promisify(execFile);
const script = `${PACKAGE_ROOT}/scripts/rabbitmq.sh`;

export class RabbitNode {
  readonly name: string;
  readonly amqpPort: number;
  readonly managementPort: number;
  readonly distPort: number;

  constructor(name: string, amqpPort: number) {
    this.name = name;
    this.amqpPort = amqpPort;
    this.managementPort = amqpPort + 10_000;
    this.distPort = amqpPort + 20_000;
  }

  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.amqpPort}`;
  }

  get managementUrl(): string {
    return `http://guest:guest@127.0.0.1:${this.managementPort}`;
  }

  async start(): Promise<void> {
    await run('bash', [script, 'start', this.name, String(this.amqpPort), String(this.managementPort), String(this.distPort)], {
      timeout: 120_000,
    });
  }

  /** Stops the RabbitMQ application (listeners close, clients are disconnected); the Erlang node stays. */
  async stopApp(): Promise<void> {
    await run('bash', [script, 'ctl', this.name, 'stop_app'], { timeout: 60_000 });
  }

  async startApp(): Promise<void> {
    await run('bash', [script, 'ctl', this.name, 'start_app'], { timeout: 60_000 });
  }

  async stop(): Promise<void> {
    await run('bash', [script, 'stop', this.name], { timeout: 60_000 });
  }
}
