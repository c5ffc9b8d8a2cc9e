/**
 * Measured backprop-memory accounting (docs/memory.md#measured; the engine-side counterpart of the
 * analytic figures in runner/accounting.ts). Two hooks on the tfjs engine, installed once per
 * process:
 *
 * - `engine.gradients` is wrapped so that, at the end of the taped forward (inside the gradient
 *   function, just before the loss is returned), the tape is measured: the bytes of the distinct
 *   tensors (by data buffer) saved by the nodes the backward will actually run, i.e. the nodes on
 *   a path from the differentiated variables to the loss. That is what the engine holds for
 *   backprop when the backward starts. A step whose loss is not connected (EATA with no selected
 *   sample, MECTA with every layer matched) runs no backward and holds 0 bytes for it.
 * - `engine.trackTensor` is wrapped to follow the peak of the engine's tensor bytes
 *   (`tf.memory().numBytes`) between `begin()` and `end()`.
 *
 * Both rely on tfjs-core 4.22 internals (`state.activeTape`, tape nodes' `saved`,
 * `trackTensor`); if they are missing the probe reports nulls instead of wrong numbers. Cost: one
 * comparison per tensor allocation, and one walk over the tape (a few hundred nodes) per step.
 */
import { tf } from '../tf.js';
import { gpuBytes } from '../webgpu.js';

export const MB = 1e6;

/** The parts of a tfjs-core TapeNode used here. */
interface TapeNodeLike {
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
}

type GradientsFn = (f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients?: boolean) => { value: tf.Tensor; grads: tf.Tensor[] };

interface EngineLike {
  state: { numBytes: number; activeTape: TapeNodeLike[] | null };
  gradients: GradientsFn;
  trackTensor: (a: tf.Tensor, backend: unknown) => void;
}

function tensorBytes(t: tf.Tensor): number {
  if (t.dtype === 'string') return 0;
  return t.size * tf.util.bytesPerElement(t.dtype);
}

/**
 * Indices of the tape nodes the backward of `y` with respect to `xs` runs: tfjs-core's
 * getFilteredNodesXToY (nodes reachable from xs whose outputs lead to y).
 */
export function backwardPath(tape: readonly TapeNodeLike[], xs: readonly tf.Tensor[], y: tf.Tensor): boolean[] {
  const fromX = new Set<number>(xs.map((x) => x.id));
  const reachable = tape.map((node) => {
    for (const name in node.inputs) {
      if (fromX.has(node.inputs[name].id)) {
        for (const o of node.outputs) fromX.add(o.id);
        return true;
      }
    }
    return false;
  });
  const toY = new Set<number>([y.id]);
  const leads = new Array<boolean>(tape.length).fill(false);
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => toY.has(o.id))) {
      leads[i] = true;
      for (const name in node.inputs) toY.add(node.inputs[name].id);
    }
  }
  return tape.map((_, i) => reachable[i] && leads[i]);
}

export interface TapeAccount {
  /** Distinct saved bytes of the nodes the backward runs (what it holds when it starts). */
  backpropBytes: number;
  /** Distinct saved bytes of every node on the tape (including nodes the backward skips). */
  tapeBytes: number;
  nodes: number;
  pathNodes: number;
  /** Per tape node: saved bytes first seen at that node, path nodes only (0 elsewhere). */
  perNode: number[];
}

/** Sums the distinct (by data buffer) live saved tensors of a tape. */
export function accountTape(tape: readonly TapeNodeLike[], xs: readonly tf.Tensor[], y: tf.Tensor): TapeAccount {
  const onPath = backwardPath(tape, xs, y);
  const seenPath = new Set<object>();
  const seenAll = new Set<object>();
  const perNode = new Array<number>(tape.length).fill(0);
  let backpropBytes = 0;
  let tapeBytes = 0;
  tape.forEach((node, i) => {
    for (const t of node.saved ?? []) {
      if (t.isDisposed) continue;
      const id = t.dataId as object;
      if (!seenAll.has(id)) {
        seenAll.add(id);
        tapeBytes += tensorBytes(t);
      }
      if (onPath[i] && !seenPath.has(id)) {
        seenPath.add(id);
        const b = tensorBytes(t);
        backpropBytes += b;
        perNode[i] += b;
      }
    }
  });
  return { backpropBytes, tapeBytes, nodes: tape.length, pathNodes: onPath.filter(Boolean).length, perNode };
}

/** A norm layer's forward as seen on the tape: its op occupies nodes [start, end). */
export interface LayerMark {
  name: string;
  shape: number[];
  start: number;
  end: number;
}

/** Measured bytes attributed to one norm layer (profile-mem --per-layer). */
export interface LayerMemory {
  name: string;
  /** Input shape, NHWC. */
  shape: number[];
  /** Saved by the norm layer's own op (its input or kept channels, and [C] statistics). */
  normBytes: number;
  /** Saved by the ops after it up to the next norm layer (ReLU masks, residual joins, the head). */
  afterBytes: number;
}

/**
 * Measured bytes attributed to one trainable conv / linear / embedding layer (profile-mem
 * --per-layer, docs/memory.md#trainable-weights): what the tape nodes taking its weight variable
 * as an input saved, first seen there (an input another layer saved earlier counts there).
 */
export interface WeightLayerMemory {
  /** Module path ('stage_1.0.conv_conv'). */
  name: string;
  /** Shape of the node's other input (the layer's input). */
  shape: number[];
  bytes: number;
}

export interface StepMemory {
  /** Bytes held for backprop when the backward starts (0 if no backward ran); null if unmeasurable. */
  backpropBytes: number | null;
  /** All distinct saved bytes on the tape (≥ backpropBytes). */
  tapeBytes: number | null;
  /** Highest engine tensor bytes during the step (everything alive: weights, optimizer state…). */
  peakBytes: number | null;
  /** Engine tensor bytes when the step began. */
  startBytes: number;
  /**
   * webgpu only (else absent): the highest bytes of live GPU buffers during the step (tensors,
   * uniforms and staging copies; a disposed tensor's buffer until the queue is next submitted),
   * the same when the step began, and the backend's buffer pool (live + kept for reuse) at its end.
   */
  gpuPeakBytes?: number;
  gpuStartBytes?: number;
  gpuAllocatedBytes?: number;
  /** Number of gradient computations in the step (Tent/EATA: 1, or 0 when none ran). */
  backwards: number;
  /**
   * Gradient checkpointing (docs/memory.md#gradient-checkpointing): per recomputed segment, in
   * backward order, the saved bytes of its own tape when its backward starts, and the bytes of
   * those shared with the segment input (absent without checkpointing).
   */
  recomputes?: { bytes: number; inputBytes: number }[];
  /** With `sampleRss`: the highest process RSS seen during the step (sampled per allocation). */
  rssPeakBytes?: number;
  /**
   * wasm backend: the size of the WASM heap at the end of the step. The heap only grows, so this
   * is its high-water mark over the process so far (what the step needed, or an earlier one).
   */
  wasmHeapBytes?: number;
  /** Saved bytes before the first norm layer (input normalisation, stem), with `layers`. */
  preambleBytes?: number;
  layers?: LayerMemory[];
  /**
   * With `layers`, when non-norm layers train (`nameWeights`): their own saved bytes, taken out of
   * the norm layers' `afterBytes` and the preamble.
   */
  weightLayers?: WeightLayerMemory[];
}

let installed = false;
let supported = false;
let active: MemoryProbe | null = null;
/** > 0 while a checkpointed segment is recomputed in the backward (models/grad-checkpoint.ts). */
let recomputeDepth = 0;

/** Whether a checkpointed segment is being recomputed (flops.ts counts it to the backward). */
export function recomputing(): boolean {
  return recomputeDepth > 0;
}

type TapeListener = (tape: readonly TapeNodeLike[], xs: readonly tf.Tensor[], y: tf.Tensor) => void;
const tapeListeners: TapeListener[] = [];

/**
 * Calls `fn` at the end of every taped forward (inside the gradients function, as the probe
 * measures), also while no probe is active (flops.ts locates its ops on the backward path).
 */
export function addTapeListener(fn: TapeListener): void {
  installMemoryHooks();
  tapeListeners.push(fn);
}

/**
 * Runs `fn`, a checkpointed segment's recomputation inside the backward: its gradient computation
 * is not one of the step's backwards; the probe records its tape as `recomputeBytes` instead
 * (docs/memory.md#gradient-checkpointing).
 */
export function duringRecompute<T>(fn: () => T): T {
  recomputeDepth++;
  try {
    return fn();
  } finally {
    recomputeDepth--;
  }
}

function engine(): EngineLike {
  return tf.engine() as unknown as EngineLike;
}

/** Installs the two engine hooks (idempotent). Returns false if this tfjs lacks the internals. */
export function installMemoryHooks(): boolean {
  if (installed) return supported;
  installed = true;
  const eng = engine();
  if (typeof eng.gradients !== 'function' || typeof eng.trackTensor !== 'function' || !eng.state || typeof eng.state.numBytes !== 'number') {
    return (supported = false);
  }
  const gradients = eng.gradients.bind(eng);
  eng.gradients = (f, xs, dy, allowNoGradients) => {
    const probe = active;
    if (!probe && tapeListeners.length === 0) return gradients(f, xs, dy, allowNoGradients);
    const recompute = recomputeDepth > 0;
    return gradients(
      () => {
        const y = f();
        const tape = eng.state.activeTape ?? [];
        for (const l of tapeListeners) l(tape, xs, y);
        if (!probe) return y;
        if (recompute) probe.onRecomputeEnd(tape, xs, y);
        else probe.onForwardEnd(tape, xs, y);
        return y;
      },
      xs,
      dy,
      allowNoGradients,
    );
  };
  const trackTensor = eng.trackTensor.bind(eng);
  eng.trackTensor = (a, backend) => {
    trackTensor(a, backend);
    if (active && eng.state.numBytes > active.peak) active.peak = eng.state.numBytes;
    if (active?.sampleRss) active.noteRss();
    // A kernel's output buffer exists by the time its tensor is tracked.
    if (active?.onGpu) active.gpuPeak = Math.max(active.gpuPeak, gpuBytes(tf)?.inUse ?? 0);
  };
  return (supported = true);
}

/**
 * Measures one adaptation step: `begin()`, run the step, `end()`. One probe is active at a time.
 * With `perLayer`, call `markLayers(model)` first so norm-layer forwards are located on the tape.
 */
export class MemoryProbe {
  peak = 0;
  gpuPeak = 0;
  onGpu = false;
  private start = 0;
  private gpuStart = 0;
  private account: TapeAccount | null = null;
  private backwards = 0;
  private recomputes: { bytes: number; inputBytes: number }[] = [];
  private marks: LayerMark[] = [];
  private layerResult: { preamble: number; layers: LayerMemory[]; weights: WeightLayerMemory[] } | null = null;
  /** Variable id → module path of the trainable non-norm parameters (`nameWeights`). */
  private weightOwners = new Map<number, string>();

  /** With `sampleRss`: the process RSS high-water during the step (sampled at every tensor allocation). */
  constructor(
    readonly perLayer = false,
    readonly sampleRss = false,
  ) {
    installMemoryHooks();
  }

  private rssPeak = 0;

  noteRss(): void {
    const r = process.memoryUsage.rss();
    if (r > this.rssPeak) this.rssPeak = r;
  }

  get supported(): boolean {
    return supported;
  }

  begin(): void {
    const eng = engine();
    this.start = this.peak = eng.state.numBytes;
    const gpu = gpuBytes(tf);
    this.onGpu = gpu !== null;
    this.gpuStart = this.gpuPeak = gpu?.inUse ?? 0;
    this.account = null;
    this.backwards = 0;
    this.recomputes = [];
    this.marks = [];
    this.layerResult = null;
    this.rssPeak = 0;
    if (this.sampleRss) this.noteRss();
    active = this;
  }

  end(): StepMemory {
    if (active === this) active = null;
    const out: StepMemory = {
      backpropBytes: supported ? (this.account?.backpropBytes ?? 0) : null,
      tapeBytes: supported ? (this.account?.tapeBytes ?? 0) : null,
      peakBytes: supported ? this.peak : null,
      startBytes: this.start,
      backwards: this.backwards,
    };
    if (this.recomputes.length) out.recomputes = this.recomputes;
    if (this.sampleRss) {
      this.noteRss();
      out.rssPeakBytes = this.rssPeak;
    }
    const heap = wasmHeapBytes();
    if (heap !== null) out.wasmHeapBytes = heap;
    const gpu = this.onGpu ? gpuBytes(tf) : null;
    if (gpu) {
      out.gpuPeakBytes = Math.max(this.gpuPeak, gpu.inUse);
      out.gpuStartBytes = this.gpuStart;
      out.gpuAllocatedBytes = gpu.allocated;
    }
    if (this.perLayer && this.layerResult) {
      out.preambleBytes = this.layerResult.preamble;
      out.layers = this.layerResult.layers;
      if (this.weightOwners.size > 0) out.weightLayers = this.layerResult.weights;
    }
    return out;
  }

  /** Called by the gradients hook with the complete forward tape. */
  onForwardEnd(tape: readonly TapeNodeLike[], xs: readonly tf.Tensor[], y: tf.Tensor): void {
    const acc = accountTape(tape, xs, y);
    this.backwards += acc.pathNodes > 0 ? 1 : 0;
    // Several gradient computations in one step: report the largest.
    if (!this.account || acc.backpropBytes >= this.account.backpropBytes) {
      this.account = acc;
      if (this.perLayer) {
        const split = attributeWeights(tape, acc.perNode, this.weightOwners);
        this.layerResult = { ...attribute(split.rest, this.marks), weights: split.weights };
      }
    }
    this.marks = [];
  }

  /** Called by the gradients hook with the tape of a checkpointed segment's recomputation. */
  onRecomputeEnd(tape: readonly TapeNodeLike[], xs: readonly tf.Tensor[], y: tf.Tensor): void {
    const acc = accountTape(tape, xs, y);
    const input = xs[0]?.dataId as object | undefined;
    let inputBytes = 0;
    const seen = new Set<object>();
    const onPath = backwardPath(tape, xs, y);
    tape.forEach((node, i) => {
      if (!onPath[i]) return;
      for (const t of node.saved ?? []) {
        if (t.isDisposed || t.dataId !== input || seen.has(t.dataId as object)) continue;
        seen.add(t.dataId as object);
        inputBytes += tensorBytes(t);
      }
    });
    this.recomputes.push({ bytes: acc.backpropBytes, inputBytes });
    this.marks = [];
  }

  /**
   * Names the trainable conv / linear / embedding parameters (`Classifier.parameters()` entries)
   * so that the per-layer breakdown gives each its own bytes. Call after the trainable set is
   * chosen (variables are replaced when a layer switches); norm affines are ignored (`markLayers`).
   */
  nameWeights(params: readonly { name: string; kind: string; requiresGrad: boolean; variable: tf.Variable | null }[]): void {
    this.weightOwners = new Map();
    for (const p of params) {
      if (p.kind === 'norm' || !p.requiresGrad || !p.variable) continue;
      const dot = p.name.lastIndexOf('.');
      this.weightOwners.set(p.variable.id, dot < 0 ? '' : p.name.slice(0, dot));
    }
  }

  /** Records where a norm layer's op lands on the tape (only while a tape records). */
  mark(name: string, shape: number[], start: number, end: number): void {
    if (active === this) this.marks.push({ name, shape, start, end });
  }

  /**
   * Wraps `apply` of every norm layer that has one so that its tape position is recorded. Returns
   * the function that removes the wrappers.
   */
  markLayers(layers: readonly object[]): () => void {
    const undo: (() => void)[] = [];
    for (const layer of layers) {
      const l = layer as { name?: string; apply?: (x: tf.Tensor) => tf.Tensor };
      const own = Object.prototype.hasOwnProperty.call(l, 'apply');
      const orig = l.apply;
      if (typeof orig !== 'function') continue;
      const name = l.name ?? '?';
      l.apply = (x: tf.Tensor) => {
        const tape = tf.engine().isTapeOn() ? engine().state.activeTape : null;
        const start = tape ? tape.length : 0;
        const y = orig.call(l, x);
        if (tape && engine().state.activeTape === tape) this.mark(name, x.shape.slice(), start, tape.length);
        return y;
      };
      undo.push(() => {
        if (own) l.apply = orig;
        else delete l.apply;
      });
    }
    return () => undo.forEach((u) => u());
  }
}

/**
 * Takes the bytes of the tape nodes that consume a named weight variable out of `perNode`: one
 * entry per module, in tape (forward) order; `rest` is `perNode` without them.
 */
function attributeWeights(
  tape: readonly TapeNodeLike[],
  perNode: readonly number[],
  owners: ReadonlyMap<number, string>,
): { weights: WeightLayerMemory[]; rest: number[] } {
  const rest = perNode.slice();
  const byName = new Map<string, WeightLayerMemory>();
  if (owners.size === 0) return { weights: [], rest };
  tape.forEach((node, i) => {
    const inputs = Object.values(node.inputs);
    const owner = inputs.map((t) => owners.get(t.id)).find((n) => n !== undefined);
    if (owner === undefined) return;
    let entry = byName.get(owner);
    if (!entry) {
      const other = inputs.find((t) => !owners.has(t.id));
      entry = { name: owner, shape: other ? other.shape.slice() : [], bytes: 0 };
      byName.set(owner, entry);
    }
    entry.bytes += rest[i];
    rest[i] = 0;
  });
  return { weights: [...byName.values()], rest };
}

/** Splits per-node bytes into the norm layers' own ops and the stretches after each. */
function attribute(perNode: readonly number[], marks: readonly LayerMark[]): { preamble: number; layers: LayerMemory[] } {
  const sum = (a: number, b: number) => {
    let s = 0;
    for (let i = Math.max(0, a); i < Math.min(b, perNode.length); i++) s += perNode[i];
    return s;
  };
  const layers = marks.map((m, i) => ({
    name: m.name,
    shape: m.shape,
    normBytes: sum(m.start, m.end),
    afterBytes: sum(m.end, i + 1 < marks.length ? marks[i + 1].start : perNode.length),
  }));
  return { preamble: marks.length ? sum(0, marks[0].start) : sum(0, perNode.length), layers };
}

/** The WASM backend's heap size in bytes (null on other backends or without the internals). */
export function wasmHeapBytes(): number | null {
  if (tf.getBackend() !== 'wasm') return null;
  const wasm = (tf.backend() as unknown as { wasm?: { wasmMemory?: WebAssembly.Memory; asm?: { memory?: WebAssembly.Memory } } }).wasm;
  const memory = wasm?.wasmMemory ?? wasm?.asm?.memory;
  return memory ? memory.buffer.byteLength : null;
}

/** The process-wide probe used by the continual runner (no per-layer breakdown). */
let shared: MemoryProbe | null = null;
export function runnerProbe(): MemoryProbe {
  shared ??= new MemoryProbe(false);
  return shared;
}

/** Per-batch measured fields of batches.jsonl (MB = 1e6 bytes; absent when unmeasurable). */
export interface MeasuredBatchFields {
  measured_backprop_mb?: number;
  measured_peak_mb?: number;
  /** webgpu: the step's peak live GPU buffer bytes. */
  measured_gpu_peak_mb?: number;
}

/** Per-domain measured fields of summary.json. */
export interface MeasuredDomainFields {
  measured_max_backprop_mb?: number | null;
  measured_avg_backprop_mb?: number | null;
  measured_max_peak_mb?: number | null;
  /** webgpu only. */
  measured_max_gpu_peak_mb?: number | null;
}

/** Collects one domain's measured figures for the continual runner. */
export class MeasuredDomain {
  private readonly backprop: number[] = [];
  private readonly peak: number[] = [];
  private readonly gpuPeak: number[] = [];

  /** Records one step and returns its batches.jsonl fields. */
  add(mem: StepMemory | null): MeasuredBatchFields {
    if (!mem || mem.backpropBytes === null || mem.peakBytes === null) return {};
    this.backprop.push(mem.backpropBytes / MB);
    this.peak.push(mem.peakBytes / MB);
    const out: MeasuredBatchFields = { measured_backprop_mb: mem.backpropBytes / MB, measured_peak_mb: mem.peakBytes / MB };
    if (mem.gpuPeakBytes !== undefined) {
      this.gpuPeak.push(mem.gpuPeakBytes / MB);
      out.measured_gpu_peak_mb = mem.gpuPeakBytes / MB;
    }
    return out;
  }

  summary(): MeasuredDomainFields {
    if (this.backprop.length === 0) return {};
    return {
      measured_max_backprop_mb: Math.max(...this.backprop),
      measured_avg_backprop_mb: this.backprop.reduce((a, v) => a + v, 0) / this.backprop.length,
      measured_max_peak_mb: Math.max(...this.peak),
      ...(this.gpuPeak.length ? { measured_max_gpu_peak_mb: Math.max(...this.gpuPeak) } : {}),
    };
  }
}
