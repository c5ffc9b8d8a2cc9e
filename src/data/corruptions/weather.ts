/**
 * Weather corruptions (Hendrycks make_cifar_c / make_imagenet_c): snow, frost, fog, spatter.
 * Frost needs photographs the project does not ship: see frost.ts.
 */
import type { Rng } from '../../util/rng.js';
import {
  clampIdx,
  clippedZoomInto,
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

// ---------------------------------------------------------------------------------------------
// snow

export type SnowParams = readonly [number, number, number, number, number, number, number];

/**
 * snow given the standard-normal draws of the snow layer (H·W) and the blur angle:
 *   layer = N(mean, std) → clipped_zoom(zoom) → zero below threshold → uint8(clip(·)·255) →
 *   ImageMagick motion blur (radius, σ, angle) → /255;
 *   x = blend·x + (1 − blend)·max(x, gray(x)·1.5 + 0.5), gray = cv2 RGB2GRAY (float32);
 *   out = clip(x + layer + rot180(layer)).
 */
export function snowWith(img: RgbImage, c: SnowParams, z: ArrayLike<number>, angle: number): Uint8Array {
  const { height: H, width: W } = img;
  const n = H * W;
  const layer = new Float64Array(n);
  for (let i = 0; i < n; i++) layer[i] = c[0] + c[1] * z[i]; // np.random.normal(loc, scale)
  const zoomed = new Float64Array(n);
  clippedZoomInto(layer, H, W, 1, c[2], zoomed, false, false);
  const u8 = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let v = zoomed[i] < c[3] ? 0 : zoomed[i];
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    u8[i] = v * 255;
  }
  const blurred = motionBlurU8(u8, H, W, 1, motionKernel(c[4], c[5], angle));

  const x = toUnit32(img.data);
  const blend = c[6];
  const rest = 1 - blend;
  const out = new Float64Array(x.length);
  for (let p = 0; p < n; p++) {
    const r = x[3 * p];
    const g = x[3 * p + 1];
    const b = x[3 * p + 2];
    const gray = fr(fr(fr(r * fr(0.299)) + fr(g * fr(0.587))) + fr(b * fr(0.114)));
    const lifted = fr(fr(gray * 1.5) + 0.5);
    // x + layer + np.rot90(layer, 2), left to right in float64
    for (let ch = 0; ch < 3; ch++) {
      const v = x[3 * p + ch];
      const mixed = fr(fr(blend * v) + fr(rest * (v > lifted ? v : lifted)));
      out[3 * p + ch] = mixed + blurred[p] / 255 + blurred[n - 1 - p] / 255;
    }
  }
  return unitToU8(out);
}

export function snow(img: RgbImage, c: SnowParams, rng: Rng): Uint8Array {
  const n = img.height * img.width;
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) z[i] = rng.normal();
  return snowWith(img, c, z, uniform(rng, -135, -45));
}

// ---------------------------------------------------------------------------------------------
// fog: diamond-square plasma fractal (the generators' `plasma_fractal`, a modification of
// FLHerne/mapgen diamondsquare.py), added to the image and rescaled by max/(max + strength).

/**
 * `plasma_fractal(mapsize, wibbledecay)` with uniform draws from `u` (values in [0,1)), consumed in
 * the reference's order: per level the square centres, then the diamonds on the corner rows, then
 * those on the centre rows, each in C order. Neighbours wrap around (np.roll). Returns the map
 * rescaled to [0, 1].
 */
export function plasmaFractal(mapsize: number, wibbledecay: number, u: () => number): Float64Array {
  const N = mapsize;
  const map = new Float64Array(N * N);
  let step = N;
  let wibble = 100;
  // wibbledmean(a) = a/4 + wibble·U(−wibble, wibble)
  const wm = (a: number): number => a / 4 + wibble * (-wibble + 2 * wibble * u());
  while (step >= 2) {
    const m = N / step;
    const h = step >> 1;
    // squares: the corner grid summed with its down neighbour, then with its right neighbour
    const sq = new Float64Array(m * m);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) sq[i * m + j] = map[i * step * N + j * step] + map[((i + 1) % m) * step * N + j * step];
    }
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) map[(h + i * step) * N + h + j * step] = wm(sq[i * m + j] + sq[i * m + ((j + 1) % m)]);
    }
    // diamonds
    const dr = (i: number, j: number): number => map[(h + i * step) * N + h + j * step];
    const ul = (i: number, j: number): number => map[i * step * N + j * step];
    const top = new Float64Array(m * m);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) {
        top[i * m + j] = dr(i, j) + dr((i - 1 + m) % m, j) + (ul(i, j) + ul(i, (j + 1) % m));
      }
    }
    for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) map[i * step * N + h + j * step] = wm(top[i * m + j]);
    const left = new Float64Array(m * m);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < m; j++) {
        left[i * m + j] = dr(i, j) + dr(i, (j - 1 + m) % m) + (ul(i, j) + ul((i + 1) % m, j));
      }
    }
    for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) map[(h + i * step) * N + j * step] = wm(left[i * m + j]);
    step >>= 1;
    wibble /= wibbledecay;
  }
  let lo = Infinity;
  for (let i = 0; i < map.length; i++) if (map[i] < lo) lo = map[i];
  let hi = -Infinity;
  for (let i = 0; i < map.length; i++) {
    map[i] -= lo;
    if (map[i] > hi) hi = map[i];
  }
  for (let i = 0; i < map.length; i++) map[i] /= hi;
  return map;
}

/** Number of uniform draws plasmaFractal consumes. */
export function plasmaDrawCount(mapsize: number): number {
  let n = 0;
  for (let step = mapsize; step >= 2; step >>= 1) n += 3 * (mapsize / step) ** 2;
  return n;
}

function nextPow2(v: number): number {
  let p = 1;
  while (p < v) p *= 2;
  return p;
}

/**
 * fog with uniform draws from `u`. The map size is the script's (32 for CIFAR, 256 for ImageNet),
 * raised to the next power of two ≥ the longer side when the image is larger (imagecorruptions does
 * the same), then cropped to [:H, :W].
 */
export function fogWith(img: RgbImage, c: readonly [number, number], mapSize: number, u: () => number): Uint8Array {
  const { height: H, width: W } = img;
  const N = Math.max(mapSize, nextPow2(Math.max(H, W)));
  const plasma = plasmaFractal(N, c[1], u);
  const x = toUnit(img.data);
  let maxVal = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > maxVal) maxVal = x[i];
  const denom = maxVal + c[0];
  for (let y = 0; y < H; y++) {
    for (let xx = 0; xx < W; xx++) {
      const add = c[0] * plasma[y * N + xx];
      const o = (y * W + xx) * 3;
      for (let ch = 0; ch < 3; ch++) x[o + ch] = ((x[o + ch] + add) * maxVal) / denom;
    }
  }
  return unitToU8(x);
}

export function fog(img: RgbImage, c: readonly [number, number], mapSize: number, rng: Rng): Uint8Array {
  return fogWith(img, c, mapSize, () => rng.next());
}

// ---------------------------------------------------------------------------------------------
// spatter

export type SpatterParams = readonly [number, number, number, number, number, number];

/** Sobel 3×3 (BORDER_REPLICATE) + L1 magnitude + non-maximum suppression + hysteresis: cv2.Canny. */
export function canny(src: Uint8Array, H: number, W: number, low: number, high: number): Uint8Array {
  const dx = new Int32Array(H * W);
  const dy = new Int32Array(H * W);
  const mag = new Int32Array(H * W);
  for (let y = 0; y < H; y++) {
    const ym = clampIdx(y - 1, H) * W;
    const y0 = y * W;
    const yp = clampIdx(y + 1, H) * W;
    for (let x = 0; x < W; x++) {
      const xm = clampIdx(x - 1, W);
      const xp = clampIdx(x + 1, W);
      const gx = src[ym + xp] - src[ym + xm] + 2 * (src[y0 + xp] - src[y0 + xm]) + (src[yp + xp] - src[yp + xm]);
      const gy = src[yp + xm] - src[ym + xm] + 2 * (src[yp + x] - src[ym + x]) + (src[yp + xp] - src[ym + xp]);
      dx[y0 + x] = gx;
      dy[y0 + x] = gy;
      mag[y0 + x] = Math.abs(gx) + Math.abs(gy);
    }
  }
  const lo = Math.floor(low);
  const hi = Math.floor(high);
  const magAt = (y: number, x: number): number => (y < 0 || y >= H || x < 0 || x >= W ? 0 : mag[y * W + x]);
  // 0: not an edge, 1: candidate (passed NMS, > low), 2: strong edge
  const state = new Uint8Array(H * W);
  const stack: number[] = [];
  const SHIFT = 15;
  const TG22 = Math.trunc(0.4142135623730950488016887242097 * (1 << SHIFT) + 0.5);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = y * W + x;
      const m = mag[i];
      if (m <= lo) continue;
      const xs = dx[i];
      const ys = dy[i];
      const ax = Math.abs(xs);
      const ay = Math.abs(ys) * (1 << SHIFT);
      const tg22x = ax * TG22;
      let keep: boolean;
      if (ay < tg22x) {
        keep = m > magAt(y, x - 1) && m >= magAt(y, x + 1);
      } else {
        const tg67x = tg22x + ax * (1 << (SHIFT + 1));
        if (ay > tg67x) keep = m > magAt(y - 1, x) && m >= magAt(y + 1, x);
        else {
          const s = (xs ^ ys) < 0 ? -1 : 1;
          keep = m > magAt(y - 1, x - s) && m > magAt(y + 1, x + s);
        }
      }
      if (!keep) continue;
      if (m > hi) {
        state[i] = 2;
        stack.push(i);
      } else state[i] = 1;
    }
  }
  while (stack.length) {
    const i = stack.pop() as number;
    const y = Math.floor(i / W);
    const x = i - y * W;
    for (let oy = -1; oy <= 1; oy++) {
      for (let ox = -1; ox <= 1; ox++) {
        const yy = y + oy;
        const xx = x + ox;
        if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
        const j = yy * W + xx;
        if (state[j] === 1) {
          state[j] = 2;
          stack.push(j);
        }
      }
    }
  }
  const out = new Uint8Array(H * W);
  for (let i = 0; i < out.length; i++) out[i] = state[i] === 2 ? 255 : 0;
  return out;
}

/**
 * cv2.distanceTransform(src, DIST_L2, 5): 5×5 chamfer distance to the nearest zero pixel with
 * OpenCV's fixed-point costs (1, 1.4, 2.1969 scaled by 2¹⁶), forward then backward pass. Outside
 * the image counts as "far".
 */
export function distanceTransformL2Mask5(src: Uint8Array, H: number, W: number): Float32Array {
  const SHIFT = 16;
  const HV = Math.round(1 * (1 << SHIFT));
  const DIAG = Math.round(1.4 * (1 << SHIFT));
  const LONG = Math.round(2.1969 * (1 << SHIFT));
  const FAR = 2 ** 30;
  const B = 2;
  const TW = W + 2 * B;
  const t = new Float64Array((H + 2 * B) * TW).fill(FAR);
  const at = (y: number, x: number): number => (y + B) * TW + (x + B);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const i = at(y, x);
      if (src[y * W + x] === 0) {
        t[i] = 0;
        continue;
      }
      let v = t[i - 2 * TW - 1] + LONG;
      v = Math.min(v, t[i - 2 * TW + 1] + LONG);
      v = Math.min(v, t[i - TW - 2] + LONG);
      v = Math.min(v, t[i - TW - 1] + DIAG);
      v = Math.min(v, t[i - TW] + HV);
      v = Math.min(v, t[i - TW + 1] + DIAG);
      v = Math.min(v, t[i - TW + 2] + LONG);
      v = Math.min(v, t[i - 1] + HV);
      t[i] = v;
    }
  }
  const out = new Float32Array(H * W);
  for (let y = H - 1; y >= 0; y--) {
    for (let x = W - 1; x >= 0; x--) {
      const i = at(y, x);
      let v = t[i];
      if (v > HV) {
        v = Math.min(v, t[i + 2 * TW + 1] + LONG);
        v = Math.min(v, t[i + 2 * TW - 1] + LONG);
        v = Math.min(v, t[i + TW + 2] + LONG);
        v = Math.min(v, t[i + TW + 1] + DIAG);
        v = Math.min(v, t[i + TW] + HV);
        v = Math.min(v, t[i + TW - 1] + DIAG);
        v = Math.min(v, t[i + TW - 2] + LONG);
        v = Math.min(v, t[i + 1] + HV);
        t[i] = v;
      }
      out[y * W + x] = v / (1 << SHIFT);
    }
  }
  return out;
}

/** Normalised 3×3 box filter, BORDER_REFLECT_101 (cv2.blur), returning the raw mean. */
function box3(src: ArrayLike<number>, H: number, W: number): Float64Array {
  const out = new Float64Array(H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let s = 0;
      for (let i = -1; i <= 1; i++) {
        const yy = reflect101Idx(y + i, H) * W;
        for (let j = -1; j <= 1; j++) s += src[yy + reflect101Idx(x + j, W)];
      }
      out[y * W + x] = s * (1 / 9);
    }
  }
  return out;
}

/** Round half to even (cvRound / saturate_cast on x86). */
function cvRound(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** cv2.equalizeHist on a uint8 plane. */
export function equalizeHist(src: Uint8Array): Uint8Array {
  const hist = new Int32Array(256);
  for (let i = 0; i < src.length; i++) hist[src[i]]++;
  let i = 0;
  while (hist[i] === 0) i++;
  const total = src.length;
  const out = new Uint8Array(src.length);
  if (hist[i] === total) {
    out.fill(i);
    return out;
  }
  const scale = fr(255 / (total - hist[i]));
  const lut = new Uint8Array(256);
  let sum = 0;
  lut[i++] = 0;
  for (; i < 256; i++) {
    sum += hist[i];
    const v = cvRound(fr(sum * scale));
    lut[i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  for (let k = 0; k < src.length; k++) out[k] = lut[src[k]];
  return out;
}

/**
 * spatter given the standard-normal draws of the liquid layer (H·W):
 *   liquid = gaussian(N(mean, std), σ) (skimage, mode nearest); liquid[liquid < thr] = 0
 *   water (mode 0): L8 = uint8(liquid·255); dist = 255 − Canny(L8, 50, 150); L2 distance transform
 *     (mask 5); truncate at 20; 3×3 box → uint8; equalizeHist; emboss [[−2,−1,0],[−1,1,1],[0,1,2]]
 *     → uint8; 3×3 box → float32; m = L8·dist / max · intensity;
 *     out = clip(x + m·(175, 238, 238)/255) on the channels as stored (R, G, B)
 *   mud (mode 1): m = gaussian(float32(liquid > thr), intensity); m[m < 0.8] = 0;
 *     out = clip(x·(1 − m) + m·(63, 42, 20)/255)
 * Everything after the liquid layer is float32 in the reference, reproduced with Math.fround.
 */
export function spatterWith(img: RgbImage, c: SpatterParams, z: ArrayLike<number>): Uint8Array {
  const { height: H, width: W } = img;
  const n = H * W;
  const liquid = new Float64Array(n);
  for (let i = 0; i < n; i++) liquid[i] = c[0] + c[1] * z[i];
  gaussianFilter2d(liquid, H, W, 1, c[2], 'nearest', 4);
  for (let i = 0; i < n; i++) if (liquid[i] < c[3]) liquid[i] = 0;
  const x = toUnit32(img.data);
  const out = new Float32Array(x.length);
  if (c[5] === 0) {
    const L8 = new Uint8Array(n);
    for (let i = 0; i < n; i++) L8[i] = liquid[i] * 255; // .astype(np.uint8): truncate, wraps past 255
    const edges = canny(L8, H, W, 50, 150);
    for (let i = 0; i < n; i++) edges[i] = 255 - edges[i];
    const dist = distanceTransformL2Mask5(edges, H, W);
    for (let i = 0; i < n; i++) if (dist[i] > 20) dist[i] = 20; // THRESH_TRUNC
    const b1 = box3(dist, H, W);
    const d8 = new Uint8Array(n);
    for (let i = 0; i < n; i++) d8[i] = fr(b1[i]); // float32 result, then astype(uint8)
    const eq = equalizeHist(d8);
    const emb = new Uint8Array(n);
    const ker = [-2, -1, 0, -1, 1, 1, 0, 1, 2];
    for (let y = 0; y < H; y++) {
      for (let xx = 0; xx < W; xx++) {
        let s = 0;
        for (let i = 0; i < 3; i++) {
          const yy = reflect101Idx(y + i - 1, H) * W;
          for (let j = 0; j < 3; j++) s += ker[i * 3 + j] * eq[yy + reflect101Idx(xx + j - 1, W)];
        }
        emb[y * W + xx] = s < 0 ? 0 : s > 255 ? 255 : s;
      }
    }
    const b2 = box3(emb, H, W);
    const m = new Float32Array(n);
    let mMax = 0;
    for (let i = 0; i < n; i++) {
      const d = cvRound(b2[i]); // uint8 box filter rounds
      m[i] = L8[i] * d;
      if (m[i] > mMax) mMax = m[i];
    }
    const col = [fr(175 / 255), fr(238 / 255), fr(238 / 255)];
    for (let i = 0; i < n; i++) {
      // m /= max; m *= intensity. A liquid-free layer (max 0) would give NaN in numpy; we add nothing.
      const mi = mMax > 0 ? fr(fr(m[i] / mMax) * c[4]) : 0;
      for (let ch = 0; ch < 3; ch++) out[3 * i + ch] = fr(x[3 * i + ch] + fr(mi * col[ch]));
    }
  } else {
    const m = new Float32Array(n);
    for (let i = 0; i < n; i++) m[i] = liquid[i] > c[3] ? 1 : 0;
    gaussianFilter2dF32(m, H, W, c[4]);
    for (let i = 0; i < n; i++) if (m[i] < 0.8) m[i] = 0;
    const col = [fr(63 / 255), fr(42 / 255), fr(20 / 255)];
    for (let i = 0; i < n; i++) {
      const keep = fr(1 - m[i]);
      for (let ch = 0; ch < 3; ch++) out[3 * i + ch] = fr(fr(x[3 * i + ch] * keep) + fr(col[ch] * m[i]));
    }
  }
  return unitToU8(out, true);
}

/** skimage gaussian on a float32 plane: scipy keeps float32 between the two axes. */
function gaussianFilter2dF32(buf: Float32Array, H: number, W: number, sigma: number): void {
  gaussianFilter2d(buf, H, W, 1, sigma, 'nearest', 4);
}

export function spatter(img: RgbImage, c: SpatterParams, rng: Rng): Uint8Array {
  const n = img.height * img.width;
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) z[i] = rng.normal();
  return spatterWith(img, c, z);
}
