#!/usr/bin/python3
"""Generates test/fixtures/prompt/ (VPT and L2P prompts on the reduced ViT, src/adapters/prompt.test.ts).
Run from the repository root with Debian's PyTorch:

    /usr/bin/python3 scripts/make-prompt-fixtures.py

The model is test/fixtures/imagenet/vit_small.safetensors (timm names: width 48, 12 heads, depth 2,
patch 8, 32 px, 10 classes; written by scripts/make-imagenet-fixtures.py). Everything is computed in
float64 with fixtures_lib/prompt_ref.py (the plain-PyTorch re-statement of VPT and L2P) and stored
as float32:

  input.npy            uint8 [4, 3, 32, 32] (NCHW; the model sees (x/255 - 0.5)/0.5)
  prompts.safetensors  per variant <v> in vpt_shallow, vpt_deep, l2p, l2p_sample:
                         <v>.init.<name>   the initial prompt parameters (VPT: U(-v, v), L2P: U[0, 0.01))
                         <v>.logits        the logits with those prompts
                         <v>.tent.<name>   the parameters after one Tent step (SGD lr 0.05, momentum
                                           0.9; loss = mean entropy, for L2P minus lambda * reduce_sim,
                                           lambda = 1) on the prompts only (the backbone frozen)
                       and for L2P: l2p.query (the frozen model's [CLS] features), l2p.sim, l2p.idx
                       (batchwise selection, int64 [B, N]), l2p.reduce_sim; l2p_sample.idx (per
                       sample). The pool starts from spread-out values (keys N(0, 1), prompts
                       N(0, 0.25)) so that the samples choose different prompts. The script asserts that every top-N choice has a similarity margin of
                       at least 1e-4, so float32 cannot flip a selection.

Deterministic (fixed seeds, one CPU thread).
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from fixtures_lib import prompt_ref as pr  # noqa: E402
from fixtures_lib import safetensors_io as st  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'prompt')
MODEL = os.path.join(ROOT, 'test', 'fixtures', 'imagenet', 'vit_small.safetensors')
META = {'generator': 'scripts/make-prompt-fixtures.py', 'torch': torch.__version__.split('+')[0]}
torch.set_num_threads(1)

HEADS = 12
TOKENS = 5  # VPT P
POOL, LP, TOP_N = 6, 3, 2  # L2P M, Lp, N
LR, MOMENTUM, PULL = 0.05, 0.9, 1.0


def tent_step(params, loss_fn):
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss.item()


def selection_margin(sim, top_n):
    s = sim.sort(1, descending=True).values
    return (s[:, top_n - 1] - s[:, top_n]).min().item()


def main():
    os.makedirs(OUT, exist_ok=True)
    raw, _ = st.load(MODEL)
    sd = {k: torch.from_numpy(v.astype(np.float64)) for k, v in raw.items()}
    depth = pr.depth_of(sd)
    dim = sd['cls_token'].shape[-1]
    patch = sd['patch_embed.proj.weight'].shape[-1]
    rng = np.random.RandomState(7)
    u8 = rng.randint(0, 256, size=(4, 3, 32, 32)).astype(np.uint8)
    np.save(os.path.join(OUT, 'input.npy'), u8)
    x = (torch.from_numpy(u8.astype(np.float64)) / 255 - 0.5) / 0.5
    out = OrderedDict()
    summary = {}

    for name, deep, seed in (('vpt_shallow', False, 11), ('vpt_deep', True, 12)):
        gen = torch.Generator().manual_seed(seed)
        init = pr.vpt_init(gen, depth, TOKENS, dim, patch, deep)
        params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        with torch.no_grad():
            _, logits = pr.forward_vpt(sd, x, HEADS, params)
        loss = tent_step(list(params.values()), lambda: pr.entropy_mean(pr.forward_vpt(sd, x, HEADS, params)[1]))
        for k, v in init.items():
            out[f'{name}.init.{k}'] = v
        out[f'{name}.logits'] = logits
        for k, v in params.items():
            out[f'{name}.tent.{k}'] = v.detach()
        summary[name] = {'loss': loss, 'max_update': max((params[k].detach() - init[k]).abs().max().item() for k in init)}

    # Spread-out keys and visible prompts (not L2P's U[0, 0.01) start, whose keys all point nearly
    # the same way), so that samples choose differently and batchwise selection differs from
    # per-sample selection; the TS test loads these values instead of drawing its own.
    gen = torch.Generator().manual_seed(13)
    init = {'prompt_pool.prompt': 0.5 * torch.randn((POOL, LP, dim), generator=gen, dtype=torch.float64),
            'prompt_pool.key': torch.randn((POOL, dim), generator=gen, dtype=torch.float64)}
    for name, batchwise in (('l2p', True), ('l2p_sample', False)):
        params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        with torch.no_grad():
            _, logits, idx, reduce_sim, query = pr.forward_l2p(sd, x, HEADS, params['prompt_pool.key'], params['prompt_pool.prompt'], TOP_N, batchwise)
        _, sim, _ = pr.l2p_select(init['prompt_pool.key'], query, TOP_N, batchwise)
        margin = selection_margin(sim, TOP_N)
        assert margin >= 1e-4, margin
        if not batchwise:
            rows = {tuple(sorted(r)) for r in idx.tolist()}
            assert len(rows) > 1, rows  # the samples disagree

        def loss_fn():
            _, z, _, rs, _ = pr.forward_l2p(sd, x, HEADS, params['prompt_pool.key'], params['prompt_pool.prompt'], TOP_N, batchwise)
            return pr.entropy_mean(z) - PULL * rs
        loss = tent_step(list(params.values()), loss_fn)
        if name == 'l2p':
            for k, v in init.items():
                out[f'l2p.init.{k}'] = v
            out['l2p.query'] = query
            out['l2p.sim'] = sim
            out['l2p.reduce_sim'] = reduce_sim.reshape(())
        out[f'{name}.idx'] = idx
        out[f'{name}.logits'] = logits
        for k, v in params.items():
            out[f'{name}.tent.{k}'] = v.detach()
        summary[name] = {'loss': loss, 'idx': idx.tolist(), 'margin': margin,
                         'max_update': {k: (params[k].detach() - init[k]).abs().max().item() for k in init}}
    st.save(os.path.join(OUT, 'prompts.safetensors'), out, META)
    with open(os.path.join(OUT, 'config.json'), 'w') as f:
        json.dump({'heads': HEADS, 'tokens': TOKENS, 'pool': POOL, 'lp': LP, 'top_n': TOP_N, 'lr': LR, 'momentum': MOMENTUM,
                   'pull': PULL, 'summary': summary, 'generator': META}, f, indent=1)
        f.write('\n')
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(json.dumps(summary))
    print(f'  {total} bytes in {OUT}')


if __name__ == '__main__':
    main()
