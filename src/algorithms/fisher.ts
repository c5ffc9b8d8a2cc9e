/**
 * EATA's diagonal Fisher information for the anti-forgetting regulariser
 * (docs/methods.md#fisher-estimation; EATA Eqn. 9; the reference's `compute_fishers`).
 *
 * For each clean batch t: pseudo-labels ŷ = argmax of the model's own logits, L_t = mean
 * cross-entropy(z, ŷ), G += (∂L_t/∂θ)² element-wise; finally F = G / T with T the number of
 * batches, and θ* = a copy of the parameters. Nothing is updated — except, with MECTA, the running
 * buffers: the reference runs the pass inside `standard_bn_cxt` (docs/mecta-norm.md#standard-bn-mode),
 * i.e. train-mode PyTorch BN that updates the buffers with momentum 0.1, which is norm mode
 * 'train-update' here.
 */
import { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import { crossEntropy } from './losses.js';
import { currentMectaOptions } from './gradient-adapter.js';
import { CtaError } from '../util/errors.js';

export interface FisherInfo {
  /** F per parameter, same order and shapes as the parameters passed in. */
  fisher: tf.Tensor[];
  /** θ*: the parameter values at estimation time. */
  thetaStar: tf.Tensor[];
  /** Number of batches T the squared gradients were averaged over. */
  batches: number;
}

/**
 * Estimates the Fisher of `params` over `batches` (NHWC in [0,1]). Consumes the batches: each one
 * is disposed after use. The model's norm mode is restored afterwards ('mecta' with its options).
 */
export async function estimateFisher(
  model: Classifier,
  params: readonly tf.Variable[],
  batches: AsyncIterable<tf.Tensor4D>,
): Promise<FisherInfo> {
  const prevMode = model.normMode;
  const mecta = prevMode === 'mecta' ? currentMectaOptions(model) : null;
  // With MECTA: standard_bn_cxt ('train-update', no pruning). Without: the configured model already
  // normalises with batch statistics and keeps no running buffers (local_bn,
  // docs/methods.md#configuration).
  model.setNormMode(mecta ? 'train-update' : 'batch');
  const acc: (tf.Tensor | null)[] = params.map(() => null);
  let count = 0;
  try {
    for await (const x of batches) {
      try {
        const { value, grads } = tf.engine().gradients(
          () => {
            const z = model.forward(x);
            // Pseudo-labels taken from the values, so the label path is not on the tape (the
            // reference's `outputs.max(1)` indices carry no gradient either).
            const labels = tf.tensor1d(argmaxRows(z), 'int32');
            return crossEntropy(z, labels);
          },
          params as tf.Variable[],
          undefined,
          true,
        );
        value.dispose();
        for (let i = 0; i < params.length; i++) {
          const g = grads[i];
          if (!g) continue; // the reference only accumulates parameters that received a gradient
          const next = tf.tidy(() => (acc[i] ? tf.add(tf.square(g), acc[i]!) : tf.square(g)));
          acc[i]?.dispose();
          acc[i] = next;
        }
        for (const g of grads) g?.dispose();
        count++;
      } finally {
        x.dispose();
      }
    }
  } catch (err) {
    for (const a of acc) a?.dispose();
    throw err;
  } finally {
    if (mecta) model.setNormMode('mecta', mecta);
    else if (model.normMode !== prevMode) model.setNormMode(prevMode);
  }
  if (count === 0) {
    throw new CtaError('EATA: the Fisher data set yielded no batches (is --fisher-size 0?)');
  }
  const fisher = acc.map((a, i) => {
    const f = a ? tf.tidy(() => tf.div(a, count)) : tf.zerosLike(params[i]);
    a?.dispose();
    return f;
  });
  const thetaStar = params.map((p) => p.clone() as tf.Tensor);
  return { fisher, thetaStar, batches: count };
}

/** Row-wise argmax of a [N, C] tensor, first maximum on ties (as torch.max / argmax). */
function argmaxRows(z: tf.Tensor2D): Int32Array {
  const [n, c] = z.shape;
  const v = z.dataSync();
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let k = 1; k < c; k++) if (v[i * c + k] > v[i * c + best]) best = k;
    out[i] = best;
  }
  return out;
}
