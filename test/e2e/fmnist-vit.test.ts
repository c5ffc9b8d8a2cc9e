/**
 * The shipped Fashion-MNIST ViT (assets/models/fmnist-vit.safetensors, cta-train --model vit_b16)
 * through the built `cta-eval`: the head count and normalisation come from the file's metadata
 * (no flag), one --adapt-params kind trains only its modules, and the trained model is far from
 * chance on the clean images.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, runBin } from './helpers.js';

const VIT = join(ROOT, 'assets/models/fmnist-vit.safetensors');
const stream = ['--data', 'synthetic-c', '--source', join(ROOT, 'assets/fashion-mnist/t10k-images-idx3-ubyte.gz'), '--n-examples', '32', '--batch-size', '16', '--corruptions', 'gaussian_noise', '--backend', 'wasm', '--threads', '1', '--progress', 'none'];

describe('the shipped Fashion-MNIST ViT', () => {
  it('tent + lora: heads and mean/std from the metadata, 4096 LoRA parameters, clean error far below chance', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'cta-fmnist-vit-')), 'run');
    const r = await runBin('cta-eval', [...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--lr', '0.001', '--adapt-params', 'lora', '--rank', '4', '--out', out]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/timm-safetensors: depth 4, width 64, MLP 128, patch 4, input 32 px, 10 classes, 2 heads/);
    expect(r.stdout).toContain('normalisation (x − (0.5, 0.5, 0.5)) / (0.5, 0.5, 0.5) inside the model');
    const s = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(s.adapt_params).toBe('lora');
    expect(s.trainable_params).toBe(4 * 2 * 4 * (64 + 64)); // 4 blocks × (q, v) × rank 4 × (in + out)
    const byDomain = Object.fromEntries(s.domains.map((d: { domain: string; error: number }) => [d.domain, d.error]));
    expect(Object.keys(byDomain)).toEqual(['gaussian_noise', 'original']);
    expect(byDomain.original).toBeLessThan(50); // chance is 90 %
  });
});
