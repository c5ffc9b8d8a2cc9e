/**
 * Reader for CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019; Zenodo 2535967 / 3555552).
 *
 * Layout: `<dir>/<corruption>.npy` is uint8 of shape (5·n, 32, 32, 3), NHWC, the n test images at
 * severity 1, then severity 2, … 5 (n = 10,000 for the published sets); `<dir>/labels.npy` holds the
 * n test labels repeated 5 times (uint8 in the published files; any integer dtype is accepted).
 *
 * Severity s therefore lives in rows (s−1)·n … s·n−1, which is the slice RobustBench's
 * `load_cifar10c` takes; we read only that byte range. `nExamples` keeps the first k images of the
 * block, again as RobustBench does (`x[:n_examples]`).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CtaError, listSome } from '../util/errors.js';
import { readNpy, readNpyHeader, readNpyRows, shapeString, toInt32 } from '../io/npy.js';
import type { ImageSet } from './image-set.js';

export const CIFAR_C_SEVERITIES = 5;
const H = 32;
const W = 32;
const C = 3;

export interface CifarCOptions {
  /** Number of classes (10 / 100); when given, every label must lie in [0, numClasses). */
  numClasses?: number;
  /** Keep only the first k images of the severity block (RobustBench semantics). */
  nExamples?: number;
  /**
   * Name of the sub-folder to look for when `dir` is a data root rather than the set itself
   * (default: 'CIFAR-10-C', or 'CIFAR-100-C' when numClasses is 100).
   */
  subfolder?: string;
}

/** The labels of a resolved CIFAR-C folder, read once and reusable for every corruption. */
export interface CifarCInfo {
  dir: string;
  /** Images per severity block (len(labels)/5). */
  n: number;
  /** All 5·n labels, as stored. */
  labels: Int32Array;
  /** Corruption names (file stems) present in the folder, sorted. */
  available: string[];
  numClasses?: number;
}

/** One severity block: k·32·32·3 bytes, NHWC, k = min(nExamples, n). */
export type CifarCBlock = ImageSet;

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Find the folder that holds `labels.npy`: `dir` itself, or `dir/<subfolder>` (so `--data-dir` may
 * name either the CIFAR-10-C folder or its parent, the layout RobustBench downloads into).
 */
export function resolveCifarCDir(dir: string, opts: CifarCOptions = {}): string {
  const sub = opts.subfolder ?? (opts.numClasses === 100 ? 'CIFAR-100-C' : 'CIFAR-10-C');
  const candidates = [dir, join(dir, sub)];
  for (const c of candidates) if (existsSync(join(c, 'labels.npy'))) return c;
  if (!isDir(dir)) {
    throw new CtaError(`CIFAR-C folder ${dir} does not exist (check --data-dir)`);
  }
  throw new CtaError(
    `missing labels.npy: looked for ${candidates.map((c) => join(c, 'labels.npy')).join(' and ')} ` +
      `(expected the ${sub} folder with <corruption>.npy and labels.npy; check --data-dir)`,
  );
}

/** Resolve the folder, read and validate labels.npy, and list the corruption files present. */
export async function openCifarC(dir: string, opts: CifarCOptions = {}): Promise<CifarCInfo> {
  const root = resolveCifarCDir(dir, opts);
  const labelsPath = join(root, 'labels.npy');
  const arr = await readNpy(labelsPath);
  const { header } = arr;
  if (header.shape.length !== 1 || header.shape[0] === 0 || header.shape[0] % CIFAR_C_SEVERITIES !== 0) {
    throw new CtaError(
      `${labelsPath}: expected a 1-D array of 5·n labels (n per severity), got shape ${shapeString(header.shape)}`,
    );
  }
  if (header.dtype === 'bool' || header.dtype === 'float32' || header.dtype === 'float64') {
    throw new CtaError(`${labelsPath}: expected an integer dtype for labels, got ${header.descr}`);
  }
  const labels = toInt32(arr.data, header.dtype, labelsPath);
  const k = opts.numClasses;
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i];
    if (y < 0 || (k !== undefined && y >= k)) {
      throw new CtaError(
        `${labelsPath}: label ${y} at index ${i} is out of range ` +
          (k !== undefined ? `[0, ${k}) for ${k} classes` : '(negative)'),
      );
    }
  }
  const available = readdirSync(root)
    .filter((f) => f.endsWith('.npy') && f !== 'labels.npy')
    .map((f) => f.slice(0, -4))
    .sort();
  return { dir: root, n: labels.length / CIFAR_C_SEVERITIES, labels, available, numClasses: k };
}

/**
 * Check that `<dir>/<corruption>.npy` exists and is uint8 (5·n, 32, 32, 3); returns its path.
 * Only the header is read (plus a file-size check), so this is cheap enough to run for every domain
 * before a long run starts.
 */
export async function checkCifarCFile(info: CifarCInfo, corruption: string): Promise<string> {
  const file = join(info.dir, `${corruption}.npy`);
  if (!existsSync(file)) {
    throw new CtaError(
      `missing corruption file ${file} (present in ${info.dir}: ${info.available.length ? listSome(info.available) : 'none'})`,
    );
  }
  const h = await readNpyHeader(file);
  const expected = [CIFAR_C_SEVERITIES * info.n, H, W, C];
  const shapeOk = h.shape.length === 4 && h.shape.every((d, i) => d === expected[i]);
  // A well-formed image file (uint8, 5·m rows of 32×32×3) whose m differs from labels.npy's n:
  // the images are a valid block, so the labels are the odd one out — name labels.npy first.
  const rows = h.shape[0];
  if (h.dtype === 'uint8' && !shapeOk && h.shape.length === 4 && h.shape.slice(1).every((d, i) => d === expected[i + 1]) && rows > 0 && rows % CIFAR_C_SEVERITIES === 0) {
    throw new CtaError(
      `${join(info.dir, 'labels.npy')}: ${CIFAR_C_SEVERITIES * info.n} labels (n = ${info.n} per severity), but ${file} holds ${rows} images ` +
        `(n = ${rows / CIFAR_C_SEVERITIES}); labels.npy needs one label per image row`,
    );
  }
  if (h.dtype !== 'uint8' || !shapeOk) {
    throw new CtaError(
      `${file}: expected uint8 (5·n,32,32,3) = uint8 ${shapeString(expected)} for n=${info.n} from labels.npy, ` +
        `got ${h.descr} ${shapeString(h.shape)}`,
    );
  }
  return file;
}

/**
 * Load one (corruption, severity) block: images NHWC uint8 and the matching labels.
 * `dir` may be a folder path (resolved as in `resolveCifarCDir`) or an already opened `CifarCInfo`.
 */
export async function loadCifarCDomain(
  dir: string | CifarCInfo,
  corruption: string,
  severity: number,
  opts: CifarCOptions = {},
): Promise<CifarCBlock> {
  if (!Number.isInteger(severity) || severity < 1 || severity > CIFAR_C_SEVERITIES) {
    throw new CtaError(`severity must be an integer 1…${CIFAR_C_SEVERITIES}, got ${severity}`);
  }
  const info = typeof dir === 'string' ? await openCifarC(dir, opts) : dir;
  const file = await checkCifarCFile(info, corruption);
  let k = info.n;
  if (opts.nExamples !== undefined) {
    if (!Number.isInteger(opts.nExamples) || opts.nExamples < 1) {
      throw new CtaError(`n-examples must be a positive integer, got ${opts.nExamples}`);
    }
    // Like RobustBench's x[:n_examples], asking for more than the block holds gives the whole block.
    k = Math.min(opts.nExamples, info.n);
  }
  const start = (severity - 1) * info.n;
  const arr = await readNpyRows(file, start, k);
  // Labels of the same rows. For the published files every block repeats the same 10,000 labels
  // (RobustBench simply uses labels[:k]); indexing the block keeps images and labels paired even
  // for a folder whose blocks were written in a different order.
  const labels = info.labels.slice(start, start + k);
  return { images: arr.data as Uint8Array, labels, n: k, height: H, width: W, channels: C };
}
