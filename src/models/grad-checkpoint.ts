/**
 * Gradient checkpointing per stage (docs/memory.md#gradient-checkpointing), MECTA's
 * `--layer_grad_chkpt_segment` (its models/checkpoint.py, after torch.utils.checkpoint's
 * checkpoint_sequential): the blocks of each stage are cut into S segments of floor(B/S) blocks;
 * the first S − 1 segments are checkpointed, the last (the remaining blocks) runs as usual. A
 * checkpointed segment keeps only its input in the forward; its blocks run once without a tape and
 * are recomputed in the backward, under their own tape, to get the gradient with respect to the
 * segment input and the segment's trainable variables.
 *
 * The recomputation must not change any state a second time: it runs with the norm layers
 * side-effect free (withoutSideEffects, norm-policy.ts). For the modes whose forward updates
 * statistics ('mecta', 'train-update', 'ema') it also has to normalise from the statistics the
 * first forward started from, so their values before and after the segment are kept (per-channel
 * vectors) and swapped in for the recomputation. MECTA's channel pruning draws the cached channels
 * once per forward, which a recomputation cannot replay: checkpointing refuses --prune-q > 0.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { CheckpointScope, GradCheckpointControl, ModelParameter, NormLayer, NormMode } from './types.js';
import { customOp } from './ops/custom-op.js';
import { withoutSideEffects } from './norm-policy.js';
import { duringRecompute } from '../memory/probe.js';

/** What the checkpointing reads from its model. */
export interface CheckpointHost {
  readonly normLayers: readonly NormLayer[];
  readonly normMode: NormMode;
  readonly mectaOptions: { pruneQ: number } | null;
  parameters(): readonly ModelParameter[];
}

let forwardDepth = 0;

/** > 0 inside a checkpointed segment's first forward (no tape: flops.ts counts no backward there). */
export function checkpointForwardDepth(): number {
  return forwardDepth;
}

/** Modes whose forward changes the norm statistics (their recomputation starts from the old ones). */
const STATEFUL: ReadonlySet<NormMode> = new Set(['mecta', 'train-update', 'ema']);

/**
 * The segments of one stage of `blocks` blocks for S segments, as [start, end) block ranges, each
 * with whether it is checkpointed: checkpoint_sequential's split (segment size floor(B/S), the
 * last segment takes the rest and is not checkpointed). S is capped at B (every block but the
 * last is its own segment); S = 1 is one plain segment.
 */
export function stageSegments(blocks: number, segments: number): { start: number; end: number; checkpointed: boolean }[] {
  const s = Math.max(1, Math.min(segments, blocks));
  const size = Math.floor(blocks / s);
  const out: { start: number; end: number; checkpointed: boolean }[] = [];
  let start = 0;
  for (let k = 0; k < s - 1; k++, start += size) out.push({ start, end: start + size, checkpointed: true });
  out.push({ start, end: blocks, checkpointed: false });
  return out;
}

/** Per norm layer of a segment: its statistics before and after the segment's forward. */
interface Stats {
  mean: Float32Array;
  variance: Float32Array;
  pastSize: number;
}

interface StatsSwap {
  layer: NormLayer;
  before: Stats;
  after: Stats;
}

/** Copies (read back: no tensor outlives a step whose backward never runs). */
function readStats(l: NormLayer): Stats {
  return { mean: Float32Array.from(l.runningMean!.dataSync()), variance: Float32Array.from(l.runningVar!.dataSync()), pastSize: l.pastSize };
}

function writeStats(l: NormLayer, s: Stats): void {
  tf.tidy(() => {
    l.runningMean!.assign(tf.tensor1d(s.mean));
    l.runningVar!.assign(tf.tensor1d(s.variance));
  });
  l.pastSize = s.pastSize;
}

/**
 * A model's checkpointing switch and its stage layout. `prefixes[i]` is block i's module path
 * (its parameters and norm layers are named `<prefix>.…`); `stages` are the blocks per stage, in
 * order, summing to the block count.
 */
export class GradCheckpoint implements GradCheckpointControl {
  private s = 1;
  scope: CheckpointScope = 'stage';
  /** Bytes of the inputs of the checkpointed segments in the last taped forward (float32). */
  lastInputBytes = 0;
  /** Checkpointed segments in the last taped forward. */
  lastSegments = 0;

  constructor(
    private readonly host: CheckpointHost,
    readonly stageBlocks: readonly number[],
    private readonly prefixes: readonly string[],
  ) {}

  get segments(): number {
    return this.s;
  }

  set segments(value: number) {
    if (!Number.isInteger(value) || value < 1) throw new CtaError(`--grad-checkpoint-segments: expected a positive integer, got ${value}`);
    this.s = value;
  }

  /**
   * Runs every block on `h` in order (`run` is one block's forward), stage by stage, with the
   * checkpointed segments as single ops when a tape records and S > 1. Disposes each block input
   * once the next block has run, as the models' own loops do (`h` too when `owned`).
   */
  run<B, H extends tf.Tensor>(blocks: readonly B[], h: H, run: (b: B, x: H) => H, owned = false): H {
    const plain = (from: number, to: number, x: H, owned: boolean): H => {
      let cur = x;
      for (let i = from; i < to; i++) {
        const next = tf.tidy(() => run(blocks[i], cur));
        // Free the block input early (inference peak memory); a tape keeps its own saved copies.
        if (owned || cur !== x) cur.dispose();
        cur = next;
      }
      return cur;
    };
    const taped = tf.engine().isTapeOn();
    if (this.s === 1 || !taped) return plain(0, blocks.length, h, owned);
    if (this.host.normMode === 'mecta' && (this.host.mectaOptions?.pruneQ ?? 0) > 0) {
      throw new CtaError('--grad-checkpoint-segments: MECTA channel pruning (--prune-q > 0) draws the cached channels once per forward, which a recomputed segment cannot replay; use --prune-q 0 or --grad-checkpoint-segments 1');
    }
    this.lastInputBytes = 0;
    this.lastSegments = 0;
    let cur = h;
    let base = 0;
    // scope 'model': the whole body is one sequence (docs/memory.md#gradient-checkpointing)
    const stages = this.scope === 'model' ? [this.stageBlocks.reduce((a, b) => a + b, 0)] : this.stageBlocks;
    for (const count of stages) {
      for (const seg of stageSegments(count, this.s)) {
        const from = base + seg.start;
        const to = base + seg.end;
        if (!seg.checkpointed) {
          const next = plain(from, to, cur, owned);
          owned = owned || next !== cur;
          cur = next;
          continue;
        }
        const next = this.segment(blocks, from, to, cur, run);
        if (owned) cur.dispose();
        cur = next;
        owned = true;
      }
      base += count;
    }
    return cur;
  }

  /** One checkpointed segment [from, to) as a single op with inputs (x, its trainable variables). */
  private segment<B, H extends tf.Tensor>(blocks: readonly B[], from: number, to: number, x: H, run: (b: B, x: H) => H): H {
    const pre = this.prefixes.slice(from, to).map((p) => `${p}.`);
    const inSegment = (name: string) => pre.some((p) => name.startsWith(p));
    const vars: tf.Variable[] = [];
    const seen = new Set<number>();
    for (const p of this.host.parameters()) {
      if (!p.requiresGrad || !p.variable || !inSegment(p.name) || seen.has(p.variable.id)) continue;
      seen.add(p.variable.id);
      vars.push(p.variable);
    }
    const stateful = STATEFUL.has(this.host.normMode);
    const norms = this.host.normLayers.filter((l) => inSegment(l.name) && l.runningMean && l.runningVar);
    const swaps: StatsSwap[] = [];
    const forward = (input: H): H => {
      let cur = input;
      for (let i = from; i < to; i++) {
        // a block's temporaries die with it (under the recomputation's tape, what its backward
        // needs is kept as the tape's saved tensors)
        const next = tf.tidy(() => run(blocks[i], cur));
        if (cur !== input) cur.dispose();
        cur = next;
      }
      return cur;
    };
    this.lastInputBytes += x.size * 4;
    this.lastSegments++;
    const op = customOp<H>(([xi], save) => {
      const before = stateful ? norms.map(readStats) : [];
      // The tape is paused inside a custom op: the blocks keep nothing for the backward.
      forwardDepth++;
      let y: H;
      try {
        y = forward(xi as H);
      } finally {
        forwardDepth--;
      }
      if (stateful) norms.forEach((layer, i) => swaps.push({ layer, before: before[i], after: readStats(layer) }));
      save([xi]);
      return {
        value: y,
        gradFunc: (dy, [xs]) => {
          const inputs = [xs, ...vars];
          const eng = tf.engine() as unknown as { state: { activeTape: unknown } };
          const outer = eng.state.activeTape;
          // A nested tape of its own: the engine's backward has already filtered the outer tape,
          // and a nested gradients() would otherwise replace and then clear it.
          eng.state.activeTape = null;
          for (const s of swaps) writeStats(s.layer, s.before);
          try {
            const { value, grads } = duringRecompute(() =>
              withoutSideEffects(this.host, () => tf.engine().gradients(() => forward(xs as H), inputs, dy, true)),
            );
            value.dispose();
            // A variable the recomputed loss does not reach (a fully matched MECTA layer) gets a
            // zero: customGrad needs a tensor per input; the adapter masks matched layers anyway.
            return grads.map((g, i) => g ?? tf.zerosLike(inputs[i]));
          } finally {
            for (const s of swaps) writeStats(s.layer, s.after);
            eng.state.activeTape = outer;
          }
        },
      };
    });
    return op(x, ...vars);
  }
}
