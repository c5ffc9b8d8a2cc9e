import { describe, it, expect, vi } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig, readYamlConfig } from './load.js';
import { defaultConfig, FIELDS, toKebab } from './schema.js';
import { VALUE_ALIASES } from './aliases.js';
import { errorOf } from '../util/test-errors.js';

function yamlFile(text: string, name = 'c.yaml'): string {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
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
    // knobs that would change nothing: refused, not silently accepted
    expect(errorOf(() => resolveConfig(null, { gradCheckpointScope: 'model' }))).toMatch(/^--grad-checkpoint-scope only takes effect with --grad-checkpoint-segments > 1/);
    expect(errorOf(() => resolveConfig(null, { alg: 'tent', accumBn: true, pruneQ: 0.5, gradCheckpointSegments: 2 }))).toMatch(/^--grad-checkpoint-segments > 1 does not combine with MECTA channel pruning/);
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

  it('--cache-budget-mb switches the MECTA layer and its forget gate on, unless the config says otherwise', () => {
    const c = resolveConfig(null, { cacheBudgetMb: '40' });
    expect([c.cacheBudgetMb, c.accumBn, c.forgetGate]).toEqual([40, true, true]);
    expect(resolveConfig(yamlFile('cache-budget-mb: 7\n'), {}).accumBn).toBe(true);
    expect(resolveConfig(null, { cacheBudgetMb: '40', forgetGate: false }).forgetGate).toBe(false);
    expect(errorOf(() => resolveConfig(yamlFile('accum-bn: false\n'), { cacheBudgetMb: '40' }))).toContain('--cache-budget-mb only takes effect with --accum-bn');
  });

  it('optimizer options torch.optim would refuse or Adam would ignore are errors', () => {
    expect(errorOf(() => resolveConfig(null, { nesterov: true, momentum: '0' }))).toContain('--nesterov needs --momentum > 0');
    expect(errorOf(() => resolveConfig(null, { nesterov: true, dampening: '0.1' }))).toContain('--dampening 0');
    expect(errorOf(() => resolveConfig(null, { optimizer: 'adam', nesterov: true }))).toContain('--nesterov only takes effect with --optimizer sgd');
    expect(errorOf(() => resolveConfig(null, { optimizer: 'adamw', adamBeta2: '1' }))).toContain('--adam-beta2: expected a number ≥ 0 and < 1');
    const cfg = resolveConfig(null, { nesterov: true, weightDecay: '1e-4' });
    expect([cfg.nesterov, cfg.weightDecay, cfg.dampening, cfg.adamBeta1, cfg.adamBeta2, cfg.adamEps]).toEqual([true, 1e-4, 0, 0.9, 0.999, 1e-8]);
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

describe('booleans in config files', () => {
  it('accept true/false/1/0/yes/no in any case, and refuse anything else naming the file and key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-bool-'));
    try {
      const file = (name: string, text: string) => {
        const p = join(dir, name);
        writeFileSync(p, text);
        return p;
      };
      // js-yaml reads True/true as booleans; YES, 1 and "no" reach coerce as strings and numbers.
      const cfg = resolveConfig(file('a.yaml', 'accum-bn: YES\nforget-gate: 1\nclean-last: "no"\nshuffle: False\n'), {});
      expect(cfg).toMatchObject({ accumBn: true, forgetGate: true, cleanLast: false, shuffle: false });
      expect(resolveConfig(file('b.yaml', 'accum_bn: True\nepisodic: 0\n'), {})).toMatchObject({ accumBn: true, episodic: false });
      const p = file('c.yaml', 'accum-bn: maybe\n');
      expect(errorOf(() => resolveConfig(p, {}))).toBe(`${p}: accum-bn: expected true or false (also 1/0, yes/no), got "maybe"`);
      expect(errorOf(() => resolveConfig(file('d.yaml', 'accum-bn: 2\n'), {}))).toContain('accum-bn: expected true or false (also 1/0, yes/no), got 2');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('extends: errors', () => {
  it('a missing extends: target names the including file, its extends: line and the path tried', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-ext-'));
    try {
      const child = join(dir, 'child.yaml');
      writeFileSync(child, '# a child config\nalg: tent\nextends: ../nowhere/base.yaml\n');
      const msg = errorOf(() => resolveConfig(child, {}));
      expect(msg).toBe(`${child}:3: extends: ../nowhere/base.yaml: file not found (looked for ${join(dir, '..', 'nowhere', 'base.yaml')}; relative to ${child})`);
      expect(msg).not.toContain('--config');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('MECTA names in config files', () => {
  it('keys and values are read as ours, one notice each naming the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfg-mecta-'));
    const lines: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      lines.push(String(s));
      return true;
    });
    try {
      const p = join(dir, 'mecta.yaml');
      writeFileSync(p, 'data: IN\nmodel: rb_resnet50\nalg: src\nlevel: 3\nbatch_size: 64\n');
      const cfg = resolveConfig(p, {});
      expect(cfg).toMatchObject({ data: 'imagenetc', model: 'resnet50', alg: 'source', severity: 3, batchSize: 64 });
      expect(lines).toEqual([
        `notice: ${p}: data: IN is MECTA's name; using imagenetc (MECTA's EATA uses --d-margin 0.05 --fisher-alpha 2000 there; ours default to 0.4 and 1 (configs/imagenet/eata.yaml sets them))\n`,
        `notice: ${p}: model: rb_resnet50 is MECTA's name; using resnet50\n`,
        `notice: ${p}: alg: src is MECTA's name; using source\n`,
        `notice: ${p}: level is MECTA's name; using severity\n`,
      ]);
    } finally {
      spy.mockRestore();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('no alias shadows a real choice, and every alias target is one', () => {
    for (const [key, table] of Object.entries(VALUE_ALIASES)) {
      const f = FIELDS[key as keyof typeof VALUE_ALIASES];
      for (const [from, to] of Object.entries(table)) {
        expect(f.choices as readonly string[]).not.toContain(from);
        expect(f.choices as readonly string[]).toContain(to);
      }
    }
  });
});
