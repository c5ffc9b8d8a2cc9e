/**
 * Hand-written optimizers over a fixed list of tf.Variables, matching PyTorch's update rules
 * exactly (docs/methods.md#optimiser). tf.train.* optimizers are not used because MECTA needs
 * per-step exclusions (a fully matched layer's parameters, docs/mecta-norm.md#matched-updates) and
 * PyTorch's per-parameter state (Adam's step counter, SGD's lazily created momentum buffer), which
 * they cannot express.
 *
 * Gradient convention for `step(grads, mask)`:
 * - `grads[i]` null/undefined → the parameter receives a zero gradient (PyTorch 1.12 after
 *   `zero_grad()`: the `.grad` tensor exists but is zero, so momentum/Adam moments still act);
 * - `mask[i] === false` → the parameter is skipped entirely this step, its state untouched
 *   (PyTorch ≥ 2.0, where `.grad` is None and the optimizer ignores the parameter).
 * A zero gradient still receives weight decay (PyTorch adds it to the zeroed `.grad`); a masked
 * parameter does not.
 *
 * Parameters come as one list or as parameter groups (PyTorch's `param_groups`), each group
 * overriding the constructor's hyper-parameters. `i` above is the flat index over the groups in
 * order, as in PyTorch's `state_dict()`, so masks and saved state do not depend on the grouping.
 * Hyper-parameters are read at every step, so a schedule may change them in place.
 */
import { tf } from '../tf.js';
import type { OptimizerName } from './types.js';
import { CtaError } from '../util/errors.js';

export interface Optimizer {
  readonly name: OptimizerName;
  /** Every parameter, group after group: the flat index of `step`'s gradients, masks and state. */
  readonly params: readonly tf.Variable[];
  /** The parameter groups (one when constructed from a plain list). */
  readonly groups: readonly ParamGroup[];
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

/**
 * Hyper-parameters under PyTorch's names (camelCase; Adam's `betas` split in two). Unset ones take
 * torch 1.13's defaults: momentum 0, dampening 0, nesterov false, weight decay 0, betas
 * (0.9, 0.999), eps 1e-8 — except AdamW, whose weight decay also defaults to 0 here (torch: 0.01).
 */
export interface OptimizerOptions {
  lr: number;
  /** SGD */
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  /** SGD, Adam: L2 penalty added to the gradient; AdamW: decoupled decay θ ← θ·(1 − lr·wd). */
  weightDecay?: number;
  /** Adam, AdamW */
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** One parameter group: its parameters and the hyper-parameters it sets for them. */
export interface ParamGroup extends Partial<OptimizerOptions> {
  readonly params: readonly tf.Variable[];
}

type Hyper = Required<OptimizerOptions>;

const DEFAULTS: Omit<Hyper, 'lr'> = {
  momentum: 0,
  dampening: 0,
  nesterov: false,
  weightDecay: 0,
  beta1: 0.9,
  beta2: 0.999,
  eps: 1e-8,
};

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

function isGroupList(x: readonly tf.Variable[] | readonly ParamGroup[]): x is readonly ParamGroup[] {
  return x.length > 0 && !(x[0] instanceof tf.Variable);
}

/** Groups, the flat parameter list, and each parameter's group's hyper-parameters at step time. */
abstract class GroupedOptimizer {
  readonly params: readonly tf.Variable[];
  readonly groups: readonly ParamGroup[];
  private readonly groupOf: number[];

  constructor(
    paramsOrGroups: readonly tf.Variable[] | readonly ParamGroup[],
    /** Kept by reference: a caller may change e.g. `lr` between steps (cta-train's schedule). */
    private readonly defaults: OptimizerOptions,
    kind: string,
  ) {
    this.groups = isGroupList(paramsOrGroups) ? paramsOrGroups : [{ params: paramsOrGroups }];
    const params: tf.Variable[] = [];
    this.groupOf = [];
    const seen = new Set<tf.Variable>();
    this.groups.forEach((g, gi) => {
      for (const p of g.params) {
        // as torch's add_param_group: one parameter, one set of hyper-parameters and state
        if (seen.has(p)) throw new CtaError(`${kind}: a parameter appears in more than one parameter group`);
        seen.add(p);
        params.push(p);
        this.groupOf.push(gi);
      }
      this.validate(this.resolve(gi), this.groups.length > 1 ? `${kind} (parameter group ${gi})` : kind);
    });
    this.params = params;
  }

  /** Parameter group `gi`'s hyper-parameters as they are now. */
  private resolve(gi: number): Hyper {
    const g = this.groups[gi];
    const d = this.defaults;
    return {
      lr: g.lr ?? d.lr,
      momentum: g.momentum ?? d.momentum ?? DEFAULTS.momentum,
      dampening: g.dampening ?? d.dampening ?? DEFAULTS.dampening,
      nesterov: g.nesterov ?? d.nesterov ?? DEFAULTS.nesterov,
      weightDecay: g.weightDecay ?? d.weightDecay ?? DEFAULTS.weightDecay,
      beta1: g.beta1 ?? d.beta1 ?? DEFAULTS.beta1,
      beta2: g.beta2 ?? d.beta2 ?? DEFAULTS.beta2,
      eps: g.eps ?? d.eps ?? DEFAULTS.eps,
    };
  }

  /** torch's constructor checks (ValueError there, a one-line CtaError here). */
  protected validate(h: Hyper, where: string): void {
    if (!(h.lr >= 0)) throw new CtaError(`${where}: invalid learning rate ${h.lr} (expected ≥ 0)`);
    if (!(h.weightDecay >= 0)) throw new CtaError(`${where}: invalid weight decay ${h.weightDecay} (expected ≥ 0)`);
  }

  step(grads: ReadonlyArray<tf.Tensor | null | undefined>, mask?: readonly boolean[]): void {
    checkGrads(this.params, grads, mask);
    const hyper = this.groups.map((_, gi) => this.resolve(gi));
    for (let i = 0; i < this.params.length; i++) {
      if (mask && !mask[i]) continue;
      this.update(i, this.params[i], grads[i] ?? null, hyper[this.groupOf[i]]);
    }
  }

  /** One parameter's update; `g` null = a zero gradient. */
  protected abstract update(i: number, p: tf.Variable, g: tf.Tensor | null, h: Hyper): void;
}

/**
 * PyTorch `torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`, torch 1.13's
 * single-tensor path: d ← g + wd·θ; with momentum, buf ← d on the parameter's first step, then
 * buf ← μ·buf + (1 − dampening)·d, and d ← d + μ·buf (Nesterov) or d ← buf; θ ← θ − lr·d. With
 * momentum 0 there is no buffer.
 */
export class SGD extends GroupedOptimizer implements Optimizer {
  readonly name = 'sgd' as const;
  private bufs: (tf.Tensor | null)[];

  constructor(params: readonly tf.Variable[] | readonly ParamGroup[], opts: OptimizerOptions) {
    super(params, opts, 'sgd');
    this.bufs = this.params.map(() => null);
  }

  protected override validate(h: Hyper, where: string): void {
    super.validate(h, where);
    if (!(h.momentum >= 0)) throw new CtaError(`${where}: invalid momentum ${h.momentum} (expected ≥ 0)`);
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) {
      throw new CtaError(`${where}: Nesterov momentum requires a momentum > 0 and zero dampening`);
    }
  }

  protected update(i: number, p: tf.Variable, grad: tf.Tensor | null, h: Hyper): void {
    tf.tidy(() => {
      let d: tf.Tensor = grad ?? tf.zerosLike(p);
      if (h.weightDecay !== 0) d = tf.add(d, tf.mul(p, h.weightDecay));
      if (h.momentum !== 0) {
        const buf = this.bufs[i];
        // first step: buf = clone(d_p) (torch.clone(d_p).detach())
        const next =
          buf === null
            ? d.clone()
            : tf.add(tf.mul(buf, h.momentum), h.dampening === 0 ? d : tf.mul(d, 1 - h.dampening));
        setSlot(this.bufs, i, next);
        d = h.nesterov ? tf.add(d, tf.mul(next, h.momentum)) : next;
      }
      p.assign(tf.sub(p, tf.mul(d, h.lr)));
    });
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
 * PyTorch `torch.optim.Adam(params, lr, betas, eps, weight_decay)` (and, `decoupled`,
 * `torch.optim.AdamW`), torch 1.13's single-tensor (non-fused, non-capturable, non-amsgrad)
 * formula with a per-parameter step count t. Adam: g ← g + wd·θ; AdamW: θ ← θ·(1 − lr·wd) first.
 * Then m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
 * θ ← θ − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps).
 */
export class Adam extends GroupedOptimizer implements Optimizer {
  readonly name: 'adam' | 'adamw';
  private m: (tf.Tensor | null)[];
  private v: (tf.Tensor | null)[];
  private t: number[];

  constructor(
    params: readonly tf.Variable[] | readonly ParamGroup[],
    opts: OptimizerOptions,
    private readonly decoupled = false,
  ) {
    super(params, opts, decoupled ? 'adamw' : 'adam');
    this.name = decoupled ? 'adamw' : 'adam';
    this.m = this.params.map(() => null);
    this.v = this.params.map(() => null);
    this.t = this.params.map(() => 0);
  }

  protected override validate(h: Hyper, where: string): void {
    super.validate(h, where);
    if (!(h.eps >= 0)) throw new CtaError(`${where}: invalid eps ${h.eps} (expected ≥ 0)`);
    for (const [k, b] of [['beta1', h.beta1], ['beta2', h.beta2]] as const) {
      if (!(b >= 0 && b < 1)) throw new CtaError(`${where}: invalid ${k} ${b} (expected ≥ 0 and < 1)`);
    }
  }

  protected update(i: number, p: tf.Variable, grad: tf.Tensor | null, h: Hyper): void {
    const { lr, beta1, beta2, eps, weightDecay } = h;
    const t = ++this.t[i];
    tf.tidy(() => {
      let g = grad ?? tf.zerosLike(p);
      let theta: tf.Tensor = p;
      if (weightDecay !== 0) {
        if (this.decoupled) theta = tf.mul(p, 1 - lr * weightDecay); // param.mul_(1 - lr * wd)
        else g = tf.add(g, tf.mul(p, weightDecay)); // grad.add(param, alpha=wd)
      }
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
      p.assign(tf.sub(theta, tf.mul(tf.div(m1, denom), stepSize)));
    });
  }

  hasState(i: number): boolean {
    return this.t[i] > 0;
  }

  saveState(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (let i = 0; i < this.params.length; i++) {
      if (this.t[i] === 0) continue;
      out.set(`${this.name}.step.${i}`, tf.scalar(this.t[i], 'float32'));
      out.set(`${this.name}.exp_avg.${i}`, this.m[i]!.clone());
      out.set(`${this.name}.exp_avg_sq.${i}`, this.v[i]!.clone());
    }
    return out;
  }

  loadState(state: Map<string, tf.Tensor>): void {
    this.clear();
    const re = new RegExp(`^${this.name}\\.(step|exp_avg|exp_avg_sq)\\.(\\d+)$`);
    for (const [key, t] of state) {
      const m = re.exec(key);
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

/** `torch.optim.AdamW`: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019). */
export class AdamW extends Adam {
  constructor(params: readonly tf.Variable[] | readonly ParamGroup[], opts: OptimizerOptions) {
    super(params, opts, true);
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
  params: readonly tf.Variable[] | readonly ParamGroup[],
  opts: OptimizerOptions,
): Optimizer {
  switch (name) {
    case 'sgd':
      return new SGD(params, opts);
    case 'adam':
      return new Adam(params, opts);
    case 'adamw':
      return new AdamW(params, opts);
    default: {
      const never: never = name;
      throw new CtaError(`unknown optimizer '${String(never)}'`);
    }
  }
}
