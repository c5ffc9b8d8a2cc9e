/**
 * The continual loop (docs/protocol.md#stream): every domain in order on one model and method
 * state, never reset between domains, each batch predicted from the forward before its update.
 * The next domain decodes while the current one adapts.
 */
import { tf } from '../tf.js';
import { batchOrder, openDomain, type DomainStream } from '../data/stream.js';
import { MeasuredDomain, type StepMemory } from '../memory/probe.js';
import type { StepResult } from '../algorithms/types.js';
import { domainProgress } from './progress.js';
import { DomainTally, domainExtras, domainResult, recordBatch, recordDomain } from './record.js';
import type { RunControl } from './control.js';
import type { PreparedRun } from './prepare.js';

/** Runs the domains from `run.first` to the end, recording each as it finishes. */
export async function runDomains(run: PreparedRun, control: RunControl): Promise<void> {
  const { cfg, source } = run;
  const { hooks, position } = control;
  // openDomain: in-memory sets load whole domains; streaming ones (ImageNet-C) list files here and
  // decode batch by batch below.
  let next = openDomain(source, source.names[run.first]);
  for (let di = run.first; di < source.names.length; di++) {
    const name = source.names[di];
    position.current = { index: di + 1, name };
    control.stopIfAsked();
    const domain = await next;
    // Decode the next domain while this one adapts (no data stall at domain boundaries).
    if (di + 1 < source.names.length) {
      next = openDomain(source, source.names[di + 1]);
      // Handled here so a failure surfaces as its CtaError when awaited, not as an unhandled rejection.
      next.catch(() => undefined);
    }
    const label = `${hooks.label ? hooks.label + ' ' : ''}[${di + 1}/${source.names.length}] ${name}`;
    const tally = await adaptDomain(run, control, domain, name, label);
    const result = domainResult(run, tally);
    position.finished = di + 1;
    position.current = null;
    await recordDomain(run, di, result);
    if (cfg.progress !== 'bar' && cfg.progress !== 'none' && !(cfg.progress === 'auto' && process.stdout.isTTY)) {
      hooks.log(`${label} error ${result.error.toFixed(2)}% (${tally.seen} images, ${result.img_per_s} img/s)${domainExtras(run, result)}`);
    }
  }
}

/** One domain: every batch through the method's step, each recorded as it is predicted. */
async function adaptDomain(run: PreparedRun, control: RunControl, domain: DomainStream, name: string, label: string): Promise<DomainTally> {
  const { cfg, alg, probe } = run;
  const order = batchOrder(domain.n, cfg.shuffle, run.rngs.shuffle);
  run.orders.push({ name, severity: domain.severity, order });
  const progress = domainProgress(cfg.progress, label, Math.ceil(order.length / cfg.batchSize), control.hooks.log);
  const measured = new MeasuredDomain();
  const tally = new DomainTally(name, domain.severity, measured, Object.keys(run.spec.metrics ?? {}));
  for await (const b of domain.batches(order, cfg.batchSize)) {
    const n = b.y.length;
    const tb = performance.now();
    const x = tf.tensor4d(b.x, [n, domain.height, domain.width, domain.channels]);
    let pred: Int32Array;
    let res: StepResult;
    let mem: StepMemory | null = null;
    try {
      probe.begin();
      try {
        res = alg.step(x);
      } finally {
        mem = probe.end();
      }
      const am = tf.argMax(res.logits, 1);
      pred = (await am.data()) as Int32Array;
      am.dispose();
      res.logits.dispose();
    } finally {
      x.dispose();
    }
    let c = 0;
    for (let i = 0; i < n; i++) if (pred[i] === b.y[i]) c++;
    recordBatch(run, tally, n, c, res, measured.add(mem), tb);
    // The lines of an unfinished domain are dropped by --resume, which re-runs it from the
    // checkpoint. A bar is closed first: it hides the terminal's cursor while it runs.
    if (control.requested()) {
      progress.stop();
      control.stopIfAsked();
    }
    const secs = (performance.now() - tally.started) / 1000;
    progress.update(tally.batches, tally.seen, (100 * (tally.seen - tally.correct)) / tally.seen, tally.seen / secs);
  }
  progress.stop();
  return tally;
}
