/** cta-train end to end in-process: a tiny run writes weights that buildModel loads; flag errors. */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../cli/cta-train.js';
import { initBackend } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { buildModel } from '../models/registry.js';
import { loadWeightFile } from '../io/state-dict.js';
import { resolveWeights } from '../models/weights-variant.js';
import { Rng } from '../util/rng.js';

const FMNIST_TEST = join(process.cwd(), 'assets', 'fashion-mnist', 't10k-images-idx3-ubyte.gz');
let dir: string;

beforeAll(async () => {
  await initBackend('wasm');
  dir = mkdtempSync(join(tmpdir(), 'cta-train-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

function capture(): { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
  return { out, err };
}

describe('cta-train', () => {
  it('trains a tiny ResNeXt for one epoch and writes weights that buildModel loads', async () => {
    const out = join(dir, 'sub', 'tiny.safetensors');
    const io = capture();
    await main([
      '--data', FMNIST_TEST, '--test', FMNIST_TEST, '--n-train', '64', '--n-test', '32',
      '--depth', '11', '--cardinality', '2', '--base-width', '32', '--width', '4',
      '--epochs', '1', '--batch-size', '32', '--log-every', '1', '--out', out,
    ]);
    vi.restoreAllMocks();
    expect(io.err.join('')).toBe('');
    expect(process.exitCode ?? 0).toBe(0);
    const text = io.out.join('');
    expect(text).toMatch(/depth 11, cardinality 2, base width 32, width 4/);
    expect(text).toMatch(/epoch 1 step 2\/2 loss/);
    expect(text).toMatch(/epoch 1\/1 done: train loss [\d.]+ train acc [\d.]+ test acc [\d.]+/);
    const model = buildModel('resnext29', await readSafetensors(out), { rng: new Rng(0), expect: { depth: 11, cardinality: 2, baseWidth: 32 } });
    expect(model.numClasses).toBe(10);
    model.dispose();

    // --init continues from those weights (architecture read from the file; flags must agree)
    const io2 = capture();
    const out2 = join(dir, 'tiny2.safetensors');
    await main(['--data', FMNIST_TEST, '--test', 'none', '--n-train', '32', '--init', out, '--width', '4', '--crop-pad', '0', '--epochs', '1', '--batch-size', '32', '--out', out2]);
    await main(['--data', FMNIST_TEST, '--n-train', '32', '--batch-size', '32', '--init', out, '--depth', '20', '--out', out2]);
    vi.restoreAllMocks();
    expect(io2.out.join('')).toMatch(/init from .*tiny\.safetensors \(its mu\/sigma are kept\)/);
    expect(io2.out.join('')).toMatch(/augment flip, seed/);
    expect(io2.err.join('')).toMatch(/--init .*: the weights have depth 11, the flags say 20/);
    const a = await readSafetensors(out);
    const b = await readSafetensors(out2);
    expect(Array.from(b.get('mu')!.data)).toEqual(Array.from(a.get('mu')!.data));
    expect(b.get('bn_1.num_batches_tracked')!.data[0]).toBe(1);
    expect(Array.from(b.get('classifier.weight')!.data)).not.toEqual(Array.from(a.get('classifier.weight')!.data));
  });

  it('--model vit_b16: a tiny ViT for one epoch, with its heads and mean/std in the file metadata', async () => {
    const out = join(dir, 'vit.safetensors');
    const io = capture();
    await main([
      '--model', 'vit_b16', '--data', FMNIST_TEST, '--test', FMNIST_TEST, '--n-train', '32', '--n-test', '16',
      '--vit-dim', '24', '--vit-depth', '1', '--vit-heads', '3', '--vit-mlp-dim', '48', '--patch', '8',
      '--epochs', '1', '--batch-size', '16', '--log-every', '1', '--out', out,
    ]);
    vi.restoreAllMocks();
    expect(io.err.join('')).toBe('');
    expect(process.exitCode ?? 0).toBe(0);
    const text = io.out.join('');
    expect(text).toMatch(/vit_b16 width 24, depth 1, 3 heads, MLP 48, patch 8 \(16 \+ 1 tokens\), 10 classes/);
    expect(text).toMatch(/AdamW lr 0\.001 \(warmup 0 steps, then cosine\).*weight decay 0\.05 on matrices, augment crop pad 4 \+ flip/);
    expect(text).toMatch(/epoch 1\/1 done: train loss [\d.]+ train acc [\d.]+ test acc [\d.]+/);
    const file = await loadWeightFile(out);
    expect(file.metadata).toMatchObject({ arch: 'vit_b16', vit_heads: '3', input_mean: '0.5,0.5,0.5', input_std: '0.5,0.5,0.5', epoch: '1/1' });
    const { sd, heads } = resolveWeights(file.sd, file.format, 'vit_b16', out, file.metadata);
    const model = buildModel('vit_b16', sd, { rng: new Rng(0), expect: { heads } });
    expect(model.numClasses).toBe(10);
    expect(model.inputShape).toEqual([32, 32, 3]);
    model.dispose();

    // --init continues from that file (shape and heads from it); a disagreeing shape flag is refused
    const io2 = capture();
    const out2 = join(dir, 'vit2.safetensors');
    await main(['--model', 'vit_b16', '--data', FMNIST_TEST, '--test', 'none', '--n-train', '16', '--batch-size', '16', '--epochs', '1', '--init', out, '--out', out2]);
    await main(['--model', 'vit_b16', '--data', FMNIST_TEST, '--n-train', '16', '--batch-size', '16', '--init', out, '--vit-dim', '32', '--out', out2]);
    vi.restoreAllMocks();
    expect(io2.out.join('')).toMatch(/vit_b16 width 24, depth 1, 3 heads, MLP 48, patch 8/);
    expect(io2.out.join('')).toMatch(/init from .*vit\.safetensors/);
    expect(io2.err.join('')).toMatch(/^cta-train: error: --init .*vit\.safetensors: the weights have dim 24, the flags say 32\n$/);
    const cont = await loadWeightFile(out2);
    expect(cont.metadata.vit_heads).toBe('3');
  });

  it('one-line errors for bad flags and inputs', async () => {
    const cases: [string[], RegExp][] = [
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--depth', '12'], /--depth 12: a CifarResNeXt has depth 9·blocks \+ 2/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--model', 'wrn28_10'], /--model wrn28_10: cta-train builds resnext29 .* or vit_b16/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--model', 'vit_b16', '--cardinality', '4'], /^cta-train: error: --cardinality: not an option of --model vit_b16 \(resnext29 only\)/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--vit-dim', '64'], /--vit-dim: not an option of --model resnext29 \(vit_b16 only\)/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--model', 'vit_b16', '--vit-heads', '3'], /--vit-heads 3: does not divide --vit-dim 64/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--model', 'vit_b16', '--patch', '5'], /--patch 5: does not divide the 32-pixel image side/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--model', 'vit_b16', '--warmup-steps', '-1'], /--warmup-steps: expected an integer ≥ 0/],
      [['--data', FMNIST_TEST], /--out: required/],
      [['--data', FMNIST_TEST, '--out', join(dir, 'x.safetensors'), '--epochs', '0'], /--epochs: expected an integer ≥ 1/],
      [['--data', join(dir, 'empty'), '--out', join(dir, 'x.safetensors')], /without train-images-idx3-ubyte/],
    ];
    mkdirSync(join(dir, 'empty'), { recursive: true });
    for (const [argv, want] of cases) {
      const io = capture();
      await main(argv);
      vi.restoreAllMocks();
      expect(io.err.join(''), argv.join(' ')).toMatch(want);
      expect(io.err.join('').trim().split('\n').length).toBe(1);
      expect(process.exitCode).toBe(2);
      process.exitCode = undefined;
    }
  });
});
