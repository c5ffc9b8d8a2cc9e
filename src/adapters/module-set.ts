/**
 * What every module set shares: its ParamStore (parameters, requires_grad, state) and clone(),
 * which rebuilds the set from its own state (docs/adapters.md#state). A kind subclasses it and
 * adds its hooks (src/models/injection.ts).
 */
import { tf } from '../tf.js';
import type { ModelParameter } from '../models/types.js';
import type { AdapterSet } from '../models/injection.js';
import { Rng } from '../util/rng.js';
import { ParamStore } from './store.js';
import type { AdapterContext } from './types.js';

export abstract class ModuleSet implements AdapterSet {
  protected readonly store: ParamStore;

  protected constructor(
    readonly kind: string,
    ctx: AdapterContext,
  ) {
    this.store = new ParamStore(ctx);
  }

  parameters(): readonly ModelParameter[] {
    return this.store.parameters();
  }

  requiresGrad(filter: (p: { name: string; kind: 'adapter' }) => boolean): void {
    this.store.requiresGrad(filter);
  }

  saveState(): Map<string, tf.Tensor> {
    return this.store.saveState();
  }

  loadState(state: Map<string, tf.Tensor>): void {
    this.store.loadState(state);
  }

  /** Scalars in the set's parameters. */
  size(): number {
    return this.store.size();
  }

  /** The same kind and sites built from `init` (every parameter given, so `rng` draws nothing). */
  protected abstract rebuild(ctx: AdapterContext): ModuleSet;

  clone(): AdapterSet {
    const state = this.saveState();
    try {
      const copy = this.rebuild({ rng: new Rng(0), init: state });
      copy.store.setFlags(this.store.flags());
      return copy;
    } finally {
      tf.dispose([...state.values()]);
    }
  }

  dispose(): void {
    this.store.dispose();
  }
}
