/**
 * What kind of checkpoint `--weights` is, and the state_dict the model registry gets from it
 * (docs/data-formats.md#google-vit-npz). PyTorch files (safetensors, torch.save zip) already use the
 * model's key names; a Google ViT `.npz` uses Flax names and layouts and is converted to timm's
 * (src/models/vit-npz.ts), which also tells the head count. The variant is recorded in the
 * manifest and in the run's protocol line, so a result says which checkpoint family produced it.
 */
import { CtaError } from '../util/errors.js';
import type { StateDict } from '../io/types.js';
import type { WeightFileFormat } from '../io/state-dict.js';
import { googleVitToTimm, isGoogleVitNpz, type GoogleVitInfo } from './vit-npz.js';

/**
 * 'npz-google': Google's Flax ViT (.npz); '<names>-<container>' otherwise, where names is 'timm'
 * for vit_b16 and 'pytorch' for the CNNs (torchvision / RobustBench names), and the container is
 * 'safetensors', 'torch' (torch.save zip) or 'npz' (numpy.savez of a PyTorch state_dict).
 */
export type WeightsVariant = string;

export interface ResolvedWeights {
  sd: StateDict;
  variant: WeightsVariant;
  /** Architecture facts only the file knows (the ViT head count of a Google checkpoint). */
  heads?: number;
  google?: GoogleVitInfo;
}

const CONTAINER: Record<WeightFileFormat, string> = { safetensors: 'safetensors', 'torch-zip': 'torch', npz: 'npz' };

export function resolveWeights(sd: StateDict, format: WeightFileFormat, model: string, label: string): ResolvedWeights {
  // big_vision (SigLIP, FlexiViT, later AugReg exports) names its blocks differently under params/.
  if (sd.has('params/embedding/kernel') || sd.has('params/img/embedding/kernel')) {
    throw new CtaError(`--weights ${label} is a big_vision checkpoint (params/… names), which cta-eval does not convert; use a google-research/vision_transformer .npz or a timm state_dict`);
  }
  if (isGoogleVitNpz(sd)) {
    if (model !== 'vit_b16') {
      throw new CtaError(`--weights ${label} is a Google ViT checkpoint (Flax names such as embedding/kernel); it needs --model vit_b16, not ${model}`);
    }
    const { sd: timm, info } = googleVitToTimm(sd, label);
    return { sd: timm, variant: 'npz-google', heads: info.heads, google: info };
  }
  return { sd, variant: `${model === 'vit_b16' ? 'timm' : 'pytorch'}-${CONTAINER[format]}` };
}
