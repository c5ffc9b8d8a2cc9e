import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { CtaError } from '../util/errors.js';
import { parseTorchPt, readTorchPt, readZipDirectory, readZipEntry } from './torch-pt.js';
import type { StateDict } from './types.js';

// Fixtures come from scripts/make_io_fixtures.py (Debian torch 1.13); expected.json holds torch's own values.
const FIX = join(process.cwd(), 'test', 'fixtures', 'io');
type Expected = Record<string, { tensors?: Record<string, { dtype: string; shape: number[]; values: (number | string)[] }>; error?: string }>;
const expected = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8')) as Expected;

/** Exact comparison against torch's values (float64 sources are delivered rounded to float32). */
function expectMatchesFixture(sd: StateDict, file: string): void {
  const want = expected[file]!.tensors!;
  expect([...sd.keys()]).toEqual(Object.keys(want));
  for (const [name, w] of Object.entries(want)) {
    const t = sd.get(name)!;
    expect(t.dtype, name).toBe(w.dtype);
    expect(t.shape, name).toEqual(w.shape);
    const isFloat = ['float32', 'float16', 'bfloat16', 'float64'].includes(w.dtype);
    expect(t.data, name).toBeInstanceOf(isFloat ? Float32Array : Float64Array);
    const wantValues = w.values.map((v) => (isFloat ? Math.fround(Number(v)) : Number(v)));
    // Object.is distinguishes -0 and matches NaN; toEqual on plain arrays reports the first difference.
    const got = Array.from(t.data);
    expect(got.length, name).toBe(wantValues.length);
    got.forEach((g, i) => {
      if (!Object.is(g, wantValues[i])) expect(`${name}[${i}] = ${g}`).toBe(`${name}[${i}] = ${wantValues[i]}`);
    });
  }
}

async function errorOf(p: Promise<unknown> | (() => unknown)): Promise<CtaError> {
  try {
    if (typeof p === 'function') p();
    else await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as Error).message).not.toContain('\n');
    return e as CtaError;
  }
  throw new Error('expected a CtaError');
}

describe('readTorchPt on torch.save fixtures', () => {
  it('reads a plain float32 state_dict with an int64 num_batches_tracked, in file order', async () => {
    const sd = await readTorchPt(join(FIX, 'plain.pt'));
    expectMatchesFixture(sd, 'plain.pt');
    expect(sd.get('bn.num_batches_tracked')).toEqual({ dtype: 'int64', shape: [], data: new Float64Array([17]) });
  });

  it('reads DEFLATE-compressed zip entries', async () => {
    expectMatchesFixture(await readTorchPt(join(FIX, 'plain_deflate.pt')), 'plain_deflate.pt');
  });

  it('reads every storage dtype exactly (f16, bf16, f64, int64 beyond 2^32, bool, empty, scalar, Parameter)', async () => {
    const sd = await readTorchPt(join(FIX, 'dtypes.pt'));
    expectMatchesFixture(sd, 'dtypes.pt');
    expect(Array.from(sd.get('i64')!.data)).toEqual([0, -5, 2 ** 40 + 3, -(2 ** 50) - 1, 2 ** 53]);
    expect(sd.get('empty')!.shape).toEqual([0, 3]);
    expect(sd.get('scalar')).toEqual({ dtype: 'float32', shape: [], data: new Float32Array([2.5]) });
  });

  it('copies non-contiguous views (transpose, offset window, step, expand) into row-major data', async () => {
    const sd = await readTorchPt(join(FIX, 'strided.pt'));
    expectMatchesFixture(sd, 'strided.pt');
    expect(Array.from(sd.get('window')!.data)).toEqual([8, 9, 10, 14, 15, 16]);
    expect(Array.from(sd.get('expanded')!.data)).toEqual([1.5, -2, 3, 1.5, -2, 3]);
  });

  it("takes 'state_dict' out of a training checkpoint and ignores epoch/optimizer", async () => {
    const sd = await readTorchPt(join(FIX, 'checkpoint.pt'));
    expectMatchesFixture(sd, 'checkpoint.pt');
    expect([...sd.keys()].every((k) => k.startsWith('module.'))).toBe(true);
  });

  it("takes 'net' when the weights live there", async () => {
    expectMatchesFixture(await readTorchPt(join(FIX, 'ckpt_net.pth')), 'ckpt_net.pth');
  });

  it('ignores non-whitelisted globals outside the weights (argparse.Namespace next to state_dict)', async () => {
    expectMatchesFixture(await readTorchPt(join(FIX, 'with_args.pt')), 'with_args.pt');
  });

  it('names a non-whitelisted global found among the weights', async () => {
    const e = await errorOf(readTorchPt(join(FIX, 'mixed.pt')));
    expect(e.message).toBe(`${join(FIX, 'mixed.pt')}: 'state_dict' mixes tensors with other values (acc: ${expected['mixed.pt']!.error}), expected a dict of tensors`);
  });

  it('refuses a pickled nn.Module, naming its class', async () => {
    const e = await errorOf(readTorchPt(join(FIX, 'whole_model.pt')));
    expect(e.message).toContain(expected['whole_model.pt']!.error!);
    expect(e.message).toContain('torch.save(model.state_dict(), path)');
  });

  it('refuses legacy (pre-1.6) files with re-save advice', async () => {
    const e = await errorOf(readTorchPt(join(FIX, 'legacy.pt')));
    expect(e.message).toMatch(/legacy \(pre-1\.6, non-zip\)/);
    expect(e.message).toContain('torch.save');
    expect(e.message).toContain('safetensors');
  });

  it('reports a missing file', async () => {
    const e = await errorOf(readTorchPt(join(FIX, 'nope.pt')));
    expect(e.message).toBe(`${join(FIX, 'nope.pt')}: file not found`);
  });
});

describe('parseTorchPt on damaged input', () => {
  const plain = new Uint8Array(readFileSync(join(FIX, 'plain.pt')));

  it('rejects non-zip, non-pickle bytes', async () => {
    const e = await errorOf(() => parseTorchPt(new TextEncoder().encode('hello world'), 'x.pt'));
    expect(e.message).toMatch(/^x\.pt: not a PyTorch zip checkpoint/);
  });

  it('rejects a truncated archive (end record cut off)', async () => {
    const e = await errorOf(() => parseTorchPt(plain.subarray(0, plain.length - 30), 't.pt'));
    expect(e.message).toMatch(/^t\.pt: zip archive has no end-of-central-directory record/);
  });

  it('rejects an archive whose storage bytes are missing', async () => {
    // Keep the directory but cut the file in the middle of the data: the local header offsets point past it.
    const dir = readZipDirectory(plain, 'p');
    const last = [...dir.values()].sort((a, b) => b.localHeaderOffset - a.localHeaderOffset)[1]!;
    const cut = new Uint8Array(plain);
    // Corrupt that entry's local header signature instead of truncating, so the directory stays readable.
    cut[last.localHeaderOffset] = 0;
    const e = await errorOf(() => parseTorchPt(cut, 'c.pt'));
    expect(e.message).toContain(`c.pt: zip entry ${last.name} has no local header`);
  });

  it('reads STORED and DEFLATE entries through the zip helpers', () => {
    const dir = readZipDirectory(plain, 'p');
    const pkl = [...dir.values()].find((e) => e.name.endsWith('/data.pkl'))!;
    const bytes = readZipEntry(plain, pkl, 'p');
    expect(bytes[0]).toBe(0x80); // pickle PROTO opcode
    expect(deflateRawSync(bytes).length).toBeGreaterThan(0);
  });

  it('rejects a zip without data.pkl', async () => {
    // Smallest valid zip: just an end-of-central-directory record with zero entries, after a fake local sig.
    const eocd = new Uint8Array(22);
    new DataView(eocd.buffer).setUint32(0, 0x06054b50, true);
    const buf = new Uint8Array([0x50, 0x4b, 0x03, 0x04, ...eocd]);
    const e = await errorOf(() => parseTorchPt(buf, 'empty.pt'));
    expect(e.message).toMatch(/^empty\.pt: zip archive has no <archive>\/data\.pkl/);
  });
});
