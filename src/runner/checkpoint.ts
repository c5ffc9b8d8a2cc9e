/**
 * Domain-boundary checkpoints for `cta-eval --resume DIR`. Everything that makes the rest of a
 * continual run depend on its past is saved: the model's parameters and (accumulated) statistics,
 * each norm layer's MECTA past_size, the algorithm's state (optimizer slots, EATA moving average
 * and Fisher), every random generator, the stream position and the results so far. Resuming from
 * it gives the same numbers as an uninterrupted run.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { readSafetensors, serializeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import type { Classifier } from '../models/types.js';
import type { Algorithm } from '../algorithms/types.js';
import type { Summary } from './output.js';

const STATE_FILE = 'checkpoint.safetensors';
const META_FILE = 'checkpoint.json';

export interface CheckpointMeta {
  version: 1;
  /** Index (in the stream) of the first domain still to run. */
  nextDomain: number;
  /** Lines of batches.jsonl that belong to finished domains. */
  batchIndex: number;
  rngs: Record<string, number[]>;
  pastSizes: number[];
  summary: Summary;
  /** Sample orders of finished domains, for the stream fingerprint. */
  orders: { name: string; severity: number | null; order: number[] }[];
}

async function toWritable(tensors: Map<string, tf.Tensor>): Promise<Map<string, TensorToWrite>> {
  const out = new Map<string, TensorToWrite>();
  for (const [k, t] of tensors) {
    out.set(k, { dtype: t.dtype === 'int32' ? 'int32' : 'float32', shape: t.shape, data: await t.data() });
  }
  return out;
}

/** Writes both files atomically (tmp + rename), tensors first, so a crash leaves the last good pair. */
export async function saveCheckpoint(dir: string, meta: CheckpointMeta, model: Classifier, alg: Algorithm): Promise<void> {
  const tensors = new Map<string, tf.Tensor>();
  for (const [k, t] of model.stateDict()) tensors.set(`model.${k}`, t);
  for (const [k, t] of alg.saveState()) tensors.set(`alg.${k}`, t);
  try {
    const bytes = serializeSafetensors(await toWritable(tensors));
    writeFileSync(join(dir, STATE_FILE + '.tmp'), bytes);
    renameSync(join(dir, STATE_FILE + '.tmp'), join(dir, STATE_FILE));
    writeFileSync(join(dir, META_FILE + '.tmp'), JSON.stringify(meta));
    renameSync(join(dir, META_FILE + '.tmp'), join(dir, META_FILE));
  } finally {
    tf.dispose([...tensors.values()]);
  }
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
export async function restoreCheckpoint(dir: string, model: Classifier, alg: Algorithm): Promise<void> {
  const raw = await readSafetensors(join(dir, STATE_FILE));
  const modelState = new Map<string, tf.Tensor>();
  const algState = new Map<string, tf.Tensor>();
  for (const [k, t] of raw) {
    const tensor = tf.tensor(t.data, t.shape, t.dtype === 'int32' ? 'int32' : 'float32');
    if (k.startsWith('model.')) modelState.set(k.slice(6), tensor);
    else if (k.startsWith('alg.')) algState.set(k.slice(4), tensor);
    else tensor.dispose();
  }
  try {
    model.loadStateDict(modelState);
    alg.loadState(algState);
  } finally {
    tf.dispose([...modelState.values(), ...algState.values()]);
  }
}
