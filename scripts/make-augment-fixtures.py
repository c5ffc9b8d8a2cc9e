#!/usr/bin/python3
"""Generates test/fixtures/augment/: CoTTA's augmentation operations with fixed parameters.

Run from the repository root with Debian's PyTorch (torch 1.13, numpy 1.24):

    /usr/bin/python3 scripts/make-augment-fixtures.py

The random draws of CoTTA's augmentation cannot agree between frameworks, so the parity data is per
operation with fixed parameters (and the whole pipeline with fixed parameters and a stored noise
tensor). torchvision is not installed next to Debian's torch, so the operations are the plain-torch
re-statement in scripts/fixtures_lib/tv_ops.py (docs/augment.md#operations); this script checks that
re-statement against independent computations first (Python's colorsys for the HSV round trip, a
one-pixel shift and a 90-degree turn for the affine, the kernel's normalisation for the blur).

Deterministic (fixed seeds, one CPU thread): two runs give identical bytes. Reference values are
computed in float64 from float32 inputs and stored as float32; the same code in float32 is reported
as the float32 error of each case (what float32 torchvision itself would be off by), and written to
the JSON as `float32_error`.
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import colorsys  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib import tv_ops as tv  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'augment')
META = {'generator': 'scripts/make-augment-fixtures.py', 'torch': torch.__version__.split('+')[0]}
N, H, W = 2, 12, 12


def images():
    """Two float32 RGB images in [0, 1]: a smooth colour pattern with noise, and one with the edge
    cases of the colour code: grey pixels (r = g = b), exact 0 and 1, and ties for the max channel."""
    rng = np.random.RandomState(7)
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing='ij')
    x = np.empty((N, 3, H, W))
    for c in range(3):
        x[0, c] = 0.5 + 0.35 * np.sin(xx * (c + 1) / 3.1 + yy / 4.3 + c)
    x[0] += 0.08 * rng.randn(3, H, W)
    x[1] = rng.rand(3, H, W)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    im = x[1]
    im[:, 0:3, 0:3] = np.float32(0.37)         # grey block
    im[:, 3, 0:3] = np.float32(0.0)            # black
    im[:, 4, 0:3] = np.float32(1.0)            # white
    im[0, 5, :] = im[1, 5, :] = np.maximum(im[0, 5, :], im[1, 5, :])  # r = g (ties: red wins)
    im[2, 5, :] = np.minimum(im[2, 5, :], im[0, 5, :] * np.float32(0.5))
    im[1, 6, :] = im[2, 6, :] = np.maximum(im[1, 6, :], im[2, 6, :])  # g = b
    im[0, 6, :] = np.minimum(im[0, 6, :], im[1, 6, :] * np.float32(0.5))
    im[0, 7, 5:9] = np.float32(1.0)            # saturated red
    return x


# Fixed parameters. The jitter factors span CoTTA's ranges (docs/augment.md#ranges) and beyond for
# hue, so every HSV sector and the wrap-around of a negative shift occur.
CASES = [
    ('brightness', 'brightness', {'factor': 1.35}),
    ('brightness_dark', 'brightness', {'factor': 0.62}),
    ('contrast', 'contrast', {'factor': 0.72}),
    ('contrast_up', 'contrast', {'factor': 1.28}),
    ('saturation', 'saturation', {'factor': 1.45}),
    ('saturation_down', 'saturation', {'factor': 0.55}),
    ('hue_pos', 'hue', {'factor': 0.05}),
    ('hue_neg', 'hue', {'factor': -0.06}),
    ('hue_large', 'hue', {'factor': 0.31}),
    ('gamma_low', 'gamma', {'factor': 0.72}),
    ('gamma_high', 'gamma', {'factor': 1.27}),
    ('pad_edge', 'pad', {'pad': 6}),
    ('affine', 'affine', {'angle': 12.5, 'translate': [1, -2], 'scale': 0.93, 'shear': [0.0, 0.0]}),
    ('affine_shear', 'affine', {'angle': -31.0, 'translate': [0, 1], 'scale': 1.08, 'shear': [7.0, -4.0]}),
    ('blur', 'blur', {'sigma': 0.45}),
    ('blur_wide', 'blur', {'sigma': 1.3}),
    ('pipeline', 'pipeline', {
        'jitter_order': ['hue', 'brightness', 'gamma', 'contrast', 'saturation'],
        'brightness': 1.21, 'contrast': 0.77, 'saturation': 1.33, 'hue': -0.047, 'gamma': 0.83,
        'pad': 6, 'angle': -9.3, 'translate': [2, -1], 'scale': 1.06, 'shear': [0.0, 0.0],
        'blur_sigma': 0.37, 'flip': True, 'noise_std': 0.005}),
    ('pipeline_noflip', 'pipeline', {
        'jitter_order': ['saturation', 'gamma', 'contrast', 'hue', 'brightness'],
        'brightness': 0.68, 'contrast': 1.24, 'saturation': 0.58, 'hue': 0.058, 'gamma': 1.22,
        'pad': 6, 'angle': 14.1, 'translate': [-1, 1], 'scale': 0.91, 'shear': [0.0, 0.0],
        'blur_sigma': 0.004, 'flip': False, 'noise_std': 0.0}),
]


def run(op, p, x, noise):
    if op in tv.JITTER:
        return tv.JITTER[op](x, p['factor'])
    if op == 'pad':
        return tv.pad_edge(x, p['pad'])
    if op == 'affine':
        return tv.affine(x, p['angle'], p['translate'], p['scale'], p['shear'])
    if op == 'blur':
        return tv.gaussian_blur(x, p['sigma'])
    if op == 'pipeline':
        return tv.cotta_pipeline(x, p, noise)
    raise ValueError(op)


def check_reference(x64):
    """The re-statement against independent computations (assertions, nothing stored)."""
    # HSV round trip and hue shift against Python's colorsys, pixel by pixel.
    hsv = tv.rgb_to_hsv(x64)
    back = tv.hsv_to_rgb(hsv)
    assert torch.allclose(back, x64, atol=1e-12), 'rgb -> hsv -> rgb is not the identity'
    shifted = tv.adjust_hue(x64, -0.06)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                r, g, b = (float(v) for v in x64[n, :, i, j])
                h, s, v = colorsys.rgb_to_hsv(r, g, b)
                assert abs(float(hsv[n, 1, i, j]) - s) < 1e-12 and abs(float(hsv[n, 2, i, j]) - v) < 1e-12
                if s > 0:
                    dh = abs(float(hsv[n, 0, i, j]) - h)
                    assert min(dh, 1 - dh) < 1e-12, (n, i, j)
                want = colorsys.hsv_to_rgb((h - 0.06) % 1.0, s, v)
                got = [float(c) for c in shifted[n, :, i, j]]
                assert max(abs(a - b) for a, b in zip(got, want)) < 1e-12, (n, i, j, got, want)
    # Affine: a pure one-pixel shift right fills column 0 with 0; a 90-degree turn of a square image
    # samples pixel centres exactly (a permutation, no blending).
    moved = tv.affine(x64, 0.0, [1, 0], 1.0, [0.0, 0.0])
    assert torch.allclose(moved[..., 1:], x64[..., :-1], atol=1e-12) and float(moved[..., 0].abs().max()) < 1e-12
    turned = tv.affine(x64, 90.0, [0, 0], 1.0, [0.0, 0.0])
    assert any(torch.allclose(turned, torch.rot90(x64, k, dims=(-2, -1)), atol=1e-9) for k in (1, -1)), '90° turn'
    k = tv.gaussian_kernel1d(5, 0.45, torch.float64)
    assert abs(float(k.sum()) - 1) < 1e-15 and torch.allclose(k, k.flip(0))
    assert torch.equal(tv.gaussian_blur(x64, 0.001), x64), 'a tiny sigma must leave the image unchanged'


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    x32 = torch.from_numpy(images())
    x64 = x32.double()
    check_reference(x64)
    noise_rng = np.random.RandomState(11)
    tensors = {'input': x32}
    cases = []
    for name, op, p in CASES:
        noise = None
        if op == 'pipeline' and p['noise_std'] > 0:
            noise32 = torch.from_numpy((noise_rng.randn(N, 3, H, W) * p['noise_std']).astype(np.float32))
            tensors[f'{name}.noise'] = noise32
            noise = noise32
        ref = run(op, p, x64, None if noise is None else noise.double())
        f32 = run(op, p, x32, noise)
        err = float((f32.double() - ref).abs().max())
        tensors[name] = ref
        cases.append({'name': name, 'op': op, 'params': p, 'shape': list(ref.shape), 'float32_error': err,
                      'noise': f'{name}.noise' if noise is not None else None})
        print(f'  {name:16s} {op:10s} float32 vs float64 max |diff| {err:.2e}')
    st.save(os.path.join(OUT, 'ops.safetensors'), tensors, META)
    with open(os.path.join(OUT, 'ops.json'), 'w') as f:
        json.dump({'generator': META['generator'], 'layout': 'NCHW', 'input': 'input', 'input_shape': [N, 3, H, W],
                   'blur_kernel': 5, 'affine_fill': 0.0, 'cases': cases}, f, indent=2)
        f.write('\n')
    print('done')


if __name__ == '__main__':
    main()
