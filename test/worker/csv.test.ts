// CsvParser: RFC 4180 records out of text pushed in chunks of any size. Each case gives the exact
// records; then the same text is fed split at every position (and in every 3-chunk split of the
// short ones), which must give the same records as one push.
import { describe, expect, it } from 'vitest';
import { CsvParser } from '../../worker/dataset/csv.ts';

function parseWhole(text: string): string[][] {
  const p = new CsvParser();
  return [...p.push(text), ...p.end()];
}

function parseChunks(chunks: readonly string[]): string[][] {
  const p = new CsvParser();
  const out: string[][] = [];
  for (const c of chunks) out.push(...p.push(c));
  out.push(...p.end());
  return out;
}

interface Case {
  readonly name: string;
  readonly text: string;
  readonly records: string[][];
}

const CASES: readonly Case[] = [
  { name: 'plain lines', text: 'a,b,c\n1,2,3\n', records: [['a', 'b', 'c'], ['1', '2', '3']] },
  { name: 'quoted fields with commas', text: 'name,note\n"Smith, J","a,b,,c"\n', records: [['name', 'note'], ['Smith, J', 'a,b,,c']] },
  { name: '"" escapes', text: 'q\n"say ""hi"""\n""""\n"a""b""c"\n', records: [['q'], ['say "hi"'], ['"'], ['a"b"c']] },
  { name: 'newlines inside quotes', text: 'id,text\n1,"line one\nline two"\n2,"x\r\ny"\n', records: [['id', 'text'], ['1', 'line one\nline two'], ['2', 'x\r\ny']] },
  { name: 'CRLF line ends', text: 'a,b\r\n1,2\r\n"3",4\r\n', records: [['a', 'b'], ['1', '2'], ['3', '4']] },
  { name: 'no final newline', text: 'a,b\n1,2', records: [['a', 'b'], ['1', '2']] },
  { name: 'no final newline after a quoted field', text: 'a,b\n1,"2,x"', records: [['a', 'b'], ['1', '2,x']] },
  { name: 'no final newline after CRLF lines', text: 'a,b\r\n1,2\r\n3,4', records: [['a', 'b'], ['1', '2'], ['3', '4']] },
  { name: 'empty lines are skipped', text: '\na,b\n\n1,2\n\r\n\n3,4\n\n', records: [['a', 'b'], ['1', '2'], ['3', '4']] },
  { name: 'a quote inside an unquoted field is literal', text: 'h1,h2\n5" screen,ok\nab"c"d,"e"\n', records: [['h1', 'h2'], ['5" screen', 'ok'], ['ab"c"d', 'e']] },
  { name: 'empty fields, quoted and not', text: ',,\n"",x,""\n,"",\n', records: [['', '', ''], ['', 'x', ''], ['', '', '']] },
  { name: 'a record of one quoted empty field is kept', text: 'a\n""\nb\n', records: [['a'], [''], ['b']] },
  { name: 'unicode text', text: 'ville,note\n"Zürich, CH",été ☀\n東京,"😀,😀"\n', records: [['ville', 'note'], ['Zürich, CH', 'été ☀'], ['東京', '😀,😀']] },
  {
    name: 'a mix of everything',
    text: 'id,"na,me",v\r\n1,"a ""q"" b",x"y\n\n2,"multi\r\nline, ""quoted""",\r\n3,,"end"',
    records: [['id', 'na,me', 'v'], ['1', 'a "q" b', 'x"y'], ['2', 'multi\r\nline, "quoted"', ''], ['3', '', 'end']],
  },
];

describe('CsvParser', () => {
  for (const c of CASES) {
    it(`parses ${c.name}`, () => {
      expect(parseWhole(c.text)).toEqual(c.records);
    });
  }

  it('gives the same records whatever the split point of the text', () => {
    for (const c of CASES) {
      for (let i = 0; i <= c.text.length; i++) {
        expect(parseChunks([c.text.slice(0, i), c.text.slice(i)]), `${c.name}, split at ${i}`).toEqual(c.records);
      }
    }
  });

  it('gives the same records for every split into three chunks, and one character at a time', () => {
    for (const c of CASES) {
      const n = c.text.length;
      for (let i = 0; i <= n; i++) {
        for (let j = i; j <= n; j++) {
          expect(parseChunks([c.text.slice(0, i), c.text.slice(i, j), c.text.slice(j)]), `${c.name}, split at ${i} and ${j}`).toEqual(c.records);
        }
      }
      expect(parseChunks([...c.text]), `${c.name}, one character at a time`).toEqual(c.records);
    }
  });

  it('returns each record from the push that completes it', () => {
    const p = new CsvParser();
    expect(p.push('a,b\n1,')).toEqual([['a', 'b']]);
    expect(p.push('"2')).toEqual([]);
    expect(p.push('\n3"\n4,5')).toEqual([['1', '2\n3']]);
    expect(p.push('')).toEqual([]);
    expect(p.end()).toEqual([['4', '5']]);
  });

  it('throws at the end when a quoted field is never closed', () => {
    for (const text of ['a,b\n1,"2\n3\n', 'a\n"', 'a\n"x""', 'a,"b""\r\n']) {
      const p = new CsvParser();
      p.push(text);
      expect(() => p.end(), JSON.stringify(text)).toThrow(new Error('a quoted field is not closed before the end of the file'));
    }
  });

  it('throws for an unclosed quote whatever the split point', () => {
    const text = 'id,text\n1,"never closed, spans\nlines ""and"" more';
    for (let i = 0; i <= text.length; i++) {
      const p = new CsvParser();
      p.push(text.slice(0, i));
      p.push(text.slice(i));
      expect(() => p.end(), `split at ${i}`).toThrow('a quoted field is not closed before the end of the file');
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
