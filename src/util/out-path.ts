/**
 * Write-path checks every bin runs on its output flags before any work starts (backend, data,
 * training), so an unusable path costs one clear line (`--out X: …`, exit 2) instead of a Node
 * EEXIST/ENOTDIR "internal error" after minutes of compute. Nothing is created here: a run refused
 * later for another reason leaves no empty folder behind.
 */
import { accessSync, constants, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CtaError } from './errors.js';

function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // ENOTDIR: some ancestor is a file; the walk up finds and names it.
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
}

function writable(path: string): boolean {
  try {
    // X_OK too: entries cannot be created in a folder that cannot be searched.
    accessSync(path, constants.W_OK | constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why folder `dir` cannot be written into (or created with mkdir -p), or null when it can: walks
 * up to the nearest existing ancestor, which must be a writable folder.
 */
export function outDirProblem(dir: string): string | null {
  const abs = resolve(dir);
  let cur = abs;
  for (;;) {
    let st: Stats | null;
    try {
      st = statOrNull(cur);
    } catch (e) {
      return `cannot check ${cur} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
    }
    if (st) {
      if (!st.isDirectory()) return cur === abs ? 'exists and is not a folder' : `cannot create the folder: ${cur} is a file`;
      if (!writable(cur)) return cur === abs ? 'the folder is not writable' : `cannot create the folder: ${cur} is not writable`;
      return null;
    }
    const up = dirname(cur);
    // The root always exists; reaching it without a stat means the file system refused to answer.
    if (up === cur) return `cannot create the folder: ${cur} does not exist`;
    cur = up;
  }
}

/** Why file `file` cannot be written (created or overwritten, its folder created), or null. */
export function outFileProblem(file: string): string | null {
  const abs = resolve(file);
  let st: Stats | null;
  try {
    st = statOrNull(abs);
  } catch (e) {
    return `cannot check ${abs} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
  }
  if (st) {
    if (st.isDirectory()) return 'is a folder; expected a file name';
    try {
      accessSync(abs, constants.W_OK);
    } catch {
      return 'the file exists and is not writable';
    }
  }
  const parent = outDirProblem(dirname(abs));
  if (parent === 'exists and is not a folder') return `cannot create the file: ${dirname(abs)} is a file`;
  if (parent === 'the folder is not writable') return `cannot create the file: ${dirname(abs)} is not writable`;
  return parent;
}

/** Throws `<flag> <dir>: <why>` (exit 2) unless `dir` can be written into or created. */
export function checkOutDir(flag: string, dir: string): void {
  const why = outDirProblem(dir);
  if (why) throw new CtaError(`${flag} ${dir}: ${why}`);
}

/** Throws `<flag> <file>: <why>` (exit 2) unless `file` can be written. */
export function checkOutFile(flag: string, file: string): void {
  const why = outFileProblem(file);
  if (why) throw new CtaError(`${flag} ${file}: ${why}`);
}
