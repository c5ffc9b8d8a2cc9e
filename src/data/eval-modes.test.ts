import { describe, it, expect } from 'vitest';
import { CtaError } from '../util/errors.js';
import { CORRUPTIONS_15 } from './stream.js';
import { checkEvalModeOptions, evalModeSteps, evalModeSummary, streamCorruptions, supportParts, type EvalModeOptions } from './eval-modes.js';
import { streamSteps } from './settings.js';

const base: EvalModeOptions = {
  evalMode: 'continual',
  supportBatch: null,
  mergeBatches: false,
  curBatch: null,
  setting: 'continual',
  domainOrders: null,
  corruptions: [...CORRUPTIONS_15],
  cleanLast: true,
  corruptionSet: 'custom',
};

function refused(o: Partial<EvalModeOptions>): string {
  try {
    checkEvalModeOptions({ ...base, ...o });
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as CtaError).exitCode).toBe(2);
    return (e as CtaError).message;
  }
  throw new Error(`accepted ${JSON.stringify(o)}`);
}

describe('corruption sets (MECTA --test_corrupt)', () => {
  it('std, arm and org are MECTA lists; custom is --corruptions / --clean-last', () => {
    expect(streamCorruptions({ ...base, corruptionSet: 'std' })).toEqual({ corruptions: [...CORRUPTIONS_15], cleanLast: true });
    expect(streamCorruptions({ ...base, corruptionSet: 'arm' })).toEqual({ corruptions: ['impulse_noise', 'motion_blur', 'fog', 'elastic_transform'], cleanLast: false });
    expect(streamCorruptions({ ...base, corruptionSet: 'org' })).toEqual({ corruptions: [], cleanLast: true });
    expect(streamCorruptions({ ...base, corruptions: ['fog'], cleanLast: false })).toEqual({ corruptions: ['fog'], cleanLast: false });
  });

  it('refuses a set together with --corruptions or --no-clean-last', () => {
    expect(refused({ corruptionSet: 'arm', corruptions: ['fog'] })).toMatch(/--corruption-set arm sets the domains itself/);
    expect(refused({ corruptionSet: 'std', cleanLast: false })).toMatch(/--corruption-set std/);
  });
});

describe('eval-mode options', () => {
  it('accepts the MECTA combinations', () => {
    for (const o of [{}, { evalMode: 'group', supportBatch: 1 }, { evalMode: 'group', supportBatch: 4, mergeBatches: true }, { evalMode: 'pair', supportBatch: 3, curBatch: 2 }, { evalMode: 'pair', supportBatch: 2 }] as Partial<EvalModeOptions>[]) {
      expect(() => checkEvalModeOptions({ ...base, ...o })).not.toThrow();
    }
  });

  it('refuses what a mode would ignore, and cur ≥ support (MECTA asserts cur_batch < support_batch)', () => {
    expect(refused({ supportBatch: 2 })).toMatch(/--support-batch: only for --eval-mode group or pair/);
    expect(refused({ mergeBatches: true })).toMatch(/--merge-batches/);
    expect(refused({ curBatch: 1 })).toMatch(/--cur-batch: only for --eval-mode pair/);
    expect(refused({ evalMode: 'group' })).toMatch(/needs --support-batch/);
    expect(refused({ evalMode: 'group', supportBatch: 2, curBatch: 1 })).toMatch(/--cur-batch/);
    expect(refused({ evalMode: 'pair', supportBatch: 2, curBatch: 2 })).toMatch(/must be less than --support-batch 2/);
    expect(refused({ evalMode: 'pair', supportBatch: 1 })).toMatch(/--cur-batch 1: must be less than --support-batch 1/);
    expect(refused({ evalMode: 'group', supportBatch: 2, setting: 'gradual' })).toMatch(/--setting gradual/);
    expect(refused({ evalMode: 'group', supportBatch: 2, domainOrders: '3' })).toMatch(/--domain-orders/);
    expect(refused({ evalMode: 'pair', supportBatch: 2, interleaveClean: true })).toMatch(/--interleave-clean: no adapted state/);
    expect(refused({ domainOrders: '3', interleaveSeen: true })).toMatch(/--interleave-seen: not with --domain-orders/);
  });
});

describe('test cases', () => {
  it("group: support − 1 batches of the domain itself; pair: support − cur of the previous, cur − 1 of the current", () => {
    expect(supportParts({ domain: 'fog' }, { evalMode: 'group', supportBatch: 4, curBatch: null })).toEqual([{ domain: 'fog', batches: 3 }]);
    expect(supportParts({ domain: 'fog', previous: 'snow' }, { evalMode: 'pair', supportBatch: 5, curBatch: 2 })).toEqual([
      { domain: 'snow', batches: 3 },
      { domain: 'fog', batches: 1 },
    ]);
    expect(supportParts({ domain: 'fog', previous: 'snow' }, { evalMode: 'pair', supportBatch: 3, curBatch: null })).toEqual([
      { domain: 'snow', batches: 2 },
      { domain: 'fog', batches: 0 },
    ]);
  });

  it('pair steps: every ordered pair of distinct domains, current domain outer', () => {
    const names = ['a', 'b', 'c'];
    const steps = evalModeSteps(names, 'pair', streamSteps(names, { setting: 'continual', rounds: null, dirichletDelta: null }));
    expect(steps.map((s) => `${s.previous}>${s.domain}`)).toEqual(['b>a', 'c>a', 'a>b', 'c>b', 'a>c', 'b>c']);
    const group = evalModeSteps(names, 'group', streamSteps(names, { setting: 'continual', rounds: null, dirichletDelta: null }));
    expect(group.map((s) => s.domain)).toEqual(names);
    expect(() => evalModeSteps(['original'], 'pair', [])).toThrow(/at least two domains/);
  });
});

describe('avg acc / worst acc', () => {
  it('group: mean and minimum of the domain accuracies', () => {
    const s = evalModeSummary('group', [
      { domain: 'a', error: 10 },
      { domain: 'b', error: 40 },
      { domain: 'c', error: 25 },
    ]);
    expect(s).toEqual({ avg_acc: 75, worst_acc: 60, worst_domain: 'b' });
  });

  it('pair: per domain the mean and worst over its previous domains, then avg / worst of those means', () => {
    const s = evalModeSummary('pair', [
      { domain: 'a', previous: 'b', error: 10 },
      { domain: 'a', previous: 'c', error: 30 },
      { domain: 'b', previous: 'a', error: 50 },
      { domain: 'b', previous: 'c', error: 40 },
      { domain: 'c', previous: 'a', error: 0 },
      { domain: 'c', previous: 'b', error: 20 },
    ]) as { pairs: { domain: string; avg_acc: number; worst_acc: number; worst_previous: string }[]; avg_acc: number; worst_acc: number; worst_domain: string };
    expect(s.pairs.map((p) => [p.domain, p.avg_acc, p.worst_acc, p.worst_previous])).toEqual([
      ['a', 80, 70, 'c'],
      ['b', 55, 50, 'a'],
      ['c', 90, 80, 'b'],
    ]);
    expect(s.avg_acc).toBeCloseTo(75, 12);
    // MECTA's worst acc is the worst of the per-domain means, not the worst single pair.
    expect(s.worst_acc).toBe(55);
    expect(s.worst_domain).toBe('b');
    expect(evalModeSummary('continual', [{ domain: 'a', error: 1 }])).toEqual({});
  });
});
