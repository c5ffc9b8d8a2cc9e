/**
 * Starts tfjs-backend-wasm's threaded-SIMD build under Node, so XNNPACK (conv, matMul) runs on a
 * pthreadpool of `threads` threads (the calling thread + threads − 1 Emscripten workers).
 *
 * tfjs 4.22 ships the threaded binary and an Emscripten runtime that knows Node's worker_threads,
 * but three things in its browser-oriented loader stop it in Node (tfjs issue 3830):
 * 1. `WASM_HAS_MULTITHREAD_SUPPORT` answers false whenever `IS_NODE`.
 * 2. The loader hands Emscripten the worker script and the main script as `Blob`s / `blob:` URLs,
 *    which `worker_threads.Worker` and the worker's `importScripts` (a `readFileSync`) cannot
 *    open. We record the strings the loader puts into those Blobs and write them to a private
 *    temporary folder instead: the worker script gets a one-line hook that swaps the main-script
 *    Blob for that file's path; the main script (a function's source text cut out of the rollup
 *    bundle) gets back the module-level `require$$N` / `commonjsGlobal` bindings it refers to,
 *    read from the bundle's own header so a tfjs upgrade cannot silently desynchronise them.
 * 3. The C side caps the pool at `emscripten_num_logical_cores() / 2` (it assumes 2 hyper-threads
 *    per core), which is 1 on a 2-CPU machine; that count comes from `os.cpus().length`, so the
 *    number of CPUs is reported as 2·threads while the module initialises.
 * Every patch is undone before this function returns. The workers are `unref`ed so an idle pool
 * does not keep the process alive. XNNPACK splits output tiles between threads and each output is
 * reduced in a fixed order by one thread, so results are bit-identical to the one-thread build
 * (checked by test/e2e/threads.test.ts).
 */
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';

const require = createRequire(import.meta.url);

/** Emscripten pre-creates this many workers (`pthreadPoolSize` in the threaded factory). */
export const MAX_WASM_THREADS = 8;

/** `--threads 0` (auto): one per CPU, at most the workers Emscripten pre-creates. */
export function autoThreads(): number {
  return Math.max(1, Math.min(os.availableParallelism(), MAX_WASM_THREADS));
}

interface WasmPkg {
  setThreadsCount(n: number): void;
  getThreadsCount(): number;
}

interface EmscriptenWorker {
  unref(): void;
}

/** `var require$$0 = require('fs');` lines and `commonjsGlobal` from the bundle's own header. */
function bundlePrelude(): string {
  const bundlePath = require.resolve('@tensorflow/tfjs-backend-wasm');
  const head = readFileSync(bundlePath, 'utf8').slice(0, 20_000);
  const lines = head.match(/^var require\$\$\d+ = require\('[a-z_]+'\);$/gm) ?? [];
  return `${lines.join('\n')}\nvar commonjsGlobal = globalThis;\n`;
}

/**
 * Initialises the 'wasm' backend with `threads` XNNPACK threads (2 ≤ threads ≤ 8). Returns the
 * thread count the backend reports, or throws what `tf.setBackend` reported when it failed.
 */
export async function setWasmBackendThreaded(tf: typeof TF, threads: number): Promise<number> {
  const pkg = require('@tensorflow/tfjs-backend-wasm') as WasmPkg;
  const dir = mkdtempSync(join(os.tmpdir(), 'cta-eval-wasm-'));
  const mainPath = join(dir, 'main.js');
  const workerPath = join(dir, 'worker.js');
  const prelude = bundlePrelude();
  const OrigBlob = globalThis.Blob;
  const origCreate = URL.createObjectURL;
  const origCpus = os.cpus;
  const texts = new WeakMap<Blob, string>();
  // Records the text of string-built Blobs; the main script, posted to each worker as a Blob,
  // is written to its file as soon as the loader creates it.
  class RecordingBlob extends OrigBlob {
    constructor(parts?: BlobPart[], options?: BlobPropertyBag) {
      super(parts, options);
      if (!parts || !parts.every((p) => typeof p === 'string')) return;
      const text = (parts as string[]).join('');
      texts.set(this, text);
      if (text.startsWith('var WasmBackendModuleThreadedSimd')) writeFileSync(mainPath, prelude + text);
    }
  }
  // Emscripten unrefs each worker as soon as it has loaded, and parts of the start-up are promises
  // that hold no libuv handle; keep the event loop alive until the backend is up so that Node
  // cannot mistake the wait for an idle process (seen once under heavy load: exit 13, "unsettled
  // top-level await").
  const keepAlive = setInterval(() => undefined, 60_000);
  try {
    globalThis.Blob = RecordingBlob as typeof Blob;
    URL.createObjectURL = (obj: Blob) => {
      const text = texts.get(obj);
      if (text === undefined || !text.includes('importScripts')) return origCreate(obj);
      // The worker script: route its "load" command to the main script written below.
      const hook =
        `;(function(){var h=self.onmessage;self.onmessage=function(e){` +
        `if(e.data&&e.data.cmd==="load")e.data.urlOrBlob=${JSON.stringify(mainPath)};return h(e)}})();\n`;
      writeFileSync(workerPath, `${text}\n${hook}`);
      return workerPath;
    };
    const cpu = origCpus()[0];
    os.cpus = () => Array.from({ length: 2 * threads }, () => cpu);
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    pkg.setThreadsCount(threads);
    const ok = await tf.setBackend('wasm');
    if (!ok) throw new Error('tf.setBackend("wasm") returned false');
  } finally {
    clearInterval(keepAlive);
    globalThis.Blob = OrigBlob;
    URL.createObjectURL = origCreate;
    os.cpus = origCpus;
    // Every pre-created worker has read both files by now (Emscripten awaits them before `run`).
    rmSync(dir, { recursive: true, force: true });
  }
  const pthread = (tf.backend() as unknown as { wasm: { PThread?: { unusedWorkers: EmscriptenWorker[]; runningWorkers: EmscriptenWorker[] } } })
    .wasm.PThread;
  for (const w of [...(pthread?.unusedWorkers ?? []), ...(pthread?.runningWorkers ?? [])]) w.unref();
  return pkg.getThreadsCount();
}
