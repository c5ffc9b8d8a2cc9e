#!/usr/bin/python3
"""Writes test/fixtures/norm-policy/norm_policy.json: PyTorch references for the mixed-statistics
norm policies of src/models/norm-policy.ts ('ema' and 'alpha', docs/mecta-norm.md#norm-policies),
checked by src/models/norm-policy.test.ts.

Run from the repository root with Debian's PyTorch (torch 1.13; the python3 on PATH cannot see it):

    /usr/bin/python3 scripts/make-norm-policy-fixtures.py

Each case feeds two NCHW batches through one BN layer with stored starting statistics, affine
parameters and upstream gradients, in float32, and records per batch the output, the gradients
of x, weight and bias, and the stored statistics afterwards. The layer is written out here from
the definitions in docs/mecta-norm.md#norm-policies:

- 'ema' (robust BN as in RoTTA, Yuan et al., CVPR 2023): biased batch statistics, mixed with the
  stored ones at rate `momentum`; the mixed values normalise (autograd flows through their batch
  part) and, detached, replace the stored ones;
- 'alpha' (BN-α): alpha * source + (1 - alpha) * batch, the source statistics never change.

Deterministic: a fixed seed, one CPU thread, values written with 9 significant digits.
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, 'test', 'fixtures', 'norm-policy', 'norm_policy.json')

EPS = 1e-5
SHAPE = (2, 3, 4, 4)  # N, C, H, W
CASES = [
    ('ema_default', 'ema', {'momentum': 0.05}),
    ('ema_03', 'ema', {'momentum': 0.3}),
    ('alpha_02', 'alpha', {'alpha': 0.2}),
]


def vals(t):
    return [float('%.9g' % v) for v in t.detach().reshape(-1).tolist()]


def mixed_bn(x, ref_mean, ref_var, batch_weight, weight, bias):
    """BN with (1 - w) * reference + w * batch statistics; returns y and the mixed statistics."""
    var_b, mean_b = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
    mean = (1 - batch_weight) * ref_mean + batch_weight * mean_b
    var = (1 - batch_weight) * ref_var + batch_weight * var_b
    x_hat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + EPS)
    return x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), mean.detach(), var.detach()


def case(mode, opts, gen):
    c = SHAPE[1]
    mean0 = 0.3 * torch.randn(c, generator=gen)
    var0 = 0.5 + torch.rand(c, generator=gen)
    weight = (1 + 0.2 * torch.randn(c, generator=gen)).requires_grad_(True)
    bias = (0.2 * torch.randn(c, generator=gen)).requires_grad_(True)
    out = {'mode': mode, 'options': opts, 'eps': EPS, 'shape': list(SHAPE),
           'running_mean0': vals(mean0), 'running_var0': vals(var0),
           'weight': vals(weight), 'bias': vals(bias), 'steps': []}
    stored_mean, stored_var = mean0.clone(), var0.clone()
    for _ in range(2):
        x = (1.5 * torch.randn(SHAPE, generator=gen) + 0.4).requires_grad_(True)
        g = torch.randn(SHAPE, generator=gen)
        if mode == 'ema':
            y, m, v = mixed_bn(x, stored_mean, stored_var, opts['momentum'], weight, bias)
            stored_mean, stored_var = m, v
        else:
            y, _, _ = mixed_bn(x, mean0, var0, 1 - opts['alpha'], weight, bias)
        dx, dw, db = torch.autograd.grad(y, [x, weight, bias], g)
        out['steps'].append({'x': vals(x), 'g': vals(g), 'y': vals(y), 'dx': vals(dx), 'dweight': vals(dw),
                             'dbias': vals(db), 'running_mean': vals(stored_mean), 'running_var': vals(stored_var)})
    return out


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20)
    fixtures = {name: case(mode, opts, gen) for name, mode, opts in CASES}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump(fixtures, f, separators=(',', ':'))
        f.write('\n')
    print(f'wrote {OUT}')


if __name__ == '__main__':
    main()
