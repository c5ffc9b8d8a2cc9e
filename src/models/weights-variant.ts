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
import type { InputNorm } from './base.js';

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
  /** The input normalisation the file records (a cta-train ViT's metadata). */
  inputNorm?: InputNorm;
  google?: GoogleVitInfo;
}

/**
 * safetensors `__metadata__` keys of a timm-layout ViT written by cta-train (src/train/vit-trainer.ts):
 * what timm's weights leave to the model config — the head count and the input mean/std
 * (comma-separated, one value per RGB channel).
 */
export const VIT_METADATA = { heads: 'vit_heads', mean: 'input_mean', std: 'input_std' } as const;

function vitFromMetadata(meta: Readonly<Record<string, string>>, label: string): { heads?: number; inputNorm?: InputNorm } {
  const out: { heads?: number; inputNorm?: InputNorm } = {};
  const h = meta[VIT_METADATA.heads];
  if (h !== undefined) {
    const n = Number(h);
    if (!/^\d+$/.test(h.trim()) || !(n >= 1)) throw new CtaError(`--weights ${label}: metadata ${VIT_METADATA.heads} '${h}' is not a positive integer`);
    out.heads = n;
  }
  const m = meta[VIT_METADATA.mean];
  const sd = meta[VIT_METADATA.std];
  if ((m === undefined) !== (sd === undefined)) {
    throw new CtaError(`--weights ${label}: metadata has ${m === undefined ? VIT_METADATA.std : VIT_METADATA.mean} without ${m === undefined ? VIT_METADATA.mean : VIT_METADATA.std}`);
  }
  if (m !== undefined && sd !== undefined) {
    const parse = (key: string, text: string, positive: boolean) => {
      const v = text.split(',').map((t) => (t.trim() === '' ? NaN : Number(t)));
      if (v.length !== 3 || v.some((x) => !Number.isFinite(x) || (positive && !(x > 0)))) {
        throw new CtaError(`--weights ${label}: metadata ${key} '${text}' is not 3 comma-separated ${positive ? 'positive ' : ''}numbers`);
      }
      return v;
    };
    out.inputNorm = { mean: parse(VIT_METADATA.mean, m, false), std: parse(VIT_METADATA.std, sd, true) };
  }
  return out;
}

const CONTAINER: Record<WeightFileFormat, string> = { safetensors: 'safetensors', 'torch-zip': 'torch', npz: 'npz' };

/** `metadata`: the safetensors `__metadata__` map (a cta-train ViT's head count and mean/std, VIT_METADATA). */
export function resolveWeights(
  sd: StateDict,
  format: WeightFileFormat,
  model: string,
  label: string,
  metadata: Readonly<Record<string, string>> = {},
): ResolvedWeights {
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
  const variant = `${model === 'vit_b16' ? 'timm' : 'pytorch'}-${CONTAINER[format]}`;
  return model === 'vit_b16' ? { sd, variant, ...vitFromMetadata(metadata, label) } : { sd, variant };
}
