/**
 * The continual test stream (docs/protocol.md#stream): domains visited one after another, never
 * resetting the model between them. Default sequence = the 15 CIFAR-10-C / ImageNet-C corruptions in the
 * standard order (Hendrycks; same in Tent, CoTTA, MECTA's `--test_corrupt std`), then the clean test
 * set, "original". Each domain is shuffled afresh (MECTA: a new DataLoader with shuffle=True per
 * domain) or fed in file order (Tent's example); the last batch may be smaller (no drop_last).
 *
 * Data sets plug in through `DomainSource`; a domain is delivered as uint8 NHWC and turned into
 * float batches in [0, 1] here. No normalisation happens in the stream: every model carries its own
 * input normalisation (docs/protocol.md#input-normalisation).
 */
import { createHash } from 'node:crypto';
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import { join } from 'node:path';
import { checkCifarCFile, openCifarC, loadCifarCDomain, resolveCifarCDir, type CifarCInfo } from './cifar-c.js';
import { inspectCifarBinary, readCifarBinary, resolveCleanPath, type CifarVariant } from './cifar-bin.js';
import type { ImageSet } from './image-set.js';

/** One test domain, fully in memory as uint8 NHWC. */
export interface Domain extends ImageSet {
  name: string;
  /** Corruption severity 1…5; null for the clean domain. */
  severity: number | null;
}

/** Anything that can deliver the domains of a stream by name (CIFAR-C, ImageNet-C, synthetic …). */
export interface DomainSource {
  /** Domain names in stream order. */
  readonly names: string[];
  /**
   * Load one domain. Besides the names in `names`, 'original' (the clean set) must load even when
   * the stream does not visit it, because EATA's Fisher estimate draws from clean data.
   */
  load(name: string): Promise<Domain>;
  /** The data files this stream reads (for the run manifest); throws a CtaError if one is missing. */
  files(): string[];
  /** Number of samples `load(name)` will return, cheaply (without loading the images). */
  count?(name: string): Promise<number>;
  /** Check every domain's files up front (headers/sizes only) so a long run does not fail half way. */
  validate?(): Promise<void>;
  /**
   * Streaming access for sets too large to hold a domain in memory (ImageNet-C: 50,000 JPEGs per
   * domain): the domain's size and image shape now, the pixels batch by batch. The runner uses it
   * when present; `openDomain` gives every source this interface.
   */
  open?(name: string): Promise<DomainStream>;
  /** Number of classes the labels index (checked against the model when known). */
  readonly numClasses?: number;
}

/** A domain delivered batch by batch (see `DomainSource.open`). */
export interface DomainStream {
  name: string;
  severity: number | null;
  n: number;
  height: number;
  width: number;
  channels: number;
  /**
   * Every sample's label up front, when the source has them without decoding the images (needed
   * by the correlated settings' label-sorted order, src/data/settings.ts).
   */
  labels?: ArrayLike<number>;
  /**
   * Batches of the samples in `order` (indices 0…n−1), `batchSize` at a time, the last one
   * possibly smaller; a source may drop unreadable samples (then a batch is smaller still).
   */
  batches(order: Int32Array, batchSize: number): AsyncIterable<Batch>;
}

/** `source.open(name)`, or an in-memory domain from `source.load(name)` cut by `makeBatches`. */
export async function openDomain(source: DomainSource, name: string): Promise<DomainStream> {
  if (source.open) return source.open(name);
  const d = await source.load(name);
  return {
    name: d.name,
    severity: d.severity,
    n: d.n,
    height: d.height,
    width: d.width,
    channels: d.channels,
    labels: d.labels,
    async *batches(order, batchSize) {
      yield* makeBatches(d, order, batchSize);
    },
  };
}

export const CLEAN_DOMAIN = 'original';

/** The 15 benchmark corruptions in the standard order (not RobustBench's `CORRUPTIONS` order). */
export const CORRUPTIONS_15: readonly string[] = Object.freeze([
  'gaussian_noise',
  'shot_noise',
  'impulse_noise',
  'defocus_blur',
  'glass_blur',
  'motion_blur',
  'zoom_blur',
  'snow',
  'frost',
  'fog',
  'brightness',
  'contrast',
  'elastic_transform',
  'pixelate',
  'jpeg_compression',
]);

/** The 4 held-out corruptions shipped with CIFAR-10-C / ImageNet-C (not in the continual protocol). */
export const EXTRA_CORRUPTIONS: readonly string[] = Object.freeze([
  'speckle_noise',
  'gaussian_blur',
  'spatter',
  'saturate',
]);

/** Stream order: the corruptions as given, then 'original' when `cleanLast`. */
export function domainOrder(corruptions: readonly string[], cleanLast = true): string[] {
  const seen = new Set<string>();
  for (const c of corruptions) {
    if (seen.has(c)) throw new CtaError(`corruption '${c}' listed twice in the domain sequence`);
    seen.add(c);
  }
  const out = [...corruptions];
  if (cleanLast && !seen.has(CLEAN_DOMAIN)) out.push(CLEAN_DOMAIN);
  return out;
}

/**
 * Sample order for one domain: a fresh permutation drawn from the stream's single seeded `rng` when
 * shuffling (call once per domain, in stream order, so the whole stream is fixed by the seed), or
 * 0…n−1 (file order) otherwise, in which case the rng is not touched.
 */
export function batchOrder(n: number, shuffle: boolean, rng?: Rng): Int32Array {
  if (!Number.isInteger(n) || n < 0) throw new CtaError(`bad domain size ${n}`);
  if (shuffle) {
    if (!rng) throw new Error('batchOrder: shuffle needs an Rng');
    return rng.permutation(n);
  }
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  return order;
}

/** Orders for a whole stream, drawn in stream order from one rng (`counts[i]` = size of domain i). */
export function streamOrders(counts: readonly number[], shuffle: boolean, rng?: Rng): Int32Array[] {
  return counts.map((n) => batchOrder(n, shuffle, rng));
}

export interface Batch {
  /** b·h·w·c floats, NHWC, = uint8 / 255 (what torchvision's ToTensor gives). */
  x: Float32Array;
  y: Int32Array;
  /** Row indices into the domain (the sample ids, for logging/debugging). */
  indices: Int32Array;
  /** [b, h, w, c]. */
  shape: [number, number, number, number];
}

/** ceil(n / batchSize): the last batch is kept even when smaller. */
export function numBatches(n: number, batchSize: number): number {
  return Math.ceil(n / batchSize);
}

// uint8 → float32 in [0,1]. v/255 in double then rounded to float32 equals float32 division
// (double has enough precision that the double rounding is exact), so this matches `x.float()/255`.
const U8_TO_UNIT = (() => {
  const t = new Float32Array(256);
  for (let v = 0; v < 256; v++) t[v] = v / 255;
  return t;
})();

/** Lazily cut a domain into batches following `order` (the last batch may be smaller). */
export function* makeBatches(domain: Domain, order: Int32Array, batchSize: number): Generator<Batch> {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new CtaError(`batch size must be a positive integer, got ${batchSize}`);
  }
  const pix = domain.height * domain.width * domain.channels;
  if (domain.images.length !== domain.n * pix || domain.labels.length !== domain.n) {
    throw new Error(
      `domain ${domain.name}: ${domain.images.length} image bytes / ${domain.labels.length} labels ` +
        `do not match n=${domain.n} × ${domain.height}×${domain.width}×${domain.channels}`,
    );
  }
  for (let start = 0; start < order.length; start += batchSize) {
    const b = Math.min(batchSize, order.length - start);
    const indices = order.slice(start, start + b);
    const x = new Float32Array(b * pix);
    const y = new Int32Array(b);
    for (let j = 0; j < b; j++) {
      const i = indices[j];
      if (i < 0 || i >= domain.n) throw new Error(`domain ${domain.name}: sample index ${i} out of range 0…${domain.n - 1}`);
      y[j] = domain.labels[i];
      const src = i * pix;
      const dst = j * pix;
      for (let k = 0; k < pix; k++) x[dst + k] = U8_TO_UNIT[domain.images[src + k]];
    }
    yield { x, y, indices, shape: [b, domain.height, domain.width, domain.channels] };
  }
}

export interface FingerprintEntry {
  name: string;
  severity?: number | null;
  order: Int32Array;
  /**
   * What else the stream setting decided for this step (round, reset, correlated order: see
   * src/data/settings.ts); absent in the continual setting, whose fingerprints stay as they were.
   */
  tag?: string;
}

/**
 * sha256 (hex) over every domain's name, severity (when given) and sample order, in stream order.
 * Two runs with the same fingerprint saw exactly the same samples in the same order. The encoding
 * is fixed (UTF-8 name, NUL separators, int32 little-endian indices) so it is host-independent.
 */
export function streamFingerprint(entries: Iterable<FingerprintEntry>): string {
  const h = createHash('sha256');
  for (const e of entries) {
    h.update(`${e.name}\0${e.severity ?? ''}\0${e.order.length}\0`, 'utf8');
    if (e.tag !== undefined) h.update(`tag\0${e.tag}\0`, 'utf8');
    const buf = Buffer.alloc(e.order.length * 4);
    for (let i = 0; i < e.order.length; i++) buf.writeInt32LE(e.order[i], i * 4);
    h.update(buf);
  }
  return h.digest('hex');
}

/**
 * Yield `load(items[k])` in order, starting the load of item k+1 (up to `ahead` items) before item
 * k is handed out, so file I/O overlaps with adaptation on the current domain. At most `ahead + 1`
 * loaded items are alive at a time. A failed load surfaces when its item is reached.
 */
export async function* prefetch<T, R>(
  items: readonly T[],
  load: (item: T, index: number) => Promise<R>,
  ahead = 1,
): AsyncGenerator<R> {
  const pending: Promise<R>[] = [];
  let next = 0;
  const start = (): void => {
    const i = next++;
    const p = (async () => load(items[i], i))();
    // Mark as handled now; the rejection is re-raised by the `await` below when its turn comes.
    p.catch(() => undefined);
    pending.push(p);
  };
  if (items.length > 0) start();
  while (pending.length > 0) {
    const value = await pending.shift()!;
    while (next < items.length && pending.length < ahead) start();
    yield value;
  }
}

export interface CifarCSourceOptions {
  /** `--data-dir`: the CIFAR-10-C folder or a folder containing `CIFAR-10-C/`. */
  dataDir: string;
  /** Severity 1…5 for every corruption (5 in the protocol). */
  severity: number;
  /** Corruptions in stream order (default `CORRUPTIONS_15`). */
  corruptions?: readonly string[];
  /** Append the clean test set as the last domain (default true). */
  includeClean?: boolean;
  /** `--clean-path` to the binary test batch (default: see `resolveCleanPath`). */
  cleanPath?: string;
  /** First k samples of every domain (RobustBench `n_examples`). */
  nExamples?: number;
  /** 10 (CIFAR-10-C, default) or 100 (CIFAR-100-C). */
  numClasses?: number;
}

/**
 * DomainSource for CIFAR-10-C / CIFAR-100-C: corruption domains from the npy folder, 'original'
 * from the CIFAR binary test batch. Nothing is read until asked; labels.npy is read once. `load`
 * also accepts corruption names outside `names` (any `<corruption>.npy` in the folder).
 */
export function cifarCSource(opts: CifarCSourceOptions): DomainSource {
  const numClasses = opts.numClasses ?? 10;
  if (numClasses !== 10 && numClasses !== 100) {
    throw new CtaError(`CIFAR-C supports 10 or 100 classes, got ${numClasses}`);
  }
  const variant: CifarVariant = numClasses === 100 ? 'cifar100' : 'cifar10';
  const names = domainOrder(opts.corruptions ?? CORRUPTIONS_15, opts.includeClean ?? true);
  const cOpts = { numClasses, nExamples: opts.nExamples };
  const hasCorruptions = names.some((n) => n !== CLEAN_DOMAIN);

  let infoP: Promise<CifarCInfo> | undefined;
  const info = (): Promise<CifarCInfo> => (infoP ??= openCifarC(opts.dataDir, cOpts));
  const cleanFile = (): { path: string; n: number } => {
    const path = resolveCleanPath(opts.cleanPath, opts.dataDir, variant);
    const found = inspectCifarBinary(path);
    if (found.variant !== variant) {
      throw new CtaError(`${path}: is a ${found.variant} binary file but the stream expects ${variant}`);
    }
    return { path, n: found.n };
  };
  const clip = (n: number): number => (opts.nExamples === undefined ? n : Math.min(n, opts.nExamples));

  return {
    names,
    async load(name: string): Promise<Domain> {
      if (name === CLEAN_DOMAIN) {
        const { path } = cleanFile();
        const d = await readCifarBinary(path, { nExamples: opts.nExamples, variant });
        return { name, severity: null, images: d.images, labels: d.labels, n: d.n, height: 32, width: 32, channels: 3 };
      }
      const b = await loadCifarCDomain(await info(), name, opts.severity, cOpts);
      return { name, severity: opts.severity, ...b };
    },
    files(): string[] {
      const out: string[] = [];
      if (hasCorruptions) {
        const dir = resolveCifarCDir(opts.dataDir, cOpts);
        out.push(join(dir, 'labels.npy'));
        for (const n of names) if (n !== CLEAN_DOMAIN) out.push(join(dir, `${n}.npy`));
      }
      if (names.includes(CLEAN_DOMAIN)) {
        out.push(cleanFile().path);
      } else {
        // Not streamed, but may still be read for EATA's Fisher estimate: list it when present.
        try {
          out.push(cleanFile().path);
        } catch {
          /* no clean set available; nothing to record */
        }
      }
      return out;
    },
    async count(name: string): Promise<number> {
      if (name === CLEAN_DOMAIN) return clip(cleanFile().n);
      const i = await info();
      await checkCifarCFile(i, name);
      return clip(i.n);
    },
    async validate(): Promise<void> {
      if (!Number.isInteger(opts.severity) || opts.severity < 1 || opts.severity > 5) {
        throw new CtaError(`severity must be an integer 1…5, got ${opts.severity}`);
      }
      if (hasCorruptions) {
        const i = await info();
        for (const n of names) if (n !== CLEAN_DOMAIN) await checkCifarCFile(i, n);
      }
      if (names.includes(CLEAN_DOMAIN)) cleanFile();
    },
  };
}
