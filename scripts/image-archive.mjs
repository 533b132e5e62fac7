#!/usr/bin/env node
// Packs root directories into one-layer images that `ctr images import` loads and any registry
// client pushes: nothing is pulled and no Docker engine is needed. Two forms:
//
//   node scripts/image-archive.mjs --rootfs DIR --tag NAME:TAG --out FILE.tar [--arch amd64]
//        [--entrypoint /a,/b] [--cmd x,y] [--user 1000] [--workdir /app] [--env K=V]...
//        [--stop-signal SIGINT]
//     a docker-archive of one image for one architecture (this machine's unless --arch), its
//     layer uncompressed;
//
//   node scripts/image-archive.mjs --platform linux/amd64=DIR --platform linux/arm64=DIR
//        --tag NAME:TAG --out FILE.tar [the same config options]
//     an OCI image layout in a tar (an "oci-archive"): one image index naming one image per
//     platform, each with its own gzip-compressed layer made from its own DIR. Load it with
//     `ctr images import --all-platforms FILE.tar`; push it with `skopeo copy --all
//     oci-archive:FILE.tar docker://REGISTRY/NAME:TAG` (or crane, regctl, oras).
//
// Each layer holds every file, directory and symlink under its DIR with its mode, owned by root,
// with a fixed time (scripts/tar-writer.mjs): the same trees give the same digests.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, renameSync, rmSync, statSync } from 'node:fs';
import { arch } from 'node:os';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { createGzip } from 'node:zlib';
import { TarWriter, packLayer } from './tar-writer.mjs';

const { values } = parseArgs({
  options: {
    rootfs: { type: 'string' },
    platform: { type: 'string', multiple: true },
    tag: { type: 'string' },
    out: { type: 'string' },
    entrypoint: { type: 'string' },
    cmd: { type: 'string' },
    user: { type: 'string' },
    workdir: { type: 'string' },
    env: { type: 'string', multiple: true },
    'stop-signal': { type: 'string' },
    arch: { type: 'string' },
  },
  strict: true,
});

/** An OCI platform: `os/architecture[/variant]`; arm64 images carry the variant v8. */
function parsePlatform(text) {
  const [os = '', architecture = '', variant] = text.split('/');
  return { os, architecture, ...(variant ? { variant } : architecture === 'arm64' ? { variant: 'v8' } : {}) };
}

const problems = [];
for (const k of ['tag', 'out']) if (!values[k]) problems.push(`--${k}: is required`);
if (values.tag && !/^[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(values.tag))
  problems.push(`--tag: ${JSON.stringify(values.tag)} must be name:tag`);
const platforms = [];
if (values.rootfs && values.platform) problems.push('--rootfs and --platform: give one or the other');
else if (!values.rootfs && !values.platform) problems.push('--rootfs or --platform: one is required');
for (const p of values.platform ?? []) {
  const m = /^(linux\/(?:amd64|arm64)(?:\/v8)?)=(.+)$/.exec(p);
  if (!m) problems.push(`--platform: ${JSON.stringify(p)} must be linux/amd64=DIR or linux/arm64=DIR`);
  else if (platforms.some((q) => q.name === m[1])) problems.push(`--platform: ${m[1]} is given twice`);
  else platforms.push({ name: m[1], rootfs: m[2], ...parsePlatform(m[1]) });
}
if (values['stop-signal'] !== undefined && !/^SIG[A-Z0-9]+$/.test(values['stop-signal']))
  problems.push(`--stop-signal: ${JSON.stringify(values['stop-signal'])} must be a signal name such as SIGINT`);
if (values.platform && values.arch) problems.push('--arch: goes with --rootfs only (--platform names each architecture)');
if (problems.length > 0) {
  process.stderr.write(`image-archive: ${problems.join('; ')}\n`);
  process.exit(64);
}

const split = (s) => (s === undefined ? undefined : s.split(','));
const EPOCH = '1970-01-01T00:00:00Z';

/** The image config for one platform whose single layer has DIFF_ID. */
function imageConfig(platform, diffId) {
  return {
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    created: EPOCH,
    config: {
      ...(values.entrypoint ? { Entrypoint: split(values.entrypoint) } : {}),
      ...(values.cmd ? { Cmd: split(values.cmd) } : {}),
      ...(values.user ? { User: values.user } : {}),
      ...(values.workdir ? { WorkingDir: values.workdir } : {}),
      // What the runtime sends to stop the container (containerd's CRI reads it), as Dockerfile's STOPSIGNAL.
      ...(values['stop-signal'] ? { StopSignal: values['stop-signal'] } : {}),
      Env: values.env ?? ['PATH=/usr/local/bin:/usr/bin:/bin'],
    },
    rootfs: { type: 'layers', diff_ids: [diffId] },
    history: [{ created: EPOCH, created_by: 'scripts/image-archive.mjs' }],
  };
}

const sha256 = (buf) => `sha256:${createHash('sha256').update(buf).digest('hex')}`;
const out = values.out;
const partial = `${out}.partial`;

if (values.rootfs) {
  const layerPath = `${out}.layer.partial`;
  const diffId = packLayer(values.rootfs, layerPath);
  const goArch = { x64: 'amd64', arm64: 'arm64' }[arch()] ?? arch();
  const configJson = Buffer.from(JSON.stringify(imageConfig(parsePlatform(`linux/${values.arch ?? goArch}`), diffId)));
  const configName = `${sha256(configJson).slice('sha256:'.length)}.json`;
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [values.tag], Layers: ['layer.tar'] }]));
  const tar = TarWriter.toFile(partial);
  tar.bytes(configName, configJson);
  tar.file('layer.tar', 0o644, layerPath);
  tar.bytes('manifest.json', manifest);
  tar.close();
  renameSync(partial, out);
  // The layer is inside the archive now.
  rmSync(layerPath, { force: true });
  process.stdout.write(
    `${JSON.stringify({ tag: values.tag, image: configName.replace(/\.json$/, ''), layer: diffId, bytes: statSync(out).size })}\n`,
  );
} else {
  const MEDIA = {
    index: 'application/vnd.oci.image.index.v1+json',
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  };
  const work = mkdtempSync(join(dirname(out), '.image-archive-'));
  try {
    /** Blobs by digest: the file that holds each. */
    const blobs = new Map();
    const jsonBlob = (value) => {
      const buf = Buffer.from(JSON.stringify(value));
      const digest = sha256(buf);
      blobs.set(digest, buf);
      return { digest, size: buf.length };
    };
    const report = [];
    const manifests = [];
    for (const platform of platforms) {
      const tarPath = join(work, 'layer.tar');
      const diffId = packLayer(platform.rootfs, tarPath);
      const gzPath = join(work, `${platform.architecture}.tar.gz`);
      const hash = createHash('sha256');
      const tap = new Transform({
        transform(chunk, _enc, done) {
          hash.update(chunk);
          done(null, chunk);
        },
      });
      await pipeline(createReadStream(tarPath), createGzip({ level: 9 }), tap, createWriteStream(gzPath));
      const layer = { mediaType: MEDIA.layer, digest: `sha256:${hash.digest('hex')}`, size: statSync(gzPath).size };
      const uncompressed = statSync(tarPath).size;
      rmSync(tarPath);
      blobs.set(layer.digest, gzPath);
      const config = { mediaType: MEDIA.config, ...jsonBlob(imageConfig(platform, diffId)) };
      const manifest = jsonBlob({ schemaVersion: 2, mediaType: MEDIA.manifest, config, layers: [layer] });
      const { os, architecture, variant } = platform;
      manifests.push({ mediaType: MEDIA.manifest, ...manifest, platform: { architecture, os, ...(variant ? { variant } : {}) } });
      report.push({
        platform: platform.name,
        manifest: manifest.digest,
        layer: layer.digest,
        compressedBytes: layer.size,
        uncompressedBytes: uncompressed,
      });
    }
    const index = jsonBlob({ schemaVersion: 2, mediaType: MEDIA.index, manifests });
    const ref = values.tag.slice(values.tag.lastIndexOf(':') + 1);
    const layout = {
      schemaVersion: 2,
      mediaType: MEDIA.index,
      manifests: [
        {
          mediaType: MEDIA.index,
          ...index,
          annotations: { 'io.containerd.image.name': values.tag, 'org.opencontainers.image.ref.name': ref },
        },
      ],
    };
    const tar = TarWriter.toFile(partial);
    tar.bytes('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    tar.bytes('index.json', Buffer.from(JSON.stringify(layout)));
    tar.dir('blobs', 0o755);
    tar.dir('blobs/sha256', 0o755);
    for (const [digest, blob] of [...blobs].sort(([a], [b]) => a.localeCompare(b))) {
      const name = `blobs/sha256/${digest.slice('sha256:'.length)}`;
      if (typeof blob === 'string') tar.file(name, 0o644, blob);
      else tar.bytes(name, blob);
    }
    tar.close();
    renameSync(partial, out);
    process.stdout.write(`${JSON.stringify({ tag: values.tag, index: index.digest, images: report, bytes: statSync(out).size })}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
