/**
 * ImageNet-C (Hendrycks & Dietterich 2019; Zenodo 2235448) as a streaming DomainSource.
 *
 * Layout (docs/data-formats.md#imagenet-c): `<data-dir>/<corruption>/<severity>/<wnid>/*.JPEG`,
 * 224×224 JPEGs, 50 per class and 50,000 per (corruption, severity); `--data-dir` may also be the folder
 * that contains `ImageNet-C/`. The class index of an image is the rank of its wnid among the
 * **sorted** class folders (RobustBench `CustomImageFolder`, torchvision `ImageFolder`); every
 * domain of a run must hold the same class folders, otherwise the indices would silently shift.
 * The clean domain ('original') is an ImageNet validation folder in the same `<wnid>/*.JPEG`
 * layout (`--clean-dir`), pre-processed with Resize(256) + CenterCrop(224)
 * (docs/protocol.md#pre-processing).
 *
 * Samples: all images of the folder by default (all 50,000, MECTA's protocol:
 * docs/protocol.md#severity-and-samples); with `--n-examples k` a seeded, class-balanced subset of
 * k (⌊k/C⌋ per class, the remainder to
 * classes drawn at random; the same images in every domain whose folders list the same files);
 * with `--image-list FILE` exactly the `wnid/file` lines of FILE, in file order (the format of
 * RobustBench's 5,000-image `imagenet_test_image_ids.txt`, which users can pass; it is not shipped
 * here), of which `--n-examples` keeps the first k as RobustBench does.
 *
 * Pixels are never held for a whole domain (one ImageNet-C domain is 7.5 GB as uint8): `open()`
 * lists the files, and `batches()` decodes with sharp in a bounded prefetch queue — the JPEGs of
 * the next `prefetchBatches` batches are queued on sharp's worker threads while the model adapts
 * on the current batch, so decoding overlaps the (synchronous) tfjs step instead of following it.
 * An unreadable image is a CtaError naming the file unless `skipBadImages`, which drops it with a
 * warning (it then counts neither as correct nor as wrong).
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CtaError, listSome } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { CROP, decodeImage, type DecodePipeline } from './jpeg-decode.js';
import { CLEAN_DOMAIN, CORRUPTIONS_15, domainOrder, prefetch, type Batch, type Domain, type DomainSource, type DomainStream } from './stream.js';

/** torchvision's IMG_EXTENSIONS (ImageFolder), compared case-insensitively. */
const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp'];
const SEVERITIES = 5;
const PIXELS = CROP * CROP * 3;

export interface ImageNetCOptions {
  /** `--data-dir`: the ImageNet-C folder, or a folder containing `ImageNet-C/`. */
  dataDir: string | null;
  severity: number;
  /** Corruptions in stream order (default the 15 standard ones). */
  corruptions?: readonly string[];
  /** Append the clean domain (default true). */
  includeClean?: boolean;
  /** `--clean-dir`: ImageNet validation images as `<wnid>/*.JPEG`. */
  cleanDir?: string | null;
  nExamples?: number;
  /** `--image-list`: a text file of `wnid/file` lines. */
  imageList?: string | null;
  skipBadImages?: boolean;
  /** Seeds the class-balanced subset (--seed). */
  seed?: number;
  /** Batches decoded ahead of the one being adapted (default 2). */
  prefetchBatches?: number;
  /** Where warnings go (skipped images); default stderr. */
  warn?: (line: string) => void;
}

/** One image folder: sorted class folders and, per class, its sorted image file names. */
export interface ImageFolderListing {
  dir: string;
  classes: string[];
  files: string[][];
}

interface Sample {
  path: string;
  label: number;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

const isImage = (name: string) => IMAGE_EXTENSIONS.some((e) => name.toLowerCase().endsWith(e));

/**
 * Lists `<dir>/<class>/<image>`: classes are the sub-folders in sorted order (hidden ones
 * skipped), images the files with an image extension, sorted. Errors name the folder: missing,
 * without class folders, or with an empty class folder.
 */
export function listImageFolder(dir: string, what: string): ImageFolderListing {
  if (!isDir(dir)) throw new CtaError(`${what}: folder ${dir} does not exist`);
  const classes = readdirSync(dir, { withFileTypes: true })
    .filter((e) => !e.name.startsWith('.') && (e.isDirectory() || (e.isSymbolicLink() && isDir(join(dir, e.name)))))
    .map((e) => e.name)
    .sort();
  if (classes.length === 0) throw new CtaError(`${what}: ${dir} has no class folders (expected <wnid>/*.JPEG)`);
  const files: string[][] = [];
  const empty: string[] = [];
  for (const c of classes) {
    const f = readdirSync(join(dir, c)).filter(isImage).sort();
    if (f.length === 0) empty.push(c);
    files.push(f);
  }
  if (empty.length > 0) {
    throw new CtaError(`${what}: ${empty.length} class folder(s) of ${dir} hold no images (${IMAGE_EXTENSIONS.join(' ')}): ${listSome(empty)}`);
  }
  return { dir, classes, files };
}

/** Throws unless `got` has exactly the class folders of `ref` (labels are ranks in the sorted list). */
export function checkSameClasses(ref: ImageFolderListing, got: ImageFolderListing): void {
  if (ref.classes.length === got.classes.length && ref.classes.every((c, i) => c === got.classes[i])) return;
  const have = new Set(got.classes);
  const want = new Set(ref.classes);
  const missing = ref.classes.filter((c) => !have.has(c));
  const extra = got.classes.filter((c) => !want.has(c));
  const parts: string[] = [];
  if (missing.length) parts.push(`missing class folder(s) ${listSome(missing)}`);
  if (extra.length) parts.push(`extra class folder(s) ${listSome(extra)}`);
  throw new CtaError(
    `${got.dir}: ${parts.join('; ')} (${got.classes.length} classes here, ${ref.classes.length} in ${ref.dir}); ` +
      'every domain needs the same class folders, since a label is the rank of its wnid among them',
  );
}

/**
 * A seeded class-balanced subset of k samples: ⌊k/C⌋ per class, the remaining k mod C to classes
 * in a random order; a class with too few images gives its shortfall to the others (same order).
 * Returns, per class, the chosen file indices in ascending order. Deterministic in (seed, counts).
 */
export function balancedSubset(counts: readonly number[], k: number, seed: number): Int32Array[] {
  const c = counts.length;
  const total = counts.reduce((a, b) => a + b, 0);
  const rng = new Rng(seed);
  const classOrder = rng.permutation(c);
  const quota = new Array<number>(c).fill(0);
  let left = Math.min(k, total);
  // Round-robin over the classes in the drawn order: equal shares, remainder to the first drawn.
  while (left > 0) {
    let moved = false;
    for (const ci of classOrder) {
      if (left === 0) break;
      if (quota[ci] < counts[ci]) {
        quota[ci]++;
        left--;
        moved = true;
      }
    }
    if (!moved) break;
  }
  return counts.map((n, ci) => {
    const pick = rng.permutation(n).slice(0, quota[ci]);
    return pick.sort();
  });
}

/** Parses an image list: one `wnid/file` per line; blank lines and `#` comments ignored. */
export function readImageList(path: string): { wnid: string; file: string; line: number }[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw new CtaError(`--image-list ${path}: file not found`);
  }
  const out: { wnid: string; file: string; line: number }[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const parts = line.split('/');
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      throw new CtaError(`--image-list ${path}:${i + 1}: expected 'wnid/file', got '${line}'`);
    }
    out.push({ wnid: parts[0], file: parts[1], line: i + 1 });
  });
  if (out.length === 0) throw new CtaError(`--image-list ${path}: no entries`);
  return out;
}

/** The `ImageNet-C` folder: `dir` itself when it holds a corruption folder, else `dir/ImageNet-C`. */
export function resolveImageNetCRoot(dir: string, corruptions: readonly string[]): string {
  if (!isDir(dir)) throw new CtaError(`ImageNet-C folder ${dir} does not exist (check --data-dir)`);
  for (const cand of [dir, join(dir, 'ImageNet-C')]) {
    if (corruptions.some((c) => isDir(join(cand, c)))) return cand;
  }
  throw new CtaError(
    `${dir}: no corruption folders (${listSome([...corruptions], 3)}) here or in ${join(dir, 'ImageNet-C')}; ` +
      'expected <corruption>/<severity>/<wnid>/*.JPEG (check --data-dir)',
  );
}

/** Uint8 HWC → float32 in [0,1] lookup (the same values as stream.ts / torchvision ToTensor). */
const U8_TO_UNIT = Float32Array.from({ length: 256 }, (_, v) => v / 255);

export interface ImageNetCSource extends DomainSource {
  open(name: string): Promise<DomainStream>;
  /** Images dropped so far by --skip-bad-images (paths). */
  readonly skipped: readonly string[];
}

export function imageNetCSource(opts: ImageNetCOptions): ImageNetCSource {
  const corruptions = opts.corruptions ?? CORRUPTIONS_15;
  const names = domainOrder(corruptions, opts.includeClean ?? true);
  const corrupted = names.filter((n) => n !== CLEAN_DOMAIN);
  const ahead = Math.max(1, opts.prefetchBatches ?? 2);
  const warn = opts.warn ?? ((line: string) => process.stderr.write(`${line}\n`));
  const seed = opts.seed ?? 0;
  const skipped: string[] = [];
  if (opts.nExamples !== undefined && !(Number.isInteger(opts.nExamples) && opts.nExamples >= 1)) {
    throw new CtaError(`n-examples must be a positive integer, got ${opts.nExamples}`);
  }

  let root: string | null = null;
  const rootDir = (): string => {
    if (root) return root;
    if (!opts.dataDir) throw new CtaError('--data-dir: required for --data imagenetc (the ImageNet-C folder: <corruption>/<severity>/<wnid>/*.JPEG)');
    return (root = resolveImageNetCRoot(opts.dataDir, corrupted.length ? corrupted : corruptions));
  };
  const domainDir = (name: string): string => {
    if (name === CLEAN_DOMAIN) {
      if (!opts.cleanDir) {
        throw new CtaError(
          "--clean-dir: required for the clean ImageNet domain 'original' (the stream's last domain and EATA's Fisher data): " +
            'an ImageNet validation folder <wnid>/*.JPEG; or pass --no-clean-last with a method that needs no clean data',
        );
      }
      return opts.cleanDir;
    }
    const dir = join(rootDir(), name, String(opts.severity));
    if (!isDir(dir)) {
      const present = readdirSync(rootDir()).filter((f) => isDir(join(rootDir(), f))).sort();
      throw new CtaError(`ImageNet-C: missing folder ${dir} (corruption folders in ${rootDir()}: ${present.length ? listSome(present) : 'none'})`);
    }
    return dir;
  };

  const listings = new Map<string, ImageFolderListing>();
  let reference: ImageFolderListing | null = null;
  const listing = (name: string): ImageFolderListing => {
    let l = listings.get(name);
    if (l) return l;
    const what = name === CLEAN_DOMAIN ? 'ImageNet clean domain (--clean-dir)' : `ImageNet-C ${name}/${opts.severity}`;
    l = listImageFolder(domainDir(name), what);
    // The first domain listed fixes the class list; stream order makes that the first corruption.
    if (!reference) reference = l;
    else checkSameClasses(reference, l);
    listings.set(name, l);
    return l;
  };
  const ensureReference = (): void => {
    if (!reference && names.length > 0) listing(names[0]);
  };

  let list: ReturnType<typeof readImageList> | null = null;
  const imageList = () => (list ??= readImageList(opts.imageList!));

  const samplesCache = new Map<string, Sample[]>();
  const samples = (name: string): Sample[] => {
    const cached = samplesCache.get(name);
    if (cached) return cached;
    ensureReference();
    const l = listing(name);
    const out: Sample[] = [];
    if (opts.imageList) {
      const index = new Map(l.classes.map((c, i) => [c, i]));
      const entries = imageList().slice(0, opts.nExamples ?? Infinity);
      const missing: string[] = [];
      for (const e of entries) {
        const ci = index.get(e.wnid);
        if (ci === undefined || !l.files[ci].includes(e.file)) {
          missing.push(`${e.wnid}/${e.file}`);
          continue;
        }
        out.push({ path: join(l.dir, e.wnid, e.file), label: ci });
      }
      if (missing.length > 0) {
        throw new CtaError(`--image-list ${opts.imageList}: ${missing.length} listed image(s) not found in ${l.dir}: ${listSome(missing, 3)}`);
      }
    } else if (opts.nExamples !== undefined) {
      // One generator per domain from the same seed: identical listings give identical subsets.
      const picks = balancedSubset(l.files.map((f) => f.length), opts.nExamples, seed ^ 0x1a6e7c);
      picks.forEach((idx, ci) => idx.forEach((fi) => out.push({ path: join(l.dir, l.classes[ci], l.files[ci][fi]), label: ci })));
    } else {
      l.files.forEach((fs, ci) => fs.forEach((f) => out.push({ path: join(l.dir, l.classes[ci], f), label: ci })));
    }
    samplesCache.set(name, out);
    return out;
  };

  const pipelineOf = (name: string): DecodePipeline => (name === CLEAN_DOMAIN ? 'clean' : 'imagenetc');

  /** Decodes the samples `idx`, all queued at once on sharp's threads; drops bad ones if allowed. */
  async function decodeBatch(list: Sample[], idx: Int32Array, pipeline: DecodePipeline): Promise<Batch> {
    const results = await Promise.allSettled(Array.from(idx, (i) => decodeImage(list[i].path, pipeline)));
    const keep: number[] = [];
    results.forEach((r, j) => {
      if (r.status === 'fulfilled') {
        keep.push(j);
        return;
      }
      const msg = (r.reason as Error).message;
      if (!opts.skipBadImages) throw new CtaError(`${msg} (pass --skip-bad-images to skip unreadable images)`);
      skipped.push(list[idx[j]].path);
      warn(`warning: skipped ${msg}`);
    });
    const b = keep.length;
    const x = new Float32Array(b * PIXELS);
    const y = new Int32Array(b);
    const indices = new Int32Array(b);
    keep.forEach((j, k) => {
      const px = (results[j] as PromiseFulfilledResult<Uint8Array>).value;
      const off = k * PIXELS;
      for (let p = 0; p < PIXELS; p++) x[off + p] = U8_TO_UNIT[px[p]];
      y[k] = list[idx[j]].label;
      indices[k] = idx[j];
    });
    return { x, y, indices, shape: [b, CROP, CROP, 3] };
  }

  const source: ImageNetCSource = {
    names,
    get numClasses(): number | undefined {
      return reference ? (reference as ImageFolderListing).classes.length : undefined;
    },
    get skipped() {
      return skipped;
    },
    async open(name: string): Promise<DomainStream> {
      const list = samples(name);
      const pipeline = pipelineOf(name);
      return {
        name,
        severity: name === CLEAN_DOMAIN ? null : opts.severity,
        n: list.length,
        height: CROP,
        width: CROP,
        channels: 3,
        // Known from the folder names before any decoding: the correlated orders need them.
        labels: Int32Array.from(list, (smp) => smp.label),
        async *batches(order: Int32Array, batchSize: number): AsyncGenerator<Batch> {
          if (!Number.isInteger(batchSize) || batchSize < 1) throw new CtaError(`batch size must be a positive integer, got ${batchSize}`);
          const chunks: Int32Array[] = [];
          for (let s = 0; s < order.length; s += batchSize) chunks.push(order.slice(s, s + batchSize));
          for (const c of chunks) {
            for (const i of c) if (i < 0 || i >= list.length) throw new Error(`${name}: sample index ${i} out of range 0…${list.length - 1}`);
          }
          for await (const b of prefetch(chunks, (idx) => decodeBatch(list, idx, pipeline), ahead)) {
            if (b.y.length > 0) yield b; // every image of the batch skipped: nothing to adapt on
          }
        },
      };
    },
    async load(name: string): Promise<Domain> {
      const d = await source.open(name);
      const order = Int32Array.from({ length: d.n }, (_, i) => i);
      const images = new Uint8Array(d.n * PIXELS);
      const labels = new Int32Array(d.n);
      let n = 0;
      for await (const b of d.batches(order, 64)) {
        for (let k = 0; k < b.y.length; k++, n++) {
          for (let p = 0; p < PIXELS; p++) images[n * PIXELS + p] = Math.round(b.x[k * PIXELS + p] * 255);
          labels[n] = b.y[k];
        }
      }
      return { name, severity: d.severity, images: images.subarray(0, n * PIXELS), labels: labels.subarray(0, n), n, height: CROP, width: CROP, channels: 3 };
    },
    files(): string[] {
      // Folders, not the 50,000 files of each domain (the manifest records what was read).
      const out: string[] = [];
      for (const n of names) out.push(domainDir(n));
      if (opts.imageList) out.push(opts.imageList);
      if (!names.includes(CLEAN_DOMAIN) && opts.cleanDir) out.push(opts.cleanDir);
      return out;
    },
    async count(name: string): Promise<number> {
      return samples(name).length;
    },
    async validate(): Promise<void> {
      if (!Number.isInteger(opts.severity) || opts.severity < 1 || opts.severity > SEVERITIES) {
        throw new CtaError(`severity must be an integer 1…${SEVERITIES}, got ${opts.severity}`);
      }
      for (const n of names) samples(n);
      // Not streamed but possibly read (EATA's Fisher): check it too when given.
      if (!names.includes(CLEAN_DOMAIN) && opts.cleanDir) samples(CLEAN_DOMAIN);
      if (opts.imageList && !existsSync(opts.imageList)) throw new CtaError(`--image-list ${opts.imageList}: file not found`);
    },
  };
  return source;
}
