/**
 * The specification lives in the repository: code comments cite `docs/<file>.md#<heading>`, never
 * the project's private notes outside the tree (algorithms.md, data-formats.md, backends.md,
 * field.md, peers.md under ../shared) nor the numbered sections of those notes ("A.8", "C.5",
 * "Table E"), and they carry no history of who worked on the code when ("third session", dates):
 * that belongs in LOG.md and the git log. Every docs/ path a comment cites must exist, and so must
 * the heading its #anchor (or quoted heading) names.
 *
 * Scanned: the comments of every source file under src/, scripts/, bin/, test/, configs/ and
 * sweeps/ (TS/JS through the TypeScript parser, so strings and regular expressions are not
 * mistaken for comments; Python, shell, YAML and WebAssembly text by their comment syntax), the
 * whole text of Markdown files there (e.g. test/fixtures/README.md), and the links inside docs/.
 * Fixture data files are not scanned: only TS/JS, .py, .sh, .yaml, .wat and .md files are.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import ts from 'typescript';

const ROOT = resolve(import.meta.dirname, '..');
const SELF = join('test', 'docs.test.ts');
const SCANNED_DIRS = ['src', 'scripts', 'bin', 'test', 'configs', 'sweeps'];
const SKIP_DIRS = new Set(['node_modules', 'dist', '.git']);
const TS_LIKE = /\.(ts|mts|cts|tsx|js|mjs|cjs)$/;
const HASH_COMMENTS = /\.(py|sh|ya?ml)$/;

function walk(dir: string, out: string[] = []): string[] {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    if (SKIP_DIRS.has(name)) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (TS_LIKE.test(name) || HASH_COMMENTS.test(name) || /\.(wat|md)$/.test(name)) out.push(p);
  }
  return out;
}

interface Comment {
  line: number;
  text: string;
}

/** pos → 1-based line number for one text (line starts computed once, then a binary search). */
function lineIndex(text: string): (pos: number) => number {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) starts.push(i + 1);
  return (pos) => {
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo + 1;
  };
}

/**
 * Every comment of a TS/JS file, found through the parse tree: the trivia before each node and
 * after each node's end (which covers the trivia before punctuation such as a closing brace).
 */
function tsComments(path: string, text: string): Comment[] {
  const kind = /\.(js|mjs|cjs)$/.test(path) ? ts.ScriptKind.JS : path.endsWith('.tsx') ? ts.ScriptKind.TSX : ts.ScriptKind.TS;
  const sf = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, false, kind);
  const lineOf = lineIndex(text);
  const seen = new Set<number>();
  const out: Comment[] = [];
  const take = (ranges: readonly ts.CommentRange[] | undefined) => {
    for (const r of ranges ?? []) {
      if (seen.has(r.pos)) continue;
      seen.add(r.pos);
      out.push({ line: lineOf(r.pos), text: text.slice(r.pos, r.end) });
    }
  };
  const visit = (node: ts.Node) => {
    // Leading ranges skip a comment on the line of `pos` (it trails the token before), hence both.
    take(ts.getTrailingCommentRanges(text, node.getFullStart()));
    take(ts.getLeadingCommentRanges(text, node.getFullStart()));
    take(ts.getLeadingCommentRanges(text, node.getEnd()));
    take(ts.getTrailingCommentRanges(text, node.getEnd()));
    ts.forEachChild(node, visit);
  };
  take(ts.getLeadingCommentRanges(text, 0));
  visit(sf);
  return out;
}

/** `#` comments (and, for Python, triple-quoted strings: the docstrings). Over-inclusive on purpose. */
function hashComments(path: string, text: string): Comment[] {
  const out: Comment[] = [];
  if (path.endsWith('.py')) {
    const lineOf = lineIndex(text);
    for (const m of text.matchAll(/("""|''')[\s\S]*?\1/g)) out.push({ line: lineOf(m.index), text: m[0] });
  }
  text.split('\n').forEach((l, i) => {
    const at = l.indexOf('#');
    if (at >= 0) out.push({ line: i + 1, text: l.slice(at) });
  });
  return out;
}

function watComments(text: string): Comment[] {
  const out: Comment[] = [];
  const lineOf = lineIndex(text);
  for (const m of text.matchAll(/\(;[\s\S]*?;\)/g)) out.push({ line: lineOf(m.index), text: m[0] });
  text.split('\n').forEach((l, i) => {
    const at = l.indexOf(';;');
    if (at >= 0) out.push({ line: i + 1, text: l.slice(at) });
  });
  return out;
}

/** Whether a file could hold anything the checks look for (comments are substrings of the text). */
function worthParsing(text: string): boolean {
  return (
    /docs\//.test(text) ||
    SESSION.test(text) ||
    DATE.test(text) ||
    FORBIDDEN.some(({ re }) => re.test(text))
  );
}

const commentCache = new Map<string, Comment[]>();

function commentsOf(path: string): Comment[] {
  const cached = commentCache.get(path);
  if (cached) return cached;
  const text = readFileSync(path, 'utf8');
  let out: Comment[];
  if (!worthParsing(text)) out = [];
  else if (TS_LIKE.test(path)) out = tsComments(path, text);
  else if (HASH_COMMENTS.test(path)) out = hashComments(path, text);
  else if (path.endsWith('.wat')) out = watComments(text);
  else out = text.split('\n').map((l, i) => ({ line: i + 1, text: l })); // Markdown: all of it
  commentCache.set(path, out);
  return out;
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1/-2 for repeats. */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>();
  const counts = new Map<string, number>();
  let fenced = false;
  for (const line of markdown.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const m = !fenced && /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = m[1]
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = counts.get(base) ?? 0;
    counts.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
    anchors.add(`heading:${m[1].replace(/`/g, '').toLowerCase()}`);
  }
  return anchors;
}

const anchorCache = new Map<string, Set<string>>();
function anchorsOfFile(path: string): Set<string> {
  let a = anchorCache.get(path);
  if (!a) anchorCache.set(path, (a = anchorsOf(readFileSync(path, 'utf8'))));
  return a;
}

/** Citations of the notes outside the repository, or of their numbered sections. */
const FORBIDDEN: { re: RegExp; why: string }[] = [
  { re: /(?<!docs\/)\b(algorithms|data-formats)\.md\b/, why: 'cites the private notes; cite docs/<file>.md#<heading>' },
  { re: /\b(backends|field|peers)\.md\b/, why: 'cites the private notes; cite docs/<file>.md#<heading>' },
  { re: /\.\.\/shared\b|\bshared\/(reference|tools)\b/, why: 'points outside the repository (../shared)' },
  { re: /(?<![\w.§/-])[A-I]\.\d{1,2}(\.\d{1,2})?\b(?!\.md)/, why: "a section number of the old notes ('A.8'); cite a docs/ heading" },
  { re: /\bG\.2 item\b|\bkey finding \d|\bTable [A-F]\b/, why: 'a section of the old notes; cite a docs/ heading' },
];

/** "session" as a work session (not e.g. an HTTP or inference session), and dates of who-did-what. */
const SESSION = /\bsessions?\b/i;
const TECHNICAL_SESSION = /\b(http|https|tls|ssh|browser|web|user|login|db|database|inference|onnx|tf|tensorflow)\s+sessions?\b|\bsessions?\s*(storage|id|token|key|cookie)s?\b/i;
const DATE = /\b20\d\d-[01]\d-[0-3]\d\b/;

/** What is wrong with the comments of one file (`rel` only labels the messages). */
function commentProblems(rel: string, comments: readonly Comment[]): string[] {
  const problems: string[] = [];
  for (const c of comments) {
    for (const { re, why } of FORBIDDEN) {
      const m = re.exec(c.text);
      if (m) problems.push(`${rel}:${c.line}: '${m[0]}' — ${why}`);
    }
    if (SESSION.test(c.text) && !TECHNICAL_SESSION.test(c.text)) {
      problems.push(`${rel}:${c.line}: mentions a work session — keep history in LOG.md / git, keep the why`);
    }
    const d = DATE.exec(c.text);
    if (d && !rel.endsWith('.md')) problems.push(`${rel}:${c.line}: '${d[0]}' — no dates in code comments`);
  }
  return problems;
}

describe('docs: the specification lives in the repository', () => {
  const files = SCANNED_DIRS.flatMap((d) => walk(join(ROOT, d))).filter((p) => relative(ROOT, p) !== SELF);

  it('scans the source tree', () => {
    expect(files.some((p) => p.endsWith(join('src', 'models', 'batch-norm.ts')))).toBe(true);
    expect(files.length).toBeGreaterThan(50);
  });

  it('recognises what it forbids, in comments only', () => {
    const notes = ['algorithms', 'data-formats'].map((n) => `${n}.md`);
    const src = [
      `/** Forward (${notes[0]} A.3), see ../shared/reference. */`,
      `const a = '${notes[1]} A.8 ../shared'; // fine: a string, then a third session`,
      'const re = /\\/\\/ A.9 "/; // 2026-01-02',
      `function f() {\n  g();\n  // Table E, key finding 2\n}`,
      'if (x) { // C.5 after a brace\n  y();\n}',
      '// docs/mecta-norm.md#pruning, an inference session, PIL 9.4, F.conv2d',
    ].join('\n');
    const found = commentProblems('x.ts', tsComments('x.ts', src)).map((p) => p.split(': ').slice(1).join(': '));
    expect(found.map((p) => p.split(' — ')[0]).sort()).toEqual(
      [`'${notes[0]}'`, "'../shared'", "'A.3'", 'mentions a work session', "'2026-01-02'", "'Table E'", "'C.5'"].sort(),
    );
  });

  it('no comment cites the private notes, their section numbers, work sessions or dates', () => {
    const problems = files.flatMap((path) => commentProblems(relative(ROOT, path), commentsOf(path)));
    expect(problems).toEqual([]);
  });

  it('the README cites docs/, not the private notes', () => {
    const problems: string[] = [];
    readFileSync(join(ROOT, 'README.md'), 'utf8')
      .split('\n')
      .forEach((l, i) => {
        for (const { re, why } of FORBIDDEN.slice(0, 2)) if (re.test(l)) problems.push(`README.md:${i + 1}: ${why}`);
        if (/\.\.\/shared\/reference\b/.test(l)) problems.push(`README.md:${i + 1}: points at ../shared/reference`);
      });
    expect(problems).toEqual([]);
  });

  it('every docs/ file and heading a comment cites exists', () => {
    const problems: string[] = [];
    let cited = 0;
    const cite = /\bdocs\/([\w.-]+\.md)(?:#([\w-]+)|,\s*'([^']+)')?/g;
    for (const path of [...files, join(ROOT, 'README.md')]) {
      const rel = relative(ROOT, path);
      for (const c of commentsOf(path)) {
        for (const m of c.text.matchAll(cite)) {
          cited++;
          const doc = join(ROOT, 'docs', m[1]);
          if (!existsSync(doc)) {
            problems.push(`${rel}:${c.line}: docs/${m[1]} does not exist`);
            continue;
          }
          const anchors = anchorsOfFile(doc);
          if (m[2] && !anchors.has(m[2])) problems.push(`${rel}:${c.line}: docs/${m[1]} has no heading #${m[2]}`);
          if (m[3] && !anchors.has(`heading:${m[3].toLowerCase()}`)) problems.push(`${rel}:${c.line}: docs/${m[1]} has no heading '${m[3]}'`);
        }
      }
    }
    expect(problems).toEqual([]);
    expect(cited).toBeGreaterThan(0);
  });

  it('links between the docs/ files resolve', () => {
    const docsDir = join(ROOT, 'docs');
    const problems: string[] = [];
    for (const name of readdirSync(docsDir).filter((n) => n.endsWith('.md'))) {
      const text = readFileSync(join(docsDir, name), 'utf8');
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1];
        if (/^[a-z]+:/.test(target)) continue; // http(s):, mailto:
        const [file, anchor] = target.split('#');
        const doc = file ? resolve(dirname(join(docsDir, name)), file) : join(docsDir, name);
        if (!existsSync(doc)) {
          problems.push(`docs/${name}: link ${target}: no such file`);
          continue;
        }
        if (anchor && doc.endsWith('.md') && !anchorsOfFile(doc).has(anchor)) {
          problems.push(`docs/${name}: link ${target}: no such heading`);
        }
      }
    }
    expect(problems).toEqual([]);
  });
});
