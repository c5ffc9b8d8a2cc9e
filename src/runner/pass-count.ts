/**
 * Forward and backward passes per batch, counted by the runner for every method alike
 * (docs/protocol.md#passes). EATA (Niu et al., ICML 2022, Table 1) and SAR compare methods by
 * #forwards / #backwards over a stream, which matters once a method runs several forwards per step
 * (CoTTA's teacher, anchor and augmentations, SAR's second SAM pass, MEMO's augmented copies).
 *
 * - forwards: images through any forward of the run's model or of a copy the method made of it
 *   (ctx.cloneModel), counted where `Classifier.forward` / `forwardFeatures` is called, and the
 *   passes a model runs inside its own forward (`Classifier.innerPassObserver`: L2P's query);
 * - backwards: images through the forwards that a gradient computation differentiates (a forward
 *   run inside the function given to tf.grads / tf.variableGrads), and backward_calls the number of
 *   such computations. A method that masks its loss (EATA's reliable samples) still differentiates
 *   the whole batch's forward, so its own `used` counter is the paper's count of samples that move
 *   the weights; a recomputation inside a backward (gradient checkpointing) is not a new backward.
 */
import { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';

export interface PassCounts {
  forwards: number;
  backwards: number;
  forward_calls: number;
  backward_calls: number;
}

type GradientsFn = (...args: unknown[]) => unknown;

export class PassCounter {
  private counts: PassCounts = zero();
  /** Depth of nested gradient computations (0: not differentiating). */
  private depth = 0;
  private original: GradientsFn | null = null;

  /**
   * Counts `model`'s forwards from now on: `forward` and `forwardFeatures` (LAME's), each an own
   * property wrapping the class's; a call from one into the other is one forward.
   */
  watch<M extends Classifier>(model: M): M {
    let inside = 0;
    const count = <T>(x: tf.Tensor4D, run: () => T): T => {
      if (inside === 0) {
        const n = x.shape[0];
        this.counts.forwards += n;
        this.counts.forward_calls++;
        if (this.depth > 0) this.counts.backwards += n;
      }
      inside++;
      try {
        return run();
      } finally {
        inside--;
      }
    };
    // A forward the model runs inside its own (L2P's query through the prompt-free model) is a
    // pass of its own; its gradient is stopped (src/adapters/prompt.ts), so it is no backward.
    model.innerPassObserver = (n) => {
      this.counts.forwards += n;
      this.counts.forward_calls++;
    };
    const forward = model.forward.bind(model);
    model.forward = (x) => count(x, () => forward(x));
    if (typeof model.forwardFeatures === 'function') {
      const features = model.forwardFeatures.bind(model);
      model.forwardFeatures = (x) => count(x, () => features(x));
    }
    return model;
  }

  /** Starts counting gradient computations (the engine's `gradients`, behind tf.grads & co.). */
  install(): void {
    if (this.original) return;
    const engine = tf.engine() as unknown as { gradients: GradientsFn };
    const original = engine.gradients;
    this.original = original;
    engine.gradients = (...args: unknown[]) => {
      if (this.depth === 0) this.counts.backward_calls++;
      this.depth++;
      try {
        return original.apply(engine, args);
      } finally {
        this.depth--;
      }
    };
  }

  /** Restores the engine's own `gradients` (the watched models keep counting into this counter). */
  uninstall(): void {
    if (!this.original) return;
    const engine = tf.engine() as unknown as { gradients: GradientsFn };
    // Remove the own property so the prototype's method shows through again.
    delete (engine as Partial<typeof engine>).gradients;
    if (engine.gradients !== this.original) engine.gradients = this.original;
    this.original = null;
  }

  /** The counts since the last take(), then zero. */
  take(): PassCounts {
    const out = this.counts;
    this.counts = zero();
    return out;
  }
}

/**
 * The process's counter: the engine is one per process, so is the count of its gradient
 * computations. The runner takes the counts per batch.
 */
export const PASSES = new PassCounter();

function zero(): PassCounts {
  return { forwards: 0, backwards: 0, forward_calls: 0, backward_calls: 0 };
}
