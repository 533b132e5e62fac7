/**
 * Whether a host:port takes a TCP connection, in the operating system's words when it does not:
 * `kmj doctor`'s scaler check and the scaler client's explanation of "no scaler answers" both ask.
 */
import { connect } from 'node:net';

export type TcpProbe =
  | { readonly kind: 'connected' }
  | { readonly kind: 'timeout' }
  /** The connect failed: "connect ECONNREFUSED 127.0.0.1:6000", "getaddrinfo ENOTFOUND kmj-scaler.kmj.svc". */
  | { readonly kind: 'error'; readonly message: string }
  /** Not host:port (an IPv6 host in brackets, a port from 1 to 65535). */
  | { readonly kind: 'bad-address' };

/** One TCP connect to `address`, closed at once, bounded by `timeoutMs`. */
export function probeTcp(address: string, timeoutMs: number): Promise<TcpProbe> {
  let host: string;
  let port: number;
  try {
    const url = new URL(`tcp://${address}`);
    host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    port = Number(url.port);
  } catch {
    return Promise.resolve({ kind: 'bad-address' });
  }
  if (!host || !Number.isInteger(port) || port < 1) return Promise.resolve({ kind: 'bad-address' });
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: timeoutMs });
    const done = (probe: TcpProbe): void => {
      socket.destroy();
      resolve(probe);
    };
    socket.once('connect', () => done({ kind: 'connected' }));
    socket.once('timeout', () => done({ kind: 'timeout' }));
    socket.once('error', (err) => done({ kind: 'error', message: err.message }));
  });
}
