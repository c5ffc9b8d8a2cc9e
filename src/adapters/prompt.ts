/**
 * Learnable prompt tokens on the ViT's token sequence (docs/prompts.md), `--adapt-params prompt`:
 *
 * - VPT-shallow (Jia et al., ECCV 2022, §3.2): P tokens inserted after the class token, after the
 *   patch + position embedding (prompts get no position embedding), before block 0.
 * - VPT-deep: in addition, before every block i ≥ 1 the P prompt positions — the previous block's
 *   outputs there — are replaced by block i's own tokens ("VPT-Deep", Eq. 4–6).
 *   VPT initialises them U(−v, v), v = √(6 / (3·p² + D)) (its xavier-uniform for prompts, p =
 *   patch size); they are named as in VPT's code: `prompt.embeddings` [1, P, D] and
 *   `prompt.deep_embeddings` [depth − 1, P, D].
 * - L2P (Wang et al., CVPR 2022, §4): a pool of M prompts of Lp tokens, `prompt_pool.prompt`
 *   [M, Lp, D], with keys `prompt_pool.key` [M, D], both U[0, 0.01) (Flax's uniform initialiser, the
 *   official configs). The query is the frozen model's class-token feature (the final LayerNorm's
 *   token 0, computed with the prompts off); the keys and the query are L2-normalised (x·rsqrt(
 *   max(Σx², 1e-12))), and each sample's top-N keys by cosine similarity are chosen. With
 *   batchwise selection (the official configs) the N ids chosen most often in the batch (ties: the
 *   lower id) serve every sample. The N·Lp selected tokens enter before block 0. The pull
 *   constraint (Eq. 5's surrogate) adds −λ·Σ_b Σ_k cos(key_{s_bk}, q_b) / B to the method's loss
 *   while adapting; it is the only gradient the keys get (the selection itself is a top-N).
 *
 * Position of the tokens: L2P prepends its prompts before the class token, VPT after it. Without a
 * position embedding on the prompts, attention is permutation-equivariant, so the class token's
 * output is the same either way; both are inserted after it here and the classifier reads the
 * class token, as VPT's and L2P's token classifiers do (L2P's own "prompt" classifier averages
 * the prompt outputs into a newly trained head; test-time adaptation keeps the pretrained head).
 *
 * Unlike LoRA or adapters, prompts change the output from the first step: extra tokens change
 * every attention map. `--prompt-tokens 0` (VPT) is the base model.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { FieldSpec } from '../config/schema.js';
import type { ForwardContext, TokenSite } from '../models/injection.js';
import { customOp } from '../models/ops/custom-op.js';
import { ModuleSet } from './module-set.js';
import { uniform, type Init } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const PROMPT_DEPTHS = ['shallow', 'deep'] as const;

export const PROMPT_OPTIONS = {
  promptTokens: { type: 'int', min: 0, default: 5, group: 'adapters', description: 'prompt: tokens per prompt: VPT P (per block input), L2P Lp (per pool entry); VPT default 5, L2P CIFAR-100 config 10' },
  promptDepth: { type: 'enum', choices: PROMPT_DEPTHS, default: 'shallow', group: 'adapters', description: 'prompt: VPT-shallow (tokens before block 0) or VPT-deep (new tokens at every block input)' },
  promptPool: { type: 'int', min: 0, default: 0, group: 'adapters', description: 'prompt: L2P pool size M (0 = VPT, no pool; L2P uses 10)' },
  promptTopN: { type: 'int', min: 1, default: 4, group: 'adapters', description: 'prompt: L2P prompts N selected by key–query cosine similarity (L2P: 4; at most --prompt-pool)' },
  promptBatchwise: { type: 'bool', default: true, group: 'adapters', description: "prompt: L2P selects one set for the whole batch (the N ids chosen most often, L2P's batchwise_prompt); false = per sample" },
  promptPullCoeff: { type: 'number', min: 0, default: 1, group: 'adapters', description: "prompt: λ of L2P's pull constraint: −λ·Σ_k cos(key_k, query), summed over the selected keys and averaged over the batch, added to the method's loss" },
} as const satisfies Record<string, FieldSpec>;

/** Flax's `nn.initializers.uniform()`: U[0, 0.01) (L2P's prompts and keys). */
const flaxUniform: Init = (rng, size) => Float32Array.from({ length: size }, () => 0.01 * rng.next());

/** x · rsqrt(max(Σx², 1e-12)) along the last axis (L2P's l2_normalize). */
function l2Normalize(x: tf.Tensor2D): tf.Tensor2D {
  return tf.mul(x, tf.rsqrt(tf.maximum(tf.sum(tf.square(x), -1, true), 1e-12))) as tf.Tensor2D;
}

/**
 * L2P's selection from the cosine similarities sim [B, M]: per sample the top-N ids (descending
 * similarity, ties to the lower id, as jax.lax.top_k); batchwise, the N ids chosen most often
 * across the batch (ties to the lower id) for every sample. Rows of N ids.
 */
export function selectPrompts(sim: Float32Array | number[], batch: number, pool: number, topN: number, batchwise: boolean): number[][] {
  const rows: number[][] = [];
  for (let b = 0; b < batch; b++) {
    const row = Array.from({ length: pool }, (_, m) => m);
    row.sort((i, j) => sim[b * pool + j] - sim[b * pool + i] || i - j);
    rows.push(row.slice(0, topN));
  }
  if (!batchwise) return rows;
  const counts = new Array<number>(pool).fill(0);
  for (const r of rows) for (const m of r) counts[m]++;
  const ids = Array.from({ length: pool }, (_, m) => m).sort((i, j) => counts[j] - counts[i] || i - j);
  const major = ids.slice(0, topN);
  return rows.map(() => major.slice());
}

/**
 * The pretrained model's class-token features of this forward's input (the hooks off), through a
 * custom op with a zero gradient: its forward runs with the tape paused, so the query forward keeps
 * nothing for the backward (the query is a constant of the adaptation, as in L2P).
 */
function frozenQuery(ctx: ForwardContext): tf.Tensor2D {
  const op = customOp<tf.Tensor2D>(([x]) => ({ value: ctx.baseFeatures(), gradFunc: () => [tf.zerosLike(x)] }));
  return op(ctx.input);
}

/**
 * Rows `ids` of a [M, K] matrix as a one-hot product, [ids.length, K]: tf.gather's gradient needs
 * UnsortedSegmentSum, which the WASM backend lacks, while a matMul's gradient is plain products.
 * The one-hot matrix is built here (the WASM OneHot kernel ignores a float32 dtype).
 */
function takeRows(m: tf.Tensor2D, ids: readonly number[]): tf.Tensor2D {
  const rows = m.shape[0];
  const hot = new Float32Array(ids.length * rows);
  ids.forEach((id, i) => (hot[i * rows + id] = 1));
  return tf.matMul(tf.tensor2d(hot, [ids.length, rows]), m);
}

/** What L2P chose in the last forward (logging: which prompts serve the stream). */
export interface PromptSelection {
  ids: number[][];
}

/** What the set needs of its model (no reference to it: a clone serves the cloned model). */
interface PromptHost {
  arch: string;
  sites: readonly TokenSite[];
  /** Input side in pixels (the patch size is side / grid). */
  side: number;
}

class PromptSet extends ModuleSet {
  private readonly tokenCount: number;
  private readonly depth: number;
  private readonly dim: number;
  private readonly deep: boolean;
  private readonly poolSize: number;
  private readonly topN: number;
  private readonly batchwise: boolean;
  private readonly pull: number;
  private readonly embeddings: tf.Variable | null = null;
  private readonly deepEmbeddings: tf.Variable | null = null;
  private readonly poolPrompts: tf.Variable | null = null;
  private readonly keys: tf.Variable | null = null;
  /** This forward's selected pool tokens [B, N·Lp, D] (L2P), dropped in end(). */
  private current: tf.Tensor3D | null = null;
  /** The last forward's pull term −λ·reduce_sim (taped), kept until the next forward. */
  private aux: tf.Scalar | null = null;
  /** The last forward's L2P selection. */
  lastSelection: PromptSelection | null = null;

  constructor(
    private readonly host: PromptHost,
    private readonly cfg: AdapterConfig,
    ctx: AdapterContext,
  ) {
    super('prompt', ctx);
    const sites = host.sites;
    if (sites.length === 0) throw new CtaError(`--adapt-params prompt: ${host.arch} has no token sequence to prompt (a ViT is needed)`);
    this.depth = sites.length;
    this.dim = sites[0].dim;
    const int = (key: string, min: number, fallback: number): number => {
      const v = cfg[key] ?? fallback;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new CtaError(`--${flag(key)}: expected an integer ≥ ${min}, got ${String(v)}`);
      return v;
    };
    this.tokenCount = int('promptTokens', 0, 5);
    this.poolSize = int('promptPool', 0, 0);
    this.topN = int('promptTopN', 1, 4);
    const depth = cfg.promptDepth ?? 'shallow';
    if (depth !== 'shallow' && depth !== 'deep') throw new CtaError(`--prompt-depth: expected shallow or deep, got ${String(depth)}`);
    this.deep = depth === 'deep';
    this.batchwise = cfg.promptBatchwise === undefined ? true : cfg.promptBatchwise === true;
    const pull = cfg.promptPullCoeff ?? 1;
    if (typeof pull !== 'number' || !(pull >= 0)) throw new CtaError(`--prompt-pull-coeff: expected a number ≥ 0, got ${String(pull)}`);
    this.pull = pull;
    const d = this.dim;
    const p = this.tokenCount;
    if (this.poolSize > 0) {
      if (this.deep) throw new CtaError('--prompt-depth deep: L2P (--prompt-pool) inserts its prompts before block 0 only; use --prompt-depth shallow');
      if (p < 1) throw new CtaError('--prompt-tokens: an L2P pool needs at least 1 token per prompt');
      if (this.topN > this.poolSize) throw new CtaError(`--prompt-top-n ${this.topN}: larger than the pool (--prompt-pool ${this.poolSize})`);
      this.poolPrompts = this.store.add('prompt_pool.prompt', [this.poolSize, p, d], 'same', flaxUniform);
      this.keys = this.store.add('prompt_pool.key', [this.poolSize, d], 'same', flaxUniform);
    } else if (p > 0) {
      // VPT: v = √(6 / (3·p² + D)), p the patch size (side / grid).
      const grid = Math.round(Math.sqrt(sites[0].tokens - 1));
      const patch = host.side / grid;
      const bound = Math.sqrt(6 / (3 * patch * patch + d));
      this.embeddings = this.store.add('prompt.embeddings', [1, p, d], 'same', uniform(bound));
      if (this.deep && this.depth > 1) this.deepEmbeddings = this.store.add('prompt.deep_embeddings', [this.depth - 1, p, d], 'same', uniform(bound));
    }
  }

  /** Prompt tokens entering block 0 (all of them for VPT-shallow and L2P). */
  get inserted(): number {
    return this.poolSize > 0 ? this.topN * this.tokenCount : this.tokenCount;
  }

  begin(ctx: ForwardContext): void {
    this.lastSelection = null;
    this.aux?.dispose();
    this.aux = null;
    if (!this.poolPrompts || !this.keys) return;
    const b = ctx.batch;
    const q = frozenQuery(ctx);
    try {
      const qn = tf.tidy(() => l2Normalize(q));
      const sim = tf.tidy(() => tf.matMul(qn, tf.transpose(l2Normalize(this.keys as tf.Tensor as tf.Tensor2D))));
      const ids = selectPrompts(sim.dataSync() as Float32Array, b, this.poolSize, this.topN, this.batchwise);
      sim.dispose();
      this.lastSelection = { ids };
      const flat = ids.flat();
      const lp = this.tokenCount;
      const d = this.dim;
      const m = this.poolSize;
      this.current = tf.keep(tf.tidy(() => tf.reshape(takeRows(tf.reshape(this.poolPrompts!, [m, lp * d]), flat), [b, this.topN * lp, d]) as tf.Tensor3D));
      if (this.pull > 0) {
        // reduce_sim = Σ_b Σ_k ⟨key_norm[s_bk], q_norm_b⟩ / B; the loss term is −λ·reduce_sim.
        this.aux = tf.keep(
          tf.tidy(() => {
            const chosen = tf.reshape(takeRows(l2Normalize(this.keys as tf.Tensor as tf.Tensor2D), flat), [b, this.topN, d]);
            const reduceSim = tf.div(tf.sum(tf.mul(chosen, tf.expandDims(qn, 1))), b);
            return tf.mul(reduceSim, -this.pull) as tf.Scalar;
          }),
        );
      }
      qn.dispose();
    } finally {
      q.dispose();
    }
  }

  tokens(site: TokenSite, x: tf.Tensor3D): tf.Tensor3D {
    const [n, t, d] = x.shape;
    const p = this.tokenCount;
    if (site.block === 0) {
      const prompts = this.current ?? (this.embeddings ? (tf.tile(this.embeddings, [n, 1, 1]) as tf.Tensor3D) : null);
      if (!prompts) return x;
      return tf.concat([tf.slice(x, [0, 0, 0], [n, 1, d]), prompts, tf.slice(x, [0, 1, 0], [n, t - 1, d])], 1);
    }
    if (!this.deepEmbeddings) return x;
    // VPT-deep: the previous block's outputs at the prompt positions 1..P give way to block i's prompts.
    const own = tf.tile(tf.slice(this.deepEmbeddings, [site.block - 1, 0, 0], [1, p, d]), [n, 1, 1]) as tf.Tensor3D;
    return tf.concat([tf.slice(x, [0, 0, 0], [n, 1, d]), own, tf.slice(x, [0, 1 + p, 0], [n, t - 1 - p, d])], 1);
  }

  end(): void {
    this.current?.dispose();
    this.current = null;
  }

  /** L2P's pull term of the last forward, −λ·reduce_sim (owned by the set); null for VPT / λ = 0. */
  auxLoss(): tf.Scalar | null {
    return this.aux;
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new PromptSet(this.host, this.cfg, ctx);
  }

  override dispose(): void {
    this.end();
    this.aux?.dispose();
    this.aux = null;
    super.dispose();
  }
}

function flag(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

export const prompt = {
  description: 'learnable prompt tokens: VPT-shallow / VPT-deep (--prompt-depth), or an L2P pool with key–query selection (--prompt-pool); ViT only',
  options: PROMPT_OPTIONS,
  models: ['vit'],
  create: (model, cfg, ctx) =>
    new PromptSet({ arch: model.arch, sites: model.adapterSites().filter((s): s is TokenSite => s.kind === 'tokens'), side: model.inputShape[0] }, cfg, ctx),
} satisfies AdapterSpec;
