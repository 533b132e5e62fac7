/**
 * Mistakes on the command line: one error class (exit 64, EX_USAGE, with a pointer to the help)
 * and the "did you mean" that kubectl and git give for a mistyped command or flag.
 */
import { parseArgs } from 'node:util';

/** A missing, unknown or malformed flag or argument. Every problem at once, as ConfigError does. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(problems.join('; '));
    this.problems = problems;
  }
}

/** Edit distance (insertions, deletions, substitutions, and swaps of neighbours). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = d[i] as number[];
      const prev = d[i - 1] as number[];
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        row[j] = Math.min(row[j] as number, ((d[i - 2] as number[])[j - 2] as number) + 1);
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/** The closest of `known` to `word`, when it is close enough to be a typo (kubectl's rule of thumb). */
export function didYouMean(word: string, known: readonly string[]): string | undefined {
  let best: { name: string; distance: number } | undefined;
  for (const name of known) {
    const distance = editDistance(word, name);
    if (best === undefined || distance < best.distance) best = { name, distance };
  }
  const limit = Math.max(1, Math.floor(word.length / 3));
  return best !== undefined && best.distance <= limit ? best.name : undefined;
}

/** The long flags a help text documents (`--queue`, `--max-jobs`), for suggestions. */
export function flagsOf(help: string): string[] {
  return [...new Set([...help.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]))];
}

/** The short flags a help text documents (`-n`, `-o`, `-h`). */
function shortFlagsOf(help: string): string[] {
  return [...new Set([...help.matchAll(/(?<![\w-])-[a-zA-Z](?![\w-])/g)].map((m) => m[0]))];
}

/**
 * The first flag of `args` that `help` does not document: what Node's parseArgs refused with
 * ERR_PARSE_ARGS_UNKNOWN_OPTION, read from its tokens (Node names the flag only in its message).
 */
export function unknownFlag(args: readonly string[], help: string): string | undefined {
  const known = new Set([...flagsOf(help), ...shortFlagsOf(help)]);
  const { tokens } = parseArgs({ args: [...args], strict: false, allowPositionals: true, tokens: true });
  for (const token of tokens) {
    if (token.kind === 'option-terminator') return undefined;
    if (token.kind === 'option' && !known.has(token.rawName)) return token.rawName;
  }
  return undefined;
}
