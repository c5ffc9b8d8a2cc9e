#!/usr/bin/python3
"""Generates the CoTTA parity fixtures test/fixtures/adapt/{cotta,cotta_bn}.{json,safetensors}
for src/algorithms/cotta.test.ts.

Run from the repository root with Debian's PyTorch (torch 1.13, numpy 1.24):

    /usr/bin/python3 scripts/make-cotta-fixtures.py

Reads the committed fixture model (test/fixtures/models/resnext_small.pt) and the batches
x0..x2 of test/fixtures/adapt/inputs.safetensors, runs the float64 re-statement in
scripts/fixtures_lib/cotta_ref.py for three steps and stores: the teacher target returned per step
(target<k>), the final trained parameters of student (final.<name>) and teacher (teacher.<name>),
and the replayed random draws. Those are the point of the design: the augmentations and the
restore masks are random, so the fixture fixes them and the test feeds them to the TS method.
  - augmentation j of step k is the surrogate clip(b·x, 0, 1), flipped left-right when f is 1,
    with (b, f) in the JSON ('augment'); the real augmentation ops are checked against
    torchvision in src/algorithms/augment.test.ts, here only their use matters;
  - restore<k> (int64): the flat indices, over the trained parameters concatenated in
    named_parameters order (PyTorch layouts), of the elements restored after step k, drawn as
    torch.rand < p.
The anchor threshold is placed between the anchor confidences of the batches so that some steps
average the augmented teacher and some do not. JSON float32_torch_rel_err: the same case run in
float32 PyTorch against this float64 reference (how close float32 can get). Deterministic (fixed
seeds, one thread).
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib.cotta_ref import anchor_confidence, configure_cotta, run_cotta  # noqa: E402
from fixtures_lib.models import CifarResNeXt  # noqa: E402

ADAPT = os.path.join(ROOT, 'test', 'fixtures', 'adapt')
MODELS = os.path.join(ROOT, 'test', 'fixtures', 'models')
META = {'generator': 'scripts/make-cotta-fixtures.py', 'torch': torch.__version__.split('+')[0]}
RESNEXT_CFG = dict(depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32), num_classes=10,
                   mu=(0.49, 0.48, 0.45), sigma=(0.25, 0.24, 0.26))
N_AUG = 3
ALPHA = 0.999      # published
RESTORE_P = 0.01   # published (CIFAR)
CASES = {
    # the CIFAR code: all parameters, Adam lr 1e-3 betas (0.9, 0.999), teacher→student CE
    'cotta': dict(train_all=True, symmetric=False,
                  optimizer={'name': 'adam', 'lr': 1e-3, 'betas': [0.9, 0.999], 'eps': 1e-8}),
    # MECTA's cotta_bn with the ImageNet optimizer and loss: BN affines, SGD nesterov, symmetric CE
    'cotta_bn': dict(train_all=False, symmetric=True,
                     optimizer={'name': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'nesterov': True}),
}


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write('\n')


def load_source():
    model = CifarResNeXt(**RESNEXT_CFG)
    model.load_state_dict(torch.load(os.path.join(MODELS, 'resnext_small.pt')))
    return model.double().eval()


def rel(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def surrogate_augment(x, b, f):
    y = (x * b).clamp(0.0, 1.0)
    return torch.flip(y, dims=[3]) if f else y


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(31)
    source = load_source()
    raw, _ = st.load(os.path.join(ADAPT, 'inputs.safetensors'))
    xs = [torch.from_numpy(raw[f'x{i}'].astype(np.float64)) for i in range(3)]
    # anchor confidences: the anchor is the configured source model, the same for every case
    anchor, _ = configure_cotta(source, True)
    confs = [anchor_confidence(anchor, x) for x in xs]
    lo, hi = sorted(confs)[0:2]
    ap = round((lo + hi) / 2, 6)
    assert min(abs(c - ap) for c in confs) > 1e-3, confs
    print(f'  anchor confidences {[round(c, 5) for c in confs]} -> ap {ap}')
    aug_params = [[(float(torch.empty(()).uniform_(0.7, 1.3, generator=gen)), int(torch.rand((), generator=gen) < 0.5))
                   for _ in range(N_AUG)] for _ in xs]
    for case, c in CASES.items():
        model, trained = configure_cotta(source, c['train_all'])
        sizes = [p.numel() for _, p in trained]
        total = sum(sizes)
        restore_idx, restore_sets = [], []
        for _ in xs:
            u = torch.rand(total, generator=gen, dtype=torch.float32)
            flat = u < RESTORE_P
            restore_idx.append(torch.nonzero(flat).flatten())
            sets, off = {}, 0
            for (n, p), s in zip(trained, sizes):
                sets[n] = flat[off:off + s].reshape(p.shape)
                off += s
            restore_sets.append(sets)

        def run(m, tr, inputs):
            augs = [[surrogate_augment(x, b, f) for b, f in ap_k] for x, ap_k in zip(inputs, aug_params)]
            return run_cotta(m, tr, inputs, c['optimizer'], ALPHA, ap, c['symmetric'], augs, restore_sets)

        targets, records, teacher = run(model, trained, xs)
        assert any(r['augmented'] for r in records) and not all(r['augmented'] for r in records)
        t = OrderedDict()
        for k, y in enumerate(targets):
            t[f'target{k}'] = y
        for k, ix in enumerate(restore_idx):
            t[f'restore{k}'] = ix
        tp = dict(teacher.named_parameters())
        for n, p in trained:
            t[f'final.{n}'] = p.detach().clone()
        for n, _ in trained:
            t[f'teacher.{n}'] = tp[n].detach().clone()
        st.save(os.path.join(ADAPT, f'{case}.safetensors'), t, META)
        # float32 PyTorch on the same draws
        m32, tr32 = configure_cotta(copy.deepcopy(source).float(), c['train_all'])
        tg32, _, te32 = run(m32, tr32, [x.float() for x in xs])
        got = OrderedDict((f'target{k}', y) for k, y in enumerate(tg32))
        t32 = dict(te32.named_parameters())
        for n, p in tr32:
            got[f'final.{n}'] = p.detach()
            got[f'teacher.{n}'] = t32[n].detach()
        f32 = {k: float(f'{rel(got[k], t[k]):.3e}') for k in got}
        for k, r in enumerate(records):
            print(f'  adapt/{case} step {k}: conf {r["anchor_confidence"]:.5f} augmented {r["augmented"]} '
                  f'loss {r["loss"]:.5f} restored {r["restored"]} of {total}')
        print(f'  adapt/{case} float32 torch max rel err {max(f32.values()):.2e}')
        write_json(os.path.join(ADAPT, f'{case}.json'), {
            'case': case, 'algorithm': case, 'optimizer': c['optimizer'], 'model': 'models/resnext_small',
            'inputs': 'inputs.safetensors (x0..x2)', 'batch_size': 8,
            'norm': 'batch statistics (train-mode BN, running statistics dropped) in student, teacher and anchor',
            'alpha': ALPHA, 'restore_p': RESTORE_P, 'anchor_threshold': ap, 'symmetric': c['symmetric'],
            'augmentations': N_AUG,
            'augment': [[{'brightness': b, 'flip': bool(f)} for b, f in ap_k] for ap_k in aug_params],
            'augment_rule': 'clip(brightness * x, 0, 1), then flipped left-right when flip',
            'trained': [n for n, _ in trained], 'steps': records, 'float32_torch_rel_err': f32})
    print('done')


if __name__ == '__main__':
    main()
