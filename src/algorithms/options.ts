/**
 * Config fields shared by several methods, declared once so that methods listing the same option
 * list the same field (the schema merges the methods' fields by key, src/config/schema.ts).
 */
import type { FieldSpec } from '../config/schema.js';
import { OPTIMIZERS } from './types.js';

/** The optimizer of the gradient-based methods (docs/methods.md#optimiser) and `episodic`. */
export const GRADIENT_OPTIONS = {
  lr: { type: 'number', min: 0, exclusiveMin: true, default: 0.0025, group: 'algorithm', description: 'learning rate (tent/eta/eata)' },
  momentum: { type: 'number', min: 0, max: 1, default: 0.9, group: 'algorithm', description: 'SGD momentum (PyTorch semantics)' },
  optimizer: { type: 'enum', choices: OPTIMIZERS, default: 'sgd', group: 'algorithm', description: 'optimizer for the norm-layer affine parameters' },
  dampening: { type: 'number', min: 0, max: 1, default: 0, group: 'algorithm', description: 'SGD dampening (PyTorch semantics)' },
  nesterov: { type: 'bool', default: false, group: 'algorithm', description: 'SGD Nesterov momentum (needs momentum > 0 and dampening 0)' },
  weightDecay: { type: 'number', min: 0, default: 0, group: 'algorithm', description: 'weight decay: L2 added to the gradient (sgd, adam), decoupled (adamw)' },
  adamBeta1: { type: 'number', min: 0, max: 1, default: 0.9, group: 'algorithm', description: 'Adam/AdamW β1 (< 1)' },
  adamBeta2: { type: 'number', min: 0, max: 1, default: 0.999, group: 'algorithm', description: 'Adam/AdamW β2 (< 1)' },
  adamEps: { type: 'number', min: 0, default: 1e-8, group: 'algorithm', description: 'Adam/AdamW ε' },
  episodic: { type: 'bool', default: false, group: 'algorithm', description: 'reset model and optimizer before every batch' },
} as const satisfies Record<string, FieldSpec>;
