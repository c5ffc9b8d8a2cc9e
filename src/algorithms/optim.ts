/**
 * Hand-written optimizers over a fixed list of tf.Variables, matching PyTorch's update rules
 * exactly (algorithms.md H). tf.train.* optimizers are not used because MECTA needs per-step
 * exclusions (a fully matched layer's parameters, A.6) and PyTorch's per-parameter state (Adam's
 * step counter, SGD's lazily created momentum buffer), which they cannot express.
 *
 * Gradient convention for `step(grads, mask)`:
 * - `grads[i]` null/undefined → the parameter receives a zero gradient (PyTorch 1.12 after
 *   `zero_grad()`: the `.grad` tensor exists but is zero, so momentum/Adam moments still act);
 * - `mask[i] === false` → the parameter is skipped entirely this step, its state untouched
 *   (PyTorch ≥ 2.0, where `.grad` is None and the optimizer ignores the parameter).
 */
import { tf } from '../tf.js';
import type { OptimizerName } from './types.js';
import { CtaError } from '../util/errors.js';

export interface Optimizer {
  readonly name: OptimizerName;
  readonly params: readonly tf.Variable[];
  /** One update. Does not dispose `grads` (the caller owns them). */
  step(grads: ReadonlyArray<tf.Tensor | null | undefined>, mask?: readonly boolean[]): void;
  /** Whether parameter i has optimizer state (i.e. has taken at least one step). */
  hasState(i: number): boolean;
  /** Copies of the state tensors, keyed `<name>.<slot>.<index>`; the caller disposes them. */
  saveState(): Map<string, tf.Tensor>;
  /** Replaces the state with copies of `state` (the caller keeps ownership of `state`). */
  loadState(state: Map<string, tf.Tensor>): void;
  /** Drops all state (as a freshly constructed optimizer). */
  clear(): void;
  dispose(): void;
}

export interface OptimizerOptions {
  lr: number;
  momentum: number;
}

function checkGrads(
  params: readonly tf.Variable[],
  grads: ReadonlyArray<tf.Tensor | null | undefined>,
  mask?: readonly boolean[],
): void {
  if (grads.length !== params.length) {
    throw new Error(`optimizer: ${grads.length} gradients for ${params.length} parameters`);
  }
  if (mask && mask.length !== params.length) {
    throw new Error(`optimizer: mask of length ${mask.length} for ${params.length} parameters`);
  }
}

/** Replaces slot `i` of `slots` with `next` (kept), disposing the old tensor. */
function setSlot(slots: (tf.Tensor | null)[], i: number, next: tf.Tensor): void {
  const old = slots[i];
  slots[i] = tf.keep(next);
  if (old && old !== next) old.dispose();
}

/**
 * PyTorch `torch.optim.SGD(params, lr, momentum)` with dampening 0, no Nesterov, no weight decay:
 * buf ← g on the parameter's first step, then buf ← m·buf + g; θ ← θ − lr·buf. With momentum 0
 * there is no buffer: θ ← θ − lr·g.
 */
export class SGD implements Optimizer {
  readonly name = 'sgd' as const;
  private bufs: (tf.Tensor | null)[];

  constructor(
    readonly params: readonly tf.Variable[],
    private readonly opts: OptimizerOptions,
  ) {
    this.bufs = params.map(() => null);
  }

  step(grads: ReadonlyArray<tf.Tensor | null | undefined>, mask?: readonly boolean[]): void {
    checkGrads(this.params, grads, mask);
    const { lr, momentum } = this.opts;
    for (let i = 0; i < this.params.length; i++) {
      if (mask && !mask[i]) continue;
      const p = this.params[i];
      tf.tidy(() => {
        const g = grads[i] ?? tf.zerosLike(p);
        let d: tf.Tensor = g;
        if (momentum !== 0) {
          const buf = this.bufs[i];
          // first step: buf = clone(g) (torch.clone(grad).detach())
          const next = buf === null ? g.clone() : tf.add(tf.mul(buf, momentum), g);
          setSlot(this.bufs, i, next);
          d = next;
        }
        p.assign(tf.sub(p, tf.mul(d, lr)));
      });
    }
  }

  hasState(i: number): boolean {
    return this.bufs[i] !== null;
  }

  saveState(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    this.bufs.forEach((b, i) => {
      if (b) out.set(`sgd.momentum_buffer.${i}`, b.clone());
    });
    return out;
  }

  loadState(state: Map<string, tf.Tensor>): void {
    this.clear();
    for (const [key, t] of state) {
      const m = /^sgd\.momentum_buffer\.(\d+)$/.exec(key);
      if (!m) continue;
      const i = Number(m[1]);
      checkSlot(this.params, i, t, key);
      this.bufs[i] = tf.keep(t.clone());
    }
  }

  clear(): void {
    for (const b of this.bufs) b?.dispose();
    this.bufs = this.params.map(() => null);
  }

  dispose(): void {
    this.clear();
  }
}

/**
 * PyTorch `torch.optim.Adam(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)`, the
 * single-tensor (non-fused, non-capturable) formula with a per-parameter step count t:
 * m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
 * θ ← θ − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps).
 */
export class Adam implements Optimizer {
  readonly name = 'adam' as const;
  static readonly beta1 = 0.9;
  static readonly beta2 = 0.999;
  static readonly eps = 1e-8;
  private m: (tf.Tensor | null)[];
  private v: (tf.Tensor | null)[];
  private t: number[];

  constructor(
    readonly params: readonly tf.Variable[],
    private readonly opts: Pick<OptimizerOptions, 'lr'>,
  ) {
    this.m = params.map(() => null);
    this.v = params.map(() => null);
    this.t = params.map(() => 0);
  }

  step(grads: ReadonlyArray<tf.Tensor | null | undefined>, mask?: readonly boolean[]): void {
    checkGrads(this.params, grads, mask);
    const { beta1, beta2, eps } = Adam;
    const lr = this.opts.lr;
    for (let i = 0; i < this.params.length; i++) {
      if (mask && !mask[i]) continue;
      const p = this.params[i];
      const t = ++this.t[i];
      tf.tidy(() => {
        const g = grads[i] ?? tf.zerosLike(p);
        const m0 = this.m[i] ?? tf.zerosLike(p);
        const v0 = this.v[i] ?? tf.zerosLike(p);
        const m1 = tf.add(tf.mul(m0, beta1), tf.mul(g, 1 - beta1));
        const v1 = tf.add(tf.mul(v0, beta2), tf.mul(tf.mul(g, g), 1 - beta2));
        setSlot(this.m, i, m1);
        setSlot(this.v, i, v1);
        // bias corrections in double precision on the host, as PyTorch does with Python floats
        const stepSize = lr / (1 - beta1 ** t);
        const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
        const denom = tf.add(tf.div(tf.sqrt(v1), bc2Sqrt), eps);
        p.assign(tf.sub(p, tf.mul(tf.div(m1, denom), stepSize)));
      });
    }
  }

  hasState(i: number): boolean {
    return this.t[i] > 0;
  }

  saveState(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (let i = 0; i < this.params.length; i++) {
      if (this.t[i] === 0) continue;
      out.set(`adam.step.${i}`, tf.scalar(this.t[i], 'float32'));
      out.set(`adam.exp_avg.${i}`, this.m[i]!.clone());
      out.set(`adam.exp_avg_sq.${i}`, this.v[i]!.clone());
    }
    return out;
  }

  loadState(state: Map<string, tf.Tensor>): void {
    this.clear();
    for (const [key, t] of state) {
      const m = /^adam\.(step|exp_avg|exp_avg_sq)\.(\d+)$/.exec(key);
      if (!m) continue;
      const i = Number(m[2]);
      if (m[1] === 'step') {
        if (i >= this.params.length) throw new CtaError(`optimizer state: ${key} out of range`);
        this.t[i] = Math.round(t.dataSync()[0]);
        continue;
      }
      checkSlot(this.params, i, t, key);
      (m[1] === 'exp_avg' ? this.m : this.v)[i] = tf.keep(t.clone());
    }
    for (let i = 0; i < this.params.length; i++) {
      const has = [this.t[i] > 0, this.m[i] !== null, this.v[i] !== null];
      if (has.some((h) => h) && !has.every((h) => h)) {
        throw new CtaError(`optimizer state: Adam state of parameter ${i} is incomplete`);
      }
    }
  }

  clear(): void {
    for (const x of [...this.m, ...this.v]) x?.dispose();
    this.m = this.params.map(() => null);
    this.v = this.params.map(() => null);
    this.t = this.params.map(() => 0);
  }

  dispose(): void {
    this.clear();
  }
}

function checkSlot(params: readonly tf.Variable[], i: number, t: tf.Tensor, key: string): void {
  if (i >= params.length) throw new CtaError(`optimizer state: ${key} out of range (${params.length} parameters)`);
  const want = params[i].shape.join('x');
  if (t.shape.join('x') !== want) {
    throw new CtaError(`optimizer state: ${key} has shape [${t.shape}], parameter has [${params[i].shape}]`);
  }
}

export function createOptimizer(
  name: OptimizerName,
  params: readonly tf.Variable[],
  opts: OptimizerOptions,
): Optimizer {
  switch (name) {
    case 'sgd':
      return new SGD(params, opts);
    case 'adam':
      return new Adam(params, opts);
    default: {
      const never: never = name;
      throw new CtaError(`unknown optimizer '${String(never)}'`);
    }
  }
}
