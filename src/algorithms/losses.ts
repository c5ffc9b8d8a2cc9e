/** Differentiable losses shared by the adaptation methods (docs/methods.md#tent, docs/methods.md#eata). */
import { tf } from '../tf.js';

/**
 * Shannon entropy of softmax(logits) per sample, H = −Σ_k softmax·log_softmax (temperature 1),
 * written exactly like the reference `softmax_entropy` (docs/methods.md#tent; Tent Eq. 1) so the
 * gradient is the same.
 */
export function softmaxEntropy(logits: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => tf.neg(tf.sum(tf.mul(tf.softmax(logits), tf.logSoftmax(logits)), 1)) as tf.Tensor1D);
}

/**
 * Mean cross-entropy of logits against integer labels (PyTorch `nn.CrossEntropyLoss()` with
 * reduction 'mean' and no class weights): mean_i −log_softmax(z_i)[y_i]. Used by EATA's Fisher
 * estimation with pseudo-labels (docs/methods.md#fisher-estimation).
 */
export function crossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Scalar {
  return tf.tidy(() => {
    const onehot = tf.oneHot(tf.cast(labels, 'int32'), logits.shape[1]);
    return tf.mean(tf.neg(tf.sum(tf.mul(onehot, tf.logSoftmax(logits)), 1))) as tf.Scalar;
  });
}

/** Pseudo-labels: argmax of the logits per sample (first maximum on ties, as torch.max). */
export function pseudoLabels(logits: tf.Tensor2D): tf.Tensor1D {
  return tf.argMax(logits, 1) as tf.Tensor1D;
}
