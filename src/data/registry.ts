/**
 * Data sets the runner can stream, keyed by the `--data` value. Each entry turns the resolved
 * config into a DomainSource; `DATASETS` in the config schema lists the same keys.
 */
import type { CtaConfig } from '../config/schema.js';
import { CtaError } from '../util/errors.js';
import { cifarCSource, type DomainSource } from './stream.js';
import { syntheticCSource } from './synthetic-c.js';
import { imageNetCSource } from './imagenet-c.js';
import { streamCorruptions } from './eval-modes.js';

type SourceFactory = (cfg: CtaConfig) => DomainSource;

function cifar(numClasses: 10 | 100): SourceFactory {
  return (cfg) => {
    if (!cfg.dataDir) throw new CtaError(`--data-dir: required for --data ${cfg.data} (a folder with <corruption>.npy and labels.npy)`);
    return cifarCSource({
      dataDir: cfg.dataDir,
      severity: cfg.severity,
      // --corruption-set, when given, decides (src/data/eval-modes.ts)
      corruptions: streamCorruptions(cfg).corruptions,
      includeClean: streamCorruptions(cfg).cleanLast,
      cleanPath: cfg.cleanPath ?? undefined,
      nExamples: cfg.nExamples ?? undefined,
      numClasses,
    });
  };
}

export const DATA_SOURCES = {
  cifar10c: cifar(10),
  cifar100c: cifar(100),
  // Corrupts a clean set on the fly (no CIFAR-C folder needed); the noise is seeded by --seed.
  'synthetic-c': (cfg) => {
    if (!cfg.source) throw new CtaError('--source: required for --data synthetic-c (a clean IDX images file (.gz ok), CIFAR binary batch or .npy)');
    return syntheticCSource({
      source: cfg.source,
      severity: cfg.severity,
      // --corruption-set, when given, decides (src/data/eval-modes.ts)
      corruptions: streamCorruptions(cfg).corruptions,
      includeClean: streamCorruptions(cfg).cleanLast,
      nExamples: cfg.nExamples ?? undefined,
      seed: cfg.seed,
      frostDir: cfg.frostDir ?? undefined,
    });
  },
  // ImageNet-C folders decoded with sharp batch by batch (data/imagenet-c.ts); clean = --clean-dir.
  imagenetc: (cfg) =>
    imageNetCSource({
      dataDir: cfg.dataDir,
      severity: cfg.severity,
      // --corruption-set, when given, decides (src/data/eval-modes.ts)
      corruptions: streamCorruptions(cfg).corruptions,
      includeClean: streamCorruptions(cfg).cleanLast,
      cleanDir: cfg.cleanDir,
      nExamples: cfg.nExamples ?? undefined,
      imageList: cfg.imageList,
      skipBadImages: cfg.skipBadImages,
      seed: cfg.seed,
    }),
} satisfies Record<CtaConfig['data'], SourceFactory>;

/** Opens the configured source and checks every domain's files up front (fail before adapting). */
export async function openDataSource(cfg: CtaConfig): Promise<DomainSource> {
  const source = DATA_SOURCES[cfg.data](cfg);
  await source.validate?.();
  return source;
}
