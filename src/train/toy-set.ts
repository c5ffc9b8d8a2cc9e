/**
 * The training tests' data (src/train/*.test.ts): a learnable toy set of 32×32 RGB images,
 * class k = a bright square at one of 10 positions, plus seeded noise.
 */
import { Rng } from '../util/rng.js';
import type { ImageSet } from './augment.js';

/** A learnable toy set: class k = a bright square at one of 10 positions, plus noise. */
export function toySet(n: number, seed: number): ImageSet {
  const rng = new Rng(seed);
  const h = 32;
  const images = new Uint8Array(n * h * h * 3);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const k = i % 10;
    labels[i] = k;
    const y0 = 4 + 12 * Math.floor(k / 5);
    const x0 = 2 + 6 * (k % 5);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < h; x++) {
        const on = y >= y0 && y < y0 + 8 && x >= x0 && x < x0 + 5;
        for (let c = 0; c < 3; c++) images[((i * h + y) * h + x) * 3 + c] = Math.min(255, (on ? 200 : 20) + rng.int(40));
      }
    }
  }
  return { images, labels, n, height: h, width: h, channels: 3 };
}
