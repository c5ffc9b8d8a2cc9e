/** Shared e2e helpers: a tiny CIFAR-10-C-layout folder and a way to run the built bins. */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeNpy } from '../../src/io/npy.js';
import { CORRUPTIONS_15 } from '../../src/data/stream.js';
import { Rng } from '../../src/util/rng.js';

export const ROOT = join(import.meta.dirname, '..', '..');
export const FIXTURE_WEIGHTS = join(ROOT, 'test/fixtures/models/resnext_small.safetensors');

/**
 * Writes `<root>/CIFAR-10-C/{<corruption>.npy, labels.npy}` (n random images per severity block)
 * and `<root>/cifar-10-batches-bin/test_batch.bin` (n clean records). Returns the CIFAR-10-C dir.
 */
export async function makeCifarC(n: number, corruptions: readonly string[] = CORRUPTIONS_15, seed = 1): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), 'cta-e2e-'));
  const dir = join(root, 'CIFAR-10-C');
  mkdirSync(dir);
  const rng = new Rng(seed);
  await writeNpy(join(dir, 'labels.npy'), 'uint8', [5 * n], new Uint8Array(5 * n).map((_, i) => i % 10));
  for (const c of corruptions) {
    await writeNpy(join(dir, `${c}.npy`), 'uint8', [5 * n, 32, 32, 3], new Uint8Array(5 * n * 3072).map(() => rng.int(256)));
  }
  mkdirSync(join(root, 'cifar-10-batches-bin'));
  const rec = new Uint8Array(n * 3073);
  for (let i = 0; i < n; i++) {
    rec[i * 3073] = i % 10;
    for (let k = 1; k < 3073; k++) rec[i * 3073 + k] = rng.int(256);
  }
  writeFileSync(join(root, 'cifar-10-batches-bin', 'test_batch.bin'), rec);
  return dir;
}

/** Runs a built bin (`bin/<name>.js`) synchronously. */
export function runBin(name: string, args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin', `${name}.js`), ...args], {
    encoding: 'utf8',
    cwd: ROOT,
    env: { ...process.env, ...env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
