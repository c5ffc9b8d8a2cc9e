/**
 * Yields one macrotask after every test. Most tests here are synchronous tfjs compute, and vitest
 * chains synchronous tests with microtasks only, so a file of them never lets the worker's event
 * loop read its runner's RPC replies; 60 s after the first unanswered call vitest reports
 * "Timeout calling onTaskUpdate" and fails the run although every test passed (seen with
 * src/algorithms/parity.test.ts, a long file of synchronous steps). Every single test stays far below
 * 60 s, so one turn of the loop between tests is enough.
 */
import { afterEach } from 'vitest';

afterEach(() => new Promise<void>((resolve) => setImmediate(resolve)));
