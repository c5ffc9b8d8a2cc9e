/**
 * --help and --version of every bin (built dist/), read as a user reads them: every option shows
 * its type and its default in one style ([default: …]), config options agree with the schema
 * (src/config/schema.ts FIELDS), numbers are typed as numbers, options a command ignores are not
 * offered, and --version prints package.json's version.
 */
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIELDS, defaultText, toKebab, type FieldKey, type FieldSpec } from '../../src/config/schema.js';
import { ROOT, runBin } from './helpers.js';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

interface Entry {
  type: string | null;
  def: string | null;
  text: string;
}

/** Option name (long, or the letter of a short-only option) → its help entry, lines joined. */
function parseHelp(help: string): Map<string, Entry> {
  const entries = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of help.split('\n')) {
    // An option starts in column 2 (`-j, --jobs`) or 6 (`--name`); a description that wraps to a
    // line beginning with a flag name is indented further and stays part of its entry.
    const m = /^ {2}(?:-\w, | {4})--([\w-]+)\s|^ {2}-(\w)\s/.exec(line);
    if (m) {
      current = [line.trim()];
      entries.set(m[1] ?? m[2], current);
    } else if (current && /^ {4,}\S/.test(line)) {
      current.push(line.trim());
    } else {
      current = null;
    }
  }
  const out = new Map<string, Entry>();
  for (const [name, lines] of entries) {
    const text = lines.join(' ');
    const types = [...text.matchAll(/\[(boolean|number|string|array|count)\]/g)];
    out.set(name, { text, type: types.length ? types[types.length - 1][1] : null, def: /\[default: ([^\]]*)\]/.exec(text)?.[1] ?? null });
  }
  return out;
}

function helpType(f: FieldSpec): string {
  return f.type === 'bool' ? 'boolean' : f.type === 'number' || f.type === 'int' ? 'number' : 'string';
}

const BINS = ['cta-eval', 'profile-mem', 'cta-sweep', 'cta-corrupt', 'cta-report', 'cta-train'] as const;
type Bin = (typeof BINS)[number];

/** Config fields a command does not read, so must not offer. */
const IGNORED: Partial<Record<Bin, string[]>> = {
  'profile-mem': ['out', 'progress', 'compare-with', 'batch-size', 'shuffle', 'corruptions', 'clean-last', 'corruption-set', 'domain-orders', 'eval-mode', 'support-batch', 'merge-batches', 'cur-batch', 'iters'],
  'cta-sweep': ['out', 'config'],
};
/** Each command's own numeric options. */
const NUMERIC: Record<Bin, string[]> = {
  'cta-eval': [],
  'profile-mem': ['steps'],
  'cta-sweep': ['jobs', 'cpus', 'gpus', 'max-parallel'],
  'cta-corrupt': ['n', 'seed'],
  'cta-report': ['smooth'],
  'cta-train': ['depth', 'cardinality', 'base-width', 'width', 'vit-dim', 'vit-depth', 'vit-heads', 'vit-mlp-dim', 'patch', 'warmup-steps', 'num-classes', 'epochs', 'batch-size', 'lr', 'momentum', 'weight-decay', 'crop-pad', 'n-train', 'n-test', 'seed', 'log-every', 'threads'],
};
/** Options without a default (the command refuses to run without them). */
const REQUIRED: Partial<Record<Bin, string[]>> = { 'cta-corrupt': ['input', 'out'], 'cta-train': ['data', 'out'] };
const CONFIG_BINS: Bin[] = ['cta-eval', 'profile-mem', 'cta-sweep'];

const helps = new Map<Bin, string>();
async function help(bin: Bin): Promise<string> {
  if (!helps.has(bin)) {
    const r = await runBin(bin, ['--help']);
    expect(r.code, r.stderr).toBe(0);
    helps.set(bin, r.stdout);
  }
  return helps.get(bin)!;
}

describe('--help', () => {
  for (const bin of BINS) {
    it(`${bin}: every option has a type and a default in one style; numbers are numbers`, async () => {
      const text = await help(bin);
      const entries = parseHelp(text);
      expect(entries.size).toBeGreaterThan(3);
      // One default style: yargs' [default: …], never a "(default …)" in the description.
      expect(text).not.toMatch(/\(default[ :]/i);
      for (const [name, e] of entries) {
        expect(e.type, `${bin} --${name}: ${e.text}`).not.toBeNull();
        if (name === 'help' || name === 'version' || (REQUIRED[bin] ?? []).includes(name)) continue;
        expect(e.def, `${bin} --${name} shows no default: ${e.text}`).not.toBeNull();
      }
      for (const name of NUMERIC[bin]) {
        expect(entries.get(name)?.type, `${bin} --${name}`).toBe('number');
      }
      expect(entries.has('version'), `${bin} lists --version`).toBe(true);
    });
  }

  for (const bin of CONFIG_BINS) {
    it(`${bin}: config options match the schema; options it ignores are absent`, async () => {
      const entries = parseHelp(await help(bin));
      const ignored = IGNORED[bin] ?? [];
      for (const name of ignored) expect(entries.has(name), `${bin} lists --${name}, which it ignores`).toBe(false);
      for (const key of Object.keys(FIELDS) as FieldKey[]) {
        const name = toKebab(key);
        if (ignored.includes(name)) continue;
        const e = entries.get(name);
        expect(e, `${bin} does not list --${name}`).toBeDefined();
        const f: FieldSpec = FIELDS[key];
        expect(e!.type, `${bin} --${name}`).toBe(helpType(f));
        expect(e!.def, `${bin} --${name}`).toBe(defaultText(key));
      }
    });
  }

  it("cta-train's --backend and --threads are the run config's (same default)", async () => {
    const entries = parseHelp(await help('cta-train'));
    expect(entries.get('backend')?.def).toBe(defaultText('backend'));
    expect(defaultText('backend')).toBe('auto');
    expect(entries.get('threads')?.def).toBe(defaultText('threads'));
  });
});

describe('--version', () => {
  it("every bin prints package.json's version", async () => {
    for (const bin of BINS) {
      const r = await runBin(bin, ['--version']);
      expect(r.code, `${bin}: ${r.stderr}`).toBe(0);
      expect(r.stdout).toBe(`${VERSION}\n`);
    }
  });
});
