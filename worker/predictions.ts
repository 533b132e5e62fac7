/**
 * Writes predictions to a local file, batch by batch, as CSV or JSON Lines; the file is then
 * uploaded as the run's artifact. Columns: `row` (1-based dataset row), one column per model
 * output (`<output>_<i>` for each element of a vector output), and the label when the request
 * names a label column.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';
import type { DataFormat } from '../common/request.ts';
import { textOf } from '../common/text.ts';
import type { Outputs } from './model/onnx.ts';

/** The content type of a predictions file, from its name. */
export function contentTypeOf(path: string): string {
  return path.endsWith('.csv') ? 'text/csv' : path.endsWith('.jsonl') ? 'application/x-ndjson' : 'application/octet-stream';
}

function csvField(v: unknown): string {
  const s = textOf(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * CSV text written straight into bytes: whole numbers digit by digit, other numbers as String()
 * writes them, text quoted when it must be. No string per line or per value, so no garbage to
 * collect for each row.
 */
class CsvBytes {
  #buf: Buffer;
  #pos = 0;

  constructor(estimate: number) {
    this.#buf = Buffer.allocUnsafe(Math.max(64, estimate));
  }

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + n));
    this.#buf.copy(bigger, 0, 0, this.#pos);
    this.#buf = bigger;
  }

  byte(c: number): void {
    this.#room(1);
    this.#buf[this.#pos++] = c;
  }

  number(v: number): void {
    if (Number.isInteger(v) && v > -1e15 && v < 1e15) {
      this.#room(17);
      const buf = this.#buf;
      let x = v;
      if (x < 0) {
        buf[this.#pos++] = 45;
        x = -x;
      }
      let digits = 1;
      for (let t = x; t >= 10; t = Math.floor(t / 10)) digits++;
      let p = this.#pos + digits;
      this.#pos = p;
      do {
        const d = x % 10;
        buf[--p] = 48 + d;
        x = (x - d) / 10;
      } while (x > 0);
      return;
    }
    this.#ascii(String(v));
  }

  value(v: unknown): void {
    if (typeof v === 'number') this.number(v);
    else this.#text(csvField(v));
  }

  /** A string known to be ASCII (a number's text). */
  #ascii(s: string): void {
    this.#room(s.length);
    const buf = this.#buf;
    for (let i = 0; i < s.length; i++) buf[this.#pos++] = s.charCodeAt(i);
  }

  #text(s: string): void {
    for (let i = 0; i < s.length; i++) {
      if (s.charCodeAt(i) >= 0x80) {
        const n = Buffer.byteLength(s);
        this.#room(n);
        this.#pos += this.#buf.write(s, this.#pos, 'utf8');
        return;
      }
    }
    this.#ascii(s);
  }

  bytes(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }
}

export class PredictionsWriter {
  readonly #out: WriteStream;
  readonly #format: DataFormat;
  readonly #outputNames: readonly string[];
  readonly #labelColumn: string | undefined;
  #header: string[] | undefined;
  #error: Error | undefined;

  constructor(path: string, format: DataFormat, outputNames: readonly string[], labelColumn: string | undefined) {
    this.#out = createWriteStream(path, { highWaterMark: 4 << 20 });
    // A write error (disk full) is raised by the next write or close; never unhandled.
    this.#out.on('error', (err) => {
      this.#error ??= err;
    });
    this.#format = format;
    this.#outputNames = outputNames;
    this.#labelColumn = labelColumn;
  }

  async write(outputs: Outputs, firstRow: number, rows: number, labels: readonly unknown[] | undefined): Promise<void> {
    if (this.#error) throw this.#error;
    const cols = this.#outputNames.map((name) => outputs.get(name) ?? { width: 1, values: [] as string[] });
    if (this.#header === undefined) {
      this.#header = ['row'];
      this.#outputNames.forEach((name, k) => {
        const width = cols[k]?.width ?? 1;
        if (width > 1) for (let i = 0; i < width; i++) this.#header?.push(`${name}_${i}`);
        else this.#header?.push(name);
      });
      if (this.#labelColumn !== undefined) this.#header.push(this.#labelColumn);
      if (this.#format === 'csv') this.#out.write(`${this.#header.map(csvField).join(',')}\n`);
    }
    const hasLabel = this.#labelColumn !== undefined;
    if (this.#format === 'csv') {
      const lines = new CsvBytes(rows * (8 + cols.reduce((n, c) => n + c.width * 12, 0) + (hasLabel ? 8 : 0)));
      for (let r = 0; r < rows; r++) {
        lines.number(firstRow + r);
        for (const { width, values } of cols) {
          for (let k = r * width, end = k + width; k < end; k++) {
            lines.byte(44);
            lines.value(values[k]);
          }
        }
        if (hasLabel) {
          lines.byte(44);
          lines.value(labels?.[r]);
        }
        lines.byte(10);
      }
      if (!this.#out.write(lines.bytes())) await once(this.#out, 'drain');
      return;
    }
    const header = this.#header;
    let text = '';
    for (let r = 0; r < rows; r++) {
      const obj: Record<string, unknown> = { [header[0] as string]: firstRow + r };
      let h = 1;
      for (const { width, values } of cols) for (let k = r * width, end = k + width; k < end; k++) obj[header[h++] as string] = values[k];
      if (hasLabel) obj[header[h] as string] = labels?.[r] ?? null;
      text += `${JSON.stringify(obj)}\n`;
    }
    if (!this.#out.write(text)) await once(this.#out, 'drain');
  }

  async close(): Promise<void> {
    if (this.#error) throw this.#error;
    this.#out.end();
    await once(this.#out, 'finish');
  }

  /** Closes without waiting, for failure paths; writes still in flight are dropped quietly. */
  destroy(): void {
    this.#out.destroy();
  }
}
