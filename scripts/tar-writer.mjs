// A tar writer for image layers and archives (scripts/image-archive.mjs): every entry owned by
// root with a fixed time, so the same tree gives the same bytes. Names longer than the ustar
// fields go in PAX headers.
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync, statSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';

const MTIME = 0;
const BLOCK = 512;

/** A tar stream into a file descriptor, hashing what it writes. */
export class TarWriter {
  #fd;
  #hash = createHash('sha256');
  constructor(fd) {
    this.#fd = fd;
  }
  /** A writer into a new file at PATH; close() ends the archive and the file. */
  static toFile(path) {
    return new TarWriter(openSync(path, 'w'));
  }
  #write(buf) {
    writeSync(this.#fd, buf);
    this.#hash.update(buf);
  }
  #header(name, { size = 0, mode = 0o644, type = '0', linkname = '' }) {
    const pax = [];
    let shortName = name;
    let prefix = '';
    if (Buffer.byteLength(name) > 100) {
      const cut = name.lastIndexOf('/', 154);
      if (cut > 0 && Buffer.byteLength(name.slice(cut + 1)) <= 100 && Buffer.byteLength(name.slice(0, cut)) <= 155) {
        prefix = name.slice(0, cut);
        shortName = name.slice(cut + 1);
      } else {
        pax.push(['path', name]);
        shortName = name.slice(0, 99);
      }
    }
    if (Buffer.byteLength(linkname) > 100) pax.push(['linkpath', linkname]);
    if (pax.length > 0) {
      const body = Buffer.from(pax.map(([k, v]) => paxRecord(k, v)).join(''));
      this.#raw(`PaxHeaders/${basename(shortName)}`.slice(0, 99), '', { size: body.length, mode: 0o644, type: 'x', linkname: '' });
      this.#write(body);
      this.#pad(body.length);
    }
    this.#raw(shortName, prefix, { size, mode, type, linkname: linkname.slice(0, 100) });
  }
  #raw(name, prefix, { size, mode, type, linkname }) {
    const h = Buffer.alloc(BLOCK);
    h.write(name, 0, 100);
    h.write(octal(mode, 8), 100);
    h.write(octal(0, 8), 108);
    h.write(octal(0, 8), 116);
    h.write(octal(size, 12), 124);
    h.write(octal(MTIME, 12), 136);
    h.fill(' ', 148, 156);
    h.write(type, 156);
    h.write(linkname, 157, 100);
    h.write('ustar\u000000', 257);
    h.write('root', 265);
    h.write('root', 297);
    h.write(prefix, 345, 155);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\u0000 `, 148);
    this.#write(h);
  }
  #pad(size) {
    const rest = size % BLOCK;
    if (rest > 0) this.#write(Buffer.alloc(BLOCK - rest));
  }
  dir(name, mode) {
    this.#header(`${name}/`, { mode, type: '5' });
  }
  symlink(name, target) {
    this.#header(name, { type: '2', linkname: target, mode: 0o777 });
  }
  file(name, mode, path) {
    const size = statSync(path).size;
    this.#header(name, { size, mode });
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(1024 * 1024);
      for (let left = size; left > 0;) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, left), null);
        if (n <= 0) throw new Error(`${path} shrank while it was packed`);
        this.#write(n === buf.length ? buf : buf.subarray(0, n));
        left -= n;
      }
    } finally {
      closeSync(fd);
    }
    this.#pad(size);
  }
  bytes(name, buf) {
    this.#header(name, { size: buf.length });
    this.#write(buf);
    this.#pad(buf.length);
  }
  /** Ends the archive; its sha256. */
  end() {
    this.#write(Buffer.alloc(BLOCK * 2));
    return this.#hash.digest('hex');
  }
  /** Ends the archive and closes its file; its sha256. */
  close() {
    try {
      return this.end();
    } finally {
      closeSync(this.#fd);
    }
  }
}

function octal(n, width) {
  return `${n.toString(8).padStart(width - 1, '0')}\u0000`;
}

function paxRecord(key, value) {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

/** Every entry under `root`, parents before children, names sorted. */
export function walk(tar, root, rel = '') {
  for (const name of readdirSync(join(root, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const p = join(root, r);
    const st = lstatSync(p);
    const mode = st.mode & 0o7777;
    if (st.isSymbolicLink()) tar.symlink(r, readlinkSync(p));
    else if (st.isDirectory()) {
      tar.dir(r, mode);
      walk(tar, root, r);
    } else if (st.isFile()) tar.file(r, mode, p);
    else throw new Error(`${p}: only files, directories and symlinks go into an image`);
  }
}

/** Packs every entry under ROOT into a tar file at PATH; the tar's sha256 (its diff id). */
export function packLayer(root, path) {
  const tar = TarWriter.toFile(path);
  try {
    walk(tar, root);
  } catch (err) {
    tar.close();
    throw err;
  }
  return `sha256:${tar.close()}`;
}
