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
    this.#out = createWriteStream(path);
    // A write error (disk full) is raised by the next write or close; never unhandled.
    this.#out.on('error', (err) => {
      this.#error ??= err;
    });
    this.#format = format;
    this.#outputNames = outputNames;
    this.#labelColumn = labelColumn;
  }

  async write(outputs: Outputs, firstRow: number, labels: readonly unknown[] | undefined): Promise<void> {
    if (this.#error) throw this.#error;
    const first = outputs.get(this.#outputNames[0] ?? '');
    const n = first?.length ?? 0;
    if (this.#header === undefined) {
      this.#header = ['row'];
      for (const name of this.#outputNames) {
        const v = outputs.get(name)?.[0];
        if (Array.isArray(v)) for (let i = 0; i < v.length; i++) this.#header.push(`${name}_${i}`);
        else this.#header.push(name);
      }
      if (this.#labelColumn !== undefined) this.#header.push(this.#labelColumn);
      if (this.#format === 'csv') this.#out.write(`${this.#header.map(csvField).join(',')}\n`);
    }
    const cols = this.#outputNames.map((name) => outputs.get(name) ?? []);
    const hasLabel = this.#labelColumn !== undefined;
    let text = '';
    for (let r = 0; r < n; r++) {
      if (this.#format === 'csv') {
        // Numbers need no quoting: only strings go through csvField.
        let line = String(firstRow + r);
        for (const col of cols) {
          const v = col[r];
          if (typeof v === 'number') line += `,${v}`;
          else if (Array.isArray(v)) for (const x of v) line += `,${x}`;
          else line += `,${csvField(v)}`;
        }
        if (hasLabel) {
          const l = labels?.[r];
          line += `,${typeof l === 'number' ? l : csvField(l)}`;
        }
        text += `${line}\n`;
        continue;
      }
      const values: unknown[] = [firstRow + r];
      for (const col of cols) {
        const v = col[r];
        if (Array.isArray(v)) values.push(...v);
        else values.push(v);
      }
      if (hasLabel) values.push(labels?.[r] ?? null);
      {
        const obj: Record<string, unknown> = {};
        const header = this.#header;
        for (let j = 0; j < header.length; j++) obj[header[j] as string] = values[j];
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
