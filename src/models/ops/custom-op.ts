/**
 * Custom-op plumbing shared by every hand-written layer: a typed `tf.customGrad` whose gradient
 * runs in its own tidy and frees what the rest of the backward no longer needs (memory-economic
 * backward, docs/porting.md#tape-memory).
 */
import { tf } from '../../tf.js';

/** What a custom op's forward returns: its value and the gradient w.r.t. each input. */
export interface CustomOpResult<T extends tf.Tensor> {
  value: T;
  gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor[];
}

/**
 * Typed wrapper around `tf.customGrad`: `f` receives its tensor inputs as an array plus the save
 * function. As with `tf.customGrad`, the forward runs inside a tidy with the tape paused, and
 * `save` keeps tensors only while a gradient tape is recording (otherwise it is a no-op), so a
 * forward outside `tf.grads` retains nothing.
 *
 * The gradient function is wrapped in its own tidy: tfjs calls a custom op's gradient eagerly and
 * outside any per-node scope, so without it every temporary of every layer's backward would stay
 * alive until the whole backward pass ends. After it, {@link releaseConsumed} frees what the rest
 * of the backward can no longer need (memory-economic backward).
 */
export function customOp<T extends tf.Tensor>(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => CustomOpResult<T>,
): (...inputs: tf.Tensor[]) => T {
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const inputs = args.slice(0, -1) as tf.Tensor[];
    const res = f(inputs, save);
    const inputIds = inputs.map((t) => t.id);
    const outId = res.value.id; // customGrad records this very tensor as the node's output
    return {
      value: res.value,
      gradFunc: (dy: T, saved: tf.Tensor[]) => {
        const grads = tf.tidy(() => res.gradFunc(dy, saved));
        releaseConsumed(outId, inputIds, dy, saved, grads);
        return grads;
      },
    };
  });
  return op as (...inputs: tf.Tensor[]) => T;
}

/**
 * Input gradients returned by custom ops during the current backward, by input tensor id. Keyed
 * by the engine's 'backward' scope object, so the bookkeeping of one backward cannot outlive it.
 */
const returnedGrads = new WeakMap<object, Map<number, tf.Tensor[]>>();

/**
 * Memory-economic backward. tfjs-core's `backpropagateGradients` keeps every tensor's accumulated
 * gradient, every summand folded into a sum after the first, and every node's saved tensors alive
 * until the whole backward ends (docs/porting.md#tape-memory): about one extra copy of all
 * activations. Once a custom op's gradient has run, three things are dead and are freed here:
 * - its saved tensors (the engine disposes them again at the end: a no-op);
 * - dy, the gradient of its output: the tape reads it only when it calls this node (the node that
 *   produced a tensor runs after all of that tensor's consumers);
 * - the gradients custom ops returned earlier for this op's output: the tape has already summed
 *   them into dy, but disposes only the first summand.
 * Only inside an engine backward (`tf.grads`, `tf.variableGrads`, `engine().gradients`), and dy
 * only when the backward created it: a caller's own dy for the final output is never touched.
 * Gradients returned for tensors no op produced (the variables, the inputs) are never freed here.
 */
function releaseConsumed(outId: number, inputIds: number[], dy: tf.Tensor, saved: tf.Tensor[], grads: tf.Tensor[]): void {
  const scope = tf.engine().state.activeScope;
  if (!scope || scope.name !== 'backward') return;
  for (const t of saved) t.dispose();
  let pending = returnedGrads.get(scope);
  if (!pending) returnedGrads.set(scope, (pending = new Map()));
  const summands = pending.get(outId);
  pending.delete(outId);
  if (summands) for (const t of summands) if (!grads.includes(t)) t.dispose();
  if (dy.scopeId === scope.id && !dy.kept && !grads.includes(dy)) dy.dispose();
  inputIds.forEach((id, i) => {
    const list = pending.get(id);
    if (list) list.push(grads[i]);
    else pending.set(id, [grads[i]]);
  });
}
