/**
 * End-to-end ImageNet-C: the built `cta-eval` bin on a generated ImageNet-C-layout tree (3 wnids ×
 * 2 JPEGs × 2 corruptions at severity 5, plus a clean validation folder of larger JPEGs), with the
 * reduced ResNet-50 fixture weights (torchvision key names; the head cut to the tree's 3 classes)
 * and a ViT with timm key names at 224 px (random weights written here). Covers the continual run
 * with Tent / EATA+MECTA / ViT-Tent through the configs/imagenet files, and the refusals.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { resolveConfig } from '../../src/config/load.js';
import { makeImageNetTree, type ImageNetTree } from '../../src/data/imagenet-tree.js';
import { randomStateDictForKeys } from '../../src/models/test-weights.js';
import { vitExpectedKeys } from '../../src/models/vit.js';
import { ROOT, runBin } from './helpers.js';

const cli = (args: string[]) => runBin('cta-eval', args);
const CORR = ['gaussian_noise', 'fog'];

let tree: ImageNetTree;
let resnetWeights = '';
let resnet10 = '';
let vitWeights = '';

beforeAll(async () => {
  tree = await makeImageNetTree({ perClass: 2, corruptions: CORR });
  const dir = mkdtempSync(join(tmpdir(), 'cta-in-weights-'));
  // Reduced ResNet-50 fixture with the classifier cut to the tree's 3 classes.
  resnet10 = join(ROOT, 'test/fixtures/imagenet/resnet50_small.safetensors');
  const sd = await readSafetensors(resnet10);
  const out = new Map<string, TensorToWrite>();
  for (const [k, t] of sd) {
    if (k === 'fc.weight') out.set(k, { dtype: 'float32', shape: [3, t.shape[1]], data: t.data.subarray(0, 3 * t.shape[1]) });
    else if (k === 'fc.bias') out.set(k, { dtype: 'float32', shape: [3], data: t.data.subarray(0, 3) });
    else out.set(k, t);
  }
  resnetWeights = join(dir, 'resnet50_small_3cls.safetensors');
  await writeSafetensors(resnetWeights, out);
  // A small ViT with timm names at 224 px: width 48 (12 heads of 4), depth 2, patch 16.
  const keys = vitExpectedKeys({ dim: 48, depth: 2, mlpDim: 96, patch: 16, grid: 14, numClasses: 3, qkvBias: true });
  const vit = randomStateDictForKeys([...keys].map(([name, shape]) => ({ name, shape })), 9);
  vitWeights = join(dir, 'vit_small_224.safetensors');
  await writeSafetensors(vitWeights, vit);
});

const common = () => ['--data-dir', tree.imagenetC, '--clean-dir', tree.clean, '--corruptions', CORR.join(','), '--backend', 'wasm', '--progress', 'none'];
const outDir = () => join(mkdtempSync(join(tmpdir(), 'cta-in-out-')), 'run');

function summaryOf(out: string) {
  return JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
}

describe('cta-eval on ImageNet-C (generated tree)', () => {
  it('every configs/imagenet file resolves', async () => {
    for (const name of ['source', 'norm', 'tent', 'eata', 'eata-mecta', 'vit-tent']) {
      const cfg = resolveConfig(join(ROOT, `configs/imagenet/${name}.yaml`), {});
      expect(cfg.data).toBe('imagenetc');
    }
    const t = resolveConfig(join(ROOT, 'configs/imagenet/tent.yaml'), {});
    expect([t.batchSize, t.lr]).toEqual([64, 0.00025]);
    const m = resolveConfig(join(ROOT, 'configs/imagenet/eata-mecta.yaml'), {});
    expect([m.batchSize, m.lr, m.accumBn, m.fisherAlpha, m.dMargin]).toEqual([16, 0.0001, true, 2000, 0.05]);
    expect(resolveConfig(join(ROOT, 'configs/imagenet/vit-tent.yaml'), {}).model).toBe('vit_b16');
  });

  it('resnet50 Tent: two corruptions + the clean domain, streamed from JPEGs', async () => {
    const out = outDir();
    const r = await cli(['--config', join(ROOT, 'configs/imagenet/tent.yaml'), ...common(), '--weights', resnetWeights, '--batch-size', '4', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = summaryOf(out);
    expect(s.complete).toBe(true);
    expect(s.domains.map((d: { domain: string }) => d.domain)).toEqual([...CORR, 'original']);
    for (const d of s.domains) {
      expect(d.n).toBe(6);
      expect(d.batches).toBe(2);
      expect(d.updates).toBe(2);
      expect(d.severity).toBe(d.domain === 'original' ? null : 5);
    }
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.model.arch).toBe('resnet50');
    expect(manifest.model.input_shape).toEqual([224, 224, 3]);
    expect(manifest.data_files.map((f: { path: string }) => f.path)).toEqual([join(tree.imagenetC, 'gaussian_noise', '5'), join(tree.imagenetC, 'fog', '5'), tree.clean]);
  });

  it('resnet50 EATA + MECTA (Fisher from the clean folder, accumulated BN statistics)', async () => {
    const out = outDir();
    const r = await cli(['--config', join(ROOT, 'configs/imagenet/eata-mecta.yaml'), ...common(), '--weights', resnetWeights, '--batch-size', '3', '--fisher-size', '4', '--n-examples', '5', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = summaryOf(out);
    expect(s.complete).toBe(true);
    expect(s.domains.map((d: { n: number }) => d.n)).toEqual([5, 5, 5]);
    expect(s.domains[0].mean_beta).toBeGreaterThan(0);
    expect(s.domains[0].max_cache_mb).toBeGreaterThan(0);
  });

  it('vit_b16 Tent adapts the LayerNorms end to end; norm and MECTA are refused', async () => {
    const out = outDir();
    const r = await cli(['--config', join(ROOT, 'configs/imagenet/vit-tent.yaml'), ...common(), '--weights', vitWeights, '--batch-size', '4', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = summaryOf(out);
    expect(s.complete).toBe(true);
    expect(s.domains).toHaveLength(3);
    for (const d of s.domains) expect(d.updates).toBe(2);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.model).toMatchObject({ arch: 'vit_b16', norm_layers: 5, input_shape: [224, 224, 3] });
    const norm = await cli(['--config', join(ROOT, 'configs/imagenet/vit-tent.yaml'), ...common(), '--weights', vitWeights, '--alg', 'norm', '--out', outDir()]);
    expect(norm.code).toBe(2);
    expect(norm.stderr).toMatch(/--alg norm .*no BatchNorm layers/);
    expect(norm.stderr.trim().split('\n')).toHaveLength(1);
    const mecta = await cli(['--config', join(ROOT, 'configs/imagenet/vit-tent.yaml'), ...common(), '--weights', vitWeights, '--accum-bn', '--out', outDir()]);
    expect(mecta.code).toBe(2);
    expect(mecta.stderr).toMatch(/--accum-bn \(MECTA\) needs BatchNorm layers/);
  });

  it('a class-count mismatch and a missing --clean-dir are refused before adapting', async () => {
    const r = await cli(['--config', join(ROOT, 'configs/imagenet/tent.yaml'), ...common(), '--weights', resnet10, '--out', outDir()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/3 classes but the model has 10 outputs/);
    const r2 = await cli(['--config', join(ROOT, 'configs/imagenet/tent.yaml'), '--data-dir', tree.imagenetC, '--corruptions', CORR.join(','), '--backend', 'wasm', '--weights', resnetWeights, '--out', outDir()]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/--clean-dir: required/);
  });

  it('an unreadable JPEG names the file; --skip-bad-images finishes without it', async () => {
    const t = await makeImageNetTree({ perClass: 2, corruptions: ['fog'] });
    const bad = join(t.imagenetC, 'fog', '5', t.wnids[0], t.files[1]);
    writeFileSync(bad, 'not a jpeg');
    const args = ['--config', join(ROOT, 'configs/imagenet/source.yaml'), '--data-dir', t.imagenetC, '--clean-dir', t.clean, '--corruptions', 'fog', '--backend', 'wasm', '--progress', 'none', '--weights', resnetWeights, '--batch-size', '4'];
    const r = await cli([...args, '--out', outDir()]);
    expect(r.stderr).toContain(bad);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('--skip-bad-images');
    const out = outDir();
    const ok = await cli([...args, '--skip-bad-images', '--out', out]);
    expect(ok.code).toBe(0);
    expect(ok.stderr).toContain(`warning: skipped cannot decode image ${bad}`);
    expect(summaryOf(out).domains.map((d: { n: number }) => d.n)).toEqual([5, 6]);
  });
});
