/**
 * The Algorithm of a method whose whole state is a GradientAdapter's (model snapshot, optimizer,
 * PyTorch `.grad` flags): everything but `step` is the adapter's (the reference's reset_all,
 * state_dict and load_state_dict).
 */
import type { tf } from '../tf.js';
import type { GradientAdapter } from './gradient-adapter.js';
import type { Algorithm, StepResult } from './types.js';

export function adapterMethod(name: string, adapter: GradientAdapter, step: (x: tf.Tensor4D) => StepResult): Algorithm {
  return {
    name,
    step,
    reset: () => adapter.resetAll(),
    saveState() {
      const out = new Map<string, tf.Tensor>();
      adapter.saveState(out);
      return out;
    },
    loadState: (state) => adapter.loadState(state),
    stateBytes: () => adapter.stateBytes(),
    dispose: () => adapter.dispose(),
  };
}
