import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CtaError } from '../util/errors.js';
import { writeNpy, type NpyDType } from '../io/npy.js';
import { loadCifarCDomain, openCifarC, resolveCifarCDir } from './cifar-c.js';

const N = 8; // images per severity block in the fixtures (10,000 in the real set)
const IMG = 32 * 32 * 3;

/** Pixel value of image i of severity s at byte k: unique per (s, i) and varying over k. */
const pixel = (s: number, i: number, k: number): number => (s * 40 + i + (k % 5)) & 0xff;
/** Label of image i (same for every block, like the real labels.npy). */
const label = (i: number): number => (i * 3) % 10;

async function writeCorruption(dir: string, name: string, n = N): Promise<void> {
  const data = new Uint8Array(5 * n * IMG);
  for (let s = 1; s <= 5; s++)
    for (let i = 0; i < n; i++)
      for (let k = 0; k < IMG; k++) data[((s - 1) * n + i) * IMG + k] = pixel(s, i, k);
  await writeNpy(join(dir, `${name}.npy`), 'uint8', [5 * n, 32, 32, 3], data);
}

async function writeLabels(dir: string, dtype: NpyDType = 'uint8', n = N, f: (i: number) => number = label): Promise<void> {
  const labels = Array.from({ length: 5 * n }, (_, r) => f(r % n));
  await writeNpy(join(dir, 'labels.npy'), dtype, [5 * n], labels);
}

let root: string;
let setDir: string; // root/CIFAR-10-C
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cta-cifarc-'));
  setDir = join(root, 'CIFAR-10-C');
  await mkdir(setDir);
  await writeLabels(setDir);
  await writeCorruption(setDir, 'gaussian_noise');
  await writeCorruption(setDir, 'fog');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function freshDir(name: string): Promise<string> {
  const d = join(root, name);
  await mkdir(d, { recursive: true });
  return d;
}

describe('loadCifarCDomain', () => {
  it('returns the rows of the requested severity block, with their labels', async () => {
    for (const s of [1, 3, 5]) {
      const b = await loadCifarCDomain(setDir, 'gaussian_noise', s, { numClasses: 10 });
      expect(b.n).toBe(N);
      expect([b.height, b.width, b.channels]).toEqual([32, 32, 3]);
      expect(b.images.length).toBe(N * IMG);
      expect(b.labels).toBeInstanceOf(Int32Array);
      expect(Array.from(b.labels)).toEqual(Array.from({ length: N }, (_, i) => label(i)));
      for (let i = 0; i < N; i++) for (const k of [0, 1, 4, IMG - 1]) expect(b.images[i * IMG + k]).toBe(pixel(s, i, k));
    }
  });

  it('nExamples keeps the first k images of the block (RobustBench x[:n_examples])', async () => {
    const b = await loadCifarCDomain(setDir, 'fog', 2, { nExamples: 3 });
    expect(b.n).toBe(3);
    expect(b.images.length).toBe(3 * IMG);
    expect(b.images[2 * IMG]).toBe(pixel(2, 2, 0));
    expect(Array.from(b.labels)).toEqual([label(0), label(1), label(2)]);
    const all = await loadCifarCDomain(setDir, 'fog', 2, { nExamples: 1000 });
    expect(all.n).toBe(N);
  });

  it('accepts the parent data dir holding CIFAR-10-C/', async () => {
    expect(resolveCifarCDir(root)).toBe(setDir);
    const b = await loadCifarCDomain(root, 'fog', 4);
    expect(b.images[0]).toBe(pixel(4, 0, 0));
  });

  it('reuses an opened folder', async () => {
    const info = await openCifarC(root, { numClasses: 10 });
    expect(info.n).toBe(N);
    expect(info.available).toEqual(['fog', 'gaussian_noise']);
    const b = await loadCifarCDomain(info, 'gaussian_noise', 5);
    expect(b.images[IMG]).toBe(pixel(5, 1, 0));
  });

  it('accepts int64 labels', async () => {
    const d = await freshDir('int64labels');
    await writeLabels(d, 'int64');
    await writeCorruption(d, 'snow');
    const b = await loadCifarCDomain(d, 'snow', 1, { numClasses: 10 });
    expect(Array.from(b.labels)).toEqual(Array.from({ length: N }, (_, i) => label(i)));
  });

  it('rejects a bad severity or nExamples', async () => {
    await expect(loadCifarCDomain(setDir, 'fog', 0)).rejects.toThrow(/severity must be an integer 1…5, got 0/);
    await expect(loadCifarCDomain(setDir, 'fog', 6)).rejects.toThrow(CtaError);
    await expect(loadCifarCDomain(setDir, 'fog', 2.5)).rejects.toThrow(CtaError);
    await expect(loadCifarCDomain(setDir, 'fog', 1, { nExamples: 0 })).rejects.toThrow(/n-examples/);
  });
});

describe('validation errors', () => {
  it('wrong dtype names the file and the expected layout', async () => {
    const d = await freshDir('wrongdtype');
    await writeLabels(d);
    await writeNpy(join(d, 'fog.npy'), 'float32', [5 * N, 32, 32, 3], new Float32Array(5 * N * IMG));
    const err = await loadCifarCDomain(d, 'fog', 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    const msg = (err as Error).message;
    expect(msg).toContain(join(d, 'fog.npy'));
    expect(msg).toContain('expected uint8 (5·n,32,32,3)');
    expect(msg).toContain('<f4');
  });

  it('wrong shape (channels, image size, or rows not 5·n)', async () => {
    const d = await freshDir('wrongshape');
    await writeLabels(d);
    await writeNpy(join(d, 'gray.npy'), 'uint8', [5 * N, 32, 32, 1], new Uint8Array(5 * N * 1024));
    await writeNpy(join(d, 'rows.npy'), 'uint8', [4 * N, 32, 32, 3], new Uint8Array(4 * N * IMG));
    await writeNpy(join(d, 'small.npy'), 'uint8', [5 * N, 28, 28, 3], new Uint8Array(5 * N * 28 * 28 * 3));
    for (const c of ['gray', 'rows', 'small']) {
      await expect(loadCifarCDomain(d, c, 1)).rejects.toThrow(/expected uint8 \(5·n,32,32,3\) = uint8 \(40, 32, 32, 3\) for n=8/);
    }
  });

  it('missing labels.npy names both paths tried', async () => {
    const d = await freshDir('nolabels');
    await writeCorruption(d, 'fog');
    const err = await loadCifarCDomain(d, 'fog', 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    expect((err as Error).message).toContain('missing labels.npy');
    expect((err as Error).message).toContain(join(d, 'labels.npy'));
    expect((err as Error).message).toContain(join(d, 'CIFAR-10-C', 'labels.npy'));
  });

  it('missing data dir', async () => {
    await expect(loadCifarCDomain(join(root, 'does-not-exist'), 'fog', 1)).rejects.toThrow(/does not exist/);
  });

  it('missing corruption file lists what is present', async () => {
    await expect(loadCifarCDomain(setDir, 'frost', 1)).rejects.toThrow(/missing corruption file .*frost\.npy \(present in .*: fog, gaussian_noise\)/);
  });

  it('labels out of range for the number of classes', async () => {
    const d = await freshDir('badlabels');
    await writeLabels(d, 'uint8', N, (i) => (i === 5 ? 12 : 0));
    await writeCorruption(d, 'fog');
    await expect(loadCifarCDomain(d, 'fog', 1, { numClasses: 10 })).rejects.toThrow(/label 12 at index 5 is out of range \[0, 10\)/);
    // Without a class count only negative labels are refused.
    await expect(loadCifarCDomain(d, 'fog', 1)).resolves.toBeDefined();
  });

  it('labels that are not 5·n integers', async () => {
    const d1 = await freshDir('labels-len');
    await writeNpy(join(d1, 'labels.npy'), 'uint8', [13], new Uint8Array(13));
    await expect(openCifarC(d1)).rejects.toThrow(/expected a 1-D array of 5·n labels .* got shape \(13,\)/);
    const d2 = await freshDir('labels-float');
    await writeNpy(join(d2, 'labels.npy'), 'float32', [10], new Float32Array(10));
    await expect(openCifarC(d2)).rejects.toThrow(/expected an integer dtype for labels, got <f4/);
  });

  it('truncated corruption file', async () => {
    const d = await freshDir('truncated');
    await writeLabels(d);
    await writeCorruption(d, 'fog');
    await truncate(join(d, 'fog.npy'), 128 + 3 * N * IMG);
    const err = await loadCifarCDomain(d, 'fog', 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    expect((err as Error).message).toContain(join(d, 'fog.npy'));
    expect((err as Error).message).toContain(`expected ${128 + 5 * N * IMG} bytes`);
    expect((err as Error).message).toContain(`file has ${128 + 3 * N * IMG} bytes`);
  });
});

describe('labels.npy of the wrong length', () => {
  it('names labels.npy (not the corruption file) when the images are a valid 5·m block', async () => {
    const d = await freshDir('labels-short');
    await writeLabels(d, 'uint8', N - 2); // 5·6 labels for 5·8 images
    await writeCorruption(d, 'fog');
    const err = await loadCifarCDomain(d, 'fog', 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    const msg = (err as Error).message;
    expect(msg.startsWith(`${join(d, 'labels.npy')}: `)).toBe(true);
    expect(msg).toBe(
      `${join(d, 'labels.npy')}: ${5 * (N - 2)} labels (n = ${N - 2} per severity), but ${join(d, 'fog.npy')} holds ${5 * N} images (n = ${N}); ` +
        'labels.npy needs one label per image row',
    );
  });
});
