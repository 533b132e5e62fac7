// The KEDA contract, pinned: the proto file field by field, the side services KEDA and operators
// use (grpc.health.v1, reflection), and every trigger-metadata error KEDA can get back, word for
// word, through a real gRPC client.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { type Field, MapField, parse, Service, Type, type Namespace } from 'protobufjs';
import { FileDescriptorProto } from 'protobufjs/ext/descriptor/index.js';
import { beforeAll, describe, expect, it } from 'vitest';
import { packageFile } from '../../common/paths.ts';
import { SCALER_HELP } from '../../cli/scaler-command.ts';
import { loadExternalScalerPackage } from '../../scaler/grpc-server.ts';
import { healthCheck, useScalerAndRabbit } from '../helpers/scaler.ts';
import { waitUntil } from '../helpers/wait.ts';

const PROTO_FILE = packageFile('proto', 'externalscaler.proto');

describe('proto/externalscaler.proto', () => {
  const text = readFileSync(PROTO_FILE, 'utf8');
  const parsed = parse(text, { keepCase: true });
  parsed.root.resolveAll();
  const pkg = parsed.root.lookup('externalscaler') as Namespace;

  /** A field as proto syntax writes it, with message types by full name. */
  function describeField(f: Field): string {
    f.resolve();
    const type = f.resolvedType ? f.resolvedType.fullName.replace(/^\./, '') : f.type;
    if (f instanceof MapField) return `map<${f.keyType}, ${type}> ${f.name} = ${f.id}`;
    return `${f.repeated ? 'repeated ' : ''}${type} ${f.name} = ${f.id}`;
  }

  it('names the KEDA release it matches in its header, and is proto3', () => {
    const header = text
      .split('\n')
      .filter((l) => l.startsWith('//'))
      .slice(0, 3)
      .join('\n');
    expect(header).toMatch(/^\/\/ KEDA's external scaler contract, as shipped in KEDA v2\.20\n/);
    expect(header).toContain('pkg/scalers/externalscaler/externalscaler.proto');
    expect(text).toMatch(/^syntax = "proto3";$/m);
    // The CLI's help names the same release.
    expect(SCALER_HELP).toContain("KEDA's externalscaler.proto (v2.20)");
  });

  it('declares package externalscaler with exactly one service and seven messages', () => {
    expect(parsed.package).toBe('externalscaler');
    expect(parsed.root.nestedArray.map((n) => n.name)).toEqual(['externalscaler']);
    const kinds = pkg.nestedArray.map((n) => `${n instanceof Service ? 'service' : n instanceof Type ? 'message' : 'other'} ${n.name}`);
    expect(kinds.sort()).toEqual([
      'message GetMetricSpecResponse',
      'message GetMetricsRequest',
      'message GetMetricsResponse',
      'message IsActiveResponse',
      'message MetricSpec',
      'message MetricValue',
      'message ScaledObjectRef',
      'service ExternalScaler',
    ]);
  });

  it('has exactly the four RPCs of ExternalScaler with their request and response types', () => {
    const service = parsed.root.lookupService('externalscaler.ExternalScaler');
    const rpcs = service.methodsArray.map((m) => {
      m.resolve();
      const req = m.resolvedRequestType?.fullName.replace(/^\./, '');
      const res = m.resolvedResponseType?.fullName.replace(/^\./, '');
      return `${m.name}(${m.requestStream ? 'stream ' : ''}${req}) returns (${m.responseStream ? 'stream ' : ''}${res})`;
    });
    expect(rpcs).toEqual([
      'IsActive(externalscaler.ScaledObjectRef) returns (externalscaler.IsActiveResponse)',
      'StreamIsActive(externalscaler.ScaledObjectRef) returns (stream externalscaler.IsActiveResponse)',
      'GetMetricSpec(externalscaler.ScaledObjectRef) returns (externalscaler.GetMetricSpecResponse)',
      'GetMetrics(externalscaler.GetMetricsRequest) returns (externalscaler.GetMetricsResponse)',
    ]);
  });

  it('has every field of every message with its KEDA name, number and type', () => {
    const messages = Object.fromEntries(
      pkg.nestedArray.filter((n): n is Type => n instanceof Type).map((t) => [t.name, t.fieldsArray.map(describeField)]),
    );
    expect(messages).toEqual({
      ScaledObjectRef: ['string name = 1', 'string namespace = 2', 'map<string, string> scalerMetadata = 3'],
      IsActiveResponse: ['bool result = 1'],
      GetMetricSpecResponse: ['repeated externalscaler.MetricSpec metricSpecs = 1'],
      MetricSpec: ['string metricName = 1', 'int64 targetSize = 2', 'double targetSizeFloat = 3'],
      GetMetricsRequest: ['externalscaler.ScaledObjectRef scaledObjectRef = 1', 'string metricName = 2'],
      GetMetricsResponse: ['repeated externalscaler.MetricValue metricValues = 1'],
      MetricValue: ['string metricName = 1', 'int64 metricValue = 2', 'double metricValueFloat = 3'],
    });
    for (const t of pkg.nestedArray.filter((n): n is Type => n instanceof Type)) {
      expect({ message: t.name, oneofs: t.oneofsArray.length, nested: t.nestedArray.length }).toEqual({
        message: t.name,
        oneofs: 0,
        nested: 0,
      });
    }
  });

  it('is served under the wire paths KEDA calls', () => {
    const def = loadExternalScalerPackage()['externalscaler.ExternalScaler'] as grpc.ServiceDefinition;
    const paths = Object.values(def).map(
      (m) => `${m.path} ${m.requestStream ? 'stream' : 'unary'}->${m.responseStream ? 'stream' : 'unary'}`,
    );
    expect(paths.sort()).toEqual([
      '/externalscaler.ExternalScaler/GetMetricSpec unary->unary',
      '/externalscaler.ExternalScaler/GetMetrics unary->unary',
      '/externalscaler.ExternalScaler/IsActive unary->unary',
      '/externalscaler.ExternalScaler/StreamIsActive unary->stream',
    ]);
  });
});

// ---- A running scaler ----

const { scaler, rabbit } = useScalerAndRabbit();

const requireHere = createRequire(import.meta.url);
function packageDir(name: string): string {
  return dirname(requireHere.resolve(`${name}/package.json`));
}

const LOADER: protoLoader.Options = { keepCase: true, enums: String, defaults: true, oneofs: true };

function clientCtor(protoFile: string, service: string): grpc.ServiceClientConstructor {
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(protoFile, LOADER));
  let cur: unknown = pkg;
  for (const part of service.split('.')) cur = (cur as Record<string, unknown>)[part];
  return cur as grpc.ServiceClientConstructor;
}

const ReflectionClient = clientCtor(
  join(packageDir('@grpc/reflection'), 'build', 'proto', 'grpc', 'reflection', 'v1alpha', 'reflection.proto'),
  'grpc.reflection.v1alpha.ServerReflection',
);

describe('grpc.health.v1', () => {
  const check = (service: string) => healthCheck(`127.0.0.1:${scaler().scaler.grpcPort}`, service);

  it('answers SERVING for the server and for externalscaler.ExternalScaler, NOT_FOUND for other services', async () => {
    expect(await check('')).toEqual({ code: grpc.status.OK, status: 'SERVING' });
    expect(await check('externalscaler.ExternalScaler')).toEqual({ code: grpc.status.OK, status: 'SERVING' });
    expect(await check('externalscaler.Nope')).toMatchObject({ code: grpc.status.NOT_FOUND });
  });
});

describe('server reflection (grpc.reflection.v1alpha)', () => {
  interface ReflectionResponse {
    list_services_response?: { service: Array<{ name: string }> } | null;
    file_descriptor_response?: { file_descriptor_proto: Buffer[] } | null;
    error_response?: { error_code: number; error_message: string } | null;
  }

  function ask(request: Record<string, string>): Promise<ReflectionResponse> {
    const c = new ReflectionClient(`127.0.0.1:${scaler().scaler.grpcPort}`, grpc.credentials.createInsecure());
    const fn = c['ServerReflectionInfo'] as () => grpc.ClientDuplexStream<unknown, ReflectionResponse>;
    const call = fn.call(c);
    return new Promise<ReflectionResponse>((resolve, reject) => {
      call.once('data', (res: ReflectionResponse) => {
        call.end();
        resolve(res);
      });
      call.once('error', reject);
      call.write(request);
    }).finally(() => c.close());
  }

  let listed: string[];

  beforeAll(async () => {
    const res = await ask({ list_services: '' });
    listed = (res.list_services_response?.service ?? []).map((x) => x.name).sort();
  });

  it('lists externalscaler.ExternalScaler and describes it', async () => {
    expect(listed).toContain('externalscaler.ExternalScaler');
    const res = await ask({ file_containing_symbol: 'externalscaler.ExternalScaler' });
    const files = (res.file_descriptor_response?.file_descriptor_proto ?? []).map(
      (b) =>
        FileDescriptorProto.decode(b) as unknown as {
          package: string;
          service: Array<{ name: string; method: Array<{ name: string }> }>;
        },
    );
    const svc = files.flatMap((f) => f.service.map((x) => ({ pkg: f.package, name: x.name, methods: x.method.map((m) => m.name) })));
    expect(svc).toEqual([
      { pkg: 'externalscaler', name: 'ExternalScaler', methods: ['IsActive', 'StreamIsActive', 'GetMetricSpec', 'GetMetrics'] },
    ]);
  });

  it('lists grpc.health.v1.Health too', () => {
    expect(listed).toEqual(expect.arrayContaining(['externalscaler.ExternalScaler', 'grpc.health.v1.Health']));
  });
});

// ---- Trigger metadata errors, exactly as KEDA receives them ----

const ALLOWED = 'activationThreshold, connection, measure, mode, queueName, source, targetSize, vhost';
const CREDENTIALS = 'credentials are not accepted in trigger metadata; configure them in the scaler and select them with "connection"';

async function invalid(metadata: Record<string, string>): Promise<string> {
  const r = await scaler().client.getMetricSpec(metadata);
  if (r.ok) throw new Error(`GetMetricSpec accepted ${JSON.stringify(metadata)}`);
  expect(r.error.code).toBe(grpc.status.INVALID_ARGUMENT);
  return r.error.details;
}

describe('trigger metadata errors (INVALID_ARGUMENT, via GetMetricSpec)', () => {
  it('requires queueName', async () => {
    expect(await invalid({})).toBe('invalid trigger metadata: queueName: is required');
    expect(await invalid({ queueName: '' })).toBe('invalid trigger metadata: queueName: is required');
  });

  it('refuses a mode that does not exist', async () => {
    expect(await invalid({ queueName: 'jobs', mode: 'fast' })).toBe(
      'invalid trigger metadata: mode: "fast" must be one of backlog, ready, management',
    );
  });

  it('refuses a targetSize that is not a number above 0', async () => {
    for (const v of ['0', '-1', 'abc']) {
      expect(await invalid({ queueName: 'jobs', targetSize: v })).toBe(
        `invalid trigger metadata: targetSize: "${v}" must be a number greater than 0`,
      );
    }
  });

  it('refuses a negative activationThreshold', async () => {
    expect(await invalid({ queueName: 'jobs', activationThreshold: '-1' })).toBe(
      'invalid trigger metadata: activationThreshold: "-1" must be a number at least 0',
    );
  });

  it('refuses an unknown key, listing the allowed ones', async () => {
    expect(await invalid({ queueName: 'jobs', queueLength: '5' })).toBe(
      `invalid trigger metadata: queueLength: unknown key; allowed keys are ${ALLOWED}`,
    );
  });

  it('refuses a source the scaler does not have', async () => {
    expect(await invalid({ queueName: 'jobs', source: 'nats' })).toBe(
      'invalid trigger metadata: source: "nats" must be one of rabbitmq, kafka',
    );
  });

  it('refuses a connection alias the scaler is not configured with', async () => {
    expect(await invalid({ queueName: 'jobs', connection: 'other' })).toBe(
      'invalid trigger metadata: connection: "other" is not a connection the scaler knows for this source (configured: default)',
    );
    expect(await invalid({ queueName: 'jobs', connection: 'Other Broker' })).toBe(
      'invalid trigger metadata: connection: "Other Broker" must be a connection alias of lowercase letters, digits, ".", "_" and "-"',
    );
  });

  it('refuses measure outside management mode', async () => {
    expect(await invalid({ queueName: 'jobs', mode: 'ready', measure: 'publishRate' })).toBe(
      'invalid trigger metadata: measure: is only allowed with mode management, got mode "ready"',
    );
    expect(await invalid({ queueName: 'jobs', measure: 'messages' })).toBe(
      'invalid trigger metadata: measure: is only allowed with mode management, got mode "backlog"',
    );
  });

  it('refuses values that carry credentials without echoing them', async () => {
    const cases: Array<[Record<string, string>, string]> = [
      [{ queueName: 'jobs', connection: 'amqp://user:secret@host' }, `invalid trigger metadata: connection: ${CREDENTIALS}`],
      [{ queueName: 'jobs', vhost: '/?password=secret' }, `invalid trigger metadata: vhost: ${CREDENTIALS}`],
      [{ queueName: 'jobs', vhost: 'Bearer secret-token' }, `invalid trigger metadata: vhost: ${CREDENTIALS}`],
    ];
    for (const [metadata, expected] of cases) {
      const details = await invalid(metadata);
      expect(details).toBe(expected);
      expect(details).not.toContain('secret');
    }
    expect(scaler().logs()).not.toContain('secret');
  });

  it('reads queueNameFromEnv like queueName, and refuses both together', async () => {
    const queue = await rabbit().queue('from-env');
    await rabbit().publish(queue, 3);
    const spec = await scaler().client.getMetricSpec({ queueNameFromEnv: queue });
    expect(spec).toEqual({
      ok: true,
      value: {
        metricSpecs: [
          { metricName: expect.stringMatching(new RegExp(`^rabbitmq-${queue}-[0-9a-f]{10}$`)), targetSize: 1, targetSizeFloat: 1 },
        ],
      },
    });
    const fromEnv = await waitUntil(
      'the scaler to report 3 messages for the queue named by queueNameFromEnv',
      () => scaler().client.poll({ queueNameFromEnv: queue }),
      (r) => r.ok && r.view.value === 3,
    );
    const direct = await scaler().client.poll({ queueName: queue });
    expect(fromEnv).toMatchObject({ ok: true, view: { value: 3, active: true } });
    expect(direct).toMatchObject({ ok: true, view: { value: 3, active: true } });
    expect(await invalid({ queueName: queue, queueNameFromEnv: queue })).toBe(
      'invalid trigger metadata: queueNameFromEnv: set either queueName or queueNameFromEnv, not both',
    );
  });

  it('reports every problem at once, in one message', async () => {
    expect(await invalid({ mode: 'fast', targetSize: '0', activationThreshold: 'x', colour: 'blue' })).toBe(
      'invalid trigger metadata: ' +
        [
          'targetSize: "0" must be a number greater than 0',
          'activationThreshold: "x" must be a number at least 0',
          `colour: unknown key; allowed keys are ${ALLOWED}`,
          'queueName: is required',
          'mode: "fast" must be one of backlog, ready, management',
        ].join('; '),
    );
  });

  it("accepts KEDA's own keys scalerAddress, enableTLS and unsafeSsl", async () => {
    const queue = await rabbit().queue('keda-keys');
    const r = await scaler().client.getMetricSpec({
      queueName: queue,
      scalerAddress: 'kmj-scaler.ml.svc:6000',
      enableTLS: 'true',
      unsafeSsl: 'false',
    });
    expect(r).toEqual({
      ok: true,
      value: {
        metricSpecs: [
          { metricName: expect.stringMatching(new RegExp(`^rabbitmq-${queue}-[0-9a-f]{10}$`)), targetSize: 1, targetSizeFloat: 1 },
        ],
      },
    });
  });
});
