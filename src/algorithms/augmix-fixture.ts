/**
 * Test-only (not imported by library code): the AugMix view parameters as
 * scripts/fixtures_lib/augmix_ref.py writes them into the fixture JSON, in the TS shape.
 */
import type { AugmixOp, AugmixParams } from './augmix.js';

export interface PyAugmixParams {
  pad: number;
  crop: [number, number, number, number];
  flip: boolean;
  weights: [number, number, number];
  mix: number;
  chains: [AugmixOp, number][][];
}

export function toParams(p: PyAugmixParams): AugmixParams {
  return {
    pad: p.pad,
    crop: { top: p.crop[0], left: p.crop[1], height: p.crop[2], width: p.crop[3] },
    flip: p.flip,
    weights: p.weights,
    mix: p.mix,
    chains: p.chains.map((c) => c.map(([op, value]) => ({ op, value }))),
  };
}
