/**
 * Closed stdout/stderr (`cta-eval … | head -2`, a terminal that went away) must not stop a bin:
 * output is for the human, the run folder is the result. Without an 'error' listener Node turns
 * the first EPIPE into an uncaught exception (a stack trace; under the wasm backend's handler,
 * exit 7) and a half-written run. So the first error on either stream marks it closed and every
 * later write to it is dropped; the bin carries on and exits with the code it would have had.
 */

const guarded = new WeakSet<NodeJS.WriteStream>();
const closed = new WeakSet<NodeJS.WriteStream>();

/** True once `stream` has failed a write (reader gone); its output is being dropped. */
export function isClosed(stream: NodeJS.WriteStream): boolean {
  return closed.has(stream);
}

function drop(stream: NodeJS.WriteStream): void {
  if (closed.has(stream)) return;
  closed.add(stream);
  // A no-op write, still honouring the callback contract, so nothing downstream (progress bars,
  // loggers) sees an error or waits for a 'drain' that never comes.
  stream.write = ((_chunk: unknown, encOrCb?: unknown, cb?: unknown) => {
    const done = typeof encOrCb === 'function' ? encOrCb : typeof cb === 'function' ? cb : null;
    if (done) process.nextTick(done as () => void);
    return true;
  }) as typeof stream.write;
}

/** Idempotent; runMain calls it first thing, so every bin gets it. */
export function guardStdio(streams: NodeJS.WriteStream[] = [process.stdout, process.stderr]): void {
  for (const s of streams) {
    if (guarded.has(s)) continue;
    guarded.add(s);
    // Any error here (EPIPE, EIO from a vanished terminal, a destroyed stream) means nobody reads.
    s.on('error', () => drop(s));
  }
}
