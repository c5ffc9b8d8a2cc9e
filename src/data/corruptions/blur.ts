/**
 * Blur corruptions (Hendrycks make_cifar_c / make_imagenet_c):
 *   gaussian_blur  skimage gaussian(x, σ, multichannel) — scipy gaussian_filter, mode 'nearest',
 *                  truncate 4
 *   glass_blur     gaussian(σ) → np.uint8 → local pixel "shuffle" → gaussian(σ)
 *   defocus_blur   cv2.filter2D with an anti-aliased disk kernel, border reflect-101
 *   motion_blur    ImageMagick MotionBlurImage(radius, σ, angle ~ U(−45, 45))
 *   zoom_blur      mean of the image and its centre zooms by each factor of an np.arange list
 */
import type { Rng } from '../../util/rng.js';
import {
  clippedZoomInto,
  filter2dReflect101,
  fr,
  gaussianFilter2d,
  motionBlurU8,
  motionKernel,
  reflect101Idx,
  toUnit,
  toUnit32,
  uniform,
  unitToU8,
  type RgbImage,
} from './common.js';
import { npArange, type Arange } from './params.js';

export function gaussianBlur(img: RgbImage, sigma: number): Uint8Array {
  const x = toUnit(img.data);
  gaussianFilter2d(x, img.height, img.width, 3, sigma, 'nearest', 4);
  return unitToU8(x);
}

// ---------------------------------------------------------------------------------------------

/**
 * glass_blur given the neighbour offsets. The reference loop visits, `iterations` times, rows
 * h = H−d … d+1 (descending) and within each row columns w = W−d … d+1 (descending), draws
 * (dx, dy) = randint(−d, d, size=2) — so each lies in −d … d−1 — and executes
 * `x[h, w], x[h', w'] = x[h', w'], x[h, w]`. Because the right-hand side holds numpy *views*, that
 * statement copies pixel (h', w') onto (h, w) and then writes it back onto itself: it is a copy, not
 * a swap. We reproduce the copy (that is what produced the published data).
 * `offsets` holds dx, dy pairs in loop order.
 */
export function glassBlurWith(
  img: RgbImage,
  sigma: number,
  maxDelta: number,
  iterations: number,
  offsets: ArrayLike<number>,
): Uint8Array {
  const { height: H, width: W } = img;
  const x = toUnit(img.data);
  gaussianFilter2d(x, H, W, 3, sigma, 'nearest', 4);
  const u8 = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) u8[i] = x[i] * 255; // np.uint8(... * 255), no clip
  const d = maxDelta;
  let k = 0;
  for (let it = 0; it < iterations; it++) {
    for (let h = H - d; h > d; h--) {
      for (let w = W - d; w > d; w--) {
        const dx = offsets[k++];
        const dy = offsets[k++];
        const dst = (h * W + w) * 3;
        const src = ((h + dy) * W + (w + dx)) * 3;
        u8[dst] = u8[src];
        u8[dst + 1] = u8[src + 1];
        u8[dst + 2] = u8[src + 2];
      }
    }
  }
  const y = toUnit(u8);
  gaussianFilter2d(y, H, W, 3, sigma, 'nearest', 4);
  return unitToU8(y);
}

/** Number of (dx, dy) pairs glass_blur draws. */
export function glassBlurDrawCount(H: number, W: number, maxDelta: number, iterations: number): number {
  const rows = Math.max(0, H - 2 * maxDelta);
  const cols = Math.max(0, W - 2 * maxDelta);
  return iterations * rows * cols;
}

export function glassBlur(img: RgbImage, p: readonly [number, number, number], rng: Rng): Uint8Array {
  const [sigma, d, iterations] = p;
  const n = glassBlurDrawCount(img.height, img.width, d, iterations);
  const offsets = new Int8Array(2 * n);
  for (let i = 0; i < offsets.length; i++) offsets[i] = rng.int(2 * d) - d; // randint(−d, d)
  return glassBlurWith(img, sigma, d, iterations, offsets);
}

// ---------------------------------------------------------------------------------------------

interface DiskKernel {
  k: Float64Array;
  size: number;
}
const diskCache = new Map<string, DiskKernel>();

/** cv2.getGaussianKernel(n, σ) for σ > 0: exp(−(i − (n−1)/2)² / 2σ²), normalised. */
function cvGaussianKernel(n: number, sigma: number): Float64Array {
  const k = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) {
    const x = i - (n - 1) / 2;
    k[i] = Math.exp(-(x * x) / (2 * sigma * sigma));
    s += k[i];
  }
  for (let i = 0; i < n; i++) k[i] = fr(k[i] / s); // the kernel is requested as float32
  return k;
}

/**
 * The generators' `disk(radius, alias_blur)`: on the grid −8…8 (or −r…r when r > 8) the aliased
 * disk X² + Y² ≤ r² as float32, divided by its sum, then smoothed by cv2.GaussianBlur with a 3×3
 * (5×5 when r > 8) kernel of σ = alias_blur (border reflect-101, float32 arithmetic). The all-zero
 * margin is cropped afterwards: it changes no output value and saves most of the work at r ≤ 1.5.
 */
export function defocusKernel(radius: number, alias: number): DiskKernel {
  const key = `${radius}|${alias}`;
  const hit = diskCache.get(key);
  if (hit) return hit;
  const half = radius <= 8 ? 8 : Math.trunc(radius);
  const ks = radius <= 8 ? 3 : 5;
  const n = 2 * half + 1;
  const disk = new Float32Array(n * n);
  let count = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const X = j - half;
      const Y = i - half;
      if (X * X + Y * Y <= radius * radius) {
        disk[i * n + j] = 1;
        count++;
      }
    }
  }
  for (let i = 0; i < disk.length; i++) disk[i] = disk[i] / count;
  const g = cvGaussianKernel(ks, alias);
  const a = (ks - 1) >> 1;
  // separable: horizontal pass then vertical pass, float32 intermediate (cv2 sepFilter2D order)
  const tmp = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < ks; t++) s += g[t] * disk[i * n + reflect101Idx(j + t - a, n)];
      tmp[i * n + j] = s;
    }
  }
  const full = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < ks; t++) s += g[t] * tmp[reflect101Idx(i + t - a, n) * n + j];
      full[i * n + j] = s;
    }
  }
  // crop the zero border symmetrically (the kernel is symmetric about its centre)
  let m = half;
  for (let r = half; r >= 0; r--) {
    let nonzero = false;
    for (let t = 0; t < n && !nonzero; t++) {
      if (full[(half - r) * n + t] !== 0 || full[t * n + (half - r)] !== 0) nonzero = true;
    }
    if (nonzero) {
      m = r;
      break;
    }
  }
  const size = 2 * m + 1;
  const k = new Float64Array(size * size);
  for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) k[i * size + j] = full[(i + half - m) * n + (j + half - m)];
  const res = { k, size };
  diskCache.set(key, res);
  return res;
}

export function defocusBlur(img: RgbImage, p: readonly [number, number]): Uint8Array {
  const { k, size } = defocusKernel(p[0], p[1]);
  const x = toUnit(img.data);
  const out = new Float64Array(x.length);
  filter2dReflect101(x, img.height, img.width, 3, k, size, size, out);
  return unitToU8(out);
}

// ---------------------------------------------------------------------------------------------

/** motion_blur at a given angle (degrees). The reference returns ImageMagick's 8-bit output. */
export function motionBlurWith(img: RgbImage, radius: number, sigma: number, angle: number): Uint8Array {
  return motionBlurU8(img.data, img.height, img.width, 3, motionKernel(radius, sigma, angle));
}

export function motionBlur(img: RgbImage, p: readonly [number, number], rng: Rng): Uint8Array {
  return motionBlurWith(img, p[0], p[1], uniform(rng, -45, 45));
}

// ---------------------------------------------------------------------------------------------

/**
 * zoom_blur: x32 = float32(img/255); out = Σ_z clipped_zoom(x32, z) over the np.arange factors
 * (float32 accumulation); result (x32 + out) / (len + 1), clipped, ×255, truncated — all float32,
 * as in the reference.
 */
export function zoomBlur(img: RgbImage, factors: Arange): Uint8Array {
  const { height: H, width: W } = img;
  const zs = npArange(factors);
  const x = toUnit32(img.data);
  const out = new Float32Array(x.length);
  for (const z of zs) clippedZoomInto(x, H, W, 3, z, out, true, true);
  const n = zs.length + 1;
  const res = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) res[i] = fr(x[i] + out[i]) / n;
  return unitToU8(res, true);
}
