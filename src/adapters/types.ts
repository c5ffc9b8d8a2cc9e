/**
 * Parameter-efficient modules for `--adapt-params` (docs/adapters.md). A kind is an AdapterSpec:
 * its config fields and a `create` that builds an AdapterSet (src/models/injection.ts) for a model
 * with an injection point. The registry (registry.ts) is a typed object literal; the CLI choices
 * derive from its keys.
 */
import type { tf } from '../tf.js';
import type { FieldSpec } from '../config/schema.js';
import type { Classifier } from '../models/types.js';
import type { AdapterHost, AdapterSet } from '../models/injection.js';
import type { Rng } from '../util/rng.js';

/** The model families a kind supports: the ViT's linears / tokens, or the CNNs' 1×1 convolutions. */
export type ModelFamily = 'vit' | 'cnn';

/** The resolved run configuration, read by key (a kind reads only its declared options). */
export type AdapterConfig = Readonly<Record<string, unknown>>;

export interface AdapterContext {
  /** Draws the random initial values (seeded from the run's seed). */
  rng: Rng;
  /**
   * Initial values by parameter name in PyTorch layout, used instead of random draws (parity
   * fixtures, clone); names not in it are drawn. Not disposed by the module.
   */
  init?: ReadonlyMap<string, tf.Tensor>;
  /**
   * One random test-time augmentation of a batch (CoTTA's / ViDA's get_tta_transforms,
   * src/algorithms/augment.ts), drawing from the run's generator; a new tensor. Kinds that need it
   * (vida's scale update) refuse to build without it.
   */
  augment?: (x: tf.Tensor4D) => tf.Tensor4D;
}

export interface AdapterSpec {
  readonly description: string;
  /**
   * The config fields the kind reads (merged into src/config/schema.ts FIELDS; a key shared by
   * two kinds is the same field object, src/adapters/options.ts).
   */
  readonly options: Readonly<Record<string, FieldSpec>>;
  readonly models: readonly ModelFamily[];
  create(model: Classifier & AdapterHost, cfg: AdapterConfig, ctx: AdapterContext): AdapterSet;
}
