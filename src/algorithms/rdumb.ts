/**
 * RDumb (docs/methods.md#rdumb; Press, Schneider, Kümmerer & Bethge, NeurIPS 2023, "RDumb: A
 * simple approach that questions our progress in continual test-time adaptation"): a base method
 * that is reset to the source model (parameters, optimizer and the method's own state) every K
 * steps. The original (github:oripress/CCC models/rdumb.py) runs ETA with K = 1000 (ImageNet: SGD
 * lr 2.5e-4 momentum 0.9, E0 = 0.4·ln 1000, d-margin 0.05, batch 64); mariodoebler's
 * test-time-adaptation expresses it as MODEL.RESET_AFTER_NUM_UPDATES = 1000 on EATA with
 * FISHER_ALPHA 0, i.e. ETA (cfgs/*\/rdumb.yaml; methods/base.py counts every forward_and_adapt
 * call, updated or not, and calls reset() after the K-th). Here the base is `--rdumb-base`
 * (default eta) with its own options, and the count is batches: the prediction of the K-th batch
 * comes from the model before the reset. The counter runs across the base's other resets
 * (e.g. reset-each-shift), as in base.py.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import type { FieldSpec } from '../config/schema.js';
import { configureNorm } from './norm-mode.js';
import { GRADIENT_OPTIONS } from './options.js';
import { eata, eta } from './eata.js';
import { tent } from './tent.js';
import { sar } from './sar.js';
import { deyo } from './deyo.js';
import { cotta, cottaBn } from './cotta.js';
import { roid } from './roid.js';

/** The methods RDumb can wrap (gradient-based methods with a source state to return to). */
export const RDUMB_BASES = { eta, eata, tent, sar, deyo, cotta, cotta_bn: cottaBn, roid } satisfies Record<string, AlgorithmSpec>;
export type RdumbBase = keyof typeof RDUMB_BASES;

export const RDUMB_OPTIONS = {
  ...GRADIENT_OPTIONS,
  rdumbBase: { type: 'enum', choices: Object.keys(RDUMB_BASES) as RdumbBase[], default: 'eta', group: 'algorithm', description: 'RDumb: the method that is reset (its own options apply)' },
  rdumbSteps: { type: 'int', min: 1, default: 1000, group: 'algorithm', description: 'RDumb: reset to the source every this many batches (MODEL.RESET_AFTER_NUM_UPDATES)' },
} as const satisfies Record<string, FieldSpec>;

export interface RdumbValues {
  rdumbBase?: RdumbBase;
  rdumbSteps?: number;
}

const METRICS = {
  // the official base's counters (ETA/EATA), passed through
  reliable: { summary: 'reliable', description: 'ETA/EATA base: samples with entropy below E0' },
  used: { summary: 'updated', description: 'ETA/EATA base: reliable and non-redundant samples in the loss' },
  rdumbResets: { summary: 'rdumb_resets', description: 'resets to the source model (every rdumb-steps batches)' },
};

export const rdumb = {
  description: 'RDumb: a base method (--rdumb-base, default eta) reset to the source every --rdumb-steps batches',
  usesGradients: true,
  norm: 'adaptive',
  options: RDUMB_OPTIONS,
  metrics: METRICS,
  async create(model, opts, ctx) {
    const o = opts as typeof opts & RdumbValues;
    const baseName = o.rdumbBase ?? RDUMB_OPTIONS.rdumbBase.default;
    const k = o.rdumbSteps ?? RDUMB_OPTIONS.rdumbSteps.default;
    const base: AlgorithmSpec = RDUMB_BASES[baseName];
    // the base's own norm need, keeping the run's MECTA setting (as the registry does)
    configureNorm(model, base.norm, undefined, base.normStats);
    const inner = await base.create(model, opts as never, ctx);
    let count = 0;
    const alg: Algorithm = {
      name: 'rdumb',
      step(x: tf.Tensor4D): StepResult {
        const res = inner.step(x);
        count++;
        const reset = count % k === 0;
        if (reset) inner.reset();
        return { ...res, metrics: { ...(res.metrics ?? {}), rdumbResets: reset ? 1 : 0 } };
      },
      reset: () => inner.reset(),
      saveState() {
        const out = inner.saveState();
        // float32 holds the counter exactly below 2^24 batches
        out.set('rdumb.count', tf.scalar(count, 'float32'));
        return out;
      },
      loadState(state) {
        inner.loadState(state);
        const c = state.get('rdumb.count');
        count = c ? c.dataSync()[0] : 0;
      },
      stateBytes: () => inner.stateBytes?.() ?? {},
      dispose: () => inner.dispose(),
    };
    return alg;
  },
} satisfies AlgorithmSpec;
