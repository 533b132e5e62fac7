// TLS and mutual TLS between a KEDA-like gRPC client and the real scaler, with a throwaway PKI made
// by the openssl command line. This is what KEDA does when a TriggerAuthentication gives it
// caCert (server TLS), and tlsClientCert + tlsClientKey (mutual TLS).
import * as grpc from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../common/config.ts';
import { loadScalerConfig } from '../../scaler/config.ts';
import { RabbitFixture } from '../helpers/rabbit.ts';
import { healthCheck, KedaLikeClient, startTestScaler, type ScalerHandle } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const run = promisify(execFile);

interface KeyPair {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
}

let dir: string;
let ca: KeyPair;
let server: KeyPair;
let client: KeyPair;
let foreignCa: KeyPair;
let foreignClient: KeyPair;
let rabbit: RabbitFixture;

async function openssl(...args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir });
}

async function load(name: string): Promise<KeyPair> {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  return { certFile, keyFile, cert: await readFile(certFile), key: await readFile(keyFile) };
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function makeCa(name: string): Promise<KeyPair> {
  await openssl(
    'req',
    '-x509',
    ...EC_KEY,
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.crt`,
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  return load(name);
}

async function issue(issuer: string, name: string, extensions: string[]): Promise<KeyPair> {
  await writeFile(
    join(dir, `${name}.ext`),
    `${['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature', ...extensions].join('\n')}\n`,
  );
  await openssl('req', '-new', ...EC_KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  await openssl(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${issuer}.crt`,
    '-CAkey',
    `${issuer}.key`,
    '-CAcreateserial',
    '-out',
    `${name}.crt`,
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
  );
  return load(name);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kmj-tls-'));
  ca = await makeCa('ca');
  server = await issue('ca', 'localhost', ['extendedKeyUsage=serverAuth', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
  client = await issue('ca', 'keda-operator', ['extendedKeyUsage=clientAuth']);
  foreignCa = await makeCa('foreign-ca');
  foreignClient = await issue('foreign-ca', 'intruder', ['extendedKeyUsage=clientAuth']);
  rabbit = new RabbitFixture();
});

afterAll(async () => {
  await rabbit?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Answered GetMetricSpec calls, read from the scaler's own counter: a refused handshake never reaches a handler. */
async function answeredSpecs(s: ScalerHandle): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${s.scaler.metricsPort}/metrics`).then((r) => r.text());
  const m = /^kmj_scaler_grpc_requests_total\{method="GetMetricSpec",code="OK"\} (\d+)$/m.exec(text);
  return m ? Number(m[1]) : 0;
}

/** A client on its own channel; closed by the caller. */
function tlsClient(
  s: ScalerHandle,
  credentials: grpc.ChannelCredentials,
  options: grpc.ClientOptions = {},
  host = '127.0.0.1',
): KedaLikeClient {
  return new KedaLikeClient(`${host}:${s.scaler.grpcPort}`, credentials, options);
}

async function specOf(c: KedaLikeClient, queue: string) {
  try {
    return await c.getMetricSpec({ queueName: queue });
  } finally {
    c.close();
  }
}

/** The one spec GetMetricSpec answers for `{queueName: queue}`; fixture queue names are already lowercase [a-z0-9-]. */
const SPEC = (queue: string) => ({
  ok: true,
  value: {
    metricSpecs: [{ metricName: expect.stringMatching(new RegExp(`^rabbitmq-${queue}-[0-9a-f]{10}$`)), targetSize: 1, targetSizeFloat: 1 }],
  },
});

/** OpenSSL's words for a server chain the client cannot verify (which one depends on what the server sends). */
const UNTRUSTED = /unable to verify the first certificate|self-signed certificate in certificate chain/;

describe('server TLS (KEDA with caCert)', () => {
  let s: ScalerHandle;
  let queue: string;

  beforeAll(async () => {
    s = await startTestScaler({ KMJ_SCALER_TLS_CERT_FILE: server.certFile, KMJ_SCALER_TLS_KEY_FILE: server.keyFile });
    queue = await rabbit.queue('tls');
    await rabbit.publish(queue, 2);
  });

  afterAll(async () => {
    await s?.close();
  });

  it('answers a client that trusts the CA, by IP and by the name localhost', async () => {
    expect(s.logs()).toContain('"tls":"server"');
    const byIp = tlsClient(s, grpc.credentials.createSsl(ca.cert));
    try {
      expect(await byIp.getMetricSpec({ queueName: queue })).toEqual(SPEC(queue));
      const values = await waitUntil(
        'the scaler to report the 2 messages published, over TLS',
        () => byIp.getMetrics({ queueName: queue }),
        (r) => r.ok && r.value.metricValues[0]?.metricValue === 2,
      );
      expect(values).toMatchObject({ ok: true, value: { metricValues: [{ metricValue: 2, metricValueFloat: 2 }] } });
    } finally {
      byIp.close();
    }
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl(ca.cert), {}, 'localhost'), queue)).toEqual(SPEC(queue));
  });

  it('refuses a plaintext client, a client that does not trust the CA, and a name the certificate does not carry', async () => {
    const before = await answeredSpecs(s);
    // The helper's own client speaks plaintext.
    expect(await s.client.getMetricSpec({ queueName: queue })).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE } });
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl(foreignCa.cert)), queue)).toMatchObject({
      ok: false,
      // Refused in the handshake: the channel never connected, so no scaler answered.
      error: { code: grpc.status.UNAVAILABLE, details: expect.stringMatching(UNTRUSTED), reached: false },
    });
    // Only the system roots: a private CA is not among them.
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl()), queue)).toMatchObject({
      ok: false,
      error: { code: grpc.status.UNAVAILABLE, details: expect.stringMatching(UNTRUSTED) },
    });
    // KEDA checks the scalerAddress host against the certificate, as here.
    expect(
      await specOf(tlsClient(s, grpc.credentials.createSsl(ca.cert), { 'grpc.ssl_target_name_override': 'kmj-scaler.ml' }), queue),
    ).toMatchObject({
      ok: false,
      error: {
        code: grpc.status.UNAVAILABLE,
        details: expect.stringContaining("Host: kmj-scaler.ml. is not in the cert's altnames: DNS:localhost, IP Address:127.0.0.1"),
      },
    });
    expect(await answeredSpecs(s)).toBe(before);
  });

  it('answers grpc.health.v1 Check over TLS with SERVING', async () => {
    const address = `127.0.0.1:${s.scaler.grpcPort}`;
    expect(await healthCheck(address, '', grpc.credentials.createSsl(ca.cert))).toEqual({ code: grpc.status.OK, status: 'SERVING' });
    expect(await healthCheck(address, 'externalscaler.ExternalScaler', grpc.credentials.createSsl(ca.cert))).toEqual({
      code: grpc.status.OK,
      status: 'SERVING',
    });
    expect(await healthCheck(address, '', grpc.credentials.createInsecure())).toMatchObject({ code: grpc.status.UNAVAILABLE });
  });
});

describe('mutual TLS (KEDA with caCert, tlsClientCert and tlsClientKey)', () => {
  let s: ScalerHandle;
  let queue: string;

  beforeAll(async () => {
    s = await startTestScaler({
      KMJ_SCALER_TLS_CERT_FILE: server.certFile,
      KMJ_SCALER_TLS_KEY_FILE: server.keyFile,
      KMJ_SCALER_TLS_CLIENT_CA_FILE: ca.certFile,
    });
    queue = await rabbit.queue('mtls');
  });

  afterAll(async () => {
    await s?.close();
  });

  it('answers a client that presents a certificate from the client CA', async () => {
    expect(s.logs()).toContain('"tls":"mutual"');
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl(ca.cert, client.key, client.cert)), queue)).toEqual(SPEC(queue));
    const health = await healthCheck(`127.0.0.1:${s.scaler.grpcPort}`, '', grpc.credentials.createSsl(ca.cert, client.key, client.cert));
    expect(health).toEqual({ code: grpc.status.OK, status: 'SERVING' });
  });

  it('refuses a client without a certificate, with a certificate from a foreign CA, and in plaintext', async () => {
    const before = await answeredSpecs(s);
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl(ca.cert)), queue)).toMatchObject({
      ok: false,
      error: { code: grpc.status.UNAVAILABLE, details: expect.stringContaining('alert certificate required') },
    });
    expect(await specOf(tlsClient(s, grpc.credentials.createSsl(ca.cert, foreignClient.key, foreignClient.cert)), queue)).toMatchObject({
      ok: false,
      error: { code: grpc.status.UNAVAILABLE },
    });
    expect(await s.client.getMetricSpec({ queueName: queue })).toMatchObject({ ok: false, error: { code: grpc.status.UNAVAILABLE } });
    const health = await healthCheck(`127.0.0.1:${s.scaler.grpcPort}`, '', grpc.credentials.createSsl(ca.cert));
    expect(health).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect(await answeredSpecs(s)).toBe(before);
  });
});

describe('TLS configuration', () => {
  function configError(env: Record<string, string>): string {
    try {
      loadScalerConfig(env);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as ConfigError).message;
    }
    throw new Error('loadScalerConfig accepted the configuration');
  }

  it('reads the certificate, key and client CA files into the config', () => {
    const config = loadScalerConfig({
      KMJ_SCALER_TLS_CERT_FILE: server.certFile,
      KMJ_SCALER_TLS_KEY_FILE: server.keyFile,
      KMJ_SCALER_TLS_CLIENT_CA_FILE: ca.certFile,
    });
    expect(config.tls).toEqual({ cert: server.cert, key: server.key, clientCa: ca.cert });
    expect(loadScalerConfig({ KMJ_SCALER_TLS_CERT_FILE: server.certFile, KMJ_SCALER_TLS_KEY_FILE: server.keyFile }).tls).toEqual({
      cert: server.cert,
      key: server.key,
    });
    expect(loadScalerConfig({}).tls).toBeUndefined();
  });

  it('refuses a certificate without a key, and a key without a certificate', () => {
    const message = 'invalid scaler configuration: KMJ_SCALER_TLS_CERT_FILE: and KMJ_SCALER_TLS_KEY_FILE must be set together';
    expect(configError({ KMJ_SCALER_TLS_CERT_FILE: server.certFile })).toBe(message);
    expect(configError({ KMJ_SCALER_TLS_KEY_FILE: server.keyFile })).toBe(message);
  });

  it('refuses a client CA without a server certificate and key', () => {
    expect(configError({ KMJ_SCALER_TLS_CLIENT_CA_FILE: ca.certFile })).toBe(
      'invalid scaler configuration: KMJ_SCALER_TLS_CLIENT_CA_FILE: mutual TLS needs KMJ_SCALER_TLS_CERT_FILE and KMJ_SCALER_TLS_KEY_FILE too',
    );
  });

  it('names the setting whose file cannot be read', () => {
    const missing = join(dir, 'no-such-cert.pem');
    expect(configError({ KMJ_SCALER_TLS_CERT_FILE: missing, KMJ_SCALER_TLS_KEY_FILE: server.keyFile })).toBe(
      `invalid scaler configuration: KMJ_SCALER_TLS_CERT_FILE: cannot read "${missing}": ENOENT: no such file or directory, open '${missing}'`,
    );
    const missingCa = join(dir, 'no-such-ca.pem');
    expect(
      configError({ KMJ_SCALER_TLS_CERT_FILE: missing, KMJ_SCALER_TLS_KEY_FILE: server.keyFile, KMJ_SCALER_TLS_CLIENT_CA_FILE: missingCa }),
    ).toBe(
      `invalid scaler configuration: KMJ_SCALER_TLS_CERT_FILE: cannot read "${missing}": ENOENT: no such file or directory, open '${missing}'; ` +
        `KMJ_SCALER_TLS_CLIENT_CA_FILE: cannot read "${missingCa}": ENOENT: no such file or directory, open '${missingCa}'`,
    );
  });
});
