/**
 * The single import point for TensorFlow.js. Every module imports `tf` from here so the backend is
 * chosen once (see `initBackend`) and the optional native packages are probed in one place.
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';
import { CtaError } from './util/errors.js';
import { MAX_WASM_THREADS, autoThreads, setWasmBackendThreaded } from './wasm-threads.js';
import { startWebGpu, type WebGpuAdapter } from './webgpu.js';

export { tf };

export const BACKENDS = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKENDS)[number];

const require = createRequire(import.meta.url);

/** Tries the optional native bindings; returns the package name that loaded, or null. */
function loadNative(pkgs = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']): { pkg: string; gpu: boolean } | null {
  for (const pkg of pkgs) {
    try {
      require(pkg);
      return { pkg, gpu: pkg.endsWith('-gpu') };
    } catch {
      /* not installed (its install script needs a download): fall through */
    }
  }
  return null;
}

export interface BackendInfo {
  requested: BackendName;
  name: string; // tfjs backend name actually active: 'tensorflow' | 'webgpu' | 'wasm' | 'cpu'
  nativePackage: string | null;
  adapter?: WebGpuAdapter; // webgpu: the adapter in use
  notice: string | null; // one line to print when a faster backend was wanted but is absent
  threads: number; // WASM: XNNPACK threads in use (1 = the single-thread SIMD build); others: 0
}

let active: BackendInfo | null = null;

/**
 * WASM's Identity kernel copies the tensor's bytes, and tfjs-core runs it for every tensor a
 * custom gradient saves (`customGrad`'s save clones) and for every `clone()`: in a ResNeXt-29 b16
 * Tent step, 175 copies (each saved BN input is a whole activation; timing in
 * docs/porting.md#measurements) and one extra copy of each saved activation while the forward
 * runs. Tensors are immutable (variables swap their data id on assign, no kernel writes into its
 * inputs), so the clone can share the data with a reference count, as tfjs's own cpu backend and
 * WASM's Reshape do (docs/porting.md#identity-copies).
 */
function shareIdentityOnWasm(): void {
  const stock = tf.getKernel('Identity', 'wasm');
  if (!stock || (stock as { shared?: boolean }).shared) return;
  tf.unregisterKernel('Identity', 'wasm');
  const config = {
    kernelName: 'Identity',
    backendName: 'wasm',
    shared: true,
    kernelFunc: (args: Parameters<tf.KernelFunc>[0]) => {
      const x = args.inputs.x as tf.TensorInfo;
      if (x.dtype === 'string') return stock.kernelFunc(args);
      (args.backend as unknown as { incRef(id: object): void }).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  };
  tf.registerKernel(config);
}

/**
 * auto: tfjs-node-gpu (GPU visible) > webgpu on a hardware adapter (src/webgpu.ts) > tfjs-node >
 * wasm > cpu; `webgpu` by name also takes a software adapter. An explicit choice that cannot be
 * honoured is an error, never a silent switch. `threads` (WASM only): 0 = `autoThreads()`, 1 = the
 * single-thread SIMD build, n > 1 = the threaded-SIMD build with n XNNPACK threads. The first call
 * in a process decides; later calls return the same backend.
 */
export async function initBackend(requested: BackendName = 'auto', threads = 0): Promise<BackendInfo> {
  if (active && (active.requested === requested || requested === 'auto')) return active;
  if (!Number.isInteger(threads) || threads < 0 || threads > MAX_WASM_THREADS) {
    throw new CtaError(`--threads: expected an integer from 0 (auto) to ${MAX_WASM_THREADS}, got ${threads}`);
  }
  let notice: string | null = null;
  let nativePackage: string | null = null;
  let target: string;
  let adapter: WebGpuAdapter | undefined;
  if (requested === 'webgpu') {
    const gpu = await startWebGpu(tf, { allowSoftware: true });
    if (!gpu.ok) throw new CtaError(`--backend webgpu: ${gpu.reason}`);
    ({ adapter, notice } = gpu);
    target = 'webgpu';
  } else if (requested === 'tensorflow' || requested === 'auto') {
    let native = loadNative(['@tensorflow/tfjs-node-gpu']);
    const gpu = !native && requested === 'auto' ? await startWebGpu(tf, { allowSoftware: false }) : null;
    if (gpu?.ok) ({ adapter, notice } = gpu);
    else native ??= loadNative(['@tensorflow/tfjs-node']);
    if (adapter) {
      target = 'webgpu';
    } else if (native) {
      nativePackage = native.pkg;
      target = 'tensorflow';
    } else if (requested === 'tensorflow') {
      throw new CtaError(
        '--backend tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed (npm install @tensorflow/tfjs-node needs network access to download libtensorflow)',
      );
    } else {
      notice = 'notice: @tensorflow/tfjs-node(-gpu) not installed; using the WASM backend';
      target = 'wasm';
    }
  } else {
    target = requested;
  }
  let wasmThreads = target === 'wasm' ? (threads === 0 ? autoThreads() : threads) : 0;
  let ok = false;
  if (wasmThreads > 1) {
    try {
      wasmThreads = await setWasmBackendThreaded(tf, wasmThreads);
      ok = true;
    } catch (e) {
      // A start that hung or lost a worker cannot be retried in this process: report it.
      if (e instanceof CtaError) throw e;
      // Joined to (not instead of) a tfjs-node notice: both are true.
      const threaded = `the threaded WASM build failed to start (${(e as Error).message}); using one thread`;
      notice = notice ? `${notice}; ${threaded}` : `notice: ${threaded}`;
    }
  }
  if (!ok) {
    if (target === 'wasm') {
      tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
      wasmThreads = 1;
    }
    ok = await tf.setBackend(target);
  }
  if (!ok) {
    if (requested === 'auto' && target === 'wasm') {
      notice = 'notice: WASM backend failed to initialise; using the pure-JS cpu backend (slow)';
      await tf.setBackend('cpu');
      target = 'cpu';
    } else {
      throw new CtaError(`--backend ${requested}: backend '${target}' failed to initialise`);
    }
  }
  await tf.ready();
  if (tf.getBackend() === 'wasm') shareIdentityOnWasm();
  active = { requested, name: tf.getBackend(), nativePackage, notice, threads: tf.getBackend() === 'wasm' ? wasmThreads : 0, ...(adapter ? { adapter } : {}) };
  return active;
}
