/**
 * The PyTorch parity suite (parity.test.ts) on the webgpu backend, in its own worker process:
 * the forward, Tent and EATA fixture cases, and EATA+MECTA steps checked for leaks. Off a GPU this
 * is Dawn's OpenGL ES backend on Mesa's software rasteriser, so the case list is short (each step
 * costs seconds there); PARITY_CASES='all' runs every case (scripts/device/gpu-check.sh does). Skipped, saying why, only where no
 * WebGPU adapter (or the optional `webgpu` package) exists; a backend that has an adapter and
 * fails is a failure.
 */
import { describe, it } from 'vitest';
import { tf } from '../tf.js';
import { startWebGpu } from '../webgpu.js';

const gpu = await startWebGpu(tf, { allowSoftware: true });
if (!gpu.ok && gpu.unavailable) {
  console.warn(`parity-webgpu: skipped: ${gpu.reason}`);
  describe.skip(`parity on webgpu (skipped: ${gpu.reason})`, () => {
    it('needs a WebGPU adapter', () => undefined);
  });
} else {
  process.env.PARITY_BACKEND = 'webgpu';
  process.env.PARITY_CASES ??= 'forward,tent,eata';
  process.env.PARITY_LEAK ??= 'eata+mecta';
  process.env.PARITY_LEAK_STEPS ??= '3';
  await import('./parity.test.js');
}
