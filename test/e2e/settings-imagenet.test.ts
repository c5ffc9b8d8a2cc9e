/**
 * The correlated and mixed settings on ImageNet-C (docs/protocol.md#settings), which is decoded
 * batch by batch: labels come from the class folders before any decoding, and the mixed step pools
 * the domains' file lists rather than their pixels. Generated tree (3 wnids × 2 JPEGs × 2
 * corruptions) and the reduced ResNet-50 fixture with its head cut to 3 classes.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { makeImageNetTree, type ImageNetTree } from '../../src/data/imagenet-tree.js';
import { ROOT, runBin } from './helpers.js';

const CORR = ['gaussian_noise', 'fog'];
let tree: ImageNetTree;
let weights = '';

beforeAll(async () => {
  tree = await makeImageNetTree({ perClass: 2, corruptions: CORR });
  const sd = await readSafetensors(join(ROOT, 'test/fixtures/imagenet/resnet50_small.safetensors'));
  const out = new Map<string, TensorToWrite>();
  for (const [k, t] of sd) {
    if (k === 'fc.weight') out.set(k, { dtype: 'float32', shape: [3, t.shape[1]], data: t.data.subarray(0, 3 * t.shape[1]) });
    else if (k === 'fc.bias') out.set(k, { dtype: 'float32', shape: [3], data: t.data.subarray(0, 3) });
    else out.set(k, t);
  }
  weights = join(mkdtempSync(join(tmpdir(), 'cta-in-set-')), 'resnet50_small_3cls.safetensors');
  await writeSafetensors(weights, out);
});

const json = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), 'utf8'));
type Entry = { domain: string; n: number; error: number; per_domain?: Entry[] };

async function run(args: string[]): Promise<string> {
  const out = join(mkdtempSync(join(tmpdir(), 'cta-in-set-out-')), 'run');
  const r = await runBin('cta-eval', ['--data', 'imagenetc', '--data-dir', tree.imagenetC, '--clean-dir', tree.clean, '--corruptions', CORR.join(','), '--weights', weights, '--model', 'resnet50', '--batch-size', '4', '--backend', 'wasm', '--progress', 'none', '--out', out, ...args]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return out;
}

describe('settings on --data imagenetc', () => {
  it('correlated and mixed-correlated run; the source model scores every image as in the continual run', async () => {
    const plain = await run(['--alg', 'source']);
    const corr = await run(['--alg', 'source', '--setting', 'correlated']);
    const mixed = await run(['--alg', 'source', '--setting', 'mixed-correlated', '--dirichlet-delta', '1', '--interleave-clean']);
    const [a, c, m] = [plain, corr, mixed].map((d) => json(d, 'summary.json'));
    const errs = (s: { domains: Entry[] }) => s.domains.map((d) => [d.domain, d.n, d.error]);
    expect(errs(c)).toEqual(errs(a));
    expect(c.setting).toBe('correlated');
    expect(m.setting).toBe('mixed-correlated');
    expect(m.dirichlet_delta).toBe(1);
    expect(m.domains).toHaveLength(1);
    expect(m.domains[0].per_domain.map((p: Entry) => [p.domain, p.n, p.error])).toEqual(errs(a));
    // The clean set, evaluated before and after the one pooled step, by the unchanged source model.
    expect(m.acc_matrix.values[0]).toHaveLength(2);
    for (const v of m.acc_matrix.values[0]) expect(v).toBeCloseTo(100 - a.domains[2].error, 10);
    const fp = (d: string) => json(d, 'manifest.json').stream_fingerprint;
    expect(new Set([fp(plain), fp(corr), fp(mixed)]).size).toBe(3);
    expect(m.protocol.corruption_source).toContain('ImageNet-C');
  });
});
