/**
 * cta-eval: continual test-time adaptation over a corruption stream. Thin layer: parse flags into
 * the typed config, call the runner, print the table.
 */
import { parseCommand } from './args.js';
import { runMain } from './run-main.js';
import { defaultOutDir, runContinual } from '../runner/continual.js';
import { resultTable } from '../runner/table.js';

const USAGE = `$0 [--config FILE] [options]

Runs a continual test-time adaptation experiment: every domain of the stream in order, one model
adapting throughout, top-1 error per domain. Results go to --out (batches.jsonl, summary.json,
manifest.json).`;

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-eval', async () => {
    const { cfg } = await parseCommand(argv, 'cta-eval', USAGE, (y) => y);
    cfg.out = cfg.out ?? defaultOutDir(cfg.alg);
    const log = (line: string) => process.stdout.write(line + '\n');
    log(`cta-eval: ${cfg.alg}${cfg.accumBn ? ' + MECTA norm' : ''} on ${cfg.data} (${cfg.model}), batch ${cfg.batchSize}, severity ${cfg.severity}`);
    const { summary, dir } = await runContinual(cfg, cfg.out, { log });
    log('');
    log(resultTable([{ title: cfg.alg, domains: summary.domains, mean: summary.mean_error, meanAll: summary.mean_error_all }]));
    log('');
    log(`results: ${dir}/summary.json`);
  });
}
