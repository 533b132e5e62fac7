/**
 * CSV read straight from bytes (RFC 4180: comma separated, fields optionally in double quotes,
 * "" for a quote inside them; LF, CRLF or a lone CR ends a record). Bytes are pushed in chunks of
 * any size, split anywhere, even inside a character; each complete record goes to a sink as field
 * offsets into the bytes, so a field nobody asked for is never turned into a string, and a number
 * is read from its bytes without one.
 *
 * The bytes must be UTF-8 (a leading byte order mark is dropped). A quote inside an unquoted field
 * is taken literally, as is text after a closing quote; empty lines are skipped.
 */
import { isUtf8 } from 'node:buffer';
import { PermanentError } from '../../common/errors.ts';
import { ColumnBatch, toNumber, type ColumnWants } from './batch.ts';

const LF = 10;
const CR = 13;
const QUOTE = 34;
const COMMA = 44;

const FIELD_START = 0;
const UNQUOTED = 1;
const QUOTED = 2;
/** In a quoted field, just after a quote: either the first of "" or the closing quote. */
const AFTER_QUOTE = 3;

/**
 * Receives each complete record. Field k is bytes [base + starts[k], base + ends[k]) of `buf`;
 * when `quoted[k]` is 1 the span starts with the opening quote (decodeField unescapes it). The
 * arrays are reused for the next record. Returning false pauses the tokenizer after this record
 * until `resume()`.
 */
export interface CsvSink {
  record(buf: Buffer, base: number, count: number, starts: Int32Array, ends: Int32Array, quoted: Uint8Array): boolean;
  /**
   * An optional fast path, tried at the start of each record: takes a whole simple line (no
   * quote, no CR but the one of a CRLF end) at `start` of the bytes up to `end`, and returns the
   * position after its line end; or NOT_SIMPLE, or LATER when the bytes end before the line does
   * (or the sink wants this one record the general way). Either way nothing is taken, and the
   * record goes the general way.
   */
  line?(buf: Buffer, start: number, end: number): number;
}

export const NOT_SIMPLE = -1;
export const LATER = -2;
/** Lines that are not simple before the fast path may be given up. */
const FAST_PATH_MISSES = 64;

export const NOT_UTF8 = 'dataset: is not valid UTF-8 text';
export const UNCLOSED_QUOTE = 'dataset: is not valid CSV: a quoted field is not closed before the end of the file';

export class CsvTokenizer {
  readonly #sink: CsvSink;
  // The record being read: offsets are from its first byte.
  #starts = new Int32Array(32);
  #ends = new Int32Array(32);
  #quoted = new Uint8Array(32);
  #count = 0;
  #fieldStart = 0;
  #fieldQuoted = 0;
  #mode = FIELD_START;
  /** Bytes of a record not complete yet, from its first byte. */
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** A record ended with CR at the end of a chunk: an LF first in the next one belongs to it. */
  #skipLf = false;
  /** Bytes not tokenized yet because the sink paused. */
  #held: Buffer | undefined;
  #paused = false;
  /** The fast path is given up when more than one line in 16 is not simple (after 64 such). */
  #fastOn = true;
  #fastHits = 0;
  #fastMisses = 0;
  /** The first bytes, until there are enough to tell whether they are a byte order mark. */
  #head: Buffer | undefined = Buffer.alloc(0);
  /** The last bytes pushed, when they may be the start of a character not complete yet. */
  #utf8Tail: Buffer | undefined;

  constructor(sink: CsvSink) {
    this.#sink = sink;
  }

  push(chunk: Buffer): void {
    if (this.#head !== undefined) {
      const head = this.#head.length > 0 ? Buffer.concat([this.#head, chunk]) : chunk;
      if (head.length < 3) {
        this.#head = Buffer.from(head);
        return;
      }
      this.#head = undefined;
      chunk = head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf ? head.subarray(3) : head;
    }
    this.#checkUtf8(chunk);
    if (this.#paused) {
      this.#held = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
      return;
    }
    this.#scan(chunk, 0);
  }

  /** Goes on after the sink paused. */
  resume(): void {
    this.#paused = false;
    const held = this.#held;
    this.#held = undefined;
    if (held) this.#scan(held, 0);
  }

  /** The end of the bytes: the last record, even without a final line end, goes to the sink. */
  end(): void {
    if (this.#head !== undefined) {
      const head = this.#head;
      this.#head = undefined;
      this.#checkUtf8(head);
      this.#scan(head, 0);
    }
    if (this.#utf8Tail && !isUtf8(this.#utf8Tail)) throw new PermanentError(NOT_UTF8, { field: 'dataset' });
    this.#utf8Tail = undefined;
    while (this.#held !== undefined) this.resume(); // the sink may pause again
    if (this.#mode === QUOTED) throw new PermanentError(UNCLOSED_QUOTE, { field: 'dataset' });
    if (this.#pendingBytes === 0) return;
    const record = this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending);
    this.#endField(this.#pendingBytes);
    this.#emit(record, 0);
  }

  /** Refuses bytes that are not UTF-8, keeping back a character that may go on in the next chunk. */
  #checkUtf8(chunk: Buffer): void {
    const data = this.#utf8Tail ? Buffer.concat([this.#utf8Tail, chunk]) : chunk;
    let k = data.length - 1;
    let back = 0;
    while (k >= 0 && back < 3 && ((data[k] as number) & 0xc0) === 0x80) {
      k--;
      back++;
    }
    const cut = k >= 0 && (data[k] as number) >= 0xc0 ? k : data.length;
    if (!isUtf8(data.subarray(0, cut))) throw new PermanentError(NOT_UTF8, { field: 'dataset' });
    this.#utf8Tail = cut < data.length ? Buffer.from(data.subarray(cut)) : undefined;
  }

  #grow(): void {
    const n = this.#starts.length * 2;
    const starts = new Int32Array(n);
    const ends = new Int32Array(n);
    const quoted = new Uint8Array(n);
    starts.set(this.#starts);
    ends.set(this.#ends);
    quoted.set(this.#quoted);
    this.#starts = starts;
    this.#ends = ends;
    this.#quoted = quoted;
  }

  #endField(end: number): void {
    const k = this.#count;
    if (k === this.#starts.length) this.#grow();
    this.#starts[k] = this.#fieldStart;
    this.#ends[k] = end;
    this.#quoted[k] = this.#fieldQuoted;
    this.#count = k + 1;
  }

  /** Hands the record over (unless it is an empty line) and starts the next one. */
  #emit(buf: Buffer, base: number): boolean {
    const count = this.#count;
    this.#count = 0;
    this.#fieldStart = 0;
    this.#fieldQuoted = 0;
    this.#mode = FIELD_START;
    if (this.#pendingBytes > 0) {
      this.#pending = [];
      this.#pendingBytes = 0;
    }
    if (count === 1 && this.#ends[0] === this.#starts[0] && this.#quoted[0] === 0) return true;
    return this.#sink.record(buf, base, count, this.#starts, this.#ends, this.#quoted);
  }

  #scan(buf: Buffer, from: number): void {
    const n = buf.length;
    let i = from;
    if (this.#skipLf && i < n) {
      this.#skipLf = false;
      if (buf[i] === LF) i++;
    }
    // Offsets in the record are i - base; a record begun in earlier chunks has a negative base.
    let base = i - this.#pendingBytes;
    let mode = this.#mode;
    const sink = this.#sink;
    while (i < n) {
      if (base === i && mode === FIELD_START && sink.line && this.#fastOn) {
        const next = sink.line(buf, i, n);
        if (next >= 0) {
          this.#fastHits++;
          i = next;
          base = i;
          continue;
        }
        if (next === NOT_SIMPLE && ++this.#fastMisses >= FAST_PATH_MISSES && this.#fastMisses * 16 > this.#fastHits) this.#fastOn = false;
      }
      if (mode === QUOTED) {
        const q = buf.indexOf(QUOTE, i);
        // The field goes on in the next chunk: the rest of this one is kept as pending.
        if (q === -1) break;
        i = q + 1;
        mode = AFTER_QUOTE;
        continue;
      }
      if (mode === AFTER_QUOTE) {
        if (buf[i] === QUOTE) {
          mode = QUOTED;
          i++;
          continue;
        }
        // Closed; what follows up to the delimiter is literal (the scan below).
      } else if (mode === FIELD_START && buf[i] === QUOTE) {
        mode = QUOTED;
        this.#fieldQuoted = 1;
        i++;
        continue;
      }
      let c = 0;
      while (i < n) {
        c = buf[i] as number;
        if (c === COMMA || c === LF || c === CR) break;
        i++;
      }
      if (i === n) {
        mode = UNQUOTED;
        break;
      }
      this.#endField(i - base);
      i++;
      if (c === COMMA) {
        this.#fieldStart = i - base;
        this.#fieldQuoted = 0;
        mode = FIELD_START;
        continue;
      }
      if (c === CR) {
        if (i < n) {
          if (buf[i] === LF) i++;
        } else this.#skipLf = true;
      }
      const whole = this.#pending.length > 0 ? Buffer.concat([...this.#pending, buf.subarray(0, i)]) : buf;
      const more = this.#emit(whole, whole === buf ? base : 0);
      mode = FIELD_START;
      base = i;
      if (!more) {
        this.#paused = true;
        if (i < n) this.#held = buf.subarray(i);
        return;
      }
    }
    this.#mode = mode;
    if (base < n) {
      const rest = base >= 0 ? buf.subarray(base) : buf;
      this.#pending.push(rest);
      this.#pendingBytes += rest.length;
    }
  }
}

/** The text of a field, unquoted and unescaped. */
export function decodeField(buf: Buffer, start: number, end: number, quoted: boolean): string {
  if (!quoted) {
    // Short ASCII fields (labels, small numbers) without a call into the runtime for each.
    const len = end - start;
    if (len <= 12) {
      let out = '';
      for (let i = start; i < end; i++) {
        const c = buf[i] as number;
        if (c >= 0x80) return buf.toString('utf8', start, end);
        out += String.fromCharCode(c);
      }
      return out;
    }
    return buf.toString('utf8', start, end);
  }
  let out = '';
  let i = start + 1;
  for (;;) {
    const q = buf.indexOf(QUOTE, i);
    if (q === -1 || q >= end) return out + buf.toString('utf8', i, end);
    out += buf.toString('utf8', i, q);
    if (q + 1 < end && buf[q + 1] === QUOTE) {
      out += '"';
      i = q + 2;
      continue;
    }
    // The closing quote; anything after it is literal.
    return out + buf.toString('utf8', q + 1, end);
  }
}

function fieldText(buf: Buffer, base: number, starts: Int32Array, ends: Int32Array, quoted: Uint8Array, j: number): string {
  return decodeField(buf, base + (starts[j] as number), base + (ends[j] as number), quoted[j] === 1);
}

const POW10 = Array.from({ length: 23 }, (_, k) => 10 ** k);

/**
 * A plain decimal number (sign, digits, point, exponent) read from bytes, or NaN for anything
 * else, which the caller then reads the careful way. Up to 15 digits and a power of ten up to 22,
 * the result is one correctly rounded multiplication or division of two exact doubles, so it is
 * the double the same text gives to Number().
 */
export function parseNumber(buf: Buffer, start: number, end: number): number {
  let i = start;
  let neg = false;
  if (i < end) {
    const c = buf[i];
    if (c === 45) {
      neg = true;
      i++;
    } else if (c === 43) i++;
  }
  let m = 0;
  let digits = 0;
  let scale = 0;
  while (i < end) {
    const d = (buf[i] as number) - 48;
    if (d < 0 || d > 9) break;
    m = m * 10 + d;
    digits++;
    i++;
  }
  if (i < end && buf[i] === 46) {
    i++;
    while (i < end) {
      const d = (buf[i] as number) - 48;
      if (d < 0 || d > 9) break;
      m = m * 10 + d;
      digits++;
      scale++;
      i++;
    }
  }
  if (digits === 0 || digits > 15) return Number.NaN;
  let exp = 0;
  if (i < end && ((buf[i] as number) | 0x20) === 101) {
    i++;
    let expNeg = false;
    if (i < end && buf[i] === 45) {
      expNeg = true;
      i++;
    } else if (i < end && buf[i] === 43) i++;
    let expDigits = 0;
    while (i < end) {
      const d = (buf[i] as number) - 48;
      if (d < 0 || d > 9 || expDigits === 4) return Number.NaN;
      exp = exp * 10 + d;
      expDigits++;
      i++;
    }
    if (expDigits === 0) return Number.NaN;
    if (expNeg) exp = -exp;
  }
  if (i !== end) return Number.NaN;
  const p = exp - scale;
  let v: number;
  if (p === 0) v = m;
  else if (p > 0 && p <= 22) v = m * (POW10[p] as number);
  else if (p < 0 && p >= -22) v = m / (POW10[-p] as number);
  else return Number.NaN;
  return neg ? -v : v;
}

/** How many first rows keep every field as text, to guess the column types from. */
export const SAMPLE_ROWS = 1000;

/**
 * A sink that turns records into column batches: the header first (the tokenizer pauses after it,
 * until `configure` says which columns to keep), then rows, checked to have the header's width.
 */
export class CsvColumns implements CsvSink {
  header: string[] | undefined;
  /** The first SAMPLE_ROWS rows, every field as text. */
  readonly sample: string[][] = [];
  /** Full batches, oldest first, for the reader to take. */
  readonly ready: ColumnBatch[] = [];
  #configured = false;
  #batchRows = 0;
  #numberCols: readonly number[] = [];
  #valueCols: readonly number[] = [];
  /** Per dataset column, its place among the number columns and the value columns, or -1. */
  #numberSlot = new Int32Array(0);
  #valueSlot = new Int32Array(0);
  #numbers: Float64Array[] = [];
  #values: string[][] = [];
  #length = 0;
  #rows = 0;

  configure(batchRows: number, wants: ColumnWants): void {
    if (this.header === undefined) throw new Error('CsvColumns: configure() before the header was read');
    this.#batchRows = batchRows;
    this.#numberCols = wants.numbers;
    this.#valueCols = wants.values;
    const width = this.header?.length ?? 0;
    this.#numberSlot = new Int32Array(width).fill(-1);
    this.#valueSlot = new Int32Array(width).fill(-1);
    wants.numbers.forEach((j, k) => (this.#numberSlot[j] = k));
    wants.values.forEach((j, k) => (this.#valueSlot[j] = k));
    this.#configured = true;
    this.#startBatch();
  }

  /** The fast path for a line without quotes: no offsets kept, numbers read as the line is. */
  line(buf: Buffer, start: number, end: number): number {
    const header = this.header;
    if (!this.#configured || header === undefined || this.sample.length < SAMPLE_ROWS) return LATER;
    const first = buf[start];
    if (first === LF || first === CR) return NOT_SIMPLE; // an empty line, skipped the general way
    const width = header.length;
    const r = this.#length;
    const numberSlot = this.#numberSlot;
    const valueSlot = this.#valueSlot;
    let i = start;
    let c = 0;
    for (let j = 0; j < width; j++) {
      const s = i;
      while (i < end) {
        c = buf[i] as number;
        if (c === COMMA || c === LF || c === CR || c === QUOTE) break;
        i++;
      }
      if (i === end) return LATER;
      // A quote, or a width other than the header's: the general way reads it, or names the error.
      if (c === QUOTE || j < width - 1 !== (c === COMMA)) return NOT_SIMPLE;
      const k = numberSlot[j] as number;
      if (k >= 0) {
        const x = parseNumber(buf, s, i);
        if (x !== x) return NOT_SIMPLE; // not a plain number: the careful reader, with its errors
        (this.#numbers[k] as Float64Array)[r] = x;
      }
      const v = valueSlot[j] as number;
      if (v >= 0) (this.#values[v] as string[])[r] = decodeField(buf, s, i, false);
      i++;
    }
    if (c === CR) {
      if (i === end) return LATER;
      if (buf[i] !== LF) return NOT_SIMPLE;
      i++;
    }
    this.#commit();
    return i;
  }

  record(buf: Buffer, base: number, count: number, starts: Int32Array, ends: Int32Array, quoted: Uint8Array): boolean {
    const header = this.header;
    if (header === undefined) {
      this.header = Array.from({ length: count }, (_, j) => fieldText(buf, base, starts, ends, quoted, j).trim());
      return false;
    }
    if (!this.#configured) throw new Error('CsvColumns: rows came before configure()');
    const row = this.#rows + 1;
    if (count !== header.length)
      throw new PermanentError(`dataset: row ${row} has ${count} fields, the header has ${header.length}`, { field: 'dataset' });
    if (this.sample.length < SAMPLE_ROWS)
      this.sample.push(Array.from({ length: count }, (_, j) => fieldText(buf, base, starts, ends, quoted, j)));
    const r = this.#length;
    const numberCols = this.#numberCols;
    const numbers = this.#numbers;
    for (let k = 0; k < numberCols.length; k++) {
      const j = numberCols[k] as number;
      let x = quoted[j] === 1 ? Number.NaN : parseNumber(buf, base + (starts[j] as number), base + (ends[j] as number));
      if (x !== x) x = toNumber(fieldText(buf, base, starts, ends, quoted, j), row, header[j] as string);
      (numbers[k] as Float64Array)[r] = x;
    }
    const valueCols = this.#valueCols;
    for (let k = 0; k < valueCols.length; k++)
      (this.#values[k] as string[])[r] = fieldText(buf, base, starts, ends, quoted, valueCols[k] as number);
    this.#commit();
    return true;
  }

  /** The row being filled is complete. */
  #commit(): void {
    this.#rows++;
    if (++this.#length === this.#batchRows) this.#finishBatch();
  }

  /** The rows of the last batch, at the end of the dataset. */
  flush(): void {
    if (this.#length > 0) this.#finishBatch();
  }

  #startBatch(): void {
    this.#numbers = this.#numberCols.map(() => new Float64Array(this.#batchRows));
    this.#values = this.#valueCols.map(() => new Array<string>(this.#batchRows));
    this.#length = 0;
  }

  #finishBatch(): void {
    const n = this.#length;
    const numbers = new Map(this.#numberCols.map((j, k) => [j, (this.#numbers[k] as Float64Array).subarray(0, n)]));
    const values = new Map(
      this.#valueCols.map((j, k) => [j, n === this.#batchRows ? (this.#values[k] as string[]) : (this.#values[k] as string[]).slice(0, n)]),
    );
    this.ready.push(new ColumnBatch(this.#rows - n + 1, n, numbers, values));
    this.#startBatch();
  }
}
