/**
 * Parity with the Python reference (scripts/make-corruption-fixtures.py: the CIFAR-10-C formulas of
 * make_cifar_c.py re-run with numpy 1.24 / scipy 1.10 / scikit-image 0.19 / OpenCV 4.6 / Pillow 9.4 /
 * ImageMagick 6.9 through Wand). Deterministic corruptions are compared directly; random ones are fed
 * the very draws the script used. Criterion: ≥ 99 % of values within ±1 grey level; JPEG must match
 * byte for byte. The per-corruption numbers are printed for the record.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../../util/rng.js';
import { glassBlurWith, motionBlurWith } from './blur.js';
import type { RgbImage } from './common.js';
import { elasticWith } from './digital.js';
import { CORRUPTION_FUNCS, type CorruptionName } from './index.js';
import { gaussianNoiseWith, impulseNoiseWith, shotNoiseWith, speckleNoiseWith } from './noise.js';
import { CIFAR_PARAMS, IMAGENET_PARAMS, npArange } from './params.js';
import { fogWith, snowWith, spatterWith } from './weather.js';

const here = dirname(fileURLToPath(import.meta.url));
// CORRUPTION_FIXTURES_DIR: point at a larger set made with `make-corruption-fixtures.py --extended N --out DIR`
const FIX = process.env.CORRUPTION_FIXTURES_DIR ?? join(here, '..', '..', '..', 'test', 'fixtures', 'corruptions');

interface Entry {
  kind: 'image' | 'output' | 'draws';
  offset: number;
  dtype: 'uint8' | 'int8' | 'uint16' | 'float32';
  shape: number[];
  name?: CorruptionName;
  severity?: number;
  image?: number | string;
  draws?: number[];
  angle?: number;
  table?: 'imagenet';
  what?: string;
}
interface Manifest {
  versions: Record<string, string>;
  zoom_factors: { cifar: number[][]; imagenet: number[][] };
  entries: Entry[];
}

const manifest = JSON.parse(readFileSync(join(FIX, 'manifest.json'), 'utf8')) as Manifest;
const blob = gunzipSync(readFileSync(join(FIX, 'data.bin.gz')));

function arr(i: number): Uint8Array | Int8Array | Uint16Array | Float32Array {
  const e = manifest.entries[i];
  const n = e.shape.reduce((a, b) => a * b, 1);
  const buf = blob.buffer.slice(blob.byteOffset + e.offset, blob.byteOffset + e.offset + n * bytes(e.dtype));
  switch (e.dtype) {
    case 'uint8':
      return new Uint8Array(buf);
    case 'int8':
      return new Int8Array(buf);
    case 'uint16':
      return new Uint16Array(buf);
    case 'float32':
      return new Float32Array(buf);
  }
}
function bytes(d: Entry['dtype']): number {
  return d === 'uint16' ? 2 : d === 'float32' ? 4 : 1;
}
function image(i: number): RgbImage {
  const e = manifest.entries[i];
  return { data: arr(i) as Uint8Array, height: e.shape[0], width: e.shape[1] };
}
/** u16 draws are uniforms k / 65536 */
function uniforms(i: number): Float64Array {
  const a = arr(i) as Uint16Array;
  const out = new Float64Array(a.length);
  for (let k = 0; k < a.length; k++) out[k] = a[k] / 65536;
  return out;
}

interface Stat {
  n: number;
  exact: number;
  within1: number;
  maxDiff: number;
}
const stats = new Map<string, Stat>();

function record(key: string, got: Uint8Array, want: Uint8Array): Stat {
  expect(got.length).toBe(want.length);
  const s = stats.get(key) ?? { n: 0, exact: 0, within1: 0, maxDiff: 0 };
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    s.n++;
    if (d === 0) s.exact++;
    if (d <= 1) s.within1++;
    if (d > s.maxDiff) s.maxDiff = d;
  }
  stats.set(key, s);
  return s;
}

async function compute(e: Entry): Promise<Uint8Array> {
  const img = image(e.image as number);
  const s = e.severity as number;
  const P = CIFAR_PARAMS;
  const d = e.draws ?? [];
  switch (e.name) {
    case 'gaussian_noise':
      return gaussianNoiseWith(img, P.gaussian_noise[s - 1], arr(d[0]));
    case 'speckle_noise':
      return speckleNoiseWith(img, P.speckle_noise[s - 1], arr(d[0]));
    case 'impulse_noise':
      return impulseNoiseWith(img, P.impulse_noise[s - 1], uniforms(d[0]), uniforms(d[1]));
    case 'shot_noise':
      return shotNoiseWith(img, P.shot_noise[s - 1], arr(d[0]));
    case 'glass_blur': {
      const [sigma, delta, it] = P.glass_blur[s - 1];
      return glassBlurWith(img, sigma, delta, it, arr(d[0]));
    }
    case 'fog': {
      const u = uniforms(d[0]);
      let k = 0;
      return fogWith(img, P.fog[s - 1], P.fogMapSize, () => u[k++]);
    }
    case 'elastic_transform':
      return elasticWith(img, P.elastic_transform[s - 1], uniforms(d[0]), uniforms(d[1]), uniforms(d[2]));
    case 'spatter':
      return spatterWith(img, P.spatter[s - 1], arr(d[0]));
    case 'motion_blur':
      return motionBlurWith(img, P.motion_blur[s - 1][0], P.motion_blur[s - 1][1], e.angle as number);
    case 'snow':
      return snowWith(img, P.snow[s - 1], arr(d[0]), e.angle as number);
    default:
      // deterministic: the public entry point (the 72×72 image selects the ImageNet table by size)
      return CORRUPTION_FUNCS[e.name as CorruptionName](img, s, new Rng(0), {});
  }
}

const outputs = manifest.entries.filter((e) => e.kind === 'output');
const names = [...new Set(outputs.map((e) => `${e.name}${e.table ? ' (imagenet table)' : ''}`))];

describe('corruption parity with the Python reference', () => {
  it('fixtures were made with the expected library versions', () => {
    expect(manifest.versions.pillow).toBe('9.4.0');
    expect(outputs.length).toBeGreaterThan(100);
  });

  it('zoom-blur factor lists equal numpy arange output exactly', () => {
    for (const [table, P] of [
      ['cifar', CIFAR_PARAMS],
      ['imagenet', IMAGENET_PARAMS],
    ] as const) {
      P.zoom_blur.forEach((a, i) => expect(Array.from(npArange(a))).toEqual(manifest.zoom_factors[table][i]));
    }
    expect(npArange(CIFAR_PARAMS.zoom_blur[0]).length).toBe(7);
  });

  for (const key of names) {
    it(`${key}: ≥ 99 % within ±1 grey level${key.startsWith('jpeg') ? ', JPEG byte-exact' : ''}`, async () => {
      for (const e of outputs.filter((o) => `${o.name}${o.table ? ' (imagenet table)' : ''}` === key)) {
        const want = arr(manifest.entries.indexOf(e)) as Uint8Array;
        const got = await compute(e);
        record(key, got, want);
        record(`${key} s${e.severity}`, got, want);
      }
      const s = stats.get(key) as Stat;
      if (key.startsWith('jpeg')) expect(s.exact).toBe(s.n);
      expect(s.within1 / s.n).toBeGreaterThanOrEqual(0.99);
    });
  }

  afterAll(() => {
    const rows = [...stats.entries()]
      .filter(([k]) => !/ s\d$/.test(k))
      .map(([k, s]) => `${k.padEnd(34)} n=${String(s.n).padStart(6)}  exact ${((100 * s.exact) / s.n).toFixed(2).padStart(6)} %  ±1 ${((100 * s.within1) / s.n).toFixed(2).padStart(6)} %  max |Δ| ${s.maxDiff}`);
    console.log(`corruption parity vs Python reference\n${rows.join('\n')}`);
  });
});
