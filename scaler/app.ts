/**
 * Assembles a running scaler from its configuration: sources, trigger compiler, snapshot store,
 * the gRPC server and the HTTP server for metrics and probes. `close` undoes all of it in order.
 */
import type { Server } from 'node:http';
import type { Logger } from '../common/log.ts';
import { nodeHttp } from '../common/node-http.ts';
import type { ScalerConfig } from './config.ts';
import { startGrpcServer, type RunningGrpcServer } from './grpc-server.ts';
import { ScalerMetrics } from './metrics.ts';
import { receiveReport, REPORT_PATH } from './reports.ts';
import { ExternalScalerService } from './service.ts';
import { SnapshotStore } from './snapshots.ts';
import { createSources } from './sources/registry.ts';
import { TriggerCompiler } from './triggers.ts';

export interface RunningScaler {
  readonly grpcPort: number;
  readonly metricsPort: number;
  readonly grpc: RunningGrpcServer;
  readonly store: SnapshotStore;
  readonly metrics: ScalerMetrics;
  close(graceMs?: number): Promise<void>;
}

export async function startScaler(config: ScalerConfig, log: Logger): Promise<RunningScaler> {
  // The metrics read the store's views at scrape time; the store reports its reads to the metrics.
  const metrics = new ScalerMetrics(() => store.views());
  const sources = createSources(config.sources, config.tuning, log);
  const triggers = new TriggerCompiler(sources);
  const store: SnapshotStore = new SnapshotStore(config.snapshots, log.child({ component: 'snapshots' }), metrics);
  const service = new ExternalScalerService(triggers, store);
  store.start();

  let grpc: RunningGrpcServer | undefined;
  let http: Server;
  try {
    grpc = await startGrpcServer({
      host: config.host,
      port: config.port,
      service,
      metrics,
      log: log.child({ component: 'grpc' }),
      ...(config.tls ? { tls: config.tls } : {}),
    });
    http = await startHttp(config.host, config.metricsPort, metrics, store);
  } catch (err) {
    await grpc?.close(0);
    await store.stop();
    await Promise.all([...sources.values()].map((s) => s.close()));
    throw err;
  }
  const running = grpc;
  const address = http.address();
  const metricsPort = typeof address === 'object' && address ? address.port : config.metricsPort;
  log.info(
    { grpcPort: running.port, metricsPort, tls: config.tls ? (config.tls.clientCa ? 'mutual' : 'server') : 'off' },
    'scaler listening',
  );

  return {
    grpcPort: running.port,
    metricsPort,
    grpc: running,
    store,
    metrics,
    close: async (graceMs = 5000) => {
      await running.close(graceMs);
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
      await store.stop();
      await Promise.all([...sources.values()].map((s) => s.close()));
      log.info('scaler stopped');
    },
  };
}

function startHttp(host: string, port: number, metrics: ScalerMetrics, store: SnapshotStore): Promise<Server> {
  const server = nodeHttp.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === REPORT_PATH) {
      if (req.method !== 'POST') {
        res.writeHead(405, { allow: 'POST' }).end();
        return;
      }
      receiveReport(req, res, metrics, store).catch(() => {
        if (!res.headersSent) res.writeHead(500).end();
        else res.destroy();
      });
      return;
    }
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    if (path === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
        () => res.writeHead(500).end('metrics collection failed\n'),
      );
      return;
    }
    if (path === '/healthz' || path === '/readyz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path === '/debug/targets') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify({ targets: store.views() }, null, 2)}\n`);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot listen for HTTP on ${host}:${port}: ${err.message}`, { cause: err })));
    server.listen(port, host, () => resolve(server));
  });
}
