import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig, readYamlConfig } from './load.js';
import { defaultConfig, FIELDS, toKebab } from './schema.js';
import { CtaError } from '../util/errors.js';

function yamlFile(text: string, name = 'c.yaml'): string {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    const msg = (e as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
  throw new Error('expected a CtaError');
}

describe('config', () => {
  it('defaults cover every field', () => {
    const cfg = defaultConfig();
    expect(Object.keys(cfg).sort()).toEqual(Object.keys(FIELDS).sort());
    expect(cfg.severity).toBe(5);
    expect(cfg.corruptions).toHaveLength(15);
    expect(cfg.corruptions[0]).toBe('gaussian_noise');
    expect(cfg.corruptions[14]).toBe('jpeg_compression');
  });

  it('flags override YAML, YAML overrides defaults, kebab and camel keys both work', () => {
    const p = yamlFile('alg: tent\nbatch-size: 8\nlr: 0.01\nbatchSize: 12\n');
    const cfg = resolveConfig(p, { lr: '0.002', accumBn: true });
    expect(cfg.alg).toBe('tent');
    expect(cfg.batchSize).toBe(12);
    expect(cfg.lr).toBe(0.002);
    expect(cfg.accumBn).toBe(true);
  });

  it('extends chains resolve relative to the including file', () => {
    const base = yamlFile('alg: eata\nd-margin: 0.05\n', 'base.yaml');
    const child = join(base, '..', 'child.yaml');
    writeFileSync(child, 'extends: base.yaml\nfisher-alpha: 2000\n');
    const cfg = resolveConfig(child, {});
    expect(cfg.alg).toBe('eata');
    expect(cfg.dMargin).toBe(0.05);
    expect(cfg.fisherAlpha).toBe(2000);
  });

  it('unknown YAML key names the file and lists known keys', () => {
    const p = yamlFile('batch-sise: 8\n');
    const msg = errorOf(() => readYamlConfig(p));
    expect(msg).toContain(p);
    expect(msg).toContain("unknown key 'batch-sise'");
    expect(msg).toContain('batch-size');
  });

  it('bad enum values list the allowed values', () => {
    const msg = errorOf(() => resolveConfig(null, { alg: 'tnet' }));
    expect(msg).toMatch(/^--alg: expected one of .*tent.*got "tnet"$/);
  });

  it('out-of-range and non-numeric numbers are refused', () => {
    expect(errorOf(() => resolveConfig(null, { severity: '6' }))).toBe('--severity: expected an integer ≥ 1 and ≤ 5, got "6"');
    expect(errorOf(() => resolveConfig(null, { batchSize: '1.5' }))).toContain('--batch-size: expected an integer');
    expect(errorOf(() => resolveConfig(null, { lr: 'abc' }))).toContain('--lr: expected a number > 0');
    expect(errorOf(() => resolveConfig(null, { lr: '0' }))).toContain('--lr');
    const p = yamlFile('prune-q: 2\n');
    expect(errorOf(() => resolveConfig(p, {}))).toContain(`${p}: prune-q: expected a number ≥ 0 and ≤ 1`);
  });

  it('unknown corruption names are refused', () => {
    expect(errorOf(() => resolveConfig(null, { corruptions: 'gaussian_noise,fogg' }))).toContain('unknown value "fogg"');
    const cfg = resolveConfig(null, { corruptions: 'fog,snow' });
    expect(cfg.corruptions).toEqual(['fog', 'snow']);
  });

  it('MECTA options without --accum-bn are an error, not silently ignored', () => {
    expect(errorOf(() => resolveConfig(null, { pruneQ: '0.7' }))).toContain('--prune-q only takes effect with --accum-bn');
    expect(errorOf(() => resolveConfig(null, { accumBn: true, betaThre: '0.001' }))).toContain('--beta-thre only takes effect with --forget-gate');
    expect(resolveConfig(null, { accumBn: true, forgetGate: true, betaThre: '0.00125', pruneQ: '0.7' }).pruneQ).toBe(0.7);
  });

  it('shipped CIFAR-10 configs load and carry the published settings', () => {
    const cfg = resolveConfig('configs/cifar10/eata-mecta.yaml', {});
    expect(cfg).toMatchObject({ alg: 'eata', lr: 0.0025, momentum: 0.9, batchSize: 16, dMargin: 0.4, fisherAlpha: 1, accumBn: true, forgetGate: true, betaThre: 0.00125, pruneQ: 0.7, bnDistMetric: 'skl', seed: 2020 });
    for (const name of ['source', 'norm', 'tent', 'eata', 'eta', 'tent-mecta']) {
      expect(() => resolveConfig(`configs/cifar10/${name}.yaml`, {})).not.toThrow();
    }
  });

  it('kebab form is what the flags use', () => {
    expect(toKebab('nExamples')).toBe('n-examples');
    expect(toKebab('bnDistMetric')).toBe('bn-dist-metric');
  });
});
