/** The sweep run hash covers --domain-orders, an order file by its content (src/sweep/hash.ts). */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { configHash } from './hash.js';
import { defaultConfig } from '../config/schema.js';

describe('run hash and --domain-orders', () => {
  it('changes with the count, and with an order file’s content at the same path', () => {
    const cfg = defaultConfig();
    const plain = configHash(cfg);
    const k3 = configHash({ ...cfg, domainOrders: '3' });
    expect(k3).not.toBe(plain);
    expect(configHash({ ...cfg, domainOrders: '4' })).not.toBe(k3);
    const file = join(mkdtempSync(join(tmpdir(), 'cta-orders-hash-')), 'orders.txt');
    writeFileSync(file, 'fog,snow\n');
    const a = configHash({ ...cfg, domainOrders: file });
    expect(configHash({ ...cfg, domainOrders: file })).toBe(a);
    writeFileSync(file, 'snow,fog\n');
    expect(configHash({ ...cfg, domainOrders: file })).not.toBe(a);
  });

  it('covers the eval-mode options and --iters', () => {
    const cfg = defaultConfig();
    const hashes = [
      cfg,
      { ...cfg, evalMode: 'group' as const, supportBatch: 2 },
      { ...cfg, evalMode: 'group' as const, supportBatch: 3 },
      { ...cfg, evalMode: 'group' as const, supportBatch: 3, mergeBatches: true },
      { ...cfg, evalMode: 'pair' as const, supportBatch: 3, curBatch: 2 },
      { ...cfg, corruptionSet: 'arm' as const },
      { ...cfg, iters: 5 },
    ].map(configHash);
    expect(new Set(hashes).size).toBe(hashes.length);
  });
});
