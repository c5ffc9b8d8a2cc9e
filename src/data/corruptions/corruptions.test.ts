/**
 * Behaviour of the 19 corruptions on synthetic 32×32 and 64×64 images (CIFAR table) and a 96×96
 * one (ImageNet table): every severity runs, statistics move the right way with severity, the
 * same seed gives identical bytes, different seeds differ for the random corruptions.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CtaError } from '../../util/errors.js';
import { Rng } from '../../util/rng.js';
import type { RgbImage } from './common.js';
import { canny, distanceTransformL2Mask5, equalizeHist } from './weather.js';
import { cvResizeLinear, proceduralFrost } from './frost.js';
import {
  CORRUPTION_FUNCS,
  CORRUPTION_NAMES,
  STOCHASTIC_CORRUPTIONS,
  corrupt,
  corruptionInfo,
  type CorruptionName,
} from './index.js';
import { logGamma, poisson } from './noise.js';
import { tableNameFor } from './params.js';

/** A smooth synthetic "natural-looking" image: colour gradients, a disc, a box, a striped patch. */
function synthImage(H: number, W: number, opts: { stripes?: boolean } = {}): RgbImage {
  const data = new Uint8Array(H * W * 3);
  const s = Math.min(H, W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const u = W > 1 ? x / (W - 1) : 0;
      const v = H > 1 ? y / (H - 1) : 0;
      let r = 40 + 170 * u;
      let g = 60 + 140 * v;
      let b = 120 + 70 * Math.sin(2 * Math.PI * (u + 0.5 * v));
      const dx = x - 0.35 * W;
      const dy = y - 0.38 * H;
      if (dx * dx + dy * dy < (0.22 * s) ** 2) {
        const shade = 1 - (0.5 * Math.sqrt(dx * dx + dy * dy)) / (0.22 * s);
        r = 225 * shade + 20;
        g = 70 * shade + 20;
        b = 50;
      }
      if (x > 0.55 * W && x < 0.88 * W && y > 0.55 * H && y < 0.9 * H) {
        r = 30;
        g = 90 + 40 * u;
        b = 200;
      }
      if ((opts.stripes ?? true) && x < 0.45 * W && y > 0.62 * H && (x + y) % 6 < 3) {
        r *= 0.55;
        g *= 0.55;
        b *= 0.55;
      }
      const o = (y * W + x) * 3;
      data[o] = Math.round(r);
      data[o + 1] = Math.round(g);
      data[o + 2] = Math.round(b);
    }
  }
  return { data, height: H, width: W };
}

/** Multi-scale texture: a few random oriented sinusoids per channel (a stand-in for natural detail). */
function textureImage(H: number, W: number, seed: number): RgbImage {
  const rng = new Rng(seed);
  const waves = Array.from({ length: 6 }, (_, i) => ({
    f: 0.03 + 0.25 * rng.next() * (i % 2 ? 1 : 0.4),
    th: rng.next() * Math.PI,
    ph: rng.next() * 2 * Math.PI,
    a: [rng.next(), rng.next(), rng.next()],
  }));
  const data = new Uint8Array(H * W * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      for (let c = 0; c < 3; c++) {
        let v = 128;
        for (const w of waves) v += 22 * w.a[c] * Math.sin(2 * Math.PI * w.f * (x * Math.cos(w.th) + y * Math.sin(w.th)) + w.ph);
        data[(y * W + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  }
  return { data, height: H, width: W };
}

// ---- statistics -------------------------------------------------------------------------------

function mean(a: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s / a.length;
}
function std(a: Uint8Array): number {
  const m = mean(a);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - m) ** 2;
  return Math.sqrt(s / a.length);
}
/** Mean squared difference of horizontally and vertically adjacent values (high-frequency energy). */
function hf(a: Uint8Array, H: number, W: number): number {
  let s = 0;
  let n = 0;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      for (let c = 0; c < 3; c++) {
        const v = a[(y * W + x) * 3 + c];
        if (x + 1 < W) {
          s += (a[(y * W + x + 1) * 3 + c] - v) ** 2;
          n++;
        }
        if (y + 1 < H) {
          s += (a[((y + 1) * W + x) * 3 + c] - v) ** 2;
          n++;
        }
      }
    }
  }
  return s / n;
}
function diffStd(a: Uint8Array, b: Uint8Array): number {
  const d = new Float64Array(a.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d[i] = a[i] - b[i];
    m += d[i];
  }
  m /= a.length;
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (d[i] - m) ** 2;
  return Math.sqrt(s / a.length);
}
function mse(a: Uint8Array, b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}
function corr(a: Uint8Array, b: Uint8Array): number {
  const ma = mean(a);
  const mb = mean(b);
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < a.length; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) ** 2;
    sbb += (b[i] - mb) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}
function meanSaturation(a: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i += 3) {
    const mx = Math.max(a[i], a[i + 1], a[i + 2]);
    const mn = Math.min(a[i], a[i + 1], a[i + 2]);
    s += mx === 0 ? 0 : (mx - mn) / mx;
  }
  return s / (a.length / 3);
}

const SEED = 1234;

async function allSeverities(name: CorruptionName, img: RgbImage, seed = SEED): Promise<Uint8Array[]> {
  const outs: Uint8Array[] = [];
  // a fresh generator per severity: the same random layer / angle at every severity, so only the
  // severity parameters change between the five outputs
  for (let s = 1; s <= 5; s++) outs.push(await corrupt(name, img, s, new Rng(seed), { jpegRoundTrip: false }));
  return outs;
}

/** Strictly increasing (sign 1) or decreasing (sign −1); steps listed in `ties` may also be equal. */
function expectMonotone(values: number[], sign: 1 | -1, label: string, ties: number[] = []): void {
  for (let i = 1; i < values.length; i++) {
    const tie = ties.includes(i) && values[i] === values[i - 1];
    const ok = tie || (sign > 0 ? values[i] > values[i - 1] : values[i] < values[i - 1]);
    expect(ok, `${label}: ${values.map((v) => v.toFixed(3)).join(' → ')}`).toBe(true);
  }
}

for (const size of [32, 64]) {
  describe(`corruptions on a ${size}×${size} image (CIFAR table)`, () => {
    const img = synthImage(size, size);
    const clean = img.data;
    const H = size;
    const W = size;

    it('uses the CIFAR table', () => expect(tableNameFor(H, W)).toBe('cifar'));

    it('every corruption runs at severities 1…5, keeps the shape and changes the image', async () => {
      for (const name of CORRUPTION_NAMES) {
        const outs = await allSeverities(name, img);
        outs.forEach((o, i) => {
          expect(o, `${name} s${i + 1}`).toBeInstanceOf(Uint8Array);
          expect(o.length).toBe(clean.length);
          expect(mse(o, clean), `${name} s${i + 1} changes the image`).toBeGreaterThan(0);
        });
        expect(img.data).toBe(clean); // input untouched
      }
    });

    it('noise: the spread of (corrupted − clean) rises with severity', async () => {
      for (const name of ['gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise'] as const) {
        const outs = await allSeverities(name, img);
        expectMonotone([0, ...outs.map((o) => diffStd(o, clean))], 1, name);
      }
    });

    it('blurs: high-frequency energy falls with severity', async () => {
      for (const name of ['defocus_blur', 'motion_blur', 'zoom_blur', 'gaussian_blur'] as const) {
        const outs = await allSeverities(name, img);
        // CIFAR motion blur 3 → 4 only grows the radius 6 → 8 at σ = 2: the extra taps carry ~0.1 %
        // of the weight and vanish in ImageMagick's 8-bit rounding, so the two may coincide
        const ties = name === 'motion_blur' ? [4] : [];
        expectMonotone([hf(clean, H, W), ...outs.map((o) => hf(o, H, W))], -1, name, ties);
      }
    });

    it('glass blur: blurrier and further from the clean image at severity 5 than at 1', async () => {
      // not monotone by design: severity 4 has a smaller σ than 3 but two shuffle passes
      const outs = await allSeverities('glass_blur', img);
      expect(hf(outs[4], H, W)).toBeLessThan(hf(outs[0], H, W));
      expect(hf(outs[2], H, W)).toBeLessThan(hf(outs[1], H, W));
      expect(mse(outs[4], clean)).toBeGreaterThan(mse(outs[0], clean));
      expect(mse(outs[3], clean)).toBeGreaterThan(mse(outs[1], clean));
    });

    it('contrast: pixel std falls; brightness: mean rises', async () => {
      const c = await allSeverities('contrast', img);
      expectMonotone([std(clean), ...c.map(std)], -1, 'contrast std');
      const b = await allSeverities('brightness', img);
      expectMonotone([mean(clean), ...b.map(mean)], 1, 'brightness mean');
    });

    it('saturate: severities 1–2 desaturate (2 more), 3–5 saturate increasingly', async () => {
      const s = (await allSeverities('saturate', img)).map(meanSaturation);
      const s0 = meanSaturation(clean);
      expect(s[1]).toBeLessThan(s[0]);
      expect(s[0]).toBeLessThan(s0);
      expectMonotone([s0, s[2], s[3], s[4]], 1, 'saturation');
    });

    it('pixelate and jpeg: error rises with severity (mean over 8 textured images)', async () => {
      // On a single image, PIL's BOX down/up-sampling can alias less at 20 px than at 24 px (the
      // Python reference does the same); on average the error rises, as on natural images.
      for (const name of ['pixelate', 'jpeg_compression'] as const) {
        const err = [0, 0, 0, 0, 0, 0];
        for (let k = 0; k < 8; k++) {
          const t = textureImage(H, W, k);
          (await allSeverities(name, t)).forEach((o, i) => (err[i + 1] += mse(o, t.data) / 8));
        }
        expectMonotone(err, 1, name);
      }
    });

    it('fog and frost: the clean image fades (correlation with it falls); snow: the image brightens', async () => {
      for (const name of ['fog', 'frost'] as const) {
        const outs = await allSeverities(name, img);
        expectMonotone([1, ...outs.map((o) => corr(o, clean))], -1, `${name} correlation`);
      }
      const snow = await allSeverities('snow', img);
      expect(mean(snow[0])).toBeGreaterThan(mean(clean));
      expect(mean(snow[4])).toBeGreaterThan(mean(snow[0]));
      expect(corr(snow[4], clean)).toBeLessThan(corr(snow[0], clean));
    });

    it('elastic and spatter stay close to the image but move it', async () => {
      for (const name of ['elastic_transform', 'spatter'] as const) {
        const outs = await allSeverities(name, img);
        for (const o of outs) {
          expect(mse(o, clean)).toBeGreaterThan(0);
          expect(corr(o, clean)).toBeGreaterThan(0.5);
        }
      }
    });

    it('same seed → identical bytes; different seed → different bytes (random corruptions)', async () => {
      for (const name of CORRUPTION_NAMES) {
        for (const s of [1, 5]) {
          const a = await corrupt(name, img, s, new Rng(7));
          const b = await corrupt(name, img, s, new Rng(7));
          expect(Buffer.from(a).equals(Buffer.from(b)), `${name} s${s} reproducible`).toBe(true);
          const c = await corrupt(name, img, s, new Rng(8));
          const same = Buffer.from(a).equals(Buffer.from(c));
          expect(same, `${name} s${s} seed dependence`).toBe(!STOCHASTIC_CORRUPTIONS.includes(name));
        }
      }
    });
  });
}

describe('ImageNet-size images', () => {
  const img = synthImage(96, 80);

  it('select the ImageNet table, run every corruption and default to the JPEG q=85 save', async () => {
    expect(tableNameFor(96, 80)).toBe('imagenet');
    for (const name of CORRUPTION_NAMES) {
      const o = await corrupt(name, img, 3, new Rng(3));
      expect(o.length).toBe(img.data.length);
      expect(mse(o, img.data), name).toBeGreaterThan(0);
    }
    const raw = await corrupt('contrast', img, 2, new Rng(0), { jpegRoundTrip: false });
    const saved = await corrupt('contrast', img, 2, new Rng(0));
    expect(Buffer.from(raw).equals(Buffer.from(saved))).toBe(false);
    expect(corruptionInfo('contrast', 96, 80, 2)).toMatchObject({ table: 'imagenet', params: 0.3, jpeg85: true });
  });

  it('blur and contrast move the right way under the ImageNet table too', async () => {
    const g = await allSeverities('gaussian_blur', img);
    expectMonotone([hf(img.data, 96, 80), ...g.map((o) => hf(o, 96, 80))], -1, 'gaussian_blur');
    const c = await allSeverities('contrast', img);
    expectMonotone([std(img.data), ...c.map(std)], -1, 'contrast');
  });
});

describe('odd sizes', () => {
  it('every corruption runs on 1×1, 5×7, 31×45 (CIFAR table) and 100×150 (ImageNet table) images', async () => {
    for (const [H, W] of [
      [1, 1],
      [5, 7],
      [31, 45],
      [100, 150],
    ]) {
      const img = synthImage(H, W);
      for (const name of CORRUPTION_NAMES) {
        for (const s of [1, 5]) {
          const o = await corrupt(name, img, s, new Rng(1));
          expect(o.length, `${name} ${H}×${W}`).toBe(H * W * 3);
        }
      }
    }
  });
});

describe('API', () => {
  const img = synthImage(32, 32);

  it('CORRUPTION_FUNCS has the 19 standard names in the scripts order', () => {
    expect(CORRUPTION_NAMES).toEqual([
      'gaussian_noise',
      'shot_noise',
      'impulse_noise',
      'defocus_blur',
      'glass_blur',
      'motion_blur',
      'zoom_blur',
      'snow',
      'frost',
      'fog',
      'brightness',
      'contrast',
      'elastic_transform',
      'pixelate',
      'jpeg_compression',
      'speckle_noise',
      'gaussian_blur',
      'spatter',
      'saturate',
    ]);
    expect(Object.keys(CORRUPTION_FUNCS)).toHaveLength(19);
  });

  it('refuses unknown names, bad severities and malformed images with a one-line CtaError', async () => {
    const rng = new Rng(0);
    await expect(corrupt('fogg', img, 1, rng)).rejects.toThrow(CtaError);
    await expect(corrupt('fogg', img, 1, rng)).rejects.toThrow(/unknown corruption "fogg"/);
    await expect(corrupt('fog', img, 6, rng)).rejects.toThrow(/severity must be an integer 1…5/);
    await expect(corrupt('fog', img, 2.5, rng)).rejects.toThrow(CtaError);
    await expect(corrupt('fog', { data: new Uint8Array(10), height: 32, width: 32 }, 1, rng)).rejects.toThrow(
      /height·width·3 = 3072 bytes/,
    );
    await expect(corrupt('frost', img, 1, rng, { frostDir: '/nonexistent/frost' })).rejects.toThrow(
      /frostDir: folder not found/,
    );
  });

  it('corruptionInfo labels the frost source', () => {
    expect(corruptionInfo('frost', 32, 32, 5)).toMatchObject({ table: 'cifar', params: [0.75, 0.45], frost: 'procedural', jpeg85: false });
    expect(corruptionInfo('frost', 32, 32, 5, { frostDir: '/x' }).frost).toBe('photos');
    expect(corruptionInfo('fog', 32, 32, 1).frost).toBeUndefined();
  });

  it('is fast enough to corrupt CIFAR images on the fly', async () => {
    const times: string[] = [];
    for (const name of CORRUPTION_NAMES) {
      const rng = new Rng(1);
      await corrupt(name, img, 5, rng); // warm-up
      const n = 20;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await corrupt(name, img, 5, rng);
      const ms = (performance.now() - t0) / n;
      times.push(`${name} ${ms.toFixed(2)}`);
      expect(ms, name).toBeLessThan(50); // loose: the machine is shared
    }
    console.log(`ms per 32×32 image at severity 5: ${times.join(', ')}`);
  });
});

describe('building blocks', () => {
  it('Poisson sampler: mean and variance ≈ λ for small (multiplication) and large (PTRS) λ', () => {
    const rng = new Rng(99);
    for (const lam of [0.5, 3, 9.9, 10, 37, 250, 500]) {
      const n = 20000;
      let s = 0;
      let s2 = 0;
      for (let i = 0; i < n; i++) {
        const k = poisson(rng, lam);
        expect(Number.isInteger(k) && k >= 0).toBe(true);
        s += k;
        s2 += k * k;
      }
      const m = s / n;
      const v = s2 / n - m * m;
      expect(Math.abs(m - lam)).toBeLessThan(5 * Math.sqrt(lam / n));
      expect(Math.abs(v / lam - 1)).toBeLessThan(0.06);
    }
    expect(poisson(rng, 0)).toBe(0);
  });

  it('logGamma matches ln((n−1)!)', () => {
    let f = 0;
    for (let n = 1; n < 60; n++) {
      if (n > 1) f += Math.log(n - 1);
      expect(Math.abs(logGamma(n) - f)).toBeLessThan(1e-10 * Math.max(1, f));
    }
  });

  it('Canny / distance transform / equalizeHist behave on a square', () => {
    const H = 16;
    const W = 16;
    const sq = new Uint8Array(H * W);
    for (let y = 4; y < 12; y++) for (let x = 4; x < 12; x++) sq[y * W + x] = 200;
    const e = canny(sq, H, W, 50, 150);
    expect(e.some((v) => v === 255)).toBe(true);
    expect(e[0]).toBe(0);
    const inv = e.map((v) => 255 - v);
    const d = distanceTransformL2Mask5(inv, H, W);
    for (let i = 0; i < d.length; i++) if (e[i] === 255) expect(d[i]).toBe(0);
    expect(Math.max(...d)).toBeGreaterThan(1);
    const eq = equalizeHist(Uint8Array.from([0, 0, 10, 10, 20, 30]));
    expect(Array.from(eq)).toEqual([0, 0, 128, 128, 191, 255]); // cv2.equalizeHist gives the same
  });

  it('procedural frost: deterministic per seed, bluish-white and textured', () => {
    const a = proceduralFrost(32, 32, 1, new Rng(5));
    const b = proceduralFrost(32, 32, 1, new Rng(5));
    const c = proceduralFrost(32, 32, 1, new Rng(6));
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(Buffer.from(a).equals(Buffer.from(c))).toBe(false);
    expect(std(a)).toBeGreaterThan(10);
    let blue = 0;
    let red = 0;
    for (let i = 0; i < a.length; i += 3) {
      red += a[i];
      blue += a[i + 2];
    }
    expect(blue).toBeGreaterThan(red);
    const big = proceduralFrost(224, 224, 5, new Rng(5));
    expect(std(big)).toBeGreaterThan(10);
  });

  it('cv2-style ×0.2 bilinear resize subsamples at 5·d + 2', () => {
    const W = 25;
    const H = 15;
    const data = new Uint8Array(H * W * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 37) % 251;
    const r = cvResizeLinear({ data, height: H, width: W }, 0.2);
    expect([r.height, r.width]).toEqual([3, 5]);
    for (let y = 0; y < 3; y++) {
      for (let x = 0; x < 5; x++) {
        for (let c = 0; c < 3; c++) expect(r.data[(y * 5 + x) * 3 + c]).toBe(data[((5 * y + 2) * W + 5 * x + 2) * 3 + c]);
      }
    }
  });
});

// The standard photos live outside the repository; when a checkout has them (the project's shared
// assets), check that frostDir loading, scaling and cropping work on the real files.
const SHARED_FROST = new URL('../../../../shared/assets/frost', import.meta.url).pathname;
describe.skipIf(!existsSync(SHARED_FROST))('frost with the standard photos (frostDir)', () => {
  it('loads frost1…frost5, crops and blends; deterministic per seed', async () => {
    const img = synthImage(32, 32);
    const a = await corrupt('frost', img, 5, new Rng(11), { frostDir: SHARED_FROST });
    const b = await corrupt('frost', img, 5, new Rng(11), { frostDir: SHARED_FROST });
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(corr(a, img.data)).toBeLessThan(0.99);
    const big = synthImage(224, 224);
    const c = await corrupt('frost', big, 1, new Rng(11), { frostDir: SHARED_FROST, jpegRoundTrip: false });
    expect(mse(c, big.data)).toBeGreaterThan(0);
  });
});
