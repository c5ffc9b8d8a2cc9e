/**
 * Gradient checkpointing (docs/memory.md#gradient-checkpointing, src/models/grad-checkpoint.ts):
 * MECTA's per-stage segment split; gradients equal to the uncheckpointed ones (1e-6) on reduced
 * ResNeXt, WRN, ResNet-50 and ViT shapes for norm-only and every-parameter training, in the
 * stateless and the statistics-updating norm modes; whole Tent / EATA / CoTTA steps leave the same
 * model; and the measured backprop bytes drop by exactly what the checkpointed segments no longer
 * keep.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { buildModel } from '../models/registry.js';
import type { ResNeXtArch } from '../models/resnext.js';
import { wrnExpectedKeys, type WrnArch } from '../models/wrn.js';
import { ResNet50, inferResNet, resnetExpectedKeys, type ResNetArch } from '../models/resnet50.js';
import { vitExpectedKeys, type VitArch } from '../models/vit.js';
import type { Classifier, MectaOptions, NormMode } from '../models/types.js';
import { stageSegments } from '../models/grad-checkpoint.js';
import { randomStateDictForKeys, testImages } from '../models/test-weights.js';
import { expectClose } from '../models/test-helpers.js';
import { TRAIN_ALL, TRAIN_NORM, trainingParameters } from '../algorithms/param-select.js';
import { softmaxEntropy } from '../algorithms/losses.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import type { AlgorithmContext } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { adaptOptions } from '../runner/prepare.js';
import { defaultConfig } from '../config/schema.js';
import { MemoryProbe } from './probe.js';
import { randomResNeXt } from './random-weights.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const RESNEXT: ResNeXtArch = {
  stem: 8,
  cardinality: 2,
  stages: [
    { blocks: 4, inner: 8, out: 16, stride: 1 },
    { blocks: 4, inner: 16, out: 32, stride: 2 },
    { blocks: 2, inner: 16, out: 32, stride: 2 },
  ],
  numClasses: 10,
  hasInputNorm: true,
  depth: 32,
  baseWidth: 32,
};
const WRN: WrnArch = {
  stem: 8,
  groups: [
    { layers: 4, width: 8, stride: 1 },
    { layers: 2, width: 16, stride: 2 },
    { layers: 3, width: 24, stride: 2 },
  ],
  numClasses: 10,
  depth: 22,
  widenFactor: 1,
};
const RESNET: ResNetArch = {
  prefix: '',
  hasNormalize: false,
  stem: 8,
  groups: 1,
  stages: [
    { blocks: 2, inner: 4, out: 16, stride: 1 },
    { blocks: 3, inner: 8, out: 32, stride: 2 },
    { blocks: 1, inner: 8, out: 32, stride: 2 },
    { blocks: 2, inner: 8, out: 32, stride: 2 },
  ],
  numClasses: 10,
  depth: 26,
};
const VIT: VitArch = { dim: 24, depth: 4, mlpDim: 48, patch: 8, grid: 4, numClasses: 10, qkvBias: true };

const MODELS: Record<string, () => Classifier> = {
  resnext29: () => buildModel('resnext29', randomResNeXt(RESNEXT, 3), { rng: new Rng(1) }),
  wrn28_10: () => buildModel('wrn28_10', randomStateDictForKeys([...wrnExpectedKeys(WRN)].map(([name, shape]) => ({ name, shape })), 4), { rng: new Rng(1) }),
  resnet50: () => {
    const sd = randomStateDictForKeys([...resnetExpectedKeys(RESNET)].map(([name, shape]) => ({ name, shape })), 5);
    return new ResNet50(sd, inferResNet(sd), { rng: new Rng(1), inputSize: 32 });
  },
  vit_b16: () => buildModel('vit_b16', randomStateDictForKeys([...vitExpectedKeys(VIT)].map(([name, shape]) => ({ name, shape })), 6), { rng: new Rng(1) }),
};

const MECTA: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 };

function images(n: number): tf.Tensor4D {
  return tf.tensor4d(testImages(n, 32), [n, 32, 32, 3]);
}

type Snapshot = { sd: Map<string, tf.Tensor>; past: number[] };
const snap = (m: Classifier): Snapshot => ({ sd: m.stateDict(), past: m.normLayers.map((l) => l.pastSize) });
function restore(m: Classifier, s: Snapshot): void {
  m.loadStateDict(s.sd);
  m.normLayers.forEach((l, i) => (l.pastSize = s.past[i]));
}
const free = (s: Snapshot) => s.sd.forEach((t) => t.dispose());

/** d mean-entropy / d trainable variables, and the statistics after the step. */
function entropyGrads(m: Classifier, x: tf.Tensor4D): { grads: Float32Array[]; stats: Float32Array[] } {
  const vars = trainingParameters(m).map((p) => p.variable!);
  const { value, grads } = tf.engine().gradients(() => tf.mean(softmaxEntropy(m.forward(x))) as tf.Scalar, vars, undefined, true);
  value.dispose();
  const out = grads.map((g) => Float32Array.from(g.dataSync()));
  grads.forEach((g) => g.dispose());
  const stats = m.normLayers.flatMap((l) => (l.runningMean ? [Float32Array.from(l.runningMean.dataSync()), Float32Array.from(l.runningVar!.dataSync())] : []));
  return { grads: out, stats };
}

describe('segments per stage (MECTA checkpoint_sequential)', () => {
  it('floor(B/S)-block segments, the last one takes the rest and is not checkpointed; S capped at B', () => {
    expect(stageSegments(3, 1)).toEqual([{ start: 0, end: 3, checkpointed: false }]);
    expect(stageSegments(3, 2)).toEqual([
      { start: 0, end: 1, checkpointed: true },
      { start: 1, end: 3, checkpointed: false },
    ]);
    expect(stageSegments(6, 4).map((s) => [s.start, s.end, s.checkpointed])).toEqual([
      [0, 1, true],
      [1, 2, true],
      [2, 3, true],
      [3, 6, false],
    ]);
    expect(stageSegments(4, 2).map((s) => [s.start, s.end])).toEqual([
      [0, 2],
      [2, 4],
    ]);
    // S = 4 on a 3-block stage: as S = 3 (every block but the last checkpointed alone)
    expect(stageSegments(3, 4)).toEqual(stageSegments(3, 3));
  });
});

describe('checkpointed gradients equal the plain ones (1e-6)', () => {
  const cases: [string, 'norm' | 'all', NormMode][] = [
    ['resnext29', 'norm', 'batch'],
    ['resnext29', 'all', 'batch'],
    ['resnext29', 'norm', 'mecta'],
    ['resnext29', 'norm', 'train-update'],
    ['wrn28_10', 'norm', 'batch'],
    ['wrn28_10', 'all', 'mecta'],
    ['resnet50', 'norm', 'batch'],
    ['resnet50', 'all', 'ema'],
    ['vit_b16', 'norm', 'batch'],
    ['vit_b16', 'all', 'batch'],
  ];
  for (const [arch, train, mode] of cases) {
    it(`${arch}, ${train === 'all' ? 'every parameter' : 'norm affines'}, norm mode ${mode}: S = 2 and 3`, () => {
      const m = MODELS[arch]();
      const x = images(2);
      m.setNormMode(mode, mode === 'mecta' ? MECTA : mode === 'ema' ? { momentum: 0.05 } : undefined);
      m.requiresGrad(train === 'all' ? TRAIN_ALL : TRAIN_NORM);
      const s0 = snap(m);
      try {
        m.gradCheckpoint!.segments = 1;
        const ref = entropyGrads(m, x);
        // after a first forward: the layers build some constants once
        const before = tf.memory().numTensors;
        for (const s of [2, 3]) {
          restore(m, s0);
          m.gradCheckpoint!.segments = s;
          const got = entropyGrads(m, x);
          expect(m.gradCheckpoint!.lastSegments).toBeGreaterThan(0);
          expect(got.grads.length).toBe(ref.grads.length);
          got.grads.forEach((g, i) => expectClose(`${arch} ${train} ${mode} S=${s} grad ${i}`, g, ref.grads[i], 1e-6));
          // the statistics moved once, as without checkpointing
          got.stats.forEach((v, i) => expectClose(`${arch} ${mode} S=${s} stats ${i}`, v, ref.stats[i], 1e-7));
        }
        expect(tf.memory().numTensors).toBe(before);
      } finally {
        free(s0);
        x.dispose();
        m.dispose();
      }
    });
  }

  it('refuses MECTA pruning, which a recomputation cannot replay', () => {
    const m = MODELS.resnext29();
    const x = images(2);
    m.setNormMode('mecta', { ...MECTA, pruneQ: 0.5 });
    m.gradCheckpoint!.segments = 2;
    expect(() => entropyGrads(m, x)).toThrow(/--prune-q/);
    x.dispose();
    m.dispose();
  });
});

describe("--grad-checkpoint-scope model: all blocks as one sequence", () => {
  // one block per stage, as the embedded demo model: per stage there is nothing to checkpoint
  const ONE_PER_STAGE: ResNeXtArch = { ...RESNEXT, stages: RESNEXT.stages.map((st) => ({ ...st, blocks: 1 })), depth: 11 };
  it('checkpoints across stages where the per-stage split cannot; gradients and MECTA statistics equal (1e-6)', () => {
    const m = buildModel('resnext29', randomResNeXt(ONE_PER_STAGE, 8), { rng: new Rng(1) });
    const x = images(2);
    m.setNormMode('mecta', MECTA);
    m.requiresGrad(TRAIN_NORM);
    const s0 = snap(m);
    const probe = new MemoryProbe();
    try {
      const gc = m.gradCheckpoint!;
      gc.segments = 1;
      probe.begin();
      const ref = entropyGrads(m, x);
      const plain = probe.end().backpropBytes!;
      restore(m, s0);
      gc.segments = 3;
      probe.begin();
      entropyGrads(m, x);
      expect(probe.end().backpropBytes!).toBe(plain); // per stage: every stage is its own last segment
      expect(gc.lastSegments).toBe(0);
      gc.scope = 'model';
      for (const s of [2, 3]) {
        restore(m, s0);
        gc.segments = s;
        probe.begin();
        const got = entropyGrads(m, x);
        const mem = probe.end();
        // 3 blocks in one sequence: S − 1 single-block segments are recomputed
        expect(gc.lastSegments).toBe(s - 1);
        expect(mem.backpropBytes!).toBeLessThan(plain);
        got.grads.forEach((g, i) => expectClose(`scope model S=${s} grad ${i}`, g, ref.grads[i], 1e-6));
        got.stats.forEach((v, i) => expectClose(`scope model S=${s} stats ${i}`, v, ref.stats[i], 1e-7));
      }
    } finally {
      free(s0);
      x.dispose();
      m.dispose();
    }
  });
});

describe('whole adaptation steps with checkpointing leave the same model', () => {
  for (const [alg, arch] of [
    ['tent', 'resnext29'],
    ['eata', 'wrn28_10'],
    ['cotta', 'resnext29'],
    ['sar', 'resnet50'],
  ] as const) {
    it(`${alg} on ${arch}: two steps with S = 2 equal two steps without (1e-6)`, async () => {
      const results: Map<string, Float32Array>[] = [];
      for (const s of [1, 2]) {
        const m = MODELS[arch]();
        m.gradCheckpoint!.segments = s;
        // two augmented teacher copies instead of 32: the step is the same code, faster
        const cfg = { ...defaultConfig(), alg, eMargin: 0.4 * Math.log(10), fisherSize: 2, cottaAugmentations: 2 };
        const rng = new Rng(9);
        const ctx: AlgorithmContext = {
          rng,
          ...copiesAndAugmentation(m, rng),
          fisherData: async function* () {
            yield images(2);
          },
        };
        const a = await ALGORITHMS[alg].create(m, adaptOptions(cfg), ctx);
        const x = images(alg === 'cotta' ? 2 : 4);
        for (let k = 0; k < 2; k++) a.step(x).logits.dispose();
        x.dispose();
        const sd = m.stateDict();
        results.push(new Map([...sd].map(([k, t]) => [k, Float32Array.from(t.dataSync())])));
        sd.forEach((t) => t.dispose());
        a.dispose();
        m.dispose();
      }
      for (const [k, v] of results[0]) expectClose(`${alg} ${arch} ${k}`, results[1].get(k)!, v, 1e-6);
    });
  }
});

describe('measured backprop bytes with checkpointing', () => {
  it('drop for S = 2, 4 by what the checkpointed segments keep, less their inputs (ResNeXt, Tent step)', () => {
    const m = MODELS.resnext29();
    m.setNormMode('batch');
    m.requiresGrad(TRAIN_NORM);
    const x = images(4);
    const probe = new MemoryProbe();
    const measure = (s: number) => {
      m.gradCheckpoint!.segments = s;
      probe.begin();
      entropyGrads(m, x);
      return probe.end();
    };
    const plain = measure(1);
    expect(plain.recomputes).toBeUndefined();
    const rows = [2, 4].map((s) => ({ s, mem: measure(s), inputs: m.gradCheckpoint!.lastInputBytes, segments: m.gradCheckpoint!.lastSegments }));
    // stages of 4, 4, 2 blocks: S = 2 → 1 + 1 + 1 segments, S = 4 → 3 + 3 + 1
    expect(rows.map((r) => r.segments)).toEqual([3, 7]);
    for (const r of rows) {
      const rec = r.mem.recomputes!;
      expect(rec.length).toBe(r.segments);
      expect(r.mem.backwards).toBe(1);
      const kept = rec.reduce((a, v) => a + v.bytes, 0);
      // the outer tape loses every segment's own saved tensors and keeps its input instead
      expect(r.mem.backpropBytes).toBe(plain.backpropBytes! - kept + r.inputs);
      expect(r.mem.backpropBytes!).toBeLessThan(plain.backpropBytes!);
    }
    expect(rows[1].mem.backpropBytes!).toBeLessThan(rows[0].mem.backpropBytes!);
    // the step's peak (one recomputed segment's tape at a time on top) drops too
    expect(rows[0].mem.peakBytes!).toBeLessThan(plain.peakBytes!);
    expect(rows[1].mem.peakBytes!).toBeLessThan(rows[0].mem.peakBytes!);
    x.dispose();
    m.dispose();
  });
});
