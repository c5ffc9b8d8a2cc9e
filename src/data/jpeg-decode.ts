/**
 * JPEG → 224×224 RGB uint8 (HWC) with sharp, reproducing the torchvision/PIL pre-processing of the
 * ImageNet-C protocol (docs/protocol.md#pre-processing, docs/data-formats.md#jpeg-decoding):
 *
 * - 'imagenetc': ImageNet-C files are already Resize(256) + CenterCrop(224) and saved at 224×224
 *   (docs/data-formats.md#imagenet-c); MECTA/EATA apply CenterCrop(224) + ToTensor, which is a plain
 *   decode for those files. Other sizes get torchvision's CenterCrop (zero padding when smaller).
 * - 'clean': the ImageNet validation images: Resize(256) (shorter side to 256, the longer to
 *   int(256·long/short), PIL bilinear) + CenterCrop(224).
 *
 * Decoding: sharp's libjpeg-turbo decode equals PIL 9.4's bit for bit
 * (docs/data-formats.md#jpeg-decoding; rechecked on the fixtures). Resizing: when shrinking,
 * libvips' `linear` reduce with shrink-on-load off is within ±2 levels of PIL's antialiased
 * bilinear (measured on photos from
 * 485×323 to 2400×1600, mean |Δ| ≈ 0.25) and runs in sharp's worker threads; when enlarging,
 * libvips samples differently (up to 15 levels off), so that rare case (ImageNet images shorter
 * than 256 px) uses a port of Pillow's fixed-point bilinear resampler, which is exact.
 * Crop offsets use Python's round-half-to-even, as torchvision's `int(round(...))` does (a
 * JavaScript Math.round would shift half the crops by one pixel).
 * Greyscale and CMYK files are converted to sRGB (PIL's `.convert('RGB')`; CMYK, absent from the
 * ImageNet validation set, goes through libvips' colour management and may differ from PIL).
 * Embedded ICC profiles are ignored, as PIL's loader ignores them (sharp would otherwise convert
 * such a file's colours to sRGB).
 */
import sharp from 'sharp';
import { CtaError } from '../util/errors.js';
import { resizePil } from './pil-resample.js';

export const CROP = 224;
export const RESIZE_SHORT = 256;

export type DecodePipeline = 'imagenetc' | 'clean';

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** torchvision `_compute_resized_output_size` for an int size: [width, height]. */
export function resizedSize(width: number, height: number, short = RESIZE_SHORT): [number, number] {
  if (width <= height) return [short, Math.trunc((short * height) / width)];
  return [Math.trunc((short * width) / height), short];
}

/** PIL `Image.resize((outW, outH), BILINEAR)` of an RGB HWC uint8 image. */
export function resizeBilinearPil(src: Uint8Array, H: number, W: number, outH: number, outW: number): Uint8Array {
  return resizePil(src, H, W, outH, outW, 'bilinear');
}

/**
 * torchvision CenterCrop(size) of an RGB HWC image: crop offset int(round((dim − size)/2)) where the
 * image is larger, zero padding ((size − dim)//2 before) where it is smaller.
 */
export function centerCrop(src: Uint8Array, H: number, W: number, size = CROP): Uint8Array {
  const axis = (dim: number) =>
    dim >= size ? { src: roundHalfEven((dim - size) / 2), dst: 0, len: size } : { src: 0, dst: Math.floor((size - dim) / 2), len: dim };
  const ay = axis(H);
  const ax = axis(W);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < ay.len; y++) {
    const s = ((ay.src + y) * W + ax.src) * 3;
    out.set(src.subarray(s, s + ax.len * 3), ((ay.dst + y) * size + ax.dst) * 3);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/** sharp on a file, reading the pixels as stored (no ICC transform, like PIL). */
const open = (path: string) => sharp(path, { ignoreIcc: true });

/** Decoded RGB uint8 HWC. */
async function decodeRaw(img: sharp.Sharp): Promise<{ data: Uint8Array; width: number; height: number }> {
  const { data, info } = await img.toColourspace('srgb').removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
}

/**
 * Decodes one image file to 224×224×3 uint8 (HWC) following `pipeline`. Any failure (unreadable,
 * truncated or not an image) becomes a CtaError naming the file.
 */
export async function decodeImage(path: string, pipeline: DecodePipeline): Promise<Uint8Array> {
  try {
    if (pipeline === 'imagenetc') {
      const { data, width, height } = await decodeRaw(open(path));
      return width === CROP && height === CROP ? data : centerCrop(data, height, width);
    }
    const img = open(path);
    const meta = await img.metadata();
    if (!meta.width || !meta.height) throw new Error('no image size in the header');
    const [rw, rh] = resizedSize(meta.width, meta.height);
    if (rw <= meta.width && rh <= meta.height) {
      // Shrinking (or no change): libvips in the worker pool, crop included.
      const resized = rw === meta.width && rh === meta.height ? img : img.resize(rw, rh, { kernel: 'linear', fit: 'fill', fastShrinkOnLoad: false });
      const crop = resized.extract({ left: roundHalfEven((rw - CROP) / 2), top: roundHalfEven((rh - CROP) / 2), width: CROP, height: CROP });
      const { data } = await decodeRaw(crop);
      return data;
    }
    const { data, width, height } = await decodeRaw(img);
    return centerCrop(resizeBilinearPil(data, height, width, rh, rw), rh, rw);
  } catch (e) {
    throw new CtaError(`cannot decode image ${path}: ${(e as Error).message}`);
  }
}
