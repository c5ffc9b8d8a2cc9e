/**
 * EATA and ETA (docs/methods.md#eata; Niu et al., ICML 2022, Eqns. 3–5, 8, 9): entropy
 * minimisation on reliable (H < E0) and non-redundant (|cos(m, p)| < ε_d against the
 * moving-average prediction m) samples, each weighted by exp(E0 − H) without gradient; EATA adds
 * the Fisher regulariser α_F·Σ F·(θ − θ*)². No step when
 * no sample is selected (docs/methods.md#loss-and-update) or, with MECTA, when no layer caches
 * (docs/mecta-norm.md#cache-stopping).
 */
import { tf } from '../tf.js';
import type { AdaptOptions, Algorithm, AlgorithmSpec, StepResult } from './types.js';
import { GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import { estimateFisher, type FisherInfo } from './fisher.js';
import { tensorBytes } from './state-bytes.js';
import { softmaxEntropy } from './losses.js';
import { CtaError } from '../util/errors.js';

/** EMA rate of the moving-average probability vector (the reference's update_model_probs). */
const PROBS_MOMENTUM = 0.9;

/** ETA's options: the sample selection (Eqns. 3 and 8, docs/methods.md#reliable-samples). */
const ETA_OPTIONS = {
  ...GRADIENT_OPTIONS,
  // E0 = 0.4·ln C (docs/methods.md#reliable-samples) needs the class count, from the weights.
  eMargin: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: '0.4·ln(classes)', fromModel: (m) => 0.4 * Math.log(m.numClasses), group: 'algorithm', description: 'EATA entropy threshold E0' },
  dMargin: { type: 'number', min: 0, default: 0.4, group: 'algorithm', description: 'EATA redundancy threshold on cosine similarity (CIFAR-10 0.4; CIFAR-100/ImageNet 0.05)' },
} as const satisfies Record<string, FieldSpec>;

/** EATA adds the Fisher regulariser (Eqn. 9, docs/methods.md#fisher-estimation). */
const EATA_OPTIONS = {
  ...ETA_OPTIONS,
  fisherAlpha: { type: 'number', min: 0, default: 1, group: 'algorithm', description: 'EATA Fisher regulariser weight (CIFAR-10 1; CIFAR-100/ImageNet 2000)' },
  fisherSize: { type: 'int', min: 1, default: 2000, group: 'algorithm', description: 'clean samples for the Fisher estimate' },
} as const satisfies Record<string, FieldSpec>;

/** The values of those fields. */
export interface EataOptions {
  eMargin: number; // entropy threshold E0 (absolute: a null default is resolved by the runner)
  dMargin: number; // cosine redundancy threshold ε_d
  fisherAlpha: number; // EATA only
  fisherSize: number; // EATA only (the runner draws the Fisher data: AlgorithmContext.fisherData)
}

/** Per batch; summed per domain as `reliable` and `updated` (summary.json). */
const METRICS = {
  reliable: { summary: 'reliable', description: 'samples with entropy below E0 (Eqn. 3)' },
  used: { summary: 'updated', description: 'reliable and non-redundant samples in the loss (Eqn. 8)' },
};

function makeEata<O extends Record<string, FieldSpec>>(name: 'eata' | 'eta', withFisher: boolean, options: O) {
  return {
    description: withFisher
      ? 'EATA: sample-efficient entropy minimisation (reliable, non-redundant samples) + Fisher anti-forgetting'
      : 'ETA: EATA without the Fisher regulariser',
    usesGradients: true,
    norm: 'adaptive', // test-batch statistics (docs/methods.md#configuration)
    options,
    metrics: METRICS,
    async create(model, opts: AdaptOptions & EataOptions, ctx) {
      const adapter = new GradientAdapter(model, opts, name);
      let fisher: FisherInfo | null = null;
      if (withFisher) {
        if (!ctx.fisherData) throw new CtaError('eata needs clean data for its Fisher estimate (fisherData)', 1);
        try {
          fisher = await estimateFisher(model, adapter.params, ctx.fisherData());
        } catch (err) {
          adapter.dispose();
          throw err;
        }
        // PyTorch 1.12: the Fisher pass leaves zero-filled .grad tensors on every parameter.
        adapter.markAllHadGrad();
        // The reference copies the model for reset() after the Fisher pass (whose MECTA
        // train-update mode moved the running buffers, docs/methods.md#fisher-estimation).
        adapter.snapshot();
      }
      // E0 as float32: PyTorch compares the float32 entropies against the scalar in float32.
      const e0 = Math.fround(opts.eMargin);
      let probs: tf.Tensor1D | null = null; // moving average m (absent until the first selection)

      const setProbs = (next: tf.Tensor1D | null) => {
        if (probs && probs !== next) probs.dispose();
        probs = next;
      };

      const fisherTerm = (): tf.Scalar | null => {
        if (!fisher || opts.fisherAlpha === 0) return null;
        const f = fisher;
        const terms = adapter.params.map((p, i) =>
          tf.sum(tf.mul(f.fisher[i], tf.square(tf.sub(p, f.thetaStar[i])))),
        );
        return tf.mul(addMany(terms), opts.fisherAlpha) as tf.Scalar;
      };

      const alg: Algorithm = {
        name,
        step(x): StepResult {
          if (opts.episodic) adapter.restore(); // model + optimizer only, as the reference's reset()
          const counts = { reliable: 0, used: 0 };
          const res = adapter.step(x, (z) => {
            const ent = softmaxEntropy(z);
            const h = ent.dataSync();
            const reliable: number[] = [];
            for (let i = 0; i < h.length; i++) if (h[i] < e0) reliable.push(i);
            counts.reliable = reliable.length;
            if (reliable.length === 0) return null; // m unchanged, nothing selected
            const relProbs = tf.softmax(tf.gather(z, reliable));
            let selected = reliable;
            let selLocal: number[] | null = null; // indices into `reliable`
            if (probs) {
              const cos = cosineToRows(probs, relProbs).dataSync();
              selLocal = [];
              for (let j = 0; j < reliable.length; j++) if (Math.abs(cos[j]) < opts.dMargin) selLocal.push(j);
              selected = selLocal.map((j) => reliable[j]);
            }
            counts.used = selected.length;
            if (selected.length > 0) {
              const p = selLocal ? tf.gather(relProbs, selLocal) : relProbs;
              const mean = tf.mean(p, 0) as tf.Tensor1D;
              const next = probs
                ? (tf.add(tf.mul(probs, PROBS_MOMENTUM), tf.mul(mean, 1 - PROBS_MOMENTUM)) as tf.Tensor1D)
                : mean;
              setProbs(tf.keep(next));
            }
            // No step: the loss would be NaN (docs/methods.md#loss-and-update).
            if (selected.length === 0) return null;
            // Coefficient exp(E0 − H) = 1 / exp(H − E0), built from the values so it carries no
            // gradient, and zero for unselected samples: Σ c·H / |selected| is the mean over the
            // selected samples (a mask rather than tf.gather, whose gradient kernel
            // UnsortedSegmentSum the WASM backend lacks).
            const w = new Float32Array(h.length);
            for (const i of selected) w[i] = 1 / Math.exp(h[i] - e0);
            const coeff = tf.tensor1d(w, 'float32');
            let loss = tf.div(tf.sum(tf.mul(ent, coeff)), selected.length) as tf.Scalar;
            const reg = fisherTerm();
            if (reg) loss = tf.add(loss, reg) as tf.Scalar;
            return loss;
          });
          return { ...res, metrics: { reliable: counts.reliable, used: counts.used } };
        },
        reset() {
          adapter.resetAll();
          setProbs(null); // the reference's reset_all also clears the moving average
        },
        saveState() {
          const out = new Map<string, tf.Tensor>();
          adapter.saveState(out);
          if (probs) out.set(`${name}.probs`, probs.clone());
          if (fisher) {
            adapter.keys.forEach((k, i) => {
              out.set(`${name}.fisher.${k}`, fisher!.fisher[i].clone());
              out.set(`${name}.theta_star.${k}`, fisher!.thetaStar[i].clone());
            });
          }
          return out;
        },
        loadState(state) {
          adapter.loadState(state);
          const m = state.get(`${name}.probs`);
          setProbs(m ? tf.keep(m.clone() as tf.Tensor1D) : null);
          if (fisher) {
            const f = fisher;
            adapter.keys.forEach((k, i) => {
              const fi = state.get(`${name}.fisher.${k}`);
              const ti = state.get(`${name}.theta_star.${k}`);
              if (!fi || !ti) return; // keep the freshly estimated values
              const want = adapter.params[i].shape.join('x');
              if (fi.shape.join('x') !== want || ti.shape.join('x') !== want) {
                throw new CtaError(`algorithm state: ${name} Fisher entry for ${k} has the wrong shape`);
              }
              f.fisher[i].dispose();
              f.thetaStar[i].dispose();
              f.fisher[i] = tf.keep(fi.clone());
              f.thetaStar[i] = tf.keep(ti.clone());
            });
          }
        },
        stateBytes() {
          // θ* (the parameters the Fisher term pulls towards) is the anchor; the Fisher
          // diagonal and the moving average of the predictions are 'other' (Eqns. 5, 9).
          return {
            ...adapter.stateBytes(),
            ...(fisher ? { anchor: tensorBytes(fisher.thetaStar) } : {}),
            other: (fisher ? tensorBytes(fisher.fisher) : 0) + tensorBytes([probs]),
          };
        },
        dispose() {
          adapter.dispose();
          setProbs(null);
          if (fisher) for (const t of [...fisher.fisher, ...fisher.thetaStar]) t.dispose();
          fisher = null;
        },
      };
      return alg;
    },
  } satisfies AlgorithmSpec;
}

/**
 * Cosine similarity between vector m [C] and each row of p [R, C] (torch F.cosine_similarity with
 * eps 1e-8 on the norm product; the inputs are probabilities, so the eps never binds).
 */
function cosineToRows(m: tf.Tensor1D, p: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const dot = tf.sum(tf.mul(p, m), 1);
    const norms = tf.mul(tf.norm(p, 'euclidean', 1), tf.norm(m));
    return tf.div(dot, tf.maximum(norms, 1e-8)) as tf.Tensor1D;
  });
}

/**
 * tf.addN. tfjs-webgpu binds every input of one addN as a storage buffer, and a device allows
 * few per shader (16 on OpenGL ES): there the terms are summed in groups of 8 first.
 */
function addMany(terms: tf.Tensor[]): tf.Tensor {
  let t = terms;
  if (tf.getBackend() === 'webgpu') {
    while (t.length > 8) {
      const next: tf.Tensor[] = [];
      for (let i = 0; i < t.length; i += 8) next.push(i + 1 === t.length ? t[i] : tf.addN(t.slice(i, i + 8)));
      t = next;
    }
  }
  return tf.addN(t);
}

export const eata = makeEata('eata', true, EATA_OPTIONS);
export const eta = makeEata('eta', false, ETA_OPTIONS);
