/**
 * A memory budget for MECTA's backward cache (docs/memory.md#cache-budget): every forward, choose
 * which norm layers cache and how many of their channels, so that the analytic cache
 * (docs/memory.md#analytic) and the bytes the engine holds for backprop stay within B bytes. The
 * layers whose statistics moved most (largest forget-gate β, docs/mecta-norm.md#forget-gate) get
 * their cache first. MECTA itself makes this decision with one global threshold (`beta_thre`:
 * cache or not) and one global pruning fraction (`prune_q`); here the two are chosen per layer and
 * per batch from the budget.
 *
 * `allocateCache` is the pure allocation; `CacheBudget` is the per-model state the MECTA policy
 * (norm-policy.ts) consults: the layers' shapes in forward order and their β of the last forward.
 */
import { CtaError } from '../util/errors.js';

/**
 * How the budget is handed out (docs/memory.md#cache-budget): 'greedy' gives each layer in β
 * order its whole cache before the next gets any; 'spread' first gives every layer in β order its
 * floor, then tops them up in β order with what is left.
 */
export const BUDGET_MODES = ['greedy', 'spread'] as const;
export type BudgetMode = (typeof BUDGET_MODES)[number];

/** Smallest kept fraction a caching layer may get (cta-eval's choice: MECTA's q = 0.9). */
export const BUDGET_MIN_KEPT_FRACTION = 0.1;
/**
 * Bytes a caching layer's op saves besides its kept channels: six per-channel float32 vectors
 * (batch mean, batch rstd, scale, ratio, shift; norm-policy.ts MectaPolicy), rounded up to six.
 */
const STATS_BYTES_PER_CHANNEL = 6 * 4;
/**
 * Bytes per element the ops after a norm layer save while the layer is on the gradient path: a
 * bit-packed ReLU mask, one bit per float32 element (docs/memory.md#measured-against-analytic).
 */
const PATH_BYTES_PER_ELEMENT = 1 / 8;
/**
 * Bytes per channel of every norm layer the loss may hold whatever caches: the affine parameters
 * and, for EATA, the Fisher penalty's F and θ − θ0 terms (four float32 per channel).
 */
const PARAM_BYTES_PER_CHANNEL = 4 * 4;

/** The part of the estimate that does not depend on the allocation: PARAM_BYTES_PER_CHANNEL·ΣC. */
function fixedBytes(layers: readonly BudgetLayer[]): number {
  return layers.reduce((s, l) => s + PARAM_BYTES_PER_CHANNEL * l.channels, 0);
}

/** One norm layer as the allocation sees it: forward position, shape of one image, last β. */
export interface BudgetLayer {
  name: string;
  /** Channels C. */
  channels: number;
  /** Spatial size H·W of its input (1 for a [N, C] input). */
  pixels: number;
  /** β of its last forward (null: not known yet, e.g. the first batch). */
  beta: number | null;
}

/** What one layer does in this forward. */
export interface LayerAllocation {
  name: string;
  /** Channels kept in the backward cache; 0 = the layer does not cache (docs/mecta-norm.md#cache-stopping). */
  kept: number;
  /** Channels the analytic forward figure counts: min(C, floor(B / bytes per channel)). */
  forwardChannels: number;
}

export interface CacheAllocation {
  layers: LayerAllocation[];
  /** Σ kept bytes, the analytic backward figure (docs/memory.md#analytic). */
  backwardBytes: number;
  /** max forward figure over the layers. */
  maxForwardBytes: number;
  /** The estimated measured bytes: kept bytes + per-channel statistics + ReLU masks on the path. */
  estimatedBytes: number;
}

/** Float32 bytes of one channel of a layer's input at batch size n. */
function channelBytes(l: BudgetLayer, n: number): number {
  return 4 * n * l.pixels;
}

/** The smallest kept count a caching layer may get: max(1, ceil(ρ·C)), ρ = BUDGET_MIN_KEPT_FRACTION. */
export function minKept(channels: number): number {
  return Math.max(1, Math.ceil(BUDGET_MIN_KEPT_FRACTION * channels));
}

/** Bytes the ops after layer l save while it is on the gradient path (its ReLU mask). */
function pathBytes(l: BudgetLayer, n: number): number {
  return Math.ceil(n * l.pixels * l.channels * PATH_BYTES_PER_ELEMENT);
}

/**
 * The order in which layers are offered the budget: β descending (the statistics that moved most
 * first); ties, and layers without β, deepest first (docs/memory.md#cache-budget).
 */
export function budgetOrder(layers: readonly BudgetLayer[]): number[] {
  const idx = layers.map((_, i) => i);
  const key = (i: number) => layers[i].beta ?? -Infinity;
  return idx.sort((a, b) => key(b) - key(a) || b - a);
}

/**
 * The smallest budget with which every batch caches at least one layer whatever the β order:
 * P + max over layers l of a_l·k_min,l + s_l + Σ_{j ≥ l} o_j (the notation of
 * docs/memory.md#cache-budget), i.e. the first layer offered always fits at its floor.
 */
export function minimumBudgetBytes(layers: readonly BudgetLayer[], n: number): number {
  let worst = 0;
  let suffix = 0;
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i];
    suffix += pathBytes(l, n);
    worst = Math.max(worst, channelBytes(l, n) * minKept(l.channels) + STATS_BYTES_PER_CHANNEL * l.channels + suffix);
  }
  return layers.length ? worst + fixedBytes(layers) : 0;
}

/**
 * Greedy allocation of `budget` bytes at batch size n (docs/memory.md#cache-budget). Layers are
 * in forward order. In `budgetOrder`, each layer gets k = min(f_l, floor(R / a_l)) channels, R the
 * budget left after the layers already served, its statistics and the ReLU masks the gradient path
 * gains by reaching down to it; a layer that gets k < k_min ends the allocation with nothing, one
 * that gets C_l > k ≥ k_min ends it after itself. Every layer's forward figure counts f_l channels.
 * Throws (a CtaError) when the budget is below `minimumBudgetBytes`.
 */
export function allocateCache(layers: readonly BudgetLayer[], n: number, budget: number, mode: BudgetMode = 'greedy'): CacheAllocation {
  const minimum = minimumBudgetBytes(layers, n);
  if (budget < minimum) {
    throw new CtaError(
      `--cache-budget-mb: ${(budget / 1e6).toFixed(3)} MB is below the smallest achievable cache, ${(minimum / 1e6).toFixed(3)} MB at batch size ${n} (any layer at its ${BUDGET_MIN_KEPT_FRACTION * 100} % kept-channel floor with the ReLU masks above it)`,
    );
  }
  const m = layers.length;
  const forwardChannels = layers.map((l) => Math.min(l.channels, Math.floor(budget / channelBytes(l, n))));
  const kept = new Array<number>(m).fill(0);
  let used = fixedBytes(layers);
  let lowest = m; // forward index of the earliest caching layer: the path reaches down to it
  const order = budgetOrder(layers);
  for (const i of order) {
    const l = layers[i];
    let path = 0;
    for (let j = i; j < lowest; j++) path += pathBytes(layers[j], n);
    const left = budget - used - path - STATS_BYTES_PER_CHANNEL * l.channels;
    const a = channelBytes(l, n);
    // 'spread': the floor only in this pass
    const want = mode === 'spread' ? Math.min(minKept(l.channels), forwardChannels[i]) : forwardChannels[i];
    const k = Math.min(want, left > 0 ? Math.floor(left / a) : 0);
    if (k < minKept(l.channels)) break;
    kept[i] = k;
    used += a * k + path + STATS_BYTES_PER_CHANNEL * l.channels;
    lowest = Math.min(lowest, i);
    // fewer than wanted (the budget or the forward cap binds): nothing is left for the next
    if (k < (mode === 'spread' ? want : l.channels)) break;
  }
  if (mode === 'spread') {
    // second pass: top the floored layers up in β order, the path no longer grows
    for (const i of order) {
      if (kept[i] === 0) break;
      const a = channelBytes(layers[i], n);
      const extra = Math.min(forwardChannels[i] - kept[i], Math.floor((budget - used) / a));
      if (extra <= 0 && kept[i] < forwardChannels[i]) break;
      kept[i] += Math.max(0, extra);
      used += a * Math.max(0, extra);
      if (kept[i] < layers[i].channels) break;
    }
  }
  let backwardBytes = 0;
  let maxForwardBytes = 0;
  layers.forEach((l, i) => {
    backwardBytes += channelBytes(l, n) * kept[i];
    maxForwardBytes = Math.max(maxForwardBytes, channelBytes(l, n) * forwardChannels[i]);
  });
  return {
    layers: layers.map((l, i) => ({ name: l.name, kept: kept[i], forwardChannels: forwardChannels[i] })),
    backwardBytes,
    maxForwardBytes,
    estimatedBytes: used,
  };
}

/**
 * The per-model budget state. Layers announce themselves on every forward (`see`, also without
 * side effects: a shape is not adaptation state), in forward order; a side-effect forward asks
 * `allocation` before building its op and reports its β after (`noteBeta`). A new plan is made
 * when a layer asks a second time, i.e. at the first layer of the next forward, from the β of the
 * previous forward (the current batch's β of later layers is not known yet when the first layer
 * must decide; docs/memory.md#cache-budget).
 */
export class CacheBudget {
  private readonly layers: BudgetLayer[] = [];
  private readonly index = new Map<string, number>();
  private plan: Map<string, LayerAllocation> | null = null;
  private planN = 0;
  private served = new Set<string>();
  /** The removed channels of each layer's last side-effect forward (reused without side effects). */
  private readonly lastRemoved = new Map<string, Int32Array>();

  constructor(
    readonly bytes: number,
    readonly mode: BudgetMode = 'greedy',
  ) {
    if (!(bytes > 0) || !Number.isFinite(bytes)) throw new CtaError(`--cache-budget-mb: expected a positive number of MB, got ${bytes / 1e6}`);
  }

  /** Registers a layer's shape (first sighting fixes its forward position). */
  see(name: string, channels: number, pixels: number): void {
    const i = this.index.get(name);
    if (i === undefined) {
      this.index.set(name, this.layers.length);
      this.layers.push({ name, channels, pixels, beta: null });
      this.plan = null;
    } else if (this.layers[i].channels !== channels || this.layers[i].pixels !== pixels) {
      this.layers[i] = { ...this.layers[i], channels, pixels };
      this.plan = null;
    }
  }

  /** The layers known so far, in forward order. */
  get known(): readonly BudgetLayer[] {
    return this.layers;
  }

  /** This forward's allocation for `name` at batch size n (plans anew at the next forward). */
  allocation(name: string, n: number): LayerAllocation {
    if (!this.plan || this.served.has(name) || n !== this.planN) {
      this.plan = new Map(allocateCache(this.layers, n, this.bytes, this.mode).layers.map((a) => [a.name, a]));
      this.planN = n;
      this.served = new Set();
    }
    this.served.add(name);
    const a = this.plan.get(name);
    if (!a) throw new CtaError(`cache budget: layer ${name} was not seen before its forward`);
    return a;
  }

  /** The current plan's entry for `name`, without starting a new plan (side-effect-free forwards). */
  current(name: string): LayerAllocation | null {
    return this.plan?.get(name) ?? null;
  }

  /** The β `name` used in its last side-effect forward, for the next plan's order. */
  noteBeta(name: string, beta: number): void {
    const i = this.index.get(name);
    if (i !== undefined) this.layers[i].beta = beta;
  }

  /** Remembers the channels a side-effect forward removed, for side-effect-free forwards. */
  noteRemoved(name: string, removed: Int32Array | null): void {
    if (removed) this.lastRemoved.set(name, removed);
    else this.lastRemoved.delete(name);
  }

  /** The last side-effect forward's removed channels of `name` (null: none removed). */
  removedOf(name: string): Int32Array | null {
    return this.lastRemoved.get(name) ?? null;
  }

  /** The kept fraction per layer of the last plan (0 = not caching), in forward order. */
  keptRatios(): { name: string; ratio: number }[] {
    const plan = this.plan;
    return this.layers.map((l) => ({ name: l.name, ratio: plan?.get(l.name) ? plan.get(l.name)!.kept / l.channels : 1 }));
  }

  /** β of every layer's last side-effect forward, by layer name (checkpoints). */
  betas(): Record<string, number | null> {
    return Object.fromEntries(this.layers.map((l) => [l.name, l.beta]));
  }

  /** Restores what `betas()` returned, so a resumed run plans its next batch as it would have. */
  restoreBetas(betas: Record<string, number | null>): void {
    for (const l of this.layers) l.beta = betas[l.name] ?? null;
    this.plan = null;
  }

  /** Forgets β, the plan and the channel choices (a run reset); the shapes stay. */
  reset(): void {
    for (const l of this.layers) l.beta = null;
    this.plan = null;
    this.served = new Set();
    this.lastRemoved.clear();
  }
}
