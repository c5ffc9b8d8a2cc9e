/**
 * frost: out = clip(a·x + b·F, 0, 255) with F a random crop of one of five frost photographs
 * (Hendrycks: `idx = randint(5)` picks frost1…frost5; the CIFAR script first scales the photo by 0.2
 * with cv2 bilinear, the ImageNet script crops the photo as is).
 *
 * The photos cannot be shipped with this project, so by default F is a PROCEDURAL frost texture
 * (non-standard; reported as `frost: 'procedural'` by corruptionInfo): cloudy value noise plus ridged
 * "crystal vein" noise and short branching streaks, tinted with one of five palettes whose per-channel
 * mean / standard deviation match the five photos at the scale the scripts use. A user who has the
 * photos (e.g. from the imagecorruptions package) passes `frostDir` and gets the standard corruption.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import type { Rng } from '../../util/rng.js';
import { CtaError } from '../../util/errors.js';
import { randint, roundHalfEven, type RgbImage } from './common.js';

export interface FrostPhoto {
  data: Uint8Array; // HWC RGB
  height: number;
  width: number;
}

// ---------------------------------------------------------------------------------------------
// Photos from a user folder

const EXTENSIONS = ['.png', '.jpg', '.jpeg', '.PNG', '.JPG', '.JPEG'];
const photoCache = new Map<string, Promise<FrostPhoto[]>>();

async function decodePhoto(file: string): Promise<FrostPhoto> {
  try {
    // cv2.imread(IMREAD_COLOR) drops an alpha channel without compositing; so does removeAlpha()
    const { data, info } = await sharp(file).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), height: info.height, width: info.width };
  } catch (e) {
    throw new CtaError(`frostDir: cannot decode ${file}: ${(e as Error).message.split('\n')[0]}`);
  }
}

/** frost1…frost5 (.png / .jpg / .jpeg) from `dir`, decoded once per folder. */
export function loadFrostPhotos(dir: string): Promise<FrostPhoto[]> {
  let hit = photoCache.get(dir);
  if (!hit) {
    hit = (async () => {
      if (!existsSync(dir)) throw new CtaError(`frostDir: folder not found: ${dir}`);
      const out: FrostPhoto[] = [];
      for (let i = 1; i <= 5; i++) {
        const file = EXTENSIONS.map((e) => join(dir, `frost${i}${e}`)).find((f) => existsSync(f));
        if (!file) throw new CtaError(`frostDir: missing frost${i}.png/.jpg in ${dir} (frost1…frost5 are needed)`);
        out.push(await decodePhoto(file));
      }
      return out;
    })();
    hit.catch(() => photoCache.delete(dir));
    photoCache.set(dir, hit);
  }
  return hit;
}

/**
 * cv2.resize(src, (0,0), fx=f, fy=f, INTER_LINEAR) for uint8: output size round(W·f) × round(H·f),
 * source coordinate (d + ½)/f − ½ clamped at the border, 11-bit fixed-point weights. For f = 0.2 the
 * coordinates are integers (5d + 2), so the result is an exact subsampling.
 */
export function cvResizeLinear(p: FrostPhoto, f: number, outW?: number, outH?: number): FrostPhoto {
  const W2 = outW ?? roundHalfEven(p.width * f);
  const H2 = outH ?? roundHalfEven(p.height * f);
  const sx = outW ? p.width / W2 : 1 / f;
  const sy = outH ? p.height / H2 : 1 / f;
  const axis = (n: number, o: number, s: number) => {
    const i0 = new Int32Array(o);
    const i1 = new Int32Array(o);
    const w1 = new Int32Array(o);
    for (let d = 0; d < o; d++) {
      const c = (d + 0.5) * s - 0.5;
      let fl = Math.floor(c);
      let t = c - fl;
      if (fl < 0) {
        fl = 0;
        t = 0;
      }
      if (fl >= n - 1) {
        fl = n - 1;
        t = 0;
      }
      i0[d] = fl;
      i1[d] = Math.min(fl + 1, n - 1);
      w1[d] = Math.round(t * 2048);
    }
    return { i0, i1, w1 };
  };
  const ax = axis(p.width, W2, sx);
  const ay = axis(p.height, H2, sy);
  const out = new Uint8Array(H2 * W2 * 3);
  for (let y = 0; y < H2; y++) {
    const wy1 = ay.w1[y];
    const wy0 = 2048 - wy1;
    for (let x = 0; x < W2; x++) {
      const wx1 = ax.w1[x];
      const wx0 = 2048 - wx1;
      for (let ch = 0; ch < 3; ch++) {
        const a = p.data[(ay.i0[y] * p.width + ax.i0[x]) * 3 + ch];
        const b = p.data[(ay.i0[y] * p.width + ax.i1[x]) * 3 + ch];
        const c = p.data[(ay.i1[y] * p.width + ax.i0[x]) * 3 + ch];
        const d = p.data[(ay.i1[y] * p.width + ax.i1[x]) * 3 + ch];
        const v = (a * wx0 + b * wx1) * wy0 + (c * wx0 + d * wx1) * wy1;
        out[(y * W2 + x) * 3 + ch] = Math.min(255, Math.floor((v + (1 << 21)) / (1 << 22)));
      }
    }
  }
  return { data: out, height: H2, width: W2 };
}

/**
 * The frost layer from a photo: scale (CIFAR 0.2), make sure it is strictly larger than the image
 * (numpy's randint(0, 0) would fail; for images the scripts never saw, the photo is enlarged by
 * 1.1× the needed ratio, as imagecorruptions does), then crop at
 * (randint(0, h − H), randint(0, w − W)).
 */
export function frostLayerFromPhoto(photo: FrostPhoto, scale: number, H: number, W: number, rng: Rng): Uint8Array {
  let p = scale === 1 ? photo : cvResizeLinear(photo, scale);
  if (p.height <= H || p.width <= W) {
    const f = Math.max(H / p.height, W / p.width) * 1.1;
    p = cvResizeLinear(p, f, Math.ceil(p.width * f), Math.ceil(p.height * f));
  }
  const y0 = randint(rng, 0, p.height - H);
  const x0 = randint(rng, 0, p.width - W);
  const out = new Uint8Array(H * W * 3);
  for (let y = 0; y < H; y++) {
    const s = ((y0 + y) * p.width + x0) * 3;
    out.set(p.data.subarray(s, s + W * 3), y * W * 3);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Procedural frost (non-standard substitute)

/**
 * Per-channel (mean, std) of frost1…frost5 after the CIFAR ×0.2 scaling, in RGB (measured once on
 * the photos; only these summary numbers are used, never pixels).
 */
const PALETTES: readonly { mean: readonly number[]; std: readonly number[] }[] = [
  { mean: [77.5, 149.0, 165.7], std: [26.8, 16.4, 15.3] },
  { mean: [200.8, 205.4, 214.5], std: [21.4, 22.1, 22.6] },
  { mean: [200.8, 205.4, 214.5], std: [21.4, 22.1, 22.6] },
  { mean: [138.0, 153.2, 165.6], std: [29.0, 29.0, 30.2] },
  { mean: [112.3, 123.3, 134.7], std: [44.3, 43.2, 41.6] },
];

/**
 * Smooth value noise on a lattice of spacing `period` px, rotated by a random angle and shifted by a
 * random phase (the rotation hides the lattice's axis alignment), quintic interpolation. Values in
 * [0, 1]. Written into `out` (length H·W).
 */
function valueNoise(out: Float64Array, H: number, W: number, period: number, rng: Rng): void {
  const th = rng.next() * Math.PI * 2;
  const c = Math.cos(th) / period;
  const s = Math.sin(th) / period;
  const half = Math.hypot(H, W) / period;
  const g = Math.ceil(2 * half) + 3;
  const lattice = new Float64Array(g * g);
  for (let i = 0; i < lattice.length; i++) lattice[i] = rng.next();
  const off = half + 1 + rng.next();
  const fade = (u: number) => u * u * u * (u * (u * 6 - 15) + 10);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const u = x * c - y * s + off;
      const v = x * s + y * c + off;
      const iu = Math.floor(u);
      const iv = Math.floor(v);
      const tu = fade(u - iu);
      const tv = fade(v - iv);
      const a = lattice[iv * g + iu];
      const b = lattice[iv * g + iu + 1];
      const cc = lattice[(iv + 1) * g + iu];
      const d = lattice[(iv + 1) * g + iu + 1];
      out[y * W + x] = (a + (b - a) * tu) * (1 - tv) + (cc + (d - cc) * tu) * tv;
    }
  }
}

/** Splat an anti-aliased line segment of brightness `b` (fading along its length) into `t`. */
function drawSegment(t: Float64Array, H: number, W: number, x0: number, y0: number, ang: number, len: number, b: number): void {
  const steps = Math.max(2, Math.ceil(len * 2));
  const dx = Math.cos(ang) * (len / steps);
  const dy = Math.sin(ang) * (len / steps);
  for (let s = 0; s <= steps; s++) {
    const x = x0 + s * dx;
    const y = y0 + s * dy;
    const ix = Math.floor(x);
    const iy = Math.floor(y);
    const fx = x - ix;
    const fy = y - iy;
    const amp = b * (1 - (0.7 * s) / steps) * 0.5;
    for (let k = 0; k < 4; k++) {
      const xx = ix + (k & 1);
      const yy = iy + (k >> 1);
      if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
      t[yy * W + xx] += amp * (k & 1 ? fx : 1 - fx) * (k >> 1 ? fy : 1 - fy);
    }
  }
}

/**
 * A frost texture of size H×W (HWC RGB uint8). `scale` is the size of the texture's features in
 * pixels relative to the CIFAR setting (1 for CIFAR, where the scripts use the photo at 0.2×; 5 for
 * ImageNet, where they use it at full size). Layers: a cloudy low-frequency haze, fine grain, thin
 * bright ridges (ridged noise), and many short ice needles whose orientation follows a smooth field
 * (so neighbouring needles are roughly parallel, as in the photos), some with fern-like side branches.
 */
export function proceduralFrost(H: number, W: number, scale: number, rng: Rng): Uint8Array {
  const pal = PALETTES[rng.int(PALETTES.length)];
  const n = H * W;
  const t = new Float64Array(n);
  const tmp = new Float64Array(n);
  const add = (period: number, amp: number, f: (v: number) => number = (v) => v) => {
    valueNoise(tmp, H, W, period, rng);
    for (let i = 0; i < n; i++) t[i] += amp * f(tmp[i]);
  };
  add(30 * scale, 0.8); // haze
  add(9 * scale, 0.35);
  add(1.3 * scale, 0.35); // grain
  const ridge = (v: number) => {
    const r = 1 - Math.abs(2 * v - 1);
    return r ** 6;
  };
  add(6 * scale, 0.6, ridge);
  add(2.5 * scale, 0.35, ridge);
  const orient = new Float64Array(n);
  valueNoise(orient, H, W, 20 * scale, rng);
  const baseAngle = rng.next() * Math.PI;
  const needles = Math.max(1, Math.round(n / (5 * scale * scale)));
  for (let i = 0; i < needles; i++) {
    const x0 = rng.next() * W;
    const y0 = rng.next() * H;
    const o = orient[Math.min(H - 1, Math.floor(y0)) * W + Math.min(W - 1, Math.floor(x0))];
    const ang = baseAngle + 3 * Math.PI * o + 0.35 * (rng.next() - 0.5) + (rng.next() < 0.5 ? 0 : Math.PI);
    const len = (1.5 + 4.5 * rng.next()) * scale;
    const b = 0.4 + 0.8 * rng.next();
    drawSegment(t, H, W, x0, y0, ang, len, b);
    if (rng.next() < 0.3) {
      const branches = 2 + rng.int(4);
      for (let j = 0; j < branches; j++) {
        const at = (0.15 + 0.7 * rng.next()) * len;
        const side = j % 2 ? -1 : 1;
        drawSegment(t, H, W, x0 + Math.cos(ang) * at, y0 + Math.sin(ang) * at, ang + side * (0.8 + 0.3 * rng.next()), len * (0.2 + 0.2 * rng.next()), b * 0.7);
      }
    }
  }
  // standardise and tint
  let mean = 0;
  for (let i = 0; i < n; i++) mean += t[i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (t[i] - mean) ** 2;
  const sd = Math.sqrt(v / n) || 1;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const z = (t[i] - mean) / sd;
    for (let ch = 0; ch < 3; ch++) {
      const val = Math.round(pal.mean[ch] + pal.std[ch] * z);
      out[3 * i + ch] = val < 0 ? 0 : val > 255 ? 255 : val;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** The blend itself: np.uint8(clip(a·x + b·F, 0, 255)). */
export function frostBlend(img: RgbImage, c: readonly [number, number], layer: Uint8Array): Uint8Array {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) {
    let v = c[0] * d[i] + c[1] * layer[i];
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    out[i] = v;
  }
  return out;
}

export async function frost(
  img: RgbImage,
  c: readonly [number, number],
  frostScale: number,
  rng: Rng,
  frostDir?: string,
): Promise<Uint8Array> {
  const { height: H, width: W } = img;
  let layer: Uint8Array;
  if (frostDir) {
    const photos = await loadFrostPhotos(frostDir);
    const idx = randint(rng, 0, 5);
    layer = frostLayerFromPhoto(photos[idx], frostScale, H, W, rng);
  } else {
    layer = proceduralFrost(H, W, frostScale * 5, rng);
  }
  return frostBlend(img, c, layer);
}
