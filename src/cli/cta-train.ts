/**
 * cta-train: trains a source model from scratch on a clean labelled set and writes a RobustBench
 * state_dict (.safetensors) that `cta-eval --model resnext29 --weights FILE` loads unchanged.
 * See src/train/trainer.ts for the recipe (SGD + cosine, crop/flip, train-mode BN). With
 * `--model vit_b16` it trains a small timm-layout ViT instead (src/train/vit-command.ts,
 * vit-trainer.ts: AdamW + warmup/cosine) that `cta-eval --model vit_b16 --weights FILE` loads.
 *
 * Own flags (not the run config), parsed with yargs; every error is one CtaError line (runMain).
 */
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { configureCli, parseArgv, valueOption, yargs } from './args.js';
import { coerce } from '../config/load.js';
import { FIELDS, defaultText } from '../config/schema.js';
import { runMain } from './run-main.js';
import { CtaError } from '../util/errors.js';
import { checkOutFile } from '../util/out-path.js';
import { BACKENDS, initBackend, tf, type BackendName } from '../tf.js';
import { Rng } from '../util/rng.js';
import { loadClean } from '../data/idx.js';
import { channelStats, type ImageSet } from '../train/augment.js';
import { countValues, initResNeXt, resnextShapes, type ResNeXtConfig } from '../train/init.js';
import { checkKeys, loadStateDict } from '../io/state-dict.js';
import { inferResNeXt, resnextExpectedKeys } from '../models/resnext.js';
import type { StateDict } from '../io/types.js';
import { DEFAULT_TRAIN, buildTrainable, epochMetadata, saveModel, trainModel, type EpochRecord, type TrainOptions } from '../train/trainer.js';
import { DEFAULT_VIT_TRAIN } from '../train/vit-trainer.js';
import { RESNEXT_ONLY_FLAGS, VIT_DEFAULTS, VIT_ONLY_FLAGS, trainVitCommand } from '../train/vit-command.js';

const USAGE = '$0 --data PATH --out FILE.safetensors [options]';
const ABOUT =
  'Trains a RobustBench CifarResNeXt from scratch (SGD momentum 0.9 + cosine LR, weight decay on conv/linear ' +
  'weights, RandomCrop(pad 4) + horizontal flip, BatchNorm in train mode) and writes its state_dict with the ' +
  'RobustBench key names, mu/sigma input-normalisation buffers (the training images\' per-channel mean/std) ' +
  'and num_batches_tracked. --data: an IDX images file (.gz ok; labels beside it), a CIFAR binary batch, an ' +
  '.npy pair, or a folder holding train-images-idx3-ubyte[.gz] (then t10k-images-idx3-ubyte[.gz] there is ' +
  'the default --test). Grey 28×28 images are padded to 32×32 RGB. The weights are rewritten after every epoch. ' +
  '--model vit_b16 trains a small Vision Transformer with timm key names instead (--vit-dim/--vit-depth/--vit-heads/' +
  '--vit-mlp-dim/--patch; AdamW with linear warmup + cosine, decay on matrices only, timm init); the head count and ' +
  'input normalisation go into the file\'s safetensors metadata, so cta-eval --model vit_b16 --weights FILE needs no extra flag.';

function last(v: unknown): unknown {
  return Array.isArray(v) ? v[v.length - 1] : v;
}

function num(name: string, v: unknown, opts: { int?: boolean; min?: number; minExclusive?: boolean } = {}): number | undefined {
  if (v === undefined) return undefined;
  const s = last(v);
  const n = Number(s);
  const bad =
    typeof s === 'boolean' ||
    String(s).trim() === '' ||
    !Number.isFinite(n) ||
    (opts.int && !Number.isInteger(n)) ||
    (opts.min !== undefined && (opts.minExclusive ? n <= opts.min : n < opts.min));
  if (bad) {
    const what = opts.int ? 'an integer' : 'a number';
    const bound = opts.min === undefined ? '' : ` ${opts.minExclusive ? '>' : '≥'} ${opts.min}`;
    throw new CtaError(`--${name}: expected ${what}${bound}, got ${JSON.stringify(s)}`);
  }
  return n;
}

function str(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined;
  const s = last(v);
  if (typeof s !== 'string' || s === '') throw new CtaError(`--${name}: expected a value`);
  return s;
}

/** A folder → its IDX file named `stem` (with or without .gz), else the path itself. */
function findIdx(dir: string, stem: string): string | null {
  for (const name of [`${stem}.gz`, stem]) if (existsSync(join(dir, name))) return join(dir, name);
  const alt = readdirSync(dir).find((f) => f.startsWith(stem.replace('-idx3-ubyte', '')) && f.includes('idx3'));
  return alt ? join(dir, alt) : null;
}

function resolveData(data: string, test: string | undefined): { train: string; test: string | null } {
  if (!existsSync(data)) throw new CtaError(`--data: ${data}: not found`);
  if (!statSync(data).isDirectory()) return { train: data, test: test ?? null };
  const train = findIdx(data, 'train-images-idx3-ubyte');
  if (!train) throw new CtaError(`--data: ${data} is a folder without train-images-idx3-ubyte[.gz]`);
  return { train, test: test ?? findIdx(data, 't10k-images-idx3-ubyte') };
}

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-train', async () => {
    const int = valueOption('int');
    const y = configureCli(yargs(argv), 'cta-train', USAGE)
      .epilogue(ABOUT)
      .option('data', { type: 'string', describe: 'training set: IDX images file, CIFAR binary batch, .npy, or a folder with train-images-idx3-ubyte[.gz]' })
      .option('test', { type: 'string', defaultDescription: 't10k-images-idx3-ubyte[.gz] beside a --data folder', describe: 'evaluation set after each epoch ("none" to skip)' })
      .option('out', { type: 'string', describe: 'output .safetensors (rewritten after every epoch)' })
      .option('model', { type: 'string', default: 'resnext29', defaultDescription: 'resnext29', describe: 'architecture: resnext29 (RobustBench CifarResNeXt) or vit_b16 (a small timm-layout ViT)' })
      .option('depth', { ...int, defaultDescription: '29', describe: 'depth 9·blocks+2 (11 = one block per stage)' })
      .option('cardinality', { ...int, defaultDescription: '4', describe: 'groups of the 3×3 convs' })
      .option('base-width', { ...int, defaultDescription: '32', describe: 'base_width: dim = floor(planes·base_width/64) per group' })
      .option('width', { ...int, defaultDescription: '64', describe: "stem width = stage-1 planes (RobustBench's 64); stages use w, 2w, 4w" })
      .option('init', { type: 'string', defaultDescription: 'none (random init)', describe: 'start from these weights instead of a random init: resnext29 .safetensors/.pt with mu/sigma, or a cta-train vit_b16 file (heads from its metadata); the architecture flags, if given, must match' })
      .option('vit-dim', { ...int, defaultDescription: String(VIT_DEFAULTS.dim), describe: 'vit_b16: token width D' })
      .option('vit-depth', { ...int, defaultDescription: String(VIT_DEFAULTS.depth), describe: 'vit_b16: transformer blocks' })
      .option('vit-heads', { ...int, defaultDescription: String(VIT_DEFAULTS.heads), describe: 'vit_b16: attention heads (divides --vit-dim; stored in the file metadata)' })
      .option('vit-mlp-dim', { ...int, defaultDescription: '4 × --vit-dim', describe: 'vit_b16: MLP hidden width' })
      .option('patch', { ...int, defaultDescription: String(VIT_DEFAULTS.patch), describe: 'vit_b16: patch side in pixels (divides 32)' })
      .option('warmup-steps', { ...int, defaultDescription: '5 % of all steps', describe: 'vit_b16: linear learning-rate warmup steps before the cosine' })
      .option('num-classes', { ...int, defaultDescription: 'max label + 1, at least 10', describe: 'classes' })
      .option('epochs', { ...int, defaultDescription: String(DEFAULT_TRAIN.epochs), describe: 'epochs' })
      .option('batch-size', { ...int, defaultDescription: String(DEFAULT_TRAIN.batchSize), describe: 'batch size (the last partial batch of an epoch is dropped)' })
      .option('lr', { ...valueOption('number'), defaultDescription: `${DEFAULT_TRAIN.lr} (vit_b16: ${DEFAULT_VIT_TRAIN.lr})`, describe: 'initial (vit_b16: peak, after warmup) learning rate of the cosine schedule' })
      .option('momentum', { ...valueOption('number'), defaultDescription: String(DEFAULT_TRAIN.momentum), describe: 'SGD momentum (resnext29)' })
      .option('weight-decay', { ...valueOption('number'), defaultDescription: `${DEFAULT_TRAIN.weightDecay} (vit_b16: ${DEFAULT_VIT_TRAIN.weightDecay})`, describe: 'L2 on conv/linear weights (vit_b16: AdamW decoupled decay on the weight matrices)' })
      .option('no-augment', { type: 'boolean', default: false, describe: 'no random crop / flip' })
      .option('crop-pad', { ...int, defaultDescription: '4', describe: 'RandomCrop padding; 0 = horizontal flip only' })
      .option('n-train', { ...int, defaultDescription: 'all', describe: 'use the first N training images' })
      .option('n-test', { ...int, defaultDescription: 'all', describe: 'evaluate on the first N test images' })
      .option('seed', { ...int, defaultDescription: String(DEFAULT_TRAIN.seed), describe: 'init / shuffle / augmentation seed' })
      .option('log-every', { ...int, defaultDescription: String(DEFAULT_TRAIN.logEvery), describe: 'progress line every N steps, 0 = none' })
      // The run config's own options, so the backend default and the checks are cta-eval's.
      .option('backend', { type: 'string', defaultDescription: defaultText('backend'), describe: `${FIELDS.backend.description} [${BACKENDS.join(', ')}]` })
      .option('threads', { ...int, defaultDescription: defaultText('threads'), describe: FIELDS.threads.description })
      .strict()
      // --no-augment is a flag of its own here, not the negation of --augment.
      .parserConfiguration({ 'camel-case-expansion': true, 'boolean-negation': false });
    const p = await parseArgv(y, argv);

    const dataArg = str('data', p.data);
    const out = str('out', p.out);
    if (!dataArg) throw new CtaError('--data: required (training images)');
    if (!out) throw new CtaError('--out: required (the .safetensors file to write)');
    checkOutFile('--out', out);
    const model = str('model', p.model)!;
    if (model !== 'resnext29' && model !== 'vit_b16') throw new CtaError(`--model ${model}: cta-train builds resnext29 (RobustBench CifarResNeXt) or vit_b16 (a small timm-layout ViT)`);
    // Each architecture's shape flags are refused for the other (argv spelling, as the user typed them).
    for (const flag of model === 'vit_b16' ? RESNEXT_ONLY_FLAGS : VIT_ONLY_FLAGS) {
      const key = flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
      if (p[key] !== undefined) throw new CtaError(`--${flag}: not an option of --model ${model} (${model === 'vit_b16' ? 'resnext29' : 'vit_b16'} only)`);
    }
    const backend = (p.backend === undefined ? FIELDS.backend.default : coerce('backend', last(p.backend), { kind: 'flag' })) as BackendName;
    const threads = (p.threads === undefined ? FIELDS.threads.default : coerce('threads', last(p.threads), { kind: 'flag' })) as number;
    const testArg = str('test', p.test);
    const files = resolveData(dataArg, testArg === 'none' ? undefined : testArg);
    if (testArg === 'none') files.test = null;

    if (model === 'vit_b16') {
      await trainVitCommand({ p, files, argv, out, backend, threads, num, str });
      return;
    }
    const opts: TrainOptions = {
      ...DEFAULT_TRAIN,
      epochs: num('epochs', p.epochs, { int: true, min: 1 }) ?? DEFAULT_TRAIN.epochs,
      batchSize: num('batch-size', p.batchSize, { int: true, min: 2 }) ?? DEFAULT_TRAIN.batchSize,
      lr: num('lr', p.lr, { min: 0, minExclusive: true }) ?? DEFAULT_TRAIN.lr,
      momentum: num('momentum', p.momentum, { min: 0 }) ?? DEFAULT_TRAIN.momentum,
      weightDecay: num('weight-decay', p.weightDecay, { min: 0 }) ?? DEFAULT_TRAIN.weightDecay,
      augment: p.noAugment ? null : { pad: num('crop-pad', p.cropPad, { int: true, min: 0 }) ?? 4, flip: true },
      seed: num('seed', p.seed, { int: true, min: 0 }) ?? DEFAULT_TRAIN.seed,
      logEvery: num('log-every', p.logEvery, { int: true, min: 0 }) ?? DEFAULT_TRAIN.logEvery,
    };
    const nTrain = num('n-train', p.nTrain, { int: true, min: 1 });
    const nTest = num('n-test', p.nTest, { int: true, min: 1 });

    const log = (line: string) => process.stdout.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`);
    const t0 = Date.now();
    const train: ImageSet = await loadClean(files.train, { nExamples: nTrain });
    const test: ImageSet | null = files.test ? await loadClean(files.test, { nExamples: nTest }) : null;
    if (train.height !== 32 || train.width !== 32) throw new CtaError(`${files.train}: images are ${train.height}×${train.width}; the CIFAR models need 32×32`);
    if (train.n < opts.batchSize) throw new CtaError(`--batch-size ${opts.batchSize} is larger than the ${train.n} training images`);
    let maxLabel = 0;
    for (const y of train.labels) maxLabel = Math.max(maxLabel, y);
    const flags = {
      depth: num('depth', p.depth, { int: true }),
      cardinality: num('cardinality', p.cardinality, { int: true }),
      baseWidth: num('base-width', p.baseWidth, { int: true }),
      width: num('width', p.width, { int: true }),
      numClasses: num('num-classes', p.numClasses, { int: true }),
    };
    const initPath = str('init', p.init);
    let initial: StateDict | null = null;
    let cfg: ResNeXtConfig;
    if (initPath) {
      initial = await loadStateDict(initPath); // num_batches_tracked dropped, module. stripped
      const a = inferResNeXt(initial);
      checkKeys(initial, resnextExpectedKeys(a), `--init ${initPath}`, 'resnext29');
      if (!a.hasInputNorm) throw new CtaError(`--init ${initPath}: has no mu/sigma input-normalisation buffers`);
      cfg = { depth: a.depth, cardinality: a.cardinality, baseWidth: a.baseWidth, width: a.stem, numClasses: a.numClasses };
      for (const [k, v] of Object.entries(flags)) {
        const have = cfg[k as keyof ResNeXtConfig];
        if (v !== undefined && v !== have) throw new CtaError(`--init ${initPath}: the weights have ${k} ${have}, the flags say ${v}`);
      }
    } else {
      cfg = {
        depth: flags.depth ?? 29,
        cardinality: flags.cardinality ?? 4,
        baseWidth: flags.baseWidth ?? 32,
        width: flags.width ?? 64,
        numClasses: flags.numClasses ?? Math.max(10, maxLabel + 1),
      };
    }
    if (maxLabel >= cfg.numClasses) throw new CtaError(`--num-classes ${cfg.numClasses}: the training labels go up to ${maxLabel}`);
    const shapes = resnextShapes(cfg);
    const values = countValues(shapes);

    const info = await initBackend(backend, threads);
    if (info.notice) log(info.notice);
    const stats = channelStats(train);
    const sd = initial ?? initResNeXt(cfg, new Rng(opts.seed), stats);
    const net = buildTrainable(sd, opts.seed);
    const arch = net.architecture;
    log(
      `cta-train: resnext29 depth ${arch.depth}, cardinality ${arch.cardinality}, base width ${arch.baseWidth}, width ${cfg.width} ` +
        `(stem ${arch.stem}, inner ${arch.stages.map((s) => s.inner).join('/')}, out ${arch.stages.map((s) => s.out).join('/')}), ` +
        `${values} values = ${((values * 4) / 1e6).toFixed(2)} MB float32`,
    );
    log(`train ${files.train} (${train.n} images), test ${files.test ?? 'none'}${test ? ` (${test.n})` : ''}, backend ${info.name}${info.threads > 1 ? ` (${info.threads} threads)` : ''}`);
    if (initPath) log(`init from ${initPath} (its mu/sigma are kept)`);
    else log(`mu ${stats.mean.map((v) => v.toFixed(4)).join(',')} sigma ${stats.std.map((v) => v.toFixed(4)).join(',')}`);
    log(
      `epochs ${opts.epochs}, batch ${opts.batchSize}, lr ${opts.lr} cosine, momentum ${opts.momentum}, weight decay ${opts.weightDecay}, ` +
        `augment ${opts.augment ? `${opts.augment.pad > 0 ? `crop pad ${opts.augment.pad} + ` : ''}flip` : 'none'}, seed ${opts.seed}`,
    );
    mkdirSync(dirname(out) || '.', { recursive: true });
    const command = `cta-train ${argv.join(' ')}`;
    const history: EpochRecord[] = [];
    const records = await trainModel(net, train, test, opts, {
      log,
      onEpoch: async (rec, m) => {
        history.push(rec);
        await saveModel(out, m, rec.steps, epochMetadata('resnext29', command, rec, opts.epochs, t0));
        log(`wrote ${out} (epoch ${rec.epoch})`);
      },
    });
    net.dispose();
    const lastRec = records[records.length - 1];
    log(
      `done in ${((Date.now() - t0) / 1000).toFixed(0)} s: train acc ${lastRec.trainAcc.toFixed(4)}` +
        (lastRec.testAcc === null ? '' : `, test acc ${lastRec.testAcc.toFixed(4)}`) +
        `; test acc per epoch: ${history.map((r) => (r.testAcc === null ? '-' : r.testAcc.toFixed(4))).join(' ')}`,
    );
    void tf;
  });
}
