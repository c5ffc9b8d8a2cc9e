/**
 * configs/cifar100/: every file loads, and the existing methods carry the published CIFAR-100
 * settings (MECTA's continual_cifar100_mecta.yaml and cta_eval.py constants for source / norm /
 * tent / eta / eata and their MECTA variants; CoTTA's cifar/cfgs/cifar100/cotta.yaml; SAR and DeYO
 * as mariodoebler/test-time-adaptation's cfgs/cifar100_c).
 */
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from './load.js';

const load = (f: string) => resolveConfig(`configs/cifar100/${f}`, {});

describe('configs/cifar100', () => {
  it('every file loads as a CIFAR-100-C ResNeXt-29 run at severity 5', () => {
    const files = readdirSync('configs/cifar100').filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBeGreaterThanOrEqual(15);
    for (const f of files) expect(load(f), f).toMatchObject({ data: 'cifar100c', model: 'resnext29', severity: 5, seed: 2020 });
  });

  it('MECTA protocol methods: SGD lr 1e-4, batch 16; EATA α_F 2000, d-margin 0.05; MECTA beta-thre 0.0025, prune 0.7', () => {
    expect(load('source.yaml')).toMatchObject({ alg: 'source', batchSize: 16 });
    expect(load('norm.yaml')).toMatchObject({ alg: 'norm', batchSize: 16 });
    expect(load('tent.yaml')).toMatchObject({ alg: 'tent', optimizer: 'sgd', lr: 0.0001, momentum: 0.9, batchSize: 16 });
    expect(load('eata.yaml')).toMatchObject({ alg: 'eata', lr: 0.0001, dMargin: 0.05, fisherAlpha: 2000, fisherSize: 2000 });
    expect(load('eta.yaml')).toMatchObject({ alg: 'eta', lr: 0.0001, dMargin: 0.05 });
    for (const f of ['tent-mecta.yaml', 'eata-mecta.yaml']) expect(load(f)).toMatchObject({ accumBn: true, forgetGate: true, bnDistMetric: 'skl', betaThre: 0.0025, pruneQ: 0.7, batchSize: 16 });
  });

  it('CoTTA (anchor threshold 0.72), cotta_bn, SAR and DeYO', () => {
    expect(load('cotta.yaml')).toMatchObject({ alg: 'cotta', optimizer: 'adam', lr: 0.001, batchSize: 200, cottaAlpha: 0.999, cottaRestoreProb: 0.01, cottaAnchorThreshold: 0.72, cottaAugmentations: 32 });
    expect(load('cotta-bn.yaml')).toMatchObject({ alg: 'cotta_bn', cottaAnchorThreshold: 0.72, batchSize: 16 });
    expect(load('sar.yaml')).toMatchObject({ alg: 'sar', optimizer: 'sgd', lr: 0.001, momentum: 0.9, batchSize: 200, samRho: 0.05, sarResetEma: 0.2 });
    expect(load('deyo.yaml')).toMatchObject({ alg: 'deyo', optimizer: 'sgd', lr: 0.001, batchSize: 200, plpdThreshold: 0.2, patchLen: 4 });
  });
});
