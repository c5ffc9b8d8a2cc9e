/**
 * The run folder: `batches.jsonl` (one line per batch, appended as produced), `summary.json`
 * (rewritten after every domain; `complete` turns true at the end) and `manifest.json`
 * (environment + provenance). A run that stops loses nothing already computed.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';

export interface DomainResult {
  domain: string;
  severity: number | null;
  /** Recurring settings: the 1-based round (src/data/settings.ts). */
  round?: number;
  /** reset-each-shift: the method was reset before this domain. */
  reset?: boolean;
  /** --domain-orders: the 1-based order of this step (src/runner/plan.ts). */
  order?: number;
  /** --eval-mode pair: the previous domain of this step's test cases. */
  previous?: string;
  /** --eval-mode group / pair: the support batches adapted on before the test batches (not scored). */
  support?: { batches: number; n: number; correct: number; error: number | null };
  /** mixed: the pooled step's samples scored by the domain each came from. */
  per_domain?: { domain: string; severity: number | null; n: number; correct: number; error: number }[];
  n: number;
  error: number; // percent
  correct: number;
  batches: number;
  seconds: number;
  img_per_s: number;
  reliable?: number;
  updated?: number;
  updates?: number; // batches whose backward + optimizer step ran
  /** Images through every forward / every differentiated forward (src/runner/pass-count.ts). */
  forwards?: number;
  backwards?: number;
  max_cache_mb?: number | null;
  avg_cache_mb?: number | null;
  /** Measured bytes held for backprop / peak engine bytes per step, MB (memory/probe.ts). */
  measured_max_backprop_mb?: number | null;
  measured_avg_backprop_mb?: number | null;
  measured_max_peak_mb?: number | null;
  /** webgpu: peak live GPU buffer bytes per step, MB. */
  measured_max_gpu_peak_mb?: number | null;
  mean_beta?: number | null;
}

export interface Summary {
  config: Record<string, unknown>;
  domains: DomainResult[];
  mean_error: number | null; // over the corruption domains (all but 'original')
  mean_error_all: number | null; // over every domain
  complete: boolean;
  /** --interleave-clean / --interleave-seen (src/runner/forgetting.ts, docs/protocol.md#forgetting). */
  acc_matrix?: import('./forgetting.js').AccMatrix;
  avg_acc?: number | null;
  forgetting?: number | null;
  bwt?: number | null;
  /** --adapt-params and the number of parameters the method trains (docs/adapters.md#runs). */
  adapt_params?: string;
  trainable_params?: number;
  /** The run's protocol facts (src/runner/provenance.ts). */
  protocol?: import('./provenance.js').Protocol;
}

export class RunWriter {
  readonly dir: string;

  /** `keepBatches`: lines of an existing batches.jsonl to keep (a resumed run's finished domains). */
  constructor(dir: string, keepBatches = 0) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true });
    const path = join(dir, 'batches.jsonl');
    // A restarted run starts its batch log afresh rather than mixing two runs' lines; a resumed one
    // drops the lines of the domain that was interrupted.
    const kept = keepBatches > 0 && existsSync(path) ? readFileSync(path, 'utf8').split('\n').slice(0, keepBatches) : [];
    writeFileSync(path, kept.length ? kept.join('\n') + '\n' : '');
  }

  appendBatch(line: Record<string, unknown>): void {
    appendFileSync(join(this.dir, 'batches.jsonl'), JSON.stringify(line) + '\n');
  }

  /** Atomic rewrite (write + rename) so a crash never leaves half a JSON file. */
  writeJson(name: string, value: unknown): void {
    const path = join(this.dir, name);
    writeFileSync(path + '.tmp', JSON.stringify(value, null, 2) + '\n');
    renameSync(path + '.tmp', path);
  }
}

/** The folder's summary.json when it says the run finished, else null (missing, partial, unreadable). */
export function readCompleteSummary(dir: string): Summary | null {
  try {
    const s = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')) as Summary;
    return s?.complete === true ? s : null;
  } catch {
    return null;
  }
}

export function meanErrors(domains: readonly DomainResult[]): { mean_error: number | null; mean_error_all: number | null } {
  const avg = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
  return {
    mean_error: avg(domains.filter((d) => d.domain !== 'original').map((d) => d.error)),
    mean_error_all: avg(domains.map((d) => d.error)),
  };
}
