#!/usr/bin/python3
"""Generates the RoTTA and LAME parity fixtures test/fixtures/adapt/{rotta,lame}.{json,safetensors}
for src/algorithms/rotta.test.ts and src/algorithms/lame.test.ts.

Run from the repository root with Debian's PyTorch (torch 1.13, numpy 1.24):

    /usr/bin/python3 scripts/make-rotta-lame-fixtures.py

Reads the committed fixture models (test/fixtures/models/{resnext_small,wrn_small}.pt) and the
batches x0..x2 of test/fixtures/adapt/inputs.safetensors (8 images each) and runs the float64
re-statements in scripts/fixtures_lib/{rotta_ref,lame_ref}.py for three batches.

RoTTA (resnext_small, Adam lr 1e-3 betas (0.9, 0.999), nu 0.001, alpha 0.05, lambda_t = lambda_u
= 1 as published) with a memory bank of capacity 10 updated every 6 samples, so that three
batches of 8 fill the bank, evict from it and update four times, twice inside one batch (the
published 64 / 64 would need eight batches before the first update). Stored: the teacher output
per batch (out<k>), the final trained affines and robust-BN statistics of student (final.<key>)
and teacher (teacher.<key>); the JSON has the per-batch counters, pseudo-labels, entropies and the
bank content after each batch ([sample id, class, age] in the bank's order). The strong
augmentation of update j is the surrogate clip(b*x, 0, 1), flipped left-right when f is 1, with
(b, f) in the JSON (the real augmentation ops are checked in src/algorithms/augment.test.ts).
The smallest gap between two compared bank scores is printed and stored (min_score_gap): far from
float32 round-off, so float32 entropies make the same bank decisions.

LAME: the outputs Y per batch (y<k>), the features and logits of the source model (feat<k>,
logits<k>) and the steps run, for the knn / rbf / linear affinities on resnext_small (k = 5) and
knn with symmetrisation on wrn_small (k = 3).

JSON float32_torch_rel_err: the same cases run in float32 PyTorch against the float64 reference.
Deterministic (fixed seeds, one thread).
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import copy  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib.lame_ref import lame_step  # noqa: E402
from fixtures_lib.models import CifarResNeXt, WideResNet  # noqa: E402
from fixtures_lib.rotta_ref import configure_rotta, rbn_stats, run_rotta  # noqa: E402

ADAPT = os.path.join(ROOT, 'test', 'fixtures', 'adapt')
MODELS = os.path.join(ROOT, 'test', 'fixtures', 'models')
META = {'generator': 'scripts/make-rotta-lame-fixtures.py', 'torch': torch.__version__.split('+')[0]}
RESNEXT_CFG = dict(depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32), num_classes=10)
WRN_CFG = dict(depth=16, widen_factor=1, num_classes=10)
FMNIST_CFG = dict(depth=11, cardinality=4, base_width=32, stem=8, planes=(8, 16, 32), num_classes=10)
ROTTA = dict(capacity=6, frequency=5, nu=0.001, alpha=0.05, lambda_t=1.0, lambda_u=1.0,
             optimizer={'name': 'adam', 'lr': 1e-3, 'betas': [0.9, 0.999], 'eps': 1e-8})
LAME_CASES = [
    dict(case='fmnist_knn', model='fmnist_resnext', affinity='knn', knn=5, force_symmetry=False),
    dict(case='fmnist_rbf', model='fmnist_resnext', affinity='rbf', knn=5, force_symmetry=False),
    dict(case='fmnist_linear', model='fmnist_resnext', affinity='linear', knn=5, force_symmetry=False),
    dict(case='wrn_knn_sym', model='wrn_small', affinity='knn', knn=3, force_symmetry=True),
]


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write('\n')


def load_source(name):
    if name == 'fmnist_resnext':  # the shipped demo model (assets/models/README.md)
        model = CifarResNeXt(**FMNIST_CFG)
        sd, _ = st.load(os.path.join(ROOT, 'assets', 'models', 'fmnist-resnext.safetensors'))
        ref = model.state_dict()
        model.load_state_dict({k: torch.from_numpy(np.array(v)).reshape(ref[k].shape) for k, v in sd.items()})
    else:
        model = CifarResNeXt(**RESNEXT_CFG) if name == 'resnext_small' else WideResNet(**WRN_CFG)
        model.load_state_dict(torch.load(os.path.join(MODELS, f'{name}.pt')))
    return model.double().eval()


def rel(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def surrogate(params):
    def augment(j, x):
        b, f = params[j]
        y = (x * b).clamp(0.0, 1.0)
        return torch.flip(y, dims=[3]) if f else y
    return augment


def rotta_case(xs, gen):
    c = ROTTA
    source = load_source('fmnist_resnext')
    n_updates = sum(x.shape[0] for x in xs) // c['frequency']
    aug = [(float(torch.empty(()).uniform_(0.7, 1.3, generator=gen)), int(torch.rand((), generator=gen) < 0.5))
           for _ in range(n_updates)]

    def run(src, inputs):
        model, trained = configure_rotta(src, c['alpha'])
        outs, recs, teacher, bank = run_rotta(model, trained, inputs, c['optimizer'], c['capacity'], c['frequency'],
                                              c['nu'], c['lambda_t'], c['lambda_u'], 10, surrogate(aug))
        final = OrderedDict()
        tp = dict(teacher.named_parameters())
        for n, p in trained:
            final[f'final.{n}'] = p.detach().clone()
        for k, v in rbn_stats(model).items():
            final[f'final.{k}'] = v
        for n, _ in trained:
            final[f'teacher.{n}'] = tp[n].detach().clone()
        for k, v in rbn_stats(teacher).items():
            final[f'teacher.{k}'] = v
        return outs, recs, final, [n for n, _ in trained], bank

    outs, recs, final, trained, bank = run(source, xs)
    assert sum(r['updates'] for r in recs) == n_updates
    assert all(v > 0 for v in bank.paths.values()), bank.paths
    assert any(r['admitted'] < 8 for r in recs), 'no sample was refused: the eviction rule is not exercised'
    t = OrderedDict((f'out{k}', y) for k, y in enumerate(outs))
    t.update(final)
    st.save(os.path.join(ADAPT, 'rotta.safetensors'), t, META)
    outs32, _, final32, _, _ = run(copy.deepcopy(source).float(), [x.float() for x in xs])
    got = OrderedDict((f'out{k}', y) for k, y in enumerate(outs32))
    got.update(final32)
    f32 = {k: float(f'{rel(got[k], t[k]):.3e}') for k in got}
    for k, r in enumerate(recs):
        print(f'  adapt/rotta batch {k}: updates {r["updates"]} admitted {r["admitted"]} bank {r["bank"]} '
              f'losses {[round(v, 5) for v in r["losses"]]}')
    print(f'  adapt/rotta bank rules {bank.paths}')
    print(f'  adapt/rotta min bank score gap {bank.min_gap:.2e}; float32 torch max rel err {max(f32.values()):.2e}')
    assert bank.min_gap > 1e-4, bank.min_gap
    write_json(os.path.join(ADAPT, 'rotta.json'), {
        'case': 'rotta', 'algorithm': 'rotta', 'model': 'models/resnext_small',
        'inputs': 'inputs.safetensors (x0..x2)', 'batch_size': 8, 'optimizer': c['optimizer'],
        'memory_size': c['capacity'], 'update_frequency': c['frequency'], 'nu': c['nu'], 'alpha': c['alpha'],
        'lambda_t': c['lambda_t'], 'lambda_u': c['lambda_u'],
        'augment': [{'brightness': b, 'flip': bool(f)} for b, f in aug],
        'augment_rule': 'clip(brightness * x, 0, 1), then flipped left-right when flip',
        'trained': trained, 'batches': recs, 'bank_rules': bank.paths, 'min_score_gap': float(f'{bank.min_gap:.3e}'),
        'float32_torch_rel_err': f32})


def lame_cases(xs):
    t = OrderedDict()
    cases = []
    for c in LAME_CASES:
        src = load_source(c['model'])
        steps, f32 = [], {}
        for k, x in enumerate(xs):
            y, n, feats, logits = lame_step(src, x, c['affinity'], c['knn'], c['force_symmetry'])
            y32, _, _, _ = lame_step(copy.deepcopy(src).float(), x.float(), c['affinity'], c['knn'], c['force_symmetry'])
            t[f'{c["case"]}.y{k}'] = y
            if c['affinity'] == 'knn':  # features and logits once per model
                t[f'{c["model"]}.feat{k}'] = feats
                t[f'{c["model"]}.logits{k}'] = logits
            changed = int((y.argmax(1) != logits.argmax(1)).sum())
            steps.append({'steps': n, 'changed': changed})
            f32[f'y{k}'] = float(f'{rel(y32, y):.3e}')
            print(f'  adapt/lame {c["case"]} batch {k}: steps {n} changed {changed}')
        cases.append({**c, 'batches': steps, 'float32_torch_rel_err': f32})
    st.save(os.path.join(ADAPT, 'lame.safetensors'), t, META)
    write_json(os.path.join(ADAPT, 'lame.json'), {
        'algorithm': 'lame', 'inputs': 'inputs.safetensors (x0..x2)', 'batch_size': 8, 'max_steps': 100,
        'cases': cases})


def fmnist_inputs(gen):
    """24 Fashion-MNIST test images (a seeded choice), zero-padded to 32x32, the last 16 with
    Gaussian noise (std 0.15, a shift for the methods to react to), quantised to uint8 [24, 32, 32];
    the models see them as the grey value replicated to RGB, divided by 255."""
    with gzip.open(os.path.join(ROOT, 'assets', 'fashion-mnist', 't10k-images-idx3-ubyte.gz')) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    idx = torch.randperm(raw.shape[0], generator=gen)[:24].numpy()
    x = torch.zeros(24, 32, 32, dtype=torch.float64)
    x[:, 2:30, 2:30] = torch.from_numpy(raw[idx].astype(np.float64) / 255.0)
    x[8:] += 0.15 * torch.randn(16, 32, 32, generator=gen, dtype=torch.float64)
    return idx, (x.clamp(0, 1) * 255).round().to(torch.uint8)


def as_batches(u8):
    x = u8.to(torch.float64).div(255.0).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return [x[i:i + 8] for i in range(0, 24, 8)]


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(53)
    idx, u8 = fmnist_inputs(gen)
    np.save(os.path.join(ADAPT, 'fmnist_inputs.npy'), u8.numpy())
    print(f'  adapt/fmnist_inputs.npy: Fashion-MNIST test images {" ".join(map(str, idx))}')
    xs = as_batches(u8)
    rotta_case(xs, gen)
    lame_cases(xs)
    print('done')


if __name__ == '__main__':
    main()
