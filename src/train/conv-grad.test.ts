/**
 * The trainable Conv2d's filter and input gradients against tfjs's own kernels
 * (Conv2DBackpropFilter / Conv2DBackpropInput via tf.grad of tf.conv2d) on the cpu backend, which
 * has them. The layer code is backend-independent: only its kernels differ on WASM.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Conv2d, convFilterGrad } from '../models/ops/conv.js';
import { expectClose } from '../models/test-helpers.js';

beforeAll(async () => {
  await initBackend('cpu');
});

interface Case {
  n: number;
  h: number;
  w: number;
  cin: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
  groups: number;
}

const CASES: Case[] = [
  { n: 2, h: 8, w: 8, cin: 3, cout: 5, k: 3, stride: 1, pad: 1, groups: 1 }, // stem-like
  { n: 2, h: 8, w: 8, cin: 8, cout: 8, k: 3, stride: 1, pad: 1, groups: 4 }, // grouped conv_conv
  { n: 2, h: 8, w: 8, cin: 8, cout: 12, k: 3, stride: 2, pad: 1, groups: 4 }, // grouped, stride 2
  { n: 3, h: 7, w: 9, cin: 4, cout: 6, k: 3, stride: 2, pad: 1, groups: 2 }, // odd sizes, stride 2
  { n: 2, h: 8, w: 8, cin: 6, cout: 10, k: 1, stride: 1, pad: 0, groups: 1 }, // conv_reduce/expand
  { n: 2, h: 8, w: 8, cin: 6, cout: 10, k: 1, stride: 2, pad: 0, groups: 1 }, // downsample.0
  { n: 2, h: 7, w: 7, cin: 6, cout: 4, k: 1, stride: 2, pad: 0, groups: 2 }, // odd, grouped 1×1
  { n: 1, h: 6, w: 6, cin: 2, cout: 3, k: 3, stride: 1, pad: 0, groups: 1 }, // no padding
];

const label = (c: Case) => `k${c.k} s${c.stride} p${c.pad} g${c.groups} x[${c.n},${c.h},${c.w},${c.cin}]→${c.cout}`;

/** Reference: tf.conv2d per group (PyTorch layout weight → HWIO), differentiated by tfjs itself. */
function reference(x: tf.Tensor4D, wOihw: tf.Tensor4D, c: Case, r: tf.Tensor4D): { dx: tf.Tensor; dw: tf.Tensor } {
  const f = (xi: tf.Tensor4D, wi: tf.Tensor4D) => {
    const hwio = tf.transpose(wi, [2, 3, 1, 0]) as tf.Tensor4D;
    const xs = c.groups === 1 ? [xi] : (tf.split(xi, c.groups, 3) as tf.Tensor4D[]);
    const ws = c.groups === 1 ? [hwio] : (tf.split(hwio, c.groups, 3) as tf.Tensor4D[]);
    const y = tf.concat(xs.map((xg, g) => tf.conv2d(xg, ws[g], c.stride, c.pad)), 3);
    return tf.sum(tf.mul(y, r));
  };
  const [dx, dw] = tf.grads((a, b) => f(a as tf.Tensor4D, b as tf.Tensor4D))([x, wOihw]);
  return { dx, dw };
}

describe('trainable Conv2d gradients equal tfjs native conv2d gradients (cpu backend)', () => {
  for (const c of CASES) {
    it(label(c), () => {
      tf.tidy(() => {
        const x = tf.randomNormal([c.n, c.h, c.w, c.cin], 0, 1, 'float32', 1) as tf.Tensor4D;
        const w = tf.randomNormal([c.cout, c.cin / c.groups, c.k, c.k], 0, 1, 'float32', 2) as tf.Tensor4D;
        const conv = new Conv2d(w, { stride: c.stride, pad: c.pad, groups: c.groups }, { trainable: true });
        try {
          const y0 = conv.apply(x);
          const r = tf.randomNormal(y0.shape, 0, 1, 'float32', 3) as tf.Tensor4D;
          const ref = reference(x, w, c, r);
          // forward equals the reference forward
          const yRef = tf.concat(
            (c.groups === 1 ? [x] : tf.split(x, c.groups, 3)).map((xg, g) =>
              tf.conv2d(
                xg as tf.Tensor4D,
                (c.groups === 1 ? [tf.transpose(w, [2, 3, 1, 0])] : tf.split(tf.transpose(w, [2, 3, 1, 0]), c.groups, 3))[g] as tf.Tensor4D,
                c.stride,
                c.pad,
              ),
            ),
            3,
          );
          expectClose(`${label(c)} forward`, y0, yRef, 1e-5);
          const v = conv.weightVariable!;
          const [dx, dv] = tf.grads((a, b) => {
            void b; // the variable enters through the layer; b is the same tensor
            return tf.sum(tf.mul(conv.apply(a as tf.Tensor4D), r));
          })([x, v]);
          // dv is HWIO [k,k,in/G,out]; the reference is OIHW
          expectClose(`${label(c)} dW`, tf.transpose(dv, [3, 2, 0, 1]), ref.dw, 1e-5);
          expectClose(`${label(c)} dx`, dx, ref.dx, 1e-5);
        } finally {
          conv.dispose();
        }
      });
    });
  }

  it('convFilterGrad (dense) equals tf.grad of tf.conv2d w.r.t. the filter for every shape above', () => {
    for (const c of CASES.filter((q) => q.groups === 1)) {
      tf.tidy(() => {
        const x = tf.randomNormal([c.n, c.h, c.w, c.cin], 0, 1, 'float32', 4) as tf.Tensor4D;
        const f = tf.randomNormal([c.k, c.k, c.cin, c.cout], 0, 1, 'float32', 5) as tf.Tensor4D;
        const dy = tf.randomNormal(tf.conv2d(x, f, c.stride, c.pad).shape, 0, 1, 'float32', 6) as tf.Tensor4D;
        const native = tf.grad((ff) => tf.sum(tf.mul(tf.conv2d(x, ff as tf.Tensor4D, c.stride, c.pad), dy)))(f);
        expectClose(`convFilterGrad ${label(c)}`, convFilterGrad(x, dy, c.k, c.stride, c.pad), native, 1e-5);
      });
    }
  });

  it('a frozen conv saves nothing for backward; a trainable one saves its input only under a tape', () => {
    const w = tf.randomNormal([4, 2, 3, 3]) as tf.Tensor4D;
    const x = tf.randomNormal([1, 5, 5, 2]) as tf.Tensor4D;
    for (const trainable of [false, true]) {
      const conv = new Conv2d(w, { stride: 1, pad: 1, groups: 1 }, { trainable });
      const before = tf.memory().numTensors;
      const y = conv.apply(x); // no tape: nothing kept beyond the output
      expect(tf.memory().numTensors - before).toBe(1);
      y.dispose();
      conv.dispose();
    }
    w.dispose();
    x.dispose();
  });

  it('setWeight / weightOIHW round-trip the PyTorch layout in trainable mode', () => {
    tf.tidy(() => {
      const w = tf.randomNormal([6, 2, 3, 3]) as tf.Tensor4D;
      const conv = new Conv2d(tf.zerosLike(w) as tf.Tensor4D, { stride: 1, pad: 1, groups: 3 }, { trainable: true });
      conv.setWeight(w);
      expectClose('weightOIHW', conv.weightOIHW(), w, 0);
      expect(conv.weightVariable!.shape).toEqual([3, 3, 2, 6]);
      conv.dispose();
    });
  });
});
