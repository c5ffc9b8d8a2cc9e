/**
 * How a caller steers a run: its log, and the signal poll that stops it at safe points with
 * RunInterrupted, saying where the run stood (the CLI turns that into its one line).
 */
import { Interrupted } from '../util/errors.js';

export interface RunHooks {
  /** One line of human output (progress in plain mode, notices). */
  log: (line: string) => void;
  /** Label prefix for progress lines (e.g. the algorithm when two runs share a terminal). */
  label?: string;
  /** Polled at safe points (start-up steps, every batch): a signal there stops the run (RunInterrupted). */
  stopRequested?: () => NodeJS.Signals | null;
}

/** Where a run stood when a signal stopped it; the CLI turns it into its one line. */
export interface RunPosition {
  dir: string;
  /** Domains finished (results in summary.json, resumable from the checkpoint). */
  finished: number;
  /** Domains in the stream, once the data is open. */
  total: number | null;
  /** The domain being adapted on (1-based index and name), if one had started. */
  current: { index: number; name: string } | null;
  /** The folder holds this run's manifest, so `--resume` can continue it. */
  resumable: boolean;
}

export class RunInterrupted extends Interrupted {
  constructor(signal: NodeJS.Signals, readonly position: RunPosition) {
    super(`interrupted (${signal})`, signal);
  }
}

/** The run's position, kept up to date by the runner, and the stop check at its safe points. */
export class RunControl {
  readonly position: RunPosition;

  constructor(
    readonly hooks: RunHooks,
    dir: string,
    resumable: boolean,
  ) {
    this.position = { dir, finished: 0, total: null, current: null, resumable };
  }

  /** Whether a signal asks the run to stop (without stopping it: a caller may tidy up first). */
  requested(): boolean {
    return this.hooks.stopRequested?.() != null;
  }

  /** Throws RunInterrupted when a signal asks the run to stop. */
  stopIfAsked(): void {
    const sig = this.hooks.stopRequested?.();
    if (sig) throw new RunInterrupted(sig, { ...this.position });
  }
}
