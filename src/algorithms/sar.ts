/**
 * SAR (Niu et al., ICLR 2023, "Towards Stable Test-Time Adaptation in Dynamic Wild World"):
 * sharpness-aware and reliable entropy minimisation on the norm-layer affine parameters.
 *
 * Per batch (the official sar.py / sam.py, github:mr-eggplant/SAR):
 * 1. forward at θ, predict from it; reliable samples S1 = {H < E0} (Eq. 2, E0 = 0.4·ln C);
 *    g = ∇ mean_{S1} H;
 * 2. SAM (Eq. 4, ρ = 0.05): ε̂ = ρ·g / (‖g‖₂ + 1e-12), the norm taken over all adapted parameters;
 * 3. forward at θ + ε̂; S2 = {i ∈ S1 : H'_i < E0}; g' = ∇ mean_{S2} H';
 * 4. back to θ, one base-optimizer step (SGD, momentum 0.9) with g';
 * 5. model recovery: EMA (momentum 0.9) of mean_{S2} H' (updated only when S2 is non-empty);
 *    when it is below 0.2 the model and optimizer go back to their configure-time state.
 *
 * Kept from the official code: an empty S1 or S2 back-propagates a zero gradient (PyTorch's mean
 * over an empty selection), so the step still runs and momentum moves θ; the EMA survives a reset
 * (SAR.forward re-assigns self.ema after reset(); mariodoebler's port clears it instead).
 * Adapted layers: every norm layer except the top of the network, by module name as the official
 * collect_params does (ResNet `layer4`, ViT blocks 9–11 and the final `norm`); the CIFAR models'
 * names (stage_*, block*) match none, so all their norm layers adapt. The selection is made here by
 * name prefix, because the model API has no named parameter groups yet.
 *
 * With the MECTA norm layer both forwards run through it (as SAR on a MectaNorm2d network would),
 * so a batch enters the accumulated statistics twice; a batch whose first forward caches in no
 * layer takes no step (docs/mecta-norm.md#cache-stopping), and matched layers neither take part in
 * ‖g‖ nor are perturbed.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import { disposeGrads, GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import { softmaxEntropy } from './losses.js';
import type { Classifier } from '../models/types.js';

/** SAR's options (the official main.py flags --sar_margin_e0, SAM's rho, the e_m of Sec. 4). */
const SAR_OPTIONS = {
  ...GRADIENT_OPTIONS,
  // null = 0.4·ln C, resolved from the model's class count in create()
  sarMarginE0: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: '0.4·ln(classes)', group: 'algorithm', description: 'SAR reliable-entropy threshold E0 (Eqn. 2)' },
  samRho: { type: 'number', min: 0, default: 0.05, group: 'algorithm', description: 'SAR: SAM neighbourhood radius ρ (Eqn. 4)' },
  sarResetEma: { type: 'number', min: 0, default: 0.2, group: 'algorithm', description: 'SAR: reset model and optimizer when the EMA of the second-pass loss is below this' },
} as const satisfies Record<string, FieldSpec>;

/** The SAR option values (unset = the field defaults above, so tests may pass AdaptOptions alone). */
interface SarValues {
  sarMarginE0?: number | null;
  samRho?: number;
  sarResetEma?: number;
}

/** Per batch; summed per domain (summary.json). */
const METRICS = {
  reliable: { summary: 'reliable', description: 'samples with entropy below E0 on the first forward (Eqn. 2)' },
  used: { summary: 'updated', description: 'of those, samples still below E0 at the SAM-perturbed weights (the second loss)' },
  resets: { summary: 'resets', description: 'model recoveries (EMA of the second loss below sar-reset-ema)' },
};

const EMA_MOMENTUM = 0.9;

/** The official collect_params' name filter: whether norm layer `name` adapts. */
export function sarAdapts(name: string): boolean {
  if (['layer4', 'blocks.9', 'blocks.10', 'blocks.11', 'norm.'].some((p) => name.includes(p))) return false;
  return name !== 'norm';
}

/** Marks the SAR-adapted norm layers trainable and the others frozen. */
export function configureSarParams(model: Classifier): void {
  model.setTrainable(true);
  model.setTrainable(false, (l) => !sarAdapts(l.name));
}

/** Σ H·mask / n — the mean over the selected samples, or 0·Σ H (zero gradient) when none is. */
function selectedMean(ent: tf.Tensor1D, selected: number[]): tf.Scalar {
  if (selected.length === 0) return tf.mul(tf.sum(ent), 0) as tf.Scalar;
  const mask = new Float32Array(ent.shape[0]);
  for (const i of selected) mask[i] = 1;
  return tf.div(tf.sum(tf.mul(ent, tf.tensor1d(mask))), selected.length) as tf.Scalar;
}

export const sar = {
  description: 'SAR: sharpness-aware (SAM) reliable entropy minimisation with EMA-triggered model reset',
  usesGradients: true,
  norm: 'adaptive', // test-batch statistics (sar.configure_model), or MECTA's accumulated ones
  options: SAR_OPTIONS,
  metrics: METRICS,
  async create(model, opts) {
    const o = opts as typeof opts & SarValues;
    configureSarParams(model);
    const adapter = new GradientAdapter(model, opts, 'sar');
    // E0 as float32: PyTorch compares the float32 entropies against the scalar in float32.
    const e0 = Math.fround(o.sarMarginE0 ?? 0.4 * Math.log(model.numClasses));
    const rho = o.samRho ?? SAR_OPTIONS.samRho.default;
    const resetBelow = o.sarResetEma ?? SAR_OPTIONS.sarResetEma.default;
    let ema: number | null = null;

    const perturb = (g: (tf.Tensor | null)[], matched: boolean[]): tf.Tensor[] => {
      // a matched MECTA layer's parameters get no gradient: they neither count in ‖g‖ nor move
      const used = (i: number) => g[i] !== null && !(adapter.layerOf[i] >= 0 && matched[adapter.layerOf[i]]);
      const old = adapter.params.map((p) => tf.keep(p.clone()));
      tf.tidy(() => {
        const norms = adapter.params.map((p, i) => (used(i) ? tf.norm(g[i]!) : tf.zeros([])));
        const scale = tf.div(rho, tf.add(tf.norm(tf.stack(norms)), 1e-12));
        adapter.params.forEach((p, i) => {
          if (used(i)) p.assign(tf.add(p, tf.mul(g[i]!, scale)));
        });
      });
      return old;
    };

    const alg: Algorithm = {
      name: 'sar',
      step(x): StepResult {
        if (opts.episodic) {
          adapter.restore();
          ema = null;
        }
        let s1: number[] = [];
        const first = adapter.grads(x, (z) => {
          const ent = softmaxEntropy(z);
          const h = ent.dataSync();
          s1 = [];
          for (let i = 0; i < h.length; i++) if (h[i] < e0) s1.push(i);
          return selectedMean(ent, s1);
        });
        if (!first.grads) return { logits: first.logits, updated: false, metrics: { reliable: s1.length, used: 0, resets: 0 } };
        // filled inside the taped closure (a holder, because TS does not track closure writes)
        const pass2: { s2: number[]; loss: number | null } = { s2: [], loss: null };
        let second: ReturnType<GradientAdapter['grads']> | null = null;
        let old: tf.Tensor[] = [];
        try {
          old = perturb(first.grads, first.matched);
          second = adapter.grads(x, (z) => {
            const ent = softmaxEntropy(z);
            const h = ent.dataSync();
            const s2 = s1.filter((i) => h[i] < e0);
            pass2.s2 = s2;
            if (s2.length > 0) pass2.loss = s2.reduce((a, i) => a + h[i], 0) / s2.length;
            return selectedMean(ent, s2);
          });
          second.logits.dispose();
          adapter.params.forEach((p, i) => p.assign(old[i]));
          adapter.apply(second);
        } catch (err) {
          first.logits.dispose();
          throw err;
        } finally {
          tf.dispose(old);
          disposeGrads(first.grads);
          if (second) disposeGrads(second.grads);
        }
        const loss2 = pass2.loss;
        if (loss2 !== null) ema = ema === null ? loss2 : EMA_MOMENTUM * ema + (1 - EMA_MOMENTUM) * loss2;
        const reset = ema !== null && ema < resetBelow;
        if (reset) adapter.restore(); // the EMA is kept, as in the official code
        const updated = second.grads !== null;
        return { logits: first.logits, updated, metrics: { reliable: s1.length, used: pass2.s2.length, resets: reset ? 1 : 0 } };
      },
      reset() {
        adapter.resetAll();
        ema = null;
      },
      saveState() {
        const out = new Map<string, tf.Tensor>();
        adapter.saveState(out);
        if (ema !== null) out.set('sar.ema', tf.tensor1d([ema], 'float32'));
        return out;
      },
      loadState(state) {
        adapter.loadState(state);
        const e = state.get('sar.ema');
        ema = e ? e.dataSync()[0] : null;
      },
      stateBytes() {
        const own = adapter.stateBytes();
        // SAM holds a perturbation of every adapted parameter between its two passes (the
        // official SAM keeps the equivalent old_p in its state): counted with the optimizer.
        const sam = adapter.params.reduce((a, p) => a + p.size * 4, 0);
        return { ...own, optimizer: own.optimizer + sam };
      },
      dispose() {
        adapter.dispose();
      },
    };
    return alg;
  },
} satisfies AlgorithmSpec;
