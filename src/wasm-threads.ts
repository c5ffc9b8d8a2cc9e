/**
 * Starts tfjs-backend-wasm's threaded-SIMD build under Node, so XNNPACK (conv, matMul) runs on a
 * pthreadpool of `threads` threads (the calling thread + threads − 1 Emscripten workers).
 *
 * tfjs 4.22 ships the threaded binary and an Emscripten runtime that knows Node's worker_threads,
 * but three things in its browser-oriented loader stop it in Node (tfjs issue 3830):
 * 1. `WASM_HAS_MULTITHREAD_SUPPORT` answers false whenever `IS_NODE`.
 * 2. The loader hands Emscripten the worker script and the main script as `Blob`s / `blob:` URLs,
 *    which `worker_threads.Worker` and the worker's `importScripts` (a `readFileSync`) cannot
 *    open. We record the strings the loader puts into those Blobs and start each worker from
 *    source text (`eval: true`), with the main script embedded: nothing is written to disk. (An
 *    earlier version wrote both scripts to a temporary folder; Emscripten asks for the worker URL
 *    once per worker, so the file was truncated and rewritten while the workers created before
 *    were still reading it, and a worker that read it empty ran nothing and exited with code 0,
 *    leaving Emscripten waiting forever for its "loaded" message: the rare start-up hang.) The
 *    main script (a function's source text cut out of the rollup bundle) gets back the
 *    module-level `require$$N` / `commonjsGlobal` bindings it refers to, read from the bundle's own
 *    header so a tfjs upgrade cannot silently desynchronise them.
 * 3. The C side caps the pool at `emscripten_num_logical_cores() / 2` (it assumes 2 hyper-threads
 *    per core), which is 1 on a 2-CPU machine; that count comes from `os.cpus().length`, so the
 *    number of CPUs is reported as 2·threads while the module initialises.
 * Every patch is undone before this function returns. The start is watched: a worker that exits
 * before it has loaded, or a start that has not finished within `startTimeoutMs()`, ends it with
 * one error naming the cause and the `--threads 1` workaround, and every worker is terminated so
 * the process can exit. The workers are `unref`ed so an idle pool does not keep the process alive.
 * XNNPACK splits output tiles between threads and each output is reduced in a fixed order by one
 * thread, so results are bit-identical to the one-thread build (test/e2e/threads.test.ts).
 */
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { Worker as NodeWorker, WorkerOptions } from 'node:worker_threads';
import type * as TF from '@tensorflow/tfjs';
import { CtaError } from './util/errors.js';

const require = createRequire(import.meta.url);

/** Emscripten pre-creates this many workers (`pthreadPoolSize` in the threaded factory). */
export const MAX_WASM_THREADS = 8;

/** `--threads 0` (auto): one per CPU, at most the workers Emscripten pre-creates. */
export function autoThreads(): number {
  return Math.max(1, Math.min(os.availableParallelism(), MAX_WASM_THREADS));
}

/**
 * How long the threaded start may take before it is given up: `CTA_WASM_START_TIMEOUT_S` seconds
 * (default 60). A healthy start takes well under 5 s even with other jobs on every core.
 */
export function startTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.CTA_WASM_START_TIMEOUT_S;
  if (raw === undefined || raw === '') return 60_000;
  const s = Number(raw);
  if (!Number.isFinite(s) || s <= 0) {
    throw new CtaError(`CTA_WASM_START_TIMEOUT_S: expected a positive number of seconds, got '${raw}'`);
  }
  return s * 1000;
}

interface WasmPkg {
  setThreadsCount(n: number): void;
  getThreadsCount(): number;
}

/** `var require$$0 = require('fs');` lines and `commonjsGlobal` from the bundle's own header. */
function bundlePrelude(): string {
  const bundlePath = require.resolve('@tensorflow/tfjs-backend-wasm');
  const head = readFileSync(bundlePath, 'utf8').slice(0, 20_000);
  const lines = head.match(/^var require\$\$\d+ = require\('[a-z_]+'\);$/gm) ?? [];
  return `${lines.join('\n')}\nvar commonjsGlobal = globalThis;\n`;
}

/** Stand-ins for the two blob: URLs; no file of these names exists or is ever opened. */
const WORKER_URL = 'cta-eval:wasm-pthread-worker.js';
const MAIN_URL = 'cta-eval:wasm-threaded-simd.js';

/**
 * The worker script as Emscripten would run it, plus a hook: the "load" command's main-script
 * Blob becomes MAIN_URL, and `importScripts(MAIN_URL)` evaluates the embedded main script.
 */
function workerSource(workerText: string, mainText: string): string {
  return (
    `${workerText}\n;(function(){var imp=self.importScripts,src=${JSON.stringify(mainText)};` +
    `self.importScripts=function(f){if(f===${JSON.stringify(MAIN_URL)})return (0,eval)(src);return imp(f)};` +
    `var h=self.onmessage;self.onmessage=function(e){` +
    `if(e.data&&e.data.cmd==="load")e.data.urlOrBlob=${JSON.stringify(MAIN_URL)};return h(e)}})();\n`
  );
}

/** What the start watcher knows about one Emscripten worker. */
interface Tracked {
  worker: NodeWorker;
  loaded: boolean;
}

/**
 * Initialises the 'wasm' backend with `threads` XNNPACK threads (2 ≤ threads ≤ 8). Returns the
 * thread count the backend reports. Throws an Error when `tf.setBackend` fails (the caller may
 * fall back to one thread), and a CtaError (exit 1) when the start hangs or a worker dies: the
 * backend is then half-initialised and cannot be started again in this process.
 */
export async function setWasmBackendThreaded(tf: typeof TF, threads: number, timeoutMs = startTimeoutMs()): Promise<number> {
  const pkg = require('@tensorflow/tfjs-backend-wasm') as WasmPkg;
  const wt = require('node:worker_threads') as typeof import('node:worker_threads');
  const prelude = bundlePrelude();
  const OrigBlob = globalThis.Blob;
  const origCreate = URL.createObjectURL;
  const origCpus = os.cpus;
  const OrigWorker = wt.Worker;
  const texts = new WeakMap<Blob, string>();
  let workerText: string | null = null;
  let mainText: string | null = null;
  let source: string | null = null;
  const tracked: Tracked[] = [];
  const start: { stuck: Error | null } = { stuck: null };
  let fail: (e: Error) => void = () => undefined;
  const failed = new Promise<never>((_, reject) => {
    fail = (e) => {
      start.stuck ??= e;
      reject(e);
    };
  });

  // Records the text of string-built Blobs: the main script and the worker script.
  class RecordingBlob extends OrigBlob {
    constructor(parts?: BlobPart[], options?: BlobPropertyBag) {
      super(parts, options);
      if (!parts || !parts.every((p) => typeof p === 'string')) return;
      const text = (parts as string[]).join('');
      texts.set(this, text);
      if (text.startsWith('var WasmBackendModuleThreadedSimd')) mainText = prelude + text;
    }
  }
  // Emscripten reads `Worker` from worker_threads when its factory starts; this subclass starts the
  // pthread worker from source and watches it until it reports "loaded".
  class InlineWorker extends OrigWorker {
    constructor(filename: string | URL, options?: WorkerOptions) {
      if (filename !== WORKER_URL) {
        super(filename, options);
        return;
      }
      if (workerText === null || mainText === null) {
        throw new Error('the WASM loader created a worker before its main script (tfjs-backend-wasm changed?)');
      }
      source ??= workerSource(workerText, mainText);
      super(source, { ...options, eval: true });
      const t: Tracked = { worker: this, loaded: false };
      const index = tracked.push(t);
      this.on('message', (d: { cmd?: string } | undefined) => {
        if (d?.cmd === 'loaded') t.loaded = true;
      });
      this.on('exit', (code: number) => {
        if (!t.loaded) fail(new Error(`WASM worker ${index} exited with code ${code} before it had loaded`));
      });
    }
  }

  let timer: NodeJS.Timeout | undefined;
  try {
    globalThis.Blob = RecordingBlob as typeof Blob;
    URL.createObjectURL = (obj: Blob) => {
      const text = texts.get(obj);
      if (text === undefined || !text.includes('importScripts')) return origCreate(obj);
      workerText = text;
      return WORKER_URL;
    };
    wt.Worker = InlineWorker as typeof OrigWorker;
    const cpu = origCpus()[0];
    os.cpus = () => Array.from({ length: 2 * threads }, () => cpu);
    // Also keeps the event loop alive while the start waits on promises that hold no libuv handle
    // (Emscripten unrefs each worker as soon as it has loaded).
    timer = setTimeout(() => fail(new Error(`did not finish within ${timeoutMs / 1000} s`)), timeoutMs);
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
    pkg.setThreadsCount(threads);
    const ok = await Promise.race([tf.setBackend('wasm'), failed]);
    if (!ok) throw new Error('tf.setBackend("wasm") returned false');
  } catch (e) {
    const stuck = start.stuck;
    if (stuck !== null && e === stuck) {
      // A half-started pool: nothing can be recovered in this process (tfjs keeps waiting on the
      // first start), so end every worker, letting the process exit instead of waiting on them.
      for (const t of tracked) void t.worker.terminate();
      const loaded = tracked.filter((t) => t.loaded).length;
      throw new CtaError(
        `the threaded WASM backend (${threads} threads) failed to start: ${stuck.message} ` +
          `(${loaded} of ${tracked.length} workers loaded); run with --threads 1 (the single-thread build) to avoid it`,
        1,
      );
    }
    throw e;
  } finally {
    clearTimeout(timer);
    globalThis.Blob = OrigBlob;
    URL.createObjectURL = origCreate;
    os.cpus = origCpus;
    wt.Worker = OrigWorker;
  }
  const pthread = (tf.backend() as unknown as { wasm: { PThread?: { unusedWorkers: NodeWorker[]; runningWorkers: NodeWorker[] } } })
    .wasm.PThread;
  for (const w of [...(pthread?.unusedWorkers ?? []), ...(pthread?.runningWorkers ?? [])]) w.unref();
  return pkg.getThreadsCount();
}
