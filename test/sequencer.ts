/**
 * Longest test files first, so that the two forks finish together. A fresh clone (CI) has no
 * vitest result cache, and vitest then starts files in glob order: a slow file that happens to
 * start last (the webgpu parity run, ~40 s) would leave one core idle at the end. The weights are
 * rough seconds on the 2-core machine; files not listed count as 1 s and keep their order.
 */
import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const SECONDS: Record<string, number> = {
  'src/algorithms/parity-webgpu.test.ts': 40,
  'src/algorithms/parity.test.ts': 31,
  'test/e2e/bench.test.ts': 20,
  'test/e2e/interrupt.test.ts': 16,
  'src/algorithms/backend-matrix.test.ts': 14,
  'test/e2e/startup.test.ts': 13,
  'test/e2e/settings.test.ts': 19,
  'test/e2e/sweep.test.ts': 12,
  'src/algorithms/sar.test.ts': 12,
  'test/e2e/imagenet.test.ts': 11,
  'test/e2e/resume.test.ts': 11,
  'test/e2e/cta-corrupt.test.ts': 9,
  'test/e2e/cta-eval.test.ts': 7,
  'test/e2e/webgpu.test.ts': 7,
  'test/e2e/help.test.ts': 6,
  'test/e2e/out-path.test.ts': 6,
};

export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root;
    const weight = (f: TestSpecification) => SECONDS[relative(root, f.moduleId).split('\\').join('/')] ?? 1;
    return [...files].sort((a, b) => weight(b) - weight(a));
  }
}
