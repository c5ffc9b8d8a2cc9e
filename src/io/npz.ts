/**
 * Reader for NumPy `.npz` archives (numpy/lib/npyio.py `savez` / `savez_compressed`): a zip file
 * with one member `<name>.npy` per array, STORED by `np.savez` and DEFLATEd by
 * `np.savez_compressed`; each member is a complete npy file (src/io/npy.ts, docs/data-formats.md#numpy-npz).
 * Google's original ViT checkpoints (`ViT-B_16.npz`, the AugReg `*.npz`) are such archives of
 * float32 arrays named by their Flax module path, e.g. `Transformer/encoderblock_0/LayerNorm_0/scale`
 * (src/models/vit-npz.ts maps them to timm's names).
 *
 * The zip container is read by the same minimal PKWARE reader as torch.save files (zip64 included:
 * numpy writes every member with `force_zip64`); the npy members are parsed in memory.
 */
import { CtaError, listSome } from '../util/errors.js';
import { parseNpyBytes, type NpyArray } from './npy.js';
import { readWeightBytes } from './safetensors.js';
import { isZip, readZipDirectory, readZipEntry, type ZipEntry } from './torch-pt.js';
import type { RawDType, RawTensor, StateDict } from './types.js';

const NPY_SUFFIX = '.npy';

/** Whether a zip's members are all npy arrays (an `.npz`), as opposed to a torch.save archive. */
export function isNpzDirectory(entries: ReadonlyMap<string, ZipEntry>): boolean {
  const files = [...entries.keys()].filter((n) => !n.endsWith('/'));
  return files.length > 0 && files.every((n) => n.endsWith(NPY_SUFFIX));
}

/** Whether `buf` is a zip whose members are all `.npy` files. */
export function looksLikeNpz(buf: Uint8Array, label: string): boolean {
  return isZip(buf) && isNpzDirectory(readZipDirectory(buf, label, 'zip (.npz) archive'));
}

/** An npy array as a weight tensor: floats as Float32Array, integers / bool as Float64Array (RawTensor's convention). */
function toRawTensor(a: NpyArray, label: string): RawTensor {
  const shape = a.shape.slice();
  const d = a.data;
  switch (a.header.dtype) {
    case 'float32':
      return { dtype: 'float32', shape, data: d as Float32Array };
    case 'float64':
      return { dtype: 'float64', shape, data: Float32Array.from(d as Float64Array) };
    case 'int64': {
      const out = new Float64Array(d.length);
      const big = d as BigInt64Array;
      for (let i = 0; i < big.length; i++) out[i] = Number(big[i]);
      return { dtype: 'int64', shape, data: out };
    }
    case 'int32':
    case 'int16':
    case 'int8':
    case 'uint8':
    case 'bool':
      return { dtype: a.header.dtype as RawDType, shape, data: Float64Array.from(d as ArrayLike<number>) };
    default:
      throw new CtaError(`${label}: npy dtype ${a.header.dtype} is not a weight dtype (expected float32, float64 or a signed integer type)`);
  }
}

/**
 * Parses an `.npz` held in memory: array name (member name without `.npy`) → tensor, in archive
 * order. Errors name the archive and the member.
 */
export function parseNpz(buf: Uint8Array, label: string): StateDict {
  if (!isZip(buf)) {
    throw new CtaError(`${label}: not an .npz archive (no zip 'PK' signature), expected a file written by numpy.savez / savez_compressed`);
  }
  const entries = readZipDirectory(buf, label, 'zip (.npz) archive');
  if (!isNpzDirectory(entries)) {
    const other = [...entries.keys()].filter((n) => !n.endsWith('/') && !n.endsWith(NPY_SUFFIX));
    throw new CtaError(`${label}: zip archive has members that are not .npy arrays (${listSome(other, 4)}), expected an .npz written by numpy.savez`);
  }
  const sd: StateDict = new Map();
  for (const entry of entries.values()) {
    if (entry.name.endsWith('/')) continue;
    const name = entry.name.slice(0, -NPY_SUFFIX.length);
    const where = `${label}: array ${name}`;
    const bytes = readZipEntry(buf, entry, label, 'zip (.npz) archive');
    sd.set(name, toRawTensor(parseNpyBytes(bytes, where), where));
  }
  return sd;
}

export async function readNpz(path: string): Promise<StateDict> {
  return parseNpz(await readWeightBytes(path), path);
}
