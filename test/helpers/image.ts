/**
 * The project's multi-arch image as a registry client and a node see it: the OCI archive that
 * scripts/image.sh builds (`make test` builds it before the tests), read through its index, each
 * platform's layer unpacked into a directory; the ELF facts of its native files (readelf reads
 * any architecture's); and the command that runs an arm64 image's own Node and kmj on this amd64
 * machine under user-mode emulation.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readSync, closeSync, readdirSync, lstatSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { packageFile } from '../../common/paths.ts';

const run = promisify(execFile);

export const IMAGE_ARCHIVE = packageFile('.run', 'images', 'keda-ml-jobs.oci.tar');

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly platform?: { os: string; architecture: string; variant?: string };
  readonly annotations?: Record<string, string>;
}

export interface PlatformImage {
  readonly descriptor: Descriptor;
  readonly manifest: { mediaType: string; config: Descriptor; layers: Descriptor[] };
  readonly config: {
    architecture: string;
    os: string;
    variant?: string;
    config: { Entrypoint?: string[]; Cmd?: string[]; User?: string; WorkingDir?: string; Env?: string[] };
    rootfs: { diff_ids: string[] };
  };
}

async function member(archive: string, name: string): Promise<string> {
  return (await run('tar', ['-xOf', archive, name], { maxBuffer: 16 * 1024 * 1024 })).stdout;
}

const blobName = (digest: string): string => `blobs/sha256/${digest.replace(/^sha256:/, '')}`;

/** The archive's top-level index.json, its image index, and each platform's manifest and config. */
export async function readImage(
  archive = IMAGE_ARCHIVE,
): Promise<{ layout: { manifests: Descriptor[] }; index: { mediaType: string; manifests: Descriptor[] }; images: PlatformImage[] }> {
  if (!existsSync(archive))
    throw new Error(`${archive} is missing: run the tests with "make test", which builds it (scripts/image.sh build)`);
  const layout = JSON.parse(await member(archive, 'index.json')) as { manifests: Descriptor[] };
  const top = layout.manifests[0];
  if (top === undefined) throw new Error(`${archive}: index.json names no image`);
  const index = JSON.parse(await member(archive, blobName(top.digest))) as { mediaType: string; manifests: Descriptor[] };
  const images: PlatformImage[] = [];
  for (const descriptor of index.manifests) {
    const manifest = JSON.parse(await member(archive, blobName(descriptor.digest))) as PlatformImage['manifest'];
    const config = JSON.parse(await member(archive, blobName(manifest.config.digest))) as PlatformImage['config'];
    images.push({ descriptor, manifest, config });
  }
  return { layout, index, images };
}

/** The image for one architecture; fails naming the ones there are. */
export function imageFor(images: readonly PlatformImage[], architecture: string): PlatformImage {
  const image = images.find((i) => i.descriptor.platform?.architecture === architecture);
  if (!image)
    throw new Error(
      `the image index has no ${architecture} image (it has ${images.map((i) => i.descriptor.platform?.architecture).join(', ')})`,
    );
  return image;
}

/** Unpacks the image's (single) layer into a new temporary directory; its path. */
export async function unpackLayer(image: PlatformImage, archive = IMAGE_ARCHIVE): Promise<string> {
  const layer = image.manifest.layers[0];
  if (!layer) throw new Error('the image has no layer');
  const dir = mkdtempSync(join(tmpdir(), `kmj-image-${image.config.architecture}-`));
  await run('bash', ['-c', 'set -o pipefail; tar -xOf "$1" "$2" | tar -xzf - -C "$3"', 'unpack', archive, blobName(layer.digest), dir], {
    maxBuffer: 1024 * 1024,
  });
  return dir;
}

/** Each platform's layer unpacked (roots by architecture) with its ELF files; remove() deletes the roots. */
export interface UnpackedImages {
  readonly roots: ReadonlyMap<string, string>;
  readonly elves: ReadonlyMap<string, ElfFile[]>;
  remove(): void;
}

/** Unpacks the amd64 and arm64 images of an index and lists the ELF files of each. */
export async function unpackImages(images: readonly PlatformImage[], archive = IMAGE_ARCHIVE): Promise<UnpackedImages> {
  const roots = new Map<string, string>();
  const elves = new Map<string, ElfFile[]>();
  const remove = (): void => {
    for (const root of roots.values()) rmSync(root, { recursive: true, force: true });
  };
  try {
    for (const arch of ['amd64', 'arm64']) {
      const root = await unpackLayer(imageFor(images, arch), archive);
      roots.set(arch, root);
      elves.set(arch, elfFiles(root));
    }
  } catch (err) {
    remove();
    throw err;
  }
  return { roots, elves, remove };
}

/** ELF e_machine values. */
export const ELF_MACHINE = { amd64: 62, arm64: 183 } as const;

export interface ElfFile {
  /** The path inside the image, from its root. */
  readonly path: string;
  readonly elfClass: 32 | 64;
  readonly machine: number;
}

/** Every ELF file under ROOT (regular files whose first bytes are \x7fELF), with class and machine. */
export function elfFiles(root: string, rel = ''): ElfFile[] {
  const out: ElfFile[] = [];
  for (const name of readdirSync(join(root, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    const st = lstatSync(join(root, r));
    if (st.isDirectory()) out.push(...elfFiles(root, r));
    else if (st.isFile() && st.size >= 20) {
      const head = Buffer.alloc(20);
      const fd = openSync(join(root, r), 'r');
      try {
        readSync(fd, head, 0, 20, 0);
      } finally {
        closeSync(fd);
      }
      if (head.readUInt32BE(0) !== 0x7f454c46) continue;
      out.push({ path: `/${r}`, elfClass: head[4] === 2 ? 64 : 32, machine: head.readUInt16LE(18) });
    }
  }
  return out;
}

export interface ElfLinking {
  /** PT_INTERP: the dynamic loader the kernel starts, for executables. */
  readonly interpreter?: string;
  /** DT_NEEDED: the shared libraries it links. */
  readonly needed: string[];
  /** DT_RUNPATH. */
  readonly runpath?: string;
  /** The alignment of each PT_LOAD segment: the largest page size the file can be mapped with. */
  readonly loadAlign: number[];
}

/** What `readelf` says of a file's loading: interpreter, needed libraries, runpath, segment alignment. */
export async function elfLinking(file: string): Promise<ElfLinking> {
  const { stdout } = await run('readelf', ['-lWd', file], { maxBuffer: 4 * 1024 * 1024 });
  const interpreter = /Requesting program interpreter: (.+)\]/.exec(stdout)?.[1];
  const runpath = /\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]/.exec(stdout)?.[1];
  const needed = [...stdout.matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1] ?? '');
  const loadAlign = [...stdout.matchAll(/^\s*LOAD\s.*\s(0x[0-9a-f]+)$/gm)].map((m) => Number(m[1]));
  return { needed, loadAlign, ...(interpreter !== undefined ? { interpreter } : {}), ...(runpath !== undefined ? { runpath } : {}) };
}

/**
 * /proc/cpuinfo as a Raspberry Pi 5's kernel writes it (four Cortex-A76 cores). onnxruntime's CPU
 * detection parses /proc/cpuinfo; under emulation on this machine it would read the host's x86
 * one and crash while loading (../shared/notes/arm64-emulation.md), so the emulated process sees
 * this one instead, bind-mounted in a mount namespace of its own.
 */
export function pi5CpuInfo(): string {
  const core = (i: number): string =>
    [
      `processor\t: ${i}`,
      'BogoMIPS\t: 108.00',
      'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp',
      'CPU implementer\t: 0x41',
      'CPU architecture: 8',
      'CPU variant\t: 0x4',
      'CPU part\t: 0xd0b',
      'CPU revision\t: 1',
      '',
    ].join('\n');
  return `${[0, 1, 2, 3].map(core).join('\n')}\n`;
}

/** The path of Debian's qemu-aarch64-static (scripts/arch-deps.sh fetches it once per machine). */
export async function qemuAarch64(): Promise<string> {
  const { stdout } = await run('bash', [packageFile('scripts', 'arch-deps.sh'), 'qemu'], { maxBuffer: 1024 * 1024 });
  return stdout.trim();
}

/**
 * The command that runs kmj from an arm64 image's root ROOT on this machine: the image's own
 * Node (`ROOT/usr/local/bin/node`) and `ROOT/app/bin/kmj.js`, under `qemu-aarch64-static -L ROOT`
 * (the image's loader and libraries), in a private mount namespace whose /proc/cpuinfo is a
 * Pi 5's. Nothing outside that namespace changes, and no binfmt_misc handler is registered.
 */
export function arm64KmjCommand(root: string, qemu: string): string[] {
  const cpuinfo = join(mkdtempSync(join(tmpdir(), 'kmj-cpuinfo-')), 'cpuinfo');
  writeFileSync(cpuinfo, pi5CpuInfo());
  return [
    'unshare',
    '--mount',
    '--propagation',
    'private',
    '--',
    'sh',
    '-c',
    'mount --bind "$0" /proc/cpuinfo && exec "$@"',
    cpuinfo,
    qemu,
    '-L',
    root,
    join(root, 'usr', 'local', 'bin', 'node'),
    join(root, 'app', 'bin', 'kmj.js'),
  ];
}
