/**
 * The single source of truth for run configuration. Every option is declared once here; the YAML
 * loader, the CLI flags (kebab-case, camelCase accepted), validation messages, the README flag
 * table and the manifest's resolved config are all derived from `FIELDS`.
 */
import { BACKENDS } from '../tf.js';
import { MAX_WASM_THREADS } from '../wasm-threads.js';
import { CHECKPOINT_SCOPES, DIST_METRICS } from '../models/types.js';
import { BUDGET_MODES } from '../models/cache-budget.js';
import { ALGORITHMS, ALGORITHM_NAMES, type AlgorithmName } from '../algorithms/registry.js';
import { MODEL_NAMES } from '../models/registry.js';
import { CORRUPTIONS_15, EXTRA_CORRUPTIONS } from '../data/stream.js';
import { DEFAULT_ROUNDS, SETTING_NAMES } from '../data/settings.js';
import { ADAPT_PARAMS, adapterFields } from '../adapters/registry.js';
import { CORRUPTION_SET_NAMES, EVAL_MODES } from '../data/eval-modes.js';

export const DATASETS = ['cifar10c', 'cifar100c', 'synthetic-c', 'imagenetc'] as const;
export const PROGRESS_MODES = ['auto', 'bar', 'plain', 'none'] as const;
export const MATCHED_UPDATES = ['momentum', 'skip'] as const;
export const ALL_CORRUPTIONS = [...CORRUPTIONS_15, ...EXTRA_CORRUPTIONS] as readonly string[];

interface Base<T> {
  group: string;
  description: string;
  default: T;
  /** What the default means when the value alone does not say (null = computed elsewhere). */
  defaultText?: string;
}
export type FieldSpec =
  | (Base<number | null> & {
      type: 'number' | 'int';
      min?: number;
      max?: number;
      exclusiveMin?: boolean;
      nullable?: boolean;
      /** The value of a null default once the model is built (e.g. EATA's E0 = 0.4·ln C). */
      fromModel?: (model: { numClasses: number }) => number;
    })
  | (Base<boolean> & { type: 'bool' })
  | (Base<string | null> & { type: 'string'; nullable?: boolean })
  | (Base<string> & { type: 'enum'; choices: readonly string[] })
  | (Base<string[]> & { type: 'list'; choices: readonly string[] });

type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends (i: infer I) => void ? I : never;
type MethodFields = UnionToIntersection<(typeof ALGORITHMS)[AlgorithmName]['options']>;

/**
 * Every method's option fields (AlgorithmSpec.options), by key in registry order. Methods sharing
 * an option share its field object (src/algorithms/options.ts); two different fields under one
 * key are a programming error.
 */
function methodFields(): MethodFields {
  const out: Record<string, FieldSpec> = {};
  for (const [alg, spec] of Object.entries(ALGORITHMS)) {
    for (const [key, field] of Object.entries(spec.options as Readonly<Record<string, FieldSpec>>)) {
      if (key in out && out[key] !== field) throw new Error(`algorithm ${alg}: option ${key} is declared differently by another method`);
      out[key] = field;
    }
  }
  return out as MethodFields;
}
const METHOD_FIELDS = methodFields();
/** The --adapt-params kinds' option fields (src/adapters/registry.ts). */
const ADAPTER_FIELDS = adapterFields();

/** Field table. Keys are the camelCase config keys; flags are their kebab-case form. */
export const FIELDS = {
  // --- data -----------------------------------------------------------------------------------
  data: { type: 'enum', choices: DATASETS, default: 'cifar10c', group: 'data', description: 'data set layout' },
  dataDir: { type: 'string', nullable: true, default: null, group: 'data', description: 'folder with <corruption>.npy + labels.npy (or containing CIFAR-10-C/); for imagenetc <corruption>/<severity>/<wnid>/*.JPEG (or containing ImageNet-C/)' },
  cleanPath: { type: 'string', nullable: true, default: null, defaultText: '<data-dir>/cifar-10-batches-bin/test_batch.bin, then <data-dir>/../cifar-10-batches-bin/test_batch.bin', group: 'data', description: "CIFAR binary test batch for the 'original' domain" },
  cleanDir: { type: 'string', nullable: true, default: null, group: 'data', description: "imagenetc: ImageNet validation folder <wnid>/*.JPEG for the 'original' domain and EATA's Fisher data (resize 256, centre crop 224)" },
  imageList: { type: 'string', nullable: true, default: null, group: 'data', description: "imagenetc: text file of 'wnid/file' lines to evaluate, in order (e.g. RobustBench's 5,000-image list; not shipped)" },
  skipBadImages: { type: 'bool', default: false, group: 'data', description: 'imagenetc: skip unreadable images with a warning instead of stopping' },
  source: { type: 'string', nullable: true, default: null, group: 'data', description: 'clean data file for --data synthetic-c: IDX images (.gz ok), CIFAR binary batch or .npy' },
  frostDir: { type: 'string', nullable: true, default: null, defaultText: 'procedural frost (non-standard)', group: 'data', description: 'folder with the original frost1..5 photos' },
  corruptions: { type: 'list', choices: ALL_CORRUPTIONS, default: [...CORRUPTIONS_15], group: 'data', description: 'corruptions in stream order (comma-separated)' },
  cleanLast: { type: 'bool', default: true, group: 'data', description: "append the clean test set as the last domain ('original')" },
  severity: { type: 'int', min: 1, max: 5, default: 5, group: 'data', description: 'corruption severity' },
  nExamples: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'all', group: 'data', description: 'images per domain (CIFAR-C: the first k; imagenetc: a seeded class-balanced subset, or the first k of --image-list)' },
  shuffle: { type: 'bool', default: true, group: 'data', description: 'shuffle each domain (seeded by --seed); false streams in file order' },
  seed: { type: 'int', min: 0, default: 2020, group: 'data', description: 'seed for shuffling, pruning and Fisher subsets' },
  batchSize: { type: 'int', min: 1, default: 16, group: 'data', description: 'test batch size' },
  setting: { type: 'enum', choices: SETTING_NAMES, default: 'continual', group: 'data', description: 'stream setting (docs/protocol.md#settings): continual, reset-each-shift (reset at each domain change), gradual (severities 1-5-1 per corruption), correlated (Dirichlet label order), recurring (sequence repeated), mixed (all domains pooled and shuffled), or a -correlated composition' },
  rounds: { type: 'int', min: 1, nullable: true, default: null, defaultText: `${DEFAULT_ROUNDS} (recurring settings only)`, group: 'data', description: 'recurring: times the domain sequence is repeated' },
  dirichletDelta: { type: 'number', min: 0, nullable: true, default: null, defaultText: '0 = sort by label (correlated settings only)', group: 'data', description: 'correlated: Dirichlet concentration of the class order (small = long single-class runs, large = near i.i.d.)' },
  interleaveClean: { type: 'bool', default: false, group: 'data', description: 'forgetting (docs/protocol.md#forgetting): evaluate the clean set before the first step and after every step, without adapting and without touching the model or method state' },
  interleaveSeen: { type: 'bool', default: false, group: 'data', description: 'forgetting: also evaluate every domain visited so far after every step (the rows of the accuracy matrix)' },
  cleanEvalN: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'all', group: 'data', description: 'forgetting: images of each evaluated set, a seeded subset (--seed) drawn once per set' },
  domainOrders: { type: 'string', nullable: true, default: null, defaultText: 'one order', group: 'data', description: "run the corruption sequence under several orders (docs/protocol.md#domain-orders), each a full run from the source model: k = k seeded random orders (seeded by seed), or an order file (one comma-separated order per line, docs/data-formats.md#domain-order-files); results per order and mean ± std" },
  corruptionSet: { type: 'enum', choices: CORRUPTION_SET_NAMES, default: 'custom', group: 'data', description: "MECTA's test_corrupt: std = the 15 corruptions + original, arm = impulse_noise, motion_blur, fog, elastic_transform, org = original only; custom = as the corruptions and clean-last options say" },
  evalMode: { type: 'enum', choices: EVAL_MODES, default: 'continual', group: 'data', description: "MECTA's eval_mode (docs/protocol.md#eval-modes): continual; group (adapt on support-batch − 1 batches of the domain, predict the next, reset); pair (the same with support-batch − cur-batch batches of another domain first, for every pair of domains)" },
  supportBatch: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'required for group and pair', group: 'data', description: "group / pair: batches per test case, the predicted one included (MECTA's support_batch)" },
  mergeBatches: { type: 'bool', default: false, group: 'data', description: "group / pair: concatenate the support batches and the predicted one into one batch, one step (MECTA's merge_batches)" },
  curBatch: { type: 'int', min: 1, nullable: true, default: null, defaultText: '1 (pair only)', group: 'data', description: "pair: batches of the current domain per test case, the predicted one included (less than support-batch; MECTA's cur_batch)" },
  iters: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'all batches', group: 'data', description: "MECTA's iters k: stop every domain (group / pair: every step's predicted batches) after batch index k, i.e. k + 1 batches" },
  // --- model ----------------------------------------------------------------------------------
  model: { type: 'enum', choices: MODEL_NAMES, default: 'resnext29', group: 'model', description: 'architecture (PyTorch state_dict key names)' },
  weights: { type: 'string', nullable: true, default: null, group: 'model', description: 'weights: .safetensors or PyTorch zip .pt state_dict, or a Google ViT .npz (--model vit_b16; docs/data-formats.md#google-vit-npz)' },
  depth: { type: 'int', min: 1, nullable: true, default: null, group: 'model', description: 'expected depth (checked against the weights)' },
  cardinality: { type: 'int', min: 1, nullable: true, default: null, group: 'model', description: 'expected ResNeXt cardinality (checked against the weights)' },
  backend: { type: 'enum', choices: BACKENDS, default: 'auto', group: 'model', description: 'TF.js backend: auto = tfjs-node-gpu > webgpu (hardware adapter) > tfjs-node > wasm > cpu; webgpu by name also takes a software adapter' },
  threads: { type: 'int', min: 0, max: MAX_WASM_THREADS, default: 0, group: 'model', description: 'WASM: XNNPACK threads (0 = one per CPU, 1 = the single-thread build); results are identical for any count' },
  // --- algorithm ------------------------------------------------------------------------------
  alg: { type: 'enum', choices: ALGORITHM_NAMES, default: 'source', group: 'algorithm', description: 'adaptation method' },
  // the methods' own options (AlgorithmSpec.options, merged above), in registry order
  ...METHOD_FIELDS,
  // --- parameter-efficient modules (docs/adapters.md) -----------------------------------------
  adaptParams: { type: 'enum', choices: ADAPT_PARAMS, default: 'norm', group: 'adapters', description: "what the gradient methods train: norm = the methods' own choice (norm-layer affines); lora, kadaptation, adapter, compacter, vida, prompt = only those modules, injected into the model (docs/adapters.md)" },
  ...ADAPTER_FIELDS,
  initAdapters: { type: 'string', nullable: true, default: null, group: 'adapters', description: 'a --save-adapted file: the modules start from its values instead of the seeded init' },
  saveAdapted: { type: 'string', nullable: true, default: null, group: 'adapters', description: 'write the adapted modules to this safetensors file at the end of the run' },
  // --- MECTA ----------------------------------------------------------------------------------
  accumBn: { type: 'bool', default: false, group: 'mecta', description: 'MECTA norm: normalise with statistics accumulated across batches' },
  beta: { type: 'number', min: 0, max: 1, default: 0.1, group: 'mecta', description: 'accumulation rate when the forget gate is off' },
  initBeta: { type: 'number', min: 0, max: 1, nullable: true, default: null, defaultText: 'the --beta value', group: 'mecta', description: 'β of the first batch when the gate is off' },
  forgetGate: { type: 'bool', default: false, group: 'mecta', description: 'β = 1 − exp(−scale·distance(batch, accumulated stats))' },
  bnDistMetric: { type: 'enum', choices: DIST_METRICS, default: 'skl', group: 'mecta', description: 'distance for the forget gate' },
  bnDistScale: { type: 'number', min: 0, default: 1, group: 'mecta', description: 'scale inside the forget gate' },
  betaThre: { type: 'number', min: 0, max: 1, default: 0, group: 'mecta', description: 'layers with β ≤ threshold stop caching (gate only)' },
  pruneQ: { type: 'number', min: 0, max: 1, default: 0, group: 'mecta', description: 'fraction of channels not cached per batch and layer' },
  cacheBudgetMb: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: 'none', group: 'mecta', description: 'backprop-cache budget in MB (1e6 bytes): per batch, choose which layers cache and their kept channels, largest β first (replaces --beta-thre / --prune-q; implies --accum-bn --forget-gate unless set; docs/memory.md#cache-budget)' },
  cacheBudgetMode: { type: 'enum', choices: BUDGET_MODES, default: 'greedy', group: 'mecta', description: "with --cache-budget-mb: 'greedy' = each layer in β order its whole cache first; 'spread' = every layer its 10 % floor first, then top-ups in β order" },
  nLayer: { type: 'int', min: 0, nullable: true, default: null, defaultText: 'all', group: 'mecta', description: "gradient methods: train only the affines of the last N BatchNorm layers (downsample BNs not counted; MECTA's --n_layer)" },
  gradCheckpointSegments: { type: 'int', min: 1, default: 1, group: 'mecta', description: "gradient checkpointing: cut each stage's blocks into S segments (MECTA's --layer_grad_chkpt_segment; S capped at a stage's block count), keep only the inputs of the first S − 1 and recompute them in the backward; 1 = off" },
  gradCheckpointScope: { type: 'enum', choices: CHECKPOINT_SCOPES, default: 'stage', group: 'mecta', description: "with --grad-checkpoint-segments: 'stage' cuts each stage (MECTA's layout), 'model' cuts all blocks as one sequence (for models with few blocks per stage)" },
  matchedUpdate: { type: 'enum', choices: MATCHED_UPDATES, default: 'momentum', group: 'mecta', description: "matched layers' params: 'momentum' (zero grad, PyTorch 1.12) or 'skip' (PyTorch ≥ 2.0)" },
  compareWith: { type: 'enum', choices: ['none', ...ALGORITHM_NAMES], default: 'none', group: 'algorithm', description: 'also run this method on the same stream (fresh model) and print both side by side' },
  // --- output ---------------------------------------------------------------------------------
  out: { type: 'string', nullable: true, default: null, defaultText: 'runs/<timestamp>-<alg>', group: 'output', description: 'run folder' },
  progress: { type: 'enum', choices: PROGRESS_MODES, default: 'auto', group: 'output', description: 'progress display: auto = bars on a TTY, plain lines otherwise' },
} as const satisfies Record<string, FieldSpec>;

export type FieldKey = keyof typeof FIELDS;

type ValueOf<F> = F extends { type: 'bool' }
  ? boolean
  : F extends { type: 'list' }
    ? string[]
    : F extends { type: 'enum'; choices: readonly (infer C)[] }
      ? C
      : F extends { type: 'number' | 'int'; nullable: true }
        ? number | null
        : F extends { type: 'number' | 'int' }
          ? number
          : F extends { type: 'string'; nullable: true }
            ? string | null
            : string;

/** The resolved run configuration (YAML < flags, validated). */
export type CtaConfig = { -readonly [K in FieldKey]: ValueOf<(typeof FIELDS)[K]> };

export function defaultConfig(): CtaConfig {
  const cfg: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(FIELDS)) {
    cfg[k] = Array.isArray(f.default) ? [...f.default] : f.default;
  }
  return cfg as CtaConfig;
}

/**
 * The default as --help and the README flag table show it: `defaultText`, else the value (a list
 * comma-separated, null as 'none').
 */
export function defaultText(key: FieldKey): string {
  const f: FieldSpec = FIELDS[key];
  if (f.defaultText !== undefined) return f.defaultText;
  if (f.default === null) return 'none';
  return Array.isArray(f.default) ? f.default.join(', ') : String(f.default);
}

export function toKebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

export function toCamel(key: string): string {
  return key.replace(/[-_]([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
