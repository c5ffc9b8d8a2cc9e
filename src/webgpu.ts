/**
 * The TF.js WebGPU backend (@tensorflow/tfjs-backend-webgpu) on Dawn's Node bindings (npm
 * `webgpu`, whose tarball carries a prebuilt dawn.node). Both packages are optional dependencies;
 * without them `--backend webgpu` is one error line and `auto` skips this route.
 *
 * What Node needs that a browser has:
 * - `navigator.gpu` must exist when the backend module is imported (it registers itself only
 *   then), and the WebGPU globals (GPUBufferUsage, GPUMapMode, …) must be global.
 * - The backend asks for an adapter with only a power preference. The adapter is chosen here
 *   instead (hardware first; Dawn's OpenGL ES backend, which needs the 'compatibility' feature
 *   level, for Mesa's software rasteriser) and handed to it.
 * - Its synchronous read (`dataSync`, which the algorithms use for EATA's sample selection and
 *   MECTA's forget gate) goes through an OffscreenCanvas, which Node lacks. Dawn's bindings
 *   complete a buffer mapping only inside their event-processing callback, which they schedule
 *   with `setImmediate` while a request is pending. That callback is captured (while the device is
 *   requested) and called directly in a wait loop, so a mapping completes without returning to
 *   the event loop: `readSync` becomes copy → map → wait → copy out, as the backend's own async
 *   `read` does.
 * - Mesa compiles each shader from scratch unless its disk cache is on, and a cold compile on the
 *   software rasteriser takes seconds; the cache lives in a project folder (.cache/, ignored by
 *   git) unless MESA_SHADER_CACHE_DIR is set. It is set before Dawn loads Mesa.
 *
 * Routes (env CTA_DAWN_BACKEND = vulkan | opengles forces one): Dawn's platform default (Vulkan on
 * Linux, tried only where a Vulkan loader and a driver manifest are installed, which also keeps
 * Dawn from printing "couldn't load Vulkan" / "found no drivers" warnings), then OpenGL ES on
 * EGL's surfaceless platform. A software
 * adapter (llvmpipe, lavapipe, SwiftShader, or one Dawn flags as a fallback) is taken only when
 * the webgpu backend was asked for by name.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as TF from '@tensorflow/tfjs';

type Tf = typeof TF;

/** What the notice line and BackendInfo say about the adapter in use. */
export interface WebGpuAdapter {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A software rasteriser (or Dawn's fallback adapter): correct, but slower than WASM. */
  software: boolean;
  /** The Dawn backend: 'default' (Vulkan / Metal / D3D12) or 'opengles'. */
  route: DawnRoute;
}

/**
 * `unavailable`: nothing to run on (package or adapter missing), which a test may skip for; a
 * failure with an adapter present is a fault.
 */
export type WebGpuStart = { ok: true; adapter: WebGpuAdapter; notice: string } | { ok: false; unavailable: boolean; reason: string };

export type DawnRoute = 'default' | 'opengles';

/* Minimal shapes of the WebGPU objects used here (the full types are a package of their own). */
interface AdapterInfoLike {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}
interface AdapterLike {
  info?: AdapterInfoLike;
  limits: Record<string, number>;
  isFallbackAdapter?: boolean;
  requestDevice(desc?: { requiredLimits?: Record<string, number>; requiredFeatures?: unknown[] }): Promise<unknown>;
}
interface GpuLike {
  requestAdapter(opts?: object): Promise<AdapterLike | null>;
  getPreferredCanvasFormat?(): string;
  wgslLanguageFeatures?: unknown;
}
interface DawnModule {
  create(flags: string[]): GpuLike;
  globals: Record<string, unknown>;
}
interface BufferLike {
  size: number;
  mapState: 'unmapped' | 'pending' | 'mapped';
  mapAsync(mode: number): Promise<void>;
  getMappedRange(): ArrayBuffer;
  unmap(): void;
}
interface TensorDataLike {
  values: unknown;
  dtype: string;
  resource: BufferLike | null;
  complexTensorInfos?: { real: { dataId: object }; imag: { dataId: object } };
}
interface WebGpuBackendLike {
  tensorMap: { get(id: object): TensorDataLike | undefined };
  bufferManager: { acquireBuffer(size: number, usage: number): BufferLike; releaseBuffer(b: BufferLike): void };
  commandEncoder: { copyBufferToBuffer(s: BufferLike, so: number, d: BufferLike, dof: number, n: number): void };
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  convertAndCacheOnCPU(id: object, v: unknown): unknown;
  readSync(id: object): unknown;
  read(id: object): Promise<unknown>;
  memory(): { numBytesInGPU: number; numBytesAllocatedInGPU: number };
  device: { addEventListener(type: 'uncapturederror', f: (e: { error: { message: string } }) => void): void };
  ctaSyncRead?: boolean;
}

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Where Mesa keeps compiled shaders unless MESA_SHADER_CACHE_DIR says otherwise. */
export const DEFAULT_SHADER_CACHE = join(ROOT, '.cache', 'mesa-shaders');

/** Sets Mesa's shader cache folder (creating it) unless the user chose one. Before Dawn loads. */
export function configureShaderCache(env: NodeJS.ProcessEnv = process.env): string {
  if (!env.MESA_SHADER_CACHE_DIR) env.MESA_SHADER_CACHE_DIR = DEFAULT_SHADER_CACHE;
  try {
    mkdirSync(env.MESA_SHADER_CACHE_DIR, { recursive: true });
  } catch {
    /* a read-only install: Mesa then compiles without a cache, which is only slower */
  }
  return env.MESA_SHADER_CACHE_DIR;
}

/** Names that identify a software rasteriser in an adapter's strings. */
const SOFTWARE = /llvmpipe|lavapipe|softpipe|swiftshader|software/i;

export function isSoftwareAdapter(info: AdapterInfoLike, fallbackFlag = false): boolean {
  if (fallbackFlag || info.isFallbackAdapter) return true;
  return SOFTWARE.test([info.vendor, info.architecture, info.device, info.description].join(' '));
}

/** The one notice line naming the adapter. */
export function adapterNotice(a: WebGpuAdapter): string {
  const q = (s: string) => (s ? s : '?');
  const route = a.route === 'opengles' ? 'Dawn on OpenGL ES' : 'Dawn';
  const soft = a.software ? '; a software rasteriser: slower than --backend wasm' : '';
  return `notice: webgpu adapter: vendor ${q(a.vendor)}, architecture ${q(a.architecture)}, ${q(a.device)}, ${q(a.description)} (${route}${soft})`;
}

/** Whether Dawn's Vulkan backend can load at all (Linux: libvulkan.so.1 on the loader's path). */
export function vulkanLoaderPresent(env: NodeJS.ProcessEnv = process.env, ldCache = '/etc/ld.so.cache'): boolean {
  if (process.platform !== 'linux') return true; // Metal / D3D12 are part of the OS
  for (const dir of (env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean)) {
    if (existsSync(join(dir, 'libvulkan.so.1'))) return true;
  }
  try {
    return readFileSync(ldCache).includes('libvulkan.so.1');
  } catch {
    return false;
  }
}

/**
 * Whether the Vulkan loader would find any driver manifest (ICD): the loader's environment
 * variables, else the icd.d folders it searches. Without one Dawn only prints warnings.
 */
export function vulkanDriverListed(env: NodeJS.ProcessEnv = process.env): boolean {
  if (process.platform !== 'linux') return true;
  if (env.VK_DRIVER_FILES || env.VK_ICD_FILENAMES || env.VK_ADD_DRIVER_FILES) return true;
  const home = env.HOME ?? '';
  const dirs = [
    ...(env.XDG_CONFIG_DIRS || '/etc/xdg').split(':'),
    '/etc',
    env.XDG_DATA_HOME || join(home, '.local', 'share'),
    ...(env.XDG_DATA_DIRS || '/usr/local/share:/usr/share').split(':'),
  ];
  return dirs.some((d) => {
    try {
      return d !== '' && readdirSync(join(d, 'vulkan', 'icd.d')).some((f) => f.endsWith('.json'));
    } catch {
      return false;
    }
  });
}

/** The Dawn backends to try, in order, or the error for a bad CTA_DAWN_BACKEND. */
export function dawnRoutes(allowSoftware: boolean, env: NodeJS.ProcessEnv, ldCache?: string): DawnRoute[] | string {
  const forced = env.CTA_DAWN_BACKEND;
  if (forced) {
    if (forced === 'vulkan' || forced === 'default') return ['default'];
    if (forced === 'opengles') return ['opengles'];
    return `CTA_DAWN_BACKEND: expected vulkan or opengles, got '${forced}'`;
  }
  const out: DawnRoute[] = [];
  if (vulkanLoaderPresent(env, ldCache) && vulkanDriverListed(env)) out.push('default');
  // GLES on a headless Linux machine is Mesa's llvmpipe: only when asked for by name.
  if (allowSoftware && process.platform === 'linux') out.push('opengles');
  return out;
}

async function loadDawn(): Promise<DawnModule | string> {
  const pkg = 'webgpu'; // a variable: the optional package may be absent when this compiles
  try {
    return (await import(pkg)) as DawnModule;
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    return /Cannot find (package|module) 'webgpu'/.test(msg)
      ? "the optional npm package 'webgpu' (Dawn's Node bindings) is not installed (npm install webgpu@0.6.2)"
      : `Dawn's Node bindings (npm 'webgpu') failed to load: ${msg}`;
  }
}

async function requestAdapter(dawn: DawnModule, route: DawnRoute): Promise<{ gpu: GpuLike; adapter: AdapterLike; opts: object } | null> {
  try {
    if (route === 'opengles') {
      // Mesa picks its EGL platform from the environment; headless needs 'surfaceless'.
      process.env.EGL_PLATFORM ??= 'surfaceless';
      const gpu = dawn.create(['backend=opengles']);
      const opts = { featureLevel: 'compatibility', powerPreference: 'high-performance' };
      const adapter = await gpu.requestAdapter(opts);
      return adapter ? { gpu, adapter, opts } : null;
    }
    const gpu = dawn.create([]);
    const opts = { powerPreference: 'high-performance' };
    const adapter = await gpu.requestAdapter(opts);
    return adapter ? { gpu, adapter, opts } : null;
  } catch {
    return null; // a driver that throws instead of answering null: no adapter on this route
  }
}

function describe(adapter: AdapterLike, route: DawnRoute): WebGpuAdapter {
  const info = adapter.info ?? {};
  return {
    vendor: info.vendor ?? '',
    architecture: info.architecture ?? '',
    device: info.device ?? '',
    description: info.description ?? '',
    software: isSoftwareAdapter(info, adapter.isFallbackAdapter === true),
    route,
  };
}

/** Dawn's event-processing callback, captured while the device is requested (see the header). */
let processEvents: (() => void) | null = null;

/** Runs `f` with setImmediate recording what Dawn schedules (and still scheduling it). */
function capturingTick<T>(f: () => T): T {
  const real = globalThis.setImmediate;
  const spy = ((fn: () => void, ...args: unknown[]) => {
    processEvents = fn;
    return real(fn, ...(args as []));
  }) as typeof setImmediate;
  globalThis.setImmediate = spy;
  try {
    return f();
  } finally {
    globalThis.setImmediate = real;
  }
}

/**
 * Hands `adapter` to the tfjs backend as navigator.gpu's answer. The device is requested with the
 * adapter's maxima for every `max*` limit: the backend asks only for a few, and the defaults of the
 * compatibility level (4 storage buffers per stage) are below what its fused kernels bind.
 */
function exposeAdapter(dawn: DawnModule, found: { gpu: GpuLike; adapter: AdapterLike; opts: object }): void {
  Object.assign(globalThis, dawn.globals);
  let first: AdapterLike | null = found.adapter;
  const wrap = (adapter: AdapterLike): AdapterLike => {
    const requestDevice = adapter.requestDevice.bind(adapter);
    adapter.requestDevice = (desc = {}) => {
      const limits: Record<string, number> = {};
      for (const k in adapter.limits) if (k.startsWith('max')) limits[k] = adapter.limits[k];
      return capturingTick(() => requestDevice({ ...desc, requiredLimits: { ...limits, ...(desc.requiredLimits ?? {}) } }));
    };
    return adapter;
  };
  const gpu: GpuLike = {
    requestAdapter: async () => {
      // The probed adapter the first time; a fresh one if the backend is ever re-created.
      const a = first ?? (await found.gpu.requestAdapter(found.opts));
      first = null;
      return a ? wrap(a) : null;
    },
    getPreferredCanvasFormat: () => found.gpu.getPreferredCanvasFormat?.() ?? 'rgba8unorm',
    wgslLanguageFeatures: found.gpu.wgslLanguageFeatures,
  };
  const nav = (globalThis as { navigator?: object }).navigator;
  if (nav) Object.defineProperty(nav, 'gpu', { value: gpu, configurable: true, writable: true });
  else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
}

let pendingError: string | null = null;

/** Throws (once) the first GPU error reported since the last check. */
export function throwPendingError(): void {
  if (pendingError === null) return;
  const msg = pendingError.split('\n').map((l) => l.trim()).filter(Boolean).slice(0, 3).join(' | ');
  pendingError = null;
  throw new Error(`webgpu: the GPU rejected work: ${msg}`);
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** How long a synchronous read may wait for the GPU before it is reported as stuck. */
const SYNC_READ_TIMEOUT_MS = 600_000;

/**
 * Replaces the backend's canvas-based readSync with copy → map → wait (see the header). The wait
 * sleeps a little between polls so that, on a software rasteriser, the rendering threads keep the
 * CPU.
 */
function installSyncRead(tf: Tf, backend: WebGpuBackendLike): void {
  if (backend.ctaSyncRead) return;
  backend.ctaSyncRead = true;
  // A shader or pipeline the driver rejects is reported asynchronously and the dispatch is
  // dropped, so the results would be silently wrong: the next read fails instead.
  backend.device.addEventListener('uncapturederror', (e) => {
    pendingError ??= e.error.message;
  });
  const read = backend.read.bind(backend);
  backend.read = async (dataId: object) => {
    throwPendingError();
    const values = await read(dataId);
    throwPendingError();
    return values;
  };
  const usage = (globalThis as unknown as { GPUBufferUsage: { COPY_DST: number; MAP_READ: number } }).GPUBufferUsage;
  const mapRead = (globalThis as unknown as { GPUMapMode: { READ: number } }).GPUMapMode.READ;
  backend.readSync = function readSync(this: WebGpuBackendLike, dataId: object): unknown {
    const data = this.tensorMap.get(dataId);
    if (!data) throw new Error(`webgpu: tensor ${String((dataId as { id?: number }).id)} is not registered`);
    if (data.values != null || data.dtype === 'string') return data.values;
    if (data.dtype === 'complex64') {
      const re = this.readSync(data.complexTensorInfos!.real.dataId) as Float32Array;
      const im = this.readSync(data.complexTensorInfos!.imag.dataId) as Float32Array;
      return this.convertAndCacheOnCPU(dataId, tf.backend_util.mergeRealAndImagArrays(re, im));
    }
    throwPendingError();
    const src = data.resource!;
    const staging = this.bufferManager.acquireBuffer(src.size, usage.COPY_DST | usage.MAP_READ);
    this.ensureCommandEncoderReady();
    this.endComputePassEncoder();
    this.commandEncoder.copyBufferToBuffer(src, 0, staging, 0, src.size);
    this.submitQueue();
    let failure: unknown = null;
    capturingTick(() => staging.mapAsync(mapRead)).catch((e: unknown) => (failure = e));
    const tick = processEvents;
    if (!tick) throw new Error('webgpu: synchronous read unavailable (Dawn scheduled no event processing)');
    const t0 = performance.now();
    let pause = 0;
    while (staging.mapState !== 'mapped') {
      tick();
      const state: string = staging.mapState; // changed by tick()
      if (state === 'mapped') break;
      if (failure || state === 'unmapped') {
        this.bufferManager.releaseBuffer(staging);
        throw new Error(`webgpu: reading a tensor back failed: ${failure ? (failure as Error).message : 'mapping rejected'}`);
      }
      if (performance.now() - t0 > SYNC_READ_TIMEOUT_MS) throw new Error(`webgpu: a tensor read waited ${SYNC_READ_TIMEOUT_MS / 1000} s for the GPU`);
      Atomics.wait(sleepCell, 0, 0, pause);
      pause = Math.min(1, pause + 0.05); // ms: 0, 0.05, 0.1, … then 1 ms polls
    }
    const bytes = staging.getMappedRange().slice(0);
    staging.unmap();
    this.bufferManager.releaseBuffer(staging);
    throwPendingError();
    return this.convertAndCacheOnCPU(dataId, tf.util.convertBackendValuesAndArrayBuffer(bytes, data.dtype as TF.DataType));
  };
}

let started: WebGpuStart | null = null;

/**
 * Chooses an adapter, registers the webgpu backend, makes it active and installs the synchronous
 * read. `allowSoftware`: also take a software adapter (--backend webgpu); `auto` passes false.
 * Never throws for a missing package or adapter: the reason comes back for the caller's message.
 */
export async function startWebGpu(tf: Tf, opts: { allowSoftware: boolean; env?: NodeJS.ProcessEnv }): Promise<WebGpuStart> {
  if (started?.ok) return started;
  const env = opts.env ?? process.env;
  const list = dawnRoutes(opts.allowSoftware, env);
  if (typeof list === 'string') return { ok: false, unavailable: false, reason: list };
  if (list.length === 0) return { ok: false, unavailable: true, reason: 'no Vulkan loader (libvulkan.so.1) or Vulkan driver is installed, so Dawn has no hardware adapter to offer' };
  configureShaderCache(env);
  const dawn = await loadDawn();
  if (typeof dawn === 'string') return { ok: false, unavailable: true, reason: dawn };
  let chosen: { found: { gpu: GpuLike; adapter: AdapterLike; opts: object }; adapter: WebGpuAdapter } | null = null;
  let softwareSeen: string | null = null;
  for (const route of list) {
    const found = await requestAdapter(dawn, route);
    if (!found) continue;
    const adapter = describe(found.adapter, route);
    if (adapter.software && !opts.allowSoftware) {
      softwareSeen = adapter.device || adapter.description || 'a fallback adapter';
      continue;
    }
    chosen = { found, adapter };
    if (!adapter.software) break; // hardware: done; software: keep looking for hardware
  }
  if (!chosen) {
    const tried = list.map((r) => (r === 'default' ? 'Dawn default (Vulkan/Metal/D3D12)' : 'Dawn OpenGL ES')).join(', ');
    return {
      ok: false,
      unavailable: true,
      reason: softwareSeen
        ? `only a software adapter (${softwareSeen}) is available; it is used only with --backend webgpu`
        : `no WebGPU adapter found (tried ${tried}; a GPU needs a Vulkan-capable driver)`,
    };
  }
  exposeAdapter(dawn, chosen.found);
  try {
    const backendPkg = '@tensorflow/tfjs-backend-webgpu'; // optional too: no compile-time import
    await import(backendPkg);
  } catch (e) {
    return { ok: false, unavailable: true, reason: `@tensorflow/tfjs-backend-webgpu failed to load: ${(e as Error).message.split('\n')[0]}` };
  }
  let ok = false;
  try {
    ok = await tf.setBackend('webgpu');
  } catch (e) {
    return { ok: false, unavailable: false, reason: `the webgpu backend failed to start: ${(e as Error).message.split('\n')[0]}` };
  }
  if (!ok || tf.getBackend() !== 'webgpu') return { ok: false, unavailable: false, reason: 'the webgpu backend failed to start (no device)' };
  installSyncRead(tf, tf.backend() as unknown as WebGpuBackendLike);
  started = { ok: true, adapter: chosen.adapter, notice: adapterNotice(chosen.adapter) };
  return started;
}

/** Live and allocated (reuse pool included) GPU buffer bytes, or null off the webgpu backend. */
export function gpuBytes(tf: Tf): { inUse: number; allocated: number } | null {
  if (tf.getBackend() !== 'webgpu') return null;
  const m = (tf.backend() as unknown as WebGpuBackendLike).memory();
  return { inUse: m.numBytesInGPU, allocated: m.numBytesAllocatedInGPU };
}
