import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { readTorchPt } from '../io/torch-pt.js';
import type { StateDict } from '../io/types.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { buildModel } from './registry.js';
import type { Classifier } from './types.js';
import { WideResNet } from './wrn.js';
import { connectedNormParams, expectClose, fixtureTensor, observed } from './test-helpers.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'models');
const meta = JSON.parse(readFileSync(join(DIR, 'wrn_small.json'), 'utf8')) as {
  depth: number;
  widen_factor: number;
  channels: number[];
  bn_layers: string[];
};

let st: StateDict;
let pt: StateDict;
let io: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  st = await readSafetensors(join(DIR, 'wrn_small.safetensors'));
  pt = await readTorchPt(join(DIR, 'wrn_small.pt'));
  io = await readSafetensors(join(DIR, 'wrn_small.io.safetensors'));
});

afterAll(() => {
  const rows = [...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
  console.log(`wrn max relative errors: ${rows.join(' ')}`);
});

const build = (sd: StateDict) => buildModel('wrn28_10', sd, { rng: new Rng(3) });

function logits(model: Classifier): tf.Tensor2D {
  const x = fixtureTensor(io, 'input') as tf.Tensor4D;
  const y = model.forward(x);
  x.dispose();
  return y;
}

describe('WideResNet against PyTorch (wrn_small fixture)', () => {
  for (const source of ['safetensors', 'pt'] as const) {
    it(`eval ('source') and train ('batch') logits match, weights from .${source}`, () => {
      const model = build(source === 'pt' ? pt : st);
      expect(model).toBeInstanceOf(WideResNet);
      const arch = (model as WideResNet).architecture;
      expect(arch.depth).toBe(meta.depth);
      expect(arch.widenFactor).toBe(meta.widen_factor);
      expect([arch.stem, ...arch.groups.map((g) => g.width)]).toEqual(meta.channels);
      expect(model.normLayers.map((l) => l.name)).toEqual(meta.bn_layers);

      const yEval = logits(model);
      expectClose(`wrn.logits_eval.${source}`, yEval, fixtureTensor(io, 'logits_eval'));
      model.setNormMode('batch');
      const yTrain = logits(model);
      expectClose(`wrn.logits_train.${source}`, yTrain, fixtureTensor(io, 'logits_train'));
      tf.dispose([yEval, yTrain]);
      model.dispose();
    });
  }

  it('stateDict round-trips the PyTorch keys, layouts and values', () => {
    const model = build(st);
    const state = model.stateDict();
    expect([...state.keys()]).toEqual([...st.keys()].filter((k) => !k.endsWith('num_batches_tracked')));
    for (const [k, t] of state) {
      expect(t.shape, k).toEqual(st.get(k)!.shape);
      expect(Array.from(t.dataSync()), k).toEqual(Array.from(st.get(k)!.data));
    }
    model.loadStateDict(state);
    const y = logits(model);
    expectClose('wrn.reload', y, fixtureTensor(io, 'logits_eval'));
    tf.dispose([...state.values(), y]);
    model.dispose();
  });

  it('rejects mismatched weights with one error', async () => {
    const sd: StateDict = new Map(st);
    sd.delete('block2.layer.0.convShortcut.weight');
    sd.set('block1.layer.0.convShortcut.weight', st.get('block2.layer.0.convShortcut.weight')!);
    sd.set('fc.weight', { ...st.get('fc.weight')!, shape: [64, 10] });
    let msg = '';
    try {
      build(sd);
    } catch (e) {
      expect(e).toBeInstanceOf(CtaError);
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/1 missing \(block2\.layer\.0\.convShortcut\.weight\)/);
    expect(msg).toMatch(/1 unexpected \(block1\.layer\.0\.convShortcut\.weight\)/);
    expect(msg).toMatch(/wrong shape \(.*fc\.weight \[64,10\] expected/);
    // ResNeXt weights under the WRN name: the error names the architecture that fits.
    const rx = await readSafetensors(join(DIR, 'resnext_small.safetensors'));
    expect(() => build(rx)).toThrow(/does not match wrn28_10.*\(the weights fit --model resnext29\)/);
  });

  it('checks pinned architecture facts', () => {
    expect(() => buildModel('wrn28_10', st, { rng: new Rng(1), expect: { depth: 28 } })).toThrow(/depth 28 expected, weights have 16/);
    expect(() => buildModel('wrn28_10', st, { rng: new Rng(1), expect: { cardinality: 4 } })).toThrow(/ResNeXt only/);
  });

  it('does not leak over repeated forward and gradient steps', () => {
    const model = build(st);
    const x = fixtureTensor(io, 'input') as tf.Tensor4D;
    const mecta = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.00125, pruneQ: 0.7 } as const;
    for (const mode of ['source', 'batch', 'mecta'] as const) {
      model.setNormMode(mode, mecta);
      const step = () =>
        tf.tidy(() => {
          const { grads } = tf.variableGrads(() => tf.mean(tf.logSoftmax(model.forward(x))) as tf.Scalar, model.trainableParams());
          // MECTA: the same batch again gives β ≈ 0, and a matched layer's γ/β get no gradient
          expect(Object.keys(grads).length).toBe(connectedNormParams(model));
        });
      step();
      const before = tf.memory().numTensors;
      step();
      model.forward(x).dispose();
      expect(tf.memory().numTensors, mode).toBe(before);
    }
    x.dispose();
    model.dispose();
  });
});
