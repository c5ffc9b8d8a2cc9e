#!/usr/bin/env node
/**
 * Stages the node_modules a GPU check needs (scripts/device/bundle.sh): the runtime dependency
 * closure of package.json (dependencies + optionalDependencies) plus vitest's (the webgpu parity
 * tests run there), copied from this checkout's node_modules and pruned to what Node loads:
 *
 * - @tensorflow/*: package.json, the CommonJS "main" (the single-file Node build every other
 *   package requires), and the backend-wasm binaries; not the ESM trees, minified browser builds
 *   or source maps (together ~270 MB).
 * - webgpu: index.js and dist/linux-x64/dawn.node only (the npm tarball carries every platform).
 * - everywhere: source maps, TypeScript declarations, Markdown and test folders.
 *
 * `node scripts/device/stage.mjs <dest>` writes <dest>/node_modules and prints the bytes staged.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dest = process.argv[2];
if (!dest) {
  process.stderr.write('usage: node scripts/device/stage.mjs DEST\n');
  process.exit(2);
}

const readJson = (f) => JSON.parse(readFileSync(f, 'utf8'));

/** The installed folder of `name` as Node would find it from package folder `from`. */
function findPackage(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const cand = join(dir, 'node_modules', name);
    if (existsSync(join(cand, 'package.json'))) return cand;
    if (dir === ROOT || dirname(dir) === dir) return null;
  }
}

const rootPkg = readJson(join(ROOT, 'package.json'));
const seeds = [...Object.keys(rootPkg.dependencies ?? {}), ...Object.keys(rootPkg.optionalDependencies ?? {}), 'vitest'];
/** Packages no runtime path loads (types only; the webgpu package's own install scripts). */
const SKIP = new Set(['@types/node', '@webgpu/types', 'typescript']);
/**
 * Dependencies of a package that its Node build never requires: @tensorflow/tfjs's are for its
 * browser bundle (core-js, regenerator-runtime) and its converter command line (yargs, chalk,
 * argparse); webgpu's `debug` serves its install script.
 */
const UNUSED = { '@tensorflow/tfjs': ['core-js', 'regenerator-runtime', 'yargs', 'chalk', 'argparse'], webgpu: ['debug'] };

const closure = new Set();
const queue = seeds.map((name) => ({ name, from: ROOT, optional: !!rootPkg.optionalDependencies?.[name] }));
while (queue.length) {
  const { name, from, optional } = queue.shift();
  if (SKIP.has(name)) continue;
  const dir = findPackage(name, from);
  if (!dir) {
    if (!optional) throw new Error(`stage: ${name} (needed from ${relative(ROOT, from) || '.'}) is not installed: run npm ci`);
    continue;
  }
  if (closure.has(dir)) continue;
  closure.add(dir);
  const pkg = readJson(join(dir, 'package.json'));
  const unused = new Set(UNUSED[pkg.name] ?? []);
  for (const d of Object.keys(pkg.dependencies ?? {})) if (!unused.has(d)) queue.push({ name: d, from: dir, optional: false });
  // Optional and peer dependencies: only those installed (e.g. esbuild's platform binary).
  for (const d of [...Object.keys(pkg.optionalDependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})]) {
    queue.push({ name: d, from: dir, optional: true });
  }
}
if (![...closure].some((d) => d.endsWith('/node_modules/webgpu'))) {
  process.stderr.write('stage: warning: the optional webgpu package is not installed; the bundle has no WebGPU route\n');
}

const JUNK = /\.(map|d\.ts|d\.mts|d\.cts|md|markdown|tsbuildinfo)$/i;
const JUNK_DIRS = new Set(['test', 'tests', '__tests__', 'docs', 'doc', 'example', 'examples', '.github']);

/** Files of one package to keep, relative to its folder (null: the generic prune). */
function keepList(dir) {
  const rel = relative(join(ROOT, 'node_modules'), dir);
  if (rel.startsWith('@tensorflow/')) {
    const pkg = readJson(join(dir, 'package.json'));
    const keep = ['package.json', 'LICENSE', pkg.main];
    if (existsSync(join(dir, 'dist'))) {
      for (const f of readdirSync(join(dir, 'dist'))) if (f.endsWith('.wasm')) keep.push(`dist/${f}`);
    }
    return keep.filter((f) => f && existsSync(join(dir, f)));
  }
  if (rel === 'webgpu') return ['package.json', 'LICENSE.md', 'index.js', 'dist/linux-x64/dawn.node'];
  // esbuild's own bin/esbuild is a copy of @esbuild/linux-x64's binary, which its library runs.
  if (rel === 'esbuild') return ['package.json', 'LICENSE.md', 'install.js', ...readdirSync(join(dir, 'lib')).filter((f) => !JUNK.test(f)).map((f) => `lib/${f}`)];
  return null;
}

let bytes = 0;
let files = 0;
function copyFile(src, dst) {
  mkdirSync(dirname(dst), { recursive: true });
  cpSync(src, dst);
  bytes += statSync(src).size;
  files++;
}

function copyTree(src, dst) {
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory()) {
      if (e.name === 'node_modules' || JUNK_DIRS.has(e.name)) continue; // nested packages are staged on their own
      copyTree(s, d);
    } else if (e.isSymbolicLink()) {
      continue; // .bin links: nothing here runs a package's bin by name
    } else if (!JUNK.test(e.name) || e.name === 'package.json') {
      copyFile(s, d);
    }
  }
}

const out = resolve(dest, 'node_modules');
rmSync(out, { recursive: true, force: true });
for (const dir of [...closure].sort()) {
  const target = join(out, relative(join(ROOT, 'node_modules'), dir));
  const keep = keepList(dir);
  if (keep) for (const f of keep) copyFile(join(dir, f), join(target, f));
  else copyTree(dir, target);
}
process.stdout.write(`stage: ${closure.size} packages, ${files} files, ${(bytes / 2 ** 20).toFixed(1)} MiB in ${relative(process.cwd(), out) || out}\n`);
