/**
 * Domain-boundary checkpoints for `cta-eval --resume DIR`. Everything that makes the rest of a
 * continual run depend on its past is saved: the model's parameters and (accumulated) statistics,
 * each norm layer's MECTA past_size, the algorithm's state (optimizer slots, EATA moving average
 * and Fisher), every random generator, the stream position and the results so far. Resuming from
 * it gives the same numbers as an uninterrupted run.
 */
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { parseSafetensorsWithMetadata, readWeightBytes, serializeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import type { Classifier } from '../models/types.js';
import type { Algorithm } from '../algorithms/types.js';
import type { Summary } from './output.js';
import { isAdapterHost } from '../models/injection.js';

const STATE_FILE = 'checkpoint.safetensors';
const META_FILE = 'checkpoint.json';
/** What an atomic write (tmp + rename) leaves behind when it fails or the process dies mid-write. */
const TEMP_FILES = [STATE_FILE, META_FILE, 'summary.json', 'manifest.json'].map((f) => `${f}.tmp`);

export function hasCheckpoint(dir: string): boolean {
  return existsSync(join(dir, META_FILE));
}

/** A fresh run in an old folder: an earlier run's checkpoint must never be resumed with it. */
export function clearCheckpoint(dir: string): void {
  for (const f of [STATE_FILE, META_FILE]) rmSync(join(dir, f), { force: true });
}

/**
 * Removes the `.tmp` files of writes that did not finish, returning their paths. They are never
 * read (the rename that would have published them did not happen), so the files they would have
 * replaced are still the last complete ones.
 */
export function removeStaleTemps(dir: string): string[] {
  const found = TEMP_FILES.map((f) => join(dir, f)).filter((p) => existsSync(p));
  for (const p of found) rmSync(p, { force: true });
  return found;
}

export interface CheckpointMeta {
  version: 1;
  /** Index (in the stream) of the first domain still to run. */
  nextDomain: number;
  /** Lines of batches.jsonl that belong to finished domains. */
  batchIndex: number;
  rngs: Record<string, number[]>;
  pastSizes: number[];
  /** --cache-budget-mb: each layer's β of the last forward, which orders the next plan (docs/memory.md#cache-budget). */
  budgetBetas?: Record<string, number | null>;
  summary: Summary;
  /** Sample orders of finished domains, for the stream fingerprint. */
  orders: { name: string; severity: number | null; order: number[]; tag?: string }[];
}

async function toWritable(tensors: Map<string, tf.Tensor>): Promise<Map<string, TensorToWrite>> {
  const out = new Map<string, TensorToWrite>();
  for (const [k, t] of tensors) {
    out.set(k, { dtype: t.dtype === 'int32' ? 'int32' : 'float32', shape: t.shape, data: await t.data() });
  }
  return out;
}

/**
 * Writes both files atomically (tmp + rename), tensors first. The tensors file records which
 * domain boundary it belongs to, so a process killed between the two renames leaves a pair that
 * restoreCheckpoint refuses instead of mixing two boundaries. A failed write removes its `.tmp`.
 */
export async function saveCheckpoint(dir: string, meta: CheckpointMeta, model: Classifier, alg: Algorithm): Promise<void> {
  const tensors = new Map<string, tf.Tensor>();
  for (const [k, t] of model.stateDict()) tensors.set(`model.${k}`, t);
  for (const [k, t] of alg.saveState()) tensors.set(`alg.${k}`, t);
  // --adapt-params modules live outside the state_dict (docs/adapters.md#state).
  const adapters = isAdapterHost(model) ? model.adapters : null;
  if (adapters) for (const [k, t] of adapters.saveState()) tensors.set(`adapters.${k}`, t);
  try {
    const bytes = serializeSafetensors(await toWritable(tensors), boundaryTag(meta));
    writeFileSync(join(dir, STATE_FILE + '.tmp'), bytes);
    renameSync(join(dir, STATE_FILE + '.tmp'), join(dir, STATE_FILE));
    writeFileSync(join(dir, META_FILE + '.tmp'), JSON.stringify(meta));
    renameSync(join(dir, META_FILE + '.tmp'), join(dir, META_FILE));
  } catch (e) {
    for (const f of [STATE_FILE, META_FILE]) rmSync(join(dir, f + '.tmp'), { force: true });
    throw e;
  } finally {
    tf.dispose([...tensors.values()]);
  }
}

function boundaryTag(meta: Pick<CheckpointMeta, 'nextDomain' | 'batchIndex'>): Record<string, string> {
  return { next_domain: String(meta.nextDomain), batch_index: String(meta.batchIndex) };
}

export function readCheckpointMeta(dir: string): CheckpointMeta {
  const path = join(dir, META_FILE);
  if (!existsSync(path)) {
    throw new CtaError(`--resume ${dir}: no ${META_FILE} (the run stopped before its first domain finished: start it again)`);
  }
  const meta = JSON.parse(readFileSync(path, 'utf8')) as CheckpointMeta;
  if (meta.version !== 1) throw new CtaError(`${path}: unsupported checkpoint version ${String(meta.version)}`);
  return meta;
}

/** Restores model and algorithm tensors; rngs and past_size are restored by the runner. */
export async function restoreCheckpoint(dir: string, model: Classifier, alg: Algorithm, meta?: CheckpointMeta): Promise<void> {
  const path = join(dir, STATE_FILE);
  const { tensors: raw, metadata } = parseSafetensorsWithMetadata(await readWeightBytes(path), path);
  // Checkpoints written before the tag existed carry none: nothing to compare.
  if (meta && metadata.next_domain !== undefined) {
    const want = boundaryTag(meta);
    if (metadata.next_domain !== want.next_domain || metadata.batch_index !== want.batch_index) {
      throw new CtaError(
        `--resume ${dir}: ${STATE_FILE} (before domain ${Number(metadata.next_domain) + 1}) and ${META_FILE} (before domain ${meta.nextDomain + 1}) ` +
          'are from different domain boundaries (the run was killed while writing them): start the run again',
      );
    }
  }
  const modelState = new Map<string, tf.Tensor>();
  const algState = new Map<string, tf.Tensor>();
  const adapterState = new Map<string, tf.Tensor>();
  for (const [k, t] of raw) {
    // The reader widens integers to Float64Array, which tf.tensor refuses for int32.
    const tensor = t.dtype === 'int32' ? tf.tensor(Int32Array.from(t.data), t.shape, 'int32') : tf.tensor(t.data, t.shape, 'float32');
    if (k.startsWith('model.')) modelState.set(k.slice(6), tensor);
    else if (k.startsWith('alg.')) algState.set(k.slice(4), tensor);
    else if (k.startsWith('adapters.')) adapterState.set(k.slice(9), tensor);
    else tensor.dispose();
  }
  try {
    model.loadStateDict(modelState);
    const adapters = isAdapterHost(model) ? model.adapters : null;
    if (adapters) adapters.loadState(adapterState);
    else if (adapterState.size > 0) throw new CtaError(`--resume ${dir}: the checkpoint holds --adapt-params modules but the run has none`);
    alg.loadState(algState);
  } finally {
    tf.dispose([...modelState.values(), ...algState.values(), ...adapterState.values()]);
  }
}
