/**
 * Reader for the "binary version" of CIFAR-10 / CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html),
 * used for the clean "original" domain of the continual stream.
 *
 * CIFAR-10 (`cifar-10-batches-bin/test_batch.bin`): 10,000 records of 3073 bytes — 1 label byte
 * (0…9), then 3072 pixel bytes: the 1024 red values, 1024 green, 1024 blue, each plane row-major
 * 32×32 (i.e. CHW). CIFAR-100 (`cifar-100-binary/test.bin`): 3074-byte records with 2 label bytes,
 * coarse (0…19) then fine (0…99); we use the fine label, the one CIFAR-100-C is scored against.
 * The two are told apart by the file size (a multiple of 3073 vs 3074).
 */
import { existsSync, promises as fsp, statSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { CtaError } from '../util/errors.js';

export type CifarVariant = 'cifar10' | 'cifar100';

const PIXELS = 32 * 32;
const IMAGE_BYTES = 3 * PIXELS;
const RECORD: Record<CifarVariant, number> = { cifar10: 1 + IMAGE_BYTES, cifar100: 2 + IMAGE_BYTES };
const CLASSES: Record<CifarVariant, number> = { cifar10: 10, cifar100: 100 };

export interface CifarBinOptions {
  /** Keep only the first k records. */
  nExamples?: number;
  /** Force the variant instead of detecting it from the file size. */
  variant?: CifarVariant;
}

export interface CifarBinData {
  /** n·32·32·3 bytes, NHWC (converted from the file's CHW planes). */
  images: Uint8Array;
  labels: Int32Array;
  n: number;
  variant: CifarVariant;
  height: number;
  width: number;
  channels: number;
}

/** Decide CIFAR-10 vs CIFAR-100 from the file size (and, if both divide it, the file name). */
export function detectCifarVariant(path: string, size: number): CifarVariant {
  const is10 = size > 0 && size % RECORD.cifar10 === 0;
  const is100 = size > 0 && size % RECORD.cifar100 === 0;
  if (is10 && !is100) return 'cifar10';
  if (is100 && !is10) return 'cifar100';
  if (is10 && is100) {
    // Only sizes that are multiples of 3073·3074 bytes get here; fall back on the official names.
    const name = basename(path);
    if (/^(test|train)\.bin$/.test(name)) return 'cifar100';
    if (/batch/.test(name)) return 'cifar10';
  }
  throw new CtaError(
    `${path}: not a CIFAR binary batch: size ${size} bytes is not a multiple of ` +
      `${RECORD.cifar10} (CIFAR-10 records) or ${RECORD.cifar100} (CIFAR-100 records)`,
  );
}

/** Variant and record count of a CIFAR binary file from its size alone (no data read). */
export function inspectCifarBinary(path: string, variant?: CifarVariant): { variant: CifarVariant; n: number } {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new CtaError(`${path}: file not found`);
  }
  const v = variant ?? detectCifarVariant(path, size);
  if (size % RECORD[v] !== 0) {
    throw new CtaError(`${path}: size ${size} bytes is not a multiple of the ${v} record size ${RECORD[v]}`);
  }
  return { variant: v, n: size / RECORD[v] };
}

/** Parse a CIFAR-10/100 binary file into NHWC uint8 images and int32 labels. */
export async function readCifarBinary(path: string, opts: CifarBinOptions = {}): Promise<CifarBinData> {
  let fh: FileHandle;
  try {
    fh = await fsp.open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CtaError(`${path}: ${code === 'ENOENT' ? 'file not found' : `cannot open (${code ?? String(e)})`}`);
  }
  try {
    const { size } = await fh.stat();
    const variant = opts.variant ?? detectCifarVariant(path, size);
    const rec = RECORD[variant];
    const total = Math.floor(size / rec);
    if (opts.variant && size % rec !== 0) {
      throw new CtaError(`${path}: size ${size} bytes is not a multiple of the ${variant} record size ${rec}`);
    }
    let n = total;
    if (opts.nExamples !== undefined) {
      if (!Number.isInteger(opts.nExamples) || opts.nExamples < 1) {
        throw new CtaError(`n-examples must be a positive integer, got ${opts.nExamples}`);
      }
      n = Math.min(opts.nExamples, total);
    }
    // Only the first n records are read.
    const raw = Buffer.alloc(n * rec);
    let done = 0;
    while (done < raw.length) {
      const { bytesRead } = await fh.read(raw, done, raw.length - done, done);
      if (bytesRead === 0) {
        throw new CtaError(`${path}: truncated: expected ${raw.length} bytes, file ended after ${done}`);
      }
      done += bytesRead;
    }
    const labelBytes = rec - IMAGE_BYTES;
    const images = new Uint8Array(n * IMAGE_BYTES);
    const labels = new Int32Array(n);
    const classes = CLASSES[variant];
    for (let i = 0; i < n; i++) {
      const base = i * rec;
      // CIFAR-100: byte 0 is the coarse label, byte 1 the fine label.
      const y = raw[base + labelBytes - 1];
      if (y >= classes) {
        throw new CtaError(
          `${path}: record ${i} has label ${y}, outside 0…${classes - 1} for ${variant} ` +
            `(is this really a ${variant} binary file?)`,
        );
      }
      labels[i] = y;
      const px = base + labelBytes;
      const out = i * IMAGE_BYTES;
      // CHW planes → HWC interleaved.
      for (let p = 0; p < PIXELS; p++) {
        images[out + 3 * p] = raw[px + p];
        images[out + 3 * p + 1] = raw[px + PIXELS + p];
        images[out + 3 * p + 2] = raw[px + 2 * PIXELS + p];
      }
    }
    return { images, labels, n, variant, height: 32, width: 32, channels: 3 };
  } finally {
    await fh.close();
  }
}

/** The official folder/file names of the clean test set. */
function cleanDefaults(variant: CifarVariant): { folder: string; file: string } {
  return variant === 'cifar100'
    ? { folder: 'cifar-100-binary', file: 'test.bin' }
    : { folder: 'cifar-10-batches-bin', file: 'test_batch.bin' };
}

/**
 * Locate the clean test batch. An explicit `--clean-path` wins (a file, or a folder holding the
 * official file name); otherwise try `<data-dir>/cifar-10-batches-bin/test_batch.bin`, then
 * `<data-dir>/../cifar-10-batches-bin/test_batch.bin` (for `--data-dir` pointing at the CIFAR-10-C
 * folder itself). CIFAR-100 uses `cifar-100-binary/test.bin` instead.
 */
export function resolveCleanPath(
  cleanPath: string | undefined,
  dataDir: string,
  variant: CifarVariant = 'cifar10',
): string {
  const { folder, file } = cleanDefaults(variant);
  if (cleanPath !== undefined && cleanPath !== '') {
    if (existsSync(cleanPath) && statSync(cleanPath).isDirectory()) {
      const inside = join(cleanPath, file);
      if (existsSync(inside)) return inside;
      throw new CtaError(`--clean-path ${cleanPath} is a folder without ${file} (expected the ${variant} binary test batch)`);
    }
    if (!existsSync(cleanPath)) {
      throw new CtaError(`--clean-path ${cleanPath}: file not found (expected the ${variant} binary test batch ${file})`);
    }
    return cleanPath;
  }
  // join() normalises the '..', so the second path is reported as the real parent folder.
  const tried = [join(dataDir, folder, file), join(resolve(dataDir), '..', folder, file)];
  for (const t of tried) if (existsSync(t)) return t;
  throw new CtaError(
    `clean ${variant} test set not found: tried ${tried[0]} and ${tried[1]}; ` +
      `pass --clean-path <path to ${file}>`,
  );
}
