/**
 * The adaptation methods the runner can select (--alg). Adding one: its file, a line here. Every
 * `create()` first sets the norm mode the method declares (src/algorithms/norm-mode.ts), so the
 * method files never choose it.
 */
import type { AlgorithmSpec } from './types.js';
import { configureNorm } from './norm-mode.js';
import { source } from './source.js';
import { norm } from './norm.js';
import { tent } from './tent.js';
import { eata, eta } from './eata.js';
import { sar } from './sar.js';
import { deyo } from './deyo.js';
import { cotta, cottaBn } from './cotta.js';
import { rotta } from './rotta.js';
import { lame } from './lame.js';
import { roid } from './roid.js';
import { rdumb } from './rdumb.js';
import { bnAlpha } from './bn-alpha.js';
import { memo } from './memo.js';

function withNormMode<S extends AlgorithmSpec>(spec: S): S {
  return {
    ...spec,
    create(model, opts, ctx) {
      configureNorm(model, spec.norm, undefined, spec.normStats);
      return spec.create(model, opts, ctx);
    },
  };
}

export const ALGORITHMS = {
  source: withNormMode(source),
  norm: withNormMode(norm),
  tent: withNormMode(tent),
  eta: withNormMode(eta),
  eata: withNormMode(eata),
  sar: withNormMode(sar),
  deyo: withNormMode(deyo),
  cotta: withNormMode(cotta),
  cotta_bn: withNormMode(cottaBn),
  rotta: withNormMode(rotta),
  lame: withNormMode(lame),
  roid: withNormMode(roid),
  rdumb: withNormMode(rdumb),
  bn_alpha: withNormMode(bnAlpha),
  memo: withNormMode(memo),
} satisfies Record<string, AlgorithmSpec>;

export type AlgorithmName = keyof typeof ALGORITHMS;

export const ALGORITHM_NAMES = Object.keys(ALGORITHMS) as AlgorithmName[];
