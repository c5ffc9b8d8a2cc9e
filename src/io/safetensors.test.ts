import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CtaError } from '../util/errors.js';
import {
  decodeLittleEndian,
  encodeLittleEndian,
  parseSafetensors,
  parseSafetensorsWithMetadata,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
  type TensorToWrite,
} from './safetensors.js';
import type { RawDType } from './types.js';

const FIX = join(process.cwd(), 'test', 'fixtures', 'io');
const tmp = mkdtempSync(join(tmpdir(), 'cta-safetensors-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A safetensors file with a hand-written header (string = raw JSON text) and data section. */
function craft(header: unknown, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function errorOf(f: () => unknown): CtaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as Error).message).not.toContain('\n');
    return e as CtaError;
  }
  throw new Error('expected a CtaError');
}

/** Object.is per element, so -0 and NaN count. */
function sameValues(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

const SAMPLES: Record<RawDType, { shape: number[]; values: number[] }> = {
  float32: { shape: [2, 3], values: [0, -0, 1.5, -3.25, Math.fround(0.1), Math.fround(3.4e38)] },
  // Every value below is exactly representable in the target type, so the round trip must be exact.
  float16: { shape: [7], values: [0, -0, 1, -2.5, 65504, 2 ** -24, Infinity] },
  bfloat16: { shape: [2, 2], values: [1, -3, 0.15625, 2 ** -130] },
  float64: { shape: [3], values: [0.5, -1e-3, 1 / 3] },
  int64: { shape: [5], values: [0, -5, 2 ** 40 + 3, -(2 ** 50) - 1, 2 ** 53] },
  int32: { shape: [2, 2], values: [2 ** 31 - 1, -(2 ** 31), 7, -7] },
  int16: { shape: [3], values: [-32768, 32767, 5] },
  int8: { shape: [3], values: [-128, 127, -1] },
  uint8: { shape: [1, 3], values: [0, 255, 128] },
  bool: { shape: [3], values: [1, 0, 1] },
};

describe('safetensors round trip', () => {
  it('writes and reads back every dtype exactly, in order, with metadata', () => {
    const tensors = new Map<string, TensorToWrite>(
      Object.entries(SAMPLES).map(([dtype, s]) => [`t.${dtype}`, { dtype: dtype as RawDType, shape: s.shape, data: s.values }]),
    );
    const buf = serializeSafetensors(tensors, { format: 'pt', note: 'x' });
    // Header is padded so the data section starts 8-aligned (as the reference writer does).
    expect(Number(new DataView(buf.buffer).getBigUint64(0, true)) % 8).toBe(0);
    const { tensors: back, metadata } = parseSafetensorsWithMetadata(buf, 'rt.safetensors');
    expect(metadata).toEqual({ format: 'pt', note: 'x' });
    expect([...back.keys()]).toEqual([...tensors.keys()]);
    for (const [dtype, s] of Object.entries(SAMPLES)) {
      const t = back.get(`t.${dtype}`)!;
      expect(t.dtype).toBe(dtype);
      expect(t.shape).toEqual(s.shape);
      const isFloat = ['float32', 'float16', 'bfloat16', 'float64'].includes(dtype);
      expect(t.data).toBeInstanceOf(isFloat ? Float32Array : Float64Array);
      const want = isFloat ? s.values.map(Math.fround) : s.values;
      expect(sameValues(t.data, want), `${dtype}: ${Array.from(t.data)} vs ${want}`).toBe(true);
    }
  });

  it('float16: all 65536 bit patterns except NaN survive decode → encode', () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const values = decodeLittleEndian('float16', new Uint8Array(bits.buffer), 65536);
    const again = new Uint16Array(encodeLittleEndian('float16', values).buffer);
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(values[i])) {
        expect(again[i]! & 0x7c00).toBe(0x7c00);
        expect(again[i]! & 0x3ff).not.toBe(0);
      } else if (again[i] !== i) {
        expect(again[i]).toBe(i);
      }
    }
  });

  it('bfloat16: all 65536 bit patterns except NaN survive decode → encode', () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const values = decodeLittleEndian('bfloat16', new Uint8Array(bits.buffer), 65536);
    const again = new Uint16Array(encodeLittleEndian('bfloat16', values).buffer);
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(values[i])) expect(Number.isNaN(decodeLittleEndian('bfloat16', new Uint8Array(new Uint16Array([again[i]!]).buffer), 1)[0])).toBe(true);
      else if (again[i] !== i) expect(again[i]).toBe(i);
    }
  });

  it('rounds to nearest-even when narrowing to float16 / bfloat16', () => {
    const h = (v: number) => decodeLittleEndian('float16', encodeLittleEndian('float16', [v]), 1)[0];
    expect(h(1 + 2 ** -11)).toBe(1); // tie → even
    expect(h(1 + 3 * 2 ** -11)).toBe(1 + 2 ** -9); // tie → even (upwards)
    expect(h(1 + 2 ** -11 + 2 ** -20)).toBe(1 + 2 ** -10); // above the tie
    expect(h(70000)).toBe(Infinity);
    expect(h(65519)).toBe(65504); // just below the overflow threshold
    expect(h(2 ** -25)).toBe(0); // subnormal tie → even (0)
    expect(h(3 * 2 ** -25)).toBe(2 ** -23); // subnormal tie → even (2 units)
    expect(h(-(2 ** -14) * 0.75)).toBe(-(2 ** -14) * 0.75); // exact subnormal
    const b = (v: number) => decodeLittleEndian('bfloat16', encodeLittleEndian('bfloat16', [v]), 1)[0];
    expect(b(1 + 2 ** -8)).toBe(1);
    expect(b(1 + 3 * 2 ** -8)).toBe(1 + 2 ** -6);
    expect(b(Math.fround(0.1))).toBe(0.10009765625);
  });

  it('reads tensors at unaligned offsets (file written independently by the Python fixture script)', () => {
    const sd = parseSafetensors(new Uint8Array(readFileSync(join(FIX, 'reference.safetensors'))), 'reference.safetensors');
    const expected = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8'))['reference.safetensors'].tensors as Record<
      string,
      { dtype: string; shape: number[]; values: (number | string)[] }
    >;
    expect([...sd.keys()]).toEqual(Object.keys(expected));
    for (const [name, w] of Object.entries(expected)) {
      const t = sd.get(name)!;
      expect(t.dtype, name).toBe(w.dtype);
      expect(t.shape, name).toEqual(w.shape);
      const isFloat = ['float32', 'float16', 'bfloat16', 'float64'].includes(w.dtype);
      const want = w.values.map((v) => (isFloat ? Math.fround(Number(v)) : Number(v)));
      expect(sameValues(t.data, want), `${name}: ${Array.from(t.data)} vs ${want}`).toBe(true);
    }
  });

  it('reads a float32 tensor that follows a 3-byte tensor (odd offset) and does not alias the file buffer', () => {
    const buf = serializeSafetensors(
      new Map<string, TensorToWrite>([
        ['odd', { dtype: 'uint8', shape: [3], data: [1, 2, 3] }],
        ['w', { dtype: 'float32', shape: [2], data: [1.25, -7] }],
        ['d', { dtype: 'float64', shape: [1], data: [0.5] }],
      ]),
    );
    const sd = parseSafetensors(buf, 'odd.safetensors');
    expect(Array.from(sd.get('w')!.data)).toEqual([1.25, -7]);
    expect(Array.from(sd.get('d')!.data)).toEqual([0.5]);
    expect(sd.get('w')!.data.buffer).not.toBe(buf.buffer);
  });

  it('reads unaligned tensors from a Node Buffer (what readFile returns, whose slice() is a view)', () => {
    const bytes = serializeSafetensors(
      new Map<string, TensorToWrite>([
        ['s', { dtype: 'float32', shape: [], data: [0.5] }],
        ['idx', { dtype: 'int64', shape: [3], data: [4, 0, 2 ** 40] }],
        ['d', { dtype: 'float64', shape: [1], data: [-1.5] }],
      ]),
    );
    const sd = parseSafetensors(Buffer.from(bytes), 'buffer.safetensors');
    expect(Array.from(sd.get('idx')!.data)).toEqual([4, 0, 2 ** 40]);
    expect(Array.from(sd.get('d')!.data)).toEqual([-1.5]);
  });

  it('writeSafetensors / readSafetensors through a file', async () => {
    const p = join(tmp, 'w.safetensors');
    await writeSafetensors(p, new Map([['a', { dtype: 'float32' as const, shape: [2], data: new Float32Array([1, 2]) }]]));
    const sd = await readSafetensors(p);
    expect(sd.get('a')).toEqual({ dtype: 'float32', shape: [2], data: new Float32Array([1, 2]) });
  });

  it('handles zero-size and scalar tensors', () => {
    const buf = serializeSafetensors(
      new Map<string, TensorToWrite>([
        ['empty', { dtype: 'float32', shape: [0, 4], data: [] }],
        ['scalar', { dtype: 'int64', shape: [], data: [42] }],
      ]),
    );
    const sd = parseSafetensors(buf, 'z');
    expect(sd.get('empty')).toEqual({ dtype: 'float32', shape: [0, 4], data: new Float32Array(0) });
    expect(sd.get('scalar')).toEqual({ dtype: 'int64', shape: [], data: new Float64Array([42]) });
  });
});

describe('safetensors validation errors', () => {
  const good = serializeSafetensors(
    new Map<string, TensorToWrite>([
      ['a', { dtype: 'float32', shape: [4], data: [1, 2, 3, 4] }],
      ['b', { dtype: 'float32', shape: [4], data: [5, 6, 7, 8] }],
    ]),
  );

  it('missing file', async () => {
    await expect(readSafetensors(join(tmp, 'none.safetensors'))).rejects.toThrow(`${join(tmp, 'none.safetensors')}: file not found`);
  });

  it('file shorter than the 8-byte length', () => {
    expect(errorOf(() => parseSafetensors(new Uint8Array(5), 'w.safetensors')).message).toMatch(/^w\.safetensors: file is 5 bytes, expected a safetensors file/);
  });

  it('truncated in the data section', () => {
    const e = errorOf(() => parseSafetensors(good.subarray(0, good.length - 3), 'w.safetensors'));
    expect(e.message).toMatch(/^w\.safetensors: safetensors header: tensor "b" data_offsets \[16, 32\] run past the 29-byte data section, expected end <= 29 \(truncated file\?\)$/);
  });

  it('truncated inside the header', () => {
    const e = errorOf(() => parseSafetensors(good.subarray(0, 20), 'w.safetensors'));
    expect(e.message).toMatch(/^w\.safetensors: safetensors header length \d+ runs past the end of the 20-byte file, expected a complete file \(truncated\?\)$/);
  });

  it('implausible header length (not a safetensors file)', () => {
    const buf = new Uint8Array(16);
    new DataView(buf.buffer).setBigUint64(0, 2n ** 40n, true);
    expect(errorOf(() => parseSafetensors(buf, 'w')).message).toBe('w: safetensors header length is 1099511627776 bytes, expected at most 100000000 (not a safetensors file?)');
  });

  it('bad header JSON', () => {
    const e = errorOf(() => parseSafetensors(craft('{"a": {"dtype": "F32",'), 'w.safetensors'));
    expect(e.message).toMatch(/^w\.safetensors: safetensors header is not valid UTF-8 JSON \(.+\), expected a JSON object of tensor entries$/);
    expect(errorOf(() => parseSafetensors(craft('[1,2]'), 'w')).message).toBe('w: safetensors header is a JSON array, expected a JSON object of tensor entries');
  });

  it('offsets out of range', () => {
    const e = errorOf(() => parseSafetensors(craft({ a: { dtype: 'F32', shape: [25], data_offsets: [0, 100] } }, new Uint8Array(8)), 'w'));
    expect(e.message).toBe('w: safetensors header: tensor "a" data_offsets [0, 100] run past the 8-byte data section, expected end <= 8 (truncated file?)');
    const e2 = errorOf(() => parseSafetensors(craft({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, new Uint8Array(8)), 'w'));
    expect(e2.message).toBe('w: safetensors header: tensor "a" has data_offsets [4,0], expected [begin, end] with 0 <= begin <= end');
  });

  it('size that does not match shape × itemsize', () => {
    const e = errorOf(() => parseSafetensors(craft({ a: { dtype: 'F16', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)), 'w'));
    expect(e.message).toBe('w: safetensors header: tensor "a" spans 8 bytes, expected 6 for F16 shape [3]');
  });

  it('overlapping tensors', () => {
    const hdr = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    const e = errorOf(() => parseSafetensors(craft(hdr, new Uint8Array(12)), 'w'));
    expect(e.message).toBe('w: safetensors header: 1 overlapping tensor pair(s) (a [0,8) / b [4,12)), expected disjoint data_offsets');
  });

  it('unsupported and unknown dtypes, bad shapes, bad metadata', () => {
    const u32 = errorOf(() => parseSafetensors(craft({ a: { dtype: 'U32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'w'));
    expect(u32.message).toMatch(/^w: safetensors header: tensor "a" has dtype U32, which is not supported by cta-eval; expected one of F32, F16, BF16/);
    const odd = errorOf(() => parseSafetensors(craft({ a: { dtype: 'Q7', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'w'));
    expect(odd.message).toMatch(/has dtype Q7, which is unknown/);
    const shape = errorOf(() => parseSafetensors(craft({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'w'));
    expect(shape.message).toBe('w: safetensors header: tensor "a" has shape [-1], expected an array of non-negative integers');
    const meta = errorOf(() => parseSafetensors(craft({ __metadata__: { n: 1 } }), 'w'));
    expect(meta.message).toBe('w: safetensors header: "__metadata__" must map strings to strings');
  });
});
