/**
 * profile-mem with every registered method (ALGORITHM_NAMES) on a reduced ViT-B/16 shape: see
 * profile-methods-helpers.ts (docs/memory.md#the-profile-mem-command, #method-state).
 */
import { beforeAll, describe, it } from 'vitest';
import { initBackend } from '../tf.js';
import { ALGORITHM_NAMES } from '../algorithms/registry.js';
import { checkEveryMethod } from './profile-methods-helpers.js';

beforeAll(async () => {
  await initBackend('wasm');
});

describe('profile-mem: every registered method on a reduced ViT-B/16 shape', () => {
  it(`${ALGORITHM_NAMES.length} methods: each row complete, state bytes as the arithmetic says`, async () => {
    await checkEveryMethod('vit_b16');
  }, 120_000);
});
