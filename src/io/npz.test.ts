/**
 * The .npz reader on archives written the way numpy.savez / savez_compressed write them
 * (scripts/make-npz-fixtures.py): STORED and DEFLATEd members, zip64 extra fields, every dtype the
 * weight loaders take, big-endian data, 0-d arrays, '/' in array names; format detection next to
 * torch.save zips; and one-line errors for broken archives.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { looksLikeNpz, parseNpz, readNpz } from './npz.js';
import { loadWeightFile, weightFileFormat } from './state-dict.js';
import { errorOf } from '../util/test-errors.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'npz');
const expected = JSON.parse(readFileSync(join(DIR, 'expected.json'), 'utf8')) as {
  arch: { keys: string[]; dim: number; heads: number; depth: number; mlp: number; patch: number; img: number; classes: number };
  dtypes: Record<string, { descr: string; shape: number[]; values: number[] }>;
};
const tmp = mkdtempSync(join(tmpdir(), 'cta-npz-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const RAW_DTYPE: Record<string, string> = { '<f4': 'float32', '>f4': 'float32', '<f8': 'float64', '<i8': 'int64', '<i4': 'int32', '|u1': 'uint8', '|b1': 'bool' };

describe('parseNpz', () => {
  it('reads numpy.savez_compressed (DEFLATE) members of every dtype with their values', async () => {
    const sd = await readNpz(join(DIR, 'dtypes.npz'));
    expect([...sd.keys()]).toEqual(Object.keys(expected.dtypes));
    for (const [name, want] of Object.entries(expected.dtypes)) {
      const t = sd.get(name)!;
      expect(t.shape, name).toEqual(want.shape);
      expect(t.dtype, name).toBe(RAW_DTYPE[want.descr]);
      // floats arrive as Float32Array (RawTensor's convention), integers exactly as Float64Array
      expect(t.data instanceof Float32Array, name).toBe(want.descr.includes('f'));
      const exact = want.descr.includes('f') ? want.values.map((v) => Math.fround(v)) : want.values;
      expect(Array.from(t.data), name).toEqual(exact);
    }
    expect(sd.get('i8')!.data[1]).toBe(2 ** 40); // int64 beyond int32, exact
  });

  it('reads numpy.savez (STORED, zip64) members in archive order', async () => {
    const buf = new Uint8Array(readFileSync(join(DIR, 'vit_tiny.npz')));
    expect(looksLikeNpz(buf, 'vit_tiny.npz')).toBe(true);
    const sd = parseNpz(buf, 'vit_tiny.npz');
    expect([...sd.keys()]).toEqual(expected.arch.keys);
    const { dim, heads, patch } = expected.arch;
    expect(sd.get('embedding/kernel')!.shape).toEqual([patch, patch, 3, dim]);
    expect(sd.get('Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel')!.shape).toEqual([dim, heads, dim / heads]);
    expect([...sd.values()].every((t) => t.dtype === 'float32' && t.data instanceof Float32Array)).toBe(true);
  });

  it('is told apart from torch.save zips and safetensors by content, whatever the extension', async () => {
    const npz = readFileSync(join(DIR, 'vit_tiny.npz'));
    const pt = readFileSync(join(process.cwd(), 'test', 'fixtures', 'io', 'plain.pt'));
    expect(weightFileFormat(npz, 'w.npz')).toBe('npz');
    expect(weightFileFormat(npz, 'w.bin')).toBe('npz');
    expect(weightFileFormat(pt, 'w.pt')).toBe('torch-zip');
    expect(weightFileFormat(pt, 'w.npz')).toBe('torch-zip');
    const renamed = join(tmp, 'checkpoint.weights');
    writeFileSync(renamed, npz);
    const { sd, format } = await loadWeightFile(renamed);
    expect(format).toBe('npz');
    expect(sd.size).toBe(expected.arch.keys.length);
  });

  it('gives one-line errors for junk, truncated archives, foreign members and broken npy headers', () => {
    expect(errorOf(() => parseNpz(new Uint8Array(Buffer.from('not a zip')), 'x.npz'))).toBe(
      "x.npz: not an .npz archive (no zip 'PK' signature), expected a file written by numpy.savez / savez_compressed",
    );
    const buf = new Uint8Array(readFileSync(join(DIR, 'vit_tiny.npz')));
    expect(errorOf(() => parseNpz(buf.subarray(0, buf.length - 100), 'cut.npz'))).toMatch(/^cut\.npz: zip archive .*expected a complete zip \(\.npz\) archive \(truncated or corrupt\?\)$/);
    const pt = new Uint8Array(readFileSync(join(process.cwd(), 'test', 'fixtures', 'io', 'plain.pt')));
    expect(errorOf(() => parseNpz(pt, 'plain.pt'))).toMatch(/^plain\.pt: zip archive has members that are not \.npy arrays \(.*data\.pkl.*\), expected an \.npz written by numpy\.savez$/);
    // Break the first member's npy magic (STORED, so its bytes are in the file as written).
    const broken = Uint8Array.from(buf);
    const at = Buffer.from(broken).indexOf(Buffer.from('\x93NUMPY', 'latin1'));
    broken[at + 1] = 0x58;
    expect(errorOf(() => parseNpz(broken, 'w.npz'))).toBe(`w.npz: array ${expected.arch.keys[0]}: not an npy array (expected the \\x93NUMPY magic at its start)`);
  });

  it('loadWeightFile says which file and what was expected for a non-zip .npz', async () => {
    const junk = join(tmp, 'junk.npz');
    writeFileSync(junk, 'hello');
    await expect(loadWeightFile(junk)).rejects.toThrow(`${junk}: not an .npz archive (no zip 'PK' signature)`);
  });
});
