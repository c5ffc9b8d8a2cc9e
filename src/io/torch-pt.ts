/**
 * Reader for PyTorch checkpoints written by torch.save in the zip format (torch ≥ 1.6, the default since).
 *
 * Layout (torch/serialization.py `_save` / `_load`, caffe2/serialize/inline_container.h):
 *   <archive>/data.pkl      pickle (protocol 2) of the saved object; tensors are
 *                           REDUCE(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, requires_grad, hooks))
 *                           and each storage is a persistent id ('storage', torch.FloatStorage, key, location, numel)
 *   <archive>/data/<key>    raw little-endian bytes of storage <key> (entries are STORED, 64-byte aligned)
 *   <archive>/version, <archive>/byteorder (newer torch), ...
 * `<archive>` is the file's stem for torch < 2.0 and the literal "archive" since.
 *
 * The pickle is parsed with `pickleparser`, which never runs Python code: every global the pickle names is
 * resolved through our own table. Whitelisted globals rebuild tensors and dicts; any other global becomes an
 * inert placeholder that is only reported (by name) if it ends up where weights are expected. Tensor data is
 * decoded lazily, so optimizer state next to the weights costs nothing.
 *
 * Pre-1.6 "legacy" files (a sequence of pickles, not a zip) are recognised and refused with re-save advice.
 */
import { inflateRawSync } from 'node:zlib';
import { Parser } from 'pickleparser';
import { CtaError, listSome } from '../util/errors.js';
import { decodeLittleEndian, isFloatDType, ITEM_SIZE, numelOf, readWeightBytes } from './safetensors.js';
import type { RawDType, RawTensor, StateDict } from './types.js';

// ---------------------------------------------------------------------------------------------
// Minimal zip reader (PKWARE APPNOTE.TXT 6.3: §4.3.7 local header, §4.3.12 central directory,
// §4.3.14–16 zip64 end records, §4.5.3 zip64 extra field). Only what torch.save produces is needed:
// no encryption, no multi-disk; STORED (method 0) and, for re-packed archives, DEFLATE (method 8).
// ---------------------------------------------------------------------------------------------

export interface ZipEntry {
  name: string;
  method: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
  flags: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;

function u64(view: DataView, at: number): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('zip64 value too large');
  return Number(v);
}

export function isZip(buf: Uint8Array): boolean {
  return buf.length >= 4 && buf[0] === 0x50 && buf[1] === 0x4b && buf[2] === 0x03 && buf[3] === 0x04;
}

/** Reads the central directory; every offset is bounds-checked so a truncated file gives a clear error. */
export function readZipDirectory(buf: Uint8Array, label: string, expected = 'torch.save file'): Map<string, ZipEntry> {
  const bad = (what: string) => new CtaError(`${label}: zip archive ${what}, expected a complete ${expected} (truncated or corrupt?)`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  // The end-of-central-directory record is 22 bytes plus a comment of at most 65535 bytes.
  let eocd = -1;
  for (let p = buf.length - 22; p >= 0 && p >= buf.length - 22 - 65535; p--) {
    if (view.getUint32(p, true) === SIG_EOCD) {
      eocd = p;
      break;
    }
  }
  if (eocd < 0) throw bad('has no end-of-central-directory record');
  let count = view.getUint16(eocd + 10, true);
  let cdSize = view.getUint32(eocd + 12, true);
  let cdOffset = view.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || view.getUint32(loc, true) !== SIG_ZIP64_LOCATOR) throw bad('needs zip64 records that are missing');
    const z64 = u64(view, loc + 8);
    if (z64 + 56 > buf.length || view.getUint32(z64, true) !== SIG_ZIP64_EOCD) throw bad('has a broken zip64 end record');
    count = u64(view, z64 + 32);
    cdSize = u64(view, z64 + 40);
    cdOffset = u64(view, z64 + 48);
  }
  if (cdOffset + cdSize > buf.length) throw bad('central directory lies outside the file');

  const entries = new Map<string, ZipEntry>();
  const decoder = new TextDecoder('utf-8');
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > buf.length || view.getUint32(p, true) !== SIG_CENTRAL) throw bad(`central directory entry ${i} is damaged`);
    const flags = view.getUint16(p + 8, true);
    const method = view.getUint16(p + 10, true);
    let compressedSize = view.getUint32(p + 20, true);
    let size = view.getUint32(p + 24, true);
    const nameLen = view.getUint16(p + 28, true);
    const extraLen = view.getUint16(p + 30, true);
    const commentLen = view.getUint16(p + 32, true);
    let localHeaderOffset = view.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen + commentLen > buf.length) throw bad(`central directory entry ${i} is damaged`);
    const name = decoder.decode(buf.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field: the 64-bit values appear, in this order, only for fields saturated at 0xFFFFFFFF.
    let x = p + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = view.getUint16(x, true);
      const len = view.getUint16(x + 2, true);
      if (id === 0x0001) {
        let q = x + 4;
        const qEnd = q + len;
        if (size === 0xffffffff && q + 8 <= qEnd) {
          size = u64(view, q);
          q += 8;
        }
        if (compressedSize === 0xffffffff && q + 8 <= qEnd) {
          compressedSize = u64(view, q);
          q += 8;
        }
        if (localHeaderOffset === 0xffffffff && q + 8 <= qEnd) localHeaderOffset = u64(view, q);
      }
      x += 4 + len;
    }
    entries.set(name, { name, method, compressedSize, size, localHeaderOffset, flags });
    p = xEnd + commentLen;
  }
  return entries;
}

/** The uncompressed bytes of one entry (a view into `buf` when STORED). */
export function readZipEntry(buf: Uint8Array, entry: ZipEntry, label: string, archive = 'torch.save archive'): Uint8Array {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const at = entry.localHeaderOffset;
  const where = `${label}: zip entry ${entry.name}`;
  if (entry.flags & 1) throw new CtaError(`${where} is encrypted, expected an unencrypted ${archive}`);
  if (at + 30 > buf.length || view.getUint32(at, true) !== SIG_LOCAL) {
    throw new CtaError(`${where} has no local header at offset ${at}, expected a complete file (truncated or corrupt?)`);
  }
  // The local header's extra field may differ from the central one (torch pads it to align data to 64 bytes).
  const start = at + 30 + view.getUint16(at + 26, true) + view.getUint16(at + 28, true);
  const end = start + entry.compressedSize;
  if (end > buf.length) {
    throw new CtaError(`${where} needs bytes ${start}..${end} but the file has ${buf.length}, expected a complete file (truncated?)`);
  }
  const raw = buf.subarray(start, end);
  if (entry.method === 0) return raw;
  if (entry.method === 8) {
    let out: Uint8Array;
    try {
      out = inflateRawSync(raw);
    } catch (e) {
      throw new CtaError(`${where} could not be inflated (${(e as Error).message}), expected valid DEFLATE data`);
    }
    if (out.length !== entry.size) throw new CtaError(`${where} inflated to ${out.length} bytes, expected ${entry.size}`);
    return out;
  }
  throw new CtaError(`${where} uses zip compression method ${entry.method}, expected 0 (stored) or 8 (deflate)`);
}

// ---------------------------------------------------------------------------------------------
// Unpickling with a whitelist
// ---------------------------------------------------------------------------------------------

/** torch.<X>Storage classes named in persistent ids → element dtype (torch/storage.py, _StorageBase subclasses). */
const STORAGE_DTYPES: Readonly<Record<string, RawDType>> = {
  FloatStorage: 'float32',
  HalfStorage: 'float16',
  BFloat16Storage: 'bfloat16',
  DoubleStorage: 'float64',
  LongStorage: 'int64',
  IntStorage: 'int32',
  ShortStorage: 'int16',
  CharStorage: 'int8',
  ByteStorage: 'uint8',
  BoolStorage: 'bool',
};

/** A pickled Python object whose class/function we do not load; only its name is kept for error messages. */
class Unloaded {
  constructor(readonly global: string) {}
  __setstate__(): void {}
  __setnewargs_ex__(): void {}
}

/** Python dict / OrderedDict. A Map keeps insertion order; BUILD state (e.g. state_dict._metadata) is dropped. */
class PyDict extends Map<unknown, unknown> {
  __setstate__(): void {}
}

/** Marker returned for torch.<X>Storage globals; it only travels inside persistent ids. */
interface StorageType {
  readonly storageDtype: RawDType;
  readonly storageName: string;
}

interface Storage {
  key: string;
  dtype: RawDType;
  numel: number;
}

/** A tensor as found in the pickle: decoded from its storage only when selected. */
class LazyTensor {
  constructor(
    readonly storage: Storage,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

type AnyFn = (...args: unknown[]) => unknown;

function isIntArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0);
}

function makeResolvers(label: string) {
  const where = `${label}: data.pkl`;

  function rebuildTensor(...args: unknown[]): LazyTensor {
    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof Object) || !('key' in storage) || typeof offset !== 'number' || !isIntArray(size) || !isIntArray(stride)) {
      throw new CtaError(`${where}: malformed _rebuild_tensor_v2 call, expected (storage, offset, size, stride, ...)`);
    }
    if (size.length !== stride.length) {
      throw new CtaError(`${where}: tensor size [${size.join(',')}] and stride [${stride.join(',')}] differ in rank`);
    }
    return new LazyTensor(storage as Storage, offset, size.slice(), stride.slice());
  }

  function rebuildParameter(...args: unknown[]): unknown {
    // _rebuild_parameter(data, requires_grad, backward_hooks[, state]): the Parameter is just its data here.
    return args[0];
  }

  function orderedDict(...args: unknown[]): PyDict {
    // OrderedDict() or OrderedDict([(k, v), ...]) via REDUCE; items normally follow through SETITEMS.
    const d = new PyDict();
    const items = args[0];
    if (Array.isArray(items)) for (const kv of items) if (Array.isArray(kv) && kv.length === 2) d.set(kv[0], kv[1]);
    return d;
  }

  const globals = new Map<string, AnyFn>([
    ['collections.OrderedDict', orderedDict],
    ['torch._utils._rebuild_tensor_v2', rebuildTensor],
    ['torch._utils._rebuild_parameter', rebuildParameter],
    ['torch._utils._rebuild_parameter_with_state', rebuildParameter],
  ]);

  const nameResolver = {
    resolve(module: string, name: string): AnyFn {
      const full = `${module}.${name}`;
      const known = globals.get(full);
      if (known) return known;
      if (module === 'torch' && name in STORAGE_DTYPES) {
        const marker: StorageType = { storageDtype: STORAGE_DTYPES[name]!, storageName: full };
        // pickleparser expects a callable; storage classes are only ever used as values inside persistent ids.
        return Object.assign(() => marker, marker);
      }
      // Not whitelisted: an inert stand-in usable both as REDUCE callable and NEWOBJ class (returning an
      // object from a constructor replaces `this`), so parsing continues and the name can be reported.
      return function unloaded(): Unloaded {
        return new Unloaded(full);
      } as AnyFn;
    },
  };

  const storages = new Map<string, Storage>();
  const persistentResolver = {
    resolve(pid: unknown): Storage {
      // torch/serialization.py persistent_id: ('storage', storage_type, key, location, numel)
      if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) {
        throw new CtaError(`${where}: unsupported persistent id ${describe(pid)}, expected ('storage', type, key, location, numel)`);
      }
      const [, type, key, , numel] = pid as unknown[];
      const storageType = type as Partial<StorageType> | undefined;
      if (!storageType || typeof storageType.storageDtype !== 'string') {
        const name = type instanceof Unloaded ? type.global : describe(type);
        throw new CtaError(`${where}: storage type ${name} is not supported, expected one of torch.${Object.keys(STORAGE_DTYPES).join('/')}`);
      }
      if (typeof key !== 'string' || typeof numel !== 'number') {
        throw new CtaError(`${where}: malformed storage id ${describe(pid)}, expected a string key and integer numel`);
      }
      let s = storages.get(key);
      if (!s) {
        s = { key, dtype: storageType.storageDtype, numel };
        storages.set(key, s);
      }
      return s;
    },
  };
  return { nameResolver, persistentResolver };
}

function describe(v: unknown): string {
  if (v instanceof Unloaded) return v.global;
  if (v instanceof LazyTensor) return 'a tensor';
  if (v instanceof Map) return 'a dict';
  if (Array.isArray(v)) return `(${v.map(describe).join(', ')})`;
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (typeof v === 'function') return (v as { storageName?: string }).storageName ?? 'a function';
  return JSON.stringify(v) ?? String(v);
}

// ---------------------------------------------------------------------------------------------
// Choosing the state_dict inside the unpickled object
// ---------------------------------------------------------------------------------------------

/** Where training scripts usually keep the weights next to epoch/optimizer/... (AugMix: 'state_dict'). */
const WEIGHT_KEYS = ['state_dict', 'model_state_dict', 'model', 'net', 'network', 'weights'];

function isTensorDict(v: unknown): v is Map<unknown, LazyTensor> {
  if (!(v instanceof Map) || v.size === 0) return false;
  for (const x of v.values()) if (!(x instanceof LazyTensor)) return false;
  return true;
}

/** Explains why a dict that should hold tensors does not (naming unloaded globals). */
function nonTensorEntries(d: Map<unknown, unknown>): string[] {
  const out: string[] = [];
  for (const [k, v] of d) if (!(v instanceof LazyTensor)) out.push(`${String(k)}: ${describe(v)}`);
  return out;
}

function selectWeights(top: unknown, label: string): Map<unknown, LazyTensor> {
  const fix = 're-save with torch.save(model.state_dict(), path)';
  if (isTensorDict(top)) return top;
  if (top instanceof Unloaded) {
    throw new CtaError(`${label}: the checkpoint holds a pickled ${top.global} object, not a state_dict; ${fix}`);
  }
  if (top instanceof LazyTensor) throw new CtaError(`${label}: the checkpoint holds a single tensor, expected a state_dict; ${fix}`);
  if (!(top instanceof Map)) throw new CtaError(`${label}: the checkpoint holds ${describe(top)}, expected a state_dict; ${fix}`);

  for (const key of WEIGHT_KEYS) {
    const v = top.get(key);
    if (v === undefined) continue;
    if (isTensorDict(v)) return v;
    if (v instanceof Map && v.size > 0 && [...v.values()].some((x) => x instanceof LazyTensor)) {
      throw new CtaError(
        `${label}: '${key}' mixes tensors with other values (${listSome(nonTensorEntries(v), 3)}), expected a dict of tensors`,
      );
    }
    if (v instanceof Unloaded) {
      throw new CtaError(`${label}: '${key}' is a pickled ${v.global} object, not a state_dict; ${fix}`);
    }
  }
  // Otherwise accept a single unambiguous dict of tensors under any key (e.g. {'ema': ...} alone).
  const candidates = [...top].filter(([, v]) => isTensorDict(v)).map(([k]) => String(k));
  if (candidates.length === 1) return top.get(candidates[0]) as Map<unknown, LazyTensor>;
  if (candidates.length > 1) {
    throw new CtaError(`${label}: several dicts of tensors (${listSome(candidates)}), expected one under 'state_dict'`);
  }
  const mixed = nonTensorEntries(top);
  if ([...top.values()].some((x) => x instanceof LazyTensor)) {
    throw new CtaError(`${label}: the state_dict holds non-tensor entries (${listSome(mixed, 3)}), expected only tensors`);
  }
  const keys = [...top.keys()].map(String);
  throw new CtaError(
    `${label}: no state_dict found (top-level keys: ${keys.length ? listSome(keys) : 'none'}), expected a dict of tensors or a dict with '${WEIGHT_KEYS.slice(0, 4).join("'/'")}'`,
  );
}

// ---------------------------------------------------------------------------------------------
// Materialising tensors
// ---------------------------------------------------------------------------------------------

function materialize(
  t: LazyTensor,
  name: string,
  storageBytes: (s: Storage) => Uint8Array,
  label: string,
): RawTensor {
  const { storage, offset, shape, stride } = t;
  const dtype = storage.dtype;
  const count = numelOf(shape);
  if (count === 0) return { dtype, shape, data: isFloatDType(dtype) ? new Float32Array(0) : new Float64Array(0) };
  // Highest storage element the view touches (torch strides are never negative).
  let last = offset;
  for (let d = 0; d < shape.length; d++) last += (shape[d]! - 1) * stride[d]!;
  const bytes = storageBytes(storage);
  const size = ITEM_SIZE[dtype];
  const have = Math.min(storage.numel, Math.floor(bytes.length / size));
  if (last >= have) {
    throw new CtaError(
      `${label}: tensor "${name}" reaches element ${last} of storage ${storage.key}, which has ${have} ${dtype} elements (truncated or corrupt file?)`,
    );
  }
  const span = decodeLittleEndian(dtype, bytes.subarray(offset * size, (last + 1) * size), last - offset + 1);

  // Row-major (contiguous) when each stride equals the product of the later sizes; size-1 dims do not matter.
  let contiguous = true;
  for (let d = shape.length - 1, expect = 1; d >= 0; d--) {
    if (shape[d]! !== 1 && stride[d]! !== expect) contiguous = false;
    expect *= shape[d]!;
  }
  // (For a contiguous view the decoded span is exactly the tensor: last - offset + 1 === count.)
  if (contiguous) return { dtype, shape, data: span };

  // Non-contiguous view (transpose, slice with step, expand): gather into a fresh row-major copy.
  const out = span instanceof Float32Array ? new Float32Array(count) : new Float64Array(count);
  const rank = shape.length;
  const idx = new Array<number>(rank).fill(0);
  let src = 0;
  for (let i = 0; i < count; i++) {
    out[i] = span[src]!;
    // Odometer increment over the index, updating the source position incrementally.
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]!++;
      src += stride[d]!;
      if (idx[d]! < shape[d]!) break;
      src -= idx[d]! * stride[d]!;
      idx[d] = 0;
    }
  }
  return { dtype, shape, data: out };
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/** The first pickle written by legacy torch.save: PROTO 2, LONG1 of magic 0x1950a86a20f9469cfc6c. */
const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

export function isLegacyTorch(buf: Uint8Array): boolean {
  return buf.length >= LEGACY_MAGIC.length && LEGACY_MAGIC.every((b, i) => buf[i] === b);
}

export function legacyTorchMessage(label: string): string {
  return (
    `${label}: legacy (pre-1.6, non-zip) PyTorch checkpoint, which cta-eval cannot read; re-save it with torch >= 1.6 ` +
    `(python -c "import torch; torch.save(torch.load('${label}'), 'weights.pt')") or export safetensors ` +
    `(safetensors.torch.save_file(state_dict, 'weights.safetensors'))`
  );
}

export async function readTorchPt(path: string): Promise<StateDict> {
  return parseTorchPt(await readWeightBytes(path), path);
}

/**
 * Parses a torch.save zip checkpoint held in memory and returns its state_dict (keys exactly as saved:
 * `module.` prefixes and num_batches_tracked are left to loadStateDict). If the pickled object is a dict
 * holding the weights under 'state_dict' / 'model' / 'net' (or a single dict of tensors under any key),
 * that dict is returned and the other entries (epoch, optimizer, ...) are ignored.
 */
export function parseTorchPt(buf: Uint8Array, label: string): StateDict {
  if (!isZip(buf)) {
    if (isLegacyTorch(buf)) throw new CtaError(legacyTorchMessage(label));
    if (buf.length > 0 && buf[0] === 0x80) {
      throw new CtaError(`${label}: a bare pickle, not a torch.save zip archive; expected a file written by torch.save (torch >= 1.6)`);
    }
    throw new CtaError(`${label}: not a PyTorch zip checkpoint (no 'PK' signature), expected a file written by torch.save (torch >= 1.6)`);
  }
  const entries = readZipDirectory(buf, label);
  let prefix: string | undefined;
  for (const name of entries.keys()) {
    const m = /^([^/]+)\/data\.pkl$/.exec(name);
    if (m) {
      prefix = m[1];
      break;
    }
  }
  if (prefix === undefined) {
    throw new CtaError(`${label}: zip archive has no <archive>/data.pkl (entries: ${listSome([...entries.keys()], 4)}), expected a torch.save checkpoint`);
  }
  if (entries.has(`${prefix}/constants.pkl`) || [...entries.keys()].some((n) => n.startsWith(`${prefix}/code/`))) {
    throw new CtaError(`${label}: a TorchScript archive (torch.jit.save), not a torch.save state_dict; save model.state_dict() with torch.save instead`);
  }
  const byteorder = entries.get(`${prefix}/byteorder`);
  if (byteorder) {
    const order = new TextDecoder().decode(readZipEntry(buf, byteorder, label)).trim();
    if (order !== 'little') throw new CtaError(`${label}: storages are ${order}-endian, expected little-endian`);
  }

  const pkl = readZipEntry(buf, entries.get(`${prefix}/data.pkl`)!, label);
  const { nameResolver, persistentResolver } = makeResolvers(label);
  let top: unknown;
  try {
    const parser = new Parser({
      nameResolver,
      persistentResolver,
      unpicklingTypeOfDictionary: 'Map',
      unpicklingTypeOfSet: 'array',
    });
    top = parser.parse(pkl);
  } catch (e) {
    if (e instanceof CtaError) throw e;
    throw new CtaError(`${label}: could not unpickle ${prefix}/data.pkl (${(e as Error).message}), expected a torch.save checkpoint`);
  }

  const weights = selectWeights(top, label);
  const cache = new Map<string, Uint8Array>();
  const storageBytes = (s: Storage): Uint8Array => {
    let b = cache.get(s.key);
    if (!b) {
      const entry = entries.get(`${prefix}/data/${s.key}`);
      if (!entry) throw new CtaError(`${label}: storage ${prefix}/data/${s.key} is missing from the zip, expected one entry per storage`);
      b = readZipEntry(buf, entry, label);
      cache.set(s.key, b);
    }
    return b;
  };
  const sd: StateDict = new Map();
  for (const [k, t] of weights) {
    const name = String(k);
    sd.set(name, materialize(t, name, storageBytes, label));
  }
  return sd;
}
