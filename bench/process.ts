/**
 * The processes a benchmark measures: a `kmj scaler` child started from a checkout (this one, or a
 * baseline's), its CPU time and memory from /proc, and the machine's load.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** CPU time (user + system) of a process so far, in seconds. */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  // utime and stime, fields 14 and 15 of stat, in clock ticks (100 a second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The process and every descendant alive now (a server's worker processes), from /proc. */
export function processTree(pid: number): number[] {
  const children = (p: number): number[] => {
    try {
      return readdirSync(`/proc/${p}/task`).flatMap((task) =>
        readFileSync(`/proc/${p}/task/${task}/children`, 'utf8').split(' ').filter(Boolean).map(Number),
      );
    } catch {
      return []; // it ended meanwhile
    }
  };
  const all = [pid];
  for (let i = 0; i < all.length; i++) all.push(...children(all[i] as number));
  return all;
}

/** CPU time of a process and its living descendants so far, in seconds. */
export function treeCpuSeconds(pid: number): number {
  return processTree(pid).reduce((sum, p) => {
    try {
      return sum + cpuSeconds(p);
    } catch {
      return sum; // it ended between the listing and the read
    }
  }, 0);
}

/** Resident memory now and at its peak, in MB. */
export function memoryMb(pid: number): { rssMb: number; peakMb: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(text)?.[1] ?? Number.NaN);
  return { rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 };
}

/** The 1, 5 and 15 minute load averages (2 means both cores of this VM busy), or NaN each. */
export function loadAverages(): [number, number, number] {
  try {
    const [a, b, c] = readFileSync('/proc/loadavg', 'utf8').split(' ').map(Number);
    return [a ?? Number.NaN, b ?? Number.NaN, c ?? Number.NaN];
  } catch {
    return [Number.NaN, Number.NaN, Number.NaN];
  }
}

export interface ScalerProcess {
  readonly pid: number;
  readonly grpcPort: number;
  readonly metricsPort: number;
  /** Warn and error lines of its log, and lines that are not log lines (Node warnings), with the first few. */
  readonly warnings: { count: number; first: string[] };
  /** Aborts when the process exits on its own. */
  readonly exited: AbortSignal;
  stop(): Promise<void>;
}

export interface ScalerProcessOptions {
  /** The checkout whose bin/kmj.js runs. */
  readonly root: string;
  readonly nodeArgs: readonly string[];
  /** Settings on top of this process's environment (brokers, connections). */
  readonly env: Readonly<Record<string, string>>;
  /** How long to wait for "scaler listening" (20 s). */
  readonly startTimeoutMs?: number;
}

/**
 * Starts `kmj scaler` on loopback ports the system picks and resolves once it logs "scaler
 * listening". It never outlives this process: killed on exit if `stop` was not called.
 */
export function startScaler(o: ScalerProcessOptions): Promise<ScalerProcess> {
  const child: ChildProcess = spawn(process.execPath, [...o.nodeArgs, join(o.root, 'bin', 'kmj.js'), 'scaler'], {
    env: {
      ...process.env,
      LOG_LEVEL: 'info',
      ...o.env,
      KMJ_SCALER_HOST: '127.0.0.1',
      KMJ_SCALER_PORT: '0',
      KMJ_SCALER_METRICS_PORT: '0',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // No pid: the spawn itself failed (its 'error' event says why).
  const pid = child.pid;
  if (pid === undefined)
    return new Promise((_, reject) =>
      child.once('error', (err) => reject(new Error(`cannot start the scaler: ${err.message}`, { cause: err }))),
    );
  const exited = new AbortController();
  // After a successful spawn, 'error' means a signal could not be sent: the process is out of reach.
  child.on('error', (err) => exited.abort(new Error(`scaler process: ${err.message}`, { cause: err })));
  let stopping = false;
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, sig) => {
      process.off('exit', killOnExit);
      if (!stopping) exited.abort(new Error(`scaler exited on its own (code ${code}, signal ${sig})`));
      resolve();
    });
  });
  const warnings = { count: 0, first: [] as string[] };
  const noteWarning = (line: string): void => {
    warnings.count++;
    if (warnings.first.length < 3) warnings.first.push(line.slice(0, 300));
  };
  const stop = async (): Promise<void> => {
    stopping = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exitedPromise;
      clearTimeout(timer);
    }
  };
  const startTimeoutMs = o.startTimeoutMs ?? 20_000;
  return new Promise((resolve, reject) => {
    let pending = '';
    let listening = false;
    const startTimer = setTimeout(() => {
      const err = new Error(`scaler did not log "scaler listening" within ${startTimeoutMs} ms: ${pending}`);
      stop().then(
        () => reject(err),
        () => reject(err),
      );
    }, startTimeoutMs);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        let entry: { msg?: unknown; level?: unknown; grpcPort?: unknown; metricsPort?: unknown };
        try {
          entry = JSON.parse(line) as typeof entry;
        } catch {
          noteWarning(line); // not a log line (a Node warning): a clean run prints none
          continue;
        }
        if (!listening && entry.msg === 'scaler listening' && typeof entry.grpcPort === 'number' && typeof entry.metricsPort === 'number') {
          listening = true;
          clearTimeout(startTimer);
          resolve({ pid, grpcPort: entry.grpcPort, metricsPort: entry.metricsPort, warnings, exited: exited.signal, stop });
        } else if (entry.level === 'warn' || entry.level === 'error' || entry.level === 'fatal') {
          noteWarning(line);
        }
      }
    });
    child.once('exit', (code) => {
      if (listening) return;
      clearTimeout(startTimer);
      reject(new Error(`scaler exited with ${code} before listening: ${pending}`));
    });
  });
}
