import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from './tf.js';

describe('WASM backend set-up', () => {
  beforeAll(async () => {
    await initBackend('wasm');
  });

  it('clone() shares the data (no copy) and each handle stays valid after the other is disposed', () => {
    const before = tf.memory();
    const a = tf.tensor([1, 2, 3, 4], [2, 2]);
    const buffers = tf.memory().numDataBuffers;
    const b = a.clone();
    expect(tf.memory().numDataBuffers).toBe(buffers); // one data buffer, two tensors
    expect(tf.memory().numTensors).toBe(before.numTensors + 2);
    a.dispose();
    expect(Array.from(b.dataSync())).toEqual([1, 2, 3, 4]);
    const c = tf.add(b, 1);
    expect(Array.from(c.dataSync())).toEqual([2, 3, 4, 5]);
    tf.dispose([b, c]);
    expect(tf.memory().numTensors).toBe(before.numTensors);
    expect(tf.memory().numDataBuffers).toBe(before.numDataBuffers);
  });

  it('a variable assigned from a clone keeps its value when the source is disposed', () => {
    const src = tf.tensor1d([5, 6]);
    const v = tf.variable(src.clone());
    v.assign(tf.tidy(() => tf.mul(src, 2)));
    src.dispose();
    expect(Array.from(v.dataSync())).toEqual([10, 12]);
    v.dispose();
  });
});
