/**
 * profile-mem: backprop-cache memory per batch size (docs/memory.md#the-profile-mem-command).
 * Builds the model and algorithm from the same config/flags as cta-eval, runs one adaptation step
 * on the first batch of --domain (or random input with --synthetic) for each --batch-sizes, and
 * prints analytic (docs/memory.md#analytic) and measured memory, step and inference peaks and step
 * time.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseCommand, valueOption } from './args.js';
import { ALL_CORRUPTIONS, type FieldKey } from '../config/schema.js';
import { CLEAN_DOMAIN } from '../data/stream.js';
import { runMain } from './run-main.js';
import { CtaError } from '../util/errors.js';
import { checkOutFile } from '../util/out-path.js';
import { DEFAULT_BATCH_SIZES, keptRatioLines, layerTable, parseBatchSizes, runProfile, stateTable, summaryTable, TRAIN_SETS, weightLayerTable, type TrainSet } from '../memory/profile.js';

const USAGE = `$0 [--config FILE] [options] [--batch-sizes 8,16,32,64] [--synthetic] [--per-layer] [--train norm|all] [--json FILE]

Measures the memory of one adaptation step per batch size: the analytic MECTA cache (forward =
largest norm-layer input, backward = sum of the inputs of the layers that cache; MB = 1e6 bytes),
the bytes the engine actually holds for backprop when the backward starts, the step's and an
inference forward's peak engine bytes, and the step time. Model, algorithm and MECTA options come
from the cta-eval config/flags; without --weights the model gets random weights of the RobustBench
shape. --synthetic feeds random images instead of the first batch of --domain. --train all makes
every parameter trainable (convs, linears, embeddings: CoTTA's student) and adds the inputs their
weight gradients need to the analytic backward figure.`;

/**
 * Run-config fields profile-mem does not read: no run folder, progress or comparison, one step
 * per --batch-sizes entry on the first images of --domain in file order. Not offered as flags
 * (a shared cta-eval YAML config may still hold them).
 */
export const PROFILE_MEM_IGNORES: readonly FieldKey[] = [
  'out',
  'progress',
  'compareWith',
  'batchSize',
  'shuffle',
  'corruptions',
  'cleanLast',
  // the stream's composition: profile-mem measures one batch of one domain
  'corruptionSet',
  'domainOrders',
  'evalMode',
  'supportBatch',
  'mergeBatches',
  'curBatch',
  'iters',
];

interface Extra extends Record<string, unknown> {
  batchSizes: string;
  domain: string;
  synthetic: boolean;
  perLayer: boolean;
  train: string;
  json?: string;
  steps: number;
}

export async function main(argv: string[]): Promise<void> {
  await runMain('profile-mem', async () => {
    const { cfg, argv: args } = await parseCommand<Extra>(argv, 'profile-mem', USAGE, (y) =>
      y
        .option('batch-sizes', { type: 'string', default: DEFAULT_BATCH_SIZES.join(','), defaultDescription: DEFAULT_BATCH_SIZES.join(','), describe: 'comma-separated batch sizes, one step each', group: 'profile-mem' })
        .option('domain', { type: 'string', default: 'gaussian_noise', defaultDescription: 'gaussian_noise', describe: `domain whose first batch is used (not with --synthetic): a corruption or ${CLEAN_DOMAIN}`, group: 'profile-mem' })
        .option('synthetic', { type: 'boolean', default: false, describe: 'random input of the model\'s shape: no data set needed', group: 'profile-mem' })
        .option('per-layer', { type: 'boolean', default: false, describe: 'also print the per-norm-layer table for every batch size', group: 'profile-mem' })
        .option('train', { type: 'string', choices: [...TRAIN_SETS], default: 'norm', describe: "what trains: 'norm' = the method's norm-layer affines (or the last --n-layer BatchNorm layers), 'all' = every parameter", group: 'profile-mem' })
        .option('steps', { ...valueOption('int'), default: 1, describe: 'steps per batch size on the same batch (memory of the first, time of the fastest)', group: 'profile-mem' })
        .option('json', { type: 'string', defaultDescription: 'none', describe: 'write the full report (rows, per-layer rows, config) to this file', group: 'profile-mem' }),
      PROFILE_MEM_IGNORES,
    );
    const positional = (args._ as unknown[]) ?? [];
    if (positional.length > 0) throw new CtaError(`profile-mem: unexpected argument '${String(positional[0])}' (options start with --)`);
    const domain = String(args.domain);
    if (domain !== CLEAN_DOMAIN && !ALL_CORRUPTIONS.includes(domain)) {
      throw new CtaError(`--domain: expected ${CLEAN_DOMAIN} or a corruption (${ALL_CORRUPTIONS.join(', ')}), got ${JSON.stringify(domain)}`);
    }
    // Only --domain is read (and the clean set for EATA's Fisher data): check just those files up
    // front, whatever corruption list a shared config carries.
    cfg.corruptions = domain === CLEAN_DOMAIN ? [] : [domain];
    cfg.corruptionSet = 'custom'; // the domain above, whatever a shared config's --corruption-set says
    cfg.cleanLast = domain === CLEAN_DOMAIN || cfg.alg === 'eata';
    const steps = Number(args.steps);
    if (!Number.isInteger(steps) || steps < 1) throw new CtaError(`--steps: expected a positive integer, got ${String(args.steps)}`);
    const batchSizes = parseBatchSizes(String(args.batchSizes));
    if (args.json) checkOutFile('--json', String(args.json));
    const log = (line: string) => process.stdout.write(line + '\n');
    const name = `${cfg.alg}${cfg.accumBn ? '+mecta' : ''}`;
    log(
      `profile-mem: ${name}${args.train === 'all' ? ' (every parameter trains)' : ''} on ${cfg.model}, batch sizes ${batchSizes.join(',')}, ${args.synthetic ? 'synthetic input' : `first batch of ${cfg.data} ${args.domain}`}` +
        (cfg.accumBn ? ` (forget gate ${cfg.forgetGate ? 'on' : 'off'}, ${cfg.cacheBudgetMb !== null ? `cache budget ${cfg.cacheBudgetMb} MB, ${cfg.cacheBudgetMode}` : `beta-thre ${cfg.betaThre}, prune-q ${cfg.pruneQ}`})` : ''),
    );
    const report = await runProfile({
      cfg,
      batchSizes,
      domain,
      synthetic: Boolean(args.synthetic),
      perLayer: Boolean(args.perLayer),
      train: String(args.train) as TrainSet,
      steps,
      log,
    });
    log('');
    log(summaryTable(report));
    const state = stateTable(report);
    if (state) {
      log('');
      log(`${cfg.alg}: state beyond the model weights after the step (docs/memory.md#method-state)`);
      log(state);
    }
    const kept = keptRatioLines(report);
    if (kept.length) {
      log('');
      log(`cache budget ${cfg.cacheBudgetMb} MB, ${cfg.cacheBudgetMode} (docs/memory.md#cache-budget):`);
      for (const line of kept) log(line);
    }
    if (args.perLayer) {
      for (const row of report.rows) {
        if (!row.layers) continue;
        log('');
        log(`batch ${row.batch_size}: per norm layer (measured norm = saved by the layer's op; after = saved by the ops up to the next norm layer, e.g. ReLU masks)`);
        log(layerTable(row));
        if (row.weight_layers?.length) {
          log('');
          log(`batch ${row.batch_size}: per trainable conv/linear/embedding layer (analytic = the input its weight gradient needs; measured = saved by the ops taking its weight)`);
          log(weightLayerTable(row));
        }
      }
    }
    log('');
    log(`backend ${report.backend}; MB = 1e6 bytes; peaks are engine tensor bytes including the weights; timings on a shared machine are noisy`);
    log('GFLOPs: 1e9 multiply-accumulates of convs, linears and attention products plus norm-layer element operations (docs/memory.md#flops); RSS peak: the process during the step; WASM heap: its size so far (it only grows)');
    if (report.adapter) log('GPU columns: the webgpu backend\'s live GPU buffers (tensors, uniforms, staging copies); pool = live + kept for reuse');
    if (args.json) {
      // checkOutFile allowed a folder still to be created.
      mkdirSync(dirname(String(args.json)), { recursive: true });
      writeFileSync(String(args.json), JSON.stringify(report, null, 2) + '\n');
      log(`profile-mem: report written to ${String(args.json)}`);
    }
    if (report.rows.some((r) => r.error)) process.exitCode = 1;
  });
}
