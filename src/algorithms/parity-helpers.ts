/**
 * Test-only helpers for the algorithm parity tests (not imported by library code): reading fixture
 * tensors, and relative-error checks that keep the largest error per quantity for the report each
 * test file prints at the end.
 */
import { expect } from 'vitest';
import { tf } from '../tf.js';
import type { StateDict } from '../io/types.js';

/** ‖a − b‖ / ‖b‖ per tensor (‖a − b‖ when b = 0). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
}

/** Relative-error checks with the largest error seen per quantity. */
export class ErrorLog {
  private readonly observed = new Map<string, number>();

  check(label: string, kind: string, a: tf.Tensor | ArrayLike<number>, b: ArrayLike<number>, tol: number): void {
    const e = relErr(a instanceof tf.Tensor ? a.dataSync() : a, b);
    this.observed.set(kind, Math.max(this.observed.get(kind) ?? 0, e));
    expect(e, `${label}: relative error ${e.toExponential(2)}`).toBeLessThanOrEqual(tol);
  }

  /** Prints `<title>: kind=err …` once, when anything was checked. */
  report(title: string): void {
    const rows = [...this.observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
    if (rows.length) console.log(`${title}: ${rows.join(' ')}`);
  }
}

/** A fixture tensor's values (PyTorch layout). */
export function fixtureData(sd: StateDict, key: string): Float32Array | Float64Array {
  const t = sd.get(key);
  if (!t) throw new Error(`fixture key ${key} missing`);
  return t.data;
}

/** An NCHW fixture batch as an NHWC tensor on the active backend. */
export function fixtureBatch(sd: StateDict, key: string): tf.Tensor4D {
  const t = sd.get(key);
  if (!t) throw new Error(`fixture key ${key} missing`);
  return tf.tidy(() => tf.transpose(tf.tensor4d(Float32Array.from(t.data), t.shape as [number, number, number, number]), [0, 2, 3, 1]));
}

/** The optimizer of a fixture case's JSON (scripts/make-*-fixtures.py write torch.optim's settings). */
export interface FixtureOptimizer {
  name: 'adam' | 'sgd';
  lr: number;
  betas?: [number, number];
  eps?: number;
  momentum?: number;
  nesterov?: boolean;
}

/** The run options that configure cta-eval's optimizer as the fixture's torch.optim one. */
export function optimizerOptions(o: FixtureOptimizer) {
  return {
    lr: o.lr,
    momentum: o.momentum ?? 0,
    nesterov: o.nesterov ?? false,
    optimizer: o.name,
    adamBeta1: o.betas?.[0],
    adamBeta2: o.betas?.[1],
    adamEps: o.eps,
  };
}
