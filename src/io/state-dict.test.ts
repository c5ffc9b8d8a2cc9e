import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CtaError } from '../util/errors.js';
import { writeSafetensors } from './safetensors.js';
import { checkKeys, loadStateDict, normalizeStateDict, stripPrefix } from './state-dict.js';
import type { RawTensor, StateDict } from './types.js';

const FIX = join(process.cwd(), 'test', 'fixtures', 'io');
const tmp = mkdtempSync(join(tmpdir(), 'cta-statedict-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const f32 = (shape: number[], fill = 0): RawTensor => {
  const n = shape.reduce((a, b) => a * b, 1);
  return { dtype: 'float32', shape, data: new Float32Array(n).fill(fill) };
};

async function loadError(path: string): Promise<string> {
  try {
    await loadStateDict(path);
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected a CtaError');
}

function checkError(f: () => void): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    return (e as Error).message;
  }
  throw new Error('expected a CtaError');
}

const NET_KEYS = ['conv.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var', 'fc.weight', 'fc.bias'];

describe('loadStateDict', () => {
  it('reads a torch zip .pt and drops num_batches_tracked', async () => {
    const sd = await loadStateDict(join(FIX, 'plain.pt'));
    expect([...sd.keys()]).toEqual(NET_KEYS);
    expect(sd.get('fc.weight')!.shape).toEqual([10, 4]);
  });

  it("unwraps a training checkpoint and strips DataParallel's module. prefix", async () => {
    const plain = await loadStateDict(join(FIX, 'plain.pt'));
    const ckpt = await loadStateDict(join(FIX, 'checkpoint.pt'));
    // Same seed in the fixture script → same weights.
    expect(ckpt).toEqual(plain);
  });

  it('reads safetensors by extension and by content', async () => {
    const tensors = new Map([
      ['module.fc.weight', f32([2, 3], 1.5)],
      ['bn.num_batches_tracked', { dtype: 'int64' as const, shape: [], data: new Float64Array([3]) }],
    ]);
    const a = join(tmp, 'w.safetensors');
    const b = join(tmp, 'w.weights');
    await writeSafetensors(a, tensors);
    await writeSafetensors(b, tensors);
    for (const p of [a, b]) {
      const sd = await loadStateDict(p);
      expect([...sd.keys()]).toEqual(['fc.weight']);
      expect(sd.get('fc.weight')).toEqual(f32([2, 3], 1.5));
    }
  });

  it('gives one-line errors for missing files, directories, legacy and junk files', async () => {
    const missing = join(tmp, 'nope.safetensors');
    expect(await loadError(missing)).toBe(`--weights ${missing}: file not found`);
    expect(await loadError(tmp)).toBe(`--weights ${tmp}: is a directory, expected a .safetensors, .pt or .npz file`);
    expect(await loadError(join(FIX, 'legacy.pt'))).toMatch(/legacy \(pre-1\.6, non-zip\) PyTorch checkpoint/);
    const junkPt = join(tmp, 'junk.pt');
    writeFileSync(junkPt, 'not a checkpoint at all');
    expect(await loadError(junkPt)).toBe(`${junkPt}: not a PyTorch zip checkpoint (no 'PK' signature), expected a file written by torch.save (torch >= 1.6)`);
    const junkTxt = join(tmp, 'junk.txt');
    writeFileSync(junkTxt, 'hello');
    expect(await loadError(junkTxt)).toBe(
      `${junkTxt}: unrecognised weight file (extension '.txt'), expected .safetensors, a torch.save checkpoint (.pt/.pth/.ckpt) or a numpy .npz (Google ViT)`,
    );
  });
});

describe('key helpers', () => {
  it('stripPrefix removes a wrapper prefix and keeps other keys', () => {
    const sd: StateDict = new Map([
      ['model.conv1.weight', f32([1])],
      ['normalize.mean', f32([3])],
    ]);
    expect([...stripPrefix(sd, 'model.').keys()]).toEqual(['conv1.weight', 'normalize.mean']);
  });

  it('normalizeStateDict refuses keys that collide after stripping module.', () => {
    const sd: StateDict = new Map([
      ['module.a', f32([1])],
      ['a', f32([1])],
    ]);
    expect(checkError(() => normalizeStateDict(sd, 'w.pt'))).toBe("w.pt: key a appears both with and without the 'module.' prefix");
  });
});

describe('checkKeys', () => {
  const expected = new Map<string, number[]>([
    ['stage_1.0.bn.weight', [64]],
    ['stage_1.0.bn.bias', [64]],
    ['classifier.weight', [100, 1024]],
    ['classifier.bias', [100]],
  ]);

  it('passes on an exact match', () => {
    const sd: StateDict = new Map([...expected].map(([k, s]) => [k, f32(s)]));
    expect(() => checkKeys(sd, expected, 'W.safetensors', 'resnext29')).not.toThrow();
  });

  it('lists missing, unexpected and wrongly shaped keys in one line', () => {
    const sd: StateDict = new Map([
      ['classifier.weight', f32([10, 1024])],
      ['classifier.bias', f32([100])],
      ['foo', f32([1])],
    ]);
    expect(checkError(() => checkKeys(sd, expected, 'W.safetensors', 'resnext29'))).toBe(
      'W.safetensors: state_dict does not match resnext29: 2 missing (stage_1.0.bn.weight, stage_1.0.bn.bias), ' +
        '1 unexpected (foo), 1 wrong shape (classifier.weight [10,1024] expected [100,1024])',
    );
  });

  it('abbreviates long lists and honours optional keys', () => {
    const many = new Map<string, number[]>(Array.from({ length: 12 }, (_, i) => [`k${i}`, [1]]));
    const msg = checkError(() => checkKeys(new Map(), many, 'w.pt'));
    expect(msg).toBe('w.pt: state_dict does not match the model: 12 missing (k0, k1, k2, k3, … (12 in all))');
    const withMu = new Map<string, number[]>([
      ['mu', [1, 3, 1, 1]],
      ['w', [2]],
    ]);
    expect(() => checkKeys(new Map([['w', f32([2])]]), withMu, 'w.pt', { model: 'm', optional: ['mu'] })).not.toThrow();
  });
});
