/**
 * A user-facing error: the CLI prints `error: <message>` on one line and exits with `exitCode`
 * (2 = bad usage / bad input, 1 = runtime failure). Library code throws this for anything a user
 * can fix (bad flag, missing file, wrong shape), so no tfjs stack trace ever reaches the terminal.
 */
export class CtaError extends Error {
  constructor(message: string, readonly exitCode: number = 2) {
    super(message);
    this.name = 'CtaError';
  }
}

/** Lists the first few items of a problem set plus the total count: "a, b, c … (12 in all)". */
export function listSome(items: readonly string[], max = 5): string {
  const head = items.slice(0, max).join(', ');
  return items.length > max ? `${head}, … (${items.length} in all)` : head;
}
