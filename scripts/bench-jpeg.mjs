#!/usr/bin/env node
/**
 * Throughput of the ImageNet-C JPEG pipeline alone against the model's Tent step (uses dist/: run
 * `npx tsc -p tsconfig.json` first):
 *
 *   node scripts/bench-jpeg.mjs [--images 512] [--batch 64] [--prefetch 2] [--models resnet50,vit_b16]
 *                               [--model-batch 4] [--steps 2] [--no-model]
 *
 * 1. Writes an ImageNet-C-layout tree of 224×224 q85 JPEGs (and a clean folder of 500×375 ones),
 *    then streams it through the same source the runner uses (`imageNetCSource(...).open().batches()`:
 *    sharp decode in the bounded prefetch queue + uint8 → float32): img/s for the ImageNet-C decode
 *    and for the clean Resize(256) + CenterCrop(224) path; best of 3 passes (warm page cache).
 * 2. For each model: a full-size random-weight model (torchvision / timm key names), one warm-up
 *    and `--steps` timed Tent steps (SGD) on 224×224 batches on the WASM backend: img/s.
 * Prints one JSON line per measurement, then the ratio pipeline / Tent step per model.
 */
import { parseArgs } from 'node:util';
import { rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { initBackend, tf } from '../dist/tf.js';
import { imageNetCSource } from '../dist/data/imagenet-c.js';
import { makeImageNetTree } from '../dist/data/imagenet-tree.js';
import { buildModel, MODELS } from '../dist/models/registry.js';
import { testImages } from '../dist/models/test-weights.js';
import { randomStateDict } from '../dist/memory/random-weights.js';
import { ALGORITHMS } from '../dist/algorithms/registry.js';
import { Rng } from '../dist/util/rng.js';

const { values: a } = parseArgs({
  options: {
    images: { type: 'string', default: '512' },
    batch: { type: 'string', default: '64' },
    prefetch: { type: 'string', default: '2' },
    models: { type: 'string', default: 'resnet50,vit_b16' },
    'model-batch': { type: 'string', default: '4' },
    steps: { type: 'string', default: '2' },
    'no-model': { type: 'boolean', default: false },
  },
});
const images = Number(a.images);
const batch = Number(a.batch);
const prefetchBatches = Number(a.prefetch);
const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const machine = { cpus: cpus().length, cpu: cpus()[0]?.model ?? '?', node: process.version, uv_threadpool: Number(process.env.UV_THREADPOOL_SIZE ?? 4) };

// --- 1. JPEG pipeline ---------------------------------------------------------------------------
const wnids = Array.from({ length: 8 }, (_, i) => `n0${1440764 + i}`);
const perClass = Math.ceil(images / wnids.length);
const tree = await makeImageNetTree({ wnids, perClass, corruptions: ['fog'], cleanSizes: [[500, 375], [375, 500]] });

async function pipeline(name, passes = 3) {
  const src = imageNetCSource({ dataDir: tree.imagenetC, severity: 5, corruptions: ['fog'], cleanDir: tree.clean, prefetchBatches });
  await src.validate();
  const d = await src.open(name);
  const order = new Rng(1).permutation(d.n);
  let best = 0;
  for (let p = 0; p < passes; p++) {
    const t0 = performance.now();
    let n = 0;
    for await (const b of d.batches(order, batch)) n += b.y.length;
    best = Math.max(best, n / ((performance.now() - t0) / 1000));
  }
  return { n: d.n, imgPerS: best };
}

const ic = await pipeline('fog');
emit({ bench: 'jpeg-pipeline', path: 'imagenetc-decode', size: 224, images: ic.n, batch, prefetch_batches: prefetchBatches, img_per_s: Math.round(ic.imgPerS * 10) / 10, ...machine });
const cl = await pipeline('original');
emit({ bench: 'jpeg-pipeline', path: 'clean-resize256-crop224', source_size: '500x375', size: 224, images: cl.n, batch, prefetch_batches: prefetchBatches, img_per_s: Math.round(cl.imgPerS * 10) / 10, ...machine });
rmSync(tree.root, { recursive: true, force: true });

// --- 2. Tent step of the full-size models ---------------------------------------------------------
if (!a['no-model']) {
  await initBackend('wasm');
  const mb = Number(a['model-batch']);
  const steps = Number(a.steps);
  for (const name of a.models.split(',').filter(Boolean)) {
    if (!(name in MODELS)) throw new Error(`--models: ${name} is not a registered model`);
    const sd = randomStateDict(name, { seed: 1 });
    const model = buildModel(name, sd, { rng: new Rng(1) });
    sd.clear();
    const alg = await ALGORITHMS.tent.create(model, { lr: 0.00025, momentum: 0.9, optimizer: 'sgd', episodic: false, eMargin: 2.76, dMargin: 0.05, fisherAlpha: 2000, fisherSize: 2000, matchedUpdate: 'momentum' }, { rng: new Rng(2) });
    const x = tf.tensor4d(testImages(mb, 224), [mb, 224, 224, 3]);
    const times = [];
    for (let s = 0; s <= steps; s++) {
      const t0 = performance.now();
      const r = alg.step(x);
      await r.logits.data();
      r.logits.dispose();
      if (s > 0) times.push(performance.now() - t0); // step 0 = warm-up
    }
    const sec = times.reduce((p, v) => p + v, 0) / times.length / 1000;
    const tent = mb / sec;
    emit({ bench: 'tent-step', model: name, backend: tf.getBackend(), batch: mb, steps, s_per_step: Math.round(sec * 100) / 100, img_per_s: Math.round(tent * 1000) / 1000, ...machine });
    emit({ bench: 'ratio', model: name, jpeg_img_per_s: Math.round(ic.imgPerS * 10) / 10, tent_img_per_s: Math.round(tent * 1000) / 1000, ratio: Math.round((ic.imgPerS / tent) * 10) / 10, at_least_5x: ic.imgPerS >= 5 * tent });
    x.dispose();
    alg.dispose();
    model.dispose();
  }
}
