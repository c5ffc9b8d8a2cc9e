"""AugMix views as MEMO builds them (mariodoebler/test-time-adaptation, augmentations/
transforms_augmix.py and augmix_ops.py), re-stated with every random quantity passed in.

The operations run on 8-bit PIL images through PIL itself (ImageOps, Image.rotate,
Image.transform), since that is what the official code calls; the pre-augmentation runs through
torchvision's functional ops with the given crop box and flip. `params` of a view:
  pad       zero padding before the crop (4 on the CIFAR branch, 0 for RandomResizedCrop)
  crop      (top, left, height, width) in the padded image
  flip      left-right flip after the crop (and the resize, when the crop is not the image size)
  weights   the three Dirichlet chain weights (float32)
  mix       the Beta mixing weight (float32)
  chains    three lists of (op, value): posterize bits, rotate degrees, solarize threshold, shear
            factor, translate pixels; autocontrast / equalize ignore the value
"""
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode

OPS = ['autocontrast', 'equalize', 'posterize', 'rotate', 'solarize', 'shear_x', 'shear_y',
       'translate_x', 'translate_y']


def apply_op(img, op, value):
    """One AugMix operation with its value already drawn (severity handling is the caller's)."""
    size = img.size
    if op == 'autocontrast':
        return ImageOps.autocontrast(img)
    if op == 'equalize':
        return ImageOps.equalize(img)
    if op == 'posterize':
        return ImageOps.posterize(img, int(value))
    if op == 'rotate':
        return img.rotate(value, resample=Image.BILINEAR)
    if op == 'solarize':
        return ImageOps.solarize(img, int(value))
    coeffs = {'shear_x': (1, value, 0, 0, 1, 0), 'shear_y': (1, 0, 0, value, 1, 0),
              'translate_x': (1, 0, value, 0, 1, 0), 'translate_y': (1, 0, 0, 0, 1, value)}[op]
    return img.transform(size, Image.AFFINE, coeffs, resample=Image.BILINEAR)


def preaugment(img, params):
    """RandomCrop(padding) or RandomResizedCrop, then the flip, with the given box and flip."""
    w, h = img.size
    top, left, ch, cw = params['crop']
    if params['pad']:
        out = TF.crop(TF.pad(img, params['pad'], fill=0), top, left, ch, cw)
    else:
        out = TF.resized_crop(img, top, left, ch, cw, [h, w], InterpolationMode.BILINEAR)
    return TF.hflip(out) if params['flip'] else out


def augmix_view(img, params):
    """One view as a float32 CHW tensor in [0, 1] (the official augmix() with preprocess = ToTensor)."""
    x_orig = preaugment(img, params)
    x_processed = TF.to_tensor(x_orig)
    w = np.asarray(params['weights'], dtype=np.float32)
    m = np.float32(params['mix'])
    mix = torch.zeros_like(x_processed)
    for i, chain in enumerate(params['chains']):
        x_aug = x_orig.copy()
        for op, value in chain:
            x_aug = apply_op(x_aug, op, value)
        mix += w[i] * TF.to_tensor(x_aug)
    return m * x_processed + (1 - m) * mix


def draw_params(rng, h, w):
    """The official distributions (severity 1) from a numpy Generator, for the fixtures."""
    cifar = h == 32 and w == 32
    if cifar:
        pad = 4
        crop = (int(rng.integers(0, 9)), int(rng.integers(0, 9)), h, w)
    else:
        pad = 0
        area = h * w
        while True:
            target = area * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(round(np.sqrt(target * ratio)))
            ch = int(round(np.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                crop = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
                break
    flip = bool(rng.uniform() < 0.5)
    weights = [float(v) for v in np.float32(rng.dirichlet([1.0, 1.0, 1.0]))]
    mix = float(np.float32(rng.beta(1.0, 1.0)))
    chains = []
    for _ in range(3):
        chain = []
        for _ in range(int(rng.integers(1, 4))):
            op = OPS[int(rng.integers(0, len(OPS)))]
            level = rng.uniform(0.1, 1.0)
            sign = -1 if rng.uniform() > 0.5 else 1
            if op == 'posterize':
                value = 4 - int(level * 4 / 10)
            elif op == 'rotate':
                value = int(level * 30 / 10) * sign
            elif op == 'solarize':
                value = 256 - int(level * 256 / 10)
            elif op in ('shear_x', 'shear_y'):
                value = float(level) * 0.3 / 10 * sign
            elif op in ('translate_x', 'translate_y'):
                value = int(level * (w / 3) / 10) * sign
            else:
                value = 0
            chain.append((op, value))
        chains.append(chain)
    return {'pad': pad, 'crop': crop, 'flip': flip, 'weights': weights, 'mix': mix, 'chains': chains}
