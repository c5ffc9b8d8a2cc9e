/**
 * safetensors reader and writer.
 *
 * Format (huggingface/safetensors, "Format" section of its README): an 8-byte little-endian u64 N,
 * then N bytes of UTF-8 JSON (the writer may pad it with spaces), then the data section. The JSON maps
 * each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} where the offsets are relative to
 * the start of the data section (byte 8 + N); an optional "__metadata__" entry maps strings to strings.
 * Data is little-endian, row-major, with no strides; tensors must not overlap and the header is capped
 * at 100 MB by the reference implementation. Nothing guarantees that a tensor starts at an address
 * aligned to its element size, so the decoders below copy when a typed-array view is not possible.
 *
 * The dtype helpers here (decodeLittleEndian / encodeLittleEndian) are shared with the PyTorch reader,
 * whose storages use the same little-endian element encodings.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { CtaError, listSome } from '../util/errors.js';
import type { RawDType, StateDict } from './types.js';

/** Element size in bytes of each dtype as stored on disk. */
export const ITEM_SIZE: Readonly<Record<RawDType, number>> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  int16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** safetensors dtype codes this project reads (the spec also has U16/U32/U64/F8_*, which no model here uses). */
const CODE_TO_DTYPE: Readonly<Record<string, RawDType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  F64: 'float64',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};
const DTYPE_TO_CODE = Object.fromEntries(Object.entries(CODE_TO_DTYPE).map(([c, d]) => [d, c])) as Record<
  RawDType,
  string
>;
/** Codes that are valid safetensors but outside RawDType, so they get a precise "not supported" message. */
const KNOWN_UNSUPPORTED_CODES = new Set(['U16', 'U32', 'U64', 'F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4', 'C64']);

/** The reference implementation refuses headers above 100 MB; anything bigger means "not safetensors". */
const MAX_HEADER_BYTES = 100_000_000;

export function isFloatDType(dtype: RawDType): boolean {
  return dtype === 'float32' || dtype === 'float16' || dtype === 'bfloat16' || dtype === 'float64';
}

// ---------------------------------------------------------------------------------------------
// Element decoding / encoding
// ---------------------------------------------------------------------------------------------

const LITTLE_ENDIAN_HOST = endianness() === 'LE';

/** float16 bit pattern → float32 value, tabulated once (64 K entries) since checkpoints hold millions. */
let halfTable: Float32Array | undefined;
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24; // subnormal: frac · 2^-14 · 2^-10
    else if (exp === 31) v = frac === 0 ? Infinity : NaN;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    t[h] = sign * v;
  }
  halfTable = t;
  return t;
}

/**
 * The buffer/offset of `bytes`, or of an aligned copy when `bytes` does not start on an element boundary
 * (typed arrays require byteOffset % BYTES_PER_ELEMENT === 0).
 */
function alignedBuffer(bytes: Uint8Array, align: number): { buffer: ArrayBufferLike; byteOffset: number } {
  if (bytes.byteOffset % align === 0) return { buffer: bytes.buffer, byteOffset: bytes.byteOffset };
  // A copy: not bytes.slice(), which on a Node Buffer (what readFile returns) is a view.
  const copy = new Uint8Array(bytes);
  return { buffer: copy.buffer, byteOffset: 0 };
}

/**
 * Decodes `count` little-endian elements of `dtype` from the start of `bytes` into the RawTensor
 * representation: floating types → Float32Array (float64 is rounded to float32; float16/bfloat16 widen
 * exactly), integer and bool types → Float64Array (int64 exact for |v| ≤ 2^53). Always returns a fresh
 * array that does not alias `bytes`, so the file buffer can be garbage-collected.
 */
export function decodeLittleEndian(dtype: RawDType, bytes: Uint8Array, count: number): Float32Array | Float64Array {
  if (!LITTLE_ENDIAN_HOST) throw new CtaError('reading weight files needs a little-endian CPU');
  const nbytes = count * ITEM_SIZE[dtype];
  if (bytes.length < nbytes) throw new Error(`decodeLittleEndian: ${bytes.length} bytes < ${nbytes} needed`);
  const size = ITEM_SIZE[dtype];
  const { buffer, byteOffset } = alignedBuffer(bytes.subarray(0, nbytes), size);
  switch (dtype) {
    case 'float32':
      return new Float32Array(new Float32Array(buffer, byteOffset, count));
    case 'float16': {
      const src = new Uint16Array(buffer, byteOffset, count);
      const table = halfToFloatTable();
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = table[src[i]!]!;
      return out;
    }
    case 'bfloat16': {
      // bfloat16 is the upper half of a float32: shifting the bits back up widens it exactly.
      const src = new Uint16Array(buffer, byteOffset, count);
      const out = new Float32Array(count);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = src[i]! << 16;
      return out;
    }
    case 'float64':
      return new Float32Array(new Float64Array(buffer, byteOffset, count));
    case 'int64': {
      // Two 32-bit halves (low unsigned, high signed) avoid a BigInt per element.
      const lo = new Uint32Array(buffer, byteOffset, count * 2);
      const hi = new Int32Array(buffer, byteOffset, count * 2);
      const out = new Float64Array(count);
      for (let i = 0; i < count; i++) out[i] = hi[2 * i + 1]! * 4294967296 + lo[2 * i]!;
      return out;
    }
    case 'int32':
      return new Float64Array(new Int32Array(buffer, byteOffset, count));
    case 'int16':
      return new Float64Array(new Int16Array(buffer, byteOffset, count));
    case 'int8':
      return new Float64Array(new Int8Array(buffer, byteOffset, count));
    case 'uint8':
      return new Float64Array(new Uint8Array(buffer, byteOffset, count));
    case 'bool': {
      const src = new Uint8Array(buffer, byteOffset, count);
      const out = new Float64Array(count);
      for (let i = 0; i < count; i++) out[i] = src[i] !== 0 ? 1 : 0;
      return out;
    }
  }
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 bits → float16 bits with round-to-nearest-even (IEEE 754 binary16), incl. subnormals/inf/NaN. */
function floatToHalfBits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / NaN
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow → inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the mantissa with its implicit 1 into place, rounding to even.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rem > mid || (rem === mid && half & 1) ? 1 : 0));
  }
  const half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and may produce inf).
  return sign | (half + (rem > 0x1000 || (rem === 0x1000 && half & 1) ? 1 : 0));
}

/** float32 bits → bfloat16 bits, round-to-nearest-even (what torch's .to(torch.bfloat16) does). */
function floatToBfloat16Bits(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  if (Number.isNaN(value)) return ((x >>> 16) & 0x8000) | 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Encodes numbers as little-endian elements of `dtype` (the inverse of decodeLittleEndian). */
export function encodeLittleEndian(dtype: RawDType, values: ArrayLike<number>): Uint8Array {
  if (!LITTLE_ENDIAN_HOST) throw new CtaError('writing weight files needs a little-endian CPU');
  const n = values.length;
  const out = new Uint8Array(n * ITEM_SIZE[dtype]);
  switch (dtype) {
    case 'float32':
      new Float32Array(out.buffer).set(values);
      break;
    case 'float64':
      new Float64Array(out.buffer).set(values);
      break;
    case 'float16': {
      const dst = new Uint16Array(out.buffer);
      for (let i = 0; i < n; i++) dst[i] = floatToHalfBits(values[i]!);
      break;
    }
    case 'bfloat16': {
      const dst = new Uint16Array(out.buffer);
      for (let i = 0; i < n; i++) dst[i] = floatToBfloat16Bits(values[i]!);
      break;
    }
    case 'int64': {
      const words = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) {
        const v = Math.trunc(values[i]!);
        const hi = Math.floor(v / 4294967296);
        words[2 * i] = v - hi * 4294967296;
        words[2 * i + 1] = hi >>> 0;
      }
      break;
    }
    case 'int32':
      new Int32Array(out.buffer).set(values);
      break;
    case 'int16':
      new Int16Array(out.buffer).set(values);
      break;
    case 'int8':
      new Int8Array(out.buffer).set(values);
      break;
    case 'uint8':
      out.set(values);
      break;
    case 'bool':
      for (let i = 0; i < n; i++) out[i] = values[i] ? 1 : 0;
      break;
  }
  return out;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/** Reads a whole weight file, turning the usual fs failures into one-line CtaErrors. */
export async function readWeightBytes(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CtaError(`${path}: file not found`);
    if (code === 'EISDIR') throw new CtaError(`${path}: is a directory, expected a weight file`);
    if (code === 'EACCES') throw new CtaError(`${path}: permission denied`);
    if (code === 'ERR_FS_FILE_TOO_LARGE') throw new CtaError(`${path}: file is larger than 2 GiB, which Node cannot read at once`);
    throw e;
  }
}

export async function readSafetensors(path: string): Promise<StateDict> {
  return parseSafetensors(await readWeightBytes(path), path);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

const EXPECTED_ENTRY = 'expected {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}';

/** Parses a whole safetensors file held in memory. `label` (usually the path) prefixes every error. */
export function parseSafetensors(buf: Uint8Array, label: string): StateDict {
  return parseSafetensorsWithMetadata(buf, label).tensors;
}

/** Like parseSafetensors, also returning the `__metadata__` string map (empty when absent). */
export function parseSafetensorsWithMetadata(
  buf: Uint8Array,
  label: string,
): { tensors: StateDict; metadata: Record<string, string> } {
  const head = `${label}: safetensors header`;
  if (buf.length < 8) {
    throw new CtaError(`${label}: file is ${buf.length} bytes, expected a safetensors file (8-byte header length + JSON header + data)`);
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = view.getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    throw new CtaError(`${head} length is ${n64} bytes, expected at most ${MAX_HEADER_BYTES} (not a safetensors file?)`);
  }
  const n = Number(n64);
  if (8 + n > buf.length) {
    throw new CtaError(`${head} length ${n} runs past the end of the ${buf.length}-byte file, expected a complete file (truncated?)`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    throw new CtaError(`${head} is not valid UTF-8 JSON (${why}), expected a JSON object of tensor entries`);
  }
  if (!isPlainObject(header)) {
    throw new CtaError(`${head} is a JSON ${Array.isArray(header) ? 'array' : typeof header}, expected a JSON object of tensor entries`);
  }
  const dataStart = 8 + n;
  const dataLen = buf.length - dataStart;

  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: RawDType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw new CtaError(`${head}: "__metadata__" must map strings to strings`);
      }
      Object.assign(metadata, entry);
      continue;
    }
    if (!isPlainObject(entry)) throw new CtaError(`${head}: entry "${name}" is not an object, ${EXPECTED_ENTRY}`);
    const code = entry['dtype'];
    if (typeof code !== 'string') throw new CtaError(`${head}: entry "${name}" has no string "dtype", ${EXPECTED_ENTRY}`);
    const dtype = CODE_TO_DTYPE[code];
    if (!dtype) {
      const what = KNOWN_UNSUPPORTED_CODES.has(code) ? 'is not supported by cta-eval' : 'is unknown';
      throw new CtaError(`${head}: tensor "${name}" has dtype ${code}, which ${what}; expected one of ${Object.keys(CODE_TO_DTYPE).join(', ')}`);
    }
    const shape = entry['shape'];
    if (!Array.isArray(shape) || !shape.every(isIndex)) {
      throw new CtaError(`${head}: tensor "${name}" has shape ${JSON.stringify(shape)}, expected an array of non-negative integers`);
    }
    const offs = entry['data_offsets'];
    if (!Array.isArray(offs) || offs.length !== 2 || !isIndex(offs[0]) || !isIndex(offs[1]) || offs[0] > offs[1]) {
      throw new CtaError(`${head}: tensor "${name}" has data_offsets ${JSON.stringify(offs)}, expected [begin, end] with 0 <= begin <= end`);
    }
    const [begin, end] = offs as [number, number];
    if (end > dataLen) {
      throw new CtaError(
        `${head}: tensor "${name}" data_offsets [${begin}, ${end}] run past the ${dataLen}-byte data section, expected end <= ${dataLen} (truncated file?)`,
      );
    }
    const need = numelOf(shape) * ITEM_SIZE[dtype];
    if (end - begin !== need) {
      throw new CtaError(
        `${head}: tensor "${name}" spans ${end - begin} bytes, expected ${need} for ${code} shape [${shape.join(',')}]`,
      );
    }
    entries.push({ name, dtype, shape: shape.slice(), begin, end });
  }

  // The spec forbids overlapping tensors (a writer bug or a crafted file); zero-size tensors cannot overlap.
  const byStart = entries.filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin);
  const overlaps: string[] = [];
  for (let i = 1; i < byStart.length; i++) {
    const prev = byStart[i - 1]!;
    const cur = byStart[i]!;
    if (cur.begin < prev.end) overlaps.push(`${prev.name} [${prev.begin},${prev.end}) / ${cur.name} [${cur.begin},${cur.end})`);
  }
  if (overlaps.length > 0) {
    throw new CtaError(`${head}: ${overlaps.length} overlapping tensor pair(s) (${listSome(overlaps, 3)}), expected disjoint data_offsets`);
  }

  const tensors: StateDict = new Map();
  for (const e of entries) {
    const count = numelOf(e.shape);
    const data = decodeLittleEndian(e.dtype, buf.subarray(dataStart + e.begin, dataStart + e.end), count);
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data });
  }
  return { tensors, metadata };
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** What writeSafetensors accepts: a RawTensor, or any numeric array-like for the data. */
export interface TensorToWrite {
  dtype: RawDType;
  shape: readonly number[];
  data: ArrayLike<number>;
}

/**
 * Serialises tensors (in map order, packed back to back as the spec allows) to safetensors bytes.
 * The header JSON is padded with spaces to a multiple of 8 bytes so that the data section starts
 * 8-aligned, as the reference writer does. Floats are rounded to the target dtype (float16/bfloat16:
 * round-to-nearest-even from float32); int64 values must be integers within ±2^53.
 */
export function serializeSafetensors(
  tensors: ReadonlyMap<string, TensorToWrite>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header['__metadata__'] = { ...metadata };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === '__metadata__') throw new Error('serializeSafetensors: "__metadata__" is reserved and cannot name a tensor');
    const count = numelOf(t.shape);
    if (t.data.length !== count) {
      throw new Error(`serializeSafetensors: tensor "${name}" has ${t.data.length} values but shape [${t.shape.join(',')}] needs ${count}`);
    }
    const bytes = encodeLittleEndian(t.dtype, t.data);
    header[name] = { dtype: DTYPE_TO_CODE[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  let jsonBytes = new TextEncoder().encode(json);
  const pad = (8 - (jsonBytes.length % 8)) % 8;
  if (pad > 0) {
    json += ' '.repeat(pad);
    jsonBytes = new TextEncoder().encode(json);
  }
  const out = new Uint8Array(8 + jsonBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(jsonBytes.length), true);
  out.set(jsonBytes, 8);
  let pos = 8 + jsonBytes.length;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, TensorToWrite>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  await writeFile(path, serializeSafetensors(tensors, metadata));
}
