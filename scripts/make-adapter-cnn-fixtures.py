#!/usr/bin/python3
"""Generates test/fixtures/adapters/cnn_<kind>.safetensors and cnn.json: PyTorch references for
the --adapt-params modules on the 1x1 convolutions of the small ResNeXt
(test/fixtures/models/resnext_small.pt; scripts/fixtures_lib/adapters_cnn_ref.py), for
src/adapters/parity.test.ts.

    /usr/bin/python3 scripts/make-adapter-cnn-fixtures.py

Tent's entropy loss and one SGD step on the module parameters only, every model weight frozen,
with BatchNorm on its running (source) statistics: on the test batch's statistics the float32
gradients of the early blocks' modules are ill-conditioned (BN's backward removes the batch mean
and the component along the normalised input; float32 PyTorch itself is up to 3e-2 off float64
there), which would hide the modules' own arithmetic; Tent's batch-statistics BN is checked by the
Tent fixtures, the step-0 identity in both modes by src/adapters/adapters.test.ts. Input: batch x0 of
test/fixtures/adapt/inputs.safetensors. Stored: `base`, the logits without modules (what
cta-eval's own initialisation, zero up-projections, must reproduce at step 0); per kind the
module parameters' initial values `init.<name>` (random, every factor non-zero so that every
parameter gets a gradient), the float64 logits with them (`logits`) and one Tent step's update of
each (`delta.<name>`; SGD, lr per kind in cnn.json). Deterministic (fixed seeds, one thread).
"""
import sys

sys.dont_write_bytecode = True

import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib.adapters_cnn_ref import attach, conv_sites  # noqa: E402
from fixtures_lib.models import CifarResNeXt  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
MODELS = os.path.join(ROOT, 'test', 'fixtures', 'models')
ADAPT = os.path.join(ROOT, 'test', 'fixtures', 'adapt')
OUT = os.path.join(ROOT, 'test', 'fixtures', 'adapters')
RESNEXT_CFG = dict(depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32), num_classes=10,
                   mu=(0.49, 0.48, 0.45), sigma=(0.25, 0.24, 0.26))
# SGD lr 1: the updates of the module parameters are small next to their values, and the float32
# difference after - before in the test would lose their digits at lr 0.01 (one SGD step is
# linear in lr, so nothing else changes).
LR = 1.0

# The cta-eval options of each fixture (cnn.json; the test passes them) and the reference's.
KINDS = OrderedDict(
    lora={'options': {'rank': 2, 'loraAlpha': 4}, 'ref': {'rank': 2, 'alpha': 4}},
    kadaptation={'options': {'kronFactors': 4}, 'ref': {'kron_scale': 160.0, 'n': 4}},
    adapter={'options': {'adapterDim': 2}, 'ref': {'m': 2}},
    # n = 2 with the default bottleneck width, the conv's width / 32 rounded up to a multiple of
    # n: 2 on the 16- to 64-channel outputs, 4 on the 128-channel ones. lr 20: its smallest
    # updates are smaller still next to their values.
    compacter={'options': {'kronFactors': 2}, 'ref': {'n': 2}, 'lr': 20.0},
)


def shapes(kind, sites, cfg):
    """Parameter name -> PyTorch shape, in cta-eval's order (src/adapters/<kind>.ts)."""
    out = OrderedDict()
    if kind == 'compacter':
        n = cfg['n']
        out['compacter.phm_rule'] = (n, n, n)
    for name, conv, role in sites:
        cout, cin = conv.weight.shape[0], conv.weight.shape[1]
        if kind == 'lora':
            r = cfg['rank']
            out[f'{name}.lora_A.weight'] = (r, cin, 1, 1)
            out[f'{name}.lora_B.weight'] = (cout, r, 1, 1)
        elif kind == 'kadaptation':
            n = cfg['n']
            if f'kadaptation.{role}.rule_left' not in out:
                out[f'kadaptation.{role}.rule_left'] = (n, n, 1)
                out[f'kadaptation.{role}.rule_right'] = (n, 1, n)
            out[f'{name}.kadaptation.W_left'] = (n, cin // n, 1)
            out[f'{name}.kadaptation.W_right'] = (n, 1, cout // n)
        elif kind == 'adapter':
            m = cfg['m']
            p = f'{name}.adapter'
            out[f'{p}.down.weight'] = (m, cout)
            out[f'{p}.down.bias'] = (m,)
            out[f'{p}.up.weight'] = (cout, m)
            out[f'{p}.up.bias'] = (cout,)
        elif kind == 'compacter':
            n = cfg['n']
            m = max(n, -(-cout // (32 * n)) * n)
            for proj, i, o in (('down', cout, m), ('up', m, cout)):
                p = f'{name}.compacter.{proj}'
                out[f'{p}.W_left'] = (n, i // n, 1)
                out[f'{p}.W_right'] = (n, 1, o // n)
                out[f'{p}.b'] = (o,)
    return out


def init_values(kind, sites, cfg, gen):
    """Random non-zero values that move the logits visibly but keep them tame."""
    vals = OrderedDict()
    for name, shape in shapes(kind, sites, cfg).items():
        scale = 0.5 if 'rule' in name else 0.15
        if kind == 'kadaptation' and 'rule' not in name:
            scale = 0.02  # s = 160 multiplies the Kronecker sum
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        vals[name] = t.to(torch.float32).to(torch.float64)  # what the fixture stores, exactly
    return vals


def configured_model():
    """Every model weight frozen, BatchNorm on its running (source) statistics."""
    model = CifarResNeXt(**RESNEXT_CFG)
    model.load_state_dict(torch.load(os.path.join(MODELS, 'resnext_small.pt')))
    model = model.double().eval()
    model.requires_grad_(False)
    return model


def entropy_mean(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()


def tent_update(model, kind, init, cfg, x, lr):
    """The logits with the modules at `init`, the loss and one SGD step's update per parameter."""
    ps = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in init.items())
    handles = attach(model, kind, ps, cfg)
    try:
        z = model(x)
    finally:
        for h in handles:
            h.remove()
    loss = entropy_mean(z)
    grads = torch.autograd.grad(loss, list(ps.values()))
    return z.detach(), loss.item(), OrderedDict((k, -lr * g) for k, g in zip(ps, grads))


def rel(a, b):
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def main():
    os.makedirs(OUT, exist_ok=True)
    model = configured_model()
    model32 = configured_model().float()
    sites = conv_sites(model)
    x = torch.from_numpy(st.load(os.path.join(ADAPT, 'inputs.safetensors'))[0]['x0'].astype('float64'))
    with torch.no_grad():
        base = model(x)
    gen = torch.Generator().manual_seed(72)
    meta = {'generator': 'scripts/make-adapter-cnn-fixtures.py', 'torch': torch.__version__.split('+')[0]}
    index = OrderedDict(model='resnext_small', input='adapt/inputs.safetensors x0', kinds=OrderedDict())
    for kind, spec in KINDS.items():
        init = init_values(kind, sites, spec['ref'], gen)
        lr = spec.get('lr', LR)
        z, loss, delta = tent_update(model, kind, init, spec['ref'], x, lr)
        # how close float32 arithmetic gets to this reference (the same step in float32 PyTorch)
        z32, _, d32 = tent_update(model32, kind, OrderedDict((k, v.float()) for k, v in init.items()), spec['ref'], x.float(), lr)
        io = OrderedDict(base=base, logits=z)
        for k, v in init.items():
            io[f'init.{k}'] = v.to(torch.float32)  # exact: the values are float32 ones
        for k, d in delta.items():
            io[f'delta.{k}'] = d.to(torch.float32)
        f32 = {k: rel(d32[k].double(), io[f'delta.{k}'].double()) for k in delta}
        path = os.path.join(OUT, f'cnn_{kind}.safetensors')
        st.save(path, io, meta)
        index['kinds'][kind] = {'options': spec['options'], 'lr': lr, 'params': list(init.keys()),
                                'float32_torch_rel_err': {'logits': rel(z32.double(), z), 'update_max': max(f32.values())}}
        small = min(delta[k].norm().item() / v.norm().item() for k, v in init.items())
        worst = max(f32, key=f32.get)
        print(f'  {kind}: {len(init)} tensors, {sum(v.numel() for v in init.values())} scalars, loss {loss:.4f}, '
              f'logits moved {rel(z, base):.2e} by the init, smallest |update|/|init| {small:.2e}, '
              f'float32 torch: logits {rel(z32.double(), z):.1e}, update {f32[worst]:.1e} ({worst}); {os.path.getsize(path)} bytes')
    with open(os.path.join(OUT, 'cnn.json'), 'w') as f:
        json.dump(index, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
