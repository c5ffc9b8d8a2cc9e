/**
 * `cta-train --model vit_b16`: the ViT branch of src/cli/cta-train.ts (flags → VitTrainConfig /
 * VitTrainOptions, data, log lines, a checkpoint after every epoch). The recipe is in
 * vit-trainer.ts, the initialisation in vit-init.ts.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { CtaError } from '../util/errors.js';
import { initBackend, type BackendName } from '../tf.js';
import { Rng } from '../util/rng.js';
import { loadClean } from '../data/idx.js';
import type { ImageSet } from './augment.js';
import { epochMetadata, type EpochRecord } from './trainer.js';
import { initVit, vitArchOf, type VitTrainConfig } from './vit-init.js';
import { checkKeys, loadWeightFile } from '../io/state-dict.js';
import { resolveWeights } from '../models/weights-variant.js';
import { inferVit, vitExpectedKeys } from '../models/vit.js';
import type { StateDict } from '../io/types.js';
import type { InputNorm } from '../models/base.js';
import { DEFAULT_VIT_TRAIN, buildTrainableVit, saveVit, trainVit, vitParamGroups, type VitTrainOptions } from './vit-trainer.js';

/** Shape defaults of `--model vit_b16` (a ViT small enough to train on two CPU cores). */
export const VIT_DEFAULTS = { dim: 64, depth: 4, heads: 2, patch: 4 } as const;

/** Flags that shape a resnext29 only / a vit_b16 only (cta-train refuses them for the other). */
export const RESNEXT_ONLY_FLAGS = ['depth', 'cardinality', 'base-width', 'width', 'momentum'] as const;
export const VIT_ONLY_FLAGS = ['vit-dim', 'vit-depth', 'vit-heads', 'vit-mlp-dim', 'patch', 'warmup-steps'] as const;

type NumParser = (name: string, v: unknown, opts?: { int?: boolean; min?: number; minExclusive?: boolean }) => number | undefined;

export interface VitCommandInput {
  /** Parsed argv (camelCase keys). */
  p: Record<string, unknown>;
  files: { train: string; test: string | null };
  argv: readonly string[];
  out: string;
  backend: BackendName;
  threads: number;
  num: NumParser;
  str: (name: string, v: unknown) => string | undefined;
}

export async function trainVitCommand(c: VitCommandInput): Promise<void> {
  const { p, files, num } = c;
  const flags = {
    dim: num('vit-dim', p.vitDim, { int: true, min: 1 }),
    depth: num('vit-depth', p.vitDepth, { int: true, min: 1 }),
    heads: num('vit-heads', p.vitHeads, { int: true, min: 1 }),
    mlpDim: num('vit-mlp-dim', p.vitMlpDim, { int: true, min: 1 }),
    patch: num('patch', p.patch, { int: true, min: 1 }),
    numClasses: num('num-classes', p.numClasses, { int: true, min: 2 }),
  };
  // --init: continue from a cta-train ViT (shape and heads from the file; the flags, if given, must agree).
  const initPath = c.str('init', p.init);
  let initial: StateDict | null = null;
  let initialNorm: InputNorm | undefined;
  if (initPath) {
    const file = await loadWeightFile(initPath);
    const r = resolveWeights(file.sd, file.format, 'vit_b16', initPath, file.metadata);
    const a = inferVit(r.sd);
    checkKeys(r.sd, vitExpectedKeys(a), `--init ${initPath}`, 'vit_b16');
    if (r.heads === undefined) throw new CtaError(`--init ${initPath}: has no vit_heads metadata (not written by cta-train --model vit_b16)`);
    const have = { dim: a.dim, depth: a.depth, heads: r.heads, mlpDim: a.mlpDim, patch: a.patch, numClasses: a.numClasses };
    for (const [k, v] of Object.entries(flags)) {
      const h = have[k as keyof typeof have];
      if (v !== undefined && v !== h) throw new CtaError(`--init ${initPath}: the weights have ${k} ${h}, the flags say ${v}`);
    }
    Object.assign(flags, have);
    initial = r.sd;
    initialNorm = r.inputNorm;
  }
  const dim = flags.dim ?? VIT_DEFAULTS.dim;
  const partial = {
    dim,
    depth: flags.depth ?? VIT_DEFAULTS.depth,
    heads: flags.heads ?? VIT_DEFAULTS.heads,
    mlpDim: flags.mlpDim ?? 4 * dim,
    patch: flags.patch ?? VIT_DEFAULTS.patch,
  };
  const numClassesFlag = flags.numClasses;
  const batchSize = num('batch-size', p.batchSize, { int: true, min: 2 }) ?? DEFAULT_VIT_TRAIN.batchSize;
  const warmupFlag = num('warmup-steps', p.warmupSteps, { int: true, min: 0 });
  const opts: VitTrainOptions = {
    ...DEFAULT_VIT_TRAIN,
    epochs: num('epochs', p.epochs, { int: true, min: 1 }) ?? DEFAULT_VIT_TRAIN.epochs,
    batchSize,
    lr: num('lr', p.lr, { min: 0, minExclusive: true }) ?? DEFAULT_VIT_TRAIN.lr,
    weightDecay: num('weight-decay', p.weightDecay, { min: 0 }) ?? DEFAULT_VIT_TRAIN.weightDecay,
    augment: p.noAugment ? null : { pad: num('crop-pad', p.cropPad, { int: true, min: 0 }) ?? DEFAULT_VIT_TRAIN.augment!.pad, flip: true },
    seed: num('seed', p.seed, { int: true, min: 0 }) ?? DEFAULT_VIT_TRAIN.seed,
    logEvery: num('log-every', p.logEvery, { int: true, min: 0 }) ?? DEFAULT_VIT_TRAIN.logEvery,
  };
  const nTrain = num('n-train', p.nTrain, { int: true, min: 1 });
  const nTest = num('n-test', p.nTest, { int: true, min: 1 });
  // Shape errors before the (slow) data load.
  vitArchOf({ ...partial, imageSize: 32, numClasses: numClassesFlag ?? 10 });

  const log = (line: string) => process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
  const t0 = Date.now();
  const train: ImageSet = await loadClean(files.train, { nExamples: nTrain });
  const test: ImageSet | null = files.test ? await loadClean(files.test, { nExamples: nTest }) : null;
  if (train.height !== 32 || train.width !== 32) throw new CtaError(`${files.train}: images are ${train.height}×${train.width}; cta-train needs 32×32`);
  if (train.n < opts.batchSize) throw new CtaError(`--batch-size ${opts.batchSize} is larger than the ${train.n} training images`);
  let maxLabel = 0;
  for (const y of train.labels) maxLabel = Math.max(maxLabel, y);
  const cfg: VitTrainConfig = { ...partial, imageSize: 32, numClasses: numClassesFlag ?? Math.max(10, maxLabel + 1) };
  if (maxLabel >= cfg.numClasses) throw new CtaError(`--num-classes ${cfg.numClasses}: the training labels go up to ${maxLabel}`);
  const stepsPerEpoch = Math.floor(train.n / opts.batchSize);
  opts.warmupSteps = warmupFlag ?? Math.round(0.05 * stepsPerEpoch * opts.epochs);

  const info = await initBackend(c.backend, c.threads);
  if (info.notice) log(info.notice);
  const net = buildTrainableVit(initial ?? initVit(cfg, new Rng(opts.seed)), cfg.heads, initialNorm);
  try {
    const { count, decayed } = vitParamGroups(net, opts.weightDecay);
    const norm = net.inputNormalisation;
    log(
      `cta-train: vit_b16 width ${cfg.dim}, depth ${cfg.depth}, ${cfg.heads} heads, MLP ${cfg.mlpDim}, patch ${cfg.patch} ` +
        `(${(32 / cfg.patch) ** 2} + 1 tokens), ${cfg.numClasses} classes, ${count} values = ${((count * 4) / 1e6).toFixed(2)} MB float32 ` +
        `(${decayed} weight-decayed)`,
    );
    log(`train ${files.train} (${train.n} images), test ${files.test ?? 'none'}${test ? ` (${test.n})` : ''}, backend ${info.name}${info.threads > 1 ? ` (${info.threads} threads)` : ''}`);
    if (initPath) log(`init from ${initPath}`);
    log(`input normalisation mean ${norm.mean.join(',')} std ${norm.std.join(',')} (the model's; stored in the file metadata with the head count)`);
    log(
      `epochs ${opts.epochs}, batch ${opts.batchSize}, AdamW lr ${opts.lr} (warmup ${opts.warmupSteps} steps, then cosine), betas ${opts.beta1},${opts.beta2}, ` +
        `weight decay ${opts.weightDecay} on matrices, augment ${opts.augment ? `${opts.augment.pad > 0 ? `crop pad ${opts.augment.pad} + ` : ''}flip` : 'none'}, seed ${opts.seed}`,
    );
    mkdirSync(dirname(c.out) || '.', { recursive: true });
    const command = `cta-train ${c.argv.join(' ')}`;
    const history: EpochRecord[] = [];
    const records = await trainVit(net, train, test, opts, {
      log,
      onEpoch: async (rec, m) => {
        history.push(rec);
        await saveVit(c.out, m, epochMetadata('vit_b16', command, rec, opts.epochs, t0));
        log(`wrote ${c.out} (epoch ${rec.epoch})`);
      },
    });
    const lastRec = records[records.length - 1];
    log(
      `done in ${((Date.now() - t0) / 1000).toFixed(0)} s: train acc ${lastRec.trainAcc.toFixed(4)}` +
        (lastRec.testAcc === null ? '' : `, test acc ${lastRec.testAcc.toFixed(4)}`) +
        `; test acc per epoch: ${history.map((r) => (r.testAcc === null ? '-' : r.testAcc.toFixed(4))).join(' ')}`,
    );
  } finally {
    net.dispose();
  }
}
