/**
 * Severity tables of the 19 corruptions, transcribed from Hendrycks & Dietterich's generators:
 * `make_cifar_c.py` (32×32 CIFAR-10/100-C) and `make_imagenet_c.py` (224×224 ImageNet-C), as listed
 * in docs/data-formats.md#corruption-parameters. Images whose longer side is ≤ 64 px get the CIFAR
 * table, larger ones the ImageNet table.
 *
 * Values that the scripts write as expressions (e.g. elastic's `IMSIZE*0.08`, the ImageNet elastic's
 * `244*0.7` — 244 is a typo for 224 that the published set kept) are written the same way here so
 * the doubles are bit-identical to the Python ones.
 */

export type ParamTableName = 'cifar' | 'imagenet';

/** `np.arange(start, stop, step)` arguments for a zoom-blur factor list. */
export interface Arange {
  start: number;
  stop: number;
  step: number;
}

export interface CorruptionParams {
  gaussian_noise: readonly number[];
  shot_noise: readonly number[];
  impulse_noise: readonly number[];
  speckle_noise: readonly number[];
  gaussian_blur: readonly number[];
  /** (sigma, max_delta, iterations) */
  glass_blur: readonly (readonly [number, number, number])[];
  /** (disk radius, alias-blur sigma) */
  defocus_blur: readonly (readonly [number, number])[];
  /** (radius, sigma); angle ~ U(−45, 45) */
  motion_blur: readonly (readonly [number, number])[];
  zoom_blur: readonly Arange[];
  /** (mean, std, zoom, threshold, blur radius, blur sigma, blend); angle ~ U(−135, −45) */
  snow: readonly (readonly [number, number, number, number, number, number, number])[];
  /** (image weight, frost weight) */
  frost: readonly (readonly [number, number])[];
  /** (strength, wibble decay) */
  fog: readonly (readonly [number, number])[];
  /** plasma map size the script uses (32 / 256) */
  fogMapSize: number;
  /** frost photo scale before the random crop (CIFAR 0.2, ImageNet 1) */
  frostScale: number;
  brightness: readonly number[];
  contrast: readonly number[];
  /** (alpha, sigma, affine jitter), in pixels */
  elastic_transform: readonly (readonly [number, number, number])[];
  pixelate: readonly number[];
  jpeg_compression: readonly number[];
  /** (mean, std, sigma, threshold, intensity, mode 0 = water / 1 = mud) */
  spatter: readonly (readonly [number, number, number, number, number, number])[];
  /** (S multiplier, S add) */
  saturate: readonly (readonly [number, number])[];
}

const CIFAR_IMSIZE = 32;
const IMAGENET_ELASTIC = 244; // sic, see the header comment

export const CIFAR_PARAMS: CorruptionParams = {
  gaussian_noise: [0.04, 0.06, 0.08, 0.09, 0.1],
  shot_noise: [500, 250, 100, 75, 50],
  impulse_noise: [0.01, 0.02, 0.03, 0.05, 0.07],
  speckle_noise: [0.06, 0.1, 0.12, 0.16, 0.2],
  gaussian_blur: [0.4, 0.6, 0.7, 0.8, 1],
  glass_blur: [
    [0.05, 1, 1],
    [0.25, 1, 1],
    [0.4, 1, 1],
    [0.25, 1, 2],
    [0.4, 1, 2],
  ],
  defocus_blur: [
    [0.3, 0.4],
    [0.4, 0.5],
    [0.5, 0.6],
    [1, 0.2],
    [1.5, 0.1],
  ],
  motion_blur: [
    [6, 1],
    [6, 1.5],
    [6, 2],
    [8, 2],
    [9, 2.5],
  ],
  zoom_blur: [
    { start: 1, stop: 1.06, step: 0.01 },
    { start: 1, stop: 1.11, step: 0.01 },
    { start: 1, stop: 1.16, step: 0.01 },
    { start: 1, stop: 1.21, step: 0.01 },
    { start: 1, stop: 1.26, step: 0.01 },
  ],
  snow: [
    [0.1, 0.2, 1, 0.6, 8, 3, 0.95],
    [0.1, 0.2, 1, 0.5, 10, 4, 0.9],
    [0.15, 0.3, 1.75, 0.55, 10, 4, 0.9],
    [0.25, 0.3, 2.25, 0.6, 12, 6, 0.85],
    [0.3, 0.3, 1.25, 0.65, 14, 12, 0.8],
  ],
  frost: [
    [1, 0.2],
    [1, 0.3],
    [0.9, 0.4],
    [0.85, 0.4],
    [0.75, 0.45],
  ],
  fog: [
    [0.2, 3],
    [0.5, 3],
    [0.75, 2.5],
    [1, 2],
    [1.5, 1.75],
  ],
  fogMapSize: 32,
  frostScale: 0.2,
  brightness: [0.05, 0.1, 0.15, 0.2, 0.3],
  contrast: [0.75, 0.5, 0.4, 0.3, 0.15],
  elastic_transform: [
    [CIFAR_IMSIZE * 0, CIFAR_IMSIZE * 0, CIFAR_IMSIZE * 0.08],
    [CIFAR_IMSIZE * 0.05, CIFAR_IMSIZE * 0.2, CIFAR_IMSIZE * 0.07],
    [CIFAR_IMSIZE * 0.08, CIFAR_IMSIZE * 0.06, CIFAR_IMSIZE * 0.06],
    [CIFAR_IMSIZE * 0.1, CIFAR_IMSIZE * 0.04, CIFAR_IMSIZE * 0.05],
    [CIFAR_IMSIZE * 0.1, CIFAR_IMSIZE * 0.03, CIFAR_IMSIZE * 0.03],
  ],
  pixelate: [0.95, 0.9, 0.85, 0.75, 0.65],
  jpeg_compression: [80, 65, 58, 50, 40],
  spatter: [
    [0.62, 0.1, 0.7, 0.7, 0.5, 0],
    [0.65, 0.1, 0.8, 0.7, 0.5, 0],
    [0.65, 0.3, 1, 0.69, 0.5, 0],
    [0.65, 0.1, 0.7, 0.69, 0.6, 1],
    [0.65, 0.1, 0.5, 0.68, 0.6, 1],
  ],
  saturate: [
    [0.3, 0],
    [0.1, 0],
    [1.5, 0],
    [2, 0.1],
    [2.5, 0.2],
  ],
};

export const IMAGENET_PARAMS: CorruptionParams = {
  gaussian_noise: [0.08, 0.12, 0.18, 0.26, 0.38],
  shot_noise: [60, 25, 12, 5, 3],
  impulse_noise: [0.03, 0.06, 0.09, 0.17, 0.27],
  speckle_noise: [0.15, 0.2, 0.35, 0.45, 0.6],
  gaussian_blur: [1, 2, 3, 4, 6],
  glass_blur: [
    [0.7, 1, 2],
    [0.9, 2, 1],
    [1, 2, 3],
    [1.1, 3, 2],
    [1.5, 4, 2],
  ],
  defocus_blur: [
    [3, 0.1],
    [4, 0.5],
    [6, 0.5],
    [8, 0.5],
    [10, 0.5],
  ],
  motion_blur: [
    [10, 3],
    [15, 5],
    [15, 8],
    [15, 12],
    [20, 15],
  ],
  zoom_blur: [
    { start: 1, stop: 1.11, step: 0.01 },
    { start: 1, stop: 1.16, step: 0.01 },
    { start: 1, stop: 1.21, step: 0.02 },
    { start: 1, stop: 1.26, step: 0.02 },
    { start: 1, stop: 1.31, step: 0.03 },
  ],
  snow: [
    [0.1, 0.3, 3, 0.5, 10, 4, 0.8],
    [0.2, 0.3, 2, 0.5, 12, 4, 0.7],
    [0.55, 0.3, 4, 0.9, 12, 8, 0.7],
    [0.55, 0.3, 4.5, 0.85, 12, 8, 0.65],
    [0.55, 0.3, 2.5, 0.85, 12, 12, 0.55],
  ],
  frost: [
    [1, 0.4],
    [0.8, 0.6],
    [0.7, 0.7],
    [0.65, 0.7],
    [0.6, 0.75],
  ],
  fog: [
    [1.5, 2],
    [2, 2],
    [2.5, 1.7],
    [2.5, 1.5],
    [3, 1.4],
  ],
  fogMapSize: 256,
  frostScale: 1,
  brightness: [0.1, 0.2, 0.3, 0.4, 0.5],
  contrast: [0.4, 0.3, 0.2, 0.1, 0.05],
  elastic_transform: [
    [IMAGENET_ELASTIC * 2, IMAGENET_ELASTIC * 0.7, IMAGENET_ELASTIC * 0.1],
    [IMAGENET_ELASTIC * 2, IMAGENET_ELASTIC * 0.08, IMAGENET_ELASTIC * 0.2],
    [IMAGENET_ELASTIC * 0.05, IMAGENET_ELASTIC * 0.01, IMAGENET_ELASTIC * 0.02],
    [IMAGENET_ELASTIC * 0.07, IMAGENET_ELASTIC * 0.01, IMAGENET_ELASTIC * 0.02],
    [IMAGENET_ELASTIC * 0.12, IMAGENET_ELASTIC * 0.01, IMAGENET_ELASTIC * 0.02],
  ],
  pixelate: [0.6, 0.5, 0.4, 0.3, 0.25],
  jpeg_compression: [25, 18, 15, 10, 7],
  spatter: [
    [0.65, 0.3, 4, 0.69, 0.6, 0],
    [0.65, 0.3, 3, 0.68, 0.6, 0],
    [0.65, 0.3, 2, 0.68, 0.5, 0],
    [0.65, 0.3, 1, 0.65, 1.5, 1],
    [0.67, 0.4, 1, 0.65, 1.5, 1],
  ],
  saturate: [
    [0.3, 0],
    [0.1, 0],
    [2, 0],
    [5, 0.1],
    [20, 0.2],
  ],
};

/** Longest side (px) up to which the CIFAR table applies. */
export const CIFAR_MAX_SIDE = 64;

export function tableNameFor(height: number, width: number): ParamTableName {
  return Math.max(height, width) <= CIFAR_MAX_SIDE ? 'cifar' : 'imagenet';
}

export function paramsFor(height: number, width: number): CorruptionParams {
  return tableNameFor(height, width) === 'cifar' ? CIFAR_PARAMS : IMAGENET_PARAMS;
}

/**
 * The values `np.arange(start, stop, step)` produces: length ceil((stop − start)/step) and
 * elements start + i·δ with δ = (start + step) − start (numpy fills float ranges from the first
 * two elements). This is why CIFAR severity 1 has 7 factors 1.00…1.06, not 6.
 */
export function npArange({ start, stop, step }: Arange): Float64Array {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(n);
  if (n === 0) return out;
  out[0] = start;
  if (n === 1) return out;
  out[1] = start + step;
  const delta = out[1] - start;
  for (let i = 2; i < n; i++) out[i] = start + i * delta;
  return out;
}
