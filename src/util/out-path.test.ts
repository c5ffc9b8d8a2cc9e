import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CtaError } from './errors.js';
import { checkOutDir, checkOutFile, outDirProblem, outFileProblem } from './out-path.js';

let work = '';
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'cta-out-path-'));
  writeFileSync(join(work, 'f'), 'x');
  mkdirSync(join(work, 'd'));
});
afterAll(() => {
  if (existsSync(join(work, 'ro'))) chmodSync(join(work, 'ro'), 0o755);
  rmSync(work, { recursive: true, force: true });
});

describe('outDirProblem', () => {
  it('accepts an existing folder and one that mkdir -p can create', () => {
    expect(outDirProblem(join(work, 'd'))).toBeNull();
    expect(outDirProblem(join(work, 'new', 'deeper'))).toBeNull();
    expect(existsSync(join(work, 'new'))).toBe(false); // checking creates nothing
  });

  it('names a file in the way', () => {
    expect(outDirProblem(join(work, 'f'))).toBe('exists and is not a folder');
    expect(outDirProblem(join(work, 'f', 'a', 'b'))).toBe(`cannot create the folder: ${join(work, 'f')} is a file`);
  });

  // Root may write into a chmod 555 folder, so only other users can see this refusal.
  it.skipIf(process.getuid?.() === 0)('names a read-only ancestor', () => {
    mkdirSync(join(work, 'ro'));
    chmodSync(join(work, 'ro'), 0o555);
    expect(outDirProblem(join(work, 'ro', 'x'))).toBe(`cannot create the folder: ${join(work, 'ro')} is not writable`);
    expect(outDirProblem(join(work, 'ro'))).toBe('the folder is not writable');
  });
});

describe('outFileProblem', () => {
  it('accepts a new file, an existing file, a file in a folder to create', () => {
    expect(outFileProblem(join(work, 'new.json'))).toBeNull();
    expect(outFileProblem(join(work, 'f'))).toBeNull();
    expect(outFileProblem(join(work, 'd', 'sub', 'w.safetensors'))).toBeNull();
  });

  it('refuses a folder and a file under a file', () => {
    expect(outFileProblem(join(work, 'd'))).toBe('is a folder; expected a file name');
    expect(outFileProblem(join(work, 'f', 'x.json'))).toBe(`cannot create the file: ${join(work, 'f')} is a file`);
    expect(outFileProblem(join(work, 'f', 'a', 'x.json'))).toBe(`cannot create the folder: ${join(work, 'f')} is a file`);
  });
});

describe('checkOutDir / checkOutFile', () => {
  it('throw one CtaError line naming the flag and the path, exit 2', () => {
    const p = join(work, 'f', 'run');
    expect(() => checkOutDir('--out', p)).toThrow(CtaError);
    expect(() => checkOutDir('--out', p)).toThrow(`--out ${p}: cannot create the folder: ${join(work, 'f')} is a file`);
    let err: unknown = null;
    try {
      checkOutFile('--json', join(work, 'd'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CtaError);
    expect((err as CtaError).exitCode).toBe(2);
    expect((err as CtaError).message).toBe(`--json ${join(work, 'd')}: is a folder; expected a file name`);
    expect(() => checkOutDir('--out', join(work, 'd'))).not.toThrow();
  });
});
