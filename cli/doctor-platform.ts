/**
 * `kmj doctor`'s checks of the node itself, for the Raspberry Pi's own pitfalls: a 32-bit
 * userland, a page size the native code was not built for, a memory cgroup the kernel left off.
 * They read /proc and /sys and the ELF headers of the files this process has loaded; they change
 * nothing. The file reads are injected so tests can give them another machine's files.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { machine } from 'node:os';
import type { Check } from '../worker/doctor.ts';

/** How the checks read the machine: a path's bytes (its first maxBytes), or undefined when it cannot be read. */
export type ReadFile = (path: string, maxBytes?: number) => Buffer | undefined;

export const readHostFile: ReadFile = (path, maxBytes) => {
  try {
    if (maxBytes === undefined) return readFileSync(path);
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(maxBytes);
      return buf.subarray(0, readSync(fd, buf, 0, maxBytes, 0));
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined; // absent or unreadable: each check says what that means
  }
};

const KB = 1024;

/** 64-bit userland: onnxruntime and this image exist for arm64 and x64 only. */
export function checkUserland(arch: string = process.arch, kernelMachine: string = machine()): Check {
  if (arch === 'arm64' || arch === 'x64')
    return { name: 'userland', status: 'ok', detail: `64-bit ${arch} userland on a ${kernelMachine} kernel` };
  const fix =
    arch === 'arm'
      ? 'install Raspberry Pi OS (64-bit): a 32-bit userland makes Node "arm", for which onnxruntime has no build (a 64-bit kernel under a 32-bit userland is not enough)'
      : 'run on linux/arm64 or linux/amd64, the architectures the image is built for';
  return { name: 'userland', status: 'fail', detail: `${arch} userland on a ${kernelMachine} kernel`, fix };
}

/** The kernel's page size, from the process's auxiliary vector (AT_PAGESZ); undefined if unreadable. */
export function pageSizeOf(auxv: Buffer | undefined): number | undefined {
  if (!auxv) return undefined;
  const AT_PAGESZ = 6n;
  for (let i = 0; i + 16 <= auxv.length; i += 16) {
    const type = auxv.readBigUInt64LE(i);
    if (type === 0n) break;
    if (type === AT_PAGESZ) return Number(auxv.readBigUInt64LE(i + 8));
  }
  return undefined;
}

/** The smallest alignment of an ELF file's loadable segments (64-bit little-endian files only). */
export function loadAlignment(elf: Buffer): number | undefined {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return undefined;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  let smallest: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > elf.length) return undefined;
    if (elf.readUInt32LE(at) !== 1) continue; // PT_LOAD
    const align = Number(elf.readBigUInt64LE(at + 48));
    smallest = smallest === undefined ? align : Math.min(smallest, align);
  }
  return smallest;
}

/** The files this process has mapped (its executable and every shared library and addon), from /proc/self/maps. */
export function mappedFiles(maps: string): string[] {
  const files = new Set<string>();
  for (const line of maps.split('\n')) {
    const path = line.trim().split(/\s+/).slice(5).join(' ');
    if (path.startsWith('/') && !path.startsWith('/dev/') && !path.startsWith('/memfd:') && !path.endsWith('(deleted)')) files.add(path);
  }
  return [...files].sort();
}

/**
 * The page size, and whether every native file this process loaded can be mapped with it: a
 * segment aligned to less than the page size cannot be placed on a page boundary, and the loader
 * refuses the file. A Raspberry Pi 5 boots a 16 KB-page kernel by default. Run after onnxruntime
 * has loaded, so its libraries are among the files checked.
 */
export function checkPageSize(read: ReadFile = readHostFile): Check {
  const page = pageSizeOf(read('/proc/self/auxv'));
  if (page === undefined)
    return {
      name: 'page-size',
      status: 'fail',
      detail: 'the page size cannot be read (/proc/self/auxv)',
      fix: 'run kmj doctor on Linux with /proc mounted',
    };
  const maps = read('/proc/self/maps')?.toString('utf8') ?? '';
  const checked: Array<{ file: string; align: number }> = [];
  for (const file of mappedFiles(maps)) {
    // The ELF header and program headers sit in the first pages of the file.
    const head = read(file, 64 * KB);
    const align = head ? loadAlignment(head) : undefined;
    if (align !== undefined) checked.push({ file, align });
  }
  if (checked.length === 0)
    return {
      name: 'page-size',
      status: 'fail',
      detail: `page size ${page / KB} KB; no loaded ELF file could be read (/proc/self/maps)`,
      fix: 'run kmj doctor on Linux with /proc mounted',
    };
  const short = checked.filter((c) => c.align < page);
  const smallest = Math.min(...checked.map((c) => c.align));
  const names = (list: typeof checked): string =>
    list.map((c) => `${c.file.slice(c.file.lastIndexOf('/') + 1)} (${c.align / KB} KB)`).join(', ');
  if (short.length > 0) {
    return {
      name: 'page-size',
      status: 'fail',
      detail: `page size ${page / KB} KB, but ${names(short)} align their segments to less`,
      fix:
        page > 4 * KB
          ? 'boot the 4 KB-page kernel: add "kernel=kernel8.img" to /boot/firmware/config.txt and reboot, or use an image whose native files are built for larger pages'
          : 'use the image built for this architecture',
    };
  }
  const under16 = checked.filter((c) => c.align < 16 * KB);
  const sixteen =
    under16.length === 0
      ? 'all of them would load on a 16 KB-page kernel too'
      : `on a 16 KB-page kernel ${under16.length} would not: ${names(under16.slice(0, 4))}${under16.length > 4 ? ', …' : ''}`;
  return {
    name: 'page-size',
    status: 'ok',
    detail: `page size ${page / KB} KB; the ${checked.length} native files loaded align their segments to ${smallest / KB} KB or more: ${sixteen}`,
  };
}

/**
 * The memory cgroup: enabled in the kernel (/proc/cgroups; Raspberry Pi kernels disable it unless
 * the boot line enables it, and then k3s will not start, or pod memory limits are not enforced),
 * and the limit this process runs under (cgroup v2's memory.max, or v1's memory.limit_in_bytes).
 * In a pod (inCluster), a missing limit fails: the worker's pods are meant to run under one.
 */
export function checkMemoryCgroup(inCluster: boolean, read: ReadFile = readHostFile): Check {
  const fix = 'add "cgroup_memory=1 cgroup_enable=memory" to the one line of /boot/firmware/cmdline.txt and reboot';
  const cmdline = read('/proc/cmdline')?.toString('utf8') ?? '';
  const row = (read('/proc/cgroups')?.toString('utf8') ?? '').split('\n').find((l) => l.split(/\s+/)[0] === 'memory');
  const enabled = row?.trim().split(/\s+/)[3] === '1';
  const disabledOnBootLine = /(^|\s)cgroup_disable=memory(\s|$)/.test(cmdline) && !/(^|\s)cgroup_enable=memory(\s|$)/.test(cmdline);
  if (!enabled || disabledOnBootLine) {
    return {
      name: 'memory-cgroup',
      status: 'fail',
      detail: row ? 'the kernel has the memory cgroup disabled (/proc/cgroups)' : 'the kernel has no memory cgroup (/proc/cgroups)',
      fix,
    };
  }
  const own = (read('/proc/self/cgroup')?.toString('utf8') ?? '').split('\n');
  const v2Path = own.find((l) => l.startsWith('0::'))?.slice(3) ?? '/';
  const v1Path = own.map((l) => l.split(':')).find((p) => p[1]?.split(',').includes('memory'))?.[2];
  const text = (path: string): string | undefined => read(path)?.toString('utf8').trim();
  let limit: string | undefined;
  if (v1Path !== undefined)
    limit = text(`/sys/fs/cgroup/memory${v1Path}/memory.limit_in_bytes`) ?? text('/sys/fs/cgroup/memory/memory.limit_in_bytes');
  else limit = text(`/sys/fs/cgroup${v2Path === '/' ? '' : v2Path}/memory.max`) ?? text('/sys/fs/cgroup/memory.max');
  if (limit === undefined)
    return {
      name: 'memory-cgroup',
      status: 'fail',
      detail: 'the memory cgroup is enabled, but this process has no memory controller (no memory.max)',
      fix: "on cgroup v2, the memory controller must be enabled for the pod's cgroup: check the kubelet's cgroup driver and k3s's log",
    };
  const bytes = limit === 'max' ? Number.POSITIVE_INFINITY : Number(limit);
  // cgroup v1 writes "no limit" as the largest page-aligned 64-bit value.
  const unlimited = !Number.isFinite(bytes) || bytes >= 2 ** 62;
  if (unlimited && inCluster)
    return {
      name: 'memory-cgroup',
      status: 'fail',
      detail: 'the memory cgroup is enabled, but this pod runs without a memory limit',
      fix: 'give the pod resources.limits.memory (keda/scaledjob.yaml gives the worker one)',
    };
  return {
    name: 'memory-cgroup',
    status: 'ok',
    detail: unlimited
      ? 'the memory cgroup is enabled; this process runs without a limit'
      : `the memory cgroup is enabled; this process's limit is ${Math.round(bytes / (KB * KB))} MiB`,
  };
}
