import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { promises as fsp } from 'node:fs';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CtaError } from '../util/errors.js';
import {
  npyHeaderBytes,
  readNpy,
  readNpyHeader,
  readNpyRows,
  toInt32,
  writeNpy,
  type NpyData,
  type NpyDType,
} from './npy.js';

/** Plain numbers from any npy typed array (64-bit integer arrays hold bigints). */
const nums = (d: NpyData): number[] => Array.from(d as ArrayLike<number | bigint>, (v) => Number(v));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cta-npy-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Write an npy file with a hand-made header (for formats writeNpy never produces). */
async function writeRaw(name: string, major: number, headerText: string, data: Uint8Array): Promise<string> {
  const pre = major === 1 ? 10 : 12;
  const text = Buffer.from(headerText, major === 3 ? 'utf8' : 'latin1');
  const head = Buffer.alloc(pre);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  if (major === 1) head.writeUInt16LE(text.length, 8);
  else head.writeUInt32LE(text.length, 8);
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([head, text, data]));
  return path;
}

describe('writeNpy / readNpy round trip', () => {
  const cases: [NpyDType, number[], number[]][] = [
    ['uint8', [2, 3], [0, 1, 2, 253, 254, 255]],
    ['int8', [4], [-128, -1, 0, 127]],
    ['uint16', [2, 2], [0, 1, 65534, 65535]],
    ['int16', [3], [-32768, 5, 32767]],
    ['uint32', [2], [0, 4294967295]],
    ['int32', [2, 1, 2], [-2147483648, -1, 0, 2147483647]],
    ['int64', [3], [-5, 0, 9007199254740991]],
    ['uint64', [2], [0, 9007199254740991]],
    ['float32', [2, 2], [0.5, -1.25, 3.4028234663852886e38, 1e-40]],
    ['float64', [3], [Math.PI, -0, 1e-310]],
    ['bool', [3], [1, 0, 1]],
    ['float32', [], [42.5]],
    ['uint8', [0, 32, 32, 3], []],
  ];
  for (const [dtype, shape, values] of cases) {
    it(`${dtype} ${JSON.stringify(shape)}`, async () => {
      const path = join(dir, `rt-${dtype}-${shape.join('x') || 'scalar'}.npy`);
      await writeNpy(path, dtype, shape, values);
      const back = await readNpy(path);
      expect(back.header.dtype).toBe(dtype);
      expect(back.shape).toEqual(shape);
      expect(back.header.version).toEqual([1, 0]);
      expect(back.header.dataOffset % 64).toBe(0);
      expect(nums(back.data)).toEqual(values.map((v) => (dtype === 'float32' ? Math.fround(v) : v)));
    });
  }

  it('writes a typed array of the matching dtype as is', async () => {
    const path = join(dir, 'typed.npy');
    const data = Float32Array.from([1, 2, 3, 4, 5, 6]);
    await writeNpy(path, 'float32', [3, 2], data);
    const bytes = await readFile(path);
    expect(bytes.length).toBe(128 + 24);
    expect(new Float32Array(bytes.buffer.slice(bytes.byteOffset + 128, bytes.byteOffset + 152))).toEqual(data);
  });

  it('rejects data whose length does not match the shape', async () => {
    await expect(writeNpy(join(dir, 'bad.npy'), 'uint8', [2, 2], [1, 2, 3])).rejects.toThrow(/needs 4 elements, got 3/);
  });
});

describe('v1 header layout (as numpy writes it)', () => {
  it('matches numpy byte for byte for the CIFAR-10-C shape: 128-byte header', () => {
    // Bytes produced by numpy 2.4 `np.lib.format.write_array_header_1_0` for uint8 (50000,32,32,3).
    const text = "{'descr': '|u1', 'fortran_order': False, 'shape': (50000, 32, 32, 3), }";
    const expected = Buffer.concat([
      Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 118, 0]),
      Buffer.from(text.padEnd(117, ' ') + '\n', 'latin1'),
    ]);
    expect(Buffer.from(npyHeaderBytes('uint8', [50000, 32, 32, 3]))).toEqual(expected);
  });

  it('matches numpy for small shapes (spare growth spaces, 64-byte alignment)', () => {
    const cases: [NpyDType, number[], string][] = [
      ['float32', [2, 3], "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"],
      ['int64', [], "{'descr': '<i8', 'fortran_order': False, 'shape': (), }"],
      ['int64', [3], "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"],
    ];
    for (const [dtype, shape, dict] of cases) {
      const h = Buffer.from(npyHeaderBytes(dtype, shape));
      expect(h.length).toBe(128); // numpy output length for all three (checked with numpy 2.4)
      expect(h.readUInt16LE(8)).toBe(118);
      const text = h.subarray(10).toString('latin1');
      expect(text.startsWith(dict)).toBe(true);
      expect(text.endsWith(' \n')).toBe(true);
      expect(text.slice(dict.length, -1).trim()).toBe('');
    }
  });

  it('keeps data 64-byte aligned for many shapes', () => {
    for (let nd = 0; nd < 12; nd++) {
      for (const d0 of [1, 12, 123456, 99999999999]) {
        const shape = Array.from({ length: nd }, (_, i) => (i === 0 ? d0 : 7));
        const h = npyHeaderBytes('float64', shape);
        expect(h.length % 64).toBe(0);
        expect(h[h.length - 1]).toBe(0x0a);
      }
    }
  });
});

describe('reading headers written by other tools', () => {
  it('reads v2 and v3 headers, big-endian data, Python-2 long shapes and 1-D fortran arrays', async () => {
    const v2 = await writeRaw('v2.npy', 2, "{'descr': '<i2', 'fortran_order': False, 'shape': (3,), }\n", new Uint8Array(new Int16Array([1, -2, 3]).buffer));
    expect(nums((await readNpy(v2)).data)).toEqual([1, -2, 3]);
    expect((await readNpyHeader(v2)).version).toEqual([2, 0]);

    const v3 = await writeRaw('v3.npy', 3, "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }\n", new Uint8Array(new Uint16Array([7, 65535]).buffer));
    expect(nums((await readNpy(v3)).data)).toEqual([7, 65535]);

    const be = await writeRaw('be.npy', 1, "{'descr': '>i4', 'fortran_order': False, 'shape': (2L,), }\n", Uint8Array.from([0, 0, 1, 2, 0xff, 0xff, 0xff, 0xfe]));
    const beArr = await readNpy(be);
    expect(beArr.shape).toEqual([2]);
    expect(nums(beArr.data)).toEqual([258, -2]);

    const f1 = await writeRaw('f1.npy', 1, "{'descr': '|u1', 'fortran_order': True, 'shape': (3,), }\n", Uint8Array.from([4, 5, 6]));
    expect(nums((await readNpy(f1)).data)).toEqual([4, 5, 6]);
  });
});

describe('errors', () => {
  it('not an npy file', async () => {
    const p = join(dir, 'text.npy');
    await writeFile(p, 'hello, this is not numpy at all');
    await expect(readNpy(p)).rejects.toThrow(CtaError);
    await expect(readNpy(p)).rejects.toThrow(`${p}: not an npy file`);
  });

  it('missing file', async () => {
    const p = join(dir, 'nope.npy');
    await expect(readNpyHeader(p)).rejects.toThrow(`${p}: file not found`);
  });

  it('unsupported dtype and structured dtype', async () => {
    const c = await writeRaw('c8.npy', 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }\n", new Uint8Array(8));
    await expect(readNpy(c)).rejects.toThrow(/c8\.npy: unsupported npy dtype '<c8'/);
    const s = await writeRaw('rec.npy', 1, "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }\n", new Uint8Array(4));
    await expect(readNpy(s)).rejects.toThrow(/structured/);
  });

  it('fortran order for a 2-D array', async () => {
    const p = await writeRaw('fort.npy', 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", new Uint8Array(24));
    await expect(readNpy(p)).rejects.toThrow(/fort\.npy: fortran_order is True/);
  });

  it('truncated file: names the file and expected vs actual bytes', async () => {
    const p = join(dir, 'trunc.npy');
    await writeNpy(p, 'uint8', [10, 4, 4, 3], new Uint8Array(480));
    await truncate(p, 128 + 400);
    const err = await readNpyRows(p, 0, 1).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    const msg = (err as Error).message;
    expect(msg).not.toContain('\n');
    expect(msg).toContain(p);
    expect(msg).toContain('truncated');
    expect(msg).toContain('expected 608 bytes');
    expect(msg).toContain('file has 528 bytes');
    await expect(readNpyHeader(p)).rejects.toThrow(/truncated/);
  });

  it('rows out of range', async () => {
    const p = join(dir, 'small.npy');
    await writeNpy(p, 'int32', [4, 2], [0, 1, 2, 3, 4, 5, 6, 7]);
    await expect(readNpyRows(p, 3, 2)).rejects.toThrow(/rows 3…4 requested but the file has 4 rows/);
  });
});

describe('readNpyRows', () => {
  const n = 20; // images per severity block
  const row = 32 * 32 * 3;
  let path: string;
  beforeAll(async () => {
    // CIFAR-C-shaped: 5 blocks of n images; every byte of row r holds r (mod 256) plus a per-pixel
    // ramp so that off-by-one byte offsets are caught too.
    const data = new Uint8Array(5 * n * row);
    for (let r = 0; r < 5 * n; r++) for (let k = 0; k < row; k++) data[r * row + k] = (r + (k % 7)) & 0xff;
    path = join(dir, 'cifarlike.npy');
    await writeNpy(path, 'uint8', [5 * n, 32, 32, 3], data);
  });

  it('returns exactly the requested severity block', async () => {
    const s = 3;
    const arr = await readNpyRows(path, (s - 1) * n, n);
    expect(arr.shape).toEqual([n, 32, 32, 3]);
    expect(arr.data).toBeInstanceOf(Uint8Array);
    expect(arr.data.length).toBe(n * row);
    for (let i = 0; i < n; i++) {
      const r = (s - 1) * n + i;
      for (const k of [0, 1, 6, 7, row - 1]) expect(arr.data[i * row + k]).toBe((r + (k % 7)) & 0xff);
    }
  });

  it('reads only the header and the requested byte range', async () => {
    let bytesRead = 0;
    const origOpen = fsp.open.bind(fsp);
    const spy = vi.spyOn(fsp, 'open').mockImplementation(async (...args: Parameters<typeof fsp.open>) => {
      const fh = await origOpen(...args);
      const origRead = fh.read.bind(fh) as (...a: unknown[]) => Promise<{ bytesRead: number }>;
      (fh as unknown as { read: unknown }).read = async (...a: unknown[]) => {
        const res = await origRead(...a);
        bytesRead += res.bytesRead;
        return res;
      };
      return fh;
    });
    try {
      const arr = await readNpyRows(path, 4 * n, n);
      expect(arr.data[0]).toBe((4 * n) & 0xff);
    } finally {
      spy.mockRestore();
    }
    // 12-byte preamble + 118-byte header text + one block; the file holds five blocks.
    expect(bytesRead).toBe(12 + 118 + n * row);
  });
});

describe('toInt32', () => {
  it('converts integer labels and rejects non-integers / overflow', () => {
    expect(Array.from(toInt32(BigInt64Array.from([1n, 9n]), 'int64', 'l.npy'))).toEqual([1, 9]);
    expect(Array.from(toInt32(Uint8Array.from([3, 255]), 'uint8', 'l.npy'))).toEqual([3, 255]);
    expect(() => toInt32(Float32Array.from([1]), 'float32', 'l.npy')).toThrow(/l\.npy: expected an integer dtype/);
    expect(() => toInt32(BigInt64Array.from([1n << 40n]), 'int64', 'l.npy')).toThrow(/does not fit in int32/);
  });
});
