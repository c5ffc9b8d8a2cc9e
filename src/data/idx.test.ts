import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CtaError } from '../util/errors.js';
import { writeNpy } from '../io/npy.js';
import { cleanFiles, idxLabelsPath, inspectClean, isIdxFile, loadClean, readIdx, readIdxHeader, toRgb } from './idx.js';

const ASSET = join(import.meta.dirname, '..', '..', 'assets', 'fashion-mnist', 't10k-images-idx3-ubyte.gz');

/** An unsigned-byte IDX file: magic 0x0000 08 nd, big-endian dims, data. */
function idx(dims: number[], data: Uint8Array): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = 0x08;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(data)]);
}

/** Grey value of pixel (y, x) of image i: distinct per image and position so a mix-up shows. */
const grey = (i: number, y: number, x: number): number => (1 + i * 37 + y * 5 + x * 3) & 0xff;

function greyImages(n: number, h: number, w: number): Uint8Array {
  const out = new Uint8Array(n * h * w);
  for (let i = 0; i < n; i++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[(i * h + y) * w + x] = grey(i, y, x);
  return out;
}

/** Expect `p` to reject with a single-line CtaError matching `re`. */
async function oneLineError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(CtaError);
  expect((e as Error).message).toMatch(re);
  expect((e as Error).message).not.toContain('\n');
}

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cta-idx-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('readIdx', () => {
  it('reads plain and gzipped files identically (BE dims)', async () => {
    const data = greyImages(3, 4, 5);
    const plain = join(root, 'a-images-idx3-ubyte');
    const gz = join(root, 'b-images-idx3-ubyte.gz');
    await writeFile(plain, idx([3, 4, 5], data));
    await writeFile(gz, gzipSync(idx([3, 4, 5], data)));
    for (const p of [plain, gz]) {
      const a = await readIdx(p, 3);
      expect(a.dims).toEqual([3, 4, 5]);
      expect(Array.from(a.data)).toEqual(Array.from(data));
      expect(readIdxHeader(p).dims).toEqual([3, 4, 5]);
      expect(isIdxFile(p)).toBe(true);
    }
    // Dimensions above 255 check the big-endian decoding.
    const big = join(root, 'big-labels-idx1-ubyte');
    await writeFile(big, idx([300], new Uint8Array(300).fill(7)));
    expect((await readIdx(big, 1)).dims).toEqual([300]);
  });

  it('bad magic, wrong rank, truncation and broken gzip are one-line errors naming the file', async () => {
    const bad = join(root, 'bad-images-idx3-ubyte');
    const b = idx([1, 2, 2], new Uint8Array(4));
    b[2] = 0x0d; // float32 type code
    await writeFile(bad, b);
    await oneLineError(readIdx(bad), /bad-images-idx3-ubyte: not an unsigned-byte IDX file \(magic 0x00000d03/);
    const lab = join(root, 'l-labels-idx1-ubyte');
    await writeFile(lab, idx([4], new Uint8Array(4)));
    await oneLineError(readIdx(lab, 3), /l-labels-idx1-ubyte: IDX magic 0x00000801 has 1 dimension\(s\), expected 0x00000803/);
    const short = join(root, 'short-images-idx3-ubyte');
    await writeFile(short, idx([2, 3, 3], new Uint8Array(10)));
    await oneLineError(readIdx(short), /short-images-idx3-ubyte: truncated: header promises \(2, 3, 3\) = 18 bytes of data, file has 10/);
    const shortGz = join(root, 'short2-images-idx3-ubyte.gz');
    const gz = gzipSync(idx([2, 3, 3], greyImages(2, 3, 3)));
    await writeFile(shortGz, gz.subarray(0, gz.length - 12));
    await oneLineError(readIdx(shortGz), /short2-images-idx3-ubyte\.gz: corrupt or truncated gzip data/);
    const long = join(root, 'long-images-idx3-ubyte');
    await writeFile(long, idx([1, 2, 2], new Uint8Array(6)));
    await oneLineError(readIdx(long), /long-images-idx3-ubyte: 2 bytes after the \(1, 2, 2\) data/);
    await oneLineError(readIdx(join(root, 'nope-images-idx3-ubyte')), /nope-images-idx3-ubyte: file not found/);
  });
});

describe('idxLabelsPath', () => {
  it('follows the standard naming, either compression, and the "." variant', async () => {
    const dir = join(root, 'names');
    await mkdir(dir);
    await writeFile(join(dir, 'train-labels-idx1-ubyte.gz'), '');
    await writeFile(join(dir, 't10k-labels-idx1-ubyte'), '');
    await writeFile(join(dir, 'x-labels.idx1-ubyte'), '');
    expect(idxLabelsPath(join(dir, 'train-images-idx3-ubyte.gz'))).toBe(join(dir, 'train-labels-idx1-ubyte.gz'));
    expect(idxLabelsPath(join(dir, 'train-images-idx3-ubyte'))).toBe(join(dir, 'train-labels-idx1-ubyte.gz'));
    expect(idxLabelsPath(join(dir, 't10k-images-idx3-ubyte.gz'))).toBe(join(dir, 't10k-labels-idx1-ubyte'));
    expect(idxLabelsPath(join(dir, 'x-images.idx3-ubyte'))).toBe(join(dir, 'x-labels.idx1-ubyte'));
    expect(() => idxLabelsPath(join(dir, 'other-images-idx3-ubyte.gz'))).toThrow(/labels file not found: expected .*other-labels-idx1-ubyte\.gz beside it/);
    expect(() => idxLabelsPath(join(dir, 'digits.idx'))).toThrow(/must be named X-images-idx3-ubyte/);
  });
});

describe('loadClean', () => {
  it('IDX 28×28 grey → zero-padded 32×32 RGB with labels', async () => {
    const dir = join(root, 'mnist');
    await mkdir(dir);
    const n = 3;
    await writeFile(join(dir, 'set-images-idx3-ubyte.gz'), gzipSync(idx([n, 28, 28], greyImages(n, 28, 28))));
    await writeFile(join(dir, 'set-labels-idx1-ubyte.gz'), gzipSync(idx([n], Uint8Array.from([4, 0, 9]))));
    const path = join(dir, 'set-images-idx3-ubyte.gz');
    const d = await loadClean(path);
    expect([d.n, d.height, d.width, d.channels]).toEqual([3, 32, 32, 3]);
    expect(Array.from(d.labels)).toEqual([4, 0, 9]);
    expect(d.images.length).toBe(3 * 32 * 32 * 3);
    for (let i = 0; i < n; i++) {
      for (let y = 0; y < 32; y++) {
        for (let x = 0; x < 32; x++) {
          const inside = y >= 2 && y < 30 && x >= 2 && x < 30;
          const want = inside ? grey(i, y - 2, x - 2) : 0;
          const o = ((i * 32 + y) * 32 + x) * 3;
          if (d.images[o] !== want || d.images[o + 1] !== want || d.images[o + 2] !== want) {
            throw new Error(`image ${i} pixel (${y},${x}): got ${d.images.subarray(o, o + 3)}, want ${want} ×3`);
          }
        }
      }
    }
    const first = await loadClean(path, { nExamples: 2 });
    expect(first.n).toBe(2);
    expect(Array.from(first.images)).toEqual(Array.from(d.images.subarray(0, 2 * 3072)));
    expect(await inspectClean(path)).toEqual({ format: 'idx', n: 3, height: 32, width: 32, files: [path, join(dir, 'set-labels-idx1-ubyte.gz')] });
    expect(cleanFiles(path)).toEqual([path, join(dir, 'set-labels-idx1-ubyte.gz')]);

    // Label count must match.
    await writeFile(join(dir, 'odd-images-idx3-ubyte'), idx([n, 28, 28], greyImages(n, 28, 28)));
    await writeFile(join(dir, 'odd-labels-idx1-ubyte'), idx([2], Uint8Array.from([1, 2])));
    await oneLineError(loadClean(join(dir, 'odd-images-idx3-ubyte')), /odd-labels-idx1-ubyte: 2 labels for the 3 images of/);
    await oneLineError(inspectClean(join(dir, 'odd-images-idx3-ubyte')), /odd-labels-idx1-ubyte: 2 labels for the 3 images of/);
  });

  it('grey of another size is replicated to RGB without padding', () => {
    const src = greyImages(1, 3, 2);
    const r = toRgb(src, 1, 3, 2, 1);
    expect([r.height, r.width]).toEqual([3, 2]);
    expect(Array.from(r.images)).toEqual(Array.from(src).flatMap((v) => [v, v, v]));
  });

  it('reads an .npy pair (NHWC RGB or grey) with labels.npy beside it', async () => {
    const dir = join(root, 'npy');
    await mkdir(dir);
    const rgb = new Uint8Array(2 * 32 * 32 * 3).map((_, i) => (i * 7) & 0xff);
    await writeNpy(join(dir, 'x.npy'), 'uint8', [2, 32, 32, 3], rgb);
    await writeNpy(join(dir, 'labels.npy'), 'int64', [2], [5, 1]);
    const d = await loadClean(join(dir, 'x.npy'));
    expect([d.n, d.height, d.width, d.channels]).toEqual([2, 32, 32, 3]);
    expect(Array.from(d.images)).toEqual(Array.from(rgb));
    expect(Array.from(d.labels)).toEqual([5, 1]);
    expect((await inspectClean(join(dir, 'x.npy'))).files).toEqual([join(dir, 'x.npy'), join(dir, 'labels.npy')]);

    await writeNpy(join(dir, 'g.npy'), 'uint8', [2, 28, 28, 1], greyImages(2, 28, 28));
    const g = await loadClean(join(dir, 'g.npy'));
    expect([g.height, g.width, g.channels]).toEqual([32, 32, 3]);
    expect(g.images[((1 * 32 + 2) * 32 + 2) * 3 + 1]).toBe(grey(1, 0, 0));

    await oneLineError(loadClean(join(dir, 'labels.npy')), /this is the labels file/);
    await writeNpy(join(dir, 'f.npy'), 'float32', [2, 32, 32, 3], new Float32Array(2 * 3072));
    await oneLineError(loadClean(join(dir, 'f.npy')), /f\.npy: expected uint8 images, got dtype <f4/);
    await writeNpy(join(dir, 'bad.npy'), 'uint8', [2, 32, 32, 2], new Uint8Array(2 * 32 * 32 * 2));
    await oneLineError(loadClean(join(dir, 'bad.npy')), /bad\.npy: expected images of shape \(n, h, w\) grey or \(n, h, w, 1\|3\) NHWC, got \(2, 32, 32, 2\)/);
  });

  it('reads a CIFAR binary batch and rejects files of no known format', async () => {
    const path = join(root, 'test_batch.bin');
    const rec = Buffer.alloc(2 * 3073);
    rec[0] = 3;
    rec[3073] = 8;
    rec[1] = 200; // R of pixel 0, image 0
    rec[3073 + 1 + 1024] = 100; // G of pixel 0, image 1
    await writeFile(path, rec);
    const d = await loadClean(path);
    expect(Array.from(d.labels)).toEqual([3, 8]);
    expect(d.images[0]).toBe(200);
    expect(d.images[3072 + 1]).toBe(100);
    expect(await inspectClean(path)).toEqual({ format: 'cifar-bin', n: 2, height: 32, width: 32, files: [path] });

    const junk = join(root, 'junk.dat');
    await writeFile(junk, 'hello');
    await oneLineError(loadClean(junk), /junk\.dat: not an IDX images file, an \.npy file or a CIFAR binary batch/);
    await oneLineError(loadClean(root), /is a directory/);
  });

  it('the shipped Fashion-MNIST test set: 10,000 images, padded to 32×32×3', async () => {
    const info = await inspectClean(ASSET);
    expect(info).toMatchObject({ format: 'idx', n: 10000, height: 32, width: 32 });
    const d = await loadClean(ASSET, { nExamples: 5 });
    // First labels of the t10k split: ankle boot, pullover, trouser, trouser, shirt.
    expect(Array.from(d.labels)).toEqual([9, 2, 1, 1, 6]);
    // The 2-px border is zero, and R = G = B.
    expect(d.images.subarray(0, 2 * 32 * 3).every((v) => v === 0)).toBe(true);
    for (let i = 0; i < d.images.length; i += 3) {
      if (d.images[i] !== d.images[i + 1] || d.images[i] !== d.images[i + 2]) throw new Error(`pixel ${i / 3} is not grey`);
    }
  });
});
