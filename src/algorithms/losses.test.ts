import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { crossEntropy, pseudoLabels, softmaxEntropy } from './losses.js';

beforeAll(async () => {
  await initBackend('wasm');
});

describe('softmaxEntropy', () => {
  it('matches hand-computed entropies', () => {
    const z = tf.tensor2d([
      [0, 0, 0, 0], // uniform over 4: ln 4
      [0, Math.log(3), -1e4, -1e4], // p = (0.25, 0.75, 0, 0)
      [100, 0, 0, 0], // ~one-hot: ~0, and no NaN from 0·log 0
    ]);
    const h = softmaxEntropy(z as tf.Tensor2D);
    const v = Array.from(h.dataSync());
    expect(v[0]).toBeCloseTo(Math.log(4), 6);
    expect(v[1]).toBeCloseTo(-(0.25 * Math.log(0.25) + 0.75 * Math.log(0.75)), 6); // 0.5623351
    expect(v[2]).toBeGreaterThanOrEqual(0);
    expect(v[2]).toBeLessThan(1e-6);
    tf.dispose([z, h]);
  });

  it('has the analytic gradient dH/dz_k = −p_k (log p_k + H)', () => {
    const logits = [0.3, -1.2, 2.0];
    const z = tf.tensor2d([logits]);
    const g = tf.grad((t: tf.Tensor) => tf.sum(softmaxEntropy(t as tf.Tensor2D)))(z);
    const e = logits.map(Math.exp);
    const s = e.reduce((a, b) => a + b, 0);
    const p = e.map((x) => x / s);
    const H = -p.reduce((a, pk) => a + pk * Math.log(pk), 0);
    const want = p.map((pk) => -pk * (Math.log(pk) + H));
    Array.from(g.dataSync()).forEach((gv, k) => expect(gv).toBeCloseTo(want[k], 6));
    tf.dispose([z, g]);
  });
});

describe('crossEntropy', () => {
  it('is the batch mean of −log softmax at the label', () => {
    const z = tf.tensor2d([
      [1, 2, 3],
      [0, 0, 0],
    ]);
    const y = tf.tensor1d([2, 0], 'int32');
    const l = crossEntropy(z as tf.Tensor2D, y as tf.Tensor1D);
    const ce0 = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3; // 0.4076060
    const ce1 = Math.log(3);
    expect(l.dataSync()[0]).toBeCloseTo((ce0 + ce1) / 2, 6);
    tf.dispose([z, y, l]);
  });

  it('pseudo-labels are the row argmax', () => {
    const z = tf.tensor2d([
      [1, 5, 3],
      [7, 0, 7],
    ]);
    const y = pseudoLabels(z as tf.Tensor2D);
    expect(Array.from(y.dataSync())).toEqual([1, 0]);
    tf.dispose([z, y]);
  });
});
