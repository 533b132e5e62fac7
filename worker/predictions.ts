/**
 * Writes predictions to a local file, batch by batch, as CSV or JSON Lines; the file is then
 * uploaded as the run's artifact. Columns: `row` (1-based dataset row), one column per model
 * output (`<output>_<i>` for each element of a vector output), and the label when the request
 * names a label column.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';
import type { DataFormat } from './request.ts';
import type { Outputs } from './model/onnx.ts';

function csvField(v: unknown): string {
  if (v === undefined || v === null) return '';
  const s = typeof v === 'string' ? v : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
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
    let text = '';
    if (this.#format === 'csv') {
      for (let r = 0; r < rows; r++) {
        // Numbers need no quoting: only strings go through csvField.
        let line = String(firstRow + r);
        for (const { width, values } of cols) {
          for (let k = r * width, end = k + width; k < end; k++) {
            const v = values[k];
            line += typeof v === 'number' ? `,${v}` : `,${csvField(v)}`;
          }
        }
        if (hasLabel) {
          const l = labels?.[r];
          line += `,${typeof l === 'number' ? l : csvField(l)}`;
        }
        text += `${line}\n`;
      }
    } else {
      const header = this.#header;
      for (let r = 0; r < rows; r++) {
        const obj: Record<string, unknown> = { [header[0] as string]: firstRow + r };
        let h = 1;
        for (const { width, values } of cols) for (let k = r * width, end = k + width; k < end; k++) obj[header[h++] as string] = values[k];
        if (hasLabel) obj[header[h] as string] = labels?.[r] ?? null;
        text += `${JSON.stringify(obj)}\n`;
      }
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
