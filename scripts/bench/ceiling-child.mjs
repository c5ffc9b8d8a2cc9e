/**
 * The convolution ceiling of one model's forward pass on TF.js:
 * `node scripts/bench/ceiling-child.mjs '{"model":"resnext29","batch":16,"threads":0}'`.
 *
 * Records every Conv2D call of one batch-statistics forward (tf.profile: input and filter shapes,
 * so a grouped conv shows as its per-group calls, exactly as this project runs it), then times
 * each distinct call alone (median of 7 after 2 warm-ups) and one 1024³ matMul. The sum over the
 * calls is the time the forward spends in convolution kernels; comparing it with PyTorch on the
 * same calls (conv_ceiling.py) bounds the TF.js / PyTorch ratio any step dominated by these
 * convolutions can reach, whatever happens around them. Prints one `@@BENCH@@ {json}` line.
 */
import { tf, initBackend } from '../../dist/tf.js';
import { buildModel } from '../../dist/models/registry.js';
import { Rng } from '../../dist/util/rng.js';
import { benchStateDict } from './weights.mjs';

const MARK = '@@BENCH@@ ';

function medianMs(f, reps = 7, warm = 2) {
  const ts = [];
  for (let i = 0; i < warm + reps; i++) {
    const t0 = performance.now();
    const y = f();
    y.dataSync(); // WASM runs synchronously; this only waits for the kernel and copies the output
    y.dispose();
    if (i >= warm) ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)];
}

/** PyTorch-style symmetric padding that gives the recorded output size. */
function padFor(h, ho, k, s) {
  for (let p = 0; p <= k; p++) if (Math.floor((h + 2 * p - k) / s) + 1 === ho) return p;
  throw new Error(`no padding maps ${h} to ${ho} with k=${k}, s=${s}`);
}

async function measure(spec) {
  const info = await initBackend('wasm', spec.threads ?? 0);
  const model = buildModel(spec.model, await benchStateDict(spec.model, 0), { rng: new Rng(7) });
  model.setNormMode('batch'); // plain convs (the source mode would fold BN into FusedConv2D)
  const [h, w, c] = model.inputShape;
  const x = tf.randomUniform([spec.batch, h, w, c]);
  const prof = await tf.profile(() => model.forward(x));
  const calls = new Map();
  for (const k of prof.kernels) {
    if (k.name !== 'Conv2D') continue;
    const [xs, fs] = k.inputShapes;
    const os = k.outputShapes[0];
    const stride = Math.round(xs[1] / os[1]);
    const key = JSON.stringify([xs, fs, stride]);
    const e = calls.get(key) ?? { x: xs, filter: fs, out: os, stride, pad: padFor(xs[1], os[1], fs[0], stride), calls: 0 };
    e.calls++;
    calls.set(key, e);
  }
  prof.result?.dispose?.();
  x.dispose();
  model.dispose();

  const shapes = [...calls.values()];
  let totalMs = 0;
  let totalGflop = 0;
  for (const s of shapes) {
    const xi = tf.randomUniform(s.x);
    const fi = tf.randomUniform(s.filter);
    s.ms = +medianMs(() => tf.conv2d(xi, fi, s.stride, s.pad)).toFixed(3);
    s.gflop = (2 * s.out[0] * s.out[1] * s.out[2] * s.out[3] * s.filter[0] * s.filter[1] * s.filter[2]) / 1e9;
    totalMs += s.ms * s.calls;
    totalGflop += s.gflop * s.calls;
    xi.dispose();
    fi.dispose();
  }
  const n = 1024;
  const a = tf.randomUniform([n, n]);
  const b = tf.randomUniform([n, n]);
  const gemmMs = medianMs(() => tf.matMul(a, b));
  tf.dispose([a, b]);
  return {
    kind: 'conv-ceiling',
    framework: 'tfjs',
    backend: info.name,
    threads: info.threads,
    model: spec.model,
    batch: spec.batch,
    convCalls: shapes.reduce((s, e) => s + e.calls, 0),
    shapes,
    convMs: +totalMs.toFixed(1),
    convGflop: +totalGflop.toFixed(3),
    convGflopPerS: +(totalGflop / (totalMs / 1000)).toFixed(1),
    gemm: { n, ms: +gemmMs.toFixed(2), gflopPerS: +((2 * n ** 3) / 1e9 / (gemmMs / 1000)).toFixed(1) },
    status: 'ok',
  };
}

const spec = JSON.parse(process.argv[2] ?? '{}');
try {
  process.stdout.write(MARK + JSON.stringify(await measure(spec)) + '\n');
} catch (e) {
  const msg = e instanceof Error ? e.message : String(e);
  process.stdout.write(MARK + JSON.stringify({ kind: 'conv-ceiling', status: 'error', error: msg.split('\n')[0].slice(0, 300) }) + '\n');
  process.exitCode = 1;
}
