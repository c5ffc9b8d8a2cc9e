#!/usr/bin/python3
"""Generates test/fixtures/adapters/*: PyTorch references for the --adapt-params modules
(scripts/fixtures_lib/adapters_ref.py) on the reduced ViT of test/fixtures/imagenet
(vit_small.safetensors, its input vit_small.input.npy).

    /usr/bin/python3 scripts/make-adapter-fixtures.py

Per kind, <kind>.safetensors holds the module parameters' initial values `init.<name>` (random,
every factor non-zero so that every parameter gets a gradient: the zero-initialised
up-projections cta-eval draws would leave half of them without one), the float64 logits with
them (`logits`, pre-update) and one Tent step's update of each (`delta.<name>`; SGD, lr per kind in
adapters.json). Deterministic (fixed seeds, one thread); a few KB per kind.
"""
import sys

sys.dont_write_bytecode = True

import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib.adapters_ref import Hooks, tent_step, vit_forward  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
IMNET = os.path.join(ROOT, 'test', 'fixtures', 'imagenet')
OUT = os.path.join(ROOT, 'test', 'fixtures', 'adapters')
HEADS = 12
LR = 0.01
DEPTH, D, MLP = 2, 48, 96

# The cta-eval options each fixture corresponds to (adapters.json; the test passes them).
KINDS = OrderedDict(
    lora={'options': {'rank': 2, 'loraAlpha': 4}, 'ref': {'rank': 2, 'alpha': 4}},
    kadaptation={'options': {'kronFactors': 4}, 'ref': {'kron_scale': 160.0}},
    adapter={'options': {'adapterDim': 8}, 'ref': {}},
    # lr 1: the shared rule's update is small next to its U(−1, 1)-sized values, and the float32
    # difference after − before would lose its digits at lr 0.01 (one SGD step is linear in lr).
    compacter={'options': {'kronFactors': 4, 'adapterDim': 8}, 'ref': {}, 'lr': 1.0},
    vida={'options': {'vidaHighRank': 4, 'vidaScaleUpdate': 'off'}, 'ref': {'scales': (1.0, 1.0)}},
)


def shapes(kind):
    """Parameter name -> PyTorch shape, in cta-eval's order (src/adapters/<kind>.ts)."""
    out = OrderedDict()
    if kind == 'lora':
        for b in range(DEPTH):
            for s in 'qv':
                out[f'blocks.{b}.attn.qkv.lora_A.{s}.weight'] = (2, D)
                out[f'blocks.{b}.attn.qkv.lora_B.{s}.weight'] = (D, 2)
    elif kind == 'kadaptation':
        n = 4
        for b in range(DEPTH):
            for s in 'qv':
                if b == 0:
                    out[f'kadaptation.{s}.rule_left'] = (n, n, 1)
                    out[f'kadaptation.{s}.rule_right'] = (n, 1, n)
                out[f'blocks.{b}.attn.qkv.kadaptation.{s}.W_left'] = (n, D // n, 1)
                out[f'blocks.{b}.attn.qkv.kadaptation.{s}.W_right'] = (n, 1, D // n)
    elif kind == 'adapter':
        for b in range(DEPTH):
            for br in ('attn', 'mlp'):
                p = f'blocks.{b}.{br}.adapter'
                out[f'{p}.down.weight'] = (8, D)
                out[f'{p}.down.bias'] = (8,)
                out[f'{p}.up.weight'] = (D, 8)
                out[f'{p}.up.bias'] = (D,)
    elif kind == 'compacter':
        n, m = 4, 8
        out['compacter.phm_rule'] = (n, n, n)
        for b in range(DEPTH):
            for br in ('attn', 'mlp'):
                for proj, i, o in (('down', D, m), ('up', m, D)):
                    p = f'blocks.{b}.{br}.compacter.{proj}'
                    out[f'{p}.W_left'] = (n, i // n, 1)
                    out[f'{p}.W_right'] = (n, 1, o // n)
                    out[f'{p}.b'] = (o,)
    elif kind == 'vida':
        for b in range(DEPTH):
            for name, o in (('attn.qkv', 3 * D), ('attn.proj', D)):
                p = f'blocks.{b}.{name}'
                out[f'{p}.vida_down.weight'] = (1, D)
                out[f'{p}.vida_up.weight'] = (o, 1)
                out[f'{p}.vida_down2.weight'] = (4, D)
                out[f'{p}.vida_up2.weight'] = (o, 4)
    return out


def init_values(kind, gen):
    """Random non-zero values of a size that moves the logits visibly but keeps them tame."""
    vals = OrderedDict()
    for name, shape in shapes(kind).items():
        scale = 0.5 if 'rule' in name else 0.15
        if kind == 'kadaptation' and 'rule' not in name:
            scale = 0.05
        t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        vals[name] = t.to(torch.float32).to(torch.float64)  # what the fixture stores, exactly
    return vals


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = {k: torch.from_numpy(v.copy()).to(torch.float64) for k, v in st.load(os.path.join(IMNET, 'vit_small.safetensors'))[0].items()}
    u8 = np.load(os.path.join(IMNET, 'vit_small.input.npy'))
    x = torch.from_numpy(u8.astype(np.float64) / 255.0)
    # The restated ViT without modules reproduces the model fixture's own logits.
    base = vit_forward(sd, x, HEADS, Hooks())
    ref = torch.from_numpy(st.load(os.path.join(IMNET, 'vit_small.io.safetensors'))[0]['logits'].copy()).to(torch.float64)
    assert torch.allclose(base, ref, rtol=1e-5, atol=1e-5), (base - ref).abs().max()
    gen = torch.Generator().manual_seed(70)
    meta = {'generator': 'scripts/make-adapter-fixtures.py', 'torch': torch.__version__}
    index = OrderedDict(heads=HEADS, kinds=OrderedDict())
    for kind, spec in KINDS.items():
        init = init_values(kind, gen)
        lr = spec.get('lr', LR)
        z, loss, new = tent_step(sd, x, HEADS, kind, init, spec['ref'], lr)
        io = OrderedDict(logits=z)
        for k, v in init.items():
            io[f'init.{k}'] = v
        for k, v in new.items():
            io[f'delta.{k}'] = v - init[k]  # the update itself (float32 keeps its digits)
        st.save(os.path.join(OUT, f'{kind}.safetensors'), io, meta)
        delta = max((new[k] - init[k]).abs().max().item() for k in init)
        index['kinds'][kind] = {'options': spec['options'], 'lr': lr, 'params': list(init.keys())}
        print(f'  {kind}: {len(init)} tensors, {sum(v.numel() for v in init.values())} scalars, loss {loss:.4f}, |delta| max {delta:.2e}')
    with open(os.path.join(OUT, 'adapters.json'), 'w') as f:
        json.dump(index, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
