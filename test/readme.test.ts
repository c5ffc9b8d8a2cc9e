/**
 * README ↔ config schema: the flag table between the markers must be exactly what the schema
 * produces (UPDATE_README=1 rewrites it), so a flag cannot exist in one place and not the other.
 */
import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { flagTable } from '../scripts/flag-table.js';

const README = join(import.meta.dirname, '..', 'README.md');
const START = '<!-- flags:start -->';
const END = '<!-- flags:end -->';

describe('README', () => {
  it('documents every config flag (generated table is current)', () => {
    const text = readFileSync(README, 'utf8');
    const a = text.indexOf(START);
    const b = text.indexOf(END);
    expect(a).toBeGreaterThan(0);
    expect(b).toBeGreaterThan(a);
    const want = `${START}\n${flagTable()}\n${END}`;
    const have = text.slice(a, b + END.length);
    if (process.env.UPDATE_README && have !== want) {
      writeFileSync(README, text.slice(0, a) + want + text.slice(b + END.length));
      return;
    }
    expect(have).toBe(want);
  });
});
