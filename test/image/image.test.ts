// The image a Raspberry Pi pulls: the OCI archive scripts/image.sh builds (make test builds it
// first), read the way a registry client and a node's containerd read it. One image index, one
// image per architecture, and inside each only that architecture's native code, every library it
// links present, and (for arm64) every segment aligned for a 16 KB-page kernel, the default on a
// Pi 5's Raspberry Pi OS.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ELF_MACHINE, elfLinking, imageFor, readImage, unpackImages, type PlatformImage, type UnpackedImages } from '../helpers/image.ts';

const TRIPLET = { amd64: 'x86_64-linux-gnu', arm64: 'aarch64-linux-gnu' } as const;
/** The goal for what a Pi pulls per architecture (the compressed layer). */
const MAX_COMPRESSED_BYTES = 80 * 1000 * 1000;

let images: PlatformImage[];
let layout: Awaited<ReturnType<typeof readImage>>['layout'];
let indexMediaType: string;
let unpacked: UnpackedImages;

beforeAll(async () => {
  const read = await readImage();
  images = read.images;
  layout = read.layout;
  indexMediaType = read.index.mediaType;
  unpacked = await unpackImages(images);
}, 180_000);

afterAll(() => unpacked?.remove());

describe('the OCI archive of the project image', () => {
  it('is one image index, named with the tag, with a linux/amd64 and a linux/arm64 (v8) image', () => {
    expect(layout.manifests).toHaveLength(1);
    expect(layout.manifests[0]).toMatchObject({
      mediaType: 'application/vnd.oci.image.index.v1+json',
      annotations: { 'io.containerd.image.name': 'kmj.local/keda-ml-jobs:0.1.0', 'org.opencontainers.image.ref.name': '0.1.0' },
    });
    expect(indexMediaType).toBe('application/vnd.oci.image.index.v1+json');
    expect(images.map((i) => i.descriptor.platform)).toEqual([
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
  });

  for (const arch of ['amd64', 'arm64'] as const) {
    describe(`linux/${arch}`, () => {
      it('has a config for its platform that runs kmj as uid 1000 with the image’s own Node', () => {
        const image = imageFor(images, arch);
        expect(image.config).toMatchObject({ architecture: arch, os: 'linux', ...(arch === 'arm64' ? { variant: 'v8' } : {}) });
        expect(image.config.config).toMatchObject({
          Entrypoint: ['/usr/local/bin/node', '/app/bin/kmj.js'],
          User: '1000:1000',
          WorkingDir: '/app',
        });
        expect(image.manifest.layers).toHaveLength(1);
        expect(image.manifest.layers[0]?.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
        expect(image.config.rootfs.diff_ids).toHaveLength(1);
      });

      it(`holds native code for ${arch} only: every ELF file is 64-bit with machine ${ELF_MACHINE[arch]}`, () => {
        const files = unpacked.elves.get(arch) ?? [];
        const paths = files.map((f) => f.path);
        // What must be there: Node, onnxruntime's binding and library, the C and C++ runtime, the loader.
        expect(paths).toContain('/usr/local/bin/node');
        expect(paths).toContain(
          `/app/node_modules/onnxruntime-node/bin/napi-v6/linux/${arch === 'amd64' ? 'x64' : 'arm64'}/onnxruntime_binding.node`,
        );
        expect(paths).toContain(
          `/app/node_modules/onnxruntime-node/bin/napi-v6/linux/${arch === 'amd64' ? 'x64' : 'arm64'}/libonnxruntime.so.1`,
        );
        for (const lib of ['libc.so.6', 'libstdc++.so.6', 'libgcc_s.so.1', 'libm.so.6'])
          expect(paths).toContain(`/lib/${TRIPLET[arch]}/${lib}`);
        const foreign = files.filter((f) => f.machine !== ELF_MACHINE[arch] || f.elfClass !== 64);
        expect(foreign, `ELF files of another architecture in the ${arch} image`).toEqual([]);
      });

      it('links nothing it does not carry: every NEEDED library and the loader are in the image', async () => {
        const root = unpacked.roots.get(arch) ?? '';
        const missing: string[] = [];
        for (const f of unpacked.elves.get(arch) ?? []) {
          const linking = await elfLinking(join(root, f.path));
          const dir = f.path.slice(0, f.path.lastIndexOf('/'));
          const beside = linking.runpath?.split(':').some((p) => p.replace(/\/$/, '') === '$ORIGIN') ?? false;
          for (const lib of linking.needed) {
            const found = [`/lib/${TRIPLET[arch]}/${lib}`, ...(beside ? [`${dir}/${lib}`] : [])].some((p) =>
              (unpacked.elves.get(arch) ?? []).some((e) => e.path === p),
            );
            if (!found) missing.push(`${f.path} needs ${lib}`);
          }
          if (linking.interpreter !== undefined && !existsSync(join(root, linking.interpreter)))
            missing.push(`${f.path} names the loader ${linking.interpreter}`);
        }
        expect(missing).toEqual([]);
      });

      it(`is at most ${MAX_COMPRESSED_BYTES / 1e6} MB compressed (what a Pi pulls)`, () => {
        const layer = imageFor(images, arch).manifest.layers[0];
        expect(layer?.size).toBeGreaterThan(10_000_000);
        expect(layer?.size).toBeLessThanOrEqual(MAX_COMPRESSED_BYTES);
      });
    });
  }

  it('maps on a 16 KB-page kernel: every arm64 ELF file aligns its loaded segments to 16 KB or more', async () => {
    // A 4 KB-aligned segment cannot be mapped at a 16 KB page boundary, and the loader refuses the
    // file ("ELF load command address/offset not page-aligned"). Checked on the files themselves,
    // since emulation here runs with 4 KB pages.
    const root = unpacked.roots.get('arm64') ?? '';
    const small: string[] = [];
    for (const f of unpacked.elves.get('arm64') ?? []) {
      const { loadAlign } = await elfLinking(join(root, f.path));
      expect(loadAlign.length, `${f.path} has loadable segments`).toBeGreaterThan(0);
      for (const a of loadAlign) if (a < 16384) small.push(`${f.path}: ${a}`);
    }
    expect(small).toEqual([]);
  });
});
