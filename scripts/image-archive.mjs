#!/usr/bin/env node
// Packs a root directory into a one-layer image, as a docker-archive tar that
// `ctr images import` loads: nothing is pulled and no Docker engine is needed.
//
//   node scripts/image-archive.mjs --rootfs DIR --tag NAME:TAG --out FILE.tar
//        [--entrypoint /a,/b] [--cmd x,y] [--user 1000] [--workdir /app] [--env K=V]... [--arch amd64]
//
// The layer holds every file, directory and symlink under DIR with its mode, owned by root, with
// a fixed time: the same tree gives the same image id. Names longer than the ustar fields go in
// PAX headers.
import { createHash } from 'node:crypto';
import { closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { arch } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    rootfs: { type: 'string' },
    tag: { type: 'string' },
    out: { type: 'string' },
    entrypoint: { type: 'string' },
    cmd: { type: 'string' },
    user: { type: 'string' },
    workdir: { type: 'string' },
    env: { type: 'string', multiple: true },
    arch: { type: 'string' },
  },
  strict: true,
});
const problems = [];
for (const k of ['rootfs', 'tag', 'out']) if (!values[k]) problems.push(`--${k}: is required`);
if (values.tag && !/^[a-z0-9][a-z0-9._\/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(values.tag)) problems.push(`--tag: ${JSON.stringify(values.tag)} must be name:tag`);
if (problems.length > 0) {
  process.stderr.write(`image-archive: ${problems.join('; ')}\n`);
  process.exit(64);
}

const MTIME = 0;
const BLOCK = 512;

/** A tar stream into a file descriptor, hashing what it writes. */
class TarWriter {
  #fd;
  #hash = createHash('sha256');
  constructor(fd) {
    this.#fd = fd;
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
      for (let left = size; left > 0; ) {
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
  end() {
    this.#write(Buffer.alloc(BLOCK * 2));
    return this.#hash.digest('hex');
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
function walk(tar, root, rel) {
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

const out = values.out;
const layerPath = `${out}.layer.partial`;
const layerFd = openSync(layerPath, 'w');
const layerTar = new TarWriter(layerFd);
walk(layerTar, values.rootfs, '');
const diffId = `sha256:${layerTar.end()}`;
closeSync(layerFd);

const goArch = { x64: 'amd64', arm64: 'arm64' }[arch()] ?? arch();
const split = (s) => (s === undefined ? undefined : s.split(','));
const config = {
  architecture: values.arch ?? goArch,
  os: 'linux',
  created: '1970-01-01T00:00:00Z',
  config: {
    ...(values.entrypoint ? { Entrypoint: split(values.entrypoint) } : {}),
    ...(values.cmd ? { Cmd: split(values.cmd) } : {}),
    ...(values.user ? { User: values.user } : {}),
    ...(values.workdir ? { WorkingDir: values.workdir } : {}),
    Env: values.env ?? ['PATH=/usr/local/bin:/usr/bin:/bin'],
  },
  rootfs: { type: 'layers', diff_ids: [diffId] },
  history: [{ created: '1970-01-01T00:00:00Z', created_by: `scripts/image-archive.mjs --rootfs ${basename(values.rootfs)}` }],
};
const configJson = Buffer.from(JSON.stringify(config));
const configName = `${createHash('sha256').update(configJson).digest('hex')}.json`;
const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [values.tag], Layers: ['layer.tar'] }]));

const partial = `${out}.partial`;
const fd = openSync(partial, 'w');
const tar = new TarWriter(fd);
tar.bytes(configName, configJson);
tar.file('layer.tar', 0o644, layerPath);
tar.bytes('manifest.json', manifest);
tar.end();
closeSync(fd);
renameSync(partial, out);
// The layer is inside the archive now.
rmSync(layerPath, { force: true });
process.stdout.write(`${JSON.stringify({ tag: values.tag, image: configName.replace(/\.json$/, ''), layer: diffId, bytes: statSync(out).size })}\n`);
