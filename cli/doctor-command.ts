/** `kmj doctor`: a preflight a user runs on a node, or as a one-off pod, before the first request. */
import { hostname, machine } from 'node:os';
import { parseArgs } from 'node:util';
import { ConfigError } from '../common/config.ts';
import { NotFoundError } from '../common/errors.ts';
import { probeTcp } from '../common/tcp-probe.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { messageOf } from '../common/redact.ts';
import { kedaResources } from '../kubernetes/scaledjob.ts';
import { loadWorkerConfig, type WorkerConfig } from '../worker/config.ts';
import { CHECK_TIMEOUT_MS, checkBroker, checkModel, checkMlflow, checkOnnxRuntime, type Check } from '../worker/doctor.ts';
import type { CommandContext } from './context.ts';
import { checkMemoryCgroup, checkPageSize, checkUserland, readHostFile } from './doctor-platform.ts';
import { EXIT, type ExitCode } from '../common/exit-codes.ts';

export const DOCTOR_HELP = `Usage: kmj doctor [--queue NAME | --topic NAME --group NAME] [--model URI]
                  [--scaler HOST:PORT] [--kubeconfig FILE] [-o text|json]

A preflight for a node, before the first request: run it on the node, or as a one-off pod from
the project image with the worker's environment (docs/deploy.md). It changes nothing: no message
is taken, no run is made. Each check says what it found, and when it fails, what fixes it:

  userland        a 64-bit userland (onnxruntime has no 32-bit ARM build)
  onnxruntime     onnxruntime loads and runs a model
  page-size       the kernel's page size, and every native file loaded is aligned for it
  memory-cgroup   the memory cgroup is enabled; the memory limit this process runs under
  configuration   the worker's settings, read as "kmj worker" reads them
  rabbitmq/kafka  the worker's queue (or topic), with the worker's credentials
  mlflow          the MLflow tracking server, with the worker's credentials
  model           with --model: that model loads as the worker loads it
  keda            in a pod, or with --kubeconfig: KEDA's CRDs are installed
  scaler          in a pod, or with --scaler: the scaler's address accepts connections

Options:
  --queue, --topic, --group   the worker's input, as for "kmj worker"
  --model <uri>               also load this model (models:/name@alias, models:/name/3, runs:/…)
  --scaler <host:port>        the scaler's address (in a pod: kmj-scaler.<namespace>.svc:6000)
  --kubeconfig <file>         check KEDA in this cluster (in a pod: its service account)
  -o, --output text|json      text (default) or one JSON object for scripts
  -h, --help                  show this help

Exit codes: 0 every check passed (skipped ones aside), 1 a check failed, 64 bad usage.
`;

const SERVICE_ACCOUNT_NAMESPACE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/** The scaler's address accepts a TCP connection (with mutual TLS on, a handshake needs the client's certificate: reaching it is what is checked). */
async function checkScaler(address: string): Promise<Check> {
  const probe = await probeTcp(address, CHECK_TIMEOUT_MS);
  switch (probe.kind) {
    case 'bad-address':
      return {
        name: 'scaler',
        status: 'fail',
        detail: `--scaler: ${JSON.stringify(address)} must be host:port`,
        fix: "give the scaler's address as the trigger's scalerAddress has it, e.g. kmj-scaler.kmj.svc:6000",
      };
    case 'connected':
      return { name: 'scaler', status: 'ok', detail: `${address} accepts connections` };
    case 'timeout':
      return {
        name: 'scaler',
        status: 'fail',
        detail: `${address} did not answer within ${CHECK_TIMEOUT_MS / 1000} s`,
        fix: 'check that the kmj-scaler Deployment is running and a NetworkPolicy lets this pod reach it',
      };
    case 'error':
      return {
        name: 'scaler',
        status: 'fail',
        detail: `cannot reach ${address}: ${probe.message}`,
        fix: "check the scaler's Service name and namespace (kubectl -n kmj get svc kmj-scaler) and that its pod is Ready",
      };
  }
}

async function checkKeda(kubeconfig: string | undefined, env: CommandContext['env']): Promise<Check> {
  try {
    const { resources, server } = await kedaResources({ kubeconfig, env });
    const missing = ['scaledjobs', 'triggerauthentications'].filter((r) => !resources.includes(r));
    if (missing.length > 0)
      return {
        name: 'keda',
        status: 'fail',
        detail: `keda.sh/v1alpha1 on ${server} serves no ${missing.join(', ')}`,
        fix: 'install KEDA from its release manifests (docs/deploy.md), the version keda/ names',
      };
    return { name: 'keda', status: 'ok', detail: `KEDA's CRDs are installed on ${server} (${resources.join(', ')})` };
  } catch (err) {
    const text = messageOf(err);
    if (err instanceof NotFoundError)
      return {
        name: 'keda',
        status: 'fail',
        detail: 'the cluster serves no keda.sh/v1alpha1 API: KEDA is not installed',
        fix: 'install KEDA from its release manifests (docs/deploy.md)',
      };
    return {
      name: 'keda',
      status: 'fail',
      detail: `cannot read the cluster's API: ${text}`,
      fix: "check the kubeconfig (or the pod's service account) and that the API server is reachable",
    };
  }
}

const skip = (name: string, detail: string): Check => ({ name, status: 'skip', detail });

// ---- parse ------------------------------------------------------------------------------------

/** What `kmj doctor` was asked (`parseDoctorArgs`). */
export type DoctorRequest =
  | { readonly kind: 'help' }
  | { readonly kind: 'usage'; readonly problem: string }
  | {
      readonly kind: 'check';
      readonly flags: { readonly queue?: string; readonly topic?: string; readonly group?: string };
      readonly model?: string | undefined;
      readonly scaler?: string | undefined;
      readonly kubeconfig?: string | undefined;
      readonly output: 'text' | 'json';
    };

/** The flags. No I/O. */
export function parseDoctorArgs(argv: readonly string[]): DoctorRequest {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      queue: { type: 'string' },
      topic: { type: 'string' },
      group: { type: 'string' },
      model: { type: 'string' },
      scaler: { type: 'string' },
      kubeconfig: { type: 'string' },
      output: { type: 'string', short: 'o', default: 'text' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return { kind: 'help' };
  if (values.output !== 'text' && values.output !== 'json')
    return { kind: 'usage', problem: `-o/--output: ${JSON.stringify(values.output)} must be text or json` };
  return {
    kind: 'check',
    flags: {
      ...(values.queue !== undefined ? { queue: values.queue } : {}),
      ...(values.topic !== undefined ? { topic: values.topic } : {}),
      ...(values.group !== undefined ? { group: values.group } : {}),
    },
    model: values.model,
    scaler: values.scaler,
    kubeconfig: values.kubeconfig,
    output: values.output,
  };
}

// ---- collect ----------------------------------------------------------------------------------

/** Every check, in the order shown: this machine, the worker's configuration and services, then the cluster. */
export async function collectChecks(
  request: Extract<DoctorRequest, { kind: 'check' }>,
  ctx: CommandContext,
  log: Logger,
): Promise<Check[]> {
  const inCluster = ctx.env['KUBERNETES_SERVICE_HOST'] !== undefined;
  const checks: Check[] = [checkUserland(), await checkOnnxRuntime(), checkPageSize(), checkMemoryCgroup(inCluster)];

  let config: WorkerConfig | undefined;
  try {
    config = loadWorkerConfig(ctx.env, request.flags);
    checks.push({
      name: 'configuration',
      status: 'ok',
      detail: config.input.kind === 'kafka' ? `topic ${config.input.topic}, group ${config.input.group}` : `queue ${config.input.queue}`,
    });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    checks.push({
      name: 'configuration',
      status: 'fail',
      detail: err.message,
      fix: 'set what the message names, as for "kmj worker" (kmj worker --help lists the settings)',
    });
  }
  if (config) {
    const [broker, mlflow] = await Promise.all([checkBroker(config, log), checkMlflow(config, log)]);
    checks.push(broker, mlflow);
    checks.push(request.model !== undefined ? await checkModel(request.model, config, log) : skip('model', 'no --model given'));
  } else {
    for (const name of ['broker', 'mlflow', 'model']) checks.push(skip(name, "the worker's configuration is invalid (above)"));
  }

  const namespace = readHostFile(SERVICE_ACCOUNT_NAMESPACE)?.toString('utf8').trim() || 'kmj';
  const scaler = request.scaler ?? (inCluster ? `kmj-scaler.${namespace}.svc:6000` : undefined);
  checks.push(
    inCluster || request.kubeconfig !== undefined
      ? await checkKeda(request.kubeconfig, ctx.env)
      : skip('keda', 'not in a pod; give --kubeconfig to check a cluster'),
  );
  checks.push(scaler !== undefined ? await checkScaler(scaler) : skip('scaler', 'not in a pod; give --scaler to check an address'));
  return checks;
}

// ---- decide -----------------------------------------------------------------------------------

/** 0 when no check failed (skipped ones aside), 1 when one did. */
export function decideDoctor(checks: readonly Check[]): ExitCode {
  return checks.some((c) => c.status === 'fail') ? EXIT.FAILED : EXIT.OK;
}

// ---- render -----------------------------------------------------------------------------------

/** Where the checks ran: the host's name, platform and machine. */
export interface DoctorHost {
  readonly hostname: string;
  readonly platform: string;
  readonly machine: string;
}

/** The checks as text (one line each, a fix under a failure, the counts) or as one JSON object. No I/O. */
export function renderDoctor(checks: readonly Check[], host: DoctorHost, output: 'text' | 'json'): string {
  const failed = checks.filter((c) => c.status === 'fail');
  if (output === 'json') {
    return `${JSON.stringify({ ok: failed.length === 0, host: host.hostname, platform: host.platform, machine: host.machine, checks })}\n`;
  }
  const width = Math.max(...checks.map((c) => c.name.length));
  const lines = [`kmj doctor on ${host.hostname} (${host.platform}, ${host.machine})`];
  for (const c of checks) {
    lines.push(`  ${c.status === 'fail' ? 'FAIL' : c.status.padEnd(4)}  ${c.name.padEnd(width)}  ${c.detail}`);
    if (c.fix !== undefined) lines.push(`  ${' '.repeat(4 + 2 + width)}  fix: ${c.fix}`);
  }
  const count = (s: Check['status']): number => checks.filter((c) => c.status === s).length;
  lines.push(`${checks.length} checks: ${count('ok')} ok, ${count('fail')} failed, ${count('skip')} skipped`);
  return `${lines.join('\n')}\n`;
}

// ---- run --------------------------------------------------------------------------------------

export async function runDoctor(argv: readonly string[], ctx: CommandContext): Promise<ExitCode> {
  const request = parseDoctorArgs(argv);
  if (request.kind === 'help') {
    ctx.stdout.write(DOCTOR_HELP);
    return EXIT.OK;
  }
  if (request.kind === 'usage') {
    ctx.stderr.write(`kmj doctor: ${request.problem}\n`);
    return EXIT.USAGE;
  }
  const log = createLogger({ level: ctx.env['LOG_LEVEL'] === 'debug' ? 'debug' : 'error', name: 'kmj-doctor', sync: true });
  const checks = await collectChecks(request, ctx, log);
  ctx.stdout.write(
    renderDoctor(checks, { hostname: hostname(), platform: `${process.platform}/${process.arch}`, machine: machine() }, request.output),
  );
  log.flush();
  return decideDoctor(checks);
}
