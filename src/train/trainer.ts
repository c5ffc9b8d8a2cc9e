/**
 * Source-model training for the demo weights (issue "Embedded default"): a RobustBench
 * CifarResNeXt trained from scratch with
 * - SGD, momentum 0.9, dampening 0, no Nesterov (src/algorithms/optim.ts), weight decay on the
 *   conv/linear weights only, added to the gradient as PyTorch does (g ← g + wd·θ);
 * - a cosine learning rate per iteration (CosineAnnealingLR with T_max = all steps, η_min = 0);
 * - RandomCrop(32, padding 4) + RandomHorizontalFlip augmentation;
 * - BatchNorm in 'train-update' mode (batch statistics; running stats updated with momentum 0.1
 *   and the unbiased variance, as PyTorch's train mode);
 * - cross-entropy loss (mean over the batch).
 * Evaluation uses the running statistics ('source' mode), like model.eval().
 *
 * The model is built through the same CifarResNeXt class the runner uses, with trainable conv and
 * linear weights (ops/conv.ts Conv2d computes its filter gradient itself: WASM has no
 * Conv2DBackpropFilter), so the saved state_dict is exactly what buildModel('resnext29') loads.
 */
import { rename } from 'node:fs/promises';
import { tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import type { StateDict } from '../io/types.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { CifarResNeXt, inferResNeXt } from '../models/resnext.js';
import { crossEntropy } from '../algorithms/losses.js';
import { SGD } from '../algorithms/optim.js';
import { makeBatch, type AugmentOptions, type ImageSet } from './augment.js';

export interface TrainOptions {
  epochs: number;
  batchSize: number;
  lr: number;
  momentum: number;
  weightDecay: number;
  augment: AugmentOptions | null;
  seed: number;
  /** Steps between progress lines (0: none). */
  logEvery: number;
  /** Evaluation batch size. */
  evalBatchSize: number;
}

export const DEFAULT_TRAIN: TrainOptions = {
  epochs: 10,
  batchSize: 128,
  lr: 0.1,
  momentum: 0.9,
  weightDecay: 5e-4,
  augment: { pad: 4, flip: true },
  seed: 1,
  logEvery: 50,
  evalBatchSize: 500,
};

export interface EpochRecord {
  epoch: number;
  steps: number;
  trainLoss: number;
  trainAcc: number;
  testAcc: number | null;
  lr: number;
  seconds: number;
}

export interface TrainHooks {
  log?: (line: string) => void;
  /** Called after each epoch with the model (e.g. to write a checkpoint). */
  onEpoch?: (rec: EpochRecord, model: CifarResNeXt) => Promise<void> | void;
}

/** CosineAnnealingLR value after `step` of `total` steps (η_min = 0). */
export function cosineLr(base: number, step: number, total: number): number {
  return total <= 0 ? base : (base * (1 + Math.cos((Math.PI * step) / total))) / 2;
}

/** Builds a trainable CifarResNeXt from a state dict in RobustBench layout. */
export function buildTrainable(sd: StateDict, seed = 0): CifarResNeXt {
  return new CifarResNeXt(sd, inferResNeXt(sd), { rng: new Rng(seed), trainWeights: true });
}

/** Top-1 accuracy (and optionally the logits) of `model` in its current norm mode, no tape. */
export function evaluate(
  model: { forward(x: tf.Tensor4D): tf.Tensor2D },
  set: ImageSet,
  batchSize: number,
  keepLogits = false,
): { accuracy: number; correct: number; logits: Float32Array | null } {
  const img = set.height * set.width * set.channels;
  const buf = new Float32Array(batchSize * img);
  let correct = 0;
  let logitsOut: Float32Array | null = null;
  for (let start = 0; start < set.n; start += batchSize) {
    const b = Math.min(batchSize, set.n - start);
    const idx = Int32Array.from({ length: b }, (_, i) => start + i);
    makeBatch(set, idx, buf, null, null);
    const logits = tf.tidy(() => model.forward(tf.tensor4d(buf.subarray(0, b * img), [b, set.height, set.width, set.channels])));
    const data = logits.dataSync() as Float32Array;
    const k = logits.shape[1];
    if (keepLogits) {
      logitsOut ??= new Float32Array(set.n * k);
      logitsOut.set(data, start * k);
    }
    logits.dispose();
    for (let i = 0; i < b; i++) if (argmax(data, i * k, k) === set.labels[start + i]) correct++;
  }
  return { accuracy: correct / set.n, correct, logits: logitsOut };
}

function argmax(data: ArrayLike<number>, off: number, k: number): number {
  let best = 0;
  for (let j = 1; j < k; j++) if (data[off + j] > data[off + best]) best = j;
  return best;
}

export interface StepResult {
  loss: number;
  correct: number;
}

/**
 * One SGD step on a batch (NHWC float32 in [0, 1]) in 'train-update' mode. The caller sets the
 * optimizer's learning rate beforehand.
 */
export function trainStep(
  model: CifarResNeXt,
  params: readonly tf.Variable[],
  decay: readonly boolean[],
  opt: SGD,
  weightDecay: number,
  x: tf.Tensor4D,
  labels: tf.Tensor1D,
): StepResult {
  return tf.tidy(() => {
    let logitsData: Float32Array | null = null;
    const { value, grads } = tf.variableGrads(() => {
      const logits = model.forward(x);
      logitsData = logits.dataSync() as Float32Array;
      return crossEntropy(logits, labels);
    }, params as tf.Variable[]);
    const g = params.map((p, i) => {
      const gi = grads[p.name];
      return decay[i] && weightDecay !== 0 ? tf.add(gi, tf.mul(p, weightDecay)) : gi;
    });
    opt.step(g);
    const lab = labels.dataSync();
    const k = model.numClasses;
    let correct = 0;
    for (let i = 0; i < lab.length; i++) if (argmax(logitsData!, i * k, k) === lab[i]) correct++;
    return { loss: value.dataSync()[0], correct };
  });
}

/** The safetensors metadata cta-train writes with the weights after each epoch. */
export function epochMetadata(arch: string, command: string, rec: EpochRecord, epochs: number, startMs: number): Record<string, string> {
  return {
    format: 'pt',
    arch,
    command,
    epoch: `${rec.epoch}/${epochs}`,
    train_loss: rec.trainLoss.toFixed(4),
    train_acc: rec.trainAcc.toFixed(4),
    test_acc: rec.testAcc === null ? 'n/a' : rec.testAcc.toFixed(4),
    seconds: ((Date.now() - startMs) / 1000).toFixed(0),
  };
}

/** What the epoch loop needs of one recipe (ResNeXt's SGD, the ViT's AdamW: vit-trainer.ts). */
export interface EpochRecipe {
  epochs: number;
  batchSize: number;
  augment: AugmentOptions | null;
  seed: number;
  logEvery: number;
  /** Sets the learning rate of global step `step` (of `total`) and returns it. */
  schedule(step: number, total: number): number;
  /** One optimizer step on a batch. */
  step(x: tf.Tensor4D, labels: tf.Tensor1D): StepResult;
  /** Test accuracy after an epoch (the caller's evaluation mode). */
  evaluate(test: ImageSet): number;
  /** Before each epoch's steps (e.g. BatchNorm in train mode), and after them. */
  beginEpoch?(): void;
  endEpoch?(): void;
  /** The learning rate in progress lines (default: 5 decimals). */
  formatLr?(lr: number): string;
}

/**
 * The epochs of a recipe on `train` (uint8 NHWC RGB, drop_last batches of a seeded permutation),
 * with progress lines, a divergence check and the test accuracy after every epoch.
 */
export async function runEpochs<M>(
  model: M,
  train: ImageSet,
  test: ImageSet | null,
  recipe: EpochRecipe,
  hooks: { log?: (line: string) => void; onEpoch?: (rec: EpochRecord, model: M) => Promise<void> | void } = {},
): Promise<EpochRecord[]> {
  const log = hooks.log ?? (() => {});
  const rng = new Rng(recipe.seed);
  const stepsPerEpoch = Math.floor(train.n / recipe.batchSize); // drop_last, as the usual CIFAR scripts
  const total = stepsPerEpoch * recipe.epochs;
  const img = train.height * train.width * train.channels;
  const buf = new Float32Array(recipe.batchSize * img);
  const records: EpochRecord[] = [];
  let step = 0;
  let lr = 0;
  for (let epoch = 1; epoch <= recipe.epochs; epoch++) {
    const t0 = Date.now();
    recipe.beginEpoch?.();
    const perm = rng.permutation(train.n);
    let lossSum = 0;
    let correct = 0;
    let seen = 0;
    let lastLog = Date.now();
    for (let s = 0; s < stepsPerEpoch; s++, step++) {
      lr = recipe.schedule(step, total);
      const idx = perm.subarray(s * recipe.batchSize, (s + 1) * recipe.batchSize);
      makeBatch(train, idx, buf, recipe.augment, rng);
      const x = tf.tensor4d(buf, [recipe.batchSize, train.height, train.width, train.channels]);
      const y = tf.tensor1d(Int32Array.from(idx, (i) => train.labels[i]), 'int32');
      let r: StepResult;
      try {
        r = recipe.step(x, y);
      } finally {
        x.dispose();
        y.dispose();
      }
      if (!Number.isFinite(r.loss)) throw new Error(`training diverged: loss ${r.loss} at epoch ${epoch} step ${s + 1}`);
      lossSum += r.loss * recipe.batchSize;
      correct += r.correct;
      seen += recipe.batchSize;
      if (recipe.logEvery > 0 && (s + 1) % recipe.logEvery === 0) {
        const now = Date.now();
        const ips = (recipe.logEvery * recipe.batchSize) / ((now - lastLog) / 1000);
        lastLog = now;
        log(
          `epoch ${epoch} step ${s + 1}/${stepsPerEpoch} loss ${(lossSum / seen).toFixed(4)} acc ${(correct / seen).toFixed(4)} lr ${recipe.formatLr ? recipe.formatLr(lr) : lr.toFixed(5)} ${ips.toFixed(1)} img/s tensors ${tf.memory().numTensors}`,
        );
      }
    }
    recipe.endEpoch?.();
    const testAcc = test ? recipe.evaluate(test) : null;
    const rec: EpochRecord = { epoch, steps: step, trainLoss: lossSum / seen, trainAcc: correct / seen, testAcc, lr, seconds: (Date.now() - t0) / 1000 };
    records.push(rec);
    log(
      `epoch ${epoch}/${recipe.epochs} done: train loss ${rec.trainLoss.toFixed(4)} train acc ${rec.trainAcc.toFixed(4)}` +
        (testAcc === null ? '' : ` test acc ${testAcc.toFixed(4)}`) +
        ` (${rec.seconds.toFixed(0)} s)`,
    );
    await hooks.onEpoch?.(rec, model);
  }
  return records;
}

/**
 * Trains `model` in place on `train` (uint8 NHWC RGB); evaluates on `test` after every epoch when
 * given. Returns the per-epoch records.
 */
export async function trainModel(
  model: CifarResNeXt,
  train: ImageSet,
  test: ImageSet | null,
  opts: TrainOptions,
  hooks: TrainHooks = {},
): Promise<EpochRecord[]> {
  const weights = model.trainableWeights();
  model.setTrainable(true);
  const params = [...weights.map((w) => w.variable), ...model.trainableParams()];
  const decay = [...weights.map((w) => w.isWeight), ...model.trainableParams().map(() => false)];
  // SGD reads opts.lr on every step: the schedule updates this object in place.
  const sgdOpts = { lr: opts.lr, momentum: opts.momentum };
  const opt = new SGD(params, sgdOpts);
  try {
    return await runEpochs(model, train, test, {
      ...opts,
      schedule: (step, total) => (sgdOpts.lr = cosineLr(opts.lr, step, total)),
      step: (x, y) => trainStep(model, params, decay, opt, opts.weightDecay, x, y),
      beginEpoch: () => model.setNormMode('train-update'),
      endEpoch: () => model.setNormMode('source'),
      evaluate: (set) => evaluate(model, set, opts.evalBatchSize).accuracy,
    }, hooks);
  } finally {
    opt.dispose();
    model.setNormMode('source');
  }
}

/**
 * The model's state_dict as safetensors entries in PyTorch order, with a `num_batches_tracked`
 * I64 scalar (= `steps`) after each BN's running_var, as `torch.save(model.state_dict())` has.
 */
export function stateDictForSave(model: CifarResNeXt, steps: number): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  const sd = model.stateDict();
  try {
    for (const [key, t] of sd) {
      out.set(key, { dtype: 'float32', shape: t.shape, data: t.dataSync() as Float32Array });
      if (key.endsWith('.running_var')) {
        out.set(`${key.slice(0, -'running_var'.length)}num_batches_tracked`, { dtype: 'int64', shape: [], data: [steps] });
      }
    }
  } finally {
    for (const t of sd.values()) t.dispose();
  }
  return out;
}

/** Writes the model atomically (temp file + rename), so a reader never sees half a file. */
export async function saveModel(
  path: string,
  model: CifarResNeXt,
  steps: number,
  metadata?: Record<string, string>,
): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeSafetensors(tmp, stateDictForSave(model, steps), metadata);
  await rename(tmp, path);
}
