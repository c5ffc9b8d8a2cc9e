/**
 * WAT → WebAssembly with wabt (a devDependency, pinned so the bytes are reproducible). Shared by
 * scripts/build-wasm.mjs and the test that checks the committed binaries against their source.
 */
import wabtInit from 'wabt';

const FEATURES = { simd: true, threads: true, bulk_memory: true };

/** The module as written (shared memory import) and with the memory import made plain. */
export async function compileSimdKernels(wat) {
  if (!/\(memory 1 65536 shared\)/.test(wat)) throw new Error('simd-kernels.wat: expected one "(memory 1 65536 shared)" import');
  const wabt = await wabtInit();
  const build = (text) => {
    const mod = wabt.parseWat('simd-kernels.wat', text, FEATURES);
    try {
      const bytes = new Uint8Array(mod.toBinary({}).buffer);
      // Compiling here catches what wabt's text parser lets through (V8 is the validator).
      new WebAssembly.Module(bytes);
      return bytes;
    } finally {
      mod.destroy();
    }
  };
  return { shared: build(wat), plain: build(wat.replace('(memory 1 65536 shared)', '(memory 1 65536)')) };
}
