/**
 * Shared numeric helpers for the corruption generator. Every helper states which library routine's
 * semantics it reproduces, because the reference generators (Hendrycks & Dietterich 2019,
 * `make_cifar_c.py` / `make_imagenet_c.py`) are written against numpy / scipy / scikit-image /
 * OpenCV / PIL, and small details (border modes, float32 vs float64, truncation vs rounding) decide
 * whether a pixel lands on the same grey level.
 *
 * Conventions: images are HWC RGB uint8 (`RgbImage`); working buffers are Float64Array (numpy's
 * default float64) unless the reference computes in float32, in which case values pass through
 * `Math.fround` after every operation (a float32 op is exactly a double op rounded once to float32).
 */
import { CtaError } from '../../util/errors.js';
import type { Rng } from '../../util/rng.js';

/** An HWC RGB uint8 image. */
export interface RgbImage {
  data: Uint8Array;
  height: number;
  width: number;
}

export const fr = Math.fround;

/** Check the image shape; throws a one-line CtaError naming the problem. */
export function checkImage(img: RgbImage, what = 'image'): void {
  const { height, width, data } = img;
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new CtaError(`${what}: height/width must be positive integers (got ${height}×${width})`);
  }
  if (!(data instanceof Uint8Array) || data.length !== height * width * 3) {
    throw new CtaError(
      `${what}: data must be a Uint8Array of height·width·3 = ${height * width * 3} bytes (HWC RGB), got ${data?.length}`,
    );
  }
}

/**
 * `np.uint8(np.clip(v, 0, 1) * 255)` for a float64 buffer in [0,1] units: clip, scale, truncate
 * (Uint8Array stores truncate toward zero). This is how every CIFAR-C / ImageNet-C output is cast.
 */
export function unitToU8(src: Float64Array | Float32Array, f32 = false): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i++) {
    let v = src[i];
    v = v < 0 ? 0 : v > 1 ? 1 : v; // NaN falls through and stores 0, like numpy on x86
    out[i] = f32 ? fr(v * 255) : v * 255;
  }
  return out;
}

/** `np.array(img) / 255.` (float64). */
export function toUnit(data: Uint8Array): Float64Array {
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i] / 255;
  return out;
}

/** `(np.array(img) / 255.).astype(np.float32)`. */
export function toUnit32(data: Uint8Array): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = data[i] / 255;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Random draws with numpy's conventions (the values come from the project's seeded Rng).

/** `np.random.randint(lo, hi)`: integer in [lo, hi). */
export function randint(rng: Rng, lo: number, hi: number): number {
  return lo + rng.int(hi - lo);
}

/** `np.random.uniform(lo, hi)` = lo + (hi − lo)·U[0,1). */
export function uniform(rng: Rng, lo: number, hi: number): number {
  return lo + (hi - lo) * rng.next();
}

/** Fill with standard-normal draws. */
export function normals(rng: Rng, n: number): Float64Array {
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) z[i] = rng.normal();
  return z;
}

// ---------------------------------------------------------------------------------------------
// Border handling. Each returns an in-range index for any integer i (also far outside).

/** scipy 'nearest' / OpenCV BORDER_REPLICATE: aaa|abcd|ddd. */
export function clampIdx(i: number, n: number): number {
  return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/** scipy 'reflect' (half-sample symmetric): dcba|abcd|dcba. */
export function reflectIdx(i: number, n: number): number {
  if (n === 1) return 0;
  const p = 2 * n;
  let k = i % p;
  if (k < 0) k += p;
  return k < n ? k : p - 1 - k;
}

/** OpenCV BORDER_REFLECT_101 / scipy 'mirror' (whole-sample symmetric): dcb|abcd|cba. */
export function reflect101Idx(i: number, n: number): number {
  if (n === 1) return 0;
  const p = 2 * n - 2;
  let k = i % p;
  if (k < 0) k += p;
  return k < n ? k : p - k;
}

export type BorderMode = 'nearest' | 'reflect' | 'mirror';

function borderFn(mode: BorderMode): (i: number, n: number) => number {
  return mode === 'nearest' ? clampIdx : mode === 'reflect' ? reflectIdx : reflect101Idx;
}

// ---------------------------------------------------------------------------------------------
// numpy summation order (pairwise summation, numpy/core/src/umath/loops_utils.h) — used only where
// a sum normalises a kernel, so that the kernels carry the same last bits as scipy's.

function pairwise(a: ArrayLike<number>, off: number, n: number): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[off + i];
    return res;
  }
  if (n <= 128) {
    const r = [a[off], a[off + 1], a[off + 2], a[off + 3], a[off + 4], a[off + 5], a[off + 6], a[off + 7]];
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[off + i + j];
    let res = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) res += a[off + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwise(a, off, n2) + pairwise(a, off + n2, n - n2);
}

/** `np.sum` of a contiguous float64 vector (first element, then pairwise sum of the rest). */
export function npSum(a: ArrayLike<number>): number {
  if (a.length === 0) return 0;
  return a[0] + pairwise(a, 1, a.length - 1);
}

// ---------------------------------------------------------------------------------------------
// Gaussian filtering with scipy.ndimage.gaussian_filter semantics (what skimage.filters.gaussian
// calls): kernel radius int(truncate·σ + 0.5), weights exp(−x²/2σ²) normalised, applied axis by axis
// (rows axis 0 first, then axis 1), symmetric taps summed outermost-first as scipy's correlate1d does.

const kernelCache = new Map<string, Float64Array>();

/** scipy `_gaussian_kernel1d(sigma, 0, radius)` with radius = int(truncate·σ + 0.5). */
export function gaussianKernel1d(sigma: number, truncate: number): Float64Array {
  const key = `${sigma}|${truncate}`;
  const hit = kernelCache.get(key);
  if (hit) return hit;
  const radius = Math.trunc(truncate * sigma + 0.5);
  const w = new Float64Array(2 * radius + 1);
  const c = -0.5 / (sigma * sigma);
  for (let i = -radius; i <= radius; i++) w[i + radius] = Math.exp(c * (i * i));
  const s = npSum(w);
  for (let i = 0; i < w.length; i++) w[i] /= s;
  if (kernelCache.size > 256) kernelCache.clear();
  kernelCache.set(key, w);
  return w;
}

/**
 * Correlate `n` samples read from `src` at `off + k·stride` with a symmetric kernel, writing to
 * `dst` at the same positions. `line` is scratch of length ≥ n + 2·radius.
 */
function correlateLine(
  src: Float64Array | Float32Array,
  dst: Float64Array | Float32Array,
  off: number,
  stride: number,
  n: number,
  w: Float64Array,
  border: (i: number, n: number) => number,
  line: Float64Array,
): void {
  const r = (w.length - 1) >> 1;
  for (let k = -r; k < n + r; k++) line[k + r] = src[off + border(k, n) * stride];
  const w0 = w[r];
  for (let k = 0; k < n; k++) {
    const c = k + r;
    let acc = line[c] * w0;
    for (let j = r; j >= 1; j--) acc += (line[c - j] + line[c + j]) * w[r - j];
    dst[off + k * stride] = acc;
  }
}

/**
 * In-place 2-D Gaussian filter of an (H, W, C) buffer, each channel separately (skimage
 * `gaussian(..., multichannel=True)` → sigma 0 on the channel axis, which scipy skips).
 * A Float32Array buffer is rounded to float32 after each axis, as scipy does for float32 arrays.
 */
export function gaussianFilter2d(
  buf: Float64Array | Float32Array,
  H: number,
  W: number,
  C: number,
  sigma: number,
  mode: BorderMode,
  truncate = 4,
): void {
  if (!(sigma > 1e-15)) return; // scipy skips axes whose sigma is ~0
  const w = gaussianKernel1d(sigma, truncate);
  const r = (w.length - 1) >> 1;
  const border = borderFn(mode);
  const line = new Float64Array(Math.max(H, W) + 2 * r);
  // axis 0 (down the rows)
  for (let x = 0; x < W; x++) for (let c = 0; c < C; c++) correlateLine(buf, buf, x * C + c, W * C, H, w, border, line);
  // axis 1 (along each row)
  for (let y = 0; y < H; y++) for (let c = 0; c < C; c++) correlateLine(buf, buf, y * W * C + c, C, W, w, border, line);
}

// ---------------------------------------------------------------------------------------------
// scipy.ndimage.zoom(order=1) and the `clipped_zoom` helper of the generators.

/** Python's round() (half to even) for the non-negative values used in output shapes. */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Per-axis sampling plan of `scipy.ndimage.zoom(x, z, order=1)` restricted to output indices
 * [start, start + count): scipy ≥1.6 maps output k to input coordinate k·(n−1)/(o−1) (corner
 * aligned), o = round(n·z); a coordinate that rounds past n−1 falls outside the 'constant' domain
 * and the whole output point becomes cval = 0 (marked with i0 = −1).
 */
export interface AxisPlan {
  i0: Int32Array;
  i1: Int32Array;
  w0: Float64Array;
  w1: Float64Array;
}

export function zoomAxisPlan(n: number, o: number, start: number, count: number): AxisPlan {
  const plan: AxisPlan = {
    i0: new Int32Array(count),
    i1: new Int32Array(count),
    w0: new Float64Array(count),
    w1: new Float64Array(count),
  };
  const scale = o > 1 ? (n - 1) / (o - 1) : 1;
  for (let k = 0; k < count; k++) {
    const cc = (start + k) * scale;
    if (cc > n - 1 || cc < 0) {
      plan.i0[k] = -1;
      continue;
    }
    const f = Math.floor(cc);
    const t = cc - f;
    plan.i0[k] = f;
    plan.i1[k] = f + 1 < n ? f + 1 : n - 1; // weight t is 0 whenever f = n−1
    plan.w0[k] = 1 - t;
    plan.w1[k] = t;
  }
  return plan;
}

/**
 * `clipped_zoom(img, z)` of the generators: take the centred ceil(h/z) crop, zoom it by z with
 * order-1 splines, trim the centred h rows (w columns). Hendrycks writes it for square images; here
 * each axis is handled on its own, which is identical for square inputs. Adds the result into
 * `acc` (or writes it when `add` is false). `f32` rounds like a float32 scipy output.
 */
export function clippedZoomInto(
  src: ArrayLike<number>,
  H: number,
  W: number,
  C: number,
  z: number,
  acc: Float64Array | Float32Array,
  add: boolean,
  f32: boolean,
): void {
  const chY = Math.ceil(H / z);
  const chX = Math.ceil(W / z);
  const topY = Math.floor((H - chY) / 2);
  const topX = Math.floor((W - chX) / 2);
  const oY = roundHalfEven(chY * z);
  const oX = roundHalfEven(chX * z);
  const trimY = Math.floor((oY - H) / 2);
  const trimX = Math.floor((oX - W) / 2);
  const py = zoomAxisPlan(chY, oY, trimY, H);
  const px = zoomAxisPlan(chX, oX, trimX, W);
  for (let y = 0; y < H; y++) {
    const y0 = py.i0[y];
    const rowOut = y * W * C;
    if (y0 < 0) {
      if (!add) for (let i = 0; i < W * C; i++) acc[rowOut + i] = 0;
      continue;
    }
    const wy0 = py.w0[y];
    const wy1 = py.w1[y];
    const r0 = (topY + y0) * W * C;
    const r1 = (topY + py.i1[y]) * W * C;
    for (let x = 0; x < W; x++) {
      const x0 = px.i0[x];
      const o = rowOut + x * C;
      if (x0 < 0) {
        if (!add) for (let c = 0; c < C; c++) acc[o + c] = 0;
        continue;
      }
      const wx0 = px.w0[x];
      const wx1 = px.w1[x];
      const a0 = r0 + (topX + x0) * C;
      const a1 = r0 + (topX + px.i1[x]) * C;
      const b0 = r1 + (topX + x0) * C;
      const b1 = r1 + (topX + px.i1[x]) * C;
      for (let c = 0; c < C; c++) {
        // scipy multiplies value·w_y·w_x per footprint point and sums in C order
        let v = src[a0 + c] * wy0 * wx0;
        v += src[a1 + c] * wy0 * wx1;
        v += src[b0 + c] * wy1 * wx0;
        v += src[b1 + c] * wy1 * wx1;
        if (f32) v = fr(v);
        if (add) acc[o + c] = f32 ? fr(acc[o + c] + v) : acc[o + c] + v;
        else acc[o + c] = v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Motion blur with ImageMagick 6 `MotionBlurImage(radius, sigma, angle)` semantics, as called by the
// generators through Wand on a PNG round trip. IM builds a one-sided Gaussian over width 2·ceil(r)+1,
// samples the pixel at (x + ceil(i·cosθ − ½), y + ceil(i·sinθ − ½)) for tap i with edge replication,
// accumulates in 16-bit quantum units, rounds to Q16, and the 8-bit PNG that comes back holds
// floor(Q16 / 257). The rounding rule was fitted against IM 6.9.11 Q16 through Wand: 0 mismatching
// pixels over 40 random images (gray and RGB, 32–48 px, radius 6–20, all angles).

export interface MotionKernel {
  weights: Float64Array;
  dx: Int32Array;
  dy: Int32Array;
}

export function motionKernel(radius: number, sigma: number, angleDeg: number): MotionKernel {
  const width = 2 * Math.ceil(radius) + 1;
  const weights = new Float64Array(width);
  let norm = 0;
  for (let i = 0; i < width; i++) {
    weights[i] = Math.exp(-(i * i) / (2 * sigma * sigma)) / (Math.sqrt(2 * Math.PI) * sigma);
    norm += weights[i];
  }
  for (let i = 0; i < width; i++) weights[i] /= norm;
  const th = (angleDeg * Math.PI) / 180;
  const px = width * Math.sin(th);
  const py = width * Math.cos(th);
  const hyp = Math.hypot(px, py);
  const dx = new Int32Array(width);
  const dy = new Int32Array(width);
  for (let i = 0; i < width; i++) {
    dx[i] = Math.ceil((i * py) / hyp - 0.5);
    dy[i] = Math.ceil((i * px) / hyp - 0.5);
  }
  return { weights, dx, dy };
}

/** Motion-blur an (H, W, C) uint8 buffer; returns uint8 with ImageMagick's rounding (see above). */
export function motionBlurU8(src: Uint8Array, H: number, W: number, C: number, k: MotionKernel): Uint8Array {
  const out = new Uint8Array(src.length);
  const n = k.weights.length;
  const acc = new Float64Array(C);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      acc.fill(0);
      for (let i = 0; i < n; i++) {
        const sy = clampIdx(y + k.dy[i], H);
        const sx = clampIdx(x + k.dx[i], W);
        const w = k.weights[i];
        const s = (sy * W + sx) * C;
        for (let c = 0; c < C; c++) acc[c] += w * (257 * src[s + c]);
      }
      const o = (y * W + x) * C;
      for (let c = 0; c < C; c++) {
        let q = Math.floor(acc[c] + 0.5);
        q = q < 0 ? 0 : q > 65535 ? 65535 : q;
        out[o + c] = Math.floor(q / 257);
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// RGB ↔ HSV with skimage.color semantics (rgb2hsv / hsv2rgb of scikit-image 0.19).

/** In place: (R,G,B) in [0,1] → (H,S,V). */
export function rgb2hsvInPlace(a: Float64Array): void {
  for (let i = 0; i < a.length; i += 3) {
    const r = a[i];
    const g = a[i + 1];
    const b = a[i + 2];
    const v = Math.max(r, g, b);
    const delta = v - Math.min(r, g, b);
    let s = delta / v;
    if (delta === 0) s = 0;
    let h = 0;
    // skimage assigns red-, green-, then blue-is-max in turn; the last match wins on ties
    if (b === v) h = 4 + (r - g) / delta;
    else if (g === v) h = 2 + (b - r) / delta;
    else h = (g - b) / delta;
    h = h / 6;
    let m = h % 1; // numpy floor-mod: result takes the sign of the divisor
    if (m !== 0 && m < 0) m += 1;
    h = m;
    if (delta === 0) h = 0;
    if (Number.isNaN(s)) s = 0;
    if (Number.isNaN(h)) h = 0;
    a[i] = h;
    a[i + 1] = s;
    a[i + 2] = v;
  }
}

/** In place: (H,S,V) → (R,G,B). */
export function hsv2rgbInPlace(a: Float64Array): void {
  for (let i = 0; i < a.length; i += 3) {
    const h = a[i];
    const s = a[i + 1];
    const v = a[i + 2];
    const hf = Math.floor(h * 6);
    const f = h * 6 - hf;
    const p = v * (1 - s);
    const q = v * (1 - f * s);
    const t = v * (1 - (1 - f) * s);
    const sector = (((hf % 256) + 256) % 256) % 6; // .astype(np.uint8) % 6
    let r: number;
    let g: number;
    let b: number;
    switch (sector) {
      case 0:
        r = v; g = t; b = p;
        break;
      case 1:
        r = q; g = v; b = p;
        break;
      case 2:
        r = p; g = v; b = t;
        break;
      case 3:
        r = p; g = q; b = v;
        break;
      case 4:
        r = t; g = p; b = v;
        break;
      default:
        r = v; g = p; b = q;
    }
    a[i] = r;
    a[i + 1] = g;
    a[i + 2] = b;
  }
}

// ---------------------------------------------------------------------------------------------
// Fixed 2-D correlation with OpenCV BORDER_REFLECT_101 (cv2.filter2D default), kernel centred.

export function filter2dReflect101(
  src: ArrayLike<number>,
  H: number,
  W: number,
  C: number,
  kernel: Float64Array,
  kh: number,
  kw: number,
  out: Float64Array,
): void {
  const ay = (kh - 1) >> 1;
  const ax = (kw - 1) >> 1;
  const PW = W + kw - 1;
  const PH = H + kh - 1;
  const pad = new Float64Array(PH * PW);
  const acc = new Float64Array(H * W);
  for (let c = 0; c < C; c++) {
    // one channel, padded with the reflect-101 border
    for (let y = 0; y < PH; y++) {
      const sy = reflect101Idx(y - ay, H) * W;
      for (let x = 0; x < PW; x++) pad[y * PW + x] = src[(sy + reflect101Idx(x - ax, W)) * C + c];
    }
    acc.fill(0);
    // taps in row-major order, so each output sums its terms in the same order as a per-pixel loop
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const kv = kernel[i * kw + j];
        if (kv === 0) continue;
        for (let y = 0; y < H; y++) {
          const row = (y + i) * PW + j;
          const o = y * W;
          for (let x = 0; x < W; x++) acc[o + x] += kv * pad[row + x];
        }
      }
    }
    for (let p = 0; p < H * W; p++) out[p * C + c] = acc[p];
  }
}
