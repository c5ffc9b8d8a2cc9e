/**
 * Digital corruptions (Hendrycks make_cifar_c / make_imagenet_c): brightness, saturate, contrast,
 * elastic_transform, pixelate, jpeg_compression, plus the final JPEG q=85 save of ImageNet-C.
 */
import sharp from 'sharp';
import type { Rng } from '../../util/rng.js';
import {
  fr,
  gaussianFilter2d,
  hsv2rgbInPlace,
  reflect101Idx,
  reflectIdx,
  rgb2hsvInPlace,
  toUnit,
  toUnit32,
  unitToU8,
  type RgbImage,
} from './common.js';
import { resizePil } from '../pil-resample.js';

/** brightness: skimage rgb2hsv → V = clip(V + c, 0, 1) → hsv2rgb. */
export function brightness(img: RgbImage, c: number): Uint8Array {
  const x = toUnit(img.data);
  rgb2hsvInPlace(x);
  for (let i = 2; i < x.length; i += 3) {
    const v = x[i] + c;
    x[i] = v < 0 ? 0 : v > 1 ? 1 : v;
  }
  hsv2rgbInPlace(x);
  return unitToU8(x);
}

/** saturate: skimage rgb2hsv → S = clip(S·a + b, 0, 1) → hsv2rgb. */
export function saturate(img: RgbImage, c: readonly [number, number]): Uint8Array {
  const x = toUnit(img.data);
  rgb2hsvInPlace(x);
  for (let i = 1; i < x.length; i += 3) {
    const s = x[i] * c[0] + c[1];
    x[i] = s < 0 ? 0 : s > 1 ? 1 : s;
  }
  hsv2rgbInPlace(x);
  return unitToU8(x);
}

/** contrast: (x − m)·c + m with m the per-channel mean over the image. */
export function contrast(img: RgbImage, c: number): Uint8Array {
  const x = toUnit(img.data);
  const n = img.height * img.width;
  const mean = [0, 0, 0];
  for (let p = 0; p < n; p++) for (let ch = 0; ch < 3; ch++) mean[ch] += x[3 * p + ch];
  for (let ch = 0; ch < 3; ch++) mean[ch] /= n;
  for (let i = 0; i < x.length; i++) {
    const m = mean[i % 3];
    x[i] = (x[i] - m) * c + m;
  }
  return unitToU8(x);
}

// ---------------------------------------------------------------------------------------------
// elastic_transform (Hendrycks' CIFAR/ImageNet version; imagecorruptions uses a different one)

/** Solve the 2×3 affine M with M·[x y 1]ᵀ = dst for three point pairs (cv2.getAffineTransform). */
function affineFrom3(src: ArrayLike<number>, dst: ArrayLike<number>): number[] {
  // rows [x y 1] for the three points; solve for the first and second output coordinate
  const [x0, y0, x1, y1, x2, y2] = [src[0], src[1], src[2], src[3], src[4], src[5]];
  const det = x0 * (y1 - y2) - y0 * (x1 - x2) + (x1 * y2 - x2 * y1);
  const inv = [
    (y1 - y2) / det,
    (y2 - y0) / det,
    (y0 - y1) / det,
    (x2 - x1) / det,
    (x0 - x2) / det,
    (x1 - x0) / det,
    (x1 * y2 - x2 * y1) / det,
    (x2 * y0 - x0 * y2) / det,
    (x0 * y1 - x1 * y0) / det,
  ];
  const M: number[] = [];
  for (let r = 0; r < 2; r++) {
    const d0 = dst[r];
    const d1 = dst[2 + r];
    const d2 = dst[4 + r];
    M.push(inv[0] * d0 + inv[1] * d1 + inv[2] * d2); // coefficient of x
    M.push(inv[3] * d0 + inv[4] * d1 + inv[5] * d2); // coefficient of y
    M.push(inv[6] * d0 + inv[7] * d1 + inv[8] * d2); // constant
  }
  return M;
}

function cvRoundInt(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * cv2.warpAffine(img, M, (W, H), INTER_LINEAR, BORDER_REFLECT_101) on a float32 HWC image.
 * OpenCV inverts M, then evaluates source coordinates in 10-bit fixed point and keeps 5 fractional
 * bits (INTER_TAB_SIZE 32) for the bilinear weights; we follow the same quantisation.
 */
function warpAffineF32(src: Float32Array, H: number, W: number, M: number[]): Float32Array {
  let D = M[0] * M[4] - M[1] * M[3];
  D = D !== 0 ? 1 / D : 0;
  const A11 = M[4] * D;
  const A22 = M[0] * D;
  const A12 = -M[1] * D;
  const A21 = -M[3] * D;
  const b1 = -A11 * M[2] - A12 * M[5];
  const b2 = -A21 * M[2] - A22 * M[5];
  const AB = 1024;
  const roundDelta = 16; // AB_SCALE / INTER_TAB_SIZE / 2
  const adelta = new Int32Array(W);
  const bdelta = new Int32Array(W);
  for (let x = 0; x < W; x++) {
    adelta[x] = cvRoundInt(A11 * x * AB);
    bdelta[x] = cvRoundInt(A21 * x * AB);
  }
  const out = new Float32Array(src.length);
  for (let y = 0; y < H; y++) {
    const X0 = cvRoundInt((A12 * y + b1) * AB) + roundDelta;
    const Y0 = cvRoundInt((A22 * y + b2) * AB) + roundDelta;
    for (let x = 0; x < W; x++) {
      const X = (X0 + adelta[x]) >> 5;
      const Y = (Y0 + bdelta[x]) >> 5;
      const sx = X >> 5;
      const sy = Y >> 5;
      const fx = (X & 31) / 32;
      const fy = (Y & 31) / 32;
      const w00 = fr((1 - fy) * (1 - fx));
      const w01 = fr((1 - fy) * fx);
      const w10 = fr(fy * (1 - fx));
      const w11 = fr(fy * fx);
      const r0 = reflect101Idx(sy, H) * W;
      const r1 = reflect101Idx(sy + 1, H) * W;
      const c0 = reflect101Idx(sx, W);
      const c1 = reflect101Idx(sx + 1, W);
      const o = (y * W + x) * 3;
      for (let ch = 0; ch < 3; ch++) {
        out[o + ch] =
          src[(r0 + c0) * 3 + ch] * w00 +
          src[(r0 + c1) * 3 + ch] * w01 +
          src[(r1 + c0) * 3 + ch] * w10 +
          src[(r1 + c1) * 3 + ch] * w11;
      }
    }
  }
  return out;
}

/**
 * elastic_transform given its uniform draws (values in [0,1)): `jitter` (6, the affine point
 * offsets U(−c₂, c₂) in row-major (3, 2) order), `ux`, `uy` (H·W each, the U(−1, 1) displacement
 * seeds). Steps, as in the reference:
 *   1. random affine: pts1 = [c+s, (c₀+s, c₁−s), c−s] with c = (H//2, W//2), s = min(H,W)//3,
 *      pts2 = pts1 + jitter (float32); warpAffine bilinear, border reflect-101;
 *   2. dx, dy = float32(gaussian(U(−1,1), σ, mode 'reflect', truncate 3) · α);
 *   3. scipy map_coordinates(img, (y+dy, x+dx, z), order 1, mode 'reflect'), float32.
 */
export function elasticWith(
  img: RgbImage,
  c: readonly [number, number, number],
  jitter: ArrayLike<number>,
  ux: ArrayLike<number>,
  uy: ArrayLike<number>,
): Uint8Array {
  const { height: H, width: W } = img;
  const n = H * W;
  const [alpha, sigma, aff] = c;
  const cy = Math.floor(H / 2);
  const cx = Math.floor(W / 2);
  const s = Math.floor(Math.min(H, W) / 3);
  const pts1 = new Float32Array([cy + s, cx + s, cy + s, cx - s, cy - s, cx - s]);
  const pts2 = new Float32Array(6);
  for (let i = 0; i < 6; i++) pts2[i] = pts1[i] + fr(-aff + 2 * aff * jitter[i]);
  // cv2 reads each row of pts as an (x, y) point. Images under 3 px have coincident points, where
  // cv2.getAffineTransform fails; there we skip the affine step.
  const warped = s > 0 ? warpAffineF32(toUnit32(img.data), H, W, affineFrom3(pts1, pts2)) : toUnit32(img.data);

  const field = (u: ArrayLike<number>): Float32Array => {
    const f = new Float64Array(n);
    for (let i = 0; i < n; i++) f[i] = -1 + 2 * u[i];
    gaussianFilter2d(f, H, W, 1, sigma, 'reflect', 3);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = f[i] * alpha;
    return out;
  };
  const dx = field(ux);
  const dy = field(uy);

  const out = new Float32Array(warped.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const p = y * W + x;
      const cyy = y + dy[p];
      const cxx = x + dx[p];
      const fy0 = Math.floor(cyy);
      const fx0 = Math.floor(cxx);
      const ty = cyy - fy0;
      const tx = cxx - fx0;
      // order-1 spline on the half-sample-symmetric extension of the image
      const r0 = reflectIdx(fy0, H) * W;
      const r1 = reflectIdx(fy0 + 1, H) * W;
      const c0 = reflectIdx(fx0, W);
      const c1 = reflectIdx(fx0 + 1, W);
      for (let ch = 0; ch < 3; ch++) {
        let v = warped[(r0 + c0) * 3 + ch] * (1 - ty) * (1 - tx);
        v += warped[(r0 + c1) * 3 + ch] * (1 - ty) * tx;
        v += warped[(r1 + c0) * 3 + ch] * ty * (1 - tx);
        v += warped[(r1 + c1) * 3 + ch] * ty * tx;
        out[p * 3 + ch] = v;
      }
    }
  }
  return unitToU8(out, true);
}

export function elasticTransform(img: RgbImage, c: readonly [number, number, number], rng: Rng): Uint8Array {
  const n = img.height * img.width;
  const jitter = new Float64Array(6);
  for (let i = 0; i < 6; i++) jitter[i] = rng.next();
  const ux = new Float64Array(n);
  for (let i = 0; i < n; i++) ux[i] = rng.next();
  const uy = new Float64Array(n);
  for (let i = 0; i < n; i++) uy[i] = rng.next();
  return elasticWith(img, c, jitter, ux, uy);
}

// ---------------------------------------------------------------------------------------------
// pixelate: PIL Image.resize(BOX) down to int(W·c) × int(H·c) and back up with BOX.

export function pixelate(img: RgbImage, c: number): Uint8Array {
  const { height: H, width: W } = img;
  // PIL size is (width, height); int() truncates. Never below 1 px.
  const w = Math.max(1, Math.trunc(W * c));
  const h = Math.max(1, Math.trunc(H * c));
  const small = resizePil(img.data, H, W, h, w, 'box');
  return resizePil(small, h, w, H, W, 'box');
}

// ---------------------------------------------------------------------------------------------
// JPEG through sharp (libjpeg-turbo). With 4:2:0 chroma subsampling — PIL's default — the decoded
// pixels are bit-identical to PIL 9.4's `save(JPEG, quality=q)` + `open()` (checked on the fixtures).

export async function jpegRoundTrip(data: Uint8Array, H: number, W: number, quality: number): Promise<Uint8Array> {
  const enc = await sharp(data, { raw: { width: W, height: H, channels: 3 } })
    .jpeg({ quality, chromaSubsampling: '4:2:0', optimiseCoding: false, trellisQuantisation: false, overshootDeringing: false, optimiseScans: false, quantisationTable: 0 })
    .toBuffer();
  const { data: dec, info } = await sharp(enc).raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== W || info.height !== H) {
    throw new Error(`jpeg round trip returned ${info.width}×${info.height}×${info.channels}`);
  }
  return new Uint8Array(dec.buffer, dec.byteOffset, dec.length);
}

export function jpegCompression(img: RgbImage, quality: number): Promise<Uint8Array> {
  return jpegRoundTrip(img.data, img.height, img.width, quality);
}
