// The MLflow image for the Pis: the OCI archive scripts/mlflow-image.sh builds (make test builds
// it first, once per machine), read as a registry client and a node read it. One image index with
// a linux/amd64 and a linux/arm64 image, each with only its own architecture's native code
// (Python, the wheels' extension modules and their bundled libraries), and each one's Python
// loading MLflow's server and its Postgres driver: the amd64 one natively in a chroot, the arm64
// one under qemu-aarch64-static (test/image/arm64.test.ts says what emulation can and cannot show).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { ELF_MACHINE, qemuAarch64, readImage, unpackImages, type PlatformImage, type UnpackedImages } from '../helpers/image.ts';

const run = promisify(execFile);
const IMPORTS =
  'import platform, mlflow, mlflow.server, psycopg2, sqlalchemy, numpy; print(platform.machine(), mlflow.__version__, psycopg2.__version__.split()[0])';

let archive: string;
let images: PlatformImage[];
let unpacked: UnpackedImages;

beforeAll(async () => {
  archive = (await run('bash', [packageFile('scripts', 'mlflow-image.sh'), 'build'], { maxBuffer: 1024 * 1024 })).stdout.trim();
  images = (await readImage(archive)).images;
  unpacked = await unpackImages(images, archive);
}, 600_000);

afterAll(() => unpacked?.remove());

describe('the MLflow image index', () => {
  it('names a linux/amd64 and a linux/arm64 (v8) image that run mlflow as uid 1000', () => {
    expect(images.map((i) => i.descriptor.platform)).toEqual([
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64', variant: 'v8' },
    ]);
    for (const i of images) expect(i.config.config).toMatchObject({ Entrypoint: ['/opt/mlflow/bin/mlflow'], User: '1000:1000' });
  });

  for (const arch of ['amd64', 'arm64'] as const) {
    it(`linux/${arch} holds native code for ${arch} only: Python, the extension modules and their libraries`, () => {
      const files = unpacked.elves.get(arch) ?? [];
      const paths = files.map((f) => f.path);
      expect(paths).toContain('/usr/bin/python3.11');
      expect(paths.some((p) => /^\/opt\/mlflow\/site\/psycopg2\/_psycopg\..*\.so$/.test(p))).toBe(true);
      expect(paths.some((p) => /^\/opt\/mlflow\/site\/numpy\/_core\/_multiarray_umath\..*\.so$/.test(p))).toBe(true);
      const foreign = files.filter((f) => f.machine !== ELF_MACHINE[arch] || f.elfClass !== 64);
      expect(foreign, `ELF files of another architecture in the ${arch} MLflow image`).toEqual([]);
    });
  }

  it('linux/amd64: its own Python loads MLflow’s server and psycopg2 (in a chroot of the image)', async () => {
    const { stdout } = await run('/usr/sbin/chroot', [unpacked.roots.get('amd64') ?? '', '/usr/bin/python3', '-c', IMPORTS], {
      env: { PATH: '/usr/bin:/bin', PYTHONPATH: '/opt/mlflow/site', HOME: '/tmp' },
    });
    expect(stdout.trim()).toBe('x86_64 3.17.2 2.9.10');
    const version = await run('/usr/sbin/chroot', [unpacked.roots.get('amd64') ?? '', '/opt/mlflow/bin/mlflow', '--version'], {
      env: { PATH: '/opt/mlflow/bin:/usr/bin:/bin', PYTHONPATH: '/opt/mlflow/site', HOME: '/tmp' },
    });
    expect(version.stdout.trim()).toBe('mlflow, version 3.17.2');
  }, 120_000);

  it('linux/arm64: its own Python loads MLflow’s server and psycopg2 under emulation', async () => {
    const root = unpacked.roots.get('arm64') ?? '';
    const qemu = await qemuAarch64();
    const { stdout } = await run(qemu, ['-L', root, `${root}/usr/bin/python3.11`, '-c', IMPORTS], {
      env: { PATH: '/usr/bin:/bin', PYTHONPATH: '/opt/mlflow/site', HOME: '/tmp' },
      timeout: 240_000,
    });
    expect(stdout.trim()).toBe('aarch64 3.17.2 2.9.10');
  }, 300_000);
});
