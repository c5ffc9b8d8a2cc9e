/**
 * Random full-size state dicts for the benchmark (speed and memory depend only on the shapes).
 * resnext29 / wrn28_10: src/memory/random-weights.ts (RobustBench shapes). resnet50 / vit_b16,
 * unless that module learns them: torchvision ResNet-50 and timm vit_base_patch16_224 key lists
 * from the models' own `*ExpectedKeys`, filled by src/models/test-weights.ts.
 */
import { randomStateDict as robustbenchRandom } from '../../dist/memory/random-weights.js';
import { randomStateDict as fromKeys } from '../../dist/models/test-weights.js';

/** torchvision resnet50 (ImageNet, 1000 classes). */
async function resnet50Keys() {
  const { resnetExpectedKeys } = await import('../../dist/models/resnet50.js');
  return resnetExpectedKeys({
    prefix: '',
    hasNormalize: false,
    stem: 64,
    groups: 1,
    stages: [
      { blocks: 3, inner: 64, out: 256, stride: 1 },
      { blocks: 4, inner: 128, out: 512, stride: 2 },
      { blocks: 6, inner: 256, out: 1024, stride: 2 },
      { blocks: 3, inner: 512, out: 2048, stride: 2 },
    ],
    numClasses: 1000,
    depth: 50,
  });
}

/** timm vit_base_patch16_224 (1000 classes). */
async function vitB16Keys() {
  const { vitExpectedKeys } = await import('../../dist/models/vit.js');
  return vitExpectedKeys({ dim: 768, depth: 12, mlpDim: 3072, patch: 16, grid: 14, numClasses: 1000, qkvBias: true });
}

const TEMPLATES = { resnet50: resnet50Keys, vit_b16: vitB16Keys };

/** A random state dict for `model`; throws when there is no template for it. */
export async function benchStateDict(model, seed) {
  try {
    return robustbenchRandom(model, { seed });
  } catch (e) {
    const template = TEMPLATES[model];
    if (!template) throw e;
    const keys = await template();
    return fromKeys([...keys].map(([name, shape]) => ({ name, shape })), seed + 1);
  }
}
