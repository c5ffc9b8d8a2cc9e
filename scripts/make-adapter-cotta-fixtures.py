#!/usr/bin/python3
"""Generates test/fixtures/adapters/cotta_vida.{json,safetensors}: `--alg cotta --adapt-params
vida` on the reduced ViT of test/fixtures/imagenet against the float64 re-statement of ViDA's
mean-teacher step (scripts/fixtures_lib/vida_cotta_ref.py), two steps.

    /usr/bin/python3 scripts/make-adapter-cotta-fixtures.py

The point is the scales: step 0 decides them from the teacher with 1, 1; step 1 from the teacher
with step 0's scales, which the teacher must have taken too. The augmented copies (the
uncertainty's, and CoTTA's averaged target's with the anchor gate always open) are replayed: copy
j of step k is the surrogate clip(b * x, 0, 1), flipped left-right when f (the real augmentation
ops are checked in src/algorithms/augment.test.ts; here only which model predicts them matters),
(b, f) in the JSON ('augment', 'target_augment'). Batch 0 is vit_small.input.npy, batch 1 the same
images flipped left-right. Stored: the module parameters' initial values `init.<name>` (random,
every factor non-zero), per step the teacher target `target<k>`, and the final updates of the
student `student.<name>` and the teacher `teacher.<name>` (final - init). The JSON holds U and the
scales per step and, for the record, how far the targets would move if only the student took the
scales. Deterministic (fixed seeds, one thread).
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
from fixtures_lib.vida_cotta_ref import run  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
IMNET = os.path.join(ROOT, 'test', 'fixtures', 'imagenet')
OUT = os.path.join(ROOT, 'test', 'fixtures', 'adapters')
HEADS = 12
DEPTH, D = 2, 48
LOW, HIGH = 1, 4
N_AUG = 3         # --vida-augmentations (the uncertainty)
N_TARGET = 2      # --cotta-augmentations (the averaged target)
LR = 0.1          # SGD without momentum
ALPHA = 0.8       # the official ImageNet ViDA's OPTIM.MT_ViDA (the EMA of the ViDA parameters)
MODE = 'paper'    # both scales move, so both branches' use of them is checked


def shapes():
    """Parameter name -> PyTorch shape, in cta-eval's order (src/adapters/vida.ts)."""
    out = OrderedDict()
    for b in range(DEPTH):
        for name, o in (('attn.qkv', 3 * D), ('attn.proj', D)):
            p = f'blocks.{b}.{name}'
            out[f'{p}.vida_down.weight'] = (LOW, D)
            out[f'{p}.vida_up.weight'] = (o, LOW)
            out[f'{p}.vida_down2.weight'] = (HIGH, D)
            out[f'{p}.vida_up2.weight'] = (o, HIGH)
    return out


def surrogate(x, b, f):
    y = (x * b).clamp(0.0, 1.0)
    return torch.flip(y, dims=[3]) if f else y


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    os.makedirs(OUT, exist_ok=True)
    sd = {k: torch.from_numpy(v.copy()).to(torch.float64) for k, v in st.load(os.path.join(IMNET, 'vit_small.safetensors'))[0].items()}
    u8 = np.load(os.path.join(IMNET, 'vit_small.input.npy'))
    x0 = torch.from_numpy(u8.astype(np.float64) / 255.0)
    xs = [x0, torch.flip(x0, dims=[3])]
    gen = torch.Generator().manual_seed(71)
    init = OrderedDict()
    for name, shape in shapes().items():
        init[name] = (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3).to(torch.float32).to(torch.float64)
    params = [[(round(float(torch.empty((), dtype=torch.float64).uniform_(0.4, 1.6, generator=gen)), 6), int(torch.rand((), generator=gen) < 0.5))
               for _ in range(N_AUG)] for _ in xs]
    tparams = [[(round(float(torch.empty((), dtype=torch.float64).uniform_(0.7, 1.3, generator=gen)), 6), int(torch.rand((), generator=gen) < 0.5))
                for _ in range(N_TARGET)] for _ in xs]
    augs = [[surrogate(x, b, f) for b, f in ps] for x, ps in zip(xs, params)]
    taugs = [[surrogate(x, b, f) for b, f in ps] for x, ps in zip(xs, tparams)]
    # the threshold between the two steps' uncertainties, so that both branches of the allotment run
    probe, _, _ = run(sd, HEADS, xs, augs, taugs, init, LR, ALPHA, 1e9, MODE)
    u0 = probe[0]['u']
    thr = None
    for cand in (u0 * 0.9, u0 * 1.1):
        steps, _, _ = run(sd, HEADS, xs, augs, taugs, init, LR, ALPHA, cand, MODE)
        if (steps[0]['u'] >= cand) != (steps[1]['u'] >= cand) and min(abs(s['u'] - cand) for s in steps) > 1e-3 * cand:
            thr = round(cand, 8)
            break
    assert thr is not None, [s['u'] for s in probe]
    steps, student, teacher = run(sd, HEADS, xs, augs, taugs, init, LR, ALPHA, thr, MODE)
    old, _, _ = run(sd, HEADS, xs, augs, taugs, init, LR, ALPHA, thr, MODE, teacher_decides=False)
    io = OrderedDict()
    for k, v in init.items():
        io[f'init.{k}'] = v.to(torch.float32)  # exact: the values are float32 ones
    for i, s in enumerate(steps):
        io[f'target{i}'] = s['target']
    for k in init:
        io[f'student.{k}'] = (student[k] - init[k]).to(torch.float32)
        io[f'teacher.{k}'] = (teacher[k] - init[k]).to(torch.float32)
    meta = {'generator': 'scripts/make-adapter-cotta-fixtures.py', 'torch': torch.__version__.split('+')[0]}
    st.save(os.path.join(OUT, 'cotta_vida.safetensors'), io, meta)
    index = OrderedDict(
        options=OrderedDict(vidaLowRank=LOW, vidaHighRank=HIGH, vidaScaleUpdate=MODE, vidaUncThr=thr, vidaAugmentations=N_AUG,
                            cottaAlpha=ALPHA, cottaRestoreProb=0.0, cottaAnchorThreshold=1.0, cottaAugmentations=N_TARGET, cottaSymmetric=False,
                            optimizer='sgd', lr=LR, momentum=0.0),
        params=list(init.keys()),
        augment=[[{'brightness': b, 'flip': bool(f)} for b, f in ps] for ps in params],
        target_augment=[[{'brightness': b, 'flip': bool(f)} for b, f in ps] for ps in tparams],
        augment_rule='clip(brightness * x, 0, 1), then flipped left-right when flip; batch 1 = batch 0 flipped left-right',
        steps=[{'u': s['u'], 'scales': list(s['scales']), 'loss': s['loss']} for s in steps],
        student_only_target_rel_diff=[rel(o['target'], s['target']) for o, s in zip(old, steps)],
    )
    with open(os.path.join(OUT, 'cotta_vida.json'), 'w') as f:
        json.dump(index, f, indent=1)
        f.write('\n')
    for i, s in enumerate(steps):
        print(f"  step {i}: U {s['u']:.6f} (thr {thr}) scales {s['scales'][0]:.6f}, {s['scales'][1]:.6f} loss {s['loss']:.5f}")
    print('  targets if only the student took the scales: relative change', [f'{v:.2e}' for v in index['student_only_target_rel_diff']])
    d = max((student[k] - init[k]).abs().max().item() for k in init)
    dt = max((teacher[k] - init[k]).abs().max().item() for k in init)
    print(f'  |student update| max {d:.2e}, |teacher update| max {dt:.2e}; {os.path.getsize(os.path.join(OUT, "cotta_vida.safetensors"))} bytes')


if __name__ == '__main__':
    main()
