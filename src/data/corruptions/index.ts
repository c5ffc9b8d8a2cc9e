/**
 * CIFAR-10-C / ImageNet-C corruption generator in plain TypeScript (Hendrycks & Dietterich,
 * "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019;
 * scripts make_cifar_c.py / make_imagenet_c.py). Images with longer side ≤ 64 px use the CIFAR
 * severity table, larger ones the ImageNet table (params.ts).
 *
 * Randomness comes from the project's seeded Rng, so a seed gives byte-identical output; the
 * published sets were drawn from numpy's unseeded global RNG and cannot be regenerated bit for bit
 * by anyone, so the aim is the same formulas (deterministic corruptions match the Python reference
 * to the grey level, see the parity tests) and the same distributions for the random ones.
 *
 * Known deviations: frost uses a procedural texture unless `frostDir` points at the five photos;
 * motion blur and snow reproduce ImageMagick's motion blur in TypeScript (no ImageMagick);
 * ImageNet-size outputs are passed through the JPEG q=85 save of make_imagenet_c unless
 * `jpegRoundTrip: false`.
 */
import type { Rng } from '../../util/rng.js';
import { CtaError, listSome } from '../../util/errors.js';
import { defocusBlur, gaussianBlur, glassBlur, motionBlur, zoomBlur } from './blur.js';
import { checkImage, type RgbImage } from './common.js';
import { brightness, contrast, elasticTransform, jpegCompression, jpegRoundTrip, pixelate, saturate } from './digital.js';
import { frost } from './frost.js';
import { gaussianNoise, impulseNoise, shotNoise, speckleNoise } from './noise.js';
import { paramsFor, tableNameFor, type CorruptionParams, type ParamTableName } from './params.js';
import { fog, snow, spatter } from './weather.js';

export type { RgbImage } from './common.js';
export { CIFAR_PARAMS, IMAGENET_PARAMS, paramsFor, tableNameFor, npArange } from './params.js';

export interface CorruptOptions {
  /** Folder with frost1…frost5 (.png/.jpg) — the standard frost photos. Without it frost is procedural. */
  frostDir?: string;
  /**
   * Re-encode the result as JPEG q=85 and decode it, as make_imagenet_c.py saves every image.
   * Default: true for ImageNet-size images (longer side > 64), false for CIFAR-size ones (CIFAR-C is
   * stored losslessly).
   */
  jpegRoundTrip?: boolean;
}

/** One corruption at one severity (1…5) with the parameter table chosen for the image size. */
export type CorruptionFn = (
  image: RgbImage,
  severity: number,
  rng: Rng,
  opts: CorruptOptions,
) => Uint8Array | Promise<Uint8Array>;

type Names =
  | 'gaussian_noise'
  | 'shot_noise'
  | 'impulse_noise'
  | 'defocus_blur'
  | 'glass_blur'
  | 'motion_blur'
  | 'zoom_blur'
  | 'snow'
  | 'frost'
  | 'fog'
  | 'brightness'
  | 'contrast'
  | 'elastic_transform'
  | 'pixelate'
  | 'jpeg_compression'
  | 'speckle_noise'
  | 'gaussian_blur'
  | 'spatter'
  | 'saturate';

export type CorruptionName = Names;

const P = (img: RgbImage): CorruptionParams => paramsFor(img.height, img.width);

/** The 19 corruptions, keyed by the file names of CIFAR-10-C / ImageNet-C, in the scripts' order. */
export const CORRUPTION_FUNCS: { readonly [K in CorruptionName]: CorruptionFn } = {
  gaussian_noise: (img, s, rng) => gaussianNoise(img, P(img).gaussian_noise[s - 1], rng),
  shot_noise: (img, s, rng) => shotNoise(img, P(img).shot_noise[s - 1], rng),
  impulse_noise: (img, s, rng) => impulseNoise(img, P(img).impulse_noise[s - 1], rng),
  defocus_blur: (img, s) => defocusBlur(img, P(img).defocus_blur[s - 1]),
  glass_blur: (img, s, rng) => glassBlur(img, P(img).glass_blur[s - 1], rng),
  motion_blur: (img, s, rng) => motionBlur(img, P(img).motion_blur[s - 1], rng),
  zoom_blur: (img, s) => zoomBlur(img, P(img).zoom_blur[s - 1]),
  snow: (img, s, rng) => snow(img, P(img).snow[s - 1], rng),
  frost: (img, s, rng, opts) => frost(img, P(img).frost[s - 1], P(img).frostScale, rng, opts.frostDir),
  fog: (img, s, rng) => fog(img, P(img).fog[s - 1], P(img).fogMapSize, rng),
  brightness: (img, s) => brightness(img, P(img).brightness[s - 1]),
  contrast: (img, s) => contrast(img, P(img).contrast[s - 1]),
  elastic_transform: (img, s, rng) => elasticTransform(img, P(img).elastic_transform[s - 1], rng),
  pixelate: (img, s) => pixelate(img, P(img).pixelate[s - 1]),
  jpeg_compression: (img, s) => jpegCompression(img, P(img).jpeg_compression[s - 1]),
  speckle_noise: (img, s, rng) => speckleNoise(img, P(img).speckle_noise[s - 1], rng),
  gaussian_blur: (img, s) => gaussianBlur(img, P(img).gaussian_blur[s - 1]),
  spatter: (img, s, rng) => spatter(img, P(img).spatter[s - 1], rng),
  saturate: (img, s) => saturate(img, P(img).saturate[s - 1]),
};

export const CORRUPTION_NAMES = Object.freeze(Object.keys(CORRUPTION_FUNCS)) as readonly CorruptionName[];

/** Corruptions that draw random numbers (the others ignore the Rng). */
export const STOCHASTIC_CORRUPTIONS: readonly CorruptionName[] = Object.freeze([
  'gaussian_noise',
  'shot_noise',
  'impulse_noise',
  'glass_blur',
  'motion_blur',
  'snow',
  'frost',
  'fog',
  'elastic_transform',
  'speckle_noise',
  'spatter',
]);

export function isCorruptionName(name: string): name is CorruptionName {
  return Object.prototype.hasOwnProperty.call(CORRUPTION_FUNCS, name);
}

function checkArgs(name: string, severity: number): asserts name is CorruptionName {
  if (!isCorruptionName(name)) {
    throw new CtaError(`unknown corruption "${name}" (known: ${listSome([...CORRUPTION_NAMES], 19)})`);
  }
  if (!Number.isInteger(severity) || severity < 1 || severity > 5) {
    throw new CtaError(`corruption severity must be an integer 1…5 (got ${severity})`);
  }
}

/**
 * Corrupt one HWC RGB uint8 image. Returns a new buffer of the same size; the input is not modified.
 * Async because JPEG (and frost photos) go through sharp.
 */
export async function corrupt(
  name: string,
  image: RgbImage,
  severity: number,
  rng: Rng,
  opts: CorruptOptions = {},
): Promise<Uint8Array> {
  checkArgs(name, severity);
  checkImage(image);
  let out = await CORRUPTION_FUNCS[name](image, severity, rng, opts);
  const table = tableNameFor(image.height, image.width);
  if (opts.jpegRoundTrip ?? table === 'imagenet') out = await jpegRoundTrip(out, image.height, image.width, 85);
  return out;
}

export interface CorruptionInfo {
  name: CorruptionName;
  severity: number;
  table: ParamTableName;
  /** The severity's parameter tuple from the table. */
  params: unknown;
  /** Only for frost: where the frost layer comes from ('procedural' is non-standard). */
  frost?: 'procedural' | 'photos';
  /** Whether the output went through the JPEG q=85 round trip. */
  jpeg85: boolean;
}

/** Metadata for run manifests: which table and parameters a corruption uses, and the frost source. */
export function corruptionInfo(
  name: string,
  height: number,
  width: number,
  severity: number,
  opts: CorruptOptions = {},
): CorruptionInfo {
  checkArgs(name, severity);
  const table = tableNameFor(height, width);
  const params = paramsFor(height, width)[name][severity - 1];
  const info: CorruptionInfo = { name, severity, table, params, jpeg85: opts.jpegRoundTrip ?? table === 'imagenet' };
  if (name === 'frost') info.frost = opts.frostDir ? 'photos' : 'procedural';
  return info;
}
