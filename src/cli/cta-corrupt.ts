/**
 * cta-corrupt: writes a CIFAR-10-C-layout folder from a clean labelled set (IDX, CIFAR binary or
 * .npy), using the same seeded corruption blocks as `--data synthetic-c`:
 *
 *   <out>/<corruption>.npy   uint8 (k·n, H, W, 3): the k severity blocks stacked in ascending order
 *   <out>/labels.npy         the n labels repeated k times (uint8; int64 if a label exceeds 255)
 *   <out>/severities.json    which severity each block holds, plus seed, n, source and frost mode
 *   <out>/clean/test_batch.bin   the clean n images as a CIFAR-10 binary batch (--clean-path)
 *
 * With the default five severities this is exactly the published CIFAR-10-C layout, so
 * `cta-eval --data cifar10c --data-dir <out>` reads it. With --severities a subset is written
 * (block i = the i-th listed severity); cta-eval's CIFAR-C reader assumes five blocks, so such a
 * folder is for other tools, which should read severities.json.
 *
 * Own flags (not the run config), parsed with yargs; every error is one CtaError line (runMain).
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { runMain } from './run-main.js';
import { configureCli, packageVersion, parseArgv, valueOption, yargs } from './args.js';
import { CtaError } from '../util/errors.js';
import { checkOutDir } from '../util/out-path.js';
import { writeNpy } from '../io/npy.js';
import { CORRUPTION_NAMES } from '../data/corruptions/index.js';
import { CORRUPTIONS_15 } from '../data/stream.js';
import { loadClean, type CleanSet } from '../data/idx.js';
import { corruptBlock } from '../data/synthetic-c.js';

const USAGE = '$0 --input FILE --out DIR [options]';
// In the epilogue rather than the usage: yargs' ESM build hard-wraps a multi-line usage text to the
// width left after its first line; the epilogue gets the full width.
const ABOUT =
  'Corrupts a clean labelled set (IDX images (.gz ok) with the labels file beside it, a CIFAR binary ' +
  'batch, or <x>.npy + labels.npy) and writes a CIFAR-10-C-layout folder: <corruption>.npy with the ' +
  'severity blocks stacked 1…5, labels.npy, severities.json, and the clean set as clean/test_batch.bin ' +
  'for cta-eval --clean-path. Noise is seeded: same flags, same bytes.';

/** "1-5", "1,3,5", "2", "1-3,5" → ascending, duplicate-free severities in 1…5. */
export function parseSeverities(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(',').map((s) => s.trim())) {
    const m = /^(\d+)(?:\s*-\s*(\d+))?$/.exec(part);
    if (!m) throw new CtaError(`--severities: expected a list like 1-5 or 1,3,5, got ${JSON.stringify(text)}`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo < 1 || hi > 5 || lo > hi) throw new CtaError(`--severities: ${part} is not within 1…5`);
    for (let s = lo; s <= hi; s++) {
      if (out.includes(s)) throw new CtaError(`--severities: severity ${s} listed twice`);
      out.push(s);
    }
  }
  return out.sort((a, b) => a - b);
}

export function parseCorruptions(text: string): string[] {
  const items = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new CtaError('--corruptions: empty list');
  const known = CORRUPTION_NAMES as readonly string[];
  for (const c of items) {
    if (!known.includes(c)) throw new CtaError(`--corruptions: unknown corruption ${JSON.stringify(c)} (known: ${known.join(', ')})`);
  }
  if (new Set(items).size !== items.length) throw new CtaError('--corruptions: a corruption is listed twice');
  return items;
}

function intFlag(name: string, v: unknown, min: number): number | undefined {
  if (v === undefined) return undefined;
  const s = Array.isArray(v) ? v[v.length - 1] : v;
  const n = Number(s);
  if (typeof s === 'boolean' || String(s).trim() === '' || !Number.isInteger(n) || n < min) {
    throw new CtaError(`--${name}: expected an integer ≥ ${min}, got ${JSON.stringify(s)}`);
  }
  return n;
}

function strFlag(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined;
  const s = Array.isArray(v) ? v[v.length - 1] : v;
  if (typeof s !== 'string' || s === '') throw new CtaError(`--${name}: expected a value`);
  return s;
}

/** Write via a temporary name and rename, so an interrupted run never leaves a plausible-looking file. */
async function writeNpyAtomic(path: string, dtype: 'uint8' | 'int64', shape: number[], data: ArrayLike<number>): Promise<void> {
  const tmp = `${path}.partial`;
  await writeNpy(tmp, dtype, shape, data as Uint8Array);
  renameSync(tmp, path);
}

/**
 * The clean set in a form cta-eval reads for 'original': a CIFAR-10 binary batch (label byte + R, G,
 * B planes per record) when the images are 32×32 with labels 0…9, a CIFAR-100 one (coarse byte 0 —
 * unknown here and ignored by the reader — then the fine label) for labels up to 99, else an .npy pair.
 */
async function writeClean(dir: string, set: CleanSet): Promise<{ path: string; data: string }> {
  mkdirSync(dir, { recursive: true });
  let maxLabel = 0;
  for (const y of set.labels) maxLabel = Math.max(maxLabel, y);
  if (set.height === 32 && set.width === 32 && set.channels === 3 && maxLabel < 100) {
    const cifar10 = maxLabel < 10;
    const lb = cifar10 ? 1 : 2;
    const P = 32 * 32;
    const rec = lb + 3 * P;
    const buf = Buffer.alloc(set.n * rec);
    for (let i = 0; i < set.n; i++) {
      const r = i * rec;
      buf[r + lb - 1] = set.labels[i];
      const src = i * 3 * P;
      for (let p = 0; p < P; p++) {
        buf[r + lb + p] = set.images[src + 3 * p];
        buf[r + lb + P + p] = set.images[src + 3 * p + 1];
        buf[r + lb + 2 * P + p] = set.images[src + 3 * p + 2];
      }
    }
    const path = join(dir, cifar10 ? 'test_batch.bin' : 'test.bin');
    writeFileSync(`${path}.partial`, buf);
    renameSync(`${path}.partial`, path);
    return { path, data: cifar10 ? 'cifar10c' : 'cifar100c' };
  }
  const path = join(dir, 'images.npy');
  await writeNpyAtomic(path, 'uint8', [set.n, set.height, set.width, 3], set.images);
  await writeNpyAtomic(join(dir, 'labels.npy'), maxLabel < 256 ? 'uint8' : 'int64', [set.n], set.labels);
  return { path, data: 'synthetic-c' };
}

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-corrupt', async () => {
    const y = configureCli(yargs(argv), 'cta-corrupt', USAGE)
      .epilogue(ABOUT)
      .option('input', { type: 'string', describe: 'clean set: IDX images file (.gz ok), CIFAR binary batch or .npy' })
      .option('out', { type: 'string', describe: 'output folder (created; existing corruption files are overwritten)' })
      .option('corruptions', { type: 'string', defaultDescription: CORRUPTIONS_15.join(', '), describe: `comma-separated, in file order; known: ${CORRUPTION_NAMES.join(', ')}` })
      .option('severities', { type: 'string', defaultDescription: '1-5', describe: 'severity blocks to write: a range or list, e.g. 1-5, 1,3,5' })
      .option('n', { ...valueOption('int'), defaultDescription: 'all', describe: 'first N clean images (-n N or --n N)' })
      .option('seed', { ...valueOption('int'), defaultDescription: '2020', describe: 'noise seed; the same as cta-eval --seed gives the --data synthetic-c images' })
      .option('frost-dir', { type: 'string', defaultDescription: 'procedural frost (non-standard)', describe: 'folder with the original frost1..5 photos' })
      .strict();
    const parsed = await parseArgv(y, argv);

    const input = strFlag('input', parsed.input);
    const out = strFlag('out', parsed.out);
    if (!input) throw new CtaError('--input: required (a clean IDX images file, CIFAR binary batch or .npy)');
    if (!out) throw new CtaError('--out: required (the folder to write)');
    checkOutDir('--out', out);
    const corruptions = parsed.corruptions === undefined ? [...CORRUPTIONS_15] : parseCorruptions(strFlag('corruptions', parsed.corruptions)!);
    const severities = parsed.severities === undefined ? [1, 2, 3, 4, 5] : parseSeverities(strFlag('severities', parsed.severities)!);
    const n = intFlag('n', parsed.n, 1);
    const seed = intFlag('seed', parsed.seed, 0) ?? 2020;
    const frostDir = strFlag('frost-dir', parsed.frostDir);

    const err = (line: string) => process.stderr.write(line + '\n');
    const clean = await loadClean(input, { nExamples: n });
    if (clean.height !== 32 || clean.width !== 32) {
      err(`cta-corrupt: note: images are ${clean.height}×${clean.width}; cta-eval's CIFAR-C reader expects 32×32`);
    }
    if (severities.length !== 5) {
      err(`cta-corrupt: note: writing severities ${severities.join(',')} only; cta-eval --data cifar10c needs all five blocks`);
    }
    mkdirSync(out, { recursive: true });

    const k = severities.length;
    const { n: count, height: H, width: W } = clean;
    const pix = H * W * 3;
    const labels = new Array<number>(k * count);
    let maxLabel = 0;
    for (let b = 0; b < k; b++) {
      for (let i = 0; i < count; i++) {
        labels[b * count + i] = clean.labels[i];
        maxLabel = Math.max(maxLabel, clean.labels[i]);
      }
    }
    await writeNpyAtomic(join(out, 'labels.npy'), maxLabel < 256 ? 'uint8' : 'int64', [k * count], labels);

    const tty = process.stderr.isTTY;
    const tAll = performance.now();
    for (const [ci, name] of corruptions.entries()) {
      const t0 = performance.now();
      const buf = new Uint8Array(k * count * pix);
      for (const [b, s] of severities.entries()) {
        const onProgress = tty
          ? (done: number) => {
              if (done === count || done % 100 === 0) process.stderr.write(`\rcta-corrupt: [${ci + 1}/${corruptions.length}] ${name} severity ${s}: ${done}/${count}`);
            }
          : undefined;
        buf.set(await corruptBlock(clean, name, s, seed, { frostDir, onProgress }), b * count * pix);
      }
      await writeNpyAtomic(join(out, `${name}.npy`), 'uint8', [k * count, H, W, 3], buf);
      const secs = ((performance.now() - t0) / 1000).toFixed(2);
      process.stderr.write(`${tty ? '\r\x1b[K' : ''}cta-corrupt: [${ci + 1}/${corruptions.length}] ${name}: ${k}×${count} images in ${secs} s\n`);
    }

    const cleanOut = await writeClean(join(out, 'clean'), clean);
    const meta = {
      tool: `cta-eval ${packageVersion()} cta-corrupt`,
      layout: '<corruption>.npy rows [i*n, (i+1)*n) hold severities[i]; labels.npy repeats the n labels per block',
      severities,
      n: count,
      seed,
      corruptions,
      source: resolve(input),
      image_size: [H, W, 3],
      frost: corruptions.includes('frost') ? (frostDir ? `photos from ${resolve(frostDir)}` : 'procedural (non-standard)') : null,
      clean: cleanOut.path,
    };
    writeFileSync(join(out, 'severities.json'), JSON.stringify(meta, null, 2) + '\n');

    const log = (line: string) => process.stdout.write(line + '\n');
    log(`cta-corrupt: wrote ${corruptions.length} corruption(s) × ${k} severities × ${count} images to ${out} in ${((performance.now() - tAll) / 1000).toFixed(1)} s`);
    log(`clean set: ${cleanOut.path}`);
    if (cleanOut.data === 'synthetic-c') {
      log(`cta-eval cannot stream this folder as CIFAR-C (not 32×32 RGB with < 100 classes)`);
    } else {
      log(`use: cta-eval --data ${cleanOut.data} --data-dir ${out} --clean-path ${cleanOut.path}`);
    }
  });
}
