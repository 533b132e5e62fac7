// The flag parsing of kmj worker, kmj scaler and kmj model-cache (each a thin command over its
// module's configuration: the flags override the environment by name), and kmj replay's parts:
// its flags, its exit code from the replay's results and its lines. No services; the commands
// against the real services are in test/cli/.
import { describe, expect, it } from 'vitest';
import { parseModelCacheArgs } from '../../cli/model-cache-command.ts';
import { decideReplay, parseReplayArgs, renderReplayed, renderReplaySummary } from '../../cli/replay-command.ts';
import { parseScalerArgs } from '../../cli/scaler-command.ts';
import { parseWorkerArgs } from '../../cli/worker-command.ts';
import { EXIT } from '../../common/exit-codes.ts';
import type { ReplayResult } from '../../worker/spool.ts';

describe('flags of the long-running commands', () => {
  it.each([
    { args: ['--queue', 'q'], want: { kind: 'run', flags: { queue: 'q' } } },
    {
      args: ['--topic', 't', '--group', 'g', '--max-messages', '3'],
      want: { kind: 'run', flags: { topic: 't', group: 'g', maxMessages: '3' } },
    },
    { args: [], want: { kind: 'run', flags: {} } },
    { args: ['--help'], want: { kind: 'help' } },
  ])('kmj worker $args', ({ args, want }) => {
    expect(parseWorkerArgs(args)).toEqual(want);
  });

  it.each([
    {
      args: ['--host', '0.0.0.0', '--port', '6000', '--metrics-port', '8080'],
      want: { kind: 'run', flags: { host: '0.0.0.0', port: '6000', metricsPort: '8080' } },
    },
    { args: [], want: { kind: 'run', flags: {} } },
    { args: ['-h'], want: { kind: 'help' } },
  ])('kmj scaler $args', ({ args, want }) => {
    expect(parseScalerArgs(args)).toEqual(want);
  });

  it.each([
    { args: ['--port', '8090'], want: { kind: 'run', flags: { port: '8090' } } },
    { args: [], want: { kind: 'run', flags: {} } },
    { args: ['-h'], want: { kind: 'help' } },
  ])('kmj model-cache $args', ({ args, want }) => {
    expect(parseModelCacheArgs(args)).toEqual(want);
  });

  it('an unknown flag or a positional argument is refused by the parser (kmj.ts turns it into exit 64 with a suggestion)', () => {
    expect(() => parseWorkerArgs(['--queu', 'q'])).toThrow(expect.objectContaining({ code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' }));
    expect(() => parseScalerArgs(['extra'])).toThrow(expect.objectContaining({ code: 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' }));
    expect(() => parseModelCacheArgs(['--port'])).toThrow(expect.objectContaining({ code: 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' }));
  });
});

describe('kmj replay in parts', () => {
  const replayed: ReplayResult = { requestId: 'req-1', runId: 'abc', outcome: 'replayed' };
  const already: ReplayResult = { requestId: 'req-2', runId: 'def', outcome: 'already in MLflow' };
  const failed: ReplayResult = { requestId: 'req-3', outcome: 'failed', error: 'MLflow answered 503' };

  it.each([
    {
      args: ['--to', 'http://mlflow:5000', '--spool', '/var/spool/kmj'],
      want: { kind: 'run', to: 'http://mlflow:5000', spool: '/var/spool/kmj' },
    },
    { args: [], want: { kind: 'run' } },
    { args: ['-h'], want: { kind: 'help' } },
  ])('parseReplayArgs $args', ({ args, want }) => {
    expect(parseReplayArgs(args)).toEqual(want);
  });

  it('exit 0 when every entry is in MLflow, now or before; 1 when one failed', () => {
    expect(decideReplay([])).toBe(EXIT.OK);
    expect(decideReplay([replayed, already])).toBe(EXIT.OK);
    expect(decideReplay([replayed, failed])).toBe(EXIT.FAILED);
  });

  it('one line per entry and a summary that says where the failed ones stay', () => {
    expect([replayed, already, failed].map(renderReplayed)).toEqual([
      'replayed          req-1 → run abc',
      'already in MLflow req-2 → run def',
      'failed            req-3: MLflow answered 503',
    ]);
    expect(renderReplaySummary([replayed, already], '/s')).toBe('2 of 2 spooled runs are in MLflow');
    expect(renderReplaySummary([replayed, failed], '/s')).toBe('1 of 2 spooled runs are in MLflow; 1 failed and stay in /s');
  });
});
