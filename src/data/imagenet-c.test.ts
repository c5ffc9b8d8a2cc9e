/**
 * ImageNet-C source: the sharp pipeline against PIL/torchvision (test/fixtures/imagenet/images from
 * scripts/make-imagenet-fixtures.py), and a generated ImageNet-C-layout tree: class indices, the
 * streaming batches, subsets, image lists, the prefetch overlap, and every error the layout can
 * produce (missing/extra class folders, empty folders, unreadable JPEGs, missing --clean-dir).
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import sharp from 'sharp';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { CROP, centerCrop, decodeImage, resizeBilinearPil, resizedSize, roundHalfEven } from './jpeg-decode.js';
import { balancedSubset, imageNetCSource, type ImageNetCOptions } from './imagenet-c.js';
import { makeImageNetTree, type ImageNetTree } from './imagenet-tree.js';
import { CLEAN_DOMAIN, openDomain, type Batch } from './stream.js';

const IMAGES = join(process.cwd(), 'test', 'fixtures', 'imagenet', 'images');

async function png(path: string): Promise<Uint8Array> {
  const { data, info } = await sharp(path).raw().toBuffer({ resolveWithObject: true });
  expect(info.channels).toBe(3);
  return new Uint8Array(data);
}

function maxDiff(a: Uint8Array, b: Uint8Array): { max: number; mean: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

/** Removes the APP2 (ICC_PROFILE) marker segments that precede a JPEG's scan. */
function stripIcc(jpeg: Buffer): Buffer {
  const parts: Buffer[] = [jpeg.subarray(0, 2)];
  let pos = 2;
  while (pos < jpeg.length && jpeg[pos] === 0xff && jpeg[pos + 1] !== 0xda) {
    const len = jpeg.readUInt16BE(pos + 2);
    if (jpeg[pos + 1] !== 0xe2) parts.push(jpeg.subarray(pos, pos + 2 + len));
    pos += 2 + len;
  }
  parts.push(jpeg.subarray(pos));
  return Buffer.concat(parts);
}

describe('decode / resize against PIL + torchvision', () => {
  const cases = [
    ['clean_landscape', 'clean'],
    ['clean_portrait', 'clean'],
    ['clean_small', 'clean'],
    ['clean_gray', 'clean'],
    ['imagenetc', 'imagenetc'],
  ] as const;
  for (const [name, pipeline] of cases) {
    it(`${name}: ${pipeline === 'clean' ? 'Resize(256) + CenterCrop(224)' : 'decode'} within ±2 levels`, async () => {
      const got = await decodeImage(join(IMAGES, `${name}.jpg`), pipeline);
      expect(got.length).toBe(CROP * CROP * 3);
      const d = maxDiff(got, await png(join(IMAGES, `${name}.pil.png`)));
      console.log(`jpeg pipeline vs PIL ${name}: max |Δ| ${d.max}, mean |Δ| ${d.mean.toFixed(3)}`);
      expect(d.max).toBeLessThanOrEqual(2);
      // Exact where no libvips resampling is involved: plain decode, and enlarging (Pillow port).
      if (name === 'imagenetc' || name === 'clean_small') expect(d.max).toBe(0);
    });
  }

  it('ignores an embedded ICC profile, as PIL does (pixels as stored)', async () => {
    const rng = new Rng(4);
    const raw = Buffer.from(Uint8Array.from({ length: CROP * CROP * 3 }, (_, i) => (i % 3 === 0 ? 200 : 40 + rng.int(20))));
    const dir = mkdtempSync(join(tmpdir(), 'cta-icc-'));
    const tagged = join(dir, 'p3.jpg');
    const plain = join(dir, 'plain.jpg');
    const bytes = await sharp(raw, { raw: { width: CROP, height: CROP, channels: 3 } }).withIccProfile('p3').jpeg({ quality: 95 }).toBuffer();
    writeFileSync(tagged, bytes);
    writeFileSync(plain, stripIcc(bytes)); // the same scan data without the APP2 ICC segments
    expect((await sharp(tagged).metadata()).icc).toBeDefined();
    expect((await sharp(plain).metadata()).icc).toBeUndefined();
    const ours = await decodeImage(tagged, 'imagenetc');
    expect(maxDiff(ours, await decodeImage(plain, 'imagenetc')).max).toBe(0);
    const managed = new Uint8Array((await sharp(tagged).raw().toBuffer()).buffer);
    expect(maxDiff(ours, managed.subarray(0, ours.length)).max).toBeGreaterThan(5); // what sharp alone would give
  });

  it('torchvision size and crop arithmetic (int() truncation, round-half-even)', () => {
    expect(resizedSize(500, 375)).toEqual([341, 256]);
    expect(resizedSize(375, 500)).toEqual([256, 341]);
    expect(resizedSize(527, 350)).toEqual([385, 256]);
    expect(resizedSize(300, 300)).toEqual([256, 256]);
    expect(roundHalfEven(80.5)).toBe(80); // (385 − 224)/2: Python round, not Math.round
    expect(roundHalfEven(58.5)).toBe(58);
    expect(roundHalfEven(59.5)).toBe(60);
    expect(roundHalfEven(16)).toBe(16);
  });

  it('centerCrop pads with zeros where the image is smaller (torchvision CenterCrop)', () => {
    const src = new Uint8Array(2 * 4 * 3).fill(9); // 2 rows × 4 cols
    const out = centerCrop(src, 2, 4, 4);
    // rows: pad (4 − 2)//2 = 1 on top; cols: 4 = size, offset 0
    expect(Array.from(out.subarray(0, 12))).toEqual(new Array(12).fill(0));
    expect(Array.from(out.subarray(12, 36))).toEqual(new Array(24).fill(9));
    expect(Array.from(out.subarray(36))).toEqual(new Array(12).fill(0));
  });

  it('resizeBilinearPil keeps constants constant and is the identity at equal size', () => {
    const src = new Uint8Array(5 * 7 * 3).fill(77);
    expect(resizeBilinearPil(src, 5, 7, 11, 13).every((v) => v === 77)).toBe(true);
    const rng = new Rng(1);
    const img = Uint8Array.from({ length: 6 * 6 * 3 }, () => rng.int(256));
    expect(Array.from(resizeBilinearPil(img, 6, 6, 6, 6))).toEqual(Array.from(img));
  });
});

describe('ImageNet-C source on a generated tree', () => {
  let tree: ImageNetTree;
  beforeAll(async () => {
    tree = await makeImageNetTree({ perClass: 3, corruptions: ['gaussian_noise', 'fog'] });
  });
  const base = (over: Partial<ImageNetCOptions> = {}): ImageNetCOptions => ({
    dataDir: tree.root, // the parent of ImageNet-C/ is accepted
    severity: 5,
    corruptions: ['gaussian_noise', 'fog'],
    cleanDir: tree.clean,
    seed: 2020,
    ...over,
  });
  const collect = async (b: AsyncIterable<Batch>) => {
    const out: Batch[] = [];
    for await (const x of b) out.push(x);
    return out;
  };

  it('lists domains, sorts classes, and streams every image with its wnid rank as label', async () => {
    const src = imageNetCSource(base());
    await src.validate!();
    expect(src.names).toEqual(['gaussian_noise', 'fog', CLEAN_DOMAIN]);
    expect(src.numClasses).toBe(3);
    expect(await src.count!('fog')).toBe(9);
    const d = await src.open('fog');
    expect([d.n, d.height, d.width, d.channels, d.severity]).toEqual([9, 224, 224, 3, 5]);
    const order = new Rng(3).permutation(9);
    const batches = await collect(d.batches(order, 4));
    expect(batches.map((b) => b.y.length)).toEqual([4, 4, 1]);
    const indices = batches.flatMap((b) => Array.from(b.indices));
    expect(indices).toEqual(Array.from(order));
    // ImageFolder order: class-major, sorted files → sample i has label ⌊i/3⌋
    for (const b of batches) b.indices.forEach((i, k) => expect(b.y[k]).toBe(Math.floor(i / 3)));
    // pixels are the decoder's output / 255
    const first = batches[0];
    const i0 = first.indices[0];
    const path = join(tree.imagenetC, 'fog', '5', tree.wnids[Math.floor(i0 / 3)], tree.files[i0]);
    const px = await decodeImage(path, 'imagenetc');
    for (let p = 0; p < 500; p++) expect(first.x[p]).toBe(Math.fround(px[p] / 255));
    // the clean domain goes through resize + crop
    const clean = await src.open(CLEAN_DOMAIN);
    expect(clean.severity).toBeNull();
    const cb = await collect(clean.batches(Int32Array.from([0, 5]), 8));
    expect(cb[0].x.length).toBe(2 * CROP * CROP * 3);
    expect(src.files()).toContain(tree.clean);
  });

  it('openDomain uses the streaming path; load() decodes a whole (small) domain', async () => {
    const src = imageNetCSource(base());
    const d = await openDomain(src, 'gaussian_noise');
    expect(d.n).toBe(9);
    const whole = await src.load('gaussian_noise');
    expect(whole.n).toBe(9);
    expect(Array.from(whole.labels)).toEqual([0, 0, 0, 1, 1, 1, 2, 2, 2]);
  });

  it('--n-examples: a seeded class-balanced subset, the same images in every domain', async () => {
    const src = imageNetCSource(base({ nExamples: 5 }));
    const a = await collect((await src.open('gaussian_noise')).batches(Int32Array.from([0, 1, 2, 3, 4]), 5));
    const b = await collect((await src.open('fog')).batches(Int32Array.from([0, 1, 2, 3, 4]), 5));
    const perClass = [0, 0, 0];
    a[0].y.forEach((y) => perClass[y]++);
    expect(perClass.slice().sort()).toEqual([1, 2, 2]);
    expect(Array.from(b[0].y)).toEqual(Array.from(a[0].y));
    // same seed → same subset; the helper is balanced for any k
    expect(balancedSubset([3, 3, 3], 5, 7).map((p) => Array.from(p))).toEqual(balancedSubset([3, 3, 3], 5, 7).map((p) => Array.from(p)));
    expect(balancedSubset([50, 50, 50, 50], 10, 1).map((p) => p.length).sort()).toEqual([2, 2, 3, 3]);
    expect(balancedSubset([1, 10], 6, 1).map((p) => p.length)).toEqual([1, 5]); // shortfall moves on
  });

  it('--image-list: exactly the listed wnid/file entries, in list order; --n-examples keeps the first k', async () => {
    const list = join(tree.root, 'ids.txt');
    writeFileSync(list, `# RobustBench style\n${tree.wnids[2]}/${tree.files[7]}\n${tree.wnids[0]}/${tree.files[1]}\n\n${tree.wnids[1]}/${tree.files[3]}\n`);
    const src = imageNetCSource(base({ imageList: list }));
    await src.validate!();
    const d = await src.open('fog');
    expect(d.n).toBe(3);
    const [b] = await collect(d.batches(Int32Array.from([0, 1, 2]), 3));
    expect(Array.from(b.y)).toEqual([2, 0, 1]);
    expect(await imageNetCSource(base({ imageList: list, nExamples: 2 })).count!('fog')).toBe(2);
    writeFileSync(list, `${tree.wnids[0]}/ILSVRC2012_val_99999999.JPEG\n`);
    await expect(imageNetCSource(base({ imageList: list })).validate!()).rejects.toThrow(/ILSVRC2012_val_99999999\.JPEG/);
  });

  it('a missing class folder in one domain is an error naming the folder and the wnid', async () => {
    const t = await makeImageNetTree({ perClass: 1, corruptions: ['gaussian_noise', 'fog'] });
    rmSync(join(t.imagenetC, 'fog', '5', t.wnids[1]), { recursive: true });
    const src = imageNetCSource({ dataDir: t.imagenetC, severity: 5, corruptions: ['gaussian_noise', 'fog'], cleanDir: t.clean });
    const err = await src.validate!().then(() => null, (e: unknown) => e as Error);
    expect(err).toBeInstanceOf(CtaError);
    expect(err!.message).toContain(join(t.imagenetC, 'fog', '5'));
    expect(err!.message).toContain(`missing class folder(s) ${t.wnids[1]}`);
  });

  it('makeImageNetTree writes under the given parent folder', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'cta-tree-parent-'));
    const t = await makeImageNetTree({ perClass: 1, corruptions: ['fog'], parent });
    expect(t.root.startsWith(join(parent, 'cta-imagenet-'))).toBe(true);
    expect(existsSync(join(t.imagenetC, 'fog', '5', t.wnids[0], t.files[0]))).toBe(true);
    rmSync(parent, { recursive: true });
  });

  it('empty class folders, missing domain folders and a missing --clean-dir are clear errors', async () => {
    const t = await makeImageNetTree({ perClass: 1, corruptions: ['gaussian_noise'] });
    const empty = join(t.imagenetC, 'gaussian_noise', '5', 'n99999999');
    mkdirSync(empty);
    await expect(imageNetCSource({ dataDir: t.imagenetC, severity: 5, corruptions: ['gaussian_noise'], includeClean: false }).validate!()).rejects.toThrow(
      /hold no images.*n99999999/,
    );
    rmSync(empty, { recursive: true });
    await expect(imageNetCSource({ dataDir: t.imagenetC, severity: 3, corruptions: ['gaussian_noise'], includeClean: false }).validate!()).rejects.toThrow(
      /missing folder .*gaussian_noise\/3/,
    );
    await expect(imageNetCSource({ dataDir: t.imagenetC, severity: 5, corruptions: ['gaussian_noise'] }).validate!()).rejects.toThrow(/--clean-dir: required/);
    await expect(imageNetCSource({ dataDir: join(t.root, 'nope'), severity: 5, corruptions: ['gaussian_noise'] }).validate!()).rejects.toThrow(/nope does not exist/);
    const noClasses = join(t.root, 'emptyval');
    mkdirSync(noClasses);
    await expect(imageNetCSource({ dataDir: t.imagenetC, severity: 5, corruptions: ['gaussian_noise'], cleanDir: noClasses }).validate!()).rejects.toThrow(/no class folders/);
  });

  it('an unreadable JPEG stops the run naming the file, unless --skip-bad-images', async () => {
    const t = await makeImageNetTree({ perClass: 2, corruptions: ['gaussian_noise'] });
    const bad = join(t.imagenetC, 'gaussian_noise', '5', t.wnids[1], t.files[2]);
    writeFileSync(bad, Buffer.from('this is not a JPEG at all'));
    const truncated = join(t.imagenetC, 'gaussian_noise', '5', t.wnids[2], t.files[5]);
    const whole = await sharp(truncated).toBuffer();
    writeFileSync(truncated, whole.subarray(0, Math.floor(whole.length / 2)));
    const opts = { dataDir: t.imagenetC, severity: 5, corruptions: ['gaussian_noise'], includeClean: false };
    const order = Int32Array.from([0, 1, 2, 3, 4, 5]);
    const strict = await imageNetCSource(opts).open('gaussian_noise');
    await expect(collect(strict.batches(order, 6))).rejects.toThrow(new RegExp(`${t.files[2]}.*--skip-bad-images`));
    const warnings: string[] = [];
    const lenient = imageNetCSource({ ...opts, skipBadImages: true, warn: (l) => warnings.push(l) });
    const got = await collect((await lenient.open('gaussian_noise')).batches(order, 4));
    expect(got.map((b) => b.y.length)).toEqual([3, 1]);
    expect(got.flatMap((b) => Array.from(b.indices))).toEqual([0, 1, 3, 4]);
    expect(lenient.skipped).toEqual([bad, truncated]);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toContain(bad);
  });

  it('decodes the next batches while the caller is busy (prefetch overlap)', async () => {
    // Behaviour, not timing (how much the overlap saves is bench-jpeg's job): as soon as the
    // caller has batch 1, the JPEGs of the next batches are already on sharp's worker threads, and
    // they arrive complete and in order after a synchronous "model step".
    const t = await makeImageNetTree({ perClass: 16, corruptions: ['fog'] });
    const src = imageNetCSource({ dataDir: t.imagenetC, severity: 5, corruptions: ['fog'], includeClean: false, prefetchBatches: 2 });
    const d = await src.open('fog');
    const order = Int32Array.from({ length: d.n }, (_, i) => i);
    const it = d.batches(order, 16)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    const inFlight = sharp.counters();
    expect(inFlight.queue + inFlight.process).toBeGreaterThan(0);
    const seen = [...(first.value as Batch).indices];
    for (let k = 0; k < 2; k++) {
      const busyUntil = performance.now() + 100; // a synchronous model step
      while (performance.now() < busyUntil) {
        /* spin */
      }
      const r = await it.next();
      expect(r.done).toBe(false);
      seen.push(...(r.value as Batch).indices);
    }
    expect(seen).toEqual(Array.from(order.slice(0, 48)));
    await it.return?.();
    expect(readdirSync(join(t.imagenetC, 'fog', '5')).length).toBe(3);
  });
});
