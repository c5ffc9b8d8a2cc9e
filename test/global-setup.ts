/**
 * One temporary folder for the whole test run: every test worker and every bin a test starts
 * inherits TMPDIR pointing into it, so whatever a test or a bin writes to `os.tmpdir()` (data
 * folders, run folders, diagnostic reports, a run killed mid-way) is removed when the run ends,
 * even when a test fails before its own clean-up or a worker is killed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'cta-vitest-'));
  process.env.CTA_TEST_TMP_ROOT = root;
  process.env.TMPDIR = root;
  return () => rmSync(root, { recursive: true, force: true });
}
