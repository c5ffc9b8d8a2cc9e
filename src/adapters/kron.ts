/**
 * Σ_i A_i ⊗ B_i, the parameterised hypercomplex multiplication (PHM) weight of Compacter
 * (Mahabadi et al., NeurIPS 2021, Eq. 2) and KAdaptation (He et al., AAAI 2023, Eq. 4), for
 * A [n, a, c] and B [n, k, p]: an [a·k, c·p] matrix with (A_i ⊗ B_i)[i·k + r, j·p + s] =
 * A_i[i, j]·B_i[r, s]. Built as one [a·c, n]·[n, k·p] product and a transpose rather than n
 * explicit Kronecker products (same sum, no [n, a, k, c, p] intermediate).
 */
import { tf } from '../tf.js';

export function kronSum(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor2D {
  const [n, ar, ac] = a.shape;
  const [nb, kr, kc] = b.shape;
  if (n !== nb) throw new Error(`kronSum: ${n} vs ${nb} terms`);
  return tf.tidy(() => {
    const at = tf.transpose(tf.reshape(a, [n, ar * ac])); // [a·c, n]
    const prod = tf.matMul(at, tf.reshape(b, [n, kr * kc])); // [a·c, k·p]: Σ_i A_i[i,j]·B_i[r,s]
    return tf.reshape(tf.transpose(tf.reshape(prod, [ar, ac, kr, kc]), [0, 2, 1, 3]), [ar * kr, ac * kc]) as tf.Tensor2D;
  });
}

/** B_i = L_i·R_i for L [n, k, r], R [n, r, p] (the factorised, low-rank PHM weights). */
export function lowRankTerms(left: tf.Tensor3D, right: tf.Tensor3D): tf.Tensor3D {
  const [n, k, r] = left.shape;
  const p = right.shape[2];
  if (r === 1) return tf.mul(left, right) as tf.Tensor3D; // outer products by broadcasting [n,k,1]·[n,1,p]
  const rs = tf.unstack(right);
  const terms = tf.unstack(left).map((l, i) => tf.matMul(l as tf.Tensor2D, rs[i] as tf.Tensor2D));
  return tf.reshape(tf.stack(terms), [n, k, p]) as tf.Tensor3D;
}
