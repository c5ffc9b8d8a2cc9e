/**
 * Per-domain progress: a cli-progress bar (running error, img/s) on a TTY, plain lines otherwise
 * (one every `PLAIN_EVERY` batches and one per finished domain), or nothing.
 */
import cliProgress from 'cli-progress';

export type ProgressMode = 'auto' | 'bar' | 'plain' | 'none';

export interface DomainProgress {
  update(batches: number, seen: number, errorPct: number, imgPerS: number): void;
  stop(): void;
}

const PLAIN_EVERY = 50;

export function domainProgress(
  mode: ProgressMode,
  label: string,
  totalBatches: number,
  write: (line: string) => void,
): DomainProgress {
  const resolved = mode === 'auto' ? (process.stdout.isTTY ? 'bar' : 'plain') : mode;
  if (resolved === 'bar') {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label.padEnd(26)} {bar} {value}/{total} | err {err}% | {ips} img/s`,
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: true,
        barsize: 24,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(totalBatches, 0, { err: '-', ips: '-' });
    return {
      update: (b, _seen, err, ips) => bar.update(b, { err: err.toFixed(2), ips: ips.toFixed(1) }),
      stop: () => bar.stop(),
    };
  }
  if (resolved === 'plain') {
    return {
      update: (b, seen, err, ips) => {
        if (b % PLAIN_EVERY === 0 && b < totalBatches) {
          write(`${label} batch ${b}/${totalBatches} seen ${seen} err ${err.toFixed(2)}% ${ips.toFixed(1)} img/s`);
        }
      },
      stop: () => {},
    };
  }
  return { update: () => {}, stop: () => {} };
}
