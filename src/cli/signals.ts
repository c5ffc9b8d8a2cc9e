/**
 * Ctrl-C / SIGTERM for long runs. The first signal is only recorded: the run polls `requested()`
 * at safe points (between batches, after start-up steps) and stops there by throwing, so every
 * `finally` runs — no file is left half written — and the bin prints one line saying what
 * finished. A second signal quits at once, for a
 * run stuck where it does not poll.
 */
import { signalExitCode } from '../util/errors.js';

export interface InterruptWatch {
  /** The first SIGINT/SIGTERM received since `watchInterrupts`, or null. */
  requested(): NodeJS.Signals | null;
  /** Restores the default behaviour (the process dies on the next signal). */
  dispose(): void;
}

export function watchInterrupts(cmd: string): InterruptWatch {
  let got: NodeJS.Signals | null = null;
  const on = (sig: NodeJS.Signals) => {
    if (got === null) {
      got = sig;
      return;
    }
    process.stderr.write(`${cmd}: ${sig} again: quitting at once\n`);
    process.exit(signalExitCode(sig));
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return {
    requested: () => got,
    dispose: () => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    },
  };
}
