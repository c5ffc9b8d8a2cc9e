/**
 * Minimal reader/writer for NumPy `.npy` files (format spec: numpy/lib/format.py, "NPY format"
 * versions 1.0, 2.0 and 3.0).
 *
 * Layout: magic `\x93NUMPY`, one byte major version, one byte minor version, then the header length
 * (little-endian u16 for v1, u32 for v2/v3), then the header itself — a Python dict literal
 * `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and terminated by
 * `\n` so that the array data starts at a multiple of 64 bytes (16 in very old numpy). v1/v2 headers
 * are latin-1, v3 headers UTF-8. The data follows as one contiguous buffer.
 *
 * Only "simple" dtypes are supported (one scalar kind, no structured records), because that is all
 * CIFAR-10-C and the label files need. The main reason this file exists is `readNpyRows`: a
 * CIFAR-10-C corruption file is 153.6 MB but one severity block is a fifth of it, so we read just that
 * byte range with a positioned read instead of loading the whole file (which RobustBench does).
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { CtaError } from '../util/errors.js';

export type NpyDType =
  | 'bool'
  | 'uint8'
  | 'int8'
  | 'uint16'
  | 'int16'
  | 'uint32'
  | 'int32'
  | 'uint64'
  | 'int64'
  | 'float32'
  | 'float64';

export type NpyData =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | BigUint64Array
  | BigInt64Array
  | Float32Array
  | Float64Array;

export interface NpyHeader {
  path: string;
  /** [major, minor] format version. */
  version: [number, number];
  /** The `descr` string exactly as written in the file, e.g. `|u1`, `<i8`. */
  descr: string;
  dtype: NpyDType;
  itemSize: number;
  /** Byte order of the data in the file (1-byte types count as little-endian). */
  littleEndian: boolean;
  shape: number[];
  /** Byte offset of the first data byte (magic + length field + header text). */
  dataOffset: number;
  /** Bytes of array data the header promises: prod(shape) · itemSize. */
  dataBytes: number;
  /** Actual size of the file on disk. */
  fileBytes: number;
  /** Elements in one row along axis 0 (product of shape[1:]); 1 for 1-D arrays. */
  rowElements: number;
  /** Bytes in one row along axis 0. */
  rowBytes: number;
}

export interface NpyArray {
  header: NpyHeader;
  /** Shape of `data` (for `readNpyRows`: `[nRows, ...shape.slice(1)]`). */
  shape: number[];
  data: NpyData;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

// descr "kind+size" → dtype. Kinds: b = bool, u = unsigned, i = signed, f = IEEE float.
const DESCR_TO_DTYPE: Record<string, NpyDType> = {
  b1: 'bool',
  u1: 'uint8',
  i1: 'int8',
  u2: 'uint16',
  i2: 'int16',
  u4: 'uint32',
  i4: 'int32',
  u8: 'uint64',
  i8: 'int64',
  f4: 'float32',
  f8: 'float64',
};

const DTYPE_INFO: Record<NpyDType, { code: string; size: number }> = {
  bool: { code: 'b1', size: 1 },
  uint8: { code: 'u1', size: 1 },
  int8: { code: 'i1', size: 1 },
  uint16: { code: 'u2', size: 2 },
  int16: { code: 'i2', size: 2 },
  uint32: { code: 'u4', size: 4 },
  int32: { code: 'i4', size: 4 },
  uint64: { code: 'u8', size: 8 },
  int64: { code: 'i8', size: 8 },
  float32: { code: 'f4', size: 4 },
  float64: { code: 'f8', size: 8 },
};

const HOST_LE = endianness() === 'LE';

/** Integer dtypes (what a label file may use). */
export function isIntegerDType(d: NpyDType): boolean {
  return d !== 'bool' && d !== 'float32' && d !== 'float64';
}

/** `(50000, 32, 32, 3)` — Python tuple notation, as numpy prints shapes, for error messages. */
export function shapeString(shape: readonly number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
}

function product(shape: readonly number[]): number {
  let p = 1;
  for (const d of shape) p *= d;
  return p;
}

async function openRead(path: string): Promise<FileHandle> {
  try {
    return await fsp.open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CtaError(`${path}: file not found`);
    if (code === 'EISDIR') throw new CtaError(`${path}: is a directory, expected an .npy file`);
    throw new CtaError(`${path}: cannot open (${code ?? String(e)})`);
  }
}

/** Positioned read of exactly `length` bytes into a fresh, 8-byte-aligned buffer. */
async function readExact(
  fh: FileHandle,
  path: string,
  position: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  // A fresh ArrayBuffer starts at offset 0, so typed-array views of any element size are aligned.
  const buf = new Uint8Array(new ArrayBuffer(length));
  let done = 0;
  while (done < length) {
    // read() may return fewer bytes than asked; loop until the range is filled or EOF.
    const { bytesRead } = await fh.read(buf, done, length - done, position + done);
    if (bytesRead === 0) {
      throw new CtaError(
        `${path}: truncated: expected ${length} bytes of ${what} at byte ${position}, ` +
          `but the file ends after ${position + done} bytes`,
      );
    }
    done += bytesRead;
  }
  return buf;
}

function parseDescr(path: string, descr: string): { dtype: NpyDType; littleEndian: boolean } {
  const m = /^([<>|=])([a-zA-Z]\d+)$/.exec(descr);
  const dtype = m ? DESCR_TO_DTYPE[m[2]] : undefined;
  if (!m || !dtype) {
    throw new CtaError(
      `${path}: unsupported npy dtype '${descr}' (supported: bool, u1/i1, u2/i2, u4/i4, u8/i8, f4, f8)`,
    );
  }
  // '|' = byte order not applicable (1-byte types), '=' = native order of the writer, which numpy
  // only emits on the host it ran on; treat both as the host order, which is little-endian here.
  const order = m[1];
  const littleEndian = order === '<' || ((order === '|' || order === '=') && HOST_LE);
  return { dtype, littleEndian: DTYPE_INFO[dtype].size === 1 ? true : littleEndian };
}

/** Parse the Python dict literal of an npy header (numpy writes it with `repr`). */
function parseHeaderDict(path: string, text: string): { descr: string; fortran: boolean; shape: number[] } {
  const bad = (why: string): CtaError =>
    new CtaError(`${path}: malformed npy header (${why}): ${JSON.stringify(text.trim().slice(0, 120))}`);
  if (/['"]descr['"]\s*:\s*\[/.test(text)) {
    throw new CtaError(`${path}: unsupported npy dtype (structured/record arrays are not supported)`);
  }
  const d = /['"]descr['"]\s*:\s*(['"])([^'"]*)\1/.exec(text);
  if (!d) throw bad("no 'descr'");
  const f = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(text);
  if (!f) throw bad("no 'fortran_order'");
  const s = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(text);
  if (!s) throw bad("no 'shape'");
  const parts = s[1]
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  const shape: number[] = [];
  for (const p of parts) {
    // Python 2 numpy wrote long ints as `10L`.
    const m = /^(\d+)L?$/.exec(p);
    if (!m) throw bad(`bad shape entry '${p}'`);
    shape.push(Number(m[1]));
  }
  return { descr: d[2], fortran: f[1] === 'True', shape };
}

/**
 * The magic, version and header length of an npy preamble (`pre`: the first 10–12 bytes of a
 * `size`-byte file or member). v1 has a 2-byte header length, v2/v3 a 4-byte one.
 */
function parsePreamble(pre: Uint8Array, size: number, label: string, notNpy: () => CtaError): { major: number; minor: number; headerStart: number; headerLen: number } {
  for (let i = 0; i < MAGIC.length; i++) if (pre[i] !== MAGIC[i]) throw notNpy();
  const major = pre[6];
  const minor = pre[7];
  if (major === 1) return { major, minor, headerStart: 10, headerLen: pre[8] | (pre[9] << 8) };
  if (major === 2 || major === 3) {
    if (size < 12) throw notNpy();
    return { major, minor, headerStart: 12, headerLen: (pre[8] | (pre[9] << 8) | (pre[10] << 16)) + pre[11] * 0x1000000 };
  }
  throw new CtaError(`${label}: unsupported npy format version ${major}.${minor} (supported: 1.x, 2.x, 3.x)`);
}

/** How the header errors name a standalone file and an in-memory `.npz` member. */
interface Wording {
  noun: string;
  fortran: string;
  truncated: (dataOffset: number, dataBytes: number, total: number) => string;
}
const FILE_WORDING: Wording = {
  noun: 'file',
  fortran: 'fortran_order is True; only C-order npy files are supported (re-save with np.save(path, np.ascontiguousarray(a)))',
  truncated: (off, data, total) => `so expected ${off + data} bytes (${off}-byte header + ${data} data bytes), but the file has ${total} bytes`,
};
const MEMBER_WORDING: Wording = {
  noun: 'array',
  fortran: 'fortran_order is True; only C-order npy arrays are supported (re-save with np.ascontiguousarray)',
  truncated: (off, data, total) => `so expected ${off + data} bytes, but the member has ${total}`,
};

/**
 * The header of an npy file or member of `total` bytes from its header text `raw` (after the
 * preamble; the data starts at `dataOffset`): dtype, shape and sizes, checked against `total`.
 */
function headerFromText(raw: Uint8Array, version: [number, number], dataOffset: number, total: number, label: string, words: Wording): NpyHeader {
  // v1/v2 headers are latin-1; v3 (numpy ≥1.17 for non-latin-1 field names) is UTF-8.
  const text = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString(version[0] === 3 ? 'utf8' : 'latin1');
  const { descr, fortran, shape } = parseHeaderDict(label, text);
  const { dtype, littleEndian } = parseDescr(label, descr);
  // Fortran order only changes the layout when two or more axes have length > 1; for vectors and
  // scalars the bytes are identical to C order, so those are accepted.
  if (fortran && shape.filter((d) => d > 1).length > 1) throw new CtaError(`${label}: ${words.fortran}`);
  const itemSize = DTYPE_INFO[dtype].size;
  const rowElements = product(shape.slice(1));
  const dataBytes = product(shape) * itemSize;
  if (total < dataOffset + dataBytes) {
    throw new CtaError(`${label}: truncated npy ${words.noun}: header says ${descr} ${shapeString(shape)}, ${words.truncated(dataOffset, dataBytes, total)}`);
  }
  return { path: label, version, descr, dtype, itemSize, littleEndian, shape, dataOffset, dataBytes, fileBytes: total, rowElements, rowBytes: rowElements * itemSize };
}

async function readHeaderFrom(fh: FileHandle, path: string): Promise<NpyHeader> {
  const { size } = await fh.stat();
  const notNpy = (): CtaError =>
    new CtaError(`${path}: not an npy file (expected the \\x93NUMPY magic at the start of the file)`);
  if (size < 10) throw notNpy();
  const pre = await readExact(fh, path, 0, Math.min(12, size), 'npy preamble');
  const { major, minor, headerStart, headerLen } = parsePreamble(pre, size, path, notNpy);
  const dataOffset = headerStart + headerLen;
  if (dataOffset > size) {
    throw new CtaError(
      `${path}: truncated npy file: header needs ${dataOffset} bytes but the file has ${size} bytes`,
    );
  }
  const raw = await readExact(fh, path, headerStart, headerLen, 'npy header');
  return headerFromText(raw, [major, minor], dataOffset, size, path, FILE_WORDING);
}

/** Read and validate the header of an npy file (also checks that the file holds all the data). */
export async function readNpyHeader(path: string): Promise<NpyHeader> {
  const fh = await openRead(path);
  try {
    return await readHeaderFrom(fh, path);
  } finally {
    await fh.close();
  }
}

/** View raw little/big-endian bytes as the typed array of `dtype` (swapping in place if needed). */
function viewAs(bytes: Uint8Array, dtype: NpyDType, littleEndian: boolean): NpyData {
  const size = DTYPE_INFO[dtype].size;
  if (size > 1 && littleEndian !== HOST_LE) {
    for (let i = 0; i < bytes.length; i += size) {
      for (let a = i, b = i + size - 1; a < b; a++, b--) {
        const t = bytes[a];
        bytes[a] = bytes[b];
        bytes[b] = t;
      }
    }
  }
  const buf = bytes.buffer;
  const off = bytes.byteOffset;
  const n = bytes.byteLength / size;
  switch (dtype) {
    case 'bool':
    case 'uint8':
      return bytes;
    case 'int8':
      return new Int8Array(buf, off, n);
    case 'uint16':
      return new Uint16Array(buf, off, n);
    case 'int16':
      return new Int16Array(buf, off, n);
    case 'uint32':
      return new Uint32Array(buf, off, n);
    case 'int32':
      return new Int32Array(buf, off, n);
    case 'uint64':
      return new BigUint64Array(buf, off, n);
    case 'int64':
      return new BigInt64Array(buf, off, n);
    case 'float32':
      return new Float32Array(buf, off, n);
    case 'float64':
      return new Float64Array(buf, off, n);
  }
}

/**
 * Read rows `startRow … startRow+nRows−1` along axis 0, touching only that byte range of the file
 * (positioned read at `dataOffset + startRow·rowBytes`). For CIFAR-10-C severity s with n images per
 * block this is `readNpyRows(file, (s−1)·n, n)`: 30.72 MB instead of 153.6 MB.
 */
export async function readNpyRows(path: string, startRow: number, nRows: number): Promise<NpyArray> {
  const fh = await openRead(path);
  try {
    const header = await readHeaderFrom(fh, path);
    if (header.shape.length === 0) {
      throw new CtaError(`${path}: is a 0-d npy array; cannot read rows from it`);
    }
    const total = header.shape[0];
    if (
      !Number.isInteger(startRow) ||
      !Number.isInteger(nRows) ||
      startRow < 0 ||
      nRows < 0 ||
      startRow + nRows > total
    ) {
      throw new CtaError(
        `${path}: rows ${startRow}…${startRow + nRows - 1} requested but the file has ${total} rows ` +
          `(shape ${shapeString(header.shape)})`,
      );
    }
    const bytes = await readExact(
      fh,
      path,
      header.dataOffset + startRow * header.rowBytes,
      nRows * header.rowBytes,
      `array data (rows ${startRow}…${startRow + nRows - 1})`,
    );
    return { header, shape: [nRows, ...header.shape.slice(1)], data: viewAs(bytes, header.dtype, header.littleEndian) };
  } finally {
    await fh.close();
  }
}

/** Read a whole npy file (meant for small files such as `labels.npy`). */
export async function readNpy(path: string): Promise<NpyArray> {
  const fh = await openRead(path);
  try {
    const header = await readHeaderFrom(fh, path);
    const bytes = await readExact(fh, path, header.dataOffset, header.dataBytes, 'array data');
    return { header, shape: header.shape.slice(), data: viewAs(bytes, header.dtype, header.littleEndian) };
  } finally {
    await fh.close();
  }
}

/**
 * Convert integer npy data to Int32Array (labels). Throws a CtaError naming `path` when the dtype is
 * not an integer type or a value does not fit in int32.
 */
export function toInt32(data: NpyData, dtype: NpyDType, path: string): Int32Array {
  if (!isIntegerDType(dtype)) {
    throw new CtaError(`${path}: expected an integer dtype, got ${dtype}`);
  }
  if (data instanceof Int32Array) return data;
  const out = new Int32Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = Number(data[i]);
    if (v < -2147483648 || v > 2147483647) {
      throw new CtaError(`${path}: value ${String(data[i])} at index ${i} does not fit in int32`);
    }
    out[i] = v;
  }
  return out;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

function typedFor(dtype: NpyDType, n: number): NpyData {
  switch (dtype) {
    case 'bool':
    case 'uint8':
      return new Uint8Array(n);
    case 'int8':
      return new Int8Array(n);
    case 'uint16':
      return new Uint16Array(n);
    case 'int16':
      return new Int16Array(n);
    case 'uint32':
      return new Uint32Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'uint64':
      return new BigUint64Array(n);
    case 'int64':
      return new BigInt64Array(n);
    case 'float32':
      return new Float32Array(n);
    case 'float64':
      return new Float64Array(n);
  }
}

function matchesDType(data: unknown, dtype: NpyDType): data is NpyData {
  switch (dtype) {
    case 'bool':
    case 'uint8':
      return data instanceof Uint8Array;
    case 'int8':
      return data instanceof Int8Array;
    case 'uint16':
      return data instanceof Uint16Array;
    case 'int16':
      return data instanceof Int16Array;
    case 'uint32':
      return data instanceof Uint32Array;
    case 'int32':
      return data instanceof Int32Array;
    case 'uint64':
      return data instanceof BigUint64Array;
    case 'int64':
      return data instanceof BigInt64Array;
    case 'float32':
      return data instanceof Float32Array;
    case 'float64':
      return data instanceof Float64Array;
  }
}

/**
 * The bytes of a v1.0 npy header for `dtype`/`shape`, byte-identical to what numpy (≥1.24) writes
 * (`_write_array_header` + `_wrap_header`): dict literal with keys in sorted order, 21 − len(str(
 * shape[0])) spare spaces so numpy can later grow axis 0 in place, then space padding and `\n` so the
 * data starts at a multiple of 64 (numpy adds a full 64 when already aligned). Falls back to v2.0
 * (u32 length) only when the header does not fit a u16, as numpy does.
 */
export function npyHeaderBytes(dtype: NpyDType, shape: readonly number[]): Uint8Array {
  const { code, size } = DTYPE_INFO[dtype];
  const descr = (size === 1 ? '|' : '<') + code;
  let dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeString(shape)}, }`;
  if (shape.length > 0) dict += ' '.repeat(Math.max(0, 21 - String(shape[0]).length));
  const build = (major: 1 | 2): Uint8Array => {
    const pre = major === 1 ? 10 : 12;
    const hlen = dict.length + 1; // + the terminating newline
    const padlen = 64 - ((pre + hlen) % 64);
    const total = pre + hlen + padlen;
    const out = new Uint8Array(total);
    out.set(MAGIC, 0);
    out[6] = major;
    out[7] = 0;
    new DataView(out.buffer).setUint16(8, (hlen + padlen) & 0xffff, true);
    if (major === 2) new DataView(out.buffer).setUint32(8, hlen + padlen, true);
    out.set(Buffer.from(dict + ' '.repeat(padlen) + '\n', 'latin1'), pre);
    return out;
  };
  const v1 = build(1);
  return v1.length - 10 <= 0xffff ? v1 : build(2);
}

/**
 * Write a C-order, little-endian npy file. `data` may be the matching typed array (written as is)
 * or any array of numbers (converted; integer dtypes via BigInt for 64-bit).
 */
export async function writeNpy(
  path: string,
  dtype: NpyDType,
  shape: readonly number[],
  data: NpyData | ArrayLike<number>,
): Promise<void> {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new CtaError(`writeNpy ${path}: bad shape ${shapeString(shape)}`);
  }
  const count = product(shape);
  if (data.length !== count) {
    throw new CtaError(
      `writeNpy ${path}: shape ${shapeString(shape)} needs ${count} elements, got ${data.length}`,
    );
  }
  let typed: NpyData;
  if (matchesDType(data, dtype)) {
    typed = data;
  } else {
    typed = typedFor(dtype, count);
    if (typed instanceof BigInt64Array || typed instanceof BigUint64Array) {
      for (let i = 0; i < count; i++) typed[i] = BigInt(Number((data as ArrayLike<number | bigint>)[i]));
    } else {
      const t = typed as Exclude<NpyData, BigInt64Array | BigUint64Array>;
      for (let i = 0; i < count; i++) t[i] = Number((data as ArrayLike<number | bigint>)[i]);
    }
  }
  const header = npyHeaderBytes(dtype, shape);
  let body = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  if (!HOST_LE && DTYPE_INFO[dtype].size > 1) {
    // Always write little-endian ('<' in descr), whatever the host.
    body = Uint8Array.from(body);
    const s = DTYPE_INFO[dtype].size;
    for (let i = 0; i < body.length; i += s) body.subarray(i, i + s).reverse();
  }
  try {
    const fh = await fsp.open(path, 'w');
    try {
      await writeAll(fh, header, 0);
      await writeAll(fh, body, header.length);
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (e instanceof CtaError) throw e;
    throw new CtaError(`${path}: cannot write npy file (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
}

/**
 * Parse a whole npy file held in memory (an `.npz` member, src/io/npz.ts). `label` names it in
 * errors. The data is copied into a fresh buffer, so typed-array views are aligned whatever the
 * member's offset inside the archive.
 */
export function parseNpyBytes(bytes: Uint8Array, label: string): NpyArray {
  const notNpy = (): CtaError => new CtaError(`${label}: not an npy array (expected the \\x93NUMPY magic at its start)`);
  if (bytes.length < 10) throw notNpy();
  const { major, minor, headerStart, headerLen } = parsePreamble(bytes, bytes.length, label, notNpy);
  const dataOffset = headerStart + headerLen;
  if (dataOffset > bytes.length) {
    throw new CtaError(`${label}: truncated npy array: header needs ${dataOffset} bytes but the member has ${bytes.length}`);
  }
  const header = headerFromText(bytes.subarray(headerStart, dataOffset), [major, minor], dataOffset, bytes.length, label, MEMBER_WORDING);
  const copy = new Uint8Array(new ArrayBuffer(header.dataBytes));
  copy.set(bytes.subarray(dataOffset, dataOffset + header.dataBytes));
  return { header, shape: header.shape.slice(), data: viewAs(copy, header.dtype, header.littleEndian) };
}
