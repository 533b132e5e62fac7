// CsvTokenizer: RFC 4180 records out of bytes pushed in chunks of any size. Each case gives the
// exact records; then the same text is fed split at every position (and in every 3-chunk split of
// the short ones, and one byte at a time), which must give the same records as one push. Then the
// number reader against Number(), and CsvColumns, the sink that makes column batches.
import { describe, expect, it } from 'vitest';
import {
  CsvColumns,
  CsvTokenizer,
  NOT_UTF8,
  SAMPLE_ROWS,
  UNCLOSED_QUOTE,
  decodeField,
  parseNumber,
  type CsvSink,
} from '../../worker/dataset/csv.ts';

/** Collects records as arrays of strings. */
class Records implements CsvSink {
  readonly out: string[][] = [];
  record(buf: Buffer, base: number, count: number, starts: Int32Array, ends: Int32Array, quoted: Uint8Array): boolean {
    const rec: string[] = [];
    for (let j = 0; j < count; j++) rec.push(decodeField(buf, base + (starts[j] as number), base + (ends[j] as number), quoted[j] === 1));
    this.out.push(rec);
    return true;
  }
}

/** Pushes and ends the tokenizer, for one test's push()/end() calls. */
class Parser {
  readonly #sink = new Records();
  readonly #tokenizer = new CsvTokenizer(this.#sink);
  #taken = 0;
  #take(): string[][] {
    const got = this.#sink.out.slice(this.#taken);
    this.#taken = this.#sink.out.length;
    return got;
  }
  push(text: string | Buffer): string[][] {
    this.#tokenizer.push(typeof text === 'string' ? Buffer.from(text) : text);
    return this.#take();
  }
  end(): string[][] {
    this.#tokenizer.end();
    return this.#take();
  }
}

function parseWhole(text: string): string[][] {
  const p = new Parser();
  return [...p.push(text), ...p.end()];
}

function parseChunks(chunks: ReadonlyArray<string | Buffer>): string[][] {
  const p = new Parser();
  const out: string[][] = [];
  for (const c of chunks) out.push(...p.push(c));
  out.push(...p.end());
  return out;
}

function bytesSplits(text: string): Buffer[][] {
  const b = Buffer.from(text);
  const out: Buffer[][] = [];
  for (let i = 0; i <= b.length; i++) out.push([b.subarray(0, i), b.subarray(i)]);
  return out;
}

interface Case {
  readonly name: string;
  readonly text: string;
  readonly records: string[][];
}

const CASES: readonly Case[] = [
  {
    name: 'plain lines',
    text: 'a,b,c\n1,2,3\n',
    records: [
      ['a', 'b', 'c'],
      ['1', '2', '3'],
    ],
  },
  {
    name: 'quoted fields with commas',
    text: 'name,note\n"Smith, J","a,b,,c"\n',
    records: [
      ['name', 'note'],
      ['Smith, J', 'a,b,,c'],
    ],
  },
  { name: '"" escapes', text: 'q\n"say ""hi"""\n""""\n"a""b""c"\n', records: [['q'], ['say "hi"'], ['"'], ['a"b"c']] },
  {
    name: 'newlines inside quotes',
    text: 'id,text\n1,"line one\nline two"\n2,"x\r\ny"\n',
    records: [
      ['id', 'text'],
      ['1', 'line one\nline two'],
      ['2', 'x\r\ny'],
    ],
  },
  {
    name: 'CRLF line ends',
    text: 'a,b\r\n1,2\r\n"3",4\r\n',
    records: [
      ['a', 'b'],
      ['1', '2'],
      ['3', '4'],
    ],
  },
  {
    name: 'no final newline',
    text: 'a,b\n1,2',
    records: [
      ['a', 'b'],
      ['1', '2'],
    ],
  },
  {
    name: 'no final newline after a quoted field',
    text: 'a,b\n1,"2,x"',
    records: [
      ['a', 'b'],
      ['1', '2,x'],
    ],
  },
  {
    name: 'no final newline after CRLF lines',
    text: 'a,b\r\n1,2\r\n3,4',
    records: [
      ['a', 'b'],
      ['1', '2'],
      ['3', '4'],
    ],
  },
  {
    name: 'empty lines are skipped',
    text: '\na,b\n\n1,2\n\r\n\n3,4\n\n',
    records: [
      ['a', 'b'],
      ['1', '2'],
      ['3', '4'],
    ],
  },
  {
    name: 'a quote inside an unquoted field is literal',
    text: 'h1,h2\n5" screen,ok\nab"c"d,"e"\n',
    records: [
      ['h1', 'h2'],
      ['5" screen', 'ok'],
      ['ab"c"d', 'e'],
    ],
  },
  {
    name: 'empty fields, quoted and not',
    text: ',,\n"",x,""\n,"",\n',
    records: [
      ['', '', ''],
      ['', 'x', ''],
      ['', '', ''],
    ],
  },
  { name: 'a record of one quoted empty field is kept', text: 'a\n""\nb\n', records: [['a'], [''], ['b']] },
  {
    name: 'unicode text',
    text: 'ville,note\n"Zürich, CH",été ☀\n東京,"😀,😀"\n',
    records: [
      ['ville', 'note'],
      ['Zürich, CH', 'été ☀'],
      ['東京', '😀,😀'],
    ],
  },
  {
    name: 'a mix of everything',
    text: 'id,"na,me",v\r\n1,"a ""q"" b",x"y\n\n2,"multi\r\nline, ""quoted""",\r\n3,,"end"',
    records: [
      ['id', 'na,me', 'v'],
      ['1', 'a "q" b', 'x"y'],
      ['2', 'multi\r\nline, "quoted"', ''],
      ['3', '', 'end'],
    ],
  },
];

describe('CsvTokenizer', () => {
  for (const c of CASES) {
    it(`parses ${c.name}`, () => {
      expect(parseWhole(c.text)).toEqual(c.records);
    });
  }

  it('gives the same records whatever the split point of the text', () => {
    for (const c of CASES) {
      const cps = [...c.text]; // split between characters here; inside them further down
      for (let i = 0; i <= cps.length; i++) {
        expect(parseChunks([cps.slice(0, i).join(''), cps.slice(i).join('')]), `${c.name}, split at ${i}`).toEqual(c.records);
      }
    }
  });

  it('gives the same records for every split into three chunks, and one character at a time', () => {
    for (const c of CASES) {
      const cps = [...c.text];
      const n = cps.length;
      const part = (a: number, b?: number): string => cps.slice(a, b).join('');
      for (let i = 0; i <= n; i++) {
        for (let j = i; j <= n; j++) {
          expect(parseChunks([part(0, i), part(i, j), part(j)]), `${c.name}, split at ${i} and ${j}`).toEqual(c.records);
        }
      }
      expect(parseChunks([...c.text]), `${c.name}, one character at a time`).toEqual(c.records);
      const bytes = Buffer.from(c.text);
      expect(parseChunks([...bytes].map((x) => Buffer.from([x]))), `${c.name}, one byte at a time`).toEqual(c.records);
    }
  });

  it('gives the same records when a chunk ends inside a character', () => {
    for (const c of CASES) {
      for (const [k, chunks] of bytesSplits(c.text).entries())
        expect(parseChunks(chunks), `${c.name}, split at byte ${k}`).toEqual(c.records);
    }
  });

  it('hands each record over from the push that completes it', () => {
    const p = new Parser();
    expect(p.push('a,b\n1,')).toEqual([['a', 'b']]);
    expect(p.push('"2')).toEqual([]);
    expect(p.push('\n3"\n4,5')).toEqual([['1', '2\n3']]);
    expect(p.push('')).toEqual([]);
    expect(p.end()).toEqual([['4', '5']]);
  });

  it('throws at the end when a quoted field is never closed', () => {
    for (const text of ['a,b\n1,"2\n3\n', 'a\n"', 'a\n"x""', 'a,"b""\r\n']) {
      const p = new Parser();
      p.push(text);
      expect(() => p.end(), JSON.stringify(text)).toThrow(UNCLOSED_QUOTE);
    }
  });

  it('throws for an unclosed quote whatever the split point', () => {
    const text = 'id,text\n1,"never closed, spans\nlines ""and"" more';
    for (let i = 0; i <= text.length; i++) {
      const p = new Parser();
      p.push(text.slice(0, i));
      p.push(text.slice(i));
      expect(() => p.end(), `split at ${i}`).toThrow(UNCLOSED_QUOTE);
    }
  });

  it('treats a lone CR the same on a line with a quote as on a line without one', () => {
    const withoutQuote = parseWhole('x\ry,z\n');
    const withQuote = parseWhole('x\ry,"z"\n');
    expect(withQuote).toEqual(withoutQuote);
  });

  it('keeps the records of a long generated file the same in chunks of several sizes', () => {
    // Deterministic pseudo-random fields with every special character.
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const alphabet = ['a', 'b', ',', '"', '\n', '\r\n', ' ', 'é', '1'];
    const expected: string[][] = [];
    let text = '';
    for (let r = 0; r < 300; r++) {
      const record: string[] = [];
      for (let f = 0; f < 4; f++) {
        let v = '';
        for (let k = rand(6); k > 0; k--) v += alphabet[rand(alphabet.length)];
        record.push(v);
      }
      // Records of one empty unquoted field are skipped as empty lines: quote every field.
      text += `${record.map((v) => `"${v.replace(/"/g, '""')}"`).join(',')}${r % 2 === 0 ? '\n' : '\r\n'}`;
      expected.push(record);
    }
    expect(parseWhole(text)).toEqual(expected);
    for (const size of [1, 2, 3, 7, 64, 1000]) {
      const chunks: string[] = [];
      for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
      expect(parseChunks(chunks), `chunks of ${size}`).toEqual(expected);
    }
  });
});

describe('CsvTokenizer bytes', () => {
  it('drops a leading byte order mark, whatever the split, and keeps one anywhere else', () => {
    const text = '\uFEFFa,b\n1,\uFEFF2\n';
    for (const [k, chunks] of bytesSplits(text).entries()) {
      expect(parseChunks(chunks), `split at byte ${k}`).toEqual([
        ['a', 'b'],
        ['1', '\uFEFF2'],
      ]);
    }
    expect(parseWhole('\uFEFF')).toEqual([]);
    expect(parseWhole('\uFEFFx')).toEqual([['x']]);
  });

  it('refuses bytes that are not UTF-8, wherever the chunks split them', () => {
    const bad = [
      Buffer.from([0x61, 0x2c, 0x62, 0x0a, 0xff, 0x2c, 0x31, 0x0a]), // 0xff is never UTF-8
      Buffer.concat([Buffer.from('a\n'), Buffer.from([0xc3])]), // a character cut off at the end
      Buffer.concat([Buffer.from('a\n"'), Buffer.from([0xe6, 0x9d]), Buffer.from('x"\n')]), // a character missing its last byte
      Buffer.concat([Buffer.from('a\n'), Buffer.from([0x80, 0x80, 0x80, 0x80]), Buffer.from('\n')]), // continuation bytes alone
    ];
    for (const b of bad) {
      for (let i = 0; i <= b.length; i++) {
        expect(() => parseChunks([b.subarray(0, i), b.subarray(i)]), `${b.toString('hex')} split at ${i}`).toThrow(NOT_UTF8);
      }
    }
  });
});

describe('parseNumber', () => {
  const read = (s: string): number => {
    const b = Buffer.from(`,${s},`);
    return parseNumber(b, 1, b.length - 1);
  };

  it('reads plain decimals to the same double as Number()', () => {
    const texts = [
      '0',
      '-0',
      '+5',
      '6.8977',
      '.5',
      '5.',
      '-3.25',
      '1e5',
      '1E-5',
      '2.5e+3',
      '123456789012345',
      '0.000001234',
      '1e22',
      '9.99999999999999e-8',
      '00012.50',
    ];
    for (const t of texts) expect(Object.is(read(t), Number(t)), t).toBe(true);
  });

  it('agrees with Number() on random decimals of up to 15 digits', () => {
    let seed = 11;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let k = 0; k < 20_000; k++) {
      const intDigits = rand(8);
      const fracDigits = rand(16 - Math.max(1, intDigits));
      let t = rand(2) ? '-' : '';
      for (let d = 0; d < intDigits; d++) t += String(rand(10));
      if (fracDigits > 0 || intDigits === 0) t += '.';
      for (let d = 0; d < Math.max(fracDigits, intDigits === 0 ? 1 : 0); d++) t += String(rand(10));
      if (rand(4) === 0) t += `e${rand(2) ? '-' : ''}${rand(20)}`;
      const got = read(t);
      if (!Number.isNaN(got)) expect(Object.is(got, Number(t)), t).toBe(true);
    }
  });

  it('leaves everything else to the careful reader (NaN)', () => {
    for (const t of [
      '',
      '-',
      '.',
      'e5',
      '1e',
      '1e+',
      '1.2.3',
      ' 1',
      '1 ',
      '0x10',
      'nan',
      'Infinity',
      '1_000',
      '1234567890123456',
      '1e99999',
      '1e-30',
      'abc',
    ]) {
      expect(read(t), t).toBeNaN();
    }
  });
});

describe('CsvColumns', () => {
  /** Reads text through CsvColumns, pausing after the header the way the dataset reader does. */
  function columns(text: string, wants: { numbers: number[]; values: number[] }, batchRows = 3, chunk = 5): CsvColumns {
    const sink = new CsvColumns();
    const tokenizer = new CsvTokenizer(sink);
    const bytes = Buffer.from(text);
    let i = 0;
    for (; i < bytes.length && sink.header === undefined; i += chunk) tokenizer.push(bytes.subarray(i, i + chunk));
    sink.configure(batchRows, wants);
    tokenizer.resume();
    for (; i < bytes.length; i += chunk) tokenizer.push(bytes.subarray(i, i + chunk));
    tokenizer.end();
    sink.flush();
    return sink;
  }

  it('makes batches of the columns asked for: numbers as doubles, values as text', () => {
    const text = ' a ,b,label,skip\n1,2.5,x,zz\n-1," 3 ",y,zz\n0,nan,"z, z",zz\n4,1e3,w,zz\n5,-0,v,zz\n';
    const sink = columns(text, { numbers: [0, 1], values: [2] });
    expect(sink.header).toEqual(['a', 'b', 'label', 'skip']);
    expect(sink.ready.map((b) => [b.firstRow, b.length])).toEqual([
      [1, 3],
      [4, 2],
    ]);
    const [first, second] = sink.ready;
    expect([...(first?.numbers(0) ?? [])]).toEqual([1, -1, 0]);
    expect([...(first?.numbers(1) ?? [])]).toEqual([2.5, 3, Number.NaN]);
    expect(first?.values(2)).toEqual(['x', 'y', 'z, z']);
    expect([...(second?.numbers(1) ?? [])]).toEqual([1000, -0]);
    expect(Object.is(second?.numbers(1)[1], -0)).toBe(true);
    expect(second?.values(2)).toEqual(['w', 'v']);
    expect(() => first?.numbers(3)).toThrow('column 3 was not asked for as numbers');
    expect(sink.sample).toEqual([
      ['1', '2.5', 'x', 'zz'],
      ['-1', ' 3 ', 'y', 'zz'],
      ['0', 'nan', 'z, z', 'zz'],
      ['4', '1e3', 'w', 'zz'],
      ['5', '-0', 'v', 'zz'],
    ]);
  });

  it('names the row and the column of a cell that is not a number', () => {
    expect(() => columns('a,b\n1,2\n3,three\n', { numbers: [0, 1], values: [] })).toThrow(
      'dataset: row 2, column "b": "three" is not a number',
    );
    expect(() => columns('a,b\n1,2\n\n3,\n', { numbers: [0, 1], values: [] })).toThrow(
      'dataset: row 2, column "b": an empty value is not a number',
    );
    expect(() => columns('a,b\n1,2\n3,"  "\n', { numbers: [0, 1], values: [] })).toThrow(
      'dataset: row 2, column "b": "  " is not a number',
    );
  });

  it("refuses a row whose width is not the header's, naming the row", () => {
    expect(() => columns('a,b,c\n1,2,3\n4,5\n', { numbers: [0], values: [] })).toThrow('dataset: row 2 has 2 fields, the header has 3');
  });

  it(`keeps the first ${SAMPLE_ROWS} rows as text for the column types, and no more`, () => {
    let text = 'n\n';
    for (let i = 0; i < SAMPLE_ROWS + 50; i++) text += `${i}\n`;
    const sink = columns(text, { numbers: [0], values: [] }, 100, 4096);
    expect(sink.sample.length).toBe(SAMPLE_ROWS);
    expect(sink.ready.reduce((n, b) => n + b.length, 0)).toBe(SAMPLE_ROWS + 50);
    expect(sink.ready.at(-1)?.numbers(0).at(-1)).toBe(SAMPLE_ROWS + 49);
  });
});

describe('CsvColumns fast path', () => {
  /** Reads bytes in chunks of `chunk`, with the fast path or without it. */
  function read(
    bytes: Buffer,
    fast: boolean,
    chunk: number,
    wants: { numbers: number[]; values: number[] },
  ): { batches: Array<{ firstRow: number; numbers: number[][]; values: unknown[][] }>; error?: string } {
    const sink = new CsvColumns();
    if (!fast) (sink as { line?: unknown }).line = undefined;
    const tokenizer = new CsvTokenizer(sink);
    try {
      let i = 0;
      for (; i < bytes.length && sink.header === undefined; i += chunk) tokenizer.push(bytes.subarray(i, i + chunk));
      sink.configure(500, wants);
      tokenizer.resume();
      for (; i < bytes.length; i += chunk) tokenizer.push(bytes.subarray(i, i + chunk));
      tokenizer.end();
      sink.flush();
    } catch (err) {
      return { batches: [], error: (err as Error).message };
    }
    return {
      batches: sink.ready.map((b) => ({
        firstRow: b.firstRow,
        numbers: wants.numbers.map((j) => [...b.numbers(j)]),
        values: wants.values.map((j) => [...b.values(j)]),
      })),
    };
  }

  function generated(seed: number, extra: (r: number) => string | undefined): Buffer {
    let s = seed;
    const rand = (n: number): number => {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      return s % n;
    };
    let text = 'a,b,label,c\n';
    for (let r = 0; r < 3000; r++) {
      const special = extra(r);
      if (special !== undefined) {
        text += special;
        continue;
      }
      const end = rand(10) === 0 ? '\r\n' : '\n';
      const label = rand(20) === 0 ? `"q, ${r}"` : `l${rand(3)}`;
      const b = rand(30) === 0 ? ' 7 ' : rand(30) === 0 ? 'nan' : `${rand(1000) / 8}`;
      text += `${rand(100000) / 1000 - 50},${b},${label},${rand(7)}${end}`;
      if (rand(50) === 0) text += end; // an empty line
    }
    return Buffer.from(text);
  }

  it('gives the same batches as the general way, for every kind of line and chunk size', () => {
    const bytes = generated(5, (r) => (r === 1500 ? '1,2,l,3\r4,5,m,6\n' : undefined));
    const wants = { numbers: [0, 1, 3], values: [2] };
    const general = read(bytes, false, 1 << 20, wants);
    expect(general.error).toBeUndefined();
    expect(general.batches.reduce((n, b) => n + b.numbers[0]!.length, 0)).toBeGreaterThan(3000);
    for (const chunk of [7, 64, 1000, 65536, 1 << 20]) expect(read(bytes, true, chunk, wants), `chunks of ${chunk}`).toEqual(general);
  });

  it('reports the same errors as the general way', () => {
    const cases: Array<[string, string]> = [
      ['1,2,l,3,4\n', 'dataset: row 2001 has 5 fields, the header has 4'],
      ['1,2\n', 'dataset: row 2001 has 2 fields, the header has 4'],
      ['1,two,l,3\n', 'dataset: row 2001, column "b": "two" is not a number'],
      ['1,,l,3\n', 'dataset: row 2001, column "b": an empty value is not a number'],
    ];
    for (const [line, error] of cases) {
      // Row 2001 of the data, past the sample rows, when the fast path is on; no empty lines before it.
      let text = 'a,b,label,c\n';
      for (let r = 0; r < 2000; r++) text += `${r},${r / 4},l,1\n`;
      text += line;
      for (let r = 0; r < 10; r++) text += `${r},1,l,1\n`;
      const bytes = Buffer.from(text);
      for (const fast of [false, true])
        expect(read(bytes, fast, 4096, { numbers: [0, 1, 3], values: [2] }).error, `${line.trim()} fast=${fast}`).toBe(error);
    }
  });
});

describe('CsvTokenizer pauses', () => {
  it('reads everything at end() even when the sink pauses after every record', () => {
    const out: string[] = [];
    const sink: CsvSink = {
      record(buf, base, _count, starts, ends, quoted) {
        out.push(decodeField(buf, base + (starts[0] as number), base + (ends[0] as number), quoted[0] === 1));
        return false;
      },
    };
    const t = new CsvTokenizer(sink);
    t.push(Buffer.from('h\n1\n2\n3'));
    expect(out).toEqual(['h']);
    t.end();
    expect(out).toEqual(['h', '1', '2', '3']);
    const u = new CsvTokenizer(sink);
    u.push(Buffer.from('h\n1\n"unclosed'));
    expect(() => u.end()).toThrow(UNCLOSED_QUOTE);
  });

  it('CsvColumns refuses to be configured before its header is read', () => {
    expect(() => new CsvColumns().configure(10, { numbers: [0], values: [] })).toThrow(
      'CsvColumns: configure() before the header was read',
    );
  });
});
