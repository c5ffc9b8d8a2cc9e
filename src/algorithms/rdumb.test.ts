/**
 * RDumb (src/algorithms/rdumb.ts) over ETA against the float64 re-statement (scripts/fixtures_lib/
 * adapt_ref.py run_eata, reset after every 2nd step; scripts/make-roid-memo-fixtures.py over
 * test/fixtures/models/resnext_small): logits of three steps, the reliable/used counters, the reset
 * counter and the final norm affines. Also: the configs, another base, saveState round trip, no
 * tensor leak over 20 steps.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import { resolveConfig } from '../config/load.js';
import type { AdaptOptions } from './types.js';
import type { RdumbValues } from './rdumb.js';
import type { EataOptions } from './eata.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;
const available = existsSync(join(ADAPT, 'rdumb.json'));
const errors = new ErrorLog();
let weights: StateDict;
let inputs: StateDict;

interface RdumbCase {
  reset_every: number;
  e_margin: number;
  d_margin: number;
  steps: { updated: boolean; reliable: number; used: number }[];
}

const opts = (c: Pick<RdumbCase, 'reset_every' | 'e_margin' | 'd_margin'>, base: RdumbValues['rdumbBase'] = 'eta') =>
  ({
    lr: 0.01, momentum: 0.9, nesterov: true, optimizer: 'sgd', episodic: false, matchedUpdate: 'momentum',
    eMargin: c.e_margin, dMargin: c.d_margin, fisherAlpha: 0, fisherSize: 1, rdumbBase: base, rdumbSteps: c.reset_every,
  }) as AdaptOptions & EataOptions & RdumbValues;

beforeAll(async () => {
  await initBackend('wasm');
  weights = await readSafetensors(WEIGHTS);
  if (available) inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => errors.report('rdumb parity, max relative errors'));

describe('RDumb', () => {
  it('configs load with the published settings (ETA base, reset every 1000)', () => {
    for (const d of ['cifar10', 'cifar100']) expect(resolveConfig(`configs/${d}/rdumb.yaml`, {})).toMatchObject({ alg: 'rdumb', rdumbBase: 'eta', rdumbSteps: 1000, optimizer: 'adam', lr: 0.001, dMargin: 0.4, batchSize: 200 });
    expect(resolveConfig('configs/imagenet/rdumb.yaml', {})).toMatchObject({ alg: 'rdumb', rdumbBase: 'eta', rdumbSteps: 1000, optimizer: 'sgd', lr: 0.00025, momentum: 0.9, nesterov: false, dMargin: 0.05, batchSize: 64 });
  });

  it.skipIf(!available)('ETA reset after every 2nd step matches the reference', async () => {
    const c = JSON.parse(readFileSync(join(ADAPT, 'rdumb.json'), 'utf8')) as RdumbCase;
    const fx = await readSafetensors(join(ADAPT, 'rdumb.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const alg = await ALGORITHMS.rdumb.create(model, opts(c), { rng: new Rng(1) });
    for (let s = 0; s < 3; s++) {
      const x = nhwc(inputs, `x${s}`);
      const r = alg.step(x);
      errors.check(`logits${s}`, 'rdumb.logits', r.logits, raw(fx, `logits${s}`), TOL);
      expect(r.metrics).toEqual({ reliable: c.steps[s].reliable, used: c.steps[s].used, rdumbResets: (s + 1) % c.reset_every === 0 ? 1 : 0 });
      tf.dispose([x, r.logits]);
    }
    for (const p of model.parameters().filter((q) => q.requiresGrad)) errors.check(`final ${p.name}`, 'rdumb.final', p.variable!, raw(fx, `final.${p.name}`), TOL);
    alg.dispose();
    model.dispose();
  });

  it.skipIf(!available)('wraps another base (tent); the counter survives saveState/loadState; 20 steps leak no tensor', async () => {
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const alg = await ALGORITHMS.rdumb.create(model, opts({ reset_every: 3, e_margin: 1, d_margin: 0.4 }, 'tent'), { rng: new Rng(1) });
    const x = tf.tidy(() => tf.slice(nhwc(inputs, 'x0'), [0, 0, 0, 0], [4, -1, -1, -1]));
    const w0 = Array.from(model.parameters().find((p) => p.requiresGrad)!.variable!.dataSync());
    const first = alg.step(x);
    let resets = 0;
    // tensors per phase of the reset cycle (the optimizer's slots are dropped at a reset)
    const steady: number[] = [];
    for (let i = 1; i <= 20; i++) {
      const r = alg.step(x);
      resets += r.metrics!.rdumbResets;
      // right after a reset (every 3rd batch) the model is the source again: the same prediction
      if (i % 3 === 0) expect(Array.from(r.logits.dataSync())).toEqual(Array.from(first.logits.dataSync()));
      r.logits.dispose();
      if (i % 3 === 2) expect(Array.from(model.parameters().find((p) => p.requiresGrad)!.variable!.dataSync())).toEqual(w0);
      if (i <= 3) steady.push(tf.memory().numTensors);
      else expect(tf.memory().numTensors).toBe(steady[(i - 1) % 3]);
    }
    expect(resets).toBe(7);
    const st = alg.saveState();
    expect(st.get('rdumb.count')!.dataSync()[0]).toBe(21);
    alg.loadState(st);
    tf.dispose([...st.values(), first.logits, x]);
    alg.dispose();
    model.dispose();
  });
});
