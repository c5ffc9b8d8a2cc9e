#!/usr/bin/env node
/**
 * Full-size ImageNet-C protocol check: `node scripts/full-size-protocol.mjs [flags]` (needs a
 * built dist/: `npx tsc -p tsconfig.json`).
 *
 * Why: the end-to-end tests (test/e2e/imagenet.test.ts) run the ImageNet-C protocol with reduced
 * models so that they stay fast. This script is the re-runnable check that the FULL-size models —
 * torchvision ResNet-50 and timm ViT-B/16 (vit_base_patch16_224), with the real state_dict key
 * names and shapes — build from a state_dict and run the whole continual protocol end to end
 * through the real CLI (bin/cta-eval.js).
 *
 * What it does, in a temporary folder (removed afterwards unless --keep):
 *   1. generates an ImageNet-C-layout tree (makeImageNetTree): the 15 corruptions of the protocol
 *      at severity 5 plus a clean validation folder, --classes wnids × --images-per-class JPEGs;
 *   2. per model, writes random weights at the published size (1000 classes; the parameter count
 *      is checked against the published one), with the classifier head cut to the tree's classes
 *      (labels are ranks of the sorted wnids, so the model needs exactly that many outputs), as a
 *      .safetensors file;
 *   3. runs `node bin/cta-eval.js` with configs/imagenet/tent.yaml (ResNet-50) or vit-tent.yaml
 *      (ViT-B/16) and --batch-size / --threads overrides;
 *   4. prints per model: state-dict parameter count, domains completed (16 expected: 15
 *      corruptions + 'original'), mean error over the corruptions, wall seconds and summary.json.
 * Exit status: 0 when every run completed its 16 domains, 1 otherwise, 2 for bad flags.
 * The weights are random, so the error rates say nothing about accuracy — only that it runs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const NAME = 'full-size-protocol';

const HELP = `node scripts/${NAME}.mjs [flags]

  --models LIST            comma-separated, from resnet50,vit_b16 (default both)
  --classes N              wnids in the generated tree (default 4)
  --images-per-class N     JPEGs per wnid and domain (default 1)
  --batch-size N           cta-eval --batch-size (default 4)
  --threads N              passed to cta-eval --threads (WASM XNNPACK threads, 0 = one per CPU)
  --keep                   keep the temporary folder (tree, weights, run folders)
  -h, --help               this text
`;

/**
 * Per model: the ImageNet-C config it runs with, the classifier keys to cut to the tree's classes,
 * and the published parameter count at 1000 classes (trainable parameters: BN running statistics
 * excluded) — torchvision resnet50 and timm vit_base_patch16_224 — and whether the file gets
 * BatchNorm's num_batches_tracked entries.
 */
const MODELS = {
  resnet50: { config: 'configs/imagenet/tent.yaml', head: ['fc.weight', 'fc.bias'], published: 25_557_032, batchCounters: true },
  vit_b16: { config: 'configs/imagenet/vit-tent.yaml', head: ['head.weight', 'head.bias'], published: 86_567_656 },
};

/** Real ImageNet wnids (the first classes of the 1000), then made-up ones beyond them. */
const WNIDS = ['n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475', 'n01496331', 'n01498041', 'n01514668', 'n01514859', 'n01518878'];

class UsageError extends Error {}

function positiveInt(value, flag, min = 1) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag}: '${value}' is not an integer ≥ ${min}`);
  return n;
}

function parseFlags(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        models: { type: 'string', default: 'resnet50,vit_b16' },
        classes: { type: 'string', default: '4' },
        'images-per-class': { type: 'string', default: '1' },
        'batch-size': { type: 'string', default: '4' },
        threads: { type: 'string' },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UsageError(e.message);
  }
  if (values.help) return { help: true };
  const models = values.models.split(',').map((s) => s.trim()).filter(Boolean);
  if (models.length === 0) throw new UsageError('--models: empty list');
  for (const m of models) {
    if (!Object.hasOwn(MODELS, m)) throw new UsageError(`--models: unknown model '${m}' (choose from ${Object.keys(MODELS).join(', ')})`);
  }
  return {
    models: [...new Set(models)],
    classes: positiveInt(values.classes, '--classes'),
    perClass: positiveInt(values['images-per-class'], '--images-per-class'),
    batchSize: positiveInt(values['batch-size'], '--batch-size'),
    threads: values.threads === undefined ? undefined : positiveInt(values.threads, '--threads', 0),
    keep: values.keep,
  };
}

function wnidsFor(n) {
  const out = WNIDS.slice(0, n);
  for (let i = out.length; i < n; i++) out.push(`n9${String(i).padStart(7, '0')}`);
  return out.sort();
}

const numel = (shape) => shape.reduce((a, d) => a * d, 1);
const isBuffer = (key) => /\.(running_mean|running_var|num_batches_tracked)$/.test(key);

function countParams(sd) {
  let values = 0;
  let trainable = 0;
  for (const [key, t] of sd) {
    const n = numel(t.shape);
    values += n;
    if (!isBuffer(key)) trainable += n;
  }
  return { tensors: sd.size, values, trainable };
}

/** Keeps the first `classes` rows of the classifier weight and bias (as the e2e test does). */
function cutHead(sd, [weightKey, biasKey], classes) {
  const w = sd.get(weightKey);
  const b = sd.get(biasKey);
  if (!w || !b || w.shape.length !== 2 || b.shape.length !== 1) {
    throw new Error(`random state dict has no classifier '${weightKey}' [out, in] / '${biasKey}' [out]`);
  }
  if (w.shape[0] < classes) throw new Error(`${weightKey} has ${w.shape[0]} outputs, fewer than the ${classes} classes`);
  const inF = w.shape[1];
  sd.set(weightKey, { dtype: 'float32', shape: [classes, inF], data: w.data.subarray(0, classes * inF) });
  sd.set(biasKey, { dtype: 'float32', shape: [classes], data: b.data.subarray(0, classes) });
}

/**
 * A torchvision state_dict also holds an int64 scalar `num_batches_tracked` after every BatchNorm's
 * `running_var` (320 entries for ResNet-50); the random one leaves them out, so add them here so
 * that the file has exactly torchvision's keys, in its order, and the loader's handling of them runs.
 */
function withBatchCounters(sd) {
  const out = new Map();
  for (const [key, t] of sd) {
    out.set(key, t);
    if (key.endsWith('.running_var')) out.set(`${key.slice(0, -'running_var'.length)}num_batches_tracked`, { dtype: 'int64', shape: [], data: [0] });
  }
  return out;
}

async function writeWeights(model, classes, dir, lib) {
  const spec = MODELS[model];
  const sd = lib.randomStateDict(model, { numClasses: 1000, seed: 1 });
  const full = countParams(sd);
  if (full.trainable !== spec.published) {
    throw new Error(`${model}: the random state dict has ${full.trainable.toLocaleString('en-US')} parameters at 1000 classes, not the published ${spec.published.toLocaleString('en-US')}`);
  }
  cutHead(sd, spec.head, classes);
  const tensors = spec.batchCounters ? withBatchCounters(sd) : sd;
  const path = join(dir, `${model}_${classes}cls.safetensors`);
  await lib.writeSafetensors(path, tensors);
  return { path, full, written: countParams(tensors), bytes: statSync(path).size };
}

function runCli(model, weights, tree, opts, outDir) {
  const args = [
    join(ROOT, 'bin', 'cta-eval.js'),
    '--config', join(ROOT, MODELS[model].config),
    '--data', 'imagenetc',
    '--data-dir', tree.imagenetC,
    '--clean-dir', tree.clean,
    '--model', model,
    '--weights', weights,
    '--alg', 'tent',
    '--batch-size', String(opts.batchSize),
    '--progress', 'plain',
    '--out', outDir,
    ...(opts.threads !== undefined ? ['--threads', String(opts.threads)] : []),
  ];
  console.log(`\n$ node ${args.map((a) => (a.startsWith(ROOT + '/') ? relative(ROOT, a) : a)).join(' ')}`);
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.error) return { seconds, failure: `could not start cta-eval: ${r.error.message}` };
  const summaryPath = join(outDir, 'summary.json');
  const summary = existsSync(summaryPath) ? JSON.parse(readFileSync(summaryPath, 'utf8')) : null;
  const failure =
    r.status !== 0 ? `cta-eval exited with ${r.status ?? `signal ${r.signal}`}` : !summary ? 'no summary.json written' : !summary.complete ? 'summary.json is not complete' : null;
  return { seconds, summary, summaryPath: summary ? summaryPath : null, failure };
}

const fmt = (n) => n.toLocaleString('en-US');
const pct = (v) => (typeof v === 'number' ? `${v.toFixed(2)} %` : String(v));

async function main(argv) {
  const opts = parseFlags(argv);
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const distFile = join(ROOT, 'dist', 'cli', 'cta-eval.js');
  if (!existsSync(distFile)) throw new Error(`${relative(ROOT, distFile)} is missing: build first (npx tsc -p tsconfig.json)`);
  const [{ makeImageNetTree }, { CORRUPTIONS_15 }, { randomStateDict }, { writeSafetensors }] = await Promise.all([
    import('../dist/data/imagenet-tree.js'),
    import('../dist/data/stream.js'),
    import('../dist/memory/random-weights.js'),
    import('../dist/io/safetensors.js'),
  ]);
  const expectedDomains = CORRUPTIONS_15.length + 1;

  const work = mkdtempSync(join(tmpdir(), 'cta-fullsize-'));
  let tree = null;
  const results = [];
  try {
    const t0 = performance.now();
    tree = await makeImageNetTree({ wnids: wnidsFor(opts.classes), perClass: opts.perClass, corruptions: [...CORRUPTIONS_15], severity: 5 });
    console.log(
      `tree: ${tree.root} — ${CORRUPTIONS_15.length} corruptions × ${tree.wnids.length} classes × ${opts.perClass} image(s) + clean val ` +
        `(${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    for (const model of opts.models) {
      const tw = performance.now();
      const w = await writeWeights(model, tree.wnids.length, work, { randomStateDict, writeSafetensors });
      console.log(
        `${model}: ${fmt(w.full.trainable)} parameters at 1000 classes (the published size); ` +
          `written with ${tree.wnids.length} classes: ${w.written.tensors} tensors, ${fmt(w.written.values)} values (${fmt(w.written.trainable)} parameters), ` +
          `${(w.bytes / 2 ** 20).toFixed(1)} MiB (${((performance.now() - tw) / 1000).toFixed(1)} s)`,
      );
      const run = runCli(model, w.path, tree, opts, join(work, `${model}-tent`));
      const domains = run.summary?.domains ?? [];
      let failure = run.failure;
      if (!failure && domains.length < expectedDomains) failure = `only ${domains.length} of ${expectedDomains} domains`;
      results.push({ model, weights: w, run, domains, failure });
    }
  } finally {
    printResults(results, expectedDomains, opts);
    if (opts.keep) {
      console.log(`\nkept: ${work}${tree ? ` and ${tree.root}` : ''}`);
    } else {
      rmSync(work, { recursive: true, force: true });
      if (tree) rmSync(tree.root, { recursive: true, force: true });
    }
  }
  const failed = results.filter((r) => r.failure);
  if (failed.length > 0) {
    throw new Error(failed.map((r) => `${r.model}: ${r.failure}`).join('; '));
  }
  return 0;
}

function printResults(results, expectedDomains, opts) {
  if (results.length === 0) return;
  console.log(`\n== full-size continual protocol (tent, batch ${opts.batchSize}${opts.threads !== undefined ? `, threads ${opts.threads}` : ''}) ==`);
  for (const r of results) {
    const s = r.run.summary;
    const steps = r.domains.reduce((a, d) => a + (d.batches ?? 0), 0);
    const adaptSecs = r.domains.reduce((a, d) => a + (d.seconds ?? 0), 0);
    console.log(`${r.model}${r.failure ? `  FAILED: ${r.failure}` : ''}`);
    console.log(`  parameters    ${fmt(r.weights.written.trainable)} (state dict: ${r.weights.written.tensors} tensors, ${fmt(r.weights.written.values)} values; ${fmt(r.weights.full.trainable)} at 1000 classes)`);
    console.log(`  domains       ${r.domains.length} / ${expectedDomains}${s ? ` (complete: ${s.complete})` : ''}`);
    console.log(`  mean error    ${s ? `${pct(s.mean_error)} over the corruptions, ${pct(s.mean_error_all)} over all domains` : '-'}`);
    if (r.domains.length) console.log(`  per domain    ${r.domains.map((d) => `${d.domain} ${typeof d.error === 'number' ? d.error.toFixed(1) : d.error}`).join(', ')}`);
    console.log(`  wall          ${r.run.seconds.toFixed(1)} s (domains ${adaptSecs.toFixed(1)} s, ${steps} steps${steps ? `, ${(adaptSecs / steps).toFixed(2)} s/step` : ''})`);
    console.log(`  summary.json  ${r.run.summaryPath ?? '-'}${r.run.summaryPath && !opts.keep ? ' (removed; --keep keeps it)' : ''}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`${NAME}: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(e instanceof UsageError ? 2 : 1);
  },
);
