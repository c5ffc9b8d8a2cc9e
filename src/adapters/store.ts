/**
 * The parameters of one module set: named tf.Variables with their PyTorch layouts, the
 * requires_grad flags, state save/load and the seeded initialisers every kind draws from
 * (docs/adapters.md#modules). Linear and 1×1-conv weights are held as [in, out] (the
 * WASM backend's fast matMul form, docs/porting.md#matrix-products) and exposed in PyTorch's
 * [out, in] / [out, in, 1, 1].
 */
import { tf } from '../tf.js';
import { CtaError, listSome } from '../util/errors.js';
import type { ModelParameter } from '../models/types.js';
import type { Rng } from '../util/rng.js';
import type { AdapterContext } from './types.js';

/** How a variable relates to its PyTorch tensor. */
export type Layout = 'same' | 'linear' | 'conv1x1';

interface Slot {
  name: string;
  torchShape: number[];
  layout: Layout;
  variable: tf.Variable;
  requiresGrad: boolean;
}

const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

function toTorch(layout: Layout, torchShape: readonly number[], t: tf.Tensor): tf.Tensor {
  if (layout === 'same') return t.clone();
  return tf.tidy(() => tf.reshape(tf.transpose(t), [...torchShape]));
}

function fromTorch(layout: Layout, varShape: readonly number[], t: tf.Tensor): tf.Tensor {
  if (layout === 'same') return t.clone();
  return tf.tidy(() => tf.transpose(tf.reshape(t, [varShape[1], varShape[0]])));
}

/** Seeded initial values in PyTorch layout (row-major Float32Array of the torch shape). */
export type Init = (rng: Rng, size: number) => Float32Array;

export const zeros: Init = (_rng, size) => new Float32Array(size);
/** U(−bound, bound). */
export const uniform =
  (bound: number): Init =>
  (rng, size) =>
    Float32Array.from({ length: size }, () => (2 * rng.next() - 1) * bound);
/** N(0, std²). */
export const normal =
  (std: number): Init =>
  (rng, size) =>
    Float32Array.from({ length: size }, () => rng.normal() * std);
/**
 * PyTorch nn.Linear's default weight init, kaiming_uniform_(a = √5) = U(±1/√fan_in) (also what
 * loralib / PEFT use for LoRA's A).
 */
export const kaimingUniform = (fanIn: number): Init => uniform(1 / Math.sqrt(fanIn));
/** xavier_uniform_(gain): U(±gain·√(6 / (fan_in + fan_out))). */
export const xavierUniform = (fanIn: number, fanOut: number, gain = 1): Init => uniform(gain * Math.sqrt(6 / (fanIn + fanOut)));

export class ParamStore {
  private readonly slots: Slot[] = [];
  private readonly byName = new Map<string, Slot>();

  constructor(private readonly ctx: AdapterContext) {}

  /**
   * A new parameter: `init` of the context when it names one (PyTorch layout, shape checked),
   * else drawn by `draw`. Returns the variable (layout: [in, out] for 'linear' / 'conv1x1').
   */
  add(name: string, torchShape: number[], layout: Layout, draw: Init): tf.Variable {
    if (this.byName.has(name)) throw new Error(`adapter parameter ${name} declared twice`);
    const size = torchShape.reduce((a, d) => a * d, 1);
    const varShape = layout === 'same' ? torchShape : [torchShape[1], torchShape[0]];
    const given = this.ctx.init?.get(name);
    let variable: tf.Variable;
    if (given) {
      if (given.size !== size || given.shape.length !== torchShape.length || given.shape.some((d, i) => d !== torchShape[i])) {
        throw new CtaError(`adapter init: ${name} has shape ${fmt(given.shape)}, expected ${fmt(torchShape)}`);
      }
      variable = tf.tidy(() => tf.variable(fromTorch(layout, varShape, given), true));
    } else {
      const values = draw(this.ctx.rng, size);
      variable = tf.tidy(() => tf.variable(fromTorch(layout, varShape, tf.tensor(values, torchShape)), true));
    }
    const slot: Slot = { name, torchShape, layout, variable, requiresGrad: true };
    this.slots.push(slot);
    this.byName.set(name, slot);
    return variable;
  }

  parameters(): ModelParameter[] {
    return this.slots.map((s) => ({
      name: s.name,
      kind: 'adapter' as const,
      requiresGrad: s.requiresGrad,
      variable: s.variable,
      shape: s.torchShape,
      toTorch: (t: tf.Tensor) => toTorch(s.layout, s.torchShape, t),
    }));
  }

  requiresGrad(filter: (p: { name: string; kind: 'adapter' }) => boolean): void {
    for (const s of this.slots) s.requiresGrad = filter({ name: s.name, kind: 'adapter' });
  }

  /** name → requires_grad (clone() copies the flags). */
  flags(): Map<string, boolean> {
    return new Map(this.slots.map((s) => [s.name, s.requiresGrad]));
  }

  setFlags(flags: ReadonlyMap<string, boolean>): void {
    for (const s of this.slots) s.requiresGrad = flags.get(s.name) ?? s.requiresGrad;
  }

  /** Every parameter in PyTorch layout (new tensors). */
  saveState(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const s of this.slots) out.set(s.name, toTorch(s.layout, s.torchShape, s.variable));
    return out;
  }

  /** All-or-nothing: names and PyTorch shapes are checked before any variable changes. */
  loadState(state: ReadonlyMap<string, tf.Tensor>, what = 'adapter state'): void {
    const missing: string[] = [];
    const wrong: string[] = [];
    for (const s of this.slots) {
      const t = state.get(s.name);
      if (!t) missing.push(s.name);
      else if (t.shape.length !== s.torchShape.length || t.shape.some((d, i) => d !== s.torchShape[i])) wrong.push(`${s.name} ${fmt(t.shape)} expected ${fmt(s.torchShape)}`);
    }
    const unexpected = [...state.keys()].filter((k) => !this.byName.has(k));
    if (missing.length + wrong.length + unexpected.length > 0) {
      const parts: string[] = [];
      if (missing.length) parts.push(`${missing.length} missing (${listSome(missing, 3)})`);
      if (unexpected.length) parts.push(`${unexpected.length} unexpected (${listSome(unexpected, 3)})`);
      if (wrong.length) parts.push(`${wrong.length} wrong shape (${listSome(wrong, 2)})`);
      throw new CtaError(`${what} does not match the modules built for this model and options: ${parts.join(', ')}`);
    }
    tf.tidy(() => {
      for (const s of this.slots) s.variable.assign(fromTorch(s.layout, s.variable.shape, state.get(s.name)!));
    });
  }

  /** Number of scalars (all parameters). */
  size(): number {
    return this.slots.reduce((a, s) => a + s.variable.size, 0);
  }

  dispose(): void {
    for (const s of this.slots) s.variable.dispose();
    this.slots.length = 0;
    this.byName.clear();
  }
}
