/**
 * Test-only helper (not imported by library code): the message of the CtaError that `f` throws,
 * checked to be what the CLI prints as one `error:` line with exit code 2 (bad input).
 */
import { expect } from 'vitest';
import { CtaError } from './errors.js';

export function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as CtaError).exitCode).toBe(2);
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected a CtaError');
}
