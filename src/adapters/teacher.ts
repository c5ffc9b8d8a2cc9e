/**
 * Module sets under a mean-teacher method (CoTTA's EMA teacher, src/algorithms/cotta.ts): the
 * teacher is a model copy carrying its own copy of the set (Classifier.clone). A set's per-batch
 * state that is not a parameter (ViDA's λ_low, λ_high) is decided from the TEACHER's predictions
 * and set on both models, before the teacher's and the student's forwards of the batch — the
 * official ViDA forward_and_adapt (cifar/vida.py, imagenet/vida.py): 10 augmented predictions of
 * model_ema, then set_scale on the student and on model_ema, then model_ema(x) and model(x).
 * docs/adapters.md#vida.
 */
import type { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import { isAdapterHost, type AdapterSet } from '../models/injection.js';

function setOf(model: Classifier): AdapterSet | null {
  return isAdapterHost(model) ? model.adapters : null;
}

/**
 * `beforeStep` of the student's set for batch `x`, decided by `teacher` when given (its own set,
 * its own forward; the student's set then copies the decision) or else by the student itself.
 * Returns whether the set has such a step (false: nothing to prepare).
 */
export function prepareModules(x: tf.Tensor4D, student: Classifier, teacher?: Classifier): boolean {
  const own = setOf(student);
  if (!own?.beforeStep) return false;
  if (!teacher || teacher === student) {
    own.beforeStep(x, (v) => student.forward(v));
    return true;
  }
  const lead = setOf(teacher);
  if (!lead?.beforeStep || lead.kind !== own.kind || !own.copyStepState) {
    throw new Error(`prepareModules: the teacher carries no '${own.kind}' module set to decide the step state`);
  }
  lead.beforeStep(x, (v) => teacher.forward(v));
  own.copyStepState(lead);
  return true;
}

/**
 * The teacher's set takes the student's per-batch state (after a reset or a resume has changed
 * the student's, so that the two agree again as after every prepared step).
 */
export function mirrorStepState(teacher: Classifier, student: Classifier): void {
  const own = setOf(student);
  const copy = setOf(teacher);
  if (own && copy && copy !== own) copy.copyStepState?.(own);
}
