/**
 * Pillow's separable resampler (Resample.c, 8 bits per channel, fixed point): precompute_coeffs +
 * normalize_coeffs_8bpc per axis, then a horizontal pass to uint8 and a vertical pass. Used with
 * the BOX filter by the pixelate corruption (Hendrycks' PIL resize) and with the triangle filter
 * for PIL-compatible bilinear resizing of ImageNet validation images.
 */

const PRECISION_BITS = 32 - 8 - 2;

/** Filter support (half-width) and weight function, as in Pillow's filter table. */
const FILTERS = {
  box: { support: 0.5, weight: (t: number) => (t > -0.5 && t <= 0.5 ? 1 : 0) },
  bilinear: { support: 1, weight: (t: number) => (Math.abs(t) < 1 ? 1 - Math.abs(t) : 0) },
} as const;

export type PilFilter = keyof typeof FILTERS;

interface Plan {
  bounds: Int32Array; // per output sample: first input index, count
  ksize: number;
  k: Int32Array; // fixed-point coefficients
}

function plan(inSize: number, outSize: number, filter: PilFilter): Plan {
  const f = FILTERS[filter];
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = f.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const pre = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = f.weight((x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const v = x < xmax ? (ww !== 0 ? pre[x] / ww : pre[x]) : 0;
      k[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, ksize, k };
}

function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** PIL `Image.resize((outW, outH), filter)` of an RGB HWC uint8 image (always a new buffer). */
export function resizePil(src: Uint8Array, H: number, W: number, outH: number, outW: number, filter: PilFilter): Uint8Array {
  let cur = src;
  let curW = W;
  if (outW !== W) {
    const p = plan(W, outW, filter);
    const tmp = new Uint8Array(H * outW * 3);
    for (let y = 0; y < H; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = p.bounds[2 * xx];
        const cnt = p.bounds[2 * xx + 1];
        const kb = xx * p.ksize;
        for (let ch = 0; ch < 3; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < cnt; x++) ss += cur[(y * curW + x + xmin) * 3 + ch] * p.k[kb + x];
          tmp[(y * outW + xx) * 3 + ch] = clip8(ss);
        }
      }
    }
    cur = tmp;
    curW = outW;
  }
  if (outH !== H) {
    const p = plan(H, outH, filter);
    const tmp = new Uint8Array(outH * curW * 3);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = p.bounds[2 * yy];
      const cnt = p.bounds[2 * yy + 1];
      const kb = yy * p.ksize;
      for (let x = 0; x < curW; x++) {
        for (let ch = 0; ch < 3; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < cnt; y++) ss += cur[((y + ymin) * curW + x) * 3 + ch] * p.k[kb + y];
          tmp[(yy * curW + x) * 3 + ch] = clip8(ss);
        }
      }
    }
    cur = tmp;
  }
  return cur === src ? src.slice() : cur;
}
