/** PyTorch nn.Linear on [N, in] rows, its weight constant or trainable. */
import { tf } from '../../tf.js';
import { recordWeightInput, type WeightOptions } from './weights.js';
import { matMul } from './mat-mul.js';

/**
 * PyTorch nn.Linear with the weight stored as [in, out]: constants by default, `tf.Variable`s
 * (weight and bias) with `{ trainable: true }`.
 */
export class Linear {
  private weight: tf.Tensor2D; // [in, out]
  private bias: tf.Tensor1D | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  private isVariable: boolean;

  /** `weight`: PyTorch layout [out, in]. */
  constructor(weight: tf.Tensor2D, bias: tf.Tensor1D | null, opts: WeightOptions = {}) {
    [this.outFeatures, this.inFeatures] = weight.shape;
    this.isVariable = opts.trainable === true;
    if (this.isVariable) {
      this.weight = tf.variable(tf.tidy(() => tf.transpose(weight)), true) as tf.Variable<tf.Rank.R2>;
      this.bias = bias ? (tf.variable(bias, true) as tf.Variable<tf.Rank.R1>) : null;
    } else {
      this.weight = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
      this.bias = bias ? (tf.keep(bias.clone()) as tf.Tensor1D) : null;
    }
  }

  apply(x: tf.Tensor2D): tf.Tensor2D {
    if (this.isVariable) recordWeightInput(this.weight, x);
    // A trainable weight takes the plain-product backward (mat-mul.ts): tfjs's matMul gradient
    // uses the transposed forms, slow on WASM. A constant one keeps the autodiff (no dW to compute).
    const y = this.isVariable ? matMul(x, this.weight) : tf.matMul(x, this.weight);
    return this.bias ? (tf.add(y, this.bias) as tf.Tensor2D) : (y as tf.Tensor2D);
  }

  /** Whether weight and bias are variables whose gradients the backward computes. */
  get trainable(): boolean {
    return this.isVariable;
  }

  /**
   * Switches weight and bias between variables (trainable) and constants (frozen), values kept.
   * Either way the matMul autodiff saves the same two operands, so a frozen Linear's backward is
   * unchanged.
   */
  setRequiresGrad(on: boolean): void {
    if (on === this.isVariable) return;
    const w = this.weight;
    const b = this.bias;
    if (on) {
      this.weight = tf.variable(w, true) as tf.Variable<tf.Rank.R2>;
      this.bias = b ? (tf.variable(b, true) as tf.Variable<tf.Rank.R1>) : null;
    } else {
      this.weight = tf.keep(w.clone()) as tf.Tensor2D;
      this.bias = b ? (tf.keep(b.clone()) as tf.Tensor1D) : null;
    }
    w.dispose();
    b?.dispose();
    this.isVariable = on;
  }

  /** The trainable weight [in, out] and bias variables (empty for a frozen layer). */
  get variables(): { weight: tf.Variable; bias: tf.Variable | null } | null {
    return this.trainable ? { weight: this.weight as tf.Variable, bias: this.bias as tf.Variable | null } : null;
  }

  weightOutIn(): tf.Tensor2D {
    return tf.transpose(this.weight) as tf.Tensor2D;
  }

  biasValue(): tf.Tensor1D | null {
    return this.bias ? (this.bias.clone() as tf.Tensor1D) : null;
  }

  get hasBias(): boolean {
    return this.bias !== null;
  }

  setWeight(weight: tf.Tensor2D): void {
    if (this.isVariable) {
      tf.tidy(() => (this.weight as tf.Variable).assign(tf.transpose(weight)));
      return;
    }
    const w = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
    this.weight.dispose();
    this.weight = w;
  }

  setBias(bias: tf.Tensor1D): void {
    if (this.isVariable && this.bias) {
      (this.bias as tf.Variable).assign(bias);
      return;
    }
    const b = tf.keep(bias.clone()) as tf.Tensor1D;
    this.bias?.dispose();
    this.bias = b;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias?.dispose();
  }
}
