/**
 * End-to-end prompts and Google .npz checkpoints: the built `cta-eval` bin on a tiny generated
 * CIFAR-10-C-layout folder (32 px, 10 classes) with the reduced ViTs of the fixtures — VPT-deep under
 * Tent and an L2P pool under EATA (--adapt-params prompt: only the prompts train, the count is
 * printed and recorded), a Google-layout .npz loaded by content (variant and head count in the
 * protocol record), and one-line exit-2 refusals for a broken .npz, the wrong --model and an L2P
 * option clash.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCifarC, ROOT, runBin } from './helpers.js';

const cli = (args: string[]) => runBin('cta-eval', args);
const VIT = join(ROOT, 'test/fixtures/imagenet/vit_small.safetensors'); // width 48, depth 2, 12 heads
const NPZ = join(ROOT, 'test/fixtures/npz/vit_tiny.npz'); // Google layout: width 24, depth 2, 4 heads

let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(4, ['gaussian_noise']);
});

const common = () => ['--data', 'cifar10c', '--data-dir', dataDir, '--corruptions', 'gaussian_noise', '--model', 'vit_b16', '--batch-size', '4', '--backend', 'wasm', '--progress', 'none'];
const outDir = () => join(mkdtempSync(join(tmpdir(), 'cta-prompt-out-')), 'run');
const json = (path: string) => JSON.parse(readFileSync(path, 'utf8'));

describe('cta-eval --adapt-params prompt and Google .npz weights', () => {
  it('VPT-deep under Tent: only the prompts train (2 × 5 × 48), every batch updates', async () => {
    const out = outDir();
    const r = await cli([...common(), '--weights', VIT, '--alg', 'tent', '--adapt-params', 'prompt', '--prompt-depth', 'deep', '--prompt-tokens', '5', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('tent: 480 trainable parameters (--adapt-params prompt)');
    const s = json(join(out, 'summary.json'));
    expect(s).toMatchObject({ complete: true, adapt_params: 'prompt', trainable_params: 480 });
    for (const d of s.domains) expect(d.updates).toBe(1);
    expect(s.domains[0].measured_max_backprop_mb).toBeGreaterThan(0);
    expect(json(join(out, 'manifest.json')).protocol.checkpoint).toMatch(/^timm-safetensors: depth 2, width 48/);
  });

  it('an L2P pool under EATA: pool prompts and keys train (4 × 2 × 48 + 4 × 48)', async () => {
    // E0 = 2.5 > ln 10 makes every sample reliable (EATA weighs them by exp(E0 − H), so not far above)
    const out = outDir();
    const args = ['--alg', 'eata', '--e-margin', '2.5', '--fisher-size', '4', '--adapt-params', 'prompt', '--prompt-pool', '4', '--prompt-top-n', '2', '--prompt-tokens', '2'];
    const r = await cli([...common(), '--weights', VIT, ...args, '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = json(join(out, 'summary.json'));
    expect(s).toMatchObject({ complete: true, trainable_params: 4 * 2 * 48 + 4 * 48 });
    // the first batch updates; later ones may be filtered as redundant (EATA's d-margin)
    expect(s.domains[0].updates).toBe(1);
    expect(s.domains[0].measured_max_backprop_mb).toBeGreaterThan(0);
  });

  it('reads a Google ViT .npz by content: variant and head count in the protocol record', async () => {
    const out = outDir();
    const r = await cli([...common(), '--weights', NPZ, '--alg', 'tent', '--adapt-params', 'prompt', '--prompt-tokens', '3', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/protocol: .*npz-google: depth 2, width 24, MLP 48, patch 8, input 32 px, 10 classes, 4 heads; normalisation \(x − \(0\.5, 0\.5, 0\.5\)\) \/ \(0\.5, 0\.5, 0\.5\)/);
    const m = json(join(out, 'manifest.json'));
    expect(m.protocol.checkpoint).toMatch(/^npz-google: .*, 4 heads$/);
    expect(json(join(out, 'summary.json'))).toMatchObject({ complete: true, trainable_params: 3 * 24 });
  });

  it('refuses a broken .npz, a Google checkpoint for a CNN and an L2P clash with one line, exit 2', async () => {
    // Rename one member (same length) in the STORED archive: that tensor is then missing.
    const bytes = readFileSync(NPZ);
    const from = Buffer.from('encoderblock_1/MlpBlock_3/Dense_0/kernel.npy');
    const to = Buffer.from('encoderblock_1/MlpBlock_3/Dense_7/kernel.npy');
    let at = bytes.indexOf(from);
    while (at >= 0) {
      to.copy(bytes, at);
      at = bytes.indexOf(from, at + 1);
    }
    const broken = join(mkdtempSync(join(tmpdir(), 'cta-npz-')), 'broken.npz');
    writeFileSync(broken, bytes);
    const r = await cli([...common(), '--weights', broken, '--out', outDir()]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(`${broken}: Google ViT checkpoint does not match a ViT (width 24, 4 heads, 2 blocks): missing Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel [24,48]`);
    const cnn = await cli([...common(), '--model', 'resnext29', '--weights', NPZ, '--out', outDir()]);
    expect(cnn.code).toBe(2);
    expect(cnn.stderr).toContain(`--weights ${NPZ} is a Google ViT checkpoint (Flax names such as embedding/kernel); it needs --model vit_b16, not resnext29`);
    const clash = await cli([...common(), '--weights', VIT, '--alg', 'tent', '--adapt-params', 'prompt', '--prompt-pool', '4', '--prompt-depth', 'deep', '--out', outDir()]);
    expect(clash.code).toBe(2);
    expect(clash.stderr.trim()).toMatch(/--prompt-depth deep: L2P \(--prompt-pool\) inserts its prompts before block 0 only/);
  });
});
