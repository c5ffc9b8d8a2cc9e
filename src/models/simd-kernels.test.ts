import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { SIMD_KERNELS_PLAIN, SIMD_KERNELS_SHARED } from './simd-kernels-wasm.js';
import { addRelu, relu } from './ops/relu-mask.js';
import { bnBackward, channelAffine, channelAffineKeep, channelStats, packedReluAvailable, setBnKernels } from './kernels.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** Deterministic data with a non-zero mean, so centring matters. */
function data(shape: number[], seed: number, offset = 0.7): tf.Tensor4D {
  const n = shape.reduce((a, d) => a * d, 1);
  return tf.tensor4d(Float32Array.from({ length: n }, (_, i) => offset + Math.sin(i * 0.37 + seed) * (1 + (i % 7) / 3)), shape as [number, number, number, number]);
}

function vec(c: number, seed: number, lo = 0.5): tf.Tensor1D {
  return tf.tensor1d(Float32Array.from({ length: c }, (_, i) => lo + Math.abs(Math.cos(i + seed))));
}

/** Runs `f` with the WASM kernels and with the tf-op formulation; returns both results' values. */
function both(f: () => tf.Tensor[]): [Float32Array[], Float32Array[]] {
  const run = (on: boolean) => {
    setBnKernels(on);
    return tf.tidy(() => f()).map((t) => {
      const v = t.dataSync() as Float32Array;
      t.dispose();
      return v;
    });
  };
  try {
    return [run(true), run(false)];
  } finally {
    setBnKernels(true);
  }
}

function maxRelErr(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i] - b[i]));
  return err / Math.max(scale, 1e-12);
}

describe('SIMD kernels', () => {
  beforeAll(async () => {
    await initBackend('wasm');
  });
  afterAll(() => setBnKernels(true));

  it('the committed WebAssembly is simd-kernels.wat compiled', async () => {
    const lib = (await import(`${root}scripts/wasm-compile.mjs`)) as {
      compileSimdKernels(wat: string): Promise<{ shared: Uint8Array; plain: Uint8Array }>;
    };
    const { shared, plain } = await lib.compileSimdKernels(readFileSync(`${root}src/models/simd-kernels.wat`, 'utf8'));
    expect(Buffer.from(shared).toString('base64')).toBe(SIMD_KERNELS_SHARED);
    expect(Buffer.from(plain).toString('base64')).toBe(SIMD_KERNELS_PLAIN);
  });

  // rows: 1, under one 64-row block, several blocks with a remainder; channels down to 4.
  const SHAPES: Array<[number, number, number, number]> = [
    [1, 1, 1, 8],
    [2, 3, 5, 12],
    [3, 7, 9, 64],
    [16, 4, 4, 4],
  ];

  it.each(SHAPES)('batch statistics, the affine output and its kept-channel copy equal the tf ops (%i×%i×%i×%i)', (...shape) => {
    const c = shape[3];
    const [k, ref] = both(() => {
      const x = data(shape, 1, 5); // large mean: a one-pass variance would lose digits
      const { mean, variance } = channelStats(x);
      const keep = Int32Array.from({ length: c }, (_, i) => c - 1 - i).filter((i) => i % 4 !== 2); // any order
      return [mean, variance, channelAffine(x, vec(c, 2), vec(c, 3, -0.5)), ...channelAffineKeep(x, vec(c, 2), vec(c, 3, -0.5), keep)];
    });
    k.forEach((v, i) => expect(maxRelErr(v, ref[i])).toBeLessThan(2e-6));
    expect(Array.from(k[4])).toEqual(Array.from(ref[4])); // the kept channels are copies
  });

  it.each(SHAPES)('the BN input and affine gradients equal the tf ops, cached and pruned (%i×%i×%i×%i)', (...shape) => {
    const c = shape[3];
    const keptSets: Array<Int32Array | null> = [null, Int32Array.of(c - 1), Int32Array.from({ length: c }, (_, i) => i).filter((i) => i % 3 !== 1)];
    for (const kept of keptSets) {
      const [k, ref] = both(() => {
        const g = data(shape, 4, 0.1);
        const xFull = data(shape, 5);
        const x = kept ? tf.gather(xFull, Array.from(kept), 3) : xFull;
        const mean = kept ? tf.gather(vec(c, 6, -1), Array.from(kept)) : vec(c, 6, -1);
        const { dx, S, sumG } = bnBackward(g, x as tf.Tensor4D, mean as tf.Tensor1D, vec(c, 7), vec(c, 8), kept);
        return [dx, S, sumG];
      });
      k.forEach((v, i) => expect(maxRelErr(v, ref[i]), `kept ${kept ? kept.length : 'all'}, output ${i}`).toBeLessThan(5e-6));
    }
  });

  it('relu and add+relu with packed masks: outputs and gradients bit-identical to the tf ops', () => {
    // 60 and 4 elements end inside a 32-bit word; exact zeros must count as "not positive".
    for (const shape of [[1, 3, 5, 4], [1, 1, 1, 4], [2, 8, 8, 16]] as Array<[number, number, number, number]>) {
      const [k, ref] = both(() => {
        const a = tf.tidy(() => tf.mul(tf.round(tf.mul(data(shape, 9, 0), 2)), 0.5)) as tf.Tensor4D; // many exact 0
        const b = data(shape, 10, 0);
        const dy = data(shape, 11, 0.2);
        const r = tf.grad((x: tf.Tensor4D) => tf.sum(tf.mul(relu(x), dy)))(a);
        const [ga, gb] = tf.grads((x: tf.Tensor4D, y: tf.Tensor4D) => tf.sum(tf.mul(addRelu(x, y), dy)))([a, b]);
        return [relu(a), addRelu(a, b), r, ga, gb];
      });
      expect(packedReluAvailable(tf.zeros(shape))).toBe(true);
      k.forEach((v, i) => expect(Array.from(v), `${shape} output ${i}`).toEqual(Array.from(ref[i])));
    }
  });

  it('a BN backward and a relu backward leak no tensor and leave the inputs intact', () => {
    const shape: [number, number, number, number] = [2, 3, 5, 12];
    const g = data(shape, 1);
    const x = data(shape, 2);
    const before = tf.memory().numTensors;
    const xBefore = Array.from(x.dataSync());
    tf.tidy(() => {
      bnBackward(g, x, vec(12, 1), vec(12, 2), vec(12, 3), Int32Array.of(0, 5, 7));
      tf.grad((t: tf.Tensor4D) => tf.sum(relu(t)))(x);
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(Array.from(x.dataSync())).toEqual(xBefore);
    tf.dispose([g, x]);
  });

  it('the single-thread WASM build (plain memory) gives the same numbers', async () => {
    // A separate process: a process runs one WASM build, and this one runs the threaded build.
    const code = `
      const { initBackend, tf } = await import(${JSON.stringify(`${root}dist/tf.js`)});
      const k = await import(${JSON.stringify(`${root}dist/models/kernels.js`)});
      const info = await initBackend('wasm', 1);
      const x = tf.randomNormal([3, 5, 7, 16], 2, 3, 'float32', 1);
      const g = tf.randomNormal([3, 5, 7, 16], 0, 1, 'float32', 2);
      const s = tf.randomUniform([16], 0.5, 1, 'float32', 3);
      const out = (on) => { k.setBnKernels(on); const st = k.channelStats(x); const b = k.bnBackward(g, x, st.mean, s, s, null);
        return [st.variance, b.dx, b.S].map((t) => Array.from(t.dataSync())); };
      const a = out(true), b = out(false);
      let err = 0;
      a.forEach((v, i) => { const scale = Math.max(...b[i].map(Math.abs));
        v.forEach((e, j) => { err = Math.max(err, Math.abs(e - b[i][j]) / scale); }); });
      console.log(JSON.stringify({ threads: info.threads, err }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', code]);
    const r = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(r.threads).toBe(1);
    expect(r.err).toBeLessThan(1e-5);
  });
});
