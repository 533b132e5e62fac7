/**
 * A reverse proxy in front of the real MLflow server, for what can sit between the worker and it:
 * TLS with a throwaway PKI made by the openssl command line, mutual TLS, a bearer-token check (as
 * an OAuth2 proxy or an ingress does), and a count of the requests that get through the handshake.
 * Requests are forwarded unchanged (less the bearer token) to the target over plain HTTP.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import {
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface Pki {
  readonly dir: string;
  /** The CA that signed the server and client certificates (PEM), and its file. */
  readonly caCert: Buffer;
  readonly caFile: string;
  /** Server certificate for DNS:localhost and IP:127.0.0.1, and its key. */
  readonly serverCert: Buffer;
  readonly serverKey: Buffer;
  /** Client certificate and key in one PEM file, as MLFLOW_TRACKING_CLIENT_CERT_PATH takes it. */
  readonly clientPemFile: string;
  readonly clientPem: Buffer;
  /** Another CA, which signed nothing the proxy serves or trusts. */
  readonly foreignCaCert: Buffer;
  /** A client certificate and key signed by the foreign CA. */
  readonly foreignClientPemFile: string;
  readonly foreignClientPem: Buffer;
  /** Deletes the directory with every key. */
  remove(): Promise<void>;
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** Makes a CA, a server certificate and client certificates in a new temp directory. */
export async function makePki(): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), 'kmj-mlflow-pki-'));
  const openssl = async (...args: string[]): Promise<void> => {
    await run('openssl', args, { cwd: dir });
  };
  const makeCa = async (name: string): Promise<void> => {
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
  };
  const issue = async (issuer: string, name: string, extensions: string[]): Promise<void> => {
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
  };
  const combined = async (name: string): Promise<string> => {
    const file = join(dir, `${name}.pem`);
    await writeFile(file, Buffer.concat([await readFile(join(dir, `${name}.crt`)), await readFile(join(dir, `${name}.key`))]));
    return file;
  };
  try {
    await makeCa('ca');
    await issue('ca', 'localhost', ['extendedKeyUsage=serverAuth', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
    await issue('ca', 'kmj-worker', ['extendedKeyUsage=clientAuth']);
    await makeCa('foreign-ca');
    await issue('foreign-ca', 'intruder', ['extendedKeyUsage=clientAuth']);
    const clientPemFile = await combined('kmj-worker');
    const foreignClientPemFile = await combined('intruder');
    return {
      dir,
      caFile: join(dir, 'ca.crt'),
      caCert: await readFile(join(dir, 'ca.crt')),
      serverCert: await readFile(join(dir, 'localhost.crt')),
      serverKey: await readFile(join(dir, 'localhost.key')),
      clientPemFile,
      clientPem: await readFile(clientPemFile),
      foreignCaCert: await readFile(join(dir, 'foreign-ca.crt')),
      foreignClientPemFile,
      foreignClientPem: await readFile(foreignClientPemFile),
      remove: () => rm(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

export interface ProxyOptions {
  /** Where requests go, e.g. http://127.0.0.1:5000. */
  readonly target: string;
  /** Serve HTTPS with this certificate; with `clientCa`, require a client certificate it signed. */
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer; readonly clientCa?: Buffer };
  /** Answer 401 unless the request carries `Authorization: Bearer <token>`. */
  readonly bearerToken?: string;
  /** For request paths matching this, send the target's status and headers, then no body at all. */
  readonly stallBody?: RegExp;
}

export interface MlflowProxy {
  readonly port: number;
  /** The proxy's base URL, by IP or by the name localhost. */
  url(host?: '127.0.0.1' | 'localhost'): string;
  /** HTTP requests that reached the proxy (after any TLS handshake). */
  readonly requests: number;
  /** Requests forwarded to the target. */
  readonly forwarded: number;
  /** TCP connections accepted (each TLS handshake, good or bad, starts with one). */
  readonly connections: number;
  /** The Authorization header of each request that reached the proxy ('' when absent). */
  readonly authorizations: readonly string[];
  close(): Promise<void>;
}

/** Starts a proxy on 127.0.0.1 and a free port. */
export async function startMlflowProxy(options: ProxyOptions): Promise<MlflowProxy> {
  const target = new URL(options.target);
  let requests = 0;
  let forwarded = 0;
  let connections = 0;
  const authorizations: string[] = [];

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    requests++;
    const authorization = req.headers['authorization'] ?? '';
    authorizations.push(authorization);
    const headers = { ...req.headers, host: target.host };
    if (options.bearerToken !== undefined) {
      if (authorization !== `Bearer ${options.bearerToken}`) {
        req.resume();
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' });
        res.end(JSON.stringify({ error_code: 'UNAUTHENTICATED', message: 'a valid bearer token is required' }));
        return;
      }
      delete headers['authorization'];
    }
    forwarded++;
    const upstream = httpRequest(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent: false },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        if (options.stallBody?.test((req.url ?? '').split('?')[0] ?? '')) {
          res.flushHeaders();
          up.destroy();
          return;
        }
        up.pipe(res);
      },
    );
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`proxy: ${err.message}`);
    });
    req.pipe(upstream);
  };

  const tls = options.tls;
  const server: Server = tls
    ? createHttpsServer(
        {
          cert: tls.cert,
          key: tls.key,
          ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
        },
        handle,
      )
    : createHttpServer(handle);
  server.on('connection', () => {
    connections++;
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const scheme = tls ? 'https' : 'http';
  return {
    port,
    url: (host = '127.0.0.1') => `${scheme}://${host}:${port}`,
    get requests() {
      return requests;
    },
    get forwarded() {
      return forwarded;
    },
    get connections() {
      return connections;
    },
    authorizations,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
