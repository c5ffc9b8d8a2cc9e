/**
 * Observers of a run's domain-boundary checkpoints, the one injection point for code outside the
 * runner that acts there. The resume test preloads test/e2e/exit-after-domain.mjs, which
 * subscribes and exits the process there to simulate a crash (test/e2e/resume.test.ts).
 */
export type CheckpointListener = (dir: string, finishedDomains: number) => void;

const listeners = new Set<CheckpointListener>();

/** Calls `listener` after every domain-boundary checkpoint is written; returns the unsubscribe. */
export function onCheckpoint(listener: CheckpointListener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function checkpointWritten(dir: string, finishedDomains: number): void {
  for (const l of listeners) l(dir, finishedDomains);
}
