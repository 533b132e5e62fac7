/** A Kafka broker of a test's own (scripts/kafka.sh NAME PORT), for tests that stop and start it. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PACKAGE_ROOT } from '../../common/paths.ts';

const run = promisify(execFile);
const script = `${PACKAGE_ROOT}/scripts/kafka.sh`;

export class KafkaNode {
  readonly name: string;
  /** PLAINTEXT listener; the controller is on port + 1, SASL on port + 2. */
  readonly port: number;

  constructor(name: string, port: number) {
    this.name = name;
    this.port = port;
  }

  get brokers(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    await run('bash', [script, 'start', this.name, String(this.port)], { timeout: 120_000 });
  }

  async stop(): Promise<void> {
    await run('bash', [script, 'stop', this.name, String(this.port)], { timeout: 60_000 });
  }
}
