/**
 * MECTA's `group` and `pair` evaluation (its `utils/eval.py` group_validate; docs/protocol.md#eval-modes):
 * one step of the stream is a series of test cases, one per test batch of the step's domain. A test
 * case adapts on its support batches (src/data/eval-modes.ts `supportParts`), then predicts the
 * test batch (the forward before that batch's own update, as every step here) and resets the
 * method. Only the test batches are scored; the support batches' accuracy is kept apart.
 */
import { createHash, type Hash } from 'node:crypto';
import { tf } from '../tf.js';
import { batchOrder, openDomain, type Batch, type DomainStream, type FingerprintEntry } from '../data/stream.js';
import { supportParts } from '../data/eval-modes.js';
import type { StreamStep } from '../data/settings.js';
import type { StepResult } from '../algorithms/types.js';
import { MeasuredDomain, type StepMemory } from '../memory/probe.js';
import { PASSES, type PassCounts } from './pass-count.js';
import { domainProgress } from './progress.js';
import { DomainTally, recordBatch } from './record.js';
import type { RunControl } from './control.js';
import type { PreparedRun } from './prepare.js';

/**
 * `count` support batches of `stream`, as MECTA draws them: a fresh iterator of a shuffled loader
 * for every test case (a new permutation from the stream generator), its first batches in turn,
 * and a new permutation when it runs out (so a small domain wraps around; the last batch of a pass
 * may be smaller). The indices go into `hash` (the step's fingerprint tag).
 */
async function* supportBatches(run: PreparedRun, stream: DomainStream, count: number, hash: Hash): AsyncGenerator<Batch> {
  const { batchSize, shuffle } = run.cfg;
  let left = count;
  while (left > 0 && stream.n > 0) {
    const perm = batchOrder(stream.n, shuffle, run.rngs.shuffle);
    const take = perm.slice(0, Math.min(perm.length, left * batchSize));
    hash.update(`${stream.name}\0${take.length}\0`);
    hash.update(new Uint8Array(take.buffer, take.byteOffset, take.byteLength));
    for await (const b of stream.batches(take, batchSize)) {
      left--;
      yield b;
    }
  }
}

function argmaxCorrect(logits: tf.Tensor2D, y: Int32Array): Promise<number> {
  const am = tf.argMax(logits, 1);
  return am.data().then((p) => {
    am.dispose();
    let c = 0;
    for (let i = 0; i < y.length; i++) if (p[i] === y[i]) c++;
    return c;
  });
}

/**
 * The test cases of one step: `order` gives its test batches, `entry` is its fingerprint entry
 * (the support draws are appended to its tag as a digest).
 */
export async function adaptTestCases(
  run: PreparedRun,
  control: RunControl,
  domain: DomainStream,
  step: StreamStep,
  label: string,
  order: Int32Array,
  entry: FingerprintEntry,
): Promise<DomainTally> {
  const { cfg, alg, probe } = run;
  const parts = supportParts(step, cfg);
  // The current domain's support comes from its own stream (MECTA: a second loader of the same
  // domain, shuffled independently); pair mode's previous domain is opened here.
  const streams = await Promise.all(parts.map((p) => (p.domain === step.domain ? domain : openDomain(run.sourceAt(step.severity), p.domain))));
  const hash = createHash('sha256');
  const progress = domainProgress(cfg.progress, label, Math.ceil(order.length / cfg.batchSize), control.hooks.log);
  const measured = new MeasuredDomain();
  const tally = new DomainTally(step.domain, domain.severity, measured, Object.keys(run.spec.metrics ?? {}));
  tally.support = { batches: 0, n: 0, correct: 0 };
  const shape = (n: number, s: DomainStream): [number, number, number, number] => [n, s.height, s.width, s.channels];
  for await (const b of domain.batches(order, cfg.batchSize)) {
    const n = b.y.length;
    const tb = performance.now();
    PASSES.take(); // anything between test cases is not this one's
    let supN = 0;
    let supCorrect = 0;
    let supBatches = 0;
    const merged: Batch[] = [];
    for (let k = 0; k < parts.length; k++) {
      for await (const sb of supportBatches(run, streams[k], parts[k].batches, hash)) {
        supBatches++;
        if (cfg.mergeBatches) {
          merged.push(sb);
          continue;
        }
        const sx = tf.tensor4d(sb.x, shape(sb.y.length, streams[k]));
        let r: StepResult;
        try {
          r = alg.step(sx);
        } finally {
          sx.dispose();
        }
        supCorrect += await argmaxCorrect(r.logits, sb.y);
        r.logits.dispose();
        supN += sb.y.length;
      }
    }
    // merge: the support batches and the test batch as one batch, the test batch's rows last
    // (MECTA's torch.cat(batch_list + [images]) and output[-pred_len:]).
    const rows = merged.reduce((a, m) => a + m.y.length, 0);
    let xData = b.x;
    if (merged.length) {
      xData = new Float32Array((rows + n) * (b.x.length / n));
      let at = 0;
      for (const m of [...merged, b]) {
        xData.set(m.x, at);
        at += m.x.length;
      }
    }
    const x = tf.tensor4d(xData, shape(rows + n, domain));
    let res: StepResult;
    let mem: StepMemory | null = null;
    let c = 0;
    let passes: PassCounts;
    try {
      probe.begin();
      try {
        res = alg.step(x);
      } finally {
        mem = probe.end();
      }
      passes = PASSES.take();
      if (merged.length) {
        const [sup, test] = tf.split(res.logits, [rows, n], 0) as [tf.Tensor2D, tf.Tensor2D];
        let offset = 0;
        const ys = new Int32Array(rows);
        for (const m of merged) {
          ys.set(m.y, offset);
          offset += m.y.length;
        }
        supCorrect += await argmaxCorrect(sup, ys);
        supN += rows;
        c = await argmaxCorrect(test, b.y);
        tf.dispose([sup, test]);
      } else {
        c = await argmaxCorrect(res.logits, b.y);
      }
      res.logits.dispose();
    } finally {
      x.dispose();
    }
    tally.support.batches += supBatches;
    tally.support.n += supN;
    tally.support.correct += supCorrect;
    tally.extra = { ...(step.previous !== undefined ? { previous: step.previous } : {}), support_batches: supBatches, support_n: supN, support_correct: supCorrect };
    recordBatch(run, tally, n, c, res, measured.add(mem), tb, passes);
    // MECTA resets after every test case (reset_all: model, optimizer, MECTA layer state).
    alg.reset();
    if (control.requested()) {
      progress.stop();
      control.stopIfAsked();
    }
    const secs = (performance.now() - tally.started) / 1000;
    progress.update(tally.batches, tally.seen, (100 * (tally.seen - tally.correct)) / tally.seen, tally.seen / secs);
  }
  progress.stop();
  entry.tag = [entry.tag, `support_sha256=${hash.digest('hex')}`].filter(Boolean).join(';');
  return tally;
}
