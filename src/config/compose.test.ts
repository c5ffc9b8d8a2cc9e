/** `--config a.yaml b.yaml c.yaml`: configs merged left to right (src/config/load.ts resolveConfig). */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configsRunName, resolveConfig } from './load.js';
import { parseCommand } from '../cli/args.js';
import { CtaError } from '../util/errors.js';

function files(spec: Record<string, string>): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-compose-'));
  const out: Record<string, string> = {};
  for (const [name, text] of Object.entries(spec)) {
    out[name] = join(dir, name);
    writeFileSync(out[name], text);
  }
  return out;
}

describe('config composition', () => {
  const f = files({
    'base.yaml': 'alg: tent\nbatch-size: 8\nlr: 0.01\nseed: 1\n',
    'data.yaml': 'data: synthetic-c\nbatch-size: 4\nseverity: 3\n',
    'mecta.yaml': 'extends: base.yaml\naccum-bn: true\nforget-gate: true\nlr: 0.02\n',
    'seed.yml': 'seed: 7\n',
  });

  it('merges left to right: a later file wins key by key, untouched keys stay', () => {
    const cfg = resolveConfig([f['base.yaml'], f['data.yaml'], f['seed.yml']], {});
    expect(cfg).toMatchObject({ alg: 'tent', lr: 0.01, data: 'synthetic-c', batchSize: 4, severity: 3, seed: 7 });
    const reversed = resolveConfig([f['data.yaml'], f['base.yaml']], {});
    expect(reversed.batchSize).toBe(8);
    expect(reversed.severity).toBe(3);
  });

  it('a file with extends: brings its chain at its own place in the list', () => {
    // data.yaml sets batch-size 4; mecta.yaml extends base.yaml (batch-size 8) after it, so 8 wins.
    const cfg = resolveConfig([f['data.yaml'], f['mecta.yaml']], {});
    expect(cfg).toMatchObject({ batchSize: 8, lr: 0.02, accumBn: true, forgetGate: true, severity: 3 });
  });

  it('flags override every file', () => {
    expect(resolveConfig([f['base.yaml'], f['data.yaml']], { batchSize: '2' }).batchSize).toBe(2);
  });

  it('--config takes several files after one flag or repeated flags, in order', async () => {
    const a = await parseCommand(['--config', f['base.yaml'], f['data.yaml'], '--lr', '0.5'], 'cta-eval', '', (y) => y);
    expect(a.cfg).toMatchObject({ alg: 'tent', batchSize: 4, lr: 0.5 });
    const b = await parseCommand(['--config', f['data.yaml'], '--config', f['base.yaml']], 'cta-eval', '', (y) => y);
    expect(b.cfg.batchSize).toBe(8);
  });

  it('a missing file among several is named', () => {
    try {
      resolveConfig([f['base.yaml'], '/nonexistent/x.yaml'], {});
      throw new Error('accepted');
    } catch (e) {
      expect(e).toBeInstanceOf(CtaError);
      expect((e as Error).message).toBe('--config /nonexistent/x.yaml: file not found');
    }
  });

  it('the run name of two or more files is their stems joined by +', () => {
    expect(configsRunName([f['base.yaml'], f['data.yaml'], f['seed.yml']])).toBe('base+data+seed');
    expect(configsRunName(['configs/cifar10/tent.yaml'])).toBeNull();
    expect(configsRunName([])).toBeNull();
    expect(configsRunName(['a b.yaml', 'c.YAML'])).toBe('a_b+c');
  });
});
