#!/usr/bin/env node
/**
 * Every `--adapt-params` kind at the full ViT-B/16 size, end to end through the CLI:
 * `node scripts/vit-b16-adapt-params.mjs [flags]` (needs a built dist/: `npx tsc -p tsconfig.json`),
 * or `npm run bench -- --vit-adapt-params` (runs it after the other suites).
 *
 * Why: test/e2e/adapters.test.ts runs every kind through the CLI on the reduced ViT (width 48,
 * depth 2, 32 px) so that it stays fast. This is the re-runnable check that each kind also builds
 * on timm's vit_base_patch16_224 (224 px, patch 16, width 768, depth 12, 12 heads, MLP 3072: the
 * kinds' defaults must fit those widths, e.g. KAdaptation's 32 Kronecker factors) and runs the
 * continual ImageNet-C protocol with a backward at that size within the WASM heap.
 *
 * What it does, in a temporary folder (removed afterwards unless --keep):
 *   1. generates an ImageNet-C-layout tree (makeImageNetTree): --corruptions at severity 5 plus a
 *      clean validation folder ('original', EATA's Fisher data), --classes wnids ×
 *      --images-per-class JPEGs of 224 px (clean ones 250–320 px, resized + centre-cropped);
 *   2. writes seeded random ViT-B/16 weights with timm's key names (src/memory/random-weights.ts),
 *      checks the 86,567,656 parameters of the 1000-class model, then cuts the head to the tree's
 *      classes (the loader needs one output per class folder; the head trains under no kind);
 *   3. per planned run (every kind under tent, --eata-kinds under eata) runs `node bin/cta-eval.js`
 *      with configs/imagenet/vit-tent.yaml, --batch-size and --threads, under /usr/bin/time for the
 *      peak resident set (the WASM heap lives in it);
 *   4. prints one JSON line per run (exit code, wall s, domains completed, trainable parameters
 *      and the analytic count for the kind's defaults at this size, measured backprop / step peak
 *      MB from summary.json, analytic cache MB, peak RSS, updates), then one JSON line for the
 *      suite, and a table on stderr.
 * Exit status: 0 when every run exited 0, completed every domain and trained the analytic number of
 * parameters; 1 otherwise; 2 for bad flags. The weights are random: the error rates mean nothing.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const NAME = 'vit-b16-adapt-params';
const CONFIG = 'configs/imagenet/vit-tent.yaml';
const PUBLISHED = 86_567_656; // timm vit_base_patch16_224, 1000 classes
const TIME = '/usr/bin/time';

/** timm vit_base_patch16_224. */
const VIT_B16 = { dim: 768, depth: 12, mlp: 3072 };

const HELP = `node scripts/${NAME}.mjs [flags]

  --kinds LIST             --adapt-params values run under tent (default: every value)
  --eata-kinds LIST        values also run under eata (default lora; '' for none)
  --corruptions LIST       default gaussian_noise,fog (severity 5; then the clean 'original')
  --classes N              wnids in the generated tree (default 4)
  --images-per-class N     JPEGs per wnid and domain (default 2)
  --batch-size N           default 4
  --threads N              cta-eval --threads (default 1)
  --timeout S              per-run limit in seconds (default 1800)
  --keep                   keep the temporary folder (tree, weights, run folders)
  -h, --help               this text
`;

class UsageError extends Error {}

function list(v) {
  return String(v).split(',').map((s) => s.trim()).filter(Boolean);
}

function positiveInt(value, flag, min = 1) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag}: '${value}' is not an integer ≥ ${min}`);
  return n;
}

/**
 * Trainable parameters of each kind with its default options on a ViT of width D, depth L
 * (docs/adapters.md#modules; the shapes are the parameter names' there). null: not stated here.
 */
function analyticTrainable(kind, { dim: D, depth: L }) {
  switch (kind) {
    case 'norm':
      return 2 * D * (2 * L + 1); // norm1, norm2 per block + the final norm: weight and bias
    case 'lora': {
      const r = 8; // A [r, D] and B [D, r] for the q and v slices
      return L * 2 * r * (D + D);
    }
    case 'kadaptation': {
      const n = 32;
      const r = 1; // W_left [n, D/n, r], W_right [n, r, D/n] per slice; rule_left/right [n,n,1]/[n,1,n] per target
      return L * 2 * (D * r + r * D) + 2 * (2 * n * n);
    }
    case 'adapter': {
      const m = 64; // down [m, D] + b, up [D, m] + b after attention and after the MLP
      return L * 2 * (D * m + m + m * D + D);
    }
    case 'compacter': {
      const n = 4;
      const r = 1;
      const m = Math.ceil(D / 32 / n) * n; // reduction factor 32, a multiple of n
      // shared phm_rule [n, n, n]; per PHM layer W_left [n, in/n, r], W_right [n, r, out/n], bias
      return n ** 3 + L * 2 * (D * r + r * m + m + m * r + r * D + D);
    }
    case 'vida': {
      const r = 1 + 128; // low- and high-rank pairs beside attn.qkv (D → 3D) and attn.proj (D → D)
      return L * (r * (D + 3 * D) + r * (D + D));
    }
    case 'prompt':
      return 5 * D; // VPT-shallow, 5 tokens
    default:
      return null;
  }
}

function parseFlags(argv, kindsAll) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        kinds: { type: 'string' },
        'eata-kinds': { type: 'string', default: 'lora' },
        corruptions: { type: 'string', default: 'gaussian_noise,fog' },
        classes: { type: 'string', default: '4' },
        'images-per-class': { type: 'string', default: '2' },
        'batch-size': { type: 'string', default: '4' },
        threads: { type: 'string', default: '1' },
        timeout: { type: 'string', default: '1800' },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UsageError(e.message);
  }
  if (values.help) return { help: true };
  const kinds = values.kinds === undefined ? [...kindsAll] : list(values.kinds);
  const eataKinds = list(values['eata-kinds']);
  for (const [flag, ks] of [['--kinds', kinds], ['--eata-kinds', eataKinds]]) {
    for (const k of ks) if (!kindsAll.includes(k)) throw new UsageError(`${flag}: unknown kind '${k}' (choose from ${kindsAll.join(', ')})`);
  }
  if (kinds.length + eataKinds.length === 0) throw new UsageError('--kinds / --eata-kinds: nothing to run');
  return {
    plan: [...kinds.map((kind) => ({ kind, alg: 'tent' })), ...eataKinds.map((kind) => ({ kind, alg: 'eata' }))],
    corruptions: list(values.corruptions),
    classes: positiveInt(values.classes, '--classes', 2),
    perClass: positiveInt(values['images-per-class'], '--images-per-class'),
    batchSize: positiveInt(values['batch-size'], '--batch-size'),
    threads: positiveInt(values.threads, '--threads', 0),
    timeoutS: positiveInt(values.timeout, '--timeout'),
    keep: values.keep,
  };
}

const WNIDS = ['n01440764', 'n01443537', 'n01484850', 'n01491361', 'n01494475', 'n01496331', 'n01498041', 'n01514668'];
const wnidsFor = (n) => [...WNIDS.slice(0, n), ...Array.from({ length: Math.max(0, n - WNIDS.length) }, (_, i) => `n9${String(i).padStart(7, '0')}`)].sort();
const numel = (shape) => shape.reduce((a, d) => a * d, 1);

async function writeWeights(classes, dir, { randomStateDict, writeSafetensors }) {
  const sd = randomStateDict('vit_b16', { numClasses: 1000, seed: 1 });
  const full = [...sd.values()].reduce((a, t) => a + numel(t.shape), 0);
  if (full !== PUBLISHED) throw new Error(`vit_b16: the random state dict has ${full} parameters at 1000 classes, not timm's ${PUBLISHED}`);
  for (const key of ['patch_embed.proj.weight', 'blocks.11.attn.qkv.weight', 'blocks.11.mlp.fc1.weight']) {
    if (!sd.has(key)) throw new Error(`vit_b16: the random state dict has no '${key}'`);
  }
  const qkv = sd.get('blocks.0.attn.qkv.weight').shape;
  const fc1 = sd.get('blocks.0.mlp.fc1.weight').shape;
  if (qkv.join() !== `${3 * VIT_B16.dim},${VIT_B16.dim}` || fc1.join() !== `${VIT_B16.mlp},${VIT_B16.dim}`) {
    throw new Error(`vit_b16: unexpected shapes qkv [${qkv}], fc1 [${fc1}]`);
  }
  const w = sd.get('head.weight');
  const b = sd.get('head.bias');
  sd.set('head.weight', { dtype: 'float32', shape: [classes, w.shape[1]], data: w.data.subarray(0, classes * w.shape[1]) });
  sd.set('head.bias', { dtype: 'float32', shape: [classes], data: b.data.subarray(0, classes) });
  const path = join(dir, `vit_b16_${classes}cls.safetensors`);
  await writeSafetensors(path, sd);
  return { path, paramsAt1000: full, bytes: statSync(path).size };
}

/** Per-kind and per-method flags: EATA's Fisher from the clean folder, E0 of the 1000-class model. */
function runArgs({ kind, alg }, opts, tree, weights, out) {
  const args = ['--config', join(ROOT, CONFIG), '--data', 'imagenetc', '--data-dir', tree.imagenetC, '--clean-dir', tree.clean];
  args.push('--corruptions', opts.corruptions.join(','), '--model', 'vit_b16', '--weights', weights, '--alg', alg, '--adapt-params', kind);
  args.push('--batch-size', String(opts.batchSize), '--threads', String(opts.threads), '--progress', 'plain', '--out', out);
  // E0 = 0.4·ln 1000 (the paper's ImageNet value; the default would follow the cut head's classes)
  // and every clean image for the Fisher estimate.
  if (alg === 'eata') args.push('--fisher-size', String(opts.classes * opts.perClass), '--e-margin', String(0.4 * Math.log(1000)));
  return args;
}

/** The cta-eval run in progress (killed with the script on Ctrl-C / SIGTERM). */
let current = null;

function runCli(args, timeoutS, rssFile) {
  const useTime = existsSync(TIME);
  const cmd = useTime ? TIME : process.execPath;
  const argv = useTime ? ['-f', '%M', '-o', rssFile, process.execPath, join(ROOT, 'bin', 'cta-eval.js'), ...args] : [join(ROOT, 'bin', 'cta-eval.js'), ...args];
  return new Promise((done) => {
    const t0 = performance.now();
    const child = spawn(cmd, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    current = child;
    let out = '';
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      process.kill(-child.pid, 'SIGKILL'); // /usr/bin/time and the cta-eval under it
    }, timeoutS * 1000);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      current = null;
      let peakRssMb = null;
      if (useTime && existsSync(rssFile)) {
        const kb = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
        if (Number.isFinite(kb) && kb > 0) peakRssMb = +(kb / 1024).toFixed(0);
      }
      done({ code: timedOut ? null : code, signal: timedOut ? 'timeout' : signal, seconds: (performance.now() - t0) / 1000, stdout: out, stderr: err, peakRssMb });
    });
  });
}

const maxOf = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x));
  return v.length ? +Math.max(...v).toFixed(1) : null;
};
const sumOf = (xs) => xs.reduce((a, x) => a + (typeof x === 'number' ? x : 0), 0);

function resultOf(p, r, outDir, expectedDomains) {
  const summaryPath = join(outDir, 'summary.json');
  const s = existsSync(summaryPath) ? JSON.parse(readFileSync(summaryPath, 'utf8')) : null;
  const domains = s?.domains ?? [];
  const expected = analyticTrainable(p.kind, VIT_B16);
  const res = {
    suite: NAME,
    kind: p.kind,
    alg: p.alg,
    exitCode: r.code,
    ...(r.signal ? { signal: r.signal } : {}),
    wallSeconds: +r.seconds.toFixed(1),
    domainsCompleted: domains.length,
    domainsExpected: expectedDomains,
    complete: s?.complete === true,
    trainableParams: s?.trainable_params ?? null,
    trainableParamsAnalytic: expected,
    steps: sumOf(domains.map((d) => d.batches)),
    updates: sumOf(domains.map((d) => d.updates)),
    ...(p.alg === 'eata' ? { reliable: sumOf(domains.map((d) => d.reliable)), updated: sumOf(domains.map((d) => d.updated)), images: sumOf(domains.map((d) => d.n)) } : {}),
    measuredMaxBackpropMb: maxOf(domains.map((d) => d.measured_max_backprop_mb)),
    measuredMaxStepPeakMb: maxOf(domains.map((d) => d.measured_max_peak_mb)),
    analyticMaxCacheMb: maxOf(domains.map((d) => d.max_cache_mb)),
    peakRssMb: r.peakRssMb,
    domainSeconds: +sumOf(domains.map((d) => d.seconds)).toFixed(1),
    meanError: s?.mean_error ?? null,
  };
  const failures = [];
  if (r.code !== 0) failures.push(`exit ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').filter(Boolean).slice(-2).join(' | ').slice(0, 400)}`);
  if (!s) failures.push('no summary.json');
  else {
    if (!res.complete) failures.push('summary.json is not complete');
    if (domains.length !== expectedDomains) failures.push(`${domains.length} of ${expectedDomains} domains`);
    if (expected !== null && res.trainableParams !== expected) failures.push(`trained ${res.trainableParams} parameters, the analytic count is ${expected}`);
    if (res.updates === 0) failures.push('no batch took an adaptation step');
  }
  res.ok = failures.length === 0;
  if (!res.ok) res.failure = failures.join('; ');
  return res;
}

const fmtN = (v) => (typeof v === 'number' ? v.toLocaleString('en-US') : '–');

function table(rows) {
  const out = ['| alg | adapt-params | exit | wall s | domains | trainable params | backprop max MB | step peak MB | analytic cache MB | peak RSS MB | updates | ok |', '|---|---|---|---|---|---|---|---|---|---|---|---|'];
  for (const r of rows) {
    out.push(
      `| ${r.alg} | ${r.kind} | ${r.exitCode ?? r.signal} | ${r.wallSeconds} | ${r.domainsCompleted}/${r.domainsExpected} | ${fmtN(r.trainableParams)} | ${r.measuredMaxBackpropMb ?? '–'} | ${r.measuredMaxStepPeakMb ?? '–'} | ${r.analyticMaxCacheMb ?? '–'} | ${r.peakRssMb ?? '–'} | ${r.updates}/${r.steps}${r.alg === 'eata' ? ` (${r.updated}/${r.images} img)` : ''} | ${r.ok ? 'yes' : `NO: ${r.failure}`} |`,
    );
  }
  return out.join('\n');
}

async function main(argv) {
  const distFile = join(ROOT, 'dist', 'cli', 'cta-eval.js');
  if (!existsSync(distFile)) throw new Error(`${relative(ROOT, distFile)} is missing: build first (npx tsc -p tsconfig.json)`);
  const [{ makeImageNetTree }, { randomStateDict }, { writeSafetensors }, { ADAPT_PARAMS }] = await Promise.all([
    import('../dist/data/imagenet-tree.js'),
    import('../dist/memory/random-weights.js'),
    import('../dist/io/safetensors.js'),
    import('../dist/adapters/registry.js'),
  ]);
  const opts = parseFlags(argv, ADAPT_PARAMS);
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const log = (s) => process.stderr.write(s + '\n');
  const expectedDomains = opts.corruptions.length + 1;
  const work = mkdtempSync(join(tmpdir(), 'cta-vit-adapt-'));
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      if (current) process.kill(-current.pid, 'SIGKILL');
      if (!opts.keep) rmSync(work, { recursive: true, force: true });
      log(`${NAME}: stopped by ${sig}${opts.keep ? `; kept ${work}` : ''}`);
      process.exit(130);
    });
  }
  let tree = null;
  const rows = [];
  const t0 = performance.now();
  try {
    tree = await makeImageNetTree({ wnids: wnidsFor(opts.classes), perClass: opts.perClass, corruptions: opts.corruptions, severity: 5, parent: work });
    const w = await writeWeights(tree.wnids.length, work, { randomStateDict, writeSafetensors });
    log(`${NAME}: tree ${opts.corruptions.join(', ')} + original × ${opts.classes * opts.perClass} images; weights ${w.paramsAt1000.toLocaleString('en-US')} parameters at 1000 classes, written with ${tree.wnids.length} (${(w.bytes / 2 ** 20).toFixed(0)} MiB); ${opts.plan.length} runs`);
    for (const [i, p] of opts.plan.entries()) {
      const out = join(work, `${p.alg}-${p.kind}`);
      const args = runArgs(p, opts, tree, w.path, out);
      log(`[${i + 1}/${opts.plan.length}] $ node bin/cta-eval.js ${args.map((a) => (a.startsWith(work) ? `$TMP${a.slice(work.length)}` : a.startsWith(ROOT + '/') ? relative(ROOT, a) : a)).join(' ')}`);
      const load0 = loadavg()[0];
      const r = await runCli(args, opts.timeoutS, join(work, `${p.alg}-${p.kind}.rss`));
      const res = resultOf(p, r, out, expectedDomains);
      res.loadAvg = [+load0.toFixed(2), +loadavg()[0].toFixed(2)];
      rows.push(res);
      process.stdout.write(JSON.stringify(res) + '\n');
      log(`  ${res.ok ? 'ok' : `FAILED: ${res.failure}`}: ${res.wallSeconds} s, ${res.domainsCompleted}/${expectedDomains} domains, ${fmtN(res.trainableParams)} trainable, backprop ${res.measuredMaxBackpropMb ?? '–'} MB, peak RSS ${res.peakRssMb ?? '–'} MB`);
    }
  } finally {
    if (rows.length) log('\n' + table(rows));
    if (opts.keep) log(`kept: ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
  const failed = rows.filter((r) => !r.ok);
  const suite = {
    suite: NAME,
    ok: failed.length === 0,
    runs: rows.length,
    failed: failed.map((r) => `${r.alg}/${r.kind}`),
    model: 'vit_b16 (random weights, 224 px, patch 16, width 768, depth 12, 12 heads, MLP 3072)',
    batchSize: opts.batchSize,
    threads: opts.threads,
    imagesPerDomain: opts.classes * opts.perClass,
    domains: [...opts.corruptions, 'original'],
    totalSeconds: +((performance.now() - t0) / 1000).toFixed(0),
  };
  process.stdout.write(JSON.stringify(suite) + '\n');
  return failed.length === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`${NAME}: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(e instanceof UsageError ? 2 : 1);
  },
);
