/**
 * End-to-end --adapt-params (docs/adapters.md): every kind through the built `cta-eval` on the
 * shipped Fashion-MNIST stream with the reduced ViT fixture (timm names, 32 px), lora, adapter,
 * kadaptation and compacter on the small ResNeXt; trainable-parameter counts in summary.json and
 * under the table; --save-adapted → --init-adapters round trip; checkpoint resume keeps the
 * modules (also cotta with vida's scales); bad options exit 2 with one line.
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readSafetensors } from '../../src/io/safetensors.js';
import { FIXTURE_WEIGHTS, ROOT, runBin } from './helpers.js';

const cli = (args: string[]) => runBin('cta-eval', args);
const VIT = join(ROOT, 'test/fixtures/imagenet/vit_small.safetensors');
const stream = ['--data', 'synthetic-c', '--source', join(ROOT, 'assets/fashion-mnist/t10k-images-idx3-ubyte.gz'), '--n-examples', '16', '--batch-size', '8', '--corruptions', 'gaussian_noise', '--backend', 'wasm', '--progress', 'none'];
const outDir = () => join(mkdtempSync(join(tmpdir(), 'cta-adapters-')), 'run');
const summaryOf = (out: string) => JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));

/** Options that fit the width-48 ViT, and the trainable count they give (depth 2). */
const VIT_KINDS: Record<string, { args: string[]; count: number }> = {
  norm: { args: [], count: 2 * 5 * 48 }, // 5 LayerNorms
  lora: { args: ['--rank', '4'], count: 2 * 2 * 4 * (48 + 48) }, // q and v of 2 blocks
  kadaptation: { args: ['--kron-factors', '4'], count: 2 * 2 * (4 * 12 + 4 * 12) + 2 * (16 + 16) }, // fast u, v per q/v per block + shared rules
  adapter: { args: ['--adapter-dim', '8'], count: 2 * 2 * (48 * 8 + 8 + 8 * 48 + 48) },
  compacter: { args: ['--kron-factors', '4', '--adapter-dim', '8'], count: 64 + 2 * 2 * (4 * 12 + 4 * 2 + 8 + 4 * 2 + 4 * 12 + 48) },
  vida: { args: ['--vida-high-rank', '16', '--vida-augmentations', '2'], count: 2 * ((1 + 16) * (48 + 144) + (1 + 16) * (48 + 48)) },
  prompt: { args: [], count: -1 }, // counted by test/e2e/prompts.test.ts
};

describe('cta-eval --adapt-params', () => {
  for (const [kind, { args, count }] of Object.entries(VIT_KINDS)) {
    it(`${kind} on the reduced ViT under tent`, async () => {
      const out = outDir();
      const r = await cli([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--lr', '0.001', '--adapt-params', kind, ...args, '--out', out]);
      expect(r.code, r.stderr + r.stdout).toBe(0);
      const s = summaryOf(out);
      expect(s.adapt_params).toBe(kind);
      if (count >= 0) expect(s.trainable_params).toBe(count);
      expect(r.stdout).toContain(`tent: ${s.trainable_params} trainable parameters (${kind === 'norm' ? "the method's own choice" : `--adapt-params ${kind}`})`);
      expect(s.domains.map((d: { domain: string }) => d.domain)).toEqual(['gaussian_noise', 'original']);
      expect(s.domains.every((d: { max_cache_mb: number }) => d.max_cache_mb > 0)).toBe(true);
    });
  }

  it('eata with lora: --save-adapted writes the trained modules; --init-adapters loads them (source trains nothing) and refuses a mismatched file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cta-adapters-save-'));
    const file = join(dir, 'lora.safetensors');
    const out = outDir();
    const r = await cli([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'eata', '--fisher-size', '8', '--e-margin', '10', '--lr', '0.01', '--adapt-params', 'lora', '--rank', '2', '--save-adapted', file, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const saved = await readSafetensors(file);
    expect([...saved.keys()]).toContain('blocks.0.attn.qkv.lora_B.v.weight');
    expect(saved.get('blocks.0.attn.qkv.lora_B.v.weight')!.data.some((v) => v !== 0)).toBe(true);
    const src = outDir();
    const r2 = await cli([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'source', '--adapt-params', 'lora', '--rank', '2', '--init-adapters', file, '--out', src]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(summaryOf(src).trainable_params).toBe(0);
    const bad = await cli([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'source', '--adapt-params', 'lora', '--rank', '4', '--init-adapters', file, '--out', outDir()]);
    expect(bad.code).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/--init-adapters .*wrong shape/);
  });

  // the small ResNeXt's narrowest 1×1 convs have 16 channels: KAdaptation's default 32 factors do not divide them
  for (const [kind, extra] of [['lora', []], ['adapter', []], ['kadaptation', ['--kron-factors', '8']], ['compacter', []]] as const) {
    it(`${kind} on the small ResNeXt (1×1 convs) under eata`, async () => {
      const out = outDir();
      const r = await cli([...stream, '--model', 'resnext29', '--weights', FIXTURE_WEIGHTS, '--alg', 'eata', '--fisher-size', '8', '--adapt-params', kind, ...extra, '--out', out]);
      expect(r.code, r.stderr).toBe(0);
      expect(summaryOf(out).trainable_params).toBeGreaterThan(0);
    });
  }

  /**
   * Runs `args` whole, and killed after the first domain then resumed; checks the errors, the
   * trainable count and the saved modules (bit-identical) agree; returns the killed run's checkpoint.
   */
  async function killAndResume(args: string[]): Promise<Map<string, { data: ArrayLike<number> }>> {
    const whole = outDir();
    expect((await cli([...args, '--save-adapted', `${whole}.safetensors`, '--out', whole])).code).toBe(0);
    const cut = outDir();
    const killed = await runBin('cta-eval', [...args, '--save-adapted', `${cut}.safetensors`, '--out', cut], {
      CTA_TEST_EXIT_AFTER_DOMAIN: '1',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
    });
    expect(killed.code).toBe(99);
    const ck = await readSafetensors(join(cut, 'checkpoint.safetensors'));
    const resumed = await cli(['--resume', cut, '--progress', 'none']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const errs = (d: string) => summaryOf(d).domains.map((x: { error: number }) => x.error);
    expect(errs(cut)).toEqual(errs(whole));
    expect(summaryOf(cut).trainable_params).toBe(summaryOf(whole).trainable_params);
    // The modules at the end are bit-identical to the uninterrupted run's.
    const [a, b] = [await readSafetensors(`${whole}.safetensors`), await readSafetensors(`${cut}.safetensors`)];
    expect([...b.keys()]).toEqual([...a.keys()]);
    for (const [k, t] of a) expect(Array.from(b.get(k)!.data), k).toEqual(Array.from(t.data));
    return ck;
  }

  it('a run killed at a domain boundary and resumed gives the uninterrupted numbers (modules in the checkpoint)', async () => {
    const ck = await killAndResume([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--lr', '0.01', '--adapt-params', 'adapter', '--adapter-dim', '4']);
    expect(ck.get('adapters.blocks.0.attn.adapter.up.weight')!.data.some((v: number) => v !== 0)).toBe(true);
  });

  it('cotta with vida: a run killed at a domain boundary and resumed gives the uninterrupted numbers (scales in the checkpoint)', async () => {
    const ck = await killAndResume([...stream, '--model', 'vit_b16', '--weights', VIT, '--alg', 'cotta', '--lr', '0.01', '--cotta-augmentations', '2', '--cotta-anchor-threshold', '1', '--adapt-params', 'vida', '--vida-high-rank', '4', '--vida-augmentations', '2', '--vida-scale-update', 'paper', '--vida-unc-thr', '0']);
    // the scales moved (threshold 0, so U ≥ it: λ_low = 1 − U, λ_high = 1 + U); with the zero-initialised
    // up-projections they barely change the teacher's predictions, so the check that the teacher
    // gets them back is src/adapters/parity.test.ts (non-zero modules)
    const scales = Array.from(ck.get('adapters.vida.scales')!.data);
    expect(scales[0]).toBeLessThan(1);
    expect(scales[1]).toBeGreaterThan(1);
  });

  it('bad options: exit 2, one line', async () => {
    const cases: [string[], RegExp][] = [
      [['--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--adapt-params', 'lora', '--adapt-targets', 'q,nope'], /--adapt-targets: 'nope'/],
      [['--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--adapt-params', 'kadaptation'], /--kron-factors 32/],
      [['--model', 'resnext29', '--weights', FIXTURE_WEIGHTS, '--alg', 'tent', '--adapt-params', 'kadaptation'], /--kron-factors 32: must divide the channels of 1×1 conv stage_1\.0\.conv_reduce \(16→16\); 16 divides every selected 1×1 conv/],
      [['--model', 'resnext29', '--weights', FIXTURE_WEIGHTS, '--alg', 'tent', '--adapt-params', 'vida'], /applies to the ViT/],
      [['--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--save-adapted', '/tmp/x.safetensors'], /needs --adapt-params/],
      [['--model', 'vit_b16', '--weights', VIT, '--alg', 'tent', '--adapt-params', 'lora', '--rank', '0'], /--rank/],
    ];
    for (const [args, re] of cases) {
      const r = await cli([...stream, ...args, '--out', outDir()]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
      expect(r.stderr).toMatch(re);
    }
  });
});
