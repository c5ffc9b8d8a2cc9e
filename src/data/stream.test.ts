import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { writeNpy } from '../io/npy.js';
import {
  CLEAN_DOMAIN,
  CORRUPTIONS_15,
  EXTRA_CORRUPTIONS,
  batchOrder,
  cifarCSource,
  domainOrder,
  makeBatches,
  numBatches,
  prefetch,
  streamFingerprint,
  streamOrders,
  type Domain,
} from './stream.js';

const IMG = 32 * 32 * 3;

function toyDomain(n: number, name = 'toy'): Domain {
  const h = 2;
  const w = 2;
  const c = 3;
  const images = new Uint8Array(n * h * w * c);
  for (let i = 0; i < images.length; i++) images[i] = (i * 7) & 0xff;
  const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
  return { name, severity: 5, images, labels, n, height: h, width: w, channels: c };
}

describe('domain order', () => {
  it('has the 15 corruptions in the standard order and the 4 extras', () => {
    expect(CORRUPTIONS_15).toEqual([
      'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
      'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression',
    ]);
    expect(EXTRA_CORRUPTIONS).toEqual(['speckle_noise', 'gaussian_blur', 'spatter', 'saturate']);
    expect(Object.isFrozen(CORRUPTIONS_15)).toBe(true);
  });

  it('appends original last (16 domains) unless asked not to', () => {
    const d = domainOrder(CORRUPTIONS_15);
    expect(d).toHaveLength(16);
    expect(d[15]).toBe(CLEAN_DOMAIN);
    expect(d.slice(0, 15)).toEqual([...CORRUPTIONS_15]);
    expect(domainOrder(['fog'], false)).toEqual(['fog']);
    expect(domainOrder(['fog', 'original'])).toEqual(['fog', 'original']);
    expect(() => domainOrder(['fog', 'fog'])).toThrow(CtaError);
  });
});

describe('batchOrder', () => {
  it('is file order without shuffle and does not touch the rng', () => {
    const rng = new Rng(1);
    const before = rng.state();
    expect(Array.from(batchOrder(5, false, rng))).toEqual([0, 1, 2, 3, 4]);
    expect(rng.state()).toEqual(before);
    expect(Array.from(batchOrder(3, false))).toEqual([0, 1, 2]);
  });

  it('shuffles deterministically by seed, with a fresh permutation per domain', () => {
    const a = streamOrders([50, 50, 30], true, new Rng(2020));
    const b = streamOrders([50, 50, 30], true, new Rng(2020));
    const c = streamOrders([50, 50, 30], true, new Rng(2021));
    expect(a.map((o) => Array.from(o))).toEqual(b.map((o) => Array.from(o)));
    expect(Array.from(a[0])).not.toEqual(Array.from(c[0]));
    expect(Array.from(a[0])).not.toEqual(Array.from(a[1])); // not the same shuffle reused
    for (const o of a) {
      expect(Array.from(o).sort((x, y) => x - y)).toEqual(Array.from({ length: o.length }, (_, i) => i));
    }
    expect(Array.from(a[0])).not.toEqual(Array.from({ length: 50 }, (_, i) => i));
  });
});

describe('makeBatches', () => {
  it('yields full batches and a smaller last one, following the order', () => {
    const d = toyDomain(10);
    const order = batchOrder(10, true, new Rng(3));
    const batches = [...makeBatches(d, order, 4)];
    expect(batches.map((b) => b.shape[0])).toEqual([4, 4, 2]);
    expect(numBatches(10, 4)).toBe(3);
    expect(Array.from(batches.flatMap((b) => Array.from(b.indices)))).toEqual(Array.from(order));
    const pix = 2 * 2 * 3;
    for (const b of batches) {
      expect(b.shape).toEqual([b.y.length, 2, 2, 3]);
      expect(b.x.length).toBe(b.y.length * pix);
      b.indices.forEach((i, j) => {
        expect(b.y[j]).toBe(d.labels[i]);
        for (let k = 0; k < pix; k++) expect(b.x[j * pix + k]).toBe(Math.fround(d.images[i * pix + k] / 255));
      });
    }
    expect([...makeBatches(d, order, 10)]).toHaveLength(1);
    expect([...makeBatches(d, order, 64)].map((b) => b.shape[0])).toEqual([10]);
  });

  it('maps uint8 to [0,1] exactly as x/255 in float32', () => {
    const d: Domain = { ...toyDomain(1), images: Uint8Array.from([0, 1, 127, 128, 254, 255, 0, 0, 0, 0, 0, 0]) };
    const [b] = [...makeBatches(d, batchOrder(1, false), 1)];
    expect(b.x[0]).toBe(0);
    expect(b.x[5]).toBe(1);
    expect(b.x[2]).toBe(Math.fround(127 / 255));
  });

  it('is lazy and rejects bad batch sizes', () => {
    const d = toyDomain(6);
    const it1 = makeBatches(d, batchOrder(6, false), 2);
    expect(it1.next().value?.indices).toEqual(Int32Array.from([0, 1]));
    expect(() => [...makeBatches(d, batchOrder(6, false), 0)]).toThrow(/batch size must be a positive integer/);
  });
});

describe('streamFingerprint', () => {
  const entries = () => [
    { name: 'gaussian_noise', severity: 5, order: Int32Array.from([2, 0, 1]) },
    { name: 'original', severity: null, order: Int32Array.from([0, 1, 2]) },
  ];
  it('is stable and pinned (changing the encoding would break manifests)', () => {
    const f = streamFingerprint(entries());
    expect(f).toMatch(/^[0-9a-f]{64}$/);
    expect(streamFingerprint(entries())).toBe(f);
    // Same value from Python: sha256(b'gaussian_noise\x005\x003\x00' + struct.pack('<3i', 2, 0, 1) + b'original\x00\x003\x00' + struct.pack('<3i', 0, 1, 2)).
    expect(f).toBe('deb338ec39011b5473f284842caf5d1ab86dfe9ad2ed062011be03918393a62a');
  });
  it('changes with the order, the names or the severity', () => {
    const f = streamFingerprint(entries());
    const e1 = entries();
    e1[0].order = Int32Array.from([2, 1, 0]);
    expect(streamFingerprint(e1)).not.toBe(f);
    const e2 = entries();
    e2[1].name = 'fog';
    expect(streamFingerprint(e2)).not.toBe(f);
    const e3 = entries();
    e3[0].severity = 4;
    expect(streamFingerprint(e3)).not.toBe(f);
    expect(streamFingerprint(entries().reverse())).not.toBe(f);
  });
  it('is a function of the seed for shuffled streams', () => {
    const fp = (seed: number) => {
      const rng = new Rng(seed);
      return streamFingerprint(['a', 'b'].map((name) => ({ name, order: batchOrder(20, true, rng) })));
    };
    expect(fp(1)).toBe(fp(1));
    expect(fp(1)).not.toBe(fp(2));
  });
});

describe('prefetch', () => {
  it('yields in order and starts loading k+1 before k is consumed', async () => {
    const events: string[] = [];
    const load = async (x: number) => {
      events.push(`start ${x}`);
      await new Promise((r) => setTimeout(r, 5));
      events.push(`done ${x}`);
      return x * 10;
    };
    const got: number[] = [];
    for await (const v of prefetch([1, 2, 3], load)) {
      events.push(`use ${v}`);
      got.push(v);
    }
    expect(got).toEqual([10, 20, 30]);
    // item 2 is started before item 1 is used; item 3 not before item 1 is used (depth 1).
    expect(events.indexOf('start 2')).toBeLessThan(events.indexOf('use 10'));
    expect(events.indexOf('start 3')).toBeGreaterThan(events.indexOf('use 10'));
  });

  it('surfaces a failed load at its turn without an unhandled rejection', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const got: number[] = [];
      const run = async () => {
        for await (const v of prefetch([1, 2], async (x) => {
          if (x === 2) throw new CtaError('boom 2');
          return x;
        })) {
          got.push(v);
          await new Promise((r) => setTimeout(r, 20)); // item 2 fails while item 1 is in use
        }
      };
      await expect(run()).rejects.toThrow('boom 2');
      expect(got).toEqual([1]);
      await new Promise((r) => setTimeout(r, 10));
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('handles an empty list', async () => {
    const out: unknown[] = [];
    for await (const v of prefetch([], async () => 1)) out.push(v);
    expect(out).toEqual([]);
  });
});

describe('cifarCSource', () => {
  const n = 6;
  let root: string;
  let setDir: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'cta-stream-'));
    setDir = join(root, 'CIFAR-10-C');
    await mkdir(setDir);
    await writeNpy(join(setDir, 'labels.npy'), 'uint8', [5 * n], Array.from({ length: 5 * n }, (_, r) => r % n));
    for (const [ci, c] of ['gaussian_noise', 'shot_noise'].entries()) {
      const data = new Uint8Array(5 * n * IMG);
      for (let r = 0; r < 5 * n; r++) data.fill(ci * 100 + r, r * IMG, (r + 1) * IMG);
      await writeNpy(join(setDir, `${c}.npy`), 'uint8', [5 * n, 32, 32, 3], data);
    }
    // Clean set: 4 CIFAR-10 binary records, label = record index, pixels = 200 + index.
    await mkdir(join(root, 'cifar-10-batches-bin'));
    const rec = 3073;
    const bin = Buffer.alloc(4 * rec);
    for (let i = 0; i < 4; i++) {
      bin[i * rec] = i;
      bin.fill(200 + i, i * rec + 1, (i + 1) * rec);
    }
    await writeFile(join(root, 'cifar-10-batches-bin', 'test_batch.bin'), bin);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('streams the corruptions then original, loading one domain at a time', async () => {
    const src = cifarCSource({ dataDir: setDir, severity: 5, corruptions: ['gaussian_noise', 'shot_noise'] });
    expect(src.names).toEqual(['gaussian_noise', 'shot_noise', 'original']);
    await src.validate?.();
    expect(src.files()).toEqual([
      join(setDir, 'labels.npy'),
      join(setDir, 'gaussian_noise.npy'),
      join(setDir, 'shot_noise.npy'),
      join(root, 'cifar-10-batches-bin', 'test_batch.bin'),
    ]);
    const counts = await Promise.all(src.names.map((x) => src.count!(x)));
    expect(counts).toEqual([n, n, 4]);

    const seen: Domain[] = [];
    for await (const d of prefetch(src.names, (x) => src.load(x))) seen.push(d);
    expect(seen.map((d) => [d.name, d.severity, d.n])).toEqual([
      ['gaussian_noise', 5, n],
      ['shot_noise', 5, n],
      ['original', null, 4],
    ]);
    expect(seen[0].images[0]).toBe(4 * n); // row (5−1)·n of gaussian_noise
    expect(seen[1].images[IMG]).toBe(100 + 4 * n + 1);
    expect(Array.from(seen[2].labels)).toEqual([0, 1, 2, 3]);
    expect(seen[2].images[3 * IMG]).toBe(203);

    // End to end: batches of the shuffled stream.
    const rng = new Rng(2020);
    const orders = seen.map((d) => batchOrder(d.n, true, rng));
    const sizes = seen.map((d, i) => [...makeBatches(d, orders[i], 4)].map((b) => b.shape[0]));
    expect(sizes).toEqual([[4, 2], [4, 2], [4]]);
  });

  it('honours nExamples everywhere and loads original even when not streamed', async () => {
    const src = cifarCSource({ dataDir: root, severity: 2, nExamples: 3, includeClean: false, corruptions: ['shot_noise'] });
    expect(src.names).toEqual(['shot_noise']);
    const d = await src.load('shot_noise');
    expect(d.n).toBe(3);
    expect(d.images[0]).toBe(100 + n);
    const clean = await src.load(CLEAN_DOMAIN);
    expect(clean.n).toBe(3);
    expect(await src.count!('original')).toBe(3);
  });

  it('validate() reports a missing corruption before anything runs', async () => {
    const src = cifarCSource({ dataDir: root, severity: 5 }); // default: all 15 corruptions
    expect(src.names).toHaveLength(16);
    await expect(src.validate!()).rejects.toThrow(/missing corruption file .*impulse_noise\.npy/);
  });

  it('validate() reports a missing clean set with the --clean-path hint', async () => {
    const src = cifarCSource({ dataDir: setDir, severity: 5, corruptions: ['gaussian_noise'], cleanPath: join(root, 'nope.bin') });
    await expect(src.validate!()).rejects.toThrow(/--clean-path/);
  });
});
