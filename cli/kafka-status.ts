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

/** What the read gave: the group's rows, or why there are none (`notFound`: the group or a topic does not exist). */
export type KafkaStatusRead =
  | { readonly ok: true; readonly topics: readonly string[]; readonly rows: readonly PartitionLagRow[] }
  | { readonly ok: false; readonly error: string; readonly notFound: boolean };

/** Collect: the group's offsets on `topics` (every topic it committed on when empty), bounded by 20 s. */
export async function collectKafkaStatus(
  connection: KafkaConnection,
  group: string,
  topics: readonly string[],
  log: Logger,
): Promise<KafkaStatusRead> {
  const kafka = kafkaClient(connection, { clientId: 'kmj-status', log, connectTimeoutMs: 5000, requestTimeoutMs: 5000, retries: 1 });
  const reader = new KafkaOffsetsReader({ kafka, brokers: connection.brokers.join(','), log });
  try {
    const offsets = await reader.read(group, topics, AbortSignal.timeout(20_000));
    return { ok: true, topics: offsets.topics, rows: lagRows(offsets) };
  } catch (err) {
    return { ok: false, error: messageOf(err), notFound: err instanceof BacklogNotFoundError };
  } finally {
    await reader.close();
  }
}

/** Decide: 0 when read, 1 when the group or topic does not exist, 69 when Kafka cannot be read. */
export function decideKafkaStatus(read: KafkaStatusRead): ExitCode {
  if (read.ok) return EXIT.OK;
  return read.notFound ? EXIT.FAILED : EXIT.UNAVAILABLE;
}

/** Render: the table or JSON (for stdout), or the error line (for stderr). No I/O. */
export function renderKafkaStatus(group: string, read: KafkaStatusRead, json: boolean): string {
  if (!read.ok) return `kmj status: ${read.error}\n`;
  const total = read.rows.reduce((s, r) => s + (r.lag ?? 0), 0);
  if (json) return `${JSON.stringify({ group, topics: read.topics, lag: total, partitions: read.rows }, null, 2)}\n`;
  const table = [
    ['TOPIC', 'PARTITION', 'COMMITTED', 'END', 'LAG'],
    ...read.rows.map((r) => [
      r.topic,
      String(r.partition),
      r.committed === null ? '-' : String(r.committed),
      String(r.end),
      r.lag === null ? '- (no commit)' : String(r.lag),
    ]),
  ];
  const widths = table[0]?.map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length))) ?? [];
  const lines = [`consumer group ${group}: lag ${total} over ${read.rows.length} partition${read.rows.length === 1 ? '' : 's'}`];
  for (const row of table)
    lines.push(
      row
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    );
  return `${lines.join('\n')}\n`;
}
