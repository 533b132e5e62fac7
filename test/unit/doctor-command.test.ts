// `kmj doctor` in its parts, without services: the flags (parseDoctorArgs), the exit code
// (decideDoctor) and the text or JSON (renderDoctor) from checks built here. The checks
// themselves, against the real services and a Pi's files, are in test/cli/doctor.test.ts.
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../common/exit-codes.ts';
import { decideDoctor, parseDoctorArgs, renderDoctor } from '../../cli/doctor-command.ts';
import type { Check } from '../../worker/doctor.ts';

const host = { hostname: 'pi-1', platform: 'linux/arm64', machine: 'aarch64' };
const checks: Check[] = [
  { name: 'page-size', status: 'ok', detail: '4096 bytes' },
  { name: 'broker', status: 'fail', detail: 'cannot reach amqp://127.0.0.1:5672', fix: 'start RabbitMQ' },
  { name: 'keda', status: 'skip', detail: 'not in a pod' },
];

describe('parseDoctorArgs', () => {
  it('reads the worker flags and the output; a bad output is a usage problem naming the flag', () => {
    expect(parseDoctorArgs(['--queue', 'q', '--scaler', 'kmj-scaler.kmj.svc:6000', '-o', 'json'])).toEqual({
      kind: 'check',
      flags: { queue: 'q' },
      model: undefined,
      scaler: 'kmj-scaler.kmj.svc:6000',
      kubeconfig: undefined,
      output: 'json',
    });
    expect(parseDoctorArgs(['-o', 'yaml'])).toEqual({ kind: 'usage', problem: '-o/--output: "yaml" must be text or json' });
    expect(parseDoctorArgs(['--help'])).toEqual({ kind: 'help' });
  });
});

describe('decideDoctor and renderDoctor', () => {
  it('a failed check exits 1; skipped ones do not count', () => {
    expect(decideDoctor(checks)).toBe(EXIT.FAILED);
    expect(decideDoctor(checks.filter((c) => c.status !== 'fail'))).toBe(EXIT.OK);
  });

  it('text: a line per check, the fix under a failure, the counts', () => {
    expect(renderDoctor(checks, host, 'text')).toBe(
      [
        'kmj doctor on pi-1 (linux/arm64, aarch64)',
        '  ok    page-size  4096 bytes',
        '  FAIL  broker     cannot reach amqp://127.0.0.1:5672',
        '                   fix: start RabbitMQ',
        '  skip  keda       not in a pod',
        '3 checks: 1 ok, 1 failed, 1 skipped',
        '',
      ].join('\n'),
    );
  });

  it('json: one object with ok, the host and every check', () => {
    expect(JSON.parse(renderDoctor(checks, host, 'json'))).toEqual({
      ok: false,
      host: 'pi-1',
      platform: 'linux/arm64',
      machine: 'aarch64',
      checks,
    });
  });
});
