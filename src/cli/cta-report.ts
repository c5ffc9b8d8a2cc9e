/**
 * cta-report DIR...: collects finished runs (summary.json) under the folders, groups them by
 * config (all keys but the seed), prints a markdown table in the paper layout and writes
 * report.md, report.csv and the figures (SVG, and a PNG of each) to --out.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { runMain } from './run-main.js';
import { configureCli, parseArgv, valueOption, yargs } from './args.js';
import { CtaError } from '../util/errors.js';
import { checkOutDir } from '../util/out-path.js';
import { fieldKey } from '../config/load.js';
import { toKebab } from '../config/schema.js';
import { collectRuns, groupRuns } from '../report/collect.js';
import { csvTable, markdownByTable, markdownTable } from '../report/tables.js';
import { byKeySvg, errorByDomainSvg, streamSvg, svgToPng } from '../report/plots.js';
import { accMatrixSvg, cleanCurveSvg, forgettingCsv, forgettingMarkdown } from '../report/forgetting.js';
import { groupProtocolBlock } from '../report/collect.js';
import { errorVsMemorySvg, errorVsParamsSvg, memoryMarkdown } from '../report/memory.js';
import { errorParamsCacheSvg } from '../report/adapt-params.js';

const USAGE = '$0 DIR... [--by KEY] [--out DIR]';
const ABOUT =
  'Finds run folders (summary.json) under each DIR, groups runs whose configs differ only in the seed, and ' +
  'prints a markdown table: one row per group, the corruptions in stream order, their mean and the cache MB ' +
  'where recorded, as mean ± std over seeds. --by KEY puts the values of one config key in the columns ' +
  '(ablations). Writes report.md, report.csv, error-by-domain.svg, stream.svg (error and cache per batch ' +
  'over the stream) and, with --by, by-KEY.svg to --out, each figure also as a PNG beside its SVG. Runs with ' +
  '--interleave-clean add a forgetting table (avg acc, forgetting, BWT), forgetting.csv, acc-matrix.svg (heat map) ' +
  'and clean-accuracy.svg. Runs that measured their backprop bytes add an error-against-memory table and ' +
  'error-vs-memory.svg (and error-vs-params.svg where runs trained different parameter counts; error-params-cache.svg, error against trainable parameters and backprop MB, where they differ in adapt-params). Every table states the protocol (setting, images, severity, reset, batch, metric, ' +
  'model, corruption source). Unfinished runs are left out unless --include-partial.';

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-report', async () => {
    const y = configureCli(yargs(argv), 'cta-report', USAGE)
      .epilogue(ABOUT)
      .option('by', { type: 'string', defaultDescription: 'none', describe: 'config key whose values become the columns (e.g. beta-thre, alg)' })
      .option('out', { type: 'string', defaultDescription: '<first DIR>/report', describe: 'folder for report.md, report.csv and the figures' })
      .option('smooth', { ...valueOption('int'), defaultDescription: '1/20 of a domain', describe: 'batches per window in the stream plot' })
      .option('plots', { type: 'boolean', default: true, describe: 'write the figures, SVG and PNG (--no-plots to skip)' })
      .option('include-partial', { type: 'boolean', default: false, describe: 'also report runs whose summary.json is not complete' });
    const a = await parseArgv(y, argv);
    const dirs = ((a._ as unknown[]) ?? []).map(String);
    if (dirs.length === 0) throw new CtaError('expected at least one folder with runs (see cta-report --help)');
    const last = (v: unknown) => (Array.isArray(v) ? v[v.length - 1] : v);
    let smooth: number | undefined;
    if (a.smooth !== undefined) {
      smooth = Number(last(a.smooth));
      if (!Number.isInteger(smooth) || smooth < 1) throw new CtaError(`--smooth: expected an integer ≥ 1, got ${JSON.stringify(last(a.smooth))}`);
    }
    checkOutDir('--out', a.out === undefined ? join(dirs[0], 'report') : String(last(a.out)));

    const col = collectRuns(dirs, { includePartial: a.includePartial === true });
    const log = (s: string) => process.stdout.write(s + '\n');
    if (col.runs.length === 0) {
      const why = col.incomplete.length ? ` (${col.incomplete.length} unfinished; --include-partial shows them)` : '';
      throw new CtaError(`no finished runs (summary.json with complete: true) under ${dirs.join(' ')}${why}`);
    }
    const g = groupRuns(col.runs);
    let byKey: string | null = null;
    if (a.by !== undefined) {
      const raw = String(last(a.by));
      byKey = fieldKey(raw);
      if (!byKey) throw new CtaError(`--by: unknown config key '${raw}'`);
      if (!g.varied.includes(byKey)) {
        throw new CtaError(`--by ${raw}: the runs do not differ in ${toKebab(byKey)} (they differ in: ${g.varied.map(toKebab).join(', ') || 'nothing but the seed'})`);
      }
    }

    const notes: string[] = [];
    notes.push(`${col.runs.length} run${col.runs.length === 1 ? '' : 's'} in ${g.groups.length} group${g.groups.length === 1 ? '' : 's'}` + (g.varied.length ? ` (varying: ${g.varied.map(toKebab).join(', ')})` : ''));
    if (col.incomplete.length) notes.push(`${col.incomplete.length} unfinished run${col.incomplete.length === 1 ? '' : 's'} left out`);
    if (col.unreadable.length) notes.push(`${col.unreadable.length} unreadable summary.json: ${col.unreadable.join(', ')}`);
    const table = byKey ? markdownByTable(g, byKey) : `top-1 error (%) per corruption, mean over seeds (± std):\n\n${markdownTable(g)}`;
    // Every table is printed with the protocol behind its numbers (src/runner/provenance.ts).
    const protocol = groupProtocolBlock(g);
    const forgetting = forgettingMarkdown(g);
    const forgettingPart = forgetting ? `\naverage accuracy, forgetting and backward transfer (docs/protocol.md#forgetting; accuracies in %):\n\n${forgetting}\n` : '';
    // Error against memory where runs measured their backprop bytes (docs/memory.md#measured).
    const memory = memoryMarkdown(g);
    const memoryPart = memory ? `\nerror against memory (mean error over the corruptions; MB = 1e6 bytes; docs/memory.md#measured):\n\n${memory}\n` : '';
    const md = `${notes.join('; ')}\n\n${table}\n${forgettingPart}${memoryPart}\n${protocol.join('\n')}\n`;
    log(md);

    const outDir = resolve(a.out === undefined ? join(dirs[0], 'report') : String(last(a.out)));
    mkdirSync(outDir, { recursive: true });
    const written: string[] = [];
    const write = (name: string, data: string | Buffer) => {
      writeFileSync(join(outDir, name), data);
      written.push(name);
    };
    // Each figure as SVG and, for viewers that take no SVG, as a PNG of it beside it.
    const figure = async (name: string, svg: string) => {
      write(`${name}.svg`, svg);
      write(`${name}.png`, await svgToPng(svg));
    };
    // The markdown file always holds the paper layout; a --by table is added below it.
    const protoMd = `## Protocol\n\n${protocol.map((l) => `- ${l}`).join('\n')}\n`;
    write(
      'report.md',
      `# cta-report\n\n${notes.join('; ')}\n\n${protoMd}\n## Per domain\n\n${markdownTable(g)}\n${byKey ? `\n## By ${toKebab(byKey)}\n\n${markdownByTable(g, byKey)}\n` : ''}` +
        (forgetting ? `\n## Forgetting\n\n${forgetting}\n` : '') +
        (memory ? `\n## Memory\n\n${memory}\n` : ''),
    );
    // '#' lines ahead of the header (pandas: comment='#'): the protocol of the rows below.
    write('report.csv', protocol.map((l) => `# ${l}\n`).join('') + csvTable(g));
    const fcsv = forgettingCsv(g);
    if (fcsv) write('forgetting.csv', protocol.map((l) => `# ${l}\n`).join('') + fcsv);
    if (a.plots !== false) {
      await figure('error-by-domain', errorByDomainSvg(g));
      const stream = streamSvg(g, { smooth });
      if (stream) await figure('stream', stream);
      if (byKey) await figure(`by-${toKebab(byKey)}`, byKeySvg(g, byKey));
      const heat = accMatrixSvg(g);
      if (heat) await figure('acc-matrix', heat);
      const curve = cleanCurveSvg(g);
      if (curve) await figure('clean-accuracy', curve);
      const mem = errorVsMemorySvg(g);
      if (mem) await figure('error-vs-memory', mem);
      const params = errorVsParamsSvg(g);
      if (params) await figure('error-vs-params', params);
      // Runs that differ in --adapt-params: error vs trainable parameters vs backprop MB (docs/adapters.md#report).
      const adapt = errorParamsCacheSvg(g);
      if (adapt) await figure('error-params-cache', adapt);
    }
    const rel = relative(process.cwd(), outDir) || '.';
    log(`wrote ${written.map((f) => join(rel, f)).join(', ')}`);
  });
}
