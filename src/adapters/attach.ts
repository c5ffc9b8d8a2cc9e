/**
 * The runner's side of --adapt-params (docs/adapters.md#runs): builds the chosen kind's module set
 * on the model's injection point, optionally loads --init-adapters, and counts / saves it
 * (--save-adapted). The set's state lives outside the PyTorch state_dict; checkpoints save it as
 * `adapters.<name>` (src/runner/checkpoint.ts).
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { readWeightBytes, parseSafetensorsWithMetadata, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import type { Classifier } from '../models/types.js';
import { isAdapterHost, type AdapterSet } from '../models/injection.js';
import { ADAPTERS, type AdapterKind } from './registry.js';
import type { AdapterConfig, AdapterContext, ModelFamily } from './types.js';

/** Which family a model with an injection point is: linear sites → the ViT, 1×1 convs → a CNN. */
export function modelFamily(model: Classifier): ModelFamily | null {
  if (!isAdapterHost(model)) return null;
  const sites = model.adapterSites();
  if (sites.some((s) => s.kind === 'linear')) return 'vit';
  if (sites.some((s) => s.kind === 'conv1x1')) return 'cnn';
  return null;
}

/**
 * Builds `kind` on `model` and attaches it (the model owns it from then on). `init` fixes initial
 * values by name (parity tests); `augment` is the test-time augmentation ViDA's scale update uses.
 */
export function attachAdapters(model: Classifier, kind: string, cfg: AdapterConfig, ctx: Partial<AdapterContext> & { seed?: number } = {}): AdapterSet | null {
  if (kind === 'norm') return null;
  const spec = (ADAPTERS as Record<string, (typeof ADAPTERS)[AdapterKind]>)[kind];
  if (!spec) throw new CtaError(`--adapt-params: unknown kind '${kind}' (expected one of norm, ${Object.keys(ADAPTERS).join(', ')})`);
  const family = modelFamily(model);
  if (!family || !isAdapterHost(model)) throw new CtaError(`--adapt-params ${kind}: --model ${model.arch} has no injection point for parameter-efficient modules`);
  if (!(spec.models as readonly string[]).includes(family)) {
    throw new CtaError(`--adapt-params ${kind} applies to ${spec.models.map((m) => (m === 'vit' ? 'the ViT' : 'the CNNs')).join(' and ')}, not --model ${model.arch}`);
  }
  const set = spec.create(model, cfg, { rng: ctx.rng ?? new Rng(ctx.seed ?? 0), init: ctx.init, augment: ctx.augment });
  model.setAdapters(set);
  return set;
}

/** The parameters that train (PyTorch numel), for summary.json and the printed table. */
export function trainableCount(model: Classifier): number {
  return model.parameters().reduce((a, p) => (p.requiresGrad ? a + p.shape.reduce((x, d) => x * d, 1) : a), 0);
}

/** --init-adapters FILE: a safetensors file of `saveState()` names (what --save-adapted writes). */
export async function loadAdapterFile(model: Classifier, path: string): Promise<void> {
  const set = isAdapterHost(model) ? model.adapters : null;
  if (!set) throw new CtaError(`--init-adapters ${path}: needs --adapt-params with a module kind (lora, adapter, ...)`);
  const { tensors, metadata } = parseSafetensorsWithMetadata(await readWeightBytes(path), path);
  if (metadata.adapt_params !== undefined && metadata.adapt_params !== set.kind) {
    throw new CtaError(`--init-adapters ${path}: holds '${metadata.adapt_params}' modules, but the run uses --adapt-params ${set.kind}`);
  }
  const state = new Map<string, tf.Tensor>();
  for (const [k, t] of tensors) state.set(k, tf.tensor(t.data instanceof Float32Array ? t.data : Float32Array.from(t.data), t.shape, 'float32'));
  try {
    set.loadState(state);
  } catch (e) {
    if (e instanceof CtaError) throw new CtaError(`--init-adapters ${path}: ${e.message}`);
    throw e;
  } finally {
    tf.dispose([...state.values()]);
  }
}

/** --save-adapted FILE: the module set's state as float32 safetensors (kind in the metadata). */
export async function saveAdapterFile(model: Classifier, path: string): Promise<void> {
  const set = isAdapterHost(model) ? model.adapters : null;
  if (!set) throw new CtaError(`--save-adapted ${path}: needs --adapt-params with a module kind (lora, adapter, ...)`);
  const state = set.saveState();
  try {
    const out = new Map<string, TensorToWrite>();
    for (const [k, t] of state) out.set(k, { dtype: 'float32', shape: t.shape, data: await t.data() });
    await writeSafetensors(path, out, { adapt_params: set.kind, format: 'cta-eval adapters' });
  } finally {
    tf.dispose([...state.values()]);
  }
}

/**
 * The run's module set (--adapt-params, --init-adapters; docs/adapters.md#runs), attached before
 * the method configures so that it trains and snapshots the set. Seeded from --seed.
 */
export async function prepareAdapters(
  cfg: AdapterConfig & { adaptParams: string; initAdapters: string | null; saveAdapted: string | null; seed: number },
  model: Classifier,
  augment?: (x: tf.Tensor4D) => tf.Tensor4D,
): Promise<AdapterSet | null> {
  if (cfg.adaptParams === 'norm') {
    for (const [flag, v] of [['--init-adapters', cfg.initAdapters], ['--save-adapted', cfg.saveAdapted]] as const) {
      if (v) throw new CtaError(`${flag} ${v}: needs --adapt-params with a module kind (lora, kadaptation, adapter, compacter, vida, prompt); it is 'norm'`);
    }
    return null;
  }
  const set = attachAdapters(model, cfg.adaptParams, cfg, { seed: cfg.seed + 11, augment });
  if (cfg.initAdapters) await loadAdapterFile(model, cfg.initAdapters);
  return set;
}
