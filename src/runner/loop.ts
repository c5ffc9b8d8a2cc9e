/**
 * The continual loop (docs/protocol.md#stream): every step of the stream (a domain, at a severity,
 * in a round: src/data/settings.ts, docs/protocol.md#settings) in order on one model and method
 * state, reset only where the setting says (reset-each-shift), each batch predicted from the
 * forward before its update. The next step decodes while the current one adapts.
 */
import { tf } from '../tf.js';
import { batchOrder, openDomain, type DomainStream, type FingerprintEntry } from '../data/stream.js';
import { loadMixed, sortByDirichlet, type MixedDomain, type StreamStep } from '../data/settings.js';
import { CtaError } from '../util/errors.js';
import { MeasuredDomain, type StepMemory } from '../memory/probe.js';
import type { StepResult } from '../algorithms/types.js';
import { PASSES, type PassCounts } from './pass-count.js';
import { domainProgress } from './progress.js';
import { DomainTally, domainExtras, domainResult, recordBatch, recordDomain } from './record.js';
import type { RunControl } from './control.js';
import type { PreparedRun } from './prepare.js';
import { planStepFields, planTagParts, restartRngs } from './plan.js';
import { adaptTestCases } from './group-eval.js';

/** Runs the domains from `run.first` to the end, recording each as it finishes. */
export async function runDomains(run: PreparedRun, control: RunControl): Promise<void> {
  const { cfg, steps } = run;
  const { hooks, position } = control;
  // openDomain: in-memory sets load whole domains; streaming ones (ImageNet-C) list files here and
  // decode batch by batch below.
  const open = (s: StreamStep): Promise<DomainStream> => (s.parts ? loadMixed(run.source, s.parts) : openDomain(run.sourceAt(s.severity), s.domain));
  let next = open(steps[run.first]);
  // Forgetting (src/runner/forgetting.ts): the evaluated sets before any adaptation.
  if (run.interleave && run.first === 0) {
    const evals = await run.interleave.evaluate(-1);
    if (evals.length) logEval(run, control, -1, evals);
  }
  for (let di = run.first; di < steps.length; di++) {
    const step = steps[di];
    const name = step.domain;
    position.current = { index: di + 1, name };
    control.stopIfAsked();
    const domain = await next;
    // Decode the next domain while this one adapts (no data stall at domain boundaries).
    if (di + 1 < steps.length) {
      next = open(steps[di + 1]);
      // Handled here so a failure surfaces as its CtaError when awaited, not as an unhandled rejection.
      next.catch(() => undefined);
    }
    // reset-each-shift: model, optimizer and method state back to their configure-time snapshot.
    if (step.reset) run.alg.reset();
    // --domain-orders: every order after the first starts as a fresh run would (src/runner/plan.ts).
    if (step.restart) restartRngs(run);
    const where = `${step.severity !== null ? ` severity ${step.severity}` : ''}${step.round !== null ? ` round ${step.round}` : ''}${step.order !== undefined ? ` order ${step.order}` : ''}${step.previous !== undefined ? ` after ${step.previous}` : ''}`;
    const label = `${hooks.label ? hooks.label + ' ' : ''}[${di + 1}/${steps.length}] ${name}${where}`;
    const tally = await adaptDomain(run, control, domain, step, label);
    const result = { ...domainResult(run, tally), ...stepFields(step), ...planStepFields(step) };
    // After the step, before its checkpoint: a resumed run does not evaluate this point again.
    const evals = run.interleave ? await run.interleave.evaluate(di) : null;
    position.finished = di + 1;
    position.current = null;
    await recordDomain(run, di, result);
    if (evals) logEval(run, control, di, evals);
    if (cfg.progress !== 'bar' && cfg.progress !== 'none' && !(cfg.progress === 'auto' && process.stdout.isTTY)) {
      hooks.log(`${label} error ${result.error.toFixed(2)}% (${tally.seen} images, ${result.img_per_s} img/s)${domainExtras(run, result)}`);
    }
  }
}

/** The plain-mode line of one evaluation point (--interleave-clean). */
function logEval(run: PreparedRun, control: RunControl, di: number, evals: { key: string; acc: number }[]): void {
  const { cfg } = run;
  if (cfg.progress === 'bar' || cfg.progress === 'none' || (cfg.progress === 'auto' && process.stdout.isTTY)) return;
  const where = di < 0 ? 'before the first step' : `after step ${di + 1}/${run.steps.length}`;
  const shown = evals.slice(0, 4).map((e) => `${e.key} ${e.acc.toFixed(2)}%`).join(', ');
  control.hooks.log(`${control.hooks.label ? control.hooks.label + ' ' : ''}  eval ${where}: accuracy ${shown}${evals.length > 4 ? ` (+${evals.length - 4} sets)` : ''}`);
}

/** One domain: every batch through the method's step, each recorded as it is predicted. */
async function adaptDomain(run: PreparedRun, control: RunControl, domain: DomainStream, step: StreamStep, label: string): Promise<DomainTally> {
  const { cfg, alg, probe } = run;
  const name = step.domain;
  let order = batchOrder(domain.n, cfg.shuffle, run.rngs.shuffle);
  if (run.setting.correlated) {
    if (!domain.labels) throw new CtaError(`--setting ${cfg.setting}: --data ${cfg.data} does not give the labels before decoding, which the correlated order needs`);
    // After the shuffle, as mariodoebler sorts its shuffled sample list (src/data/settings.ts).
    order = sortByDirichlet(order, domain.labels, cfg.dirichletDelta ?? 0, run.rngs.shuffle);
  }
  if (cfg.iters !== null) order = order.slice(0, (cfg.iters + 1) * cfg.batchSize); // MECTA's --iters k: batches 0…k
  const tag = stepTag(run, step);
  const entry: FingerprintEntry = { name, severity: domain.severity, order, ...(tag !== undefined ? { tag } : {}) };
  run.orders.push(entry);
  // MECTA's group / pair modes: test cases of support batches + one test batch (src/runner/group-eval.ts).
  if (cfg.evalMode !== 'continual') return adaptTestCases(run, control, domain, step, label, order, entry);
  const progress = domainProgress(cfg.progress, label, Math.ceil(order.length / cfg.batchSize), control.hooks.log);
  const measured = new MeasuredDomain();
  const tally = new DomainTally(name, domain.severity, measured, Object.keys(run.spec.metrics ?? {}));
  const partOf = 'partOf' in domain ? (domain as MixedDomain).partOf : null;
  if (partOf) tally.parts = (domain as MixedDomain).parts.map((p) => ({ domain: p.name, severity: p.severity, n: 0, correct: 0 }));
  tally.extra = { ...(run.setting.gradual ? { severity: domain.severity } : {}), ...(step.round !== null ? { round: step.round } : {}) };
  for await (const b of domain.batches(order, cfg.batchSize)) {
    const n = b.y.length;
    const tb = performance.now();
    const x = tf.tensor4d(b.x, [n, domain.height, domain.width, domain.channels]);
    let pred: Int32Array;
    let res: StepResult;
    let mem: StepMemory | null = null;
    let passes: PassCounts;
    try {
      PASSES.take(); // anything between batches is not this step's
      probe.begin();
      try {
        res = alg.step(x);
      } finally {
        mem = probe.end();
      }
      passes = PASSES.take();
      const am = tf.argMax(res.logits, 1);
      pred = (await am.data()) as Int32Array;
      am.dispose();
      res.logits.dispose();
    } finally {
      x.dispose();
    }
    let c = 0;
    for (let i = 0; i < n; i++) if (pred[i] === b.y[i]) c++;
    if (partOf) {
      for (let i = 0; i < n; i++) {
        const p = tally.parts![partOf[b.indices[i]]];
        p.n++;
        if (pred[i] === b.y[i]) p.correct++;
      }
    }
    recordBatch(run, tally, n, c, res, measured.add(mem), tb, passes);
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

/** What a step adds to its summary entry: its round (recurring) and reset flag (reset-each-shift). */
function stepFields(step: StreamStep): { round?: number; reset?: boolean } {
  return { ...(step.round !== null ? { round: step.round } : {}), ...(step.reset ? { reset: true } : {}) };
}

/**
 * The stream fingerprint's record of what the setting, --domain-orders, --eval-mode and --iters
 * decided for a step (src/data/stream.ts, src/runner/plan.ts); none for a plain continual run.
 */
function stepTag(run: PreparedRun, step: StreamStep): string | undefined {
  const { cfg } = run;
  const tag = cfg.setting === 'continual' ? [] : [`setting=${cfg.setting}`, `round=${step.round ?? ''}`, `reset=${step.reset ? 1 : 0}`, `delta=${run.setting.correlated ? (cfg.dirichletDelta ?? 0) : ''}`];
  // mixed: which domains were pooled, at which severity (the pooled step itself has none).
  if (step.parts) tag.push(`parts=${step.parts.join(',')}`, `severity=${cfg.severity}`);
  tag.push(...planTagParts(cfg, step));
  return tag.length ? tag.join(';') : undefined;
}
