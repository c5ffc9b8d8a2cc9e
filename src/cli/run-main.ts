/**
 * Wraps a bin's main: a CtaError prints one `<cmd>: error: ...` line and exits with its code;
 * an Interrupted run prints its one line and exits 130/143; anything else is an internal error
 * (stack only with CTA_DEBUG=1), exit 1. A closed stdout/stderr never stops a bin (stdio.ts).
 */
import { CtaError, Interrupted } from '../util/errors.js';
import { guardStdio } from './stdio.js';

export async function runMain(cmd: string, main: () => Promise<void>): Promise<void> {
  guardStdio();
  try {
    await main();
  } catch (e) {
    if (e instanceof Interrupted) {
      process.stderr.write(`${cmd}: ${e.message}\n`);
      process.exitCode = e.exitCode;
      return;
    }
    if (e instanceof CtaError) {
      process.stderr.write(`${cmd}: error: ${e.message}\n`);
      process.exitCode = e.exitCode;
      return;
    }
    const err = e as Error;
    process.stderr.write(`${cmd}: internal error: ${err?.message ?? String(e)}\n`);
    if (process.env.CTA_DEBUG) process.stderr.write(`${err?.stack ?? ''}\n`);
    else process.stderr.write(`${cmd}: (set CTA_DEBUG=1 for the stack trace)\n`);
    process.exitCode = 1;
  }
}
