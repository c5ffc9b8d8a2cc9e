/**
 * Access to tfjs-backend-wasm's heap for our own WebAssembly (simd-kernels.wat): the compiled
 * module instantiated once per backend memory (shared in the threaded-SIMD build, plain in the
 * single-thread one), tensor pointers, outputs, scratch, and typed views. Kernels using it run on
 * the calling thread, synchronously, between tfjs's own kernels.
 */
import type { tf } from '../tf.js';
import { SIMD_KERNELS_PLAIN, SIMD_KERNELS_SHARED } from './simd-kernels-wasm.js';

type Info = tf.TensorInfo;

export interface Exports {
  reduce(mode: number, a: number, b: number, mu: number, rows: number, c: number, acc: number, tot: number): void;
  affine(x: number, a: number, b: number, y: number, rows: number, c: number): void;
  bnDx(g: number, x: number, mu: number, s: number, kc: number, c0: number, dx: number, rows: number, c: number): void;
  sumsIdx(g: number, x: number, mu: number, idx: number, rows: number, c: number, k: number, acc: number, tot: number): void;
  dxIdx(g: number, x: number, mu: number, idx: number, s: number, kc: number, c0: number, dx: number, rows: number, c: number, k: number): void;
  affineGather(x: number, a: number, b: number, y: number, idx: number, xk: number, rows: number, c: number, k: number): void;
  reluPack(a: number, b: number, y: number, words: number, n: number): void;
  maskGrad(dy: number, words: number, dx: number, n: number): void;
  copyCols(src: number, srcStride: number, dst: number, dstStride: number, rows: number, bytes: number): void;
  gatherIdx(x: number, idx: number, out: number, rows: number, c: number, k: number): void;
}

interface EmscriptenModule {
  wasmMemory?: WebAssembly.Memory; // threaded build
  asm?: { memory?: WebAssembly.Memory }; // single-thread build exports it
  _malloc(bytes: number): number;
  _free(ptr: number): void;
}

interface WasmBackend {
  wasm: EmscriptenModule;
  makeOutput(shape: number[], dtype: 'float32' | 'int32'): Info;
  dataIdMap: { get(id: object): { memoryOffset: number } };
}

const instances = new WeakMap<WebAssembly.Memory, Exports>();

function instantiate(memory: WebAssembly.Memory): Exports {
  let k = instances.get(memory);
  if (!k) {
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const bytes = Buffer.from(shared ? SIMD_KERNELS_SHARED : SIMD_KERNELS_PLAIN, 'base64');
    k = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports as unknown as Exports;
    instances.set(memory, k);
  }
  return k;
}

/** Per-call access to the heap: pointers, scratch, fresh views (the heap may grow on any malloc). */
export class Heap {
  readonly k: Exports;
  private readonly mod: EmscriptenModule;
  private readonly memory: WebAssembly.Memory;
  private readonly allocs: number[] = [];

  constructor(private readonly backend: WasmBackend) {
    this.mod = backend.wasm;
    const memory = this.mod.wasmMemory ?? this.mod.asm?.memory;
    if (!memory) throw new Error('wasm-heap: the WASM backend exposes no memory');
    this.memory = memory;
    this.k = instantiate(memory);
  }

  ptr(t: Info): number {
    return this.backend.dataIdMap.get(t.dataId).memoryOffset >>> 0;
  }

  out(shape: number[], dtype: 'float32' | 'int32' = 'float32'): Info {
    return this.backend.makeOutput(shape, dtype);
  }

  /** `bytes` of scratch, 16-byte aligned, freed by done(). */
  scratch(bytes: number): number {
    const p = this.mod._malloc(bytes + 16) >>> 0; // wasm returns a signed i32: offsets past 2 GB read negative
    this.allocs.push(p);
    return p + ((16 - (p % 16)) % 16); // (no `& ~15`: that is signed again)
  }

  f32(ptr: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  f64(ptr: number, n: number): Float64Array {
    return new Float64Array(this.memory.buffer, ptr, n);
  }

  i32(ptr: number, n: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, n);
  }

  done(): void {
    for (const p of this.allocs) this.mod._free(p);
  }
}

/** Runs `fn` with a Heap over the WASM `backend`, freeing its scratch afterwards. */
export function withHeap<T>(backend: unknown, fn: (heap: Heap) => T): T {
  const heap = new Heap(backend as WasmBackend);
  try {
    return fn(heap);
  } finally {
    heap.done();
  }
}
