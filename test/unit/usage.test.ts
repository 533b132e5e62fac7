// The unknown flag of a command line, found from parseArgs' tokens against the flags the
// command's help documents (cli/usage.ts unknownFlag), as kmj names it after Node's
// ERR_PARSE_ARGS_UNKNOWN_OPTION. The whole path, kmj's exit and message, is in test/cli/status.test.ts.
import { describe, expect, it } from 'vitest';
import { STATUS_HELP } from '../../cli/status-command.ts';
import { unknownFlag } from '../../cli/usage.ts';

describe('unknownFlag', () => {
  it.each([
    [['--queue', 'q', '--qeue', 'x'], '--qeue'],
    [['--verbose'], '--verbose'],
    [['-n', 'kmj', '-x'], '-x'],
    [['--queue=q', '--output=json', '--runs', '3', '--bogus=1'], '--bogus'],
    [['--queue', 'q', '--', '--not-a-flag'], undefined],
    [['--queue', 'q', '-o', 'json', '-w'], undefined],
  ])('%j: %s', (args, flag) => {
    expect(unknownFlag(args, STATUS_HELP)).toBe(flag);
  });
});
