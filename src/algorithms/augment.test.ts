/**
 * CoTTA's augmentation (src/algorithms/augment.ts) against the plain-torch re-statement of the
 * torchvision operations in scripts/make-augment-fixtures.py (test/fixtures/augment): every operation
 * with fixed parameters and the whole pipeline with fixed parameters and stored noise, to 1e-5; then
 * the seeded draws (same seed, same output; ranges of docs/augment.md#ranges) and tensor hygiene.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { expectClose, fixtureTensor } from '../models/test-helpers.js';
import {
  JITTER_OPS,
  adjustHue,
  affine,
  applyCotta,
  applyJitter,
  centerCrop,
  cottaAugment,
  drawCottaParams,
  gaussianBlur,
  hflip,
  padEdge,
  type CottaParams,
  type JitterOp,
} from './augment.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'augment');
interface Case {
  name: string;
  op: string;
  params: Record<string, unknown>;
  float32_error: number;
  noise: string | null;
}
const meta = JSON.parse(readFileSync(join(DIR, 'ops.json'), 'utf8')) as { cases: Case[] };

let fx: StateDict;
let input: tf.Tensor4D;
const measured: string[] = [];

beforeAll(async () => {
  await initBackend('wasm');
  fx = await readSafetensors(join(DIR, 'ops.safetensors'));
  input = fixtureTensor(fx, 'input') as tf.Tensor4D; // NCHW → NHWC
});

afterAll(() => {
  input?.dispose();
  console.log(`augment max |TS − reference|: ${measured.join(' ')}`);
});

/** The fixture's pipeline parameters in the TS shape. */
function pipelineParams(p: Record<string, unknown>): CottaParams {
  const num = (k: string) => p[k] as number;
  return {
    jitterOrder: p.jitter_order as JitterOp[],
    brightness: num('brightness'),
    contrast: num('contrast'),
    saturation: num('saturation'),
    hue: num('hue'),
    gamma: num('gamma'),
    pad: num('pad'),
    affine: { angle: num('angle'), translate: p.translate as [number, number], scale: num('scale'), shear: p.shear as [number, number] },
    blurSigma: num('blur_sigma'),
    flip: p.flip as boolean,
    noiseStd: num('noise_std'),
  };
}

function runCase(c: Case, x: tf.Tensor4D): tf.Tensor4D {
  const p = c.params;
  if ((JITTER_OPS as readonly string[]).includes(c.op)) return applyJitter(x, c.op as JitterOp, p.factor as number);
  switch (c.op) {
    case 'pad':
      return padEdge(x, p.pad as number);
    case 'affine':
      return affine(x, { angle: p.angle as number, translate: p.translate as [number, number], scale: p.scale as number, shear: p.shear as [number, number] });
    case 'blur':
      return gaussianBlur(x, p.sigma as number);
    case 'pipeline': {
      const noise = c.noise ? (fixtureTensor(fx, c.noise) as tf.Tensor4D) : null;
      try {
        return applyCotta(x, pipelineParams(p), noise);
      } finally {
        noise?.dispose();
      }
    }
  }
  throw new Error(`unknown fixture op ${c.op}`);
}

describe('operations against the PyTorch re-statement (fixed parameters)', () => {
  for (const c of meta.cases) {
    it(`${c.name} (${c.op})`, () => {
      const before = tf.memory().numTensors;
      const got = runCase(c, input);
      const want = fixtureTensor(fx, c.name);
      expect(got.shape).toEqual(want.shape);
      // 1e-5 absolute on values in [0, 1]: float32 torch itself is off by c.float32_error (≤ 1.6e-6).
      const { maxAbs } = expectClose(c.name, got, want, 1e-5);
      measured.push(`${c.name}=${maxAbs.toExponential(1)}`);
      got.dispose();
      want.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }

  it('centre crop and flip', () => {
    const before = tf.memory().numTensors;
    const padded = padEdge(input, 6);
    const back = centerCrop(padded, 12, 12);
    expect(Array.from(back.dataSync())).toEqual(Array.from(input.dataSync()));
    const flipped = hflip(input);
    const [n, h, w, c] = input.shape;
    const a = input.dataSync();
    const f = flipped.dataSync();
    for (let i = 0; i < n * h; i++) for (let j = 0; j < w; j++) for (let k = 0; k < c; k++) expect(f[(i * w + j) * c + k]).toBe(a[(i * w + (w - 1 - j)) * c + k]);
    tf.dispose([padded, back, flipped]);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses what the operations cannot do', () => {
    expect(() => adjustHue(input, 0.6)).toThrow(CtaError);
    expect(() => gaussianBlur(input, 0)).toThrow(CtaError);
    expect(() => centerCrop(input, 13, 12)).toThrow(CtaError);
    const gray = tf.zeros([1, 8, 8, 1]) as tf.Tensor4D;
    expect(() => cottaAugment(gray, new Rng(1))).toThrow(CtaError);
    const tiny = tf.zeros([1, 3, 3, 3]) as tf.Tensor4D; // ⌊3/2⌋ = 1 px of padding cannot cover the 5×5 blur
    expect(() => cottaAugment(tiny, new Rng(1))).toThrow(CtaError);
    tf.dispose([gray, tiny]);
  });
});

describe('seeded draws', () => {
  it('the same seed gives the same augmentation, another seed another one; no tensor leaks', () => {
    const batch = tf.tidy(() => tf.image.resizeNearestNeighbor(input, [32, 32]) as tf.Tensor4D);
    const before = tf.memory().numTensors;
    const a = cottaAugment(batch, new Rng(5));
    const b = cottaAugment(batch, new Rng(5));
    const c = cottaAugment(batch, new Rng(6));
    expect(a.shape).toEqual(batch.shape);
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    expect(Array.from(a.dataSync())).not.toEqual(Array.from(c.dataSync()));
    const v = a.dataSync();
    expect(Math.min(...v)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...v)).toBeLessThanOrEqual(1);
    // Two calls from one Rng continue its stream: the second differs from the first.
    const rng = new Rng(5);
    const first = cottaAugment(batch, rng);
    const second = cottaAugment(batch, rng);
    expect(Array.from(first.dataSync())).toEqual(Array.from(a.dataSync()));
    expect(Array.from(second.dataSync())).not.toEqual(Array.from(first.dataSync()));
    tf.dispose([a, b, c, first, second]);
    expect(tf.memory().numTensors).toBe(before);
    batch.dispose();
  });

  it('without noise the augmentation is exactly applyCotta of the drawn parameters', () => {
    const batch = tf.tidy(() => tf.image.resizeNearestNeighbor(input, [32, 32]) as tf.Tensor4D);
    const got = cottaAugment(batch, new Rng(9), { noiseStd: 0 });
    const want = applyCotta(batch, drawCottaParams(new Rng(9), 32, 32, { noiseStd: 0 }));
    expect(Array.from(got.dataSync())).toEqual(Array.from(want.dataSync()));
    tf.dispose([batch, got, want]);
  });

  it('with the extreme default parameters the crop window never samples outside the padded image', () => {
    // docs/augment.md#affine: the fill only matters beyond CoTTA's ranges. An all-ones batch stays 1
    // (up to float32 rounding of the bilinear and blur weights) at ±15°, scale 0.9 and ±4 px.
    const ones = tf.ones([1, 32, 32, 3]) as tf.Tensor4D;
    const base = drawCottaParams(new Rng(1), 32, 32, { noiseStd: 0 });
    const at = (angle: number, scale: number, t: [number, number]) => {
      const y = applyCotta(ones, { ...base, jitterOrder: [], affine: { angle, translate: t, scale, shear: [0, 0] }, blurSigma: 0.5 });
      const v = Math.min(...y.dataSync());
      y.dispose();
      return v;
    };
    for (const angle of [-15, 15]) for (const t of [[4, 4], [-4, 4], [4, -4], [-4, -4]] as [number, number][]) expect(at(angle, 0.9, t)).toBeGreaterThan(1 - 1e-6);
    expect(at(45, 0.5, [4, 4])).toBeLessThan(0.5); // wider parameters do reach the zero fill
    ones.dispose();
  });

  it('draws within CoTTA’s ranges (CIFAR size: pad 16, |translation| ≤ 4 px), soft ones narrower', () => {
    const rng = new Rng(123);
    let flips = 0;
    const seenFirst = new Set<string>();
    for (let i = 0; i < 400; i++) {
      const p = drawCottaParams(rng, 32, 32);
      expect([...p.jitterOrder].sort()).toEqual([...JITTER_OPS].sort());
      seenFirst.add(p.jitterOrder[0]);
      expect(p.brightness).toBeGreaterThanOrEqual(0.6);
      expect(p.brightness).toBeLessThanOrEqual(1.4);
      expect(Math.abs(p.contrast - 1)).toBeLessThanOrEqual(0.3);
      expect(Math.abs(p.saturation - 1)).toBeLessThanOrEqual(0.5);
      expect(Math.abs(p.hue)).toBeLessThanOrEqual(0.06);
      expect(Math.abs(p.gamma - 1)).toBeLessThanOrEqual(0.3);
      expect(p.pad).toBe(16);
      expect(Math.abs(p.affine.angle)).toBeLessThanOrEqual(15);
      for (const t of p.affine.translate) {
        expect(Number.isInteger(t)).toBe(true);
        expect(Math.abs(t)).toBeLessThanOrEqual(4);
      }
      expect(Math.abs(p.affine.scale - 1)).toBeLessThanOrEqual(0.1);
      expect(p.affine.shear).toEqual([0, 0]);
      expect(p.blurSigma).toBeGreaterThanOrEqual(0.001);
      expect(p.blurSigma).toBeLessThanOrEqual(0.5);
      expect(p.noiseStd).toBe(0.005);
      if (p.flip) flips++;
      const s = drawCottaParams(rng, 32, 32, { soft: true });
      expect(Math.abs(s.hue)).toBeLessThanOrEqual(0.03);
      expect(Math.abs(s.affine.angle)).toBeLessThanOrEqual(8);
      expect(Math.abs(s.affine.scale - 1)).toBeLessThanOrEqual(0.05);
      expect(s.blurSigma).toBeLessThanOrEqual(0.25);
    }
    expect(seenFirst.size).toBe(5);
    expect(flips).toBeGreaterThan(150);
    expect(flips).toBeLessThan(250);
    // ImageNet size: pad 112, translation up to 448/16 = 28 px.
    const big = drawCottaParams(new Rng(1), 224, 224);
    expect(big.pad).toBe(112);
  });
});
