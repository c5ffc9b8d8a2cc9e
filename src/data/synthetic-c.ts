/**
 * `--data synthetic-c`: a CIFAR-C-style stream built on the fly from any clean labelled set (IDX,
 * CIFAR binary or .npy; see idx.ts) with the TypeScript corruption generator. Nothing is written
 * to disk: each corruption domain is the first `nExamples` clean images run through `corrupt()` at
 * the configured severity, and 'original' is the clean images themselves.
 *
 * Reproducibility: each (corruption, severity) block draws from its own Rng, seeded from the run
 * seed, the corruption's index in the canonical 19-name list and the severity, so a domain's bytes
 * do not depend on which other domains the stream visits or in what order. `cta-corrupt` uses the
 * same blocks (`corruptBlock`), so a folder it writes with seed s holds exactly what synthetic-c
 * streams with `--seed s` (for the same n and frost source).
 */
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import {
  corrupt,
  CORRUPTION_NAMES,
  isCorruptionName,
  type CorruptionName,
  type CorruptOptions,
} from './corruptions/index.js';
import { cleanFiles, inspectClean, loadClean, type CleanSet } from './idx.js';
import { CLEAN_DOMAIN, CORRUPTIONS_15, domainOrder, type Domain, type DomainSource } from './stream.js';

/** murmur3's 32-bit finaliser: spreads every input bit over the output. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Seed of the Rng for one (corruption, severity) block. Uses the corruption's position in
 * `CORRUPTION_NAMES` (fixed), not its position in the stream, so reordering or dropping domains
 * leaves every other domain's bytes unchanged.
 */
export function blockSeed(seed: number, corruption: string, severity: number): number {
  const idx = CORRUPTION_NAMES.indexOf(corruption as CorruptionName);
  if (idx < 0) throw new CtaError(`unknown corruption "${corruption}"`);
  let h = fmix32((seed >>> 0) ^ 0x5bd1e995);
  h = fmix32(h ^ Math.imul(idx + 1, 0x9e3779b1));
  return fmix32(h ^ Math.imul(severity, 0x27d4eb2f));
}

// Hand the event loop a turn this often so timers, I/O and the progress display keep running while
// a long block is corrupted alongside adaptation.
const YIELD_MS = 30;

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

export interface CorruptBlockOptions extends CorruptOptions {
  /** Called after each image with the number done so far. */
  onProgress?: (done: number) => void;
}

/**
 * Corrupt every image of an NHWC RGB uint8 set (first `n` of `set`) with one corruption at one
 * severity, the Rng seeded by `blockSeed(seed, name, severity)` and drawn image after image.
 * Returns n·h·w·3 bytes.
 */
export async function corruptBlock(
  set: { images: Uint8Array; n: number; height: number; width: number; channels: number },
  name: string,
  severity: number,
  seed: number,
  opts: CorruptBlockOptions = {},
): Promise<Uint8Array> {
  if (!isCorruptionName(name)) throw new CtaError(`unknown corruption "${name}" (known: ${CORRUPTION_NAMES.join(', ')})`);
  if (set.channels !== 3) throw new CtaError(`corruptions need RGB images, got ${set.channels} channel(s)`);
  const { n, height, width } = set;
  const pix = height * width * 3;
  const out = new Uint8Array(n * pix);
  const rng = new Rng(blockSeed(seed, name, severity));
  const cOpts: CorruptOptions = { frostDir: opts.frostDir, jpegRoundTrip: opts.jpegRoundTrip };
  const image = (i: number) => ({ data: set.images.subarray(i * pix, (i + 1) * pix), height, width });
  let last = performance.now();
  const breathe = async (): Promise<void> => {
    if (performance.now() - last > YIELD_MS) {
      await tick();
      last = performance.now();
    }
  };

  // One Rng per block, drawn strictly in image order: image i's noise is fixed by the seed and i
  // alone (so the first k images do not depend on n). Running the deterministic corruptions
  // concurrently was tried for sharp's JPEG: under 10 % faster on 2 cores, not worth a second path.
  for (let i = 0; i < n; i++) {
    out.set(await corrupt(name, image(i), severity, rng, cOpts), i * pix);
    opts.onProgress?.(i + 1);
    await breathe();
  }
  return out;
}

export interface SyntheticCOptions {
  /** Clean labelled set: IDX images (.gz ok), CIFAR binary batch or `<x>.npy` + labels.npy. */
  source: string;
  /** Severity 1…5 for every corruption. */
  severity: number;
  /** Corruptions in stream order (default `CORRUPTIONS_15`); any of the 19 generator names. */
  corruptions?: readonly string[];
  /** Append the clean set as the last domain (default true). */
  includeClean?: boolean;
  /** First k clean images for every domain (default: all). */
  nExamples?: number;
  /** Base seed of the corruption noise (the runner passes `--seed`). */
  seed?: number;
  /** Folder with the frost1…frost5 photos; without it frost is procedural (non-standard). */
  frostDir?: string;
}

/**
 * DomainSource that corrupts a clean set on demand. The clean set is read once and kept; each
 * `load` of a corruption recomputes its domain (the runner loads each domain once).
 */
export function syntheticCSource(opts: SyntheticCOptions): DomainSource {
  const names = domainOrder(opts.corruptions ?? CORRUPTIONS_15, opts.includeClean ?? true);
  const seed = opts.seed ?? 0;
  if (opts.nExamples !== undefined && (!Number.isInteger(opts.nExamples) || opts.nExamples < 1)) {
    throw new CtaError(`n-examples must be a positive integer, got ${opts.nExamples}`);
  }
  let cleanP: Promise<CleanSet> | undefined;
  const clean = (): Promise<CleanSet> => (cleanP ??= loadClean(opts.source, { nExamples: opts.nExamples }));
  const checkName = (name: string): void => {
    if (name !== CLEAN_DOMAIN && !isCorruptionName(name)) {
      throw new CtaError(`synthetic-c: unknown domain "${name}" (not a corruption the generator knows)`);
    }
  };

  return {
    names,
    async load(name: string): Promise<Domain> {
      checkName(name);
      const c = await clean();
      const base = { name, labels: c.labels.slice(), n: c.n, height: c.height, width: c.width, channels: c.channels };
      if (name === CLEAN_DOMAIN) return { ...base, severity: null, images: c.images.slice() };
      const images = await corruptBlock(c, name, opts.severity, seed, { frostDir: opts.frostDir });
      return { ...base, severity: opts.severity, images };
    },
    files(): string[] {
      return cleanFiles(opts.source);
    },
    async count(name: string): Promise<number> {
      checkName(name);
      const { n } = await inspectClean(opts.source);
      return opts.nExamples === undefined ? n : Math.min(n, opts.nExamples);
    },
    async validate(): Promise<void> {
      if (!Number.isInteger(opts.severity) || opts.severity < 1 || opts.severity > 5) {
        throw new CtaError(`severity must be an integer 1…5, got ${opts.severity}`);
      }
      for (const n of names) checkName(n);
      await inspectClean(opts.source);
    },
  };
}
