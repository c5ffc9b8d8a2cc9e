/**
 * Gradient checkpointing with every registered gradient method (ALGORITHM_NAMES, so a new method
 * is covered once registered; docs/memory.md#gradient-checkpointing): one step with
 * --grad-checkpoint-segments 2 leaves the model exactly as the step without (1e-6), on a reduced
 * ResNeXt with two blocks per stage (block 0 of each stage is a checkpointed segment).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { buildModel } from '../models/registry.js';
import type { ResNeXtArch } from '../models/resnext.js';
import { testImages } from '../models/test-weights.js';
import { expectClose } from '../models/test-helpers.js';
import { ALGORITHM_NAMES, ALGORITHMS } from '../algorithms/registry.js';
import type { AlgorithmContext } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { adaptOptions } from '../runner/prepare.js';
import { defaultConfig } from '../config/schema.js';
import { randomResNeXt } from './random-weights.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const ARCH: ResNeXtArch = {
  stem: 8,
  cardinality: 2,
  stages: [
    { blocks: 2, inner: 8, out: 16, stride: 1 },
    { blocks: 2, inner: 16, out: 32, stride: 2 },
    { blocks: 2, inner: 16, out: 32, stride: 2 },
  ],
  numClasses: 10,
  hasInputNorm: true,
  depth: 20,
  baseWidth: 32,
};

/** The model state after one step of `alg` with S segments; null if the method refuses the model. */
async function stepState(alg: string, s: number): Promise<Map<string, Float32Array> | null> {
  const m = buildModel('resnext29', randomResNeXt(ARCH, 5), { rng: new Rng(1) });
  m.gradCheckpoint!.segments = s;
  // few augmented copies and Fisher samples: the same code paths, quickly
  const cfg = { ...defaultConfig(), alg, eMargin: 0.4 * Math.log(10), fisherSize: 2, cottaAugmentations: 2 } as ReturnType<typeof defaultConfig>;
  const rng = new Rng(9);
  const ctx: AlgorithmContext = {
    rng,
    ...copiesAndAugmentation(m, rng),
    fisherData: async function* () {
      yield tf.tensor4d(testImages(2, 32, 7), [2, 32, 32, 3]);
    },
  };
  try {
    const a = await ALGORITHMS[alg as keyof typeof ALGORITHMS].create(m, adaptOptions(cfg), ctx);
    const x = tf.tensor4d(testImages(4, 32), [4, 32, 32, 3]);
    a.step(x).logits.dispose();
    x.dispose();
    a.dispose();
  } catch (e) {
    m.dispose();
    if (e instanceof CtaError) return null;
    throw e;
  }
  const sd = m.stateDict();
  const out = new Map([...sd].map(([k, t]) => [k, Float32Array.from(t.dataSync())]));
  sd.forEach((t) => t.dispose());
  m.dispose();
  return out;
}

describe('checkpointing with every gradient method', () => {
  const methods = ALGORITHM_NAMES.filter((a) => ALGORITHMS[a].usesGradients);
  it(`${methods.length} methods: one step with S = 2 equals one step without (1e-6)`, async () => {
    const ran: string[] = [];
    for (const alg of methods) {
      const plain = await stepState(alg, 1);
      if (!plain) continue; // the method refuses this model with one clear line
      const ckpt = await stepState(alg, 2);
      expect(ckpt, alg).not.toBeNull();
      for (const [k, v] of plain) expectClose(`${alg} ${k}`, ckpt!.get(k)!, v, 1e-6);
      ran.push(alg);
    }
    for (const alg of ['tent', 'eta', 'eata', 'sar', 'deyo', 'cotta', 'cotta_bn']) expect(ran).toContain(alg);
  }, 120_000);
});
