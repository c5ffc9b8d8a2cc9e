/** The adaptation methods the runner can select (--alg). */
import type { AlgorithmSpec } from './types.js';
import { source } from './source.js';
import { norm } from './norm.js';
import { tent } from './tent.js';
import { eata, eta } from './eata.js';

export const ALGORITHMS = { source, norm, tent, eta, eata } satisfies Record<string, AlgorithmSpec>;

export type AlgorithmName = keyof typeof ALGORITHMS;

export const ALGORITHM_NAMES = Object.keys(ALGORITHMS) as AlgorithmName[];
