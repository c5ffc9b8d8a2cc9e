/**
 * Loading a model's weights from whatever the user points --weights at, and checking them against the
 * names/shapes a model expects.
 *
 * Format detection trusts the file's first bytes before its extension: a zip ('PK\x03\x04') is a
 * torch.save checkpoint, a little-endian header length followed by '{' is safetensors, and the legacy
 * torch pickle magic gets its own advice. The extension only decides which error to give otherwise.
 */
import { stat } from 'node:fs/promises';
import { extname } from 'node:path';
import { CtaError, listSome } from '../util/errors.js';
import { parseSafetensors, parseSafetensorsWithMetadata, readWeightBytes } from './safetensors.js';
import { isLegacyTorch, isZip, legacyTorchMessage, parseTorchPt } from './torch-pt.js';
import { looksLikeNpz, parseNpz } from './npz.js';
import type { StateDict } from './types.js';

/** The container a weight file was read from (recorded in the manifest). */
export type WeightFileFormat = 'safetensors' | 'torch-zip' | 'npz';

const TORCH_EXTS = new Set(['.pt', '.pth', '.ckpt', '.bin', '.tar']);

function looksLikeSafetensors(buf: Uint8Array): boolean {
  if (buf.length < 9) return false;
  const n = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigUint64(0, true);
  // The JSON header starts right after the length; the reference writer emits '{' first.
  return n >= 2n && n <= BigInt(buf.length - 8) && buf[8] === 0x7b;
}

/**
 * Reads a weight file (.safetensors, or a torch ≥ 1.6 zip .pt/.pth/.ckpt), then normalises its keys:
 * DataParallel's leading `module.` is stripped and BatchNorm's `num_batches_tracked` counters, which no
 * model here uses, are dropped.
 */
export async function loadStateDict(path: string): Promise<StateDict> {
  return (await loadWeightFile(path)).sd;
}

/**
 * {@link loadStateDict} plus the container the file turned out to be and, for safetensors, its
 * `__metadata__` string map (empty otherwise): what a timm-layout ViT written by cta-train keeps
 * there (head count, input normalisation) is read by src/models/weights-variant.ts.
 */
export async function loadWeightFile(path: string): Promise<{ sd: StateDict; format: WeightFileFormat; metadata: Record<string, string> }> {
  // Probe first so the usual mistake (a wrong --weights path) gets the flag's name in the message.
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new CtaError(`--weights ${path}: file not found`);
    if (code === 'EACCES') throw new CtaError(`--weights ${path}: permission denied`);
    throw e;
  }
  if (isDir) throw new CtaError(`--weights ${path}: is a directory, expected a .safetensors, .pt or .npz file`);
  const buf = await readWeightBytes(path);
  const format = weightFileFormat(buf, path);
  if (format === 'safetensors' && !isLegacyTorch(buf)) {
    const { tensors, metadata } = parseSafetensorsWithMetadata(buf, path);
    return { sd: normalizeStateDict(tensors, path), format, metadata };
  }
  return { sd: normalizeStateDict(parseWeights(buf, path), path), format, metadata: {} };
}

/** Which parser {@link parseWeights} picks for `buf` (same rules; refusals are left to it). */
export function weightFileFormat(buf: Uint8Array, label: string): WeightFileFormat {
  if (isZip(buf)) return looksLikeNpz(buf, label) ? 'npz' : 'torch-zip';
  const ext = extname(label).toLowerCase();
  if (ext === '.npz') return 'npz';
  return ext === '.safetensors' || looksLikeSafetensors(buf) ? 'safetensors' : 'torch-zip';
}

/** Dispatches on content (then extension) to the right parser; no key normalisation. */
export function parseWeights(buf: Uint8Array, label: string): StateDict {
  const ext = extname(label).toLowerCase();
  // A zip is an .npz when every member is an .npy array (numpy.savez), else a torch.save archive.
  if (isZip(buf)) return looksLikeNpz(buf, label) ? parseNpz(buf, label) : parseTorchPt(buf, label);
  if (ext === '.npz') return parseNpz(buf, label); // gives the precise "not a zip" message
  if (isLegacyTorch(buf)) throw new CtaError(legacyTorchMessage(label));
  if (ext === '.safetensors' || looksLikeSafetensors(buf)) return parseSafetensors(buf, label);
  if (TORCH_EXTS.has(ext)) return parseTorchPt(buf, label); // gives the precise "not a zip" message
  throw new CtaError(
    `${label}: unrecognised weight file (extension '${ext || 'none'}'), expected .safetensors, a torch.save checkpoint (.pt/.pth/.ckpt) or a numpy .npz (Google ViT)`,
  );
}

/** Strips a leading `module.` (nn.DataParallel / DistributedDataParallel) and drops num_batches_tracked. */
export function normalizeStateDict(sd: StateDict, label: string): StateDict {
  const out: StateDict = new Map();
  for (const [key, t] of sd) {
    if (key === 'num_batches_tracked' || key.endsWith('.num_batches_tracked')) continue;
    const k = key.startsWith('module.') ? key.slice('module.'.length) : key;
    if (out.has(k)) throw new CtaError(`${label}: key ${k} appears both with and without the 'module.' prefix`);
    out.set(k, t);
  }
  return out;
}

/**
 * Removes `prefix` from every key that has it (e.g. RobustBench's `model.` wrapper); keys without it,
 * such as RobustBench's `normalize.mean`, are kept unchanged.
 */
export function stripPrefix(sd: StateDict, prefix: string): StateDict {
  const out: StateDict = new Map();
  for (const [key, t] of sd) out.set(key.startsWith(prefix) ? key.slice(prefix.length) : key, t);
  return out;
}

export interface CheckKeysOptions {
  /** Model name for the message ("does not match resnext29"). */
  model?: string;
  /** Expected keys that may be absent (e.g. buffers a checkpoint leaves out, like AugMix's mu/sigma). */
  optional?: Iterable<string>;
}

const fmtShape = (s: readonly number[]) => `[${s.join(',')}]`;

/**
 * Throws one CtaError describing every mismatch between `sd` and the expected names/shapes, e.g.
 * `W.safetensors: state_dict does not match resnext29: 2 missing (a, b), 1 unexpected (foo),
 * 1 wrong shape (fc.weight [10,1024] expected [100,1024])`. Returns normally when everything matches.
 * `opts` may be the model name alone.
 */
export function checkKeys(
  sd: StateDict,
  expected: ReadonlyMap<string, readonly number[]>,
  label: string,
  opts: string | CheckKeysOptions = {},
): void {
  const { model, optional } = typeof opts === 'string' ? { model: opts, optional: undefined } : opts;
  const optionalSet = new Set(optional ?? []);
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const [key, shape] of expected) {
    const t = sd.get(key);
    if (!t) {
      if (!optionalSet.has(key)) missing.push(key);
      continue;
    }
    const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
    if (!same) wrong.push(`${key} ${fmtShape(t.shape)} expected ${fmtShape(shape)}`);
  }
  const unexpected = [...sd.keys()].filter((k) => !expected.has(k));
  if (missing.length + unexpected.length + wrong.length === 0) return;
  const parts: string[] = [];
  if (missing.length) parts.push(`${missing.length} missing (${listSome(missing, 4)})`);
  if (unexpected.length) parts.push(`${unexpected.length} unexpected (${listSome(unexpected, 4)})`);
  if (wrong.length) parts.push(`${wrong.length} wrong shape (${listSome(wrong, 3)})`);
  throw new CtaError(`${label}: state_dict does not match ${model ?? 'the model'}: ${parts.join(', ')}`);
}
