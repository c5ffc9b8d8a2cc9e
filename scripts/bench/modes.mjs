/**
 * Benchmark modes → the runner configuration they use (configs/cifar10/*.yaml) and the matching
 * PyTorch reference mode of bench_torch.py in the --torch-dir folder (null: none there).
 */
export const MODES = {
  // Eval-mode BN (running statistics), forward only: the Source model.
  inference: { config: 'source.yaml', alg: 'source', torch: 'infer_eval', torchPeak: null },
  // Batch-statistics BN forward, no gradient (Norm).
  norm: { config: 'norm.yaml', alg: 'norm', torch: 'infer_train', torchPeak: 'profiler_peak_infer_trainBN' },
  // Forward + entropy + gradient to the BN affine parameters + SGD step.
  tent: { config: 'tent.yaml', alg: 'tent', torch: 'tent', torchPeak: 'profiler_peak_tent' },
  // EATA (every sample selected, see child.mjs) + Fisher regulariser.
  eata: { config: 'eata.yaml', alg: 'eata', torch: null, torchPeak: null },
  // EATA with MECTA norm (accumulated statistics, forget gate, beta-thre 0.00125, prune-q 0.7).
  'eata+mecta': { config: 'eata-mecta.yaml', alg: 'eata', torch: null, torchPeak: null },
  // Not in the default set: Tent with MECTA norm.
  'tent+mecta': { config: 'tent-mecta.yaml', alg: 'tent', torch: null, torchPeak: null },
  // Not in the default set: Tent with gradient checkpointing, S segments per stage
  // (docs/memory.md#gradient-checkpointing); child.mjs also reports the measured backprop bytes.
  'tent+ckpt2': { config: 'tent.yaml', alg: 'tent', torch: null, torchPeak: null, gradCheckpointSegments: 2 },
  'tent+ckpt4': { config: 'tent.yaml', alg: 'tent', torch: null, torchPeak: null, gradCheckpointSegments: 4 },
};

export const DEFAULT_MODES = ['inference', 'norm', 'tent', 'eata', 'eata+mecta'];
