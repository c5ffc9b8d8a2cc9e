import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { defaultConfig } from '../config/schema.js';
import { corrupt, CORRUPTION_NAMES } from './corruptions/index.js';
import { loadClean } from './idx.js';
import { DATA_SOURCES } from './registry.js';
import { blockSeed, corruptBlock, syntheticCSource } from './synthetic-c.js';

const ROOT = join(import.meta.dirname, '..', '..');
const IMAGES = join(ROOT, 'assets', 'fashion-mnist', 't10k-images-idx3-ubyte.gz');
const LABELS = join(ROOT, 'assets', 'fashion-mnist', 't10k-labels-idx1-ubyte.gz');
const N = 6;

const same = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && Buffer.from(a).equals(Buffer.from(b));

describe('blockSeed', () => {
  it('depends on seed, corruption and severity, not on any stream order', () => {
    const seeds = new Set<number>();
    for (const c of CORRUPTION_NAMES) for (let s = 1; s <= 5; s++) seeds.add(blockSeed(2020, c, s));
    expect(seeds.size).toBe(19 * 5);
    expect(blockSeed(1, 'fog', 3)).not.toBe(blockSeed(2, 'fog', 3));
    // Pinned: changing the derivation silently changes every synthetic-c stream and cta-corrupt folder.
    expect([blockSeed(2020, 'gaussian_noise', 5), blockSeed(0, 'jpeg_compression', 1), blockSeed(7, 'saturate', 3)]).toEqual([
      3325811810, 2371107097, 4036893551,
    ]);
    expect(() => blockSeed(1, 'rain', 1)).toThrow(CtaError);
  });
});

describe('corruptBlock', () => {
  it('is corrupt() image after image with one Rng seeded by blockSeed', async () => {
    const clean = await loadClean(IMAGES, { nExamples: 4 });
    for (const name of ['gaussian_noise', 'glass_blur', 'contrast']) {
      const got = await corruptBlock(clean, name, 3, 11);
      const rng = new Rng(blockSeed(11, name, 3));
      const pix = 32 * 32 * 3;
      for (let i = 0; i < 4; i++) {
        const want = await corrupt(name, { data: clean.images.subarray(i * pix, (i + 1) * pix), height: 32, width: 32 }, 3, rng);
        expect(same(got.subarray(i * pix, (i + 1) * pix), want), `${name} image ${i}`).toBe(true);
      }
    }
  });
});

describe('syntheticCSource', () => {
  it('streams the corruptions then original, with the clean labels everywhere', async () => {
    const src = syntheticCSource({ source: IMAGES, severity: 5, corruptions: ['gaussian_noise', 'fog'], nExamples: N, seed: 1 });
    expect(src.names).toEqual(['gaussian_noise', 'fog', 'original']);
    expect(syntheticCSource({ source: IMAGES, severity: 5, corruptions: ['fog'], includeClean: false }).names).toEqual(['fog']);
    expect(src.files()).toEqual([IMAGES, LABELS]);
    await src.validate!();
    expect(await src.count!('fog')).toBe(N);
    expect(await src.count!('original')).toBe(N);

    const clean = await loadClean(IMAGES, { nExamples: N });
    const orig = await src.load('original');
    expect(orig).toMatchObject({ name: 'original', severity: null, n: N, height: 32, width: 32, channels: 3 });
    expect(same(orig.images, clean.images)).toBe(true);
    expect(Array.from(orig.labels)).toEqual(Array.from(clean.labels));

    for (const name of ['gaussian_noise', 'fog']) {
      const d = await src.load(name);
      expect(d).toMatchObject({ name, severity: 5, n: N, height: 32, width: 32, channels: 3 });
      expect(Array.from(d.labels)).toEqual(Array.from(clean.labels));
      expect(same(d.images, clean.images)).toBe(false);
    }
    // A corruption outside the stream still loads (the generator knows all 19).
    expect((await src.load('snow')).severity).toBe(5);
  });

  it('gives the same bytes for a seed, whatever the domain list or load order', async () => {
    const a = syntheticCSource({ source: IMAGES, severity: 4, corruptions: ['gaussian_noise', 'fog', 'frost'], nExamples: N, seed: 2020 });
    const b = syntheticCSource({ source: IMAGES, severity: 4, corruptions: ['frost', 'shot_noise', 'fog', 'gaussian_noise'], nExamples: N, seed: 2020 });
    const aFrost = await a.load('frost');
    const bFrost = await b.load('frost'); // b visits frost first, a last: still identical
    expect(same(aFrost.images, bFrost.images)).toBe(true);
    for (const name of ['fog', 'gaussian_noise']) {
      expect(same((await a.load(name)).images, (await b.load(name)).images), name).toBe(true);
    }
    // Loading twice from the same source gives the same bytes (no state carried between loads).
    expect(same((await a.load('fog')).images, (await a.load('fog')).images)).toBe(true);

    // Another seed changes the random corruptions but not the deterministic ones.
    const c = syntheticCSource({ source: IMAGES, severity: 4, corruptions: ['gaussian_noise', 'contrast'], nExamples: N, seed: 2021 });
    expect(same((await c.load('gaussian_noise')).images, (await a.load('gaussian_noise')).images)).toBe(false);
    expect(same((await c.load('contrast')).images, (await a.load('contrast')).images)).toBe(true);
  });

  it('the first k images do not depend on nExamples', async () => {
    const small = syntheticCSource({ source: IMAGES, severity: 2, corruptions: ['impulse_noise'], nExamples: 3, seed: 5 });
    const large = syntheticCSource({ source: IMAGES, severity: 2, corruptions: ['impulse_noise'], nExamples: N, seed: 5 });
    const s = await small.load('impulse_noise');
    const l = await large.load('impulse_noise');
    expect(s.n).toBe(3);
    expect(same(s.images, l.images.subarray(0, s.images.length))).toBe(true);
  });

  it('reports bad input as one-line errors', async () => {
    const missing = syntheticCSource({ source: '/nonexistent/x-images-idx3-ubyte.gz', severity: 5, corruptions: ['fog'] });
    expect(() => missing.files()).toThrow(/\/nonexistent\/x-images-idx3-ubyte\.gz: file not found/);
    await expect(missing.validate!()).rejects.toThrow(/file not found/);
    const badSev = syntheticCSource({ source: IMAGES, severity: 0, corruptions: ['fog'] });
    await expect(badSev.validate!()).rejects.toThrow(/severity must be an integer 1…5, got 0/);
    await expect(syntheticCSource({ source: IMAGES, severity: 1 }).load('rain')).rejects.toThrow(/unknown domain "rain"/);
    expect(() => syntheticCSource({ source: IMAGES, severity: 1, corruptions: ['fog', 'fog'] })).toThrow(/listed twice/);
  });

  it('is registered as --data synthetic-c and needs --source', () => {
    const cfg = defaultConfig();
    cfg.data = 'synthetic-c';
    expect(() => DATA_SOURCES['synthetic-c'](cfg)).toThrow(/^--source: required for --data synthetic-c/);
    cfg.source = IMAGES;
    cfg.corruptions = ['fog', 'pixelate'];
    expect(DATA_SOURCES['synthetic-c'](cfg).names).toEqual(['fog', 'pixelate', 'original']);
  });
});
