/**
 * Noise corruptions (Hendrycks make_cifar_c / make_imagenet_c):
 *   gaussian_noise  clip(x + N(0, σ))            x = img/255
 *   shot_noise      clip(Poisson(x·c) / c)
 *   impulse_noise   skimage random_noise(x, 's&p', amount=a): every element (channel by channel) is
 *                   hit with probability a (U ≤ a), and a hit is salt (1) when a second U ≤ 0.5,
 *                   pepper (0) otherwise
 *   speckle_noise   clip(x + x·N(0, σ))
 * and the result is cast with np.uint8 (truncation). The `*With` entry points take the random draws
 * as arrays so tests can compare with the Python formulas at identical draws.
 */
import type { Rng } from '../../util/rng.js';
import { normals, type RgbImage } from './common.js';

/** gaussian_noise given standard-normal draws z (one per element): x + σ·z. */
export function gaussianNoiseWith(img: RgbImage, sigma: number, z: ArrayLike<number>): Uint8Array {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) {
    // numpy: normal(scale=σ) = σ·z, then x + that
    let v = d[i] / 255 + sigma * z[i];
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    out[i] = v * 255;
  }
  return out;
}

export function gaussianNoise(img: RgbImage, sigma: number, rng: Rng): Uint8Array {
  return gaussianNoiseWith(img, sigma, normals(rng, img.data.length));
}

/** speckle_noise given standard-normal draws: x + x·(σ·z). */
export function speckleNoiseWith(img: RgbImage, sigma: number, z: ArrayLike<number>): Uint8Array {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) {
    const x = d[i] / 255;
    let v = x + x * (sigma * z[i]);
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    out[i] = v * 255;
  }
  return out;
}

export function speckleNoise(img: RgbImage, sigma: number, rng: Rng): Uint8Array {
  return speckleNoiseWith(img, sigma, normals(rng, img.data.length));
}

/**
 * impulse_noise given two uniform draws per element: `flip` (hit when ≤ amount) and `salt`
 * (salt when ≤ 0.5) — skimage ≥0.19 `_bernoulli` compares `random() <= p`.
 */
export function impulseNoiseWith(
  img: RgbImage,
  amount: number,
  flip: ArrayLike<number>,
  salt: ArrayLike<number>,
): Uint8Array {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) {
    let v = d[i] / 255;
    if (flip[i] <= amount) v = salt[i] <= 0.5 ? 1 : 0;
    out[i] = v * 255;
  }
  return out;
}

export function impulseNoise(img: RgbImage, amount: number, rng: Rng): Uint8Array {
  const n = img.data.length;
  // skimage draws the whole `flipped` array, then the whole `salted` array
  const flip = new Float64Array(n);
  for (let i = 0; i < n; i++) flip[i] = rng.next();
  const salt = new Float64Array(n);
  for (let i = 0; i < n; i++) salt[i] = rng.next();
  return impulseNoiseWith(img, amount, flip, salt);
}

/** shot_noise given the Poisson counts k (one per element): k / c. */
export function shotNoiseWith(img: RgbImage, c: number, counts: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) {
    let v = counts[i] / c;
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    out[i] = v * 255;
  }
  return out;
}

export function shotNoise(img: RgbImage, c: number, rng: Rng): Uint8Array {
  const d = img.data;
  const counts = new Float64Array(d.length);
  for (let i = 0; i < d.length; i++) counts[i] = poisson(rng, (d[i] / 255) * c);
  return shotNoiseWith(img, c, counts);
}

// ---------------------------------------------------------------------------------------------
// Poisson sampler, the same two exact methods numpy uses: multiplication of uniforms for λ < 10 and
// Hörmann's PTRS transformed rejection ("The transformed rejection method for generating Poisson
// random variables", 1993) for λ ≥ 10. shot_noise needs λ = x·c up to 500 (CIFAR severity 1).

const LOG_SQRT_2PI_X2 = Math.log(2 * Math.PI); // ln(2π), used as ½·ln(2π)·2

/** ln Γ(x) for x ≥ 1 via the Stirling series (terms B₂ₖ / (2k(2k−1))) after shifting x ≥ 7. */
export function logGamma(x: number): number {
  if (x === 1 || x === 2) return 0;
  const coef = [
    1 / 12,
    -1 / 360,
    1 / 1260,
    -1 / 1680,
    1 / 1188,
    -691 / 360360,
    1 / 156,
    -3617 / 122400,
    43867 / 244188,
    -174611 / 125400,
  ];
  const shift = x < 7 ? Math.trunc(7 - x) : 0;
  let x0 = x + shift;
  const inv2 = 1 / x0 / x0;
  let series = coef[9];
  for (let k = 8; k >= 0; k--) series = series * inv2 + coef[k];
  let g = series / x0 + 0.5 * LOG_SQRT_2PI_X2 + (x0 - 0.5) * Math.log(x0) - x0;
  for (let k = 0; k < shift; k++) {
    x0 -= 1;
    g -= Math.log(x0);
  }
  return g;
}

export function poisson(rng: Rng, lam: number): number {
  if (!(lam > 0)) return 0;
  if (lam < 10) {
    const limit = Math.exp(-lam);
    let k = 0;
    let prod = rng.next();
    while (prod > limit) {
      k++;
      prod *= rng.next();
    }
    return k;
  }
  const slam = Math.sqrt(lam);
  const loglam = Math.log(lam);
  const b = 0.931 + 2.53 * slam;
  const a = -0.059 + 0.02483 * b;
  const invalpha = 1.1239 + 1.1328 / (b - 3.4);
  const vr = 0.9277 - 3.6224 / (b - 2);
  for (;;) {
    const U = rng.next() - 0.5;
    const V = rng.next();
    const us = 0.5 - Math.abs(U);
    const k = Math.floor(((2 * a) / us + b) * U + lam + 0.43);
    if (us >= 0.07 && V <= vr) return k;
    if (k < 0 || (us < 0.013 && V > us)) continue;
    if (Math.log(V) + Math.log(invalpha) - Math.log(a / (us * us) + b) <= -lam + k * loglam - logGamma(k + 1)) {
      return k;
    }
  }
}
