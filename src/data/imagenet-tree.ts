/**
 * Test-only helper (not imported by library code): writes a small ImageNet-C-layout tree with sharp,
 * `<root>/ImageNet-C/<corruption>/<severity>/<wnid>/ILSVRC2012_val_<id>.JPEG` (224×224, q 85 as in
 * the published set) plus a clean validation folder `<root>/val/<wnid>/*.JPEG` of other sizes, so
 * the clean pipeline's resize + crop runs. Image k of class c has the same file name in every domain.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { Rng } from '../util/rng.js';

export interface TreeOptions {
  wnids?: string[];
  perClass?: number;
  corruptions?: string[];
  severity?: number;
  /** Clean image sizes [w, h] cycled over the files (default: a landscape and a portrait). */
  cleanSizes?: [number, number][];
  seed?: number;
  /** Parent folder of the tree's fresh `cta-imagenet-*` root (default: the OS temp folder). */
  parent?: string;
}

export interface ImageNetTree {
  root: string;
  /** `<root>/ImageNet-C` */
  imagenetC: string;
  /** `<root>/val` */
  clean: string;
  wnids: string[];
  files: string[];
}

/** A smooth class-dependent pattern plus noise, as a JPEG. */
async function writeJpeg(path: string, w: number, h: number, cls: number, rng: Rng): Promise<void> {
  const px = Buffer.alloc(w * h * 3);
  const base = [(cls * 80) % 256, (cls * 150 + 60) % 256, (cls * 40 + 120) % 256];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        const v = base[c] + 50 * Math.sin((x + 13 * cls) / (9 + c)) * Math.cos(y / (11 + cls)) + 30 * (rng.next() - 0.5);
        px[(y * w + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  }
  await sharp(px, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 85 }).toFile(path);
}

export async function makeImageNetTree(opts: TreeOptions = {}): Promise<ImageNetTree> {
  const wnids = opts.wnids ?? ['n01440764', 'n01443537', 'n01484850'];
  const perClass = opts.perClass ?? 2;
  const corruptions = opts.corruptions ?? ['gaussian_noise', 'fog'];
  const severity = opts.severity ?? 5;
  const cleanSizes = opts.cleanSizes ?? [[300, 240], [250, 320]];
  const rng = new Rng(opts.seed ?? 11);
  const root = mkdtempSync(join(opts.parent ?? tmpdir(), 'cta-imagenet-'));
  const imagenetC = join(root, 'ImageNet-C');
  const clean = join(root, 'val');
  const files: string[] = [];
  for (let k = 0; k < perClass * wnids.length; k++) files.push(`ILSVRC2012_val_${String(k + 1).padStart(8, '0')}.JPEG`);
  const jobs: Promise<void>[] = [];
  wnids.forEach((wnid, ci) => {
    const mine = files.slice(ci * perClass, (ci + 1) * perClass);
    for (const c of corruptions) {
      const dir = join(imagenetC, c, String(severity), wnid);
      mkdirSync(dir, { recursive: true });
      for (const f of mine) jobs.push(writeJpeg(join(dir, f), 224, 224, ci, rng));
    }
    const cdir = join(clean, wnid);
    mkdirSync(cdir, { recursive: true });
    mine.forEach((f, i) => {
      const [w, h] = cleanSizes[i % cleanSizes.length];
      jobs.push(writeJpeg(join(cdir, f), w, h, ci, rng));
    });
  });
  await Promise.all(jobs);
  return { root, imagenetC, clean, wnids, files };
}
