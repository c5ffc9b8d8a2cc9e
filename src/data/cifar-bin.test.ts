import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CtaError } from '../util/errors.js';
import { detectCifarVariant, inspectCifarBinary, readCifarBinary, resolveCleanPath } from './cifar-bin.js';

const P = 1024;

/** Channel c of pixel p of record i: distinct per plane so a CHW/HWC mix-up shows. */
const value = (i: number, c: number, p: number): number => (c === 0 ? p + i : c === 1 ? 3 * p + 1 : 255 - p) & 0xff;

/** A binary batch as on the CIFAR site: [label byte(s)] + R plane + G plane + B plane per record. */
function makeBatch(labels: number[][]): Buffer {
  const lb = labels[0].length;
  const rec = lb + 3 * P;
  const buf = Buffer.alloc(labels.length * rec);
  labels.forEach((ls, i) => {
    ls.forEach((l, j) => (buf[i * rec + j] = l));
    for (let c = 0; c < 3; c++) for (let p = 0; p < P; p++) buf[i * rec + lb + c * P + p] = value(i, c, p);
  });
  return buf;
}

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cta-cifarbin-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('readCifarBinary', () => {
  it('parses CIFAR-10 records into NHWC + labels', async () => {
    const path = join(root, 'test_batch.bin');
    const labels = [3, 0, 9, 1, 7];
    await writeFile(path, makeBatch(labels.map((l) => [l])));
    const d = await readCifarBinary(path);
    expect(d.variant).toBe('cifar10');
    expect(d.n).toBe(5);
    expect(Array.from(d.labels)).toEqual(labels);
    expect(d.images.length).toBe(5 * 3 * P);
    for (let i = 0; i < 5; i++)
      for (const p of [0, 1, 31, 32, 500, 1023])
        for (let c = 0; c < 3; c++) expect(d.images[i * 3 * P + 3 * p + c]).toBe(value(i, c, p));
  });

  it('nExamples reads the first k records', async () => {
    const path = join(root, 'test_batch.bin');
    const d = await readCifarBinary(path, { nExamples: 2 });
    expect(d.n).toBe(2);
    expect(Array.from(d.labels)).toEqual([3, 0]);
    expect(d.images.length).toBe(2 * 3 * P);
  });

  it('parses CIFAR-100 (coarse, fine) records and keeps the fine label', async () => {
    const path = join(root, 'test.bin');
    await writeFile(path, makeBatch([[4, 99], [19, 0], [0, 42]]));
    const d = await readCifarBinary(path);
    expect(d.variant).toBe('cifar100');
    expect(Array.from(d.labels)).toEqual([99, 0, 42]);
    expect(d.images[3 * P + 3 * 10]).toBe(value(1, 0, 10));
    expect(inspectCifarBinary(path)).toEqual({ variant: 'cifar100', n: 3 });
  });

  it('detects the variant from the size', () => {
    expect(detectCifarVariant('x', 10000 * 3073)).toBe('cifar10');
    expect(detectCifarVariant('x', 10000 * 3074)).toBe('cifar100');
    expect(detectCifarVariant('test.bin', 3073 * 3074)).toBe('cifar100');
    expect(detectCifarVariant('test_batch.bin', 3073 * 3074)).toBe('cifar10');
    expect(() => detectCifarVariant('x.bin', 1000)).toThrow(/not a CIFAR binary batch: size 1000 bytes/);
  });

  it('rejects a file of the wrong size and labels out of range', async () => {
    const odd = join(root, 'odd.bin');
    await writeFile(odd, Buffer.alloc(3073 + 5));
    await expect(readCifarBinary(odd)).rejects.toThrow(CtaError);
    const bad = join(root, 'badlabel_batch.bin');
    await writeFile(bad, makeBatch([[1], [11]]));
    await expect(readCifarBinary(bad)).rejects.toThrow(/record 1 has label 11, outside 0…9/);
    await expect(readCifarBinary(join(root, 'missing.bin'))).rejects.toThrow(/missing\.bin: file not found/);
  });
});

describe('resolveCleanPath', () => {
  it('finds <data-dir>/cifar-10-batches-bin/test_batch.bin, then <data-dir>/../…', async () => {
    const base = join(root, 'layout');
    await mkdir(join(base, 'cifar-10-batches-bin'), { recursive: true });
    await mkdir(join(base, 'CIFAR-10-C'), { recursive: true });
    const clean = join(base, 'cifar-10-batches-bin', 'test_batch.bin');
    await writeFile(clean, makeBatch([[1]]));
    expect(resolveCleanPath(undefined, base)).toBe(clean);
    expect(resolveCleanPath(undefined, join(base, 'CIFAR-10-C'))).toBe(clean);
  });

  it('honours an explicit --clean-path (file or folder)', async () => {
    const f = join(root, 'test_batch.bin');
    expect(resolveCleanPath(f, '/nowhere')).toBe(f);
    expect(resolveCleanPath(root, '/nowhere')).toBe(f);
    expect(() => resolveCleanPath(join(root, 'nope.bin'), root)).toThrow(/--clean-path .*nope\.bin: file not found/);
  });

  it('names both paths tried and the flag when nothing is found', async () => {
    const dataDir = join(root, 'empty', 'CIFAR-10-C');
    await mkdir(dataDir, { recursive: true });
    let msg = '';
    try {
      resolveCleanPath(undefined, dataDir);
    } catch (e) {
      expect(e).toBeInstanceOf(CtaError);
      msg = (e as Error).message;
    }
    expect(msg).toContain(join(dataDir, 'cifar-10-batches-bin', 'test_batch.bin'));
    expect(msg).toContain(join(root, 'empty', 'cifar-10-batches-bin', 'test_batch.bin'));
    expect(msg).toContain('--clean-path');
  });

  it('uses cifar-100-binary/test.bin for CIFAR-100', async () => {
    const base = join(root, 'c100');
    await mkdir(join(base, 'cifar-100-binary'), { recursive: true });
    const f = join(base, 'cifar-100-binary', 'test.bin');
    await writeFile(f, makeBatch([[0, 5]]));
    expect(resolveCleanPath(undefined, base, 'cifar100')).toBe(f);
  });
});
