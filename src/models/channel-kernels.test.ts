import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { concatChannels, phasesToSpace, unstackRows, gatherChannels, scatterChannels, setHeapKernels, splitChannels } from './kernels.js';

/** Random NHWC data with distinct values, so a wrong channel shows. */
function data(shape: number[]): tf.Tensor {
  const n = shape.reduce((a, d) => a * d, 1);
  return tf.tensor(Float32Array.from({ length: n }, (_, i) => i + 0.25 * Math.sin(i)), shape);
}

const same = (a: tf.Tensor, b: tf.Tensor) => {
  expect(a.shape).toEqual(b.shape);
  expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
};

// Both backends with a heap kernel, and the tf-op fallback other backends use.
describe.each([
  ['wasm', true],
  ['cpu', true],
  ['cpu', false], // (WASM lacks UnsortedSegmentSum, tf.gather's gradient)
] as const)('channel kernels on %s (heap kernels %s)', (backend, heap) => {
  beforeAll(async () => {
    await initBackend(backend);
    setHeapKernels(heap);
  });
  afterAll(() => setHeapKernels(true));

  it('split and concat equal tf.split / tf.concat (short and long rows)', () => {
    for (const [shape, g] of [
      [[2, 3, 5, 12], 4],
      [[2, 2, 3, 256], 2], // 128-float rows: the subarray/set path
      [[7, 8], 8],
    ] as Array<[number[], number]>) {
      tf.tidy(() => {
        const x = data(shape);
        const parts = splitChannels(x, g);
        const ref = tf.split(x, g, x.rank - 1);
        parts.forEach((p, i) => same(p, ref[i]));
        same(concatChannels(parts), x);
        same(concatChannels([parts[0], x]), tf.concat([parts[0], x], x.rank - 1)); // unequal widths
      });
    }
  });

  it('gather and scatter equal tf.gather and its transpose; scatter leaves zeros', () => {
    tf.tidy(() => {
      const x = data([3, 4, 2, 10]);
      const kept = [7, 0, 3, 9];
      const sel = gatherChannels(x, kept);
      same(sel, tf.gather(x, tf.tensor1d(kept, 'int32'), 3));
      const back = scatterChannels(sel, kept, 10);
      const mask = tf.tensor1d(Array.from({ length: 10 }, (_, c) => (kept.includes(c) ? 1 : 0)));
      same(back, tf.mul(x, mask));
      // a rank-1 vector too
      same(gatherChannels(tf.tensor1d([5, 6, 7]), [2, 0]), tf.tensor1d([7, 5]));
    });
  });

  it('phasesToSpace = depthToSpace of the concatenated phases', () => {
    tf.tidy(() => {
      for (const [s, g] of [[2, 1], [2, 3], [3, 2]]) {
        const parts = Array.from({ length: s * s * g }, (_, i) => data([2, 3, 4, 5]).add(i * 1000) as tf.Tensor4D);
        same(phasesToSpace(parts, s), tf.depthToSpace(tf.concat(parts, 3) as tf.Tensor4D, s, 'NHWC'));
      }
    });
  });

  it('unstackRows = tf.unstack; its gradient stacks', () => {
    tf.tidy(() => {
      const x = data([3, 2, 5]);
      const rows = unstackRows(x);
      const ref = tf.unstack(x);
      rows.forEach((r, i) => same(r, ref[i]));
      const w = data([2, 5]);
      const g = tf.grad((t: tf.Tensor) => unstackRows(t)[1].mul(w).sum())(x);
      same(g, tf.stack([tf.zerosLike(w), w, tf.zerosLike(w)]));
    });
  });

  it('gradients: split ↔ concat, gather ↔ scatter', () => {
    tf.tidy(() => {
      const x = data([2, 3, 3, 8]);
      const w = data([8]).div(100);
      const f = (t: tf.Tensor) => {
        const [a, b] = splitChannels(t, 2);
        const y = concatChannels([b.mul(2), a]);
        const s = scatterChannels(gatherChannels(y, [1, 6, 2]), [1, 6, 2], 8);
        return s.mul(w).sum();
      };
      const ref = (t: tf.Tensor) => {
        const [a, b] = tf.split(t, 2, 3);
        const y = tf.concat([b.mul(2), a], 3);
        const m = tf.tensor1d([0, 1, 1, 0, 0, 0, 1, 0]);
        return y.mul(m).mul(w).sum();
      };
      const g = tf.grad(f)(x);
      const gr = tf.grad(ref)(x);
      expect(g.sub(gr).abs().max().dataSync()[0]).toBeLessThan(1e-6);
    });
  });

  it('leaves no tensor behind', () => {
    const x = data([2, 4, 4, 16]);
    const before = tf.memory().numTensors;
    const parts = splitChannels(x, 4);
    const y = concatChannels(parts);
    const s = gatherChannels(y, [3, 1]);
    const z = scatterChannels(s, [3, 1], 16);
    tf.dispose([...parts, y, s, z]);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });
});
