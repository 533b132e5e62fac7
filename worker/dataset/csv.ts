/**
 * A streaming CSV parser (RFC 4180: comma separated, fields optionally in double quotes, "" for a
 * quote inside them, CRLF or LF line ends). Text is pushed in chunks of any size; complete
 * records come out. Lines without quotes take a fast path: a plain split on commas.
 */
export class CsvParser {
  #carry = '';
  #record: string[] = [];
  #field = '';
  #inQuotes = false;
  #quotedField = false;

  /** Parses `text` and returns the records completed by it. */
  push(text: string): string[][] {
    const records: string[][] = [];
    let s = this.#carry + text;
    this.#carry = '';
    let i = 0;
    const n = s.length;
    while (i < n) {
      if (!this.#inQuotes && this.#field === '' && this.#record.length === 0 && !this.#quotedField) {
        // Fast path: a whole line with no quote in it.
        const nl = s.indexOf('\n', i);
        if (nl === -1) break; // incomplete line: keep it for the next chunk
        const line = s.charCodeAt(nl - 1) === 13 ? s.slice(i, nl - 1) : s.slice(i, nl);
        // A lone CR inside the line ends a record on the careful path; let it take that path.
        if (line.indexOf('"') === -1 && line.indexOf('\r') === -1) {
          if (line.length > 0) records.push(line.split(','));
          i = nl + 1;
          continue;
        }
      }
      const c = s.charCodeAt(i);
      if (this.#inQuotes) {
        if (c === 34) {
          if (i + 1 >= n) break; // need the next char to tell "" from a closing quote
          if (s.charCodeAt(i + 1) === 34) {
            this.#field += '"';
            i += 2;
          } else {
            this.#inQuotes = false;
            i++;
          }
        } else {
          const q = s.indexOf('"', i);
          const end = q === -1 ? n : q;
          this.#field += s.slice(i, end);
          i = end;
        }
        continue;
      }
      if (c === 34 && this.#field === '') {
        this.#inQuotes = true;
        this.#quotedField = true;
        i++;
      } else if (c === 44) {
        this.#record.push(this.#field);
        this.#field = '';
        this.#quotedField = false;
        i++;
      } else if (c === 10 || c === 13) {
        if (c === 13) {
          if (i + 1 >= n) break;
          if (s.charCodeAt(i + 1) === 10) i++;
        }
        this.#record.push(this.#field);
        if (!(this.#record.length === 1 && this.#record[0] === '' && !this.#quotedField)) records.push(this.#record);
        this.#record = [];
        this.#field = '';
        this.#quotedField = false;
        i++;
      } else if (c === 34) {
        // A quote inside an unquoted field is taken literally.
        this.#field += '"';
        i++;
      } else {
        let j = i + 1;
        while (j < n) {
          const d = s.charCodeAt(j);
          if (d === 44 || d === 10 || d === 13 || d === 34) break;
          j++;
        }
        this.#field += s.slice(i, j);
        i = j;
      }
    }
    this.#carry = s.slice(i);
    s = '';
    return records;
  }

  /** Flushes the last record. Throws when a quoted field is never closed. */
  end(): string[][] {
    const records = this.push('\n');
    if (this.#inQuotes) throw new Error('a quoted field is not closed before the end of the file');
    return records;
  }
}
