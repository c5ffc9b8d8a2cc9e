import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { BatchNormLayer, meanDistance } from './batch-norm.js';
import { usingTemps } from './ops/weights.js';
import type { RemovedChannelSource } from './batch-norm.js';
import type { DistMetric, MectaOptions } from './types.js';
import { Rng } from '../util/rng.js';
import { expectClose, fixtureTensor, observed, rawInts } from './test-helpers.js';

const FIX = join(process.cwd(), 'test', 'fixtures', 'mecta');
const CASES = ['accum', 'accum_copy', 'gate_skl', 'gate_kl', 'gate_simple', 'thre_matched', 'prune'];

interface CaseJson {
  options: {
    beta: number;
    init_beta: number | null;
    forget_gate: boolean;
    dist_metric: DistMetric;
    dist_scale: number;
    beta_thre: number;
    prune_q: number;
    eps: number;
  };
  [k: string]: unknown;
}

beforeAll(async () => {
  await initBackend('wasm');
});

afterAll(() => {
  const rows = [...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
  console.log(`batch-norm max relative errors: ${rows.join(' ')}`);
});

function makeLayer(sd: StateDict, eps: number, removed: RemovedChannelSource = () => new Int32Array(0)): BatchNormLayer {
  const params = {
    weight: fixtureTensor(sd, 'weight') as tf.Tensor1D,
    bias: fixtureTensor(sd, 'bias') as tf.Tensor1D,
    runningMean: fixtureTensor(sd, 'running_mean0') as tf.Tensor1D,
    runningVar: fixtureTensor(sd, 'running_var0') as tf.Tensor1D,
  };
  return usingTemps(Object.values(params), () => new BatchNormLayer('bn', params, removed, eps));
}

/** y, dx, dweight, dbias of one forward with upstream gradient g (tape on). */
function forwardBackward(layer: BatchNormLayer, x: tf.Tensor4D, g: tf.Tensor4D): tf.Tensor[] {
  const { value, grads } = tf.engine().gradients(() => layer.apply(x), [x, layer.weight, layer.bias], g);
  // A matched MECTA layer's op does not take γ/β (no path, no gradient): the reference's zeros.
  return [value, ...grads.map((d, i) => d ?? tf.zerosLike([x, layer.weight, layer.bias][i]))];
}

describe('meanDistance (docs/mecta-norm.md test vectors)', () => {
  it('matches the table', () => {
    const d = (m: DistMetric, a: number[]) => meanDistance(m, [a[0]], [a[1]], [a[2]], [a[3]]);
    expect(d('skl', [0.5, 2, 0, 1])).toBeCloseTo(0.436969, 6);
    expect(d('kl', [0.5, 2, 0, 1])).toBeCloseTo(0.278052, 6);
    expect(d('simple', [0.5, 2, 0, 1])).toBeCloseTo(0.24975, 6);
    expect(d('skl', [0.1, 1.1, 0, 1])).toBeCloseTo(0.014073, 6);
    expect(d('kl', [0.01, 1, 0, 1])).toBeCloseTo(0.00005, 6);
    expect(d('skl', [0.3, 1.7, 0.3, 1.7])).toBe(0);
    const two = meanDistance('skl', [0.5, 0], [2, 1], [0, 0], [1, 1]);
    expect(two).toBeCloseTo(0.218485, 6);
    expect(1 - Math.exp(-two)).toBeCloseTo(0.196264, 6);
  });
});

describe('MECTA mode against the float64 reference fixtures (forward, gate, pruning, backward)', () => {
  for (const name of CASES) {
    it(name, async () => {
      const sd = await readSafetensors(join(FIX, `${name}.safetensors`));
      const js = JSON.parse(readFileSync(join(FIX, `${name}.json`), 'utf8')) as CaseJson;
      const o = js.options;
      const opts: MectaOptions = {
        beta: o.beta,
        initBeta: o.init_beta,
        forgetGate: o.forget_gate,
        distMetric: o.dist_metric,
        distScale: o.dist_scale,
        betaThre: o.beta_thre,
        pruneQ: o.prune_q,
      };
      const removedCalls: string[] = [];
      let step = 0;
      const layer = makeLayer(sd, o.eps, (layerName, channels, count) => {
        removedCalls.push(`${layerName}:${channels}:${count}`);
        return rawInts(sd.get(`removed${step}`));
      });
      layer.setMode('mecta', opts);
      const before = tf.memory().numTensors;
      for (step = 1; step <= 2; step++) {
        const k = step;
        tf.tidy(() => {
          const x = fixtureTensor(sd, `x${k}`) as tf.Tensor4D;
          const g = fixtureTensor(sd, `g${k}`) as tf.Tensor4D;
          const [y, dx, dw, db] = forwardBackward(layer, x, g);
          const rec = layer.last!;
          expect(rec.beta).toBeCloseTo(js[`beta${k}`] as number, 6);
          expect(layer.matched).toBe(js[`matched${k}`]);
          expect(rec.cached).toBe(!(js[`matched${k}`] as boolean));
          const [n, h, w, c] = x.shape;
          const bytes = n * Math.floor((1 - o.prune_q) * c) * h * w * 4;
          expect(rec.forwardBytes).toBe(bytes);
          expect(rec.backwardBytes).toBe(rec.cached ? bytes : 0);
          expectClose(`mecta.running_mean[${name}${k}]`, layer.runningMean, fixtureTensor(sd, `running_mean${k}`));
          expectClose(`mecta.running_var[${name}${k}]`, layer.runningVar, fixtureTensor(sd, `running_var${k}`));
          expectClose(`mecta.y[${name}${k}]`, y, fixtureTensor(sd, `y${k}`));
          expectClose(`mecta.dx[${name}${k}]`, dx, fixtureTensor(sd, `dx${k}`));
          expectClose(`mecta.dweight[${name}${k}]`, dw, fixtureTensor(sd, `dweight${k}`));
          expectClose(`mecta.dbias[${name}${k}]`, db, fixtureTensor(sd, `dbias${k}`));
        });
      }
      // Only pruning layers ask for removed channels, once per caching forward.
      expect(removedCalls).toEqual(o.prune_q > 0 ? ['bn:6:3', 'bn:6:3'] : []);
      expect(tf.memory().numTensors).toBe(before);
      layer.dispose();
    });
  }

  /**
   * Float64 reference of docs/mecta-norm.md#forward, #preg and #refill on NHWC data (gate on,
   * 'skl'), independent of the tf code.
   */
  function reference(x: Float32Array, g: Float32Array, c: number, w: number[], b: number[], rm: number[], rv: number[], removed: Set<number>) {
    const m = x.length / c;
    const eps = 1e-5;
    const mu = new Float64Array(c);
    const v = new Float64Array(c);
    for (let i = 0; i < x.length; i++) mu[i % c] += x[i] / m;
    for (let i = 0; i < x.length; i++) v[i % c] += (x[i] - mu[i % c]) ** 2 / m;
    const beta = 1 - Math.exp(-meanDistance('skl', mu, v, rm, rv));
    const rm1 = rm.map((r, i) => (1 - beta) * r + beta * mu[i]);
    const rv1 = rv.map((r, i) => (1 - beta) * r + beta * v[i]);
    const sr = rv1.map((r) => Math.sqrt(r + eps));
    const sb = Array.from(v, (r) => Math.sqrt(r + eps));
    const meanG = new Float64Array(c);
    const meanGX = new Float64Array(c);
    const dw = new Float64Array(c);
    const db = new Float64Array(c);
    for (let i = 0; i < x.length; i++) {
      const ch = i % c;
      const xhat = (x[i] - mu[ch]) / sb[ch];
      meanG[ch] += g[i] / m;
      meanGX[ch] += (g[i] * xhat) / m;
      db[ch] += g[i];
      if (!removed.has(ch)) dw[ch] += (g[i] * (x[i] - rm1[ch])) / sr[ch];
    }
    const dx = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const ch = i % c;
      const xhat = (x[i] - mu[ch]) / sb[ch];
      const keptTerm = removed.has(ch) ? 0 : xhat * meanGX[ch];
      dx[i] = (w[ch] / sr[ch]) * (g[i] - meanG[ch] - keptTerm);
    }
    return { beta, rm1, dx, dw, db };
  }

  // Wide layers take the gather paths of the channel split (C > 384 select, C > 1024 scatter).
  for (const c of [520, 1030]) {
    it(`pruned PreG/refill gradients for ${c} channels match a float64 reference`, () => {
      const rng = new Rng(c);
      const rand = (n: number, f: () => number) => Array.from({ length: n }, f);
      const w = rand(c, () => 0.5 + rng.next());
      const b = rand(c, () => rng.normal() * 0.2);
      const rm = rand(c, () => rng.normal() * 0.5);
      const rv = rand(c, () => 0.5 + rng.next());
      const shape: [number, number, number, number] = [2, 2, 2, c];
      const n = 8 * c;
      const xData = Float32Array.from({ length: n }, (_, i) => 0.3 + 1.3 * rng.normal() + 0.01 * (i % c));
      const gData = Float32Array.from({ length: n }, () => rng.normal());
      const removed = rng.permutation(c).slice(0, Math.floor(c * 0.7));
      const params = { weight: tf.tensor1d(w), bias: tf.tensor1d(b), runningMean: tf.tensor1d(rm), runningVar: tf.tensor1d(rv) };
      const layer = usingTemps(Object.values(params), () => new BatchNormLayer('wide', params, () => removed));
      layer.setMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.7 });
      const want = reference(xData, gData, c, w, b, rm, rv, new Set(removed));
      tf.tidy(() => {
        const x = tf.tensor4d(xData, shape);
        const g = tf.tensor4d(gData, shape);
        const [, dx, dw, db] = forwardBackward(layer, x, g);
        expect(layer.last!.beta).toBeCloseTo(want.beta, 6);
        expectClose(`mecta.wide.running_mean[${c}]`, layer.runningMean, want.rm1);
        expectClose(`mecta.wide.dx[${c}]`, dx, want.dx);
        expectClose(`mecta.wide.dweight[${c}]`, dw, want.dw);
        expectClose(`mecta.wide.dbias[${c}]`, db, want.db);
      });
      layer.dispose();
    });
  }

  it('a forward without a tape keeps nothing and still updates the statistics', async () => {
    const sd = await readSafetensors(join(FIX, 'prune.safetensors'));
    const layer = makeLayer(sd, 1e-5, () => Int32Array.from([1, 4, 5]));
    layer.setMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 });
    const x = fixtureTensor(sd, 'x1') as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const y = layer.apply(x);
    expect(tf.memory().numTensors).toBe(before + 1); // only y
    y.dispose();
    expectClose('mecta.nograd.running_mean', layer.runningMean, fixtureTensor(sd, 'running_mean1'));
    layer.reset();
    expect(layer.last).toBeNull();
    x.dispose();
    layer.dispose();
  });
});

describe('batch, source and train-update modes', () => {
  const shape: [number, number, number, number] = [3, 4, 5, 6];
  const seedData = (seed: number, n: number, scale = 1, offset = 0) =>
    tf.tidy(() => tf.add(tf.mul(tf.randomNormal([n], 0, 1, 'float32', seed), scale), offset));

  function layerWithStats(): BatchNormLayer {
    const params = {
      weight: seedData(1, 6, 0.3, 1) as tf.Tensor1D,
      bias: seedData(2, 6, 0.2) as tf.Tensor1D,
      runningMean: seedData(3, 6, 0.5) as tf.Tensor1D,
      runningVar: tf.tidy(() => tf.abs(seedData(4, 6, 0.5, 1.2))) as tf.Tensor1D,
    };
    return usingTemps(Object.values(params), () => new BatchNormLayer('bn', params, () => new Int32Array(0)));
  }

  /** Reference: tf's own autodiff through tf.moments + tf.batchNorm. */
  function referenceBatch(x: tf.Tensor4D, w: tf.Tensor1D, b: tf.Tensor1D, g: tf.Tensor4D): tf.Tensor[] {
    const { value, grads } = tf.engine().gradients(
      () => {
        const { mean, variance } = tf.moments(x, [0, 1, 2]);
        return tf.batchNorm(x, mean, variance, b, w, 1e-5);
      },
      [x, w, b],
      g,
    );
    return [value, ...grads];
  }

  it("'batch' matches autodiff of tf.batchNorm with batch statistics", () => {
    const layer = layerWithStats();
    layer.setMode('batch');
    tf.tidy(() => {
      const x = tf.add(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 7), 2), 0.7) as tf.Tensor4D;
      const g = tf.randomNormal(shape, 0, 1, 'float32', 8) as tf.Tensor4D;
      const rm0 = layer.runningMean.dataSync().slice();
      const got = forwardBackward(layer, x, g);
      const want = referenceBatch(x, layer.weight as tf.Tensor1D, layer.bias as tf.Tensor1D, g);
      for (const [i, label] of ['y', 'dx', 'dweight', 'dbias'].entries()) {
        expectClose(`batch.${label}`, got[i], want[i], 2e-5);
      }
      expect(Array.from(layer.runningMean.dataSync())).toEqual(Array.from(rm0)); // untouched
      const rec = layer.last!;
      expect(rec).toMatchObject({ beta: null, cached: true, forwardBytes: 3 * 4 * 5 * 6 * 4 });
    });
    // A non-trainable layer still passes the input gradient (upstream layers may be trainable).
    layer.trainable = false;
    tf.tidy(() => {
      const x = tf.randomNormal(shape, 0, 1, 'float32', 9) as tf.Tensor4D;
      const g = tf.randomNormal(shape, 0, 1, 'float32', 10) as tf.Tensor4D;
      const dx = tf.engine().gradients(() => layer.apply(x), [x], g).grads[0];
      const want = referenceBatch(x, layer.weight as tf.Tensor1D, layer.bias as tf.Tensor1D, g)[1];
      expectClose('batch.dx(frozen)', dx, want, 2e-5);
      expect(layer.last).toMatchObject({ cached: false, backwardBytes: 0 });
    });
    layer.dispose();
  });

  it("'source' matches autodiff of eval-mode tf.batchNorm", () => {
    const layer = layerWithStats();
    tf.tidy(() => {
      const x = tf.randomNormal(shape, 0, 1, 'float32', 11) as tf.Tensor4D;
      const g = tf.randomNormal(shape, 0, 1, 'float32', 12) as tf.Tensor4D;
      const rm = layer.runningMean as tf.Tensor1D;
      const rv = layer.runningVar as tf.Tensor1D;
      const got = forwardBackward(layer, x, g);
      const w = layer.weight as tf.Tensor1D;
      const b = layer.bias as tf.Tensor1D;
      const want = tf.engine().gradients(
        () => tf.add(tf.mul(tf.div(tf.sub(x, rm), tf.sqrt(tf.add(rv, 1e-5))), w), b),
        [x, w, b],
        g,
      );
      const ref = [want.value, ...want.grads];
      for (const [i, label] of ['y', 'dx', 'dweight', 'dbias'].entries()) {
        expectClose(`source.${label}`, got[i], ref[i], 2e-5);
      }
      expect(layer.last).toMatchObject({ cached: false, backwardBytes: 0, beta: null });
    });
    layer.dispose();
  });

  it("'train-update' normalises with batch stats and updates running stats like PyTorch", () => {
    const layer = layerWithStats();
    layer.setMode('train-update');
    tf.tidy(() => {
      const x = tf.add(tf.randomNormal(shape, 0, 1.5, 'float32', 13), 0.3) as tf.Tensor4D;
      const rm0 = layer.runningMean.dataSync().slice();
      const rv0 = layer.runningVar.dataSync().slice();
      const y = layer.apply(x);
      const { mean, variance } = tf.moments(x, [0, 1, 2]);
      const m = 3 * 4 * 5;
      const mu = mean.dataSync();
      const vb = variance.dataSync();
      const wantMean = Array.from(rm0, (r, i) => 0.9 * r + 0.1 * mu[i]);
      const wantVar = Array.from(rv0, (r, i) => 0.9 * r + 0.1 * vb[i] * (m / (m - 1)));
      expectClose('train-update.running_mean', layer.runningMean, wantMean, 1e-5);
      expectClose('train-update.running_var', layer.runningVar, wantVar, 1e-5);
      expectClose('train-update.y', y, tf.batchNorm(x, mean, variance, layer.bias as tf.Tensor1D, layer.weight as tf.Tensor1D, 1e-5), 1e-5);
    });
    layer.dispose();
  });

  it('does not leak across repeated forward/gradient steps in every mode', () => {
    const layer = layerWithStats();
    const x = tf.randomNormal(shape, 0, 1, 'float32', 14) as tf.Tensor4D;
    const g = tf.randomNormal(shape, 0, 1, 'float32', 15) as tf.Tensor4D;
    const mecta: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 };
    let calls = 0;
    const pruned = new BatchNormLayer(
      'p',
      { weight: tf.ones([6]), bias: tf.zeros([6]), runningMean: tf.zeros([6]), runningVar: tf.ones([6]) },
      () => {
        const v = calls++ % 6;
        return Int32Array.from([v, (v + 3) % 6, (v + 5) % 6]); // three distinct channels
      },
    );
    pruned.setMode('mecta', mecta);
    for (const mode of ['source', 'batch', 'train-update', 'mecta'] as const) {
      layer.setMode(mode, mecta);
      const run = () => {
        tf.tidy(() => {
          layer.apply(x);
          tf.engine().gradients(() => tf.sum(pruned.apply(layer.apply(x))), [layer.weight, layer.bias]);
        });
      };
      run();
      const before = tf.memory().numTensors;
      for (let i = 0; i < 3; i++) run();
      expect(tf.memory().numTensors, mode).toBe(before);
    }
    layer.dispose();
    pruned.dispose();
    x.dispose();
    g.dispose();
  });
});
