/**
 * `kmj status --kafka --group <g> [--topic <t>]`: a consumer group's committed and end offsets and
 * lag per partition, from the same reads as the scaler's (kafka/offsets.ts, never group state).
 * The raw figures: no reset policy for partitions without a commit (shown as such), no cap.
 */
import { BacklogNotFoundError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { kafkaClient } from '../kafka/client.ts';
import { committedLag, KafkaOffsetsReader, type GroupOffsets } from '../kafka/offsets.ts';
import type { KafkaConnection } from '../kafka/settings.ts';
import type { CommandContext } from './context.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export interface PartitionLagRow {
  readonly topic: string;
  readonly partition: number;
  readonly committed: number | null;
  readonly end: number;
  readonly start: number;
  /** end − committed (records before the log start excluded); null without a commit. */
  readonly lag: number | null;
}

export function lagRows(offsets: GroupOffsets): PartitionLagRow[] {
  return offsets.partitions.map((p) => ({
    topic: p.topic,
    partition: p.partition,
    committed: p.committed ?? null,
    end: p.end,
    start: p.start,
    lag: committedLag(p) ?? null,
  }));
}

/** Prints the table (or JSON); 0 when read, 1 when the group or topic does not exist, 69 when Kafka cannot be read. */
export async function kafkaStatus(
  ctx: CommandContext,
  connection: KafkaConnection,
  group: string,
  topics: readonly string[],
  json: boolean,
  log: Logger,
): Promise<ExitCode> {
  const kafka = kafkaClient(connection, { clientId: 'kmj-status', log, connectTimeoutMs: 5000, requestTimeoutMs: 5000, retries: 1 });
  const reader = new KafkaOffsetsReader({ kafka, brokers: connection.brokers.join(','), log });
  try {
    const offsets = await reader.read(group, topics, AbortSignal.timeout(20_000));
    const rows = lagRows(offsets);
    const total = rows.reduce((s, r) => s + (r.lag ?? 0), 0);
    if (json) {
      ctx.stdout.write(`${JSON.stringify({ group, topics: offsets.topics, lag: total, partitions: rows }, null, 2)}\n`);
      return EXIT.OK;
    }
    const table = [
      ['TOPIC', 'PARTITION', 'COMMITTED', 'END', 'LAG'],
      ...rows.map((r) => [
        r.topic,
        String(r.partition),
        r.committed === null ? '-' : String(r.committed),
        String(r.end),
        r.lag === null ? '- (no commit)' : String(r.lag),
      ]),
    ];
    const widths = table[0]?.map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length))) ?? [];
    ctx.stdout.write(`consumer group ${group}: lag ${total} over ${rows.length} partition${rows.length === 1 ? '' : 's'}\n`);
    for (const row of table)
      ctx.stdout.write(
        `${row
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join('  ')
          .trimEnd()}\n`,
      );
    return EXIT.OK;
  } catch (err) {
    ctx.stderr.write(`kmj status: ${messageOf(err)}\n`);
    return err instanceof BacklogNotFoundError ? EXIT.FAILED : EXIT.UNAVAILABLE;
  } finally {
    await reader.close();
  }
}
