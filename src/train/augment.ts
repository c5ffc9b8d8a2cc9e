/**
 * Batches for source training: uint8 NHWC images → float32 in [0, 1], with torchvision's
 * RandomCrop(size, padding=p) (zero padding, offsets uniform in [0, 2p]) and
 * RandomHorizontalFlip(0.5) when augmenting. Plain JS loops are fast enough here: negligible next
 * to a training step (docs/porting.md#measurements).
 */
import type { Rng } from '../util/rng.js';

export interface ImageSet {
  images: Uint8Array; // NHWC
  labels: Int32Array;
  n: number;
  height: number;
  width: number;
  channels: number;
}

export interface AugmentOptions {
  /** RandomCrop padding (0: no crop). */
  pad: number;
  /** RandomHorizontalFlip with p = 0.5. */
  flip: boolean;
}

/**
 * Fills `out` ([idx.length, H, W, C] float32) with images `idx` of `set`, scaled by 1/255, each
 * cropped/flipped at random when `aug` is given (the rng is consumed in a fixed order: crop y,
 * crop x, flip, per image).
 */
export function makeBatch(set: ImageSet, idx: ArrayLike<number>, out: Float32Array, aug: AugmentOptions | null, rng: Rng | null): void {
  const { height: h, width: w, channels: c } = set;
  const row = w * c;
  const img = h * row;
  if (out.length < idx.length * img) throw new Error(`makeBatch: output holds ${out.length} values, need ${idx.length * img}`);
  const inv = 1 / 255;
  for (let b = 0; b < idx.length; b++) {
    const src = idx[b] * img;
    const dst = b * img;
    let dy = 0;
    let dx = 0;
    let flip = false;
    if (aug && rng) {
      if (aug.pad > 0) {
        dy = rng.int(2 * aug.pad + 1) - aug.pad;
        dx = rng.int(2 * aug.pad + 1) - aug.pad;
      }
      if (aug.flip) flip = rng.next() < 0.5;
    }
    for (let y = 0; y < h; y++) {
      const sy = y + dy;
      const o = dst + y * row;
      if (sy < 0 || sy >= h) {
        out.fill(0, o, o + row);
        continue;
      }
      for (let x = 0; x < w; x++) {
        const sx = (flip ? w - 1 - x : x) + dx;
        const oo = o + x * c;
        if (sx < 0 || sx >= w) {
          for (let k = 0; k < c; k++) out[oo + k] = 0;
        } else {
          const s = src + sy * row + sx * c;
          for (let k = 0; k < c; k++) out[oo + k] = set.images[s + k] * inv;
        }
      }
    }
  }
}

/** Per-channel mean and (population) standard deviation of the images in [0, 1]. */
export function channelStats(set: ImageSet): { mean: number[]; std: number[] } {
  const c = set.channels;
  const sum = new Float64Array(c);
  const sq = new Float64Array(c);
  const total = set.n * set.height * set.width;
  for (let i = 0; i < total; i++) {
    for (let k = 0; k < c; k++) {
      const v = set.images[i * c + k] / 255;
      sum[k] += v;
      sq[k] += v * v;
    }
  }
  const mean = Array.from(sum, (s) => s / total);
  const std = Array.from(sq, (s, k) => Math.sqrt(Math.max(s / total - mean[k] ** 2, 0)));
  return { mean, std };
}
