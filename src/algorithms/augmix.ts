/**
 * AugMix views for MEMO (Hendrycks et al., ICLR 2020, "AugMix"; as MEMO's test-time views are built
 * in github:mariodoebler/test-time-adaptation, classification/augmentations/transforms_augmix.py
 * and augmix_ops.py, which work on 8-bit PIL images). One view of an H×W RGB image:
 *
 *   1. pre-augmentation: 32×32 images (the CIFAR branch) pad by 4 with zeros, take a random 32×32
 *      crop and flip left-right with p = 0.5; other sizes take torchvision's RandomResizedCrop
 *      (scale 0.08–1, ratio 3/4–4/3) resized back to H×W with PIL's bilinear filter, then the flip;
 *   2. three chains, each 1–3 operations drawn uniformly from the nine AugMix operations
 *      (autocontrast, equalize, posterize, rotate, solarize, shear x/y, translate x/y; severity 1);
 *   3. view = m·x + (1 − m)·Σ_i w_i·chain_i(x) on [0, 1] floats, w ~ Dirichlet(1, 1, 1),
 *      m ~ Beta(1, 1).
 *
 * The operations reproduce PIL's 8-bit arithmetic (lookup tables; the affine ones sample with
 * PIL's bilinear filter and black fill), so they are plain typed-array code on one image, not
 * tensor ops. The random parameters are drawn from the seeded Rng (drawAugmixParams) and can be
 * given explicitly (applyAugmix), which the parity tests against PIL use (src/algorithms/augmix.test.ts).
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';

/** augmix_ops.augmentations, in that order (the list np.random.choice draws from). */
export const AUGMIX_OPS = ['autocontrast', 'equalize', 'posterize', 'rotate', 'solarize', 'shear_x', 'shear_y', 'translate_x', 'translate_y'] as const;
export type AugmixOp = (typeof AUGMIX_OPS)[number];

/**
 * One operation with its drawn value: posterize bits, rotate degrees, solarize threshold, shear
 * factor, translate pixels (signed); autocontrast and equalize take none (0).
 */
export interface AugmixStep {
  op: AugmixOp;
  value: number;
}

export interface AugmixParams {
  /** Zero padding on every side before the crop (4 on the CIFAR branch, else 0). */
  pad: number;
  /** Crop box in the padded image. */
  crop: { top: number; left: number; height: number; width: number };
  flip: boolean;
  /** Dirichlet chain weights (float32, as np.float32). */
  weights: [number, number, number];
  /** Beta mixing weight of the pre-augmented image (float32). */
  mix: number;
  chains: AugmixStep[][];
}

/** An 8-bit RGB image, HWC. */
export interface U8Image {
  data: Uint8Array;
  height: number;
  width: number;
}

const SEVERITY = 1; // AugMixAugmenter's default, which MEMO uses
const PAD_CIFAR = 4;

// ---------------------------------------------------------------------------------------------
// Parameter draws (augmix_ops: levels uniform in [0.1, severity], int_parameter / float_parameter)

const sampleLevel = (rng: Rng) => 0.1 + (SEVERITY - 0.1) * rng.next();
const intParameter = (level: number, maxval: number) => Math.trunc((level * maxval) / 10);
const floatParameter = (level: number, maxval: number) => (level * maxval) / 10;

/** Draws one operation's value as the official op would at severity 1 on a `size`-pixel image. */
function drawStep(rng: Rng, op: AugmixOp, size: number): AugmixStep {
  const sign = () => (rng.next() > 0.5 ? -1 : 1);
  switch (op) {
    case 'autocontrast':
    case 'equalize':
      return { op, value: 0 };
    case 'posterize':
      return { op, value: 4 - intParameter(sampleLevel(rng), 4) };
    case 'rotate': {
      const d = intParameter(sampleLevel(rng), 30);
      return { op, value: d * sign() };
    }
    case 'solarize':
      return { op, value: 256 - intParameter(sampleLevel(rng), 256) };
    case 'shear_x':
    case 'shear_y': {
      const l = floatParameter(sampleLevel(rng), 0.3);
      return { op, value: l * sign() };
    }
    case 'translate_x':
    case 'translate_y': {
      const l = intParameter(sampleLevel(rng), size / 3);
      return { op, value: l * sign() };
    }
  }
}

/** torchvision RandomResizedCrop.get_params (scale 0.08–1, ratio 3/4–4/3, 10 tries, then centre). */
function resizedCropBox(rng: Rng, h: number, w: number): AugmixParams['crop'] {
  const area = h * w;
  const logR = [Math.log(3 / 4), Math.log(4 / 3)];
  for (let t = 0; t < 10; t++) {
    const target = area * (0.08 + 0.92 * rng.next());
    const ratio = Math.exp(logR[0] + (logR[1] - logR[0]) * rng.next());
    const cw = Math.round(Math.sqrt(target * ratio));
    const ch = Math.round(Math.sqrt(target / ratio));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) return { top: rng.int(h - ch + 1), left: rng.int(w - cw + 1), height: ch, width: cw };
  }
  const r = w / h;
  let cw = w;
  let ch = h;
  if (r < 3 / 4) ch = Math.round(w / (3 / 4));
  else if (r > 4 / 3) cw = Math.round(h * (4 / 3));
  return { top: Math.floor((h - ch) / 2), left: Math.floor((w - cw) / 2), height: ch, width: cw };
}

/** Everything random in one view of an H×W image, from `rng`. */
export function drawAugmixParams(rng: Rng, height: number, width: number): AugmixParams {
  const cifar = height === 32 && width === 32;
  const pad = cifar ? PAD_CIFAR : 0;
  const crop = cifar ? { top: rng.int(2 * pad + 1), left: rng.int(2 * pad + 1), height, width } : resizedCropBox(rng, height, width);
  const flip = rng.next() < 0.5;
  // Dirichlet(1, 1, 1) = normalised Exp(1) draws; Beta(1, 1) = uniform
  const e = [0, 1, 2].map(() => -Math.log(1 - rng.next()));
  const s = e[0] + e[1] + e[2];
  const weights = e.map((v) => Math.fround(v / s)) as [number, number, number];
  const mix = Math.fround(rng.next());
  const chains: AugmixStep[][] = [];
  for (let i = 0; i < 3; i++) {
    const depth = 1 + rng.int(3);
    const chain: AugmixStep[] = [];
    for (let d = 0; d < depth; d++) chain.push(drawStep(rng, AUGMIX_OPS[rng.int(AUGMIX_OPS.length)], height));
    chains.push(chain);
  }
  return { pad, crop, flip, weights, mix, chains };
}

// ---------------------------------------------------------------------------------------------
// PIL's 8-bit operations (ImageOps / Image.transform on RGB)

function mapLut(img: U8Image, luts: Uint8Array[]): U8Image {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = luts[i % 3][img.data[i]];
  return { ...img, data: out };
}

function histograms(img: U8Image): Int32Array[] {
  const h = [0, 1, 2].map(() => new Int32Array(256));
  for (let i = 0; i < img.data.length; i++) h[i % 3][img.data[i]]++;
  return h;
}

const clip8 = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : v);

/** ImageOps.autocontrast (cutoff 0): per channel, stretch [min, max] to [0, 255], truncating. */
export function autocontrast(img: U8Image): U8Image {
  const luts = histograms(img).map((h) => {
    let lo = 0;
    while (lo < 256 && h[lo] === 0) lo++;
    let hi = 255;
    while (hi >= 0 && h[hi] === 0) hi--;
    const lut = new Uint8Array(256);
    for (let i = 0; i < 256; i++) lut[i] = i;
    if (hi > lo) {
      const scale = 255 / (hi - lo);
      const offset = -lo * scale;
      for (let i = 0; i < 256; i++) lut[i] = clip8(Math.trunc(i * scale + offset));
    }
    return lut;
  });
  return mapLut(img, luts);
}

/** ImageOps.equalize (Pillow 9.4): per channel cumulative-histogram lookup table, step = (N − count of the top value) ÷ 255. */
export function equalize(img: U8Image): U8Image {
  const luts = histograms(img).map((h) => {
    const lut = new Uint8Array(256);
    const nonzero: number[] = [];
    for (let i = 0; i < 256; i++) if (h[i]) nonzero.push(h[i]);
    const step = nonzero.length <= 1 ? 0 : Math.floor((nonzero.reduce((a, b) => a + b, 0) - nonzero[nonzero.length - 1]) / 255);
    if (!step) {
      for (let i = 0; i < 256; i++) lut[i] = i;
      return lut;
    }
    let n = Math.floor(step / 2);
    for (let i = 0; i < 256; i++) {
      lut[i] = clip8(Math.floor(n / step));
      n += h[i];
    }
    return lut;
  });
  return mapLut(img, luts);
}

/** ImageOps.posterize: keep the top `bits` bits. */
export function posterize(img: U8Image, bits: number): U8Image {
  const mask = ~(2 ** (8 - bits) - 1) & 0xff;
  const lut = Uint8Array.from({ length: 256 }, (_, i) => i & mask);
  return mapLut(img, [lut, lut, lut]);
}

/** ImageOps.solarize: invert the values at or above `threshold`. */
export function solarize(img: U8Image, threshold: number): U8Image {
  const lut = Uint8Array.from({ length: 256 }, (_, i) => (i < threshold ? i : 255 - i));
  return mapLut(img, [lut, lut, lut]);
}

/**
 * Image.transform(size, AFFINE, (a, b, c, d, e, f), BILINEAR) on an RGB image of the same size:
 * output pixel (x, y) samples the input at (a·(x+½) + b·(y+½) + c, d·(x+½) + e·(y+½) + f) with
 * PIL's bilinear filter (clamped neighbours, the result truncated to 8 bits); samples outside the
 * input are black.
 */
export function affinePil(img: U8Image, m: readonly number[]): U8Image {
  const { data, height: h, width: w } = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const xin = m[0] * (x + 0.5) + m[1] * (y + 0.5) + m[2];
      const yin = m[3] * (x + 0.5) + m[4] * (y + 0.5) + m[5];
      if (xin < 0 || xin >= w || yin < 0 || yin >= h) continue;
      const xs = xin - 0.5;
      const ys = yin - 0.5;
      const x0 = Math.floor(xs);
      const y0 = Math.floor(ys);
      const dx = xs - x0;
      const dy = ys - y0;
      const xa = Math.min(w - 1, Math.max(0, x0));
      const xb = Math.min(w - 1, Math.max(0, x0 + 1));
      const ya = Math.min(h - 1, Math.max(0, y0));
      const hasB = y0 + 1 >= 0 && y0 + 1 < h;
      for (let c = 0; c < 3; c++) {
        const pa = data[(ya * w + xa) * 3 + c];
        const pb = data[(ya * w + xb) * 3 + c];
        const v1 = pa + (pb - pa) * dx;
        let v2 = v1;
        if (hasB) {
          const qa = data[((y0 + 1) * w + xa) * 3 + c];
          const qb = data[((y0 + 1) * w + xb) * 3 + c];
          v2 = qa + (qb - qa) * dx;
        }
        out[(y * w + x) * 3 + c] = Math.trunc(v1 + (v2 - v1) * dy);
      }
    }
  }
  return { ...img, data: out };
}

/** Python's round(v, 15), as Image.rotate rounds its cosines and sines. */
const round15 = (v: number) => Number.parseFloat(v.toFixed(15));

/** Image.rotate(degrees, BILINEAR) about the centre, same size, black fill. */
export function rotate(img: U8Image, degrees: number): U8Image {
  const angle = ((degrees % 360) + 360) % 360;
  if (angle === 0) return { ...img, data: img.data.slice() };
  const a = -(angle * Math.PI) / 180;
  const m = [round15(Math.cos(a)), round15(Math.sin(a)), 0, round15(-Math.sin(a)), round15(Math.cos(a)), 0];
  const cx = img.width / 2;
  const cy = img.height / 2;
  m[2] = m[0] * -cx + m[1] * -cy + cx;
  m[5] = m[3] * -cx + m[4] * -cy + cy;
  return affinePil(img, m);
}

export function applyStep(img: U8Image, s: AugmixStep): U8Image {
  switch (s.op) {
    case 'autocontrast':
      return autocontrast(img);
    case 'equalize':
      return equalize(img);
    case 'posterize':
      return posterize(img, s.value);
    case 'rotate':
      return rotate(img, s.value);
    case 'solarize':
      return solarize(img, s.value);
    case 'shear_x':
      return affinePil(img, [1, s.value, 0, 0, 1, 0]);
    case 'shear_y':
      return affinePil(img, [1, 0, 0, s.value, 1, 0]);
    case 'translate_x':
      return affinePil(img, [1, 0, s.value, 0, 1, 0]);
    case 'translate_y':
      return affinePil(img, [1, 0, 0, 0, 1, s.value]);
  }
}

// ---------------------------------------------------------------------------------------------
// Pre-augmentation

/** Zero padding and crop (torchvision RandomCrop(padding), or the crop of RandomResizedCrop). */
function padCrop(img: U8Image, pad: number, crop: AugmixParams['crop']): U8Image {
  const { data, height: h, width: w } = img;
  const out = new Uint8Array(crop.height * crop.width * 3);
  for (let y = 0; y < crop.height; y++) {
    const sy = crop.top + y - pad;
    for (let x = 0; x < crop.width; x++) {
      const sx = crop.left + x - pad;
      if (sy < 0 || sy >= h || sx < 0 || sx >= w) continue;
      for (let c = 0; c < 3; c++) out[(y * crop.width + x) * 3 + c] = data[(sy * w + sx) * 3 + c];
    }
  }
  return { data: out, height: crop.height, width: crop.width };
}

function hflipU8(img: U8Image): U8Image {
  const { data, height: h, width: w } = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) out[(y * w + x) * 3 + c] = data[(y * w + (w - 1 - x)) * 3 + c];
  return { ...img, data: out };
}

/** PIL's bilinear resampling coefficients for one axis (fixed point, 22 fraction bits). */
function resampleCoeffs(inSize: number, outSize: number): { bounds: Int32Array; k: Int32Array; ksize: number } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale; // bilinear support 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const pre = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      pre[x] = t < 1 ? 1 - t : 0;
      ww += pre[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? pre[x] / ww : pre[x];
      k[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * 2 ** 22 : 0.5 + v * 2 ** 22);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, k, ksize };
}

/** Image.resize((w, h), BILINEAR): horizontal pass, then vertical, each rounded to 8 bits. */
export function resizeBilinearPil(img: U8Image, outH: number, outW: number): U8Image {
  const pass = (src: U8Image, horizontal: boolean): U8Image => {
    const inSize = horizontal ? src.width : src.height;
    const outSize = horizontal ? outW : outH;
    if (inSize === outSize) return src;
    const { bounds, k, ksize } = resampleCoeffs(inSize, outSize);
    const oh = horizontal ? src.height : outH;
    const ow = horizontal ? outW : src.width;
    const out = new Uint8Array(oh * ow * 3);
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const o = horizontal ? x : y;
        const xmin = bounds[o * 2];
        const n = bounds[o * 2 + 1];
        for (let c = 0; c < 3; c++) {
          let ss = 2 ** 21;
          for (let i = 0; i < n; i++) {
            const idx = horizontal ? (y * src.width + xmin + i) * 3 + c : ((xmin + i) * src.width + x) * 3 + c;
            ss += src.data[idx] * k[o * ksize + i];
          }
          out[(y * ow + x) * 3 + c] = clip8(Math.floor(ss / 2 ** 22));
        }
      }
    }
    return { data: out, height: oh, width: ow };
  };
  return pass(pass(img, true), false);
}

// ---------------------------------------------------------------------------------------------
// Views

/** One AugMix view of `img` with explicit parameters, as H×W×3 floats in [0, 1]. */
export function applyAugmix(img: U8Image, p: AugmixParams): Float32Array {
  let base = padCrop(img, p.pad, p.crop);
  if (base.height !== img.height || base.width !== img.width) base = resizeBilinearPil(base, img.height, img.width);
  if (p.flip) base = hflipU8(base);
  const n = base.data.length;
  const mixed = new Float32Array(n);
  p.chains.forEach((chain, i) => {
    let y = base;
    for (const s of chain) y = applyStep(y, s);
    const wi = p.weights[i];
    for (let j = 0; j < n; j++) mixed[j] = Math.fround(mixed[j] + Math.fround(wi * Math.fround(y.data[j] / 255)));
  });
  const out = new Float32Array(n);
  const m = p.mix;
  for (let j = 0; j < n; j++) out[j] = Math.fround(Math.fround(m * Math.fround(base.data[j] / 255)) + Math.fround(Math.fround(1 - m) * mixed[j]));
  return out;
}

/** The 8-bit image of a [1,H,W,3] tensor in [0, 1] (rounded, as the data came from 8 bits). */
export function toU8(x: tf.Tensor4D): U8Image {
  if (x.rank !== 4 || x.shape[0] !== 1 || x.shape[3] !== 3) throw new CtaError(`augmix: expected one RGB image [1,H,W,3], got [${x.shape.join(',')}]`);
  const v = x.dataSync();
  const data = new Uint8Array(v.length);
  for (let i = 0; i < v.length; i++) data[i] = clip8(Math.round(v[i] * 255));
  return { data, height: x.shape[1], width: x.shape[2] };
}

/** `n` AugMix views of one image [1,H,W,3] as a [n,H,W,3] tensor, parameters drawn from `rng`. */
export function augmixViews(x: tf.Tensor4D, n: number, rng: Rng): tf.Tensor4D {
  const img = toU8(x);
  const size = img.height * img.width * 3;
  const out = new Float32Array(n * size);
  for (let v = 0; v < n; v++) out.set(applyAugmix(img, drawAugmixParams(rng, img.height, img.width)), v * size);
  return tf.tensor4d(out, [n, img.height, img.width, 3]);
}
