/**
 * Clean labelled image sets for the on-the-fly corruption source (synthetic-c) and `cta-corrupt`.
 *
 * Three on-disk formats are accepted:
 *  - IDX (LeCun's MNIST format, also used by Fashion-MNIST), optionally gzipped: a 4-byte big-endian
 *    magic `0x0000 TT DD` (TT = element type, 0x08 = unsigned byte; DD = number of dimensions), DD
 *    big-endian uint32 sizes, then the row-major data. Images are `0x00000803` (n, rows, cols),
 *    labels `0x00000801` (n). The labels file is found beside the images by the standard naming
 *    `X-images-idx3-ubyte[.gz]` ↔ `X-labels-idx1-ubyte[.gz]` (also `X-images.idx3-ubyte`).
 *  - a CIFAR-10/100 binary batch (cifar-bin.ts).
 *  - an `.npy` pair: `<x>.npy` uint8 (n, h, w[, c]) NHWC and `labels.npy` in the same folder.
 *
 * The corruption generator works on RGB images and the RobustBench models take 32×32×3, so every
 * set comes out as uint8 NHWC with 3 channels: grey images are replicated to R=G=B, and 28×28 grey
 * images (MNIST, Fashion-MNIST) are first zero-padded by 2 px on each side to 32×32 — the usual way
 * MNIST is fed to 32×32 networks (LeNet-5's input; torchvision `Pad(2)`), which keeps the digit or
 * garment unscaled and centred.
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { constants as zc, gunzip, gunzipSync } from 'node:zlib';
import { promisify } from 'node:util';
import { CtaError } from '../util/errors.js';
import { readNpy, readNpyHeader, shapeString, toInt32 } from '../io/npy.js';
import { inspectCifarBinary, readCifarBinary } from './cifar-bin.js';
import type { ImageSet } from './image-set.js';

const gunzipAsync = promisify(gunzip);

/** IDX element type code for unsigned bytes — the only type image/label files use. */
const IDX_UBYTE = 0x08;
export const IDX_IMAGES_MAGIC = 0x00000803;
export const IDX_LABELS_MAGIC = 0x00000801;

export interface IdxArray {
  path: string;
  /** Sizes from the header, outermost first. */
  dims: number[];
  data: Uint8Array;
}

function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

async function readWhole(path: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CtaError(`${path}: file not found`);
    if (code === 'EISDIR') throw new CtaError(`${path}: is a directory, expected a data file`);
    throw new CtaError(`${path}: cannot read (${code ?? String(e)})`);
  }
}

/** The file's bytes, gunzipped when they start with the gzip magic (whatever the file is named). */
async function readMaybeGz(path: string): Promise<Uint8Array> {
  const raw = await readWhole(path);
  if (!isGzip(raw)) return raw;
  try {
    return new Uint8Array(await gunzipAsync(raw));
  } catch (e) {
    throw new CtaError(`${path}: corrupt or truncated gzip data (${(e as Error).message})`);
  }
}

/**
 * The first `want` bytes of the (decompressed) file, reading only its beginning: enough to check a
 * header without inflating 30 MB. Z_SYNC_FLUSH lets zlib hand back what it has from a cut stream.
 */
function peekMaybeGz(path: string, want: number): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CtaError(`${path}: ${code === 'ENOENT' ? 'file not found' : `cannot open (${code ?? String(e)})`}`);
  }
  try {
    // Deflate never expands by more than ~0.1 %, and the gzip header is small; 64 KiB is ample.
    const buf = new Uint8Array(Math.max(want, 65536));
    const got = readSync(fd, buf, 0, buf.length, 0);
    const head = buf.subarray(0, got);
    if (!isGzip(head)) return head.subarray(0, Math.min(want, got));
    try {
      const out = gunzipSync(head, { finishFlush: zc.Z_SYNC_FLUSH });
      return new Uint8Array(out.buffer, out.byteOffset, Math.min(want, out.length));
    } catch (e) {
      throw new CtaError(`${path}: corrupt gzip data (${(e as Error).message})`);
    }
  } finally {
    closeSync(fd);
  }
}

function hex32(v: number): string {
  return '0x' + (v >>> 0).toString(16).padStart(8, '0');
}

interface IdxHeader {
  magic: number;
  dims: number[];
  headerBytes: number;
  dataBytes: number;
}

/** Parse and check an IDX header from the file's first bytes (`ndims`: required dimension count). */
function parseIdxHeader(path: string, bytes: Uint8Array, ndims?: number): IdxHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) throw new CtaError(`${path}: too short for an IDX file (${bytes.length} bytes)`);
  const magic = view.getUint32(0, false);
  const type = bytes[2];
  const nd = bytes[3];
  if (bytes[0] !== 0 || bytes[1] !== 0 || type !== IDX_UBYTE || nd < 1) {
    throw new CtaError(
      `${path}: not an unsigned-byte IDX file (magic ${hex32(magic)}; expected ${hex32(IDX_IMAGES_MAGIC)} for images ` +
        `or ${hex32(IDX_LABELS_MAGIC)} for labels)`,
    );
  }
  if (ndims !== undefined && nd !== ndims) {
    const want = ndims === 1 ? hex32(IDX_LABELS_MAGIC) : ndims === 3 ? hex32(IDX_IMAGES_MAGIC) : `${ndims} dimensions`;
    throw new CtaError(`${path}: IDX magic ${hex32(magic)} has ${nd} dimension(s), expected ${want}`);
  }
  const headerBytes = 4 + 4 * nd;
  if (bytes.length < headerBytes) throw new CtaError(`${path}: truncated IDX header (${bytes.length} of ${headerBytes} bytes)`);
  const dims: number[] = [];
  let count = 1;
  for (let i = 0; i < nd; i++) {
    const d = view.getUint32(4 + 4 * i, false);
    dims.push(d);
    count *= d;
  }
  return { magic, dims, headerBytes, dataBytes: count };
}

/** Read a whole unsigned-byte IDX file (gzipped or not); `ndims` checks the magic's dimension count. */
export async function readIdx(path: string, ndims?: number): Promise<IdxArray> {
  const bytes = await readMaybeGz(path);
  const h = parseIdxHeader(path, bytes, ndims);
  const have = bytes.length - h.headerBytes;
  if (have < h.dataBytes) {
    throw new CtaError(
      `${path}: truncated: header promises ${shapeString(h.dims)} = ${h.dataBytes} bytes of data, file has ${have}`,
    );
  }
  if (have > h.dataBytes) {
    throw new CtaError(`${path}: ${have - h.dataBytes} bytes after the ${shapeString(h.dims)} data (not a single IDX array?)`);
  }
  return { path, dims: h.dims, data: bytes.subarray(h.headerBytes) };
}

/** Header of an IDX file without reading the data (first 64 KiB only, even when gzipped). */
export function readIdxHeader(path: string, ndims?: number): { dims: number[] } {
  const h = parseIdxHeader(path, peekMaybeGz(path, 4 + 4 * 255), ndims);
  return { dims: h.dims };
}

/** Is this file IDX (by its magic, after gunzip)? Only the start of the file is read. */
export function isIdxFile(path: string): boolean {
  const b = peekMaybeGz(path, 4);
  return b.length === 4 && b[0] === 0 && b[1] === 0 && b[2] === IDX_UBYTE && b[3] >= 1;
}

// `t10k-images-idx3-ubyte.gz` → `t10k-labels-idx1-ubyte.gz`; the '.' variant is how some MNIST
// mirrors name them (`t10k-images.idx3-ubyte`).
const IMAGES_NAME = /^(.*?)(images)([-.])idx3([-.]ubyte)(\.gz)?$/i;

/**
 * The labels file that goes with an IDX images file. Tries the same compression first, then the
 * other (a gzipped images file next to an uncompressed labels file is common after partial unzips).
 */
export function idxLabelsPath(imagesPath: string): string {
  const m = IMAGES_NAME.exec(basename(imagesPath));
  if (!m) {
    throw new CtaError(
      `${imagesPath}: cannot find the labels file: IDX images must be named X-images-idx3-ubyte[.gz] ` +
        `so that X-labels-idx1-ubyte[.gz] beside it can be found`,
    );
  }
  const [, stem, word, sep, ubyte, gz] = m;
  const base = `${stem}${word === 'IMAGES' ? 'LABELS' : 'labels'}${sep}idx1${ubyte}`;
  const dir = dirname(imagesPath);
  const candidates = gz ? [base + gz, base] : [base, base + '.gz'];
  for (const c of candidates) if (existsSync(join(dir, c))) return join(dir, c);
  throw new CtaError(`${imagesPath}: labels file not found: expected ${join(dir, candidates[0])} beside it`);
}

/** A clean labelled set, uint8 NHWC RGB. */
export type CleanSet = ImageSet;

export type CleanFormat = 'idx' | 'cifar-bin' | 'npy';

export interface CleanInfo {
  format: CleanFormat;
  /** Images in the file (before any `nExamples` cut). */
  n: number;
  /** Output size after the grey → RGB / 28 → 32 conversion. */
  height: number;
  width: number;
  /** The files read: images first, then labels (when separate). */
  files: string[];
}

export interface LoadCleanOptions {
  /** Keep only the first k images (RobustBench `n_examples`). */
  nExamples?: number;
}

/** Border added on each side: 28×28 grey (MNIST-like) is padded to 32×32; nothing else is. */
function padOf(h: number, w: number, c: number): number {
  return c === 1 && h === 28 && w === 28 ? 2 : 0;
}

/** Output size for an input of h×w×c (always 3 channels). */
function outSize(h: number, w: number, c: number): { height: number; width: number } {
  const pad = padOf(h, w, c);
  return { height: h + 2 * pad, width: w + 2 * pad };
}

/**
 * First `n` images of an NHWC uint8 buffer (c = 1 or 3) as RGB, zero-padding grey 28×28 to 32×32.
 * Exported for tests.
 */
export function toRgb(src: Uint8Array, n: number, h: number, w: number, c: number): { images: Uint8Array; height: number; width: number } {
  const pad = padOf(h, w, c);
  const { height, width } = outSize(h, w, c);
  const out = new Uint8Array(n * height * width * 3);
  if (c === 3) {
    out.set(src.subarray(0, n * h * w * 3));
  } else {
    const inPix = h * w;
    const outPix = height * width;
    for (let i = 0; i < n; i++) {
      for (let y = 0; y < h; y++) {
        const s = i * inPix + y * w;
        let d = (i * outPix + (y + pad) * width + pad) * 3;
        for (let x = 0; x < w; x++, d += 3) {
          const v = src[s + x];
          out[d] = v;
          out[d + 1] = v;
          out[d + 2] = v;
        }
      }
    }
  }
  return { images: out, height, width };
}

function clip(total: number, nExamples: number | undefined): number {
  if (nExamples === undefined) return total;
  if (!Number.isInteger(nExamples) || nExamples < 1) throw new CtaError(`n-examples must be a positive integer, got ${nExamples}`);
  return Math.min(total, nExamples);
}

/** (n, h, w) or (n, h, w, c) with c ∈ {1, 3}; anything else is an error naming the file. */
function imageDims(path: string, shape: readonly number[]): { n: number; h: number; w: number; c: number } {
  const ok = (shape.length === 3 || (shape.length === 4 && (shape[3] === 1 || shape[3] === 3))) && shape.slice(1).every((d) => d > 0);
  if (!ok) {
    throw new CtaError(`${path}: expected images of shape (n, h, w) grey or (n, h, w, 1|3) NHWC, got ${shapeString(shape)}`);
  }
  if (shape[0] === 0) throw new CtaError(`${path}: holds no images (shape ${shapeString(shape)})`);
  return { n: shape[0], h: shape[1], w: shape[2], c: shape.length === 4 ? shape[3] : 1 };
}

function npyLabelsPath(imagesPath: string): string {
  if (basename(imagesPath) === 'labels.npy') {
    throw new CtaError(`${imagesPath}: this is the labels file; pass the images .npy (labels.npy is found beside it)`);
  }
  const p = join(dirname(imagesPath), 'labels.npy');
  if (!existsSync(p)) throw new CtaError(`${imagesPath}: labels file not found: expected ${p} beside it`);
  return p;
}

function formatOf(path: string): CleanFormat {
  if (!existsSync(path)) throw new CtaError(`${path}: file not found`);
  if (statSync(path).isDirectory()) {
    throw new CtaError(`${path}: is a directory; expected an IDX images file, a CIFAR binary batch or an .npy file`);
  }
  if (path.toLowerCase().endsWith('.npy')) return 'npy';
  if (isIdxFile(path)) return 'idx';
  // inspectCifarBinary words the error if the size does not fit CIFAR records either.
  try {
    inspectCifarBinary(path);
  } catch (e) {
    if (e instanceof CtaError) {
      throw new CtaError(`${path}: not an IDX images file, an .npy file or a CIFAR binary batch (${e.message.replace(`${path}: `, '')})`);
    }
    throw e;
  }
  return 'cifar-bin';
}

/** The files `loadClean(path)` reads (images, then labels), checking they exist. Cheap and sync. */
export function cleanFiles(path: string): string[] {
  const format = formatOf(path);
  if (format === 'idx') return [path, idxLabelsPath(path)];
  if (format === 'npy') return [path, npyLabelsPath(path)];
  return [path];
}

/** Format, size and files of a clean set from headers only (no image data is read). */
export async function inspectClean(path: string): Promise<CleanInfo> {
  const format = formatOf(path);
  if (format === 'cifar-bin') {
    const { n } = inspectCifarBinary(path);
    return { format, n, height: 32, width: 32, files: [path] };
  }
  if (format === 'idx') {
    const { dims } = readIdxHeader(path);
    const d = imageDims(path, dims);
    const labelsPath = idxLabelsPath(path);
    const { dims: ld } = readIdxHeader(labelsPath, 1);
    if (ld[0] !== d.n) throw new CtaError(`${labelsPath}: ${ld[0]} labels for the ${d.n} images of ${path}`);
    return { format, n: d.n, ...outSize(d.h, d.w, d.c), files: [path, labelsPath] };
  }
  const h = await readNpyHeader(path);
  if (h.dtype !== 'uint8') throw new CtaError(`${path}: expected uint8 images, got dtype ${h.descr}`);
  const d = imageDims(path, h.shape);
  const labelsPath = npyLabelsPath(path);
  const lh = await readNpyHeader(labelsPath);
  if (lh.shape.length !== 1 || lh.shape[0] !== d.n) {
    throw new CtaError(`${labelsPath}: expected ${d.n} labels (shape (${d.n},)) for ${path}, got shape ${shapeString(lh.shape)}`);
  }
  return { format, n: d.n, ...outSize(d.h, d.w, d.c), files: [path, labelsPath] };
}

/**
 * Load a clean labelled set (IDX images + labels, CIFAR binary batch, or `<x>.npy` + `labels.npy`)
 * as uint8 NHWC RGB; grey 28×28 becomes 32×32×3 (see the file comment).
 */
export async function loadClean(path: string, opts: LoadCleanOptions = {}): Promise<CleanSet> {
  const format = formatOf(path);
  if (format === 'cifar-bin') {
    const d = await readCifarBinary(path, { nExamples: opts.nExamples });
    return { images: d.images, labels: d.labels, n: d.n, height: d.height, width: d.width, channels: d.channels };
  }
  let raw: Uint8Array;
  let shape: number[];
  let labels: Int32Array;
  let labelsPath: string;
  if (format === 'idx') {
    labelsPath = idxLabelsPath(path);
    const [img, lab] = await Promise.all([readIdx(path), readIdx(labelsPath, 1)]);
    raw = img.data;
    shape = img.dims;
    labels = Int32Array.from(lab.data);
  } else {
    labelsPath = npyLabelsPath(path);
    const [img, lab] = await Promise.all([readNpy(path), readNpy(labelsPath)]);
    if (img.header.dtype !== 'uint8') throw new CtaError(`${path}: expected uint8 images, got dtype ${img.header.descr}`);
    if (lab.header.shape.length !== 1) throw new CtaError(`${labelsPath}: expected a 1-D label array, got shape ${shapeString(lab.header.shape)}`);
    raw = img.data as Uint8Array;
    shape = img.shape;
    labels = toInt32(lab.data, lab.header.dtype, labelsPath);
  }
  const d = imageDims(path, shape);
  if (labels.length !== d.n) throw new CtaError(`${labelsPath}: ${labels.length} labels for the ${d.n} images of ${path}`);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] < 0) throw new CtaError(`${labelsPath}: negative label ${labels[i]} at index ${i}`);
  }
  const n = clip(d.n, opts.nExamples);
  const { images, height, width } = toRgb(raw, n, d.h, d.w, d.c);
  return { images, labels: labels.slice(0, n), n, height, width, channels: 3 };
}
