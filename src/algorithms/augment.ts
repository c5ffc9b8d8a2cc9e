/**
 * CoTTA's test-time augmentation (Wang et al., CVPR 2022, "Continual Test-Time Domain Adaptation":
 * the teacher's augmentation-averaged prediction), on NHWC batches in [0, 1], with every random
 * choice drawn from the seeded Rng (src/util/rng.ts). The pipeline, its ranges and the tensor
 * semantics of each step are docs/augment.md; in order:
 *
 *   clip → colour jitter (brightness, contrast, saturation, hue, gamma in a random order)
 *   → edge padding by ⌊H/2⌋ → random affine (rotation, translation, scale; bilinear, fill 0)
 *   → Gaussian blur (5×5) → centre crop back to H×W → horizontal flip (p = 0.5)
 *   → additive Gaussian noise → clip.
 *
 * As in the reference, one call draws ONE parameter set for the whole batch (the reference applies
 * its transform to the batched tensor), and only the noise differs per pixel and sample.
 *
 * Each step is also exported on its own with explicit parameters (the per-op parity tests against
 * scripts/make-augment-fixtures.py). The pipeline fuses padding, affine and crop: it samples the
 * unpadded image directly (edge padding = clamped source indices) and only on the crop window plus
 * the blur's 2-pixel border, then blurs without padding (docs/augment.md#fused-pipeline).
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';

export interface CottaAugmentOptions {
  /** CoTTA's `soft` ranges (milder jitter, rotation, scale and blur); default false, as CoTTA runs. */
  soft?: boolean;
  /** Standard deviation of the additive noise (CoTTA's gaussian_std, default 0.005); 0 = none. */
  noiseStd?: number;
  /** Padding before the affine: 'edge' (CoTTA, default) or 'reflect' (ROID's get_tta_transforms call). */
  padding?: PadMode;
  /** The official get_tta_transforms' cotta_augs: false drops the blur and the noise (ROID). Default true. */
  cottaAugs?: boolean;
}

export type PadMode = 'edge' | 'reflect';

/** The five colour operations, in the index order the random permutation refers to. */
export const JITTER_OPS = ['brightness', 'contrast', 'saturation', 'hue', 'gamma'] as const;
export type JitterOp = (typeof JITTER_OPS)[number];

export interface AffineParams {
  /** Rotation in degrees (clockwise in image coordinates, torchvision's convention). */
  angle: number;
  /** Integer pixel translation [tx, ty] (applied after rotation and scale). */
  translate: readonly [number, number];
  scale: number;
  /** Shear in degrees [sx, sy] (CoTTA draws none: [0, 0]). */
  shear: readonly [number, number];
}

/** One draw of everything random in the pipeline except the noise. */
export interface CottaParams {
  /** Application order of the colour operations. */
  jitterOrder: JitterOp[];
  brightness: number;
  contrast: number;
  saturation: number;
  hue: number;
  gamma: number;
  /** Edge padding on every side before the affine (⌊H/2⌋). */
  pad: number;
  affine: AffineParams;
  /** σ of the 5×5 Gaussian blur; 0 = no blur step (cotta_augs false). */
  blurSigma: number;
  flip: boolean;
  noiseStd: number;
  /** Padding mode before the affine (default 'edge'). */
  padding?: PadMode;
}

/** Ranges of docs/augment.md#ranges ([min, max]; `translate` is a fraction of the padded size). */
const RANGES = {
  normal: { brightness: [0.6, 1.4], contrast: [0.7, 1.3], saturation: [0.5, 1.5], hue: [-0.06, 0.06], gamma: [0.7, 1.3], degrees: [-15, 15], scale: [0.9, 1.1], sigma: [0.001, 0.5] },
  soft: { brightness: [0.8, 1.2], contrast: [0.85, 1.15], saturation: [0.75, 1.25], hue: [-0.03, 0.03], gamma: [0.85, 1.15], degrees: [-8, 8], scale: [0.95, 1.05], sigma: [0.001, 0.25] },
} as const;
const TRANSLATE_FRACTION = 1 / 16;
const BLUR_KERNEL = 5;
const DEFAULT_NOISE_STD = 0.005;
/** Grayscale weights of the contrast/saturation steps (ITU-R 601-2 luma, as torchvision). */
const LUMA = [0.2989, 0.587, 0.114] as const;

function checkImages(x: tf.Tensor, what: string): asserts x is tf.Tensor4D {
  if (x.rank !== 4 || x.shape[3] !== 3) throw new CtaError(`${what}: expected NHWC RGB images [N,H,W,3], got [${x.shape.join(',')}]`);
}

/** Python's round(): half to even (the translation draw rounds a uniform number this way). */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const uniform = (rng: Rng, [lo, hi]: readonly [number, number] | readonly number[]) => lo + (hi - lo) * rng.next();

/**
 * Draws one parameter set for an H×W batch, in the reference's order: the jitter permutation and
 * then each factor as its operation comes up, the affine (angle, tx, ty, scale), the blur σ, the flip.
 */
export function drawCottaParams(rng: Rng, height: number, width: number, opts: CottaAugmentOptions = {}): CottaParams {
  const r = opts.soft ? RANGES.soft : RANGES.normal;
  const jitterOrder = Array.from(rng.permutation(JITTER_OPS.length), (i) => JITTER_OPS[i]);
  const factors = {} as Record<JitterOp, number>;
  for (const op of jitterOrder) factors[op] = uniform(rng, r[op]);
  const pad = Math.floor(height / 2);
  const angle = uniform(rng, r.degrees);
  // max_dx is a fraction of the PADDED image the affine sees (docs/augment.md#ranges).
  const maxDx = TRANSLATE_FRACTION * (width + 2 * pad);
  const maxDy = TRANSLATE_FRACTION * (height + 2 * pad);
  const tx = roundHalfEven(uniform(rng, [-maxDx, maxDx]));
  const ty = roundHalfEven(uniform(rng, [-maxDy, maxDy]));
  const scale = uniform(rng, r.scale);
  const cottaAugs = opts.cottaAugs ?? true;
  const blurSigma = cottaAugs ? uniform(rng, r.sigma) : 0;
  const flip = rng.next() < 0.5;
  return {
    jitterOrder,
    ...factors,
    pad,
    affine: { angle, translate: [tx, ty], scale, shear: [0, 0] },
    blurSigma,
    flip,
    noiseStd: cottaAugs ? (opts.noiseStd ?? DEFAULT_NOISE_STD) : 0,
    padding: opts.padding ?? 'edge',
  };
}

// ---------------------------------------------------------------------------------------------
// The single operations (NHWC in, NHWC out; docs/augment.md#operations)

export function clip01(x: tf.Tensor4D): tf.Tensor4D {
  return tf.clipByValue(x, 0, 1);
}

/** ratio·a + (1 − ratio)·b clipped to [0, 1] (torchvision's blend for float images). */
function blend(a: tf.Tensor, b: tf.Tensor, ratio: number): tf.Tensor4D {
  return tf.clipByValue(tf.add(tf.mul(a, ratio), tf.mul(b, 1 - ratio)), 0, 1) as tf.Tensor4D;
}

/** [N,H,W,1] luma. */
function grayscale(x: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => tf.sum(tf.mul(x, tf.tensor1d([...LUMA])), -1, true) as tf.Tensor4D);
}

export function adjustBrightness(x: tf.Tensor4D, factor: number): tf.Tensor4D {
  return tf.tidy(() => blend(x, tf.zerosLike(x), factor));
}

/** Blends towards the per-image mean luma. */
export function adjustContrast(x: tf.Tensor4D, factor: number): tf.Tensor4D {
  return tf.tidy(() => blend(x, tf.mean(grayscale(x), [1, 2, 3], true), factor));
}

/** Blends towards the per-pixel luma. */
export function adjustSaturation(x: tf.Tensor4D, factor: number): tf.Tensor4D {
  return tf.tidy(() => blend(x, grayscale(x), factor));
}

/**
 * Shifts the HSV hue by `factor` (in turns, |factor| ≤ 0.5) with torchvision's float RGB↔HSV
 * formulas (docs/augment.md#hue); no clipping afterwards, as there.
 */
export function adjustHue(x: tf.Tensor4D, factor: number): tf.Tensor4D {
  if (!(Math.abs(factor) <= 0.5)) throw new CtaError(`hue factor ${factor} is not in [-0.5, 0.5]`);
  return tf.tidy(() => {
    const [r, g, b] = tf.split(x, 3, 3);
    const maxc = tf.max(x, 3, true);
    const minc = tf.min(x, 3, true);
    const eqc = tf.equal(maxc, minc);
    const cr = tf.sub(maxc, minc);
    const ones = tf.onesLike(maxc);
    // Where max = min (grey) S and H are 0; the divisors become 1 so nothing divides by zero.
    const s = tf.div(cr, tf.where(eqc, ones, maxc));
    const crDiv = tf.where(eqc, ones, cr);
    const rc = tf.div(tf.sub(maxc, r), crDiv);
    const gc = tf.div(tf.sub(maxc, g), crDiv);
    const bc = tf.div(tf.sub(maxc, b), crDiv);
    const isR = tf.equal(maxc, r);
    const isG = tf.logicalAnd(tf.equal(maxc, g), tf.logicalNot(isR));
    const isB = tf.logicalAnd(tf.notEqual(maxc, g), tf.logicalNot(isR));
    const h6 = tf.addN([
      tf.mul(tf.cast(isR, 'float32'), tf.sub(bc, gc)),
      tf.mul(tf.cast(isG, 'float32'), tf.add(tf.sub(rc, bc), 2)),
      tf.mul(tf.cast(isB, 'float32'), tf.add(tf.sub(gc, rc), 4)),
    ]);
    const h0 = tf.mod(tf.add(tf.div(h6, 6), 1), 1);
    const h = tf.mod(tf.add(h0, factor), 1); // floor modulo: a negative shift wraps to [0, 1)
    return hsvToRgb(h, s, maxc);
  });
}

/** torchvision's HSV → RGB: sector i = ⌊6h⌋ mod 6 picks (v, t, p), (q, v, p), … per channel. */
function hsvToRgb(h: tf.Tensor, s: tf.Tensor, v: tf.Tensor): tf.Tensor4D {
  const h6 = tf.mul(h, 6);
  const i = tf.floor(h6);
  const f = tf.sub(h6, i);
  const p = tf.clipByValue(tf.mul(v, tf.sub(1, s)), 0, 1);
  const q = tf.clipByValue(tf.mul(v, tf.sub(1, tf.mul(s, f))), 0, 1);
  const t = tf.clipByValue(tf.mul(v, tf.sub(1, tf.mul(s, tf.sub(1, f)))), 0, 1);
  const sector = tf.mod(i, 6);
  const masks = Array.from({ length: 6 }, (_, k) => tf.cast(tf.equal(sector, k), 'float32'));
  // Exactly one mask is 1 per pixel, so the sums pick one candidate without rounding.
  const pick = (c: tf.Tensor[]) => tf.addN(c.map((ck, k) => tf.mul(masks[k], ck)));
  return tf.concat([pick([v, q, p, p, t, v]), pick([t, v, v, q, p, p]), pick([p, p, t, v, v, q])], 3) as tf.Tensor4D;
}

/** The gamma step of CoTTA's jitter: clamp to [1e-8, 1] (so x^γ has no zero base), x^γ, clip. */
export function adjustGamma(x: tf.Tensor4D, gamma: number): tf.Tensor4D {
  return tf.tidy(() => tf.clipByValue(tf.pow(tf.clipByValue(x, 1e-8, 1), gamma), 0, 1) as tf.Tensor4D);
}

export function applyJitter(x: tf.Tensor4D, op: JitterOp, factor: number): tf.Tensor4D {
  switch (op) {
    case 'brightness':
      return adjustBrightness(x, factor);
    case 'contrast':
      return adjustContrast(x, factor);
    case 'saturation':
      return adjustSaturation(x, factor);
    case 'hue':
      return adjustHue(x, factor);
    case 'gamma':
      return adjustGamma(x, factor);
  }
}

/** Source index for each of `n + 2·pad` padded positions when the border pixel repeats. */
function edgeIndices(n: number, pad: number): Int32Array {
  return Int32Array.from({ length: n + 2 * pad }, (_, k) => Math.min(n - 1, Math.max(0, k - pad)));
}

/**
 * Pads every side by `pad` pixels repeating the border pixel (torchvision Pad, padding_mode='edge'),
 * as two gathers: tfjs pads only with constants or mirrors.
 */
export function padEdge(x: tf.Tensor4D, pad: number): tf.Tensor4D {
  checkImages(x, 'padEdge');
  if (pad === 0) return x.clone();
  const [, h, w] = x.shape;
  return tf.tidy(() => {
    const rows = tf.gather(x, tf.tensor1d(edgeIndices(h, pad), 'int32'), 1);
    return tf.gather(rows, tf.tensor1d(edgeIndices(w, pad), 'int32'), 2) as tf.Tensor4D;
  });
}

/**
 * torchvision's inverse affine matrix for the tensor path (centre at the image centre): maps
 * output coordinates relative to the centre to input coordinates relative to the centre.
 */
export function inverseAffineMatrix(p: AffineParams): number[] {
  const rad = Math.PI / 180;
  const rot = p.angle * rad;
  const sx = p.shear[0] * rad;
  const sy = p.shear[1] * rad;
  const [tx, ty] = p.translate;
  // Rotation · shear without the scale, then its inverse (determinant 1) divided by the scale.
  const a = Math.cos(rot - sy) / Math.cos(sy);
  const b = (-Math.cos(rot - sy) * Math.tan(sx)) / Math.cos(sy) - Math.sin(rot);
  const c = Math.sin(rot - sy) / Math.cos(sy);
  const d = (-Math.sin(rot - sy) * Math.tan(sx)) / Math.cos(sy) + Math.cos(rot);
  const m = [d, -b, 0, -c, a, 0].map((v) => v / p.scale);
  m[2] += m[0] * -tx + m[1] * -ty;
  m[5] += m[3] * -tx + m[4] * -ty;
  return m;
}

/** Output pixels [top, top + rows) × [left, left + cols) of an affine on an image of this size. */
interface Window {
  top: number;
  left: number;
  rows: number;
  cols: number;
}

/**
 * Bilinear sampling plan (grid_sample, align_corners = false, zero padding) for `win` of an affine
 * output of the same size as its (outH × outW) input. The input itself may be an edge-padded
 * version of `x` that is never built: `pad` maps padded coordinates back to x by clamping.
 * Returns, per output pixel, 4 source indices into x's H·W plane and their weights (0 for corners
 * outside the padded image), and the sampled all-ones mask (the sum of the in-bounds weights).
 */
function samplingPlan(p: AffineParams, h: number, w: number, pad: number, win: Window, padMode: PadMode = 'edge') {
  if (padMode === 'reflect' && (pad >= h || pad >= w)) throw new CtaError(`reflect padding by ${pad} needs images larger than ${pad} pixels, got ${h}×${w}`);
  // padded coordinate → source index: clamp (edge) or mirror without repeating the border (reflect)
  const src = (k: number, n: number) => {
    const j = k - pad;
    if (padMode === 'edge') return Math.min(n - 1, Math.max(0, j));
    return j < 0 ? -j : j > n - 1 ? 2 * (n - 1) - j : j;
  };
  const outH = h + 2 * pad;
  const outW = w + 2 * pad;
  const m = inverseAffineMatrix(p);
  const n = win.rows * win.cols;
  const index = new Int32Array(4 * n);
  const weight = new Float32Array(4 * n);
  const mask = new Float32Array(n);
  for (let r = 0; r < win.rows; r++) {
    // Pixel centres relative to the image centre (torchvision's base grid).
    const yo = win.top + r - outH / 2 + 0.5;
    for (let c = 0; c < win.cols; c++) {
      const xo = win.left + c - outW / 2 + 0.5;
      // Input coordinate of the pixel grid where pixel k's centre is at k.
      const ix = m[0] * xo + m[1] * yo + m[2] + outW / 2 - 0.5;
      const iy = m[3] * xo + m[4] * yo + m[5] + outH / 2 - 0.5;
      const x0 = Math.floor(ix);
      const y0 = Math.floor(iy);
      const fx = ix - x0;
      const fy = iy - y0;
      const o = r * win.cols + c;
      let total = 0;
      for (let k = 0; k < 4; k++) {
        const xs = x0 + (k & 1);
        const ys = y0 + (k >> 1);
        const wk = ((k & 1) ? fx : 1 - fx) * ((k >> 1) ? fy : 1 - fy);
        const inside = xs >= 0 && xs < outW && ys >= 0 && ys < outH;
        const sx = inside ? src(xs, w) : 0;
        const sy = inside ? src(ys, h) : 0;
        index[k * n + o] = sy * w + sx;
        weight[k * n + o] = inside ? wk : 0;
        if (inside) total += wk;
      }
      mask[o] = total;
    }
  }
  return { index, weight, mask, n };
}

/** Samples `x` by a plan: Σ_k w_k·x[i_k], then torchvision's fill blend out·mask + (1 − mask)·fill. */
function applyPlan(x: tf.Tensor4D, plan: ReturnType<typeof samplingPlan>, win: Window, fill: number): tf.Tensor4D {
  const [b, h, w, ch] = x.shape;
  return tf.tidy(() => {
    const flat = tf.reshape(x, [b, h * w, ch]);
    const gathered = tf.reshape(tf.gather(flat, tf.tensor1d(plan.index, 'int32'), 1), [b, 4, plan.n, ch]);
    const sampled = tf.sum(tf.mul(gathered, tf.tensor4d(plan.weight, [1, 4, plan.n, 1])), 1);
    const mask = tf.tensor3d(plan.mask, [1, plan.n, 1]);
    let out = tf.mul(sampled, mask);
    if (fill !== 0) out = tf.add(out, tf.mul(tf.sub(1, mask), fill));
    return tf.reshape(out, [b, win.rows, win.cols, ch]) as tf.Tensor4D;
  });
}

/**
 * torchvision's tensor affine with bilinear interpolation: the output has the input's size, the
 * transform keeps the image centre, and pixels are blended towards `fill` by how much of their
 * bilinear footprint falls outside the input (docs/augment.md#affine).
 */
export function affine(x: tf.Tensor4D, p: AffineParams, fill = 0): tf.Tensor4D {
  checkImages(x, 'affine');
  const [, h, w] = x.shape;
  const win = { top: 0, left: 0, rows: h, cols: w };
  return applyPlan(x, samplingPlan(p, h, w, 0, win), win, fill);
}

/** torchvision's normalised 1-D Gaussian of `size` taps, in float32 as there. */
export function gaussianKernel1d(size: number, sigma: number): Float32Array {
  const f = Math.fround;
  const half = (size - 1) / 2;
  const s = f(sigma);
  const pdf = Float32Array.from({ length: size }, (_, i) => f(Math.exp(f(-0.5 * f(f(f(i - half) / s) ** 2)))));
  let sum = 0;
  for (const v of pdf) sum = f(sum + v);
  return pdf.map((v) => f(v / sum));
}

/** Depthwise [k,k,3,1] filter: the outer product ky·kxᵀ of the 1-D kernel (as torchvision's 2-D kernel). */
function blurFilter(size: number, sigma: number): tf.Tensor4D {
  const k = gaussianKernel1d(size, sigma);
  const data = new Float32Array(size * size * 3);
  for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) for (let c = 0; c < 3; c++) data[(i * size + j) * 3 + c] = Math.fround(k[i] * k[j]);
  return tf.tensor4d(data, [size, size, 3, 1]);
}

/** torchvision's Gaussian blur: reflect padding by ⌊k/2⌋, then the k×k kernel per channel. */
export function gaussianBlur(x: tf.Tensor4D, sigma: number, kernelSize = BLUR_KERNEL): tf.Tensor4D {
  checkImages(x, 'gaussianBlur');
  if (!(sigma > 0)) throw new CtaError(`blur sigma must be positive, got ${sigma}`);
  if (kernelSize % 2 !== 1 || kernelSize < 1) throw new CtaError(`blur kernel size must be odd and positive, got ${kernelSize}`);
  const pad = kernelSize >> 1;
  if (pad >= x.shape[1] || pad >= x.shape[2]) throw new CtaError(`blur: reflect padding by ${pad} needs images larger than ${pad} pixels`);
  // torch's 'reflect' mirrors without repeating the edge pixel, as tf.mirrorPad's 'reflect'.
  const paddings: [number, number][] = [[0, 0], [pad, pad], [pad, pad], [0, 0]];
  return tf.tidy(() => tf.depthwiseConv2d(tf.mirrorPad(x, paddings, 'reflect'), blurFilter(kernelSize, sigma), 1, 'valid'));
}

/** torchvision CenterCrop (top/left = round((H − h)/2), half to even). */
export function centerCrop(x: tf.Tensor4D, height: number, width: number): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  if (height > h || width > w) throw new CtaError(`centre crop ${height}×${width} is larger than the image ${h}×${w}`);
  return tf.slice(x, [0, roundHalfEven((h - height) / 2), roundHalfEven((w - width) / 2), 0], [b, height, width, c]);
}

export function hflip(x: tf.Tensor4D): tf.Tensor4D {
  return tf.reverse(x, 2);
}

/** `count` standard normals from the seeded Rng (Box–Muller, both outputs of each pair used). */
export function normalNoise(rng: Rng, count: number, std = 1): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    let u = 0;
    while (u === 0) u = rng.next();
    const radius = std * Math.sqrt(-2 * Math.log(u));
    const theta = 2 * Math.PI * rng.next();
    out[i] = radius * Math.cos(theta);
    if (i + 1 < count) out[i + 1] = radius * Math.sin(theta);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The pipeline

/**
 * The whole augmentation with given parameters; `noise` (the batch's shape, already scaled) is
 * added after the flip, or none when null. The affine runs on the edge-padded image, but only the
 * crop window and the blur's border are computed (docs/augment.md#fused-pipeline).
 */
export function applyCotta(x: tf.Tensor4D, p: CottaParams, noise: tf.Tensor4D | null = null): tf.Tensor4D {
  checkImages(x, 'cottaAugment');
  const [, h, w] = x.shape;
  const blur = p.blurSigma > 0;
  const border = blur ? BLUR_KERNEL >> 1 : 0;
  if (p.pad < border) throw new CtaError(`cottaAugment: images of ${h}×${w} are too small (the padding must cover the ${BLUR_KERNEL}×${BLUR_KERNEL} blur)`);
  if (noise && !noise.shape.every((d, i) => d === x.shape[i])) throw new CtaError(`cottaAugment: noise [${noise.shape.join(',')}] does not match the batch [${x.shape.join(',')}]`);
  return tf.tidy(() => {
    let y = clip01(x);
    for (const op of p.jitterOrder) y = applyJitter(y, op, p[op]);
    // The centre crop of the (H + 2·pad)-sized affine output starts at (pad, pad); the blur reads
    // `border` more pixels on each side, all inside the padded image since pad ≥ border.
    const win: Window = { top: p.pad - border, left: p.pad - border, rows: h + 2 * border, cols: w + 2 * border };
    y = applyPlan(y, samplingPlan(p.affine, h, w, p.pad, win, p.padding), win, 0);
    if (blur) y = tf.depthwiseConv2d(y, blurFilter(BLUR_KERNEL, p.blurSigma), 1, 'valid');
    if (p.flip) y = hflip(y);
    if (noise) y = tf.add(y, noise);
    return clip01(y);
  });
}

/**
 * One CoTTA augmentation of a batch (NHWC in [0, 1]): draws the parameters and the noise from
 * `rng` (the same sequence for the same Rng state) and returns a new tensor of the same shape.
 */
export function cottaAugment(x: tf.Tensor4D, rng: Rng, opts: CottaAugmentOptions = {}): tf.Tensor4D {
  checkImages(x, 'cottaAugment');
  const p = drawCottaParams(rng, x.shape[1], x.shape[2], opts);
  if (!(p.noiseStd > 0)) return applyCotta(x, p, null);
  const noise = tf.tensor4d(normalNoise(rng, x.size, p.noiseStd), x.shape);
  try {
    return applyCotta(x, p, noise);
  } finally {
    noise.dispose();
  }
}
