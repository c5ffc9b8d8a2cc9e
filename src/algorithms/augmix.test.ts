/**
 * MEMO's AugMix views (src/algorithms/augmix.ts) against PIL and torchvision themselves
 * (scripts/fixtures_lib/augmix_ref.py via scripts/make-roid-memo-fixtures.py,
 * test/fixtures/augment/augmix.*): each 8-bit operation exactly, PIL's bilinear resize of
 * RandomResizedCrop exactly, whole views (both pre-augmentation branches) to float32 round-off;
 * then the seeded draws (ranges of the official severity-1 operations) and tensor hygiene.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { AUGMIX_OPS, applyAugmix, applyStep, augmixViews, drawAugmixParams, resizeBilinearPil, type AugmixOp, type U8Image } from './augmix.js';
import { toParams, type PyAugmixParams } from './augmix-fixture.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'augment');
const meta = JSON.parse(readFileSync(join(DIR, 'augmix.json'), 'utf8')) as {
  ops: { key: string; image: number; op: AugmixOp; value: number }[];
  resizes: { key: string; crop: [number, number, number, number] }[];
  views: { key: string; image: string; params: PyAugmixParams }[];
};

let fx: StateDict;
beforeAll(async () => {
  await initBackend('wasm');
  fx = await readSafetensors(join(DIR, 'augmix.safetensors'));
});

function image(key: string): U8Image {
  const t = fx.get(key)!;
  return { data: Uint8Array.from(t.data), height: t.shape[0], width: t.shape[1] };
}

describe('AugMix operations against PIL', () => {
  it('every operation reproduces PIL exactly', () => {
    expect(meta.ops.length).toBeGreaterThan(30);
    for (const c of meta.ops) {
      const got = applyStep(image(`img${c.image}`), { op: c.op, value: c.value });
      const want = fx.get(c.key)!.data;
      let diff = 0;
      for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(got.data[i] - want[i]));
      expect(diff, `${c.op}(${c.value}) on img${c.image}`).toBe(0);
    }
  });

  it("RandomResizedCrop's crop + bilinear resize reproduces PIL exactly", () => {
    const big = image('big');
    for (const r of meta.resizes) {
      const [top, left, h, w] = r.crop;
      const crop = new Uint8Array(h * w * 3);
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) crop[(y * w + x) * 3 + c] = big.data[((top + y) * big.width + left + x) * 3 + c];
      const got = resizeBilinearPil({ data: crop, height: h, width: w }, big.height, big.width);
      expect(Array.from(got.data)).toEqual(Array.from(fx.get(r.key)!.data));
    }
  });

  it('whole views (CIFAR pad-crop branch and RandomResizedCrop branch) match to float32 round-off', () => {
    let worst = 0;
    for (const v of meta.views) {
      const got = applyAugmix(image(v.image), toParams(v.params));
      const want = fx.get(v.key)!.data;
      expect(got.length).toBe(want.length);
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    }
    console.log(`augmix views max |TS − PIL/torch| ${worst.toExponential(2)}`);
    // float32 sums in the same order; measured 0 here
    expect(worst).toBeLessThan(1e-6);
  });
});

describe('AugMix draws', () => {
  it('draws the official severity-1 ranges and is seeded', () => {
    const rng = new Rng(5);
    const seen = new Set<AugmixOp>();
    for (let k = 0; k < 300; k++) {
      const p = drawAugmixParams(rng, 32, 32);
      expect(p.pad).toBe(4);
      expect(p.crop.top).toBeGreaterThanOrEqual(0);
      expect(p.crop.top).toBeLessThanOrEqual(8);
      expect(Math.abs(p.weights[0] + p.weights[1] + p.weights[2] - 1)).toBeLessThan(1e-6);
      expect(p.mix).toBeGreaterThanOrEqual(0);
      expect(p.mix).toBeLessThan(1);
      expect(p.chains).toHaveLength(3);
      for (const chain of p.chains) {
        expect(chain.length).toBeGreaterThanOrEqual(1);
        expect(chain.length).toBeLessThanOrEqual(3);
        for (const s of chain) {
          seen.add(s.op);
          if (s.op === 'posterize') expect(s.value).toBe(4);
          if (s.op === 'rotate') expect(Math.abs(s.value)).toBeLessThanOrEqual(2);
          if (s.op === 'solarize') expect(s.value >= 231 && s.value <= 254).toBe(true);
          if (s.op === 'shear_x' || s.op === 'shear_y') expect(Math.abs(s.value) >= 0.003 && Math.abs(s.value) <= 0.03).toBe(true);
          if (s.op === 'translate_x' || s.op === 'translate_y') expect(Math.abs(s.value)).toBeLessThanOrEqual(1);
        }
      }
    }
    expect(seen.size).toBe(AUGMIX_OPS.length);
    const big = drawAugmixParams(new Rng(9), 224, 224);
    expect(big.pad).toBe(0);
    expect(big.crop.height * big.crop.width).toBeLessThanOrEqual(224 * 224);
    expect(drawAugmixParams(new Rng(3), 32, 32)).toEqual(drawAugmixParams(new Rng(3), 32, 32));
  });

  it('augmixViews returns n views in [0, 1] and leaks no tensor', () => {
    const x = tf.tidy(() => tf.randomUniform([1, 32, 32, 3], 0, 1, 'float32', 4) as tf.Tensor4D);
    const before = tf.memory().numTensors;
    const v = augmixViews(x, 5, new Rng(1));
    expect(v.shape).toEqual([5, 32, 32, 3]);
    const d = v.dataSync();
    expect(Math.min(...d)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...d)).toBeLessThanOrEqual(1);
    v.dispose();
    expect(tf.memory().numTensors).toBe(before);
    expect(() => augmixViews(tf.zeros([2, 32, 32, 3]) as tf.Tensor4D, 1, new Rng(1))).toThrow(/one RGB image/);
    x.dispose();
  });
});
