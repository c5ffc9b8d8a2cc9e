/**
 * Wraps a bin's main: a CtaError prints one `<cmd>: error: ...` line and exits with its code;
 * anything else is an internal error (stack only with CTA_DEBUG=1), exit 1.
 */
import { CtaError } from '../util/errors.js';

export async function runMain(cmd: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (e) {
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
