/** The test run's temporary files stay inside the folder test/global-setup.ts removes at the end. */
import { describe, it, expect } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname } from 'node:path';
import { runCommand } from './e2e/helpers.js';

describe('test temporary folders', () => {
  it('os.tmpdir() in a test worker is the run folder', () => {
    const root = process.env.CTA_TEST_TMP_ROOT;
    expect(root).toMatch(/cta-vitest-/);
    expect(tmpdir()).toBe(root);
    expect(dirname(mkdtempSync(`${tmpdir()}/cfg-`))).toBe(root);
  });

  it('a bin started by a test inherits it', async () => {
    const r = await runCommand(process.execPath, ['-e', 'process.stdout.write(require("os").tmpdir())']);
    expect(r.stdout).toBe(process.env.CTA_TEST_TMP_ROOT);
  });
});
