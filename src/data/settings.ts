/**
 * Stream settings (docs/protocol.md#settings): how the domains of a DomainSource are turned into
 * the sequence of steps a run adapts on. Names and definitions follow the settings of the
 * mariodoebler/test-time-adaptation benchmark (continual, reset_each_shift, gradual, correlated,
 * mixed_domains and the `_correlated` compositions); `recurring` repeats the whole sequence (the recurring TTA of
 * docs/protocol.md#settings). A step is one domain at one severity; every step boundary is a
 * checkpoint boundary for `--resume`.
 */
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import { CLEAN_DOMAIN, type Batch, type Domain, type DomainSource, type DomainStream, makeBatches, prefetch } from './stream.js';

export interface SettingSpec {
  description: string;
  /** algorithm.reset() (model, optimizer, method state) at every domain change. */
  resetEachShift: boolean;
  /** Each corruption visited at severities 1,2,3,4,5,4,3,2,1 (GRADUAL_SEVERITIES). */
  gradual: boolean;
  /** Each domain's samples ordered by `sortByDirichlet` (class-correlated). */
  correlated: boolean;
  /** The domain sequence repeated `--rounds` times. */
  recurring: boolean;
  /** Every domain's samples pooled and shuffled into one step (batches mix domains). */
  mixed: boolean;
}

const S = (description: string, f: Partial<Omit<SettingSpec, 'description'>> = {}): SettingSpec => ({
  description,
  resetEachShift: false,
  gradual: false,
  correlated: false,
  recurring: false,
  mixed: false,
  ...f,
});

/** `--setting` values, the compositions being those the mariodoebler benchmark offers (plus recurring-correlated). */
export const SETTINGS = {
  continual: S('domains one after another, never resetting'),
  'reset-each-shift': S('reset model and method state at every domain change', { resetEachShift: true }),
  gradual: S('each corruption at severities 1,2,3,4,5,4,3,2,1, never resetting', { gradual: true }),
  correlated: S('continual, each domain ordered by a Dirichlet process over labels', { correlated: true }),
  recurring: S('the domain sequence repeated --rounds times, never resetting', { recurring: true }),
  'reset-each-shift-correlated': S('reset-each-shift with correlated order', { resetEachShift: true, correlated: true }),
  'gradual-correlated': S('gradual with correlated order', { gradual: true, correlated: true }),
  'recurring-correlated': S('recurring with correlated order', { recurring: true, correlated: true }),
  mixed: S('all domains pooled and shuffled into one step; errors per domain', { mixed: true }),
  'mixed-correlated': S('mixed, the pooled samples ordered by a Dirichlet process over labels', { mixed: true, correlated: true }),
} as const satisfies Record<string, SettingSpec>;

export type SettingName = keyof typeof SETTINGS;
export const SETTING_NAMES = Object.keys(SETTINGS) as SettingName[];

/** mariodoebler's gradual sequence when one severity is configured (CoTTA's gradual differs: docs/protocol.md#settings). */
export const GRADUAL_SEVERITIES: readonly number[] = Object.freeze([1, 2, 3, 4, 5, 4, 3, 2, 1]);
/** Rounds of `recurring` when --rounds is not given. */
export const DEFAULT_ROUNDS = 10;

/** One step of the stream. */
export interface StreamStep {
  domain: string;
  /** The severity to load (gradual); null: the source's own (--severity, or none for the clean set). */
  severity: number | null;
  /** 1-based round (recurring); null otherwise. */
  round: number | null;
  /** Reset the method before this step (reset-each-shift, at a domain change). */
  reset: boolean;
  /** mixed: the domains pooled into this step (its `domain` is MIXED_DOMAIN). */
  parts?: string[];
  /** --domain-orders: the 1-based order this step belongs to (src/data/orders.ts). */
  order?: number;
  /** --domain-orders: the first step of an order after the first: the run starts afresh here. */
  restart?: boolean;
  /** --eval-mode pair: the previous domain whose batches come first in every test case (src/data/eval-modes.ts). */
  previous?: string;
}

/** The name of the one step of the mixed setting. */
export const MIXED_DOMAIN = 'mixed';

export interface SettingOptions {
  setting: SettingName;
  rounds: number | null;
  dirichletDelta: number | null;
}

/** Refuses options that the setting does not use (one line, exit 2). */
export function checkSettingOptions(o: SettingOptions): SettingSpec {
  const spec: SettingSpec = SETTINGS[o.setting];
  if (!spec) throw new CtaError(`--setting: unknown '${String(o.setting)}' (one of ${SETTING_NAMES.join(', ')})`);
  if (o.rounds !== null && !spec.recurring) throw new CtaError(`--rounds: only for --setting recurring or recurring-correlated (got --setting ${o.setting})`);
  if (o.dirichletDelta !== null && !spec.correlated) throw new CtaError(`--dirichlet-delta: only for the correlated settings (got --setting ${o.setting})`);
  return spec;
}

/** The steps of a stream over `names` (the source's domains in order) under a setting. */
export function streamSteps(names: readonly string[], o: SettingOptions): StreamStep[] {
  const spec = checkSettingOptions(o);
  if (spec.mixed) return [{ domain: MIXED_DOMAIN, severity: null, round: null, reset: false, parts: [...names] }];
  const rounds = spec.recurring ? (o.rounds ?? DEFAULT_ROUNDS) : 1;
  const steps: StreamStep[] = [];
  for (let r = 1; r <= rounds; r++) {
    for (const domain of names) {
      const sevs = spec.gradual && domain !== CLEAN_DOMAIN ? GRADUAL_SEVERITIES : [null];
      for (const severity of sevs) {
        const prev = steps.at(-1);
        steps.push({ domain, severity, round: spec.recurring ? r : null, reset: spec.resetEachShift && prev !== undefined && prev.domain !== domain });
      }
    }
  }
  return steps;
}

/**
 * Gamma(a, 1) as its logarithm (Marsaglia & Tsang 2000; for a < 1 the boost
 * Gamma(a) = Gamma(a + 1)·U^(1/a)), kept in log space so tiny a does not underflow to 0.
 */
export function logGamma01(a: number, rng: Rng): number {
  if (a < 1) {
    let u = 0;
    while (u === 0) u = rng.next();
    return logGamma01(a + 1, rng) + Math.log(u) / a;
  }
  const d = a - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = rng.normal();
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.next();
    if (u > 0 && Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return Math.log(d * v);
  }
}

/** A symmetric Dirichlet(delta, …, delta) draw of `k` proportions. */
export function dirichlet(delta: number, k: number, rng: Rng): number[] {
  const logs = Array.from({ length: k }, () => logGamma01(delta, rng));
  const m = Math.max(...logs);
  const e = logs.map((l) => Math.exp(l - m));
  const s = e.reduce((a, v) => a + v, 0);
  return e.map((v) => v / s);
}

/** Attempts of `sortByDirichlet` before it gives up (mariodoebler gives up after 120 s instead). */
const MAX_DIRICHLET_TRIES = 1000;

/**
 * Class-correlated order of one domain (mariodoebler's `sort_by_dirichlet`, adapted from NOTE,
 * Gong et al. 2022), in our words: `order` (already shuffled) is split class by class into K = C
 * chunks with Dirichlet(delta) proportions, a chunk that already holds N/K samples taking no more;
 * the draw is repeated until every chunk holds at least min(10, ⌊N/K⌋) samples. The chunks are
 * then played one after another, each one's classes in a random order. delta 0: a stable sort by
 * label (ascending), as mariodoebler does for alpha 0. Small delta gives long single-class runs;
 * large delta approaches the i.i.d. order. Random draws come from `rng` (the stream's generator).
 */
export function sortByDirichlet(order: Int32Array, labels: ArrayLike<number>, delta: number, rng: Rng): Int32Array {
  if (!(delta >= 0) || !Number.isFinite(delta)) throw new CtaError(`--dirichlet-delta: must be ≥ 0, got ${delta}`);
  const n = order.length;
  if (n === 0) return order.slice();
  if (delta === 0) {
    const idx = Array.from(order);
    idx.sort((a, b) => labels[a] - labels[b]); // Array.prototype.sort is stable
    return Int32Array.from(idx);
  }
  let numClasses = 0;
  for (const i of order) numClasses = Math.max(numClasses, labels[i] + 1);
  const k = numClasses;
  const byClass: number[][] = Array.from({ length: numClasses }, () => []);
  for (const i of order) byClass[labels[i]].push(i);
  const thresh = Math.min(10, Math.floor(n / k));
  for (let attempt = 0; attempt < MAX_DIRICHLET_TRIES; attempt++) {
    const chunkSize = new Array<number>(k).fill(0);
    const chunkCls: number[][][] = Array.from({ length: k }, () => []);
    for (let c = 0; c < numClasses; c++) {
      const idx = byClass[c].slice();
      shuffleInPlace(idx, rng);
      let p = dirichlet(delta, k, rng).map((v, j) => (chunkSize[j] < n / k ? v : 0));
      let s = p.reduce((a, v) => a + v, 0);
      if (!(s > 0)) {
        p = new Array<number>(k).fill(1);
        s = k;
      }
      let acc = 0;
      let from = 0;
      for (let j = 0; j < k; j++) {
        acc += p[j] / s;
        const to = j === k - 1 ? idx.length : Math.min(idx.length, Math.floor(acc * idx.length));
        const part = idx.slice(from, Math.max(from, to));
        from = Math.max(from, to);
        chunkCls[j].push(part);
        chunkSize[j] += part.length;
      }
    }
    if (Math.min(...chunkSize) < thresh) continue;
    const out: number[] = [];
    for (const chunk of chunkCls) {
      const cls = Array.from({ length: numClasses }, (_, c) => c);
      shuffleInPlace(cls, rng);
      for (const c of cls) out.push(...chunk[c]);
    }
    return Int32Array.from(out);
  }
  throw new CtaError(`--dirichlet-delta ${delta}: no class-correlated order with at least ${thresh} samples per chunk in ${MAX_DIRICHLET_TRIES} draws (${n} samples, ${k} classes); try another value`);
}

function shuffleInPlace(a: number[], rng: Rng): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/** Mean error per key of the steps' results that have one (a key of null is left out). */
export function meanBy<T>(items: readonly T[], key: (t: T) => string | number | null, err: (t: T) => number): Record<string, number> {
  const sums = new Map<string, [number, number]>();
  for (const it of items) {
    const k = key(it);
    if (k === null) continue;
    const s = sums.get(String(k)) ?? [0, 0];
    s[0] += err(it);
    s[1]++;
    sums.set(String(k), s);
  }
  return Object.fromEntries([...sums].map(([k, [a, c]]) => [k, a / c]));
}

/** A pooled domain (mixed setting): the parts' samples one after another, and which part each came from. */
export interface MixedDomain extends DomainStream {
  /** Index into `parts` of every sample. */
  partOf: Int32Array;
  parts: { name: string; severity: number | null }[];
}

/**
 * The mixed setting's single step (mariodoebler's `mixed_domains`): every part loaded whole and
 * concatenated, so that the stream's shuffle mixes the domains within batches. Needs in-memory
 * sources (`load`); a streaming source is refused by the runner before this is reached.
 */
export async function loadMixed(source: DomainSource, parts: readonly string[]): Promise<MixedDomain> {
  if (source.open) return openMixed(source as DomainSource & { open: NonNullable<DomainSource['open']> }, parts);
  const loaded: Domain[] = [];
  for (const p of parts) loaded.push(await source.load(p));
  const first = loaded[0];
  for (const d of loaded) {
    if (d.height !== first.height || d.width !== first.width || d.channels !== first.channels) {
      throw new CtaError(`--setting mixed: domain ${d.name} is ${d.height}×${d.width}×${d.channels}, ${first.name} ${first.height}×${first.width}×${first.channels}`);
    }
  }
  const n = loaded.reduce((a, d) => a + d.n, 0);
  const pix = first.height * first.width * first.channels;
  const images = new Uint8Array(n * pix);
  const labels = new Int32Array(n);
  const partOf = new Int32Array(n);
  let at = 0;
  loaded.forEach((d, k) => {
    images.set(d.images.subarray(0, d.n * pix), at * pix);
    labels.set(d.labels.subarray(0, d.n), at);
    partOf.fill(k, at, at + d.n);
    at += d.n;
  });
  const pooled: Domain = { name: MIXED_DOMAIN, severity: null, images, labels, n, height: first.height, width: first.width, channels: first.channels };
  return {
    name: MIXED_DOMAIN,
    severity: null,
    n,
    height: first.height,
    width: first.width,
    channels: first.channels,
    labels,
    partOf,
    parts: loaded.map((d) => ({ name: d.name, severity: d.severity })),
    async *batches(order, batchSize) {
      yield* makeBatches(pooled, order, batchSize);
    },
  };
}

/**
 * The mixed step of a streaming source (ImageNet-C: decoded batch by batch, never a whole domain
 * in memory): the parts' samples numbered one after another, each batch of pooled indices split by
 * part, decoded by the parts' own streams at once and put back in the batch's order. Labels are
 * pooled when every part has them (the mixed-correlated order needs them).
 */
async function openMixed(source: DomainSource & { open: NonNullable<DomainSource['open']> }, parts: readonly string[]): Promise<MixedDomain> {
  const streams: DomainStream[] = [];
  for (const p of parts) streams.push(await source.open(p));
  const first = streams[0];
  for (const d of streams) {
    if (d.height !== first.height || d.width !== first.width || d.channels !== first.channels) {
      throw new CtaError(`--setting mixed: domain ${d.name} is ${d.height}×${d.width}×${d.channels}, ${first.name} ${first.height}×${first.width}×${first.channels}`);
    }
  }
  const offsets = [0];
  for (const d of streams) offsets.push(offsets.at(-1)! + d.n);
  const n = offsets.at(-1)!;
  const partOf = new Int32Array(n);
  streams.forEach((d, k) => partOf.fill(k, offsets[k], offsets[k + 1]));
  let labels: Int32Array | undefined;
  if (streams.every((d) => d.labels)) {
    labels = new Int32Array(n);
    streams.forEach((d, k) => labels!.set(Array.from(d.labels!), offsets[k]));
  }
  const pix = first.height * first.width * first.channels;
  /** One pooled batch: the parts decoded concurrently, rows back in `idx` order (dropped samples left out). */
  async function pooledBatch(idx: Int32Array): Promise<Batch> {
    const byPart = new Map<number, number[]>();
    for (const g of idx) {
      const k = partOf[g];
      const list = byPart.get(k) ?? [];
      list.push(g - offsets[k]);
      byPart.set(k, list);
    }
    const rows = new Map<number, { x: Float32Array; y: number }>();
    await Promise.all(
      [...byPart].map(async ([k, local]) => {
        for await (const b of streams[k].batches(Int32Array.from(local), local.length)) {
          for (let j = 0; j < b.y.length; j++) rows.set(offsets[k] + b.indices[j], { x: b.x.subarray(j * pix, (j + 1) * pix), y: b.y[j] });
        }
      }),
    );
    const kept = Array.from(idx).filter((g) => rows.has(g));
    const x = new Float32Array(kept.length * pix);
    const y = new Int32Array(kept.length);
    kept.forEach((g, j) => {
      const r = rows.get(g)!;
      x.set(r.x, j * pix);
      y[j] = r.y;
    });
    return { x, y, indices: Int32Array.from(kept), shape: [kept.length, first.height, first.width, first.channels] };
  }
  return {
    name: MIXED_DOMAIN,
    severity: null,
    n,
    height: first.height,
    width: first.width,
    channels: first.channels,
    ...(labels ? { labels } : {}),
    partOf,
    parts: streams.map((d) => ({ name: d.name, severity: d.severity })),
    async *batches(order, batchSize) {
      const chunks: Int32Array[] = [];
      for (let s = 0; s < order.length; s += batchSize) chunks.push(order.slice(s, s + batchSize));
      for await (const b of prefetch(chunks, pooledBatch, 1)) if (b.y.length > 0) yield b;
    },
  };
}
