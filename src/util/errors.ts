import { constants as osConstants } from 'node:os';

/**
 * A user-facing error: the CLI prints `error: <message>` on one line and exits with `exitCode`
 * (2 = bad usage / bad input, 1 = runtime failure). Library code throws this for anything a user
 * can fix (bad flag, missing file, wrong shape), so no tfjs stack trace ever reaches the terminal.
 */
export class CtaError extends Error {
  constructor(message: string, readonly exitCode: number = 2) {
    super(message);
    this.name = 'CtaError';
  }
}

/** Lists the first few items of a problem set plus the total count: "a, b, c … (12 in all)". */
export function listSome(items: readonly string[], max = 5): string {
  const head = items.slice(0, max).join(', ');
  return items.length > max ? `${head}, … (${items.length} in all)` : head;
}

/**
 * A run stopped at a safe point after SIGINT/SIGTERM. runMain prints `<cmd>: <message>` (what
 * finished, how to continue) and exits 128 + the signal's number — 130, 143 — as a shell does for
 * a process killed by that signal, so callers (cta-sweep, scripts) still see "interrupted".
 */
export class Interrupted extends Error {
  readonly exitCode: number;
  constructor(message: string, readonly signal: NodeJS.Signals) {
    super(message);
    this.name = 'Interrupted';
    this.exitCode = signalExitCode(signal);
  }
}

export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (osConstants.signals[signal] ?? osConstants.signals.SIGTERM);
}
