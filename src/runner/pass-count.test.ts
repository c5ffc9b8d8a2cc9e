import { describe, it, expect, afterEach, beforeAll } from 'vitest';
import { initBackend, tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import { PassCounter } from './pass-count.js';

/** A linear "classifier" over the flattened image: enough to count its forwards. */
function linearModel(w: tf.Variable): Classifier {
  return {
    forwardFeatures(x: tf.Tensor4D) {
      const features = tf.reshape(x, [x.shape[0], -1]) as tf.Tensor2D;
      return { features, logits: tf.matMul(features, w) as tf.Tensor2D };
    },
    // as BaseClassifier: the logits of forwardFeatures, through `this` (one forward, not two)
    forward(x: tf.Tensor4D) {
      return this.forwardFeatures(x).logits;
    },
  } as unknown as Classifier;
}

beforeAll(async () => {
  await initBackend('cpu');
});

describe('PassCounter', () => {
  const counter = new PassCounter();
  afterEach(() => counter.uninstall());

  it('counts forward images, differentiated images and gradient computations', () => {
    counter.install();
    const w = tf.variable(tf.randomNormal([12, 3], 0, 1, 'float32', 1));
    const m = counter.watch(linearModel(w));
    const x = tf.randomUniform([4, 2, 2, 3], 0, 1, 'float32', 2) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      m.forward(x); // a prediction: forward only
      m.forwardFeatures(x); // LAME's features: a forward too
      const { grads } = tf.variableGrads(() => tf.mean(m.forward(x)) as tf.Scalar, [w]);
      tf.dispose(grads);
      // a second pass on half the batch (SAR's second SAM step), through tf.grads
      const half = tf.slice(x, 0, 2) as tf.Tensor4D;
      tf.grad((v: tf.Tensor) => tf.sum(tf.mul(m.forward(half), v)))(tf.ones([2, 3]));
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(counter.take()).toEqual({ forwards: 4 + 4 + 4 + 2, backwards: 4 + 2, forward_calls: 4, backward_calls: 2 });
    expect(counter.take()).toEqual({ forwards: 0, backwards: 0, forward_calls: 0, backward_calls: 0 });
    tf.dispose([w, x]);
  });

  it('a gradient computed inside another (a recomputation) is not a second backward', () => {
    counter.install();
    counter.take();
    const w = tf.variable(tf.ones([12, 3]));
    const m = counter.watch(linearModel(w));
    const x = tf.ones([2, 2, 2, 3]) as tf.Tensor4D;
    tf.tidy(() => {
      tf.variableGrads(() => {
        const inner = tf.grad((t: tf.Tensor) => tf.sum(tf.square(t)))(tf.ones([3]));
        return tf.add(tf.sum(m.forward(x)), tf.sum(inner)) as tf.Scalar;
      }, [w]);
    });
    expect(counter.take()).toMatchObject({ forwards: 2, backwards: 2, backward_calls: 1 });
    tf.dispose([w, x]);
  });

  it('uninstall restores the engine; a watched model still counts its forwards', () => {
    const engine = tf.engine() as unknown as { gradients: unknown };
    const own = engine.gradients;
    counter.install();
    expect(engine.gradients).not.toBe(own);
    counter.uninstall();
    expect(engine.gradients).toBe(own);
    counter.take();
    const w = tf.variable(tf.ones([12, 3]));
    const m = counter.watch(linearModel(w));
    tf.tidy(() => tf.variableGrads(() => tf.sum(m.forward(tf.ones([3, 2, 2, 3]) as tf.Tensor4D)) as tf.Scalar, [w]));
    // Without the engine hook nothing knows the forward was differentiated.
    expect(counter.take()).toMatchObject({ forwards: 3, backwards: 0, backward_calls: 0 });
    w.dispose();
  });
});
