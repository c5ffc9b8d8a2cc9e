#!/usr/bin/python3
"""Writes test/fixtures/optim/torch_optim.json: torch.optim reference trajectories for
src/algorithms/optim.ts (checked by src/algorithms/optim.test.ts).

Run from the repository root with Debian's PyTorch (torch 1.13; the python3 on PATH cannot see it):

    /usr/bin/python3 scripts/make-optim-fixtures.py

Each case runs one torch.optim optimizer in float32 (the precision the TS side computes in) for a
few steps on three small parameters, from stored starting values and stored gradients. A stored
gradient is a list of values, 0 for a zero-filled `.grad` (PyTorch 1.12 after `zero_grad()`), or
null for `.grad = None` (the optimizer skips the parameter: the TS mask). The file holds the
parameters after every step and the optimizer state after the last, in `state_dict()` form
(parameter index -> slot -> values). Deterministic: a fixed seed, one CPU thread, values written
with 9 significant digits (enough to round-trip float32).
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, 'test', 'fixtures', 'optim', 'torch_optim.json')

SHAPES = [[5], [3, 2], [4]]
STEPS = 4
# (step, parameter) -> how the gradient differs from a random one
ZERO_GRAD = {(2, 0)}  # .grad zero-filled: momentum / moments / weight decay still act
NO_GRAD = {(1, 2)}  # .grad None: the parameter is skipped, its state untouched

# Each case: optimizer class, constructor keywords, and optional parameter groups (indices into
# the three parameters plus the keywords the group overrides).
CASES = [
    ('sgd_momentum', 'SGD', {'lr': 0.1, 'momentum': 0.9}, None),
    ('sgd_nesterov_wd', 'SGD', {'lr': 0.05, 'momentum': 0.9, 'nesterov': True, 'weight_decay': 0.01}, None),
    ('sgd_dampening_wd', 'SGD', {'lr': 0.05, 'momentum': 0.8, 'dampening': 0.3, 'weight_decay': 1e-3}, None),
    ('sgd_plain_wd', 'SGD', {'lr': 0.2, 'weight_decay': 0.1}, None),
    ('adam', 'Adam', {'lr': 0.01}, None),
    ('adam_wd', 'Adam', {'lr': 0.02, 'betas': (0.8, 0.99), 'eps': 1e-6, 'weight_decay': 0.05}, None),
    ('adamw', 'AdamW', {'lr': 0.02, 'weight_decay': 0.1}, None),
    ('sgd_groups', 'SGD', {'lr': 0.1, 'momentum': 0.9},
     [{'params': [0, 1]}, {'params': [2], 'lr': 0.01, 'weight_decay': 0.1, 'nesterov': True}]),
    ('adam_groups', 'Adam', {'lr': 0.01},
     [{'params': [0]}, {'params': [1, 2], 'lr': 0.003, 'weight_decay': 0.02, 'betas': (0.5, 0.9)}]),
]


def r9(t):
    return [float('%.9g' % v) for v in t.detach().reshape(-1).tolist()]


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240)
    params0 = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = []
    for s in range(STEPS):
        row = []
        for i, shape in enumerate(SHAPES):
            g = torch.randn(shape, generator=gen) * (0.5 + s)  # growing scale: Adam's ratios move
            row.append(None if (s, i) in NO_GRAD else 0 if (s, i) in ZERO_GRAD else g)
        grads.append(row)
    out = {
        'generator': 'scripts/make-optim-fixtures.py',
        'torch': torch.__version__.split('+')[0],
        'shapes': SHAPES,
        'params0': [r9(p) for p in params0],
        'grads': [[g if g is None or isinstance(g, int) else r9(g) for g in row] for row in grads],
        'cases': [],
    }
    for name, cls, kw, groups in CASES:
        ps = [torch.nn.Parameter(p.clone()) for p in params0]
        if groups:
            spec = [{**{k: v for k, v in g.items() if k != 'params'}, 'params': [ps[i] for i in g['params']]}
                    for g in groups]
            opt = getattr(torch.optim, cls)(spec, **kw)
        else:
            opt = getattr(torch.optim, cls)(ps, **kw)
        traj = []
        for row in grads:
            for p, g in zip(ps, row):
                p.grad = None if g is None else torch.zeros_like(p) if isinstance(g, int) else g.clone()
            opt.step()
            traj.append([r9(p) for p in ps])
        sd = opt.state_dict()
        # (SGD without momentum keeps momentum_buffer None: no state, as on the TS side)
        state = {str(i): {k: (float(v.item()) if k == 'step' else r9(v)) for k, v in st.items() if v is not None}
                 for i, st in sorted(sd['state'].items())}
        state = {i: st for i, st in state.items() if st}
        jsonable = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # noqa: E731
        out['cases'].append({
            'case': name,
            'optimizer': cls,
            'options': jsonable(kw),
            'groups': [jsonable(g) for g in groups] if groups else None,
            'params': traj,
            'state': state,
        })
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump(out, f, separators=(',', ':'))
        f.write('\n')
    print(f'wrote {os.path.relpath(OUT, ROOT)} ({os.path.getsize(OUT)} bytes)')


if __name__ == '__main__':
    main()
