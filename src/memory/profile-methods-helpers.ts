/**
 * Test helper (not imported by library code) of profile-methods*.test.ts: profile-mem with every
 * registered method (ALGORITHM_NAMES, so a new method is covered as soon as it is registered) on
 * reduced ResNeXt-29 and ViT-B/16 shapes with random weights and synthetic input: each row completes and carries the operation counts, the process columns and the
 * method's state bytes; the state bytes of the methods whose state is plain arithmetic are checked
 * against it (docs/memory.md#method-state).
 */
import { expect } from 'vitest';
import { Rng } from '../util/rng.js';
import { buildModel } from '../models/registry.js';
import type { ResNeXtArch } from '../models/resnext.js';
import { vitExpectedKeys } from '../models/vit.js';
import type { Classifier } from '../models/types.js';
import { randomStateDictForKeys } from '../models/test-weights.js';
import { ALGORITHM_NAMES, ALGORITHMS } from '../algorithms/registry.js';
import { defaultConfig } from '../config/schema.js';
import { CtaError } from '../util/errors.js';
import { modelBytes } from '../algorithms/state-bytes.js';
import { randomResNeXt } from './random-weights.js';
import { runProfile, stateTable, summaryTable, type ProfileRow } from './profile.js';

const RESNEXT: ResNeXtArch = {
  stem: 8,
  cardinality: 2,
  stages: [
    { blocks: 1, inner: 8, out: 16, stride: 1 },
    { blocks: 1, inner: 16, out: 32, stride: 2 },
    { blocks: 1, inner: 16, out: 32, stride: 2 },
  ],
  numClasses: 10,
  hasInputNorm: true,
  depth: 11,
  baseWidth: 32,
};

export const SHAPES: Record<'resnext29' | 'vit_b16', () => Classifier> = {
  resnext29: () => buildModel('resnext29', randomResNeXt(RESNEXT, 2), { rng: new Rng(1) }),
  vit_b16: () =>
    buildModel(
      'vit_b16',
      randomStateDictForKeys([...vitExpectedKeys({ dim: 24, depth: 2, mlpDim: 48, patch: 8, grid: 4, numClasses: 10, qkvBias: true })].map(([name, shape]) => ({ name, shape })), 3),
      { rng: new Rng(1) },
    ),
};

/** Σ of the norm affines' elements (what Tent-like methods train) and of every parameter. */
export function sizes(make: () => Classifier): { affine: number; all: number; model: number; state: number } {
  const m = make();
  const sd = m.stateDict();
  const state = [...sd.values()].reduce((a, t) => a + t.size * 4, 0);
  sd.forEach((t) => t.dispose());
  const affine = m.parameters().filter((p) => p.kind === 'norm').reduce((a, p) => a + p.shape.reduce((x, d) => x * d, 1), 0);
  const all = m.parameters().reduce((a, p) => a + p.shape.reduce((x, d) => x * d, 1), 0);
  const model = modelBytes(m);
  m.dispose();
  return { affine, all, model, state };
}

export async function profile(alg: string, arch: keyof typeof SHAPES): Promise<ProfileRow> {
  // few augmented teacher copies and Fisher samples: the same code paths, quickly; only RoTTA
  // is stepped on to its first backward (the random models' entropy filters may never pass one)
  const cfg = { ...defaultConfig(), alg, model: arch, backend: 'wasm', threads: 1, cottaAugmentations: 2, fisherSize: 2, rottaMemorySize: 4, rottaUpdateFrequency: 4 } as ReturnType<typeof defaultConfig>;
  const report = await runProfile({ cfg, batchSizes: [2], domain: 'gaussian_noise', synthetic: true, perLayer: false, steps: 1, log: () => undefined, model: SHAPES[arch], memoryStepSamples: alg === 'rotta' ? undefined : 0 });
  expect(summaryTable(report)).toContain('GFLOPs fwd');
  const row = report.rows[0];
  if (row.state_mb && Object.keys(row.state_mb).length) expect(stateTable(report)).toContain('batch');
  return row;
}

/** Profiles every registered method on `arch` and checks the row (see the file comment). */
export async function checkEveryMethod(arch: keyof typeof SHAPES): Promise<void> {
  const n = sizes(SHAPES[arch]);
  const ran: string[] = [];
  for (const alg of ALGORITHM_NAMES) {
    let row: ProfileRow;
    try {
      row = await profile(alg, arch);
    } catch (e) {
      // a method that cannot run on this architecture must say so in one clear line
      if (e instanceof CtaError && e.message.includes(arch)) continue;
      throw e;
    }
    ran.push(alg);
    expect(row.error, `${alg} on ${arch}`).toBeUndefined();
    expect(row.gflops_forward!, alg).toBeGreaterThan(0);
    expect(row.rss_peak_mb!, alg).toBeGreaterThan(0);
    expect(row.wasm_heap_mb!, alg).toBeGreaterThan(0);
    if (row.updated) expect(row.gflops_backward!, `${alg} backward`).toBeGreaterThan(0);
    if (!ALGORITHMS[alg].usesGradients) expect(row.gflops_backward, alg).toBe(0);
    if (alg === 'rotta') {
      // RoTTA back-propagates once its memory bank has seen --rotta-update-frequency samples (4
      // here, 64 by default): at batch 2 the second step, which profile-mem measures instead
      expect(row.memory_step, alg).toBe(2);
      expect(row.measured_backprop_mb!, alg).toBeGreaterThan(0);
    }
    const st = row.state_mb ?? {};
    const mb = (elems: number) => (elems * 4) / 1e6;
    // the first step gave every trained parameter an SGD momentum buffer
    if (alg === 'tent' || (alg === 'eta' && row.updated)) expect(st.optimizer).toBeCloseTo(mb(n.affine), 9);
    if (alg === 'tent') expect(st.snapshot).toBeCloseTo(n.state / 1e6, 9); // the configure-time stateDict
    if (alg === 'eata') {
      expect(st.anchor).toBeCloseTo(mb(n.affine), 9); // θ*
      expect(st.other).toBeCloseTo(mb(n.affine) + (row.updated ? mb(10) : 0), 9); // Fisher (+ the moving average)
    }
    // momentum + SAM's ε (on the ViT SAR leaves the top block's and the final norm out)
    if (alg === 'sar' && row.updated && arch === 'resnext29') expect(st.optimizer).toBeCloseTo(mb(2 * n.affine), 9);
    if (alg === 'cotta') {
      expect(st.teacher).toBeCloseTo(n.model / 1e6, 9);
      expect(st.anchor).toBeCloseTo(n.model / 1e6 + mb(n.all), 9); // anchor model + source parameters
      if (row.updated) expect(st.optimizer).toBeCloseTo(mb(n.all), 9);
    }
  }
  for (const alg of ['source', 'norm', 'tent', 'eta', 'eata', 'sar', 'deyo', 'cotta', 'cotta_bn']) expect(ran).toContain(alg);
}
