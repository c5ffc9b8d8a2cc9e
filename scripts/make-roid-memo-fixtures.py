#!/usr/bin/python3
"""Generates the parity fixtures of ROID, RDumb, BN-α and MEMO (test/fixtures/adapt/{roid,roid_sgd,
rdumb,bn_alpha,memo}.{json,safetensors}), of ROID's augmentation (test/fixtures/augment/
roid_tta.{json,safetensors}: reflect padding, no blur or noise) and of the AugMix operations
(test/fixtures/augment/augmix.{json,safetensors}) for src/algorithms/{roid,rdumb,bn-alpha,memo,augmix}.test.ts.

Run from the repository root with Debian's PyTorch (torch 1.13, torchvision 0.14, Pillow 9.4):

    /usr/bin/python3 scripts/make-roid-memo-fixtures.py

Model: the committed test/fixtures/models/resnext_small.pt; batches x0..x2 of
test/fixtures/adapt/inputs.safetensors. The float64 re-statements are
scripts/fixtures_lib/{roid_ref,memo_ref,augmix_ref}.py (RDumb reuses adapt_ref.run_eata). Random
draws are fixed here and stored so the TypeScript tests replay them:
  - ROID's augmented copy at step k: the surrogate clip(b * x, 0, 1), flipped left-right when f
    (JSON 'augment'); the real augmentation ops are checked in augment.test.ts;
  - MEMO's views: AugMix parameters per view (JSON 'views'), applied by PIL here and by
    src/algorithms/augmix.ts there, to the 8-bit image floor(255 x + 0.5) of each sample;
  - the AugMix fixture: PIL outputs of each operation on small random 8-bit images, PIL bilinear
    resizes (RandomResizedCrop's), and whole views drawn from the official distributions.
JSON float32_torch_rel_err: the same case in float32 PyTorch against the float64 reference.
Deterministic (fixed seeds, one thread).
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib import adapt_ref  # noqa: E402
from fixtures_lib.adapt_ref import configure_batch_bn, run_eata  # noqa: E402
from fixtures_lib.roid_ref import make_optimizer as _nesterov_optimizer  # noqa: E402
from fixtures_lib.augmix_ref import OPS, apply_op, augmix_view, draw_params  # noqa: E402
from fixtures_lib.memo_ref import alpha_bn_model, run_memo  # noqa: E402
from fixtures_lib.models import CifarResNeXt  # noqa: E402
from fixtures_lib.roid_ref import roid_tta, run_roid  # noqa: E402

ADAPT = os.path.join(ROOT, 'test', 'fixtures', 'adapt')
AUGMENT = os.path.join(ROOT, 'test', 'fixtures', 'augment')
MODELS = os.path.join(ROOT, 'test', 'fixtures', 'models')
META = {'generator': 'scripts/make-roid-memo-fixtures.py', 'torch': torch.__version__.split('+')[0]}
RESNEXT_CFG = dict(depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32), num_classes=10,
                   mu=(0.49, 0.48, 0.45), sigma=(0.25, 0.24, 0.26))
ADAM = {'name': 'adam', 'lr': 1e-3, 'betas': [0.9, 0.999], 'eps': 1e-8}          # ROID / RDumb CIFAR
SGD_NESTEROV = {'name': 'sgd', 'lr': 2.5e-4, 'momentum': 0.9, 'nesterov': True}  # ROID ImageNet
# RDumb: SGD (Nesterov) rather than the CIFAR Adam, whose sign-like first steps leave float32 PyTorch
# itself 3e-3 off the float64 reference on near-zero gradients; the reset is what is checked here
SGD_RDUMB = {'name': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'nesterov': True}
BN_ALPHA = 0.1          # BN.ALPHA
MEMO_OPT = {'name': 'sgd', 'lr': 0.005, 'momentum': 0.9, 'nesterov': True}      # memo.yaml + conf.py
MEMO_VIEWS = 4          # the published 32 / 64 scaled down for the fixture size
RDUMB_K = 2             # reset after every 2nd step (published 1000), so 3 steps see one reset
# the thresholds of the eta fixture (make-fixtures.py): the published 0.4·ln 10 selects almost no
# sample of the small random-weight model
E_MARGIN = 1.2
D_MARGIN = 0.9875


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')


def load_source():
    model = CifarResNeXt(**RESNEXT_CFG)
    model.load_state_dict(torch.load(os.path.join(MODELS, 'resnext_small.pt')))
    return model.double().eval()


def rel(a, b):
    a, b = a.double(), b.double()
    d = b.norm().item()
    return (a - b).norm().item() / d if d > 0 else (a - b).norm().item()


def surrogate(x, b, f):
    y = (x * b).clamp(0.0, 1.0)
    return torch.flip(y, dims=[3]) if f else y


def norm_params(model):
    return [(n, p) for n, p in model.named_parameters() if 'bn' in n or 'norm' in n]


def make_roid(source, xs, gen):
    for case, spec, consistency, prior in (('roid', ADAM, True, True), ('roid_sgd', SGD_NESTEROV, False, False)):
        augs = [(float(torch.empty(()).uniform_(0.7, 1.3, generator=gen)), int(torch.rand((), generator=gen) < 0.5))
                for _ in xs]

        def run(src, inputs):
            model, params, names = configure_batch_bn(src)
            preds, rec = run_roid(model, params, inputs, spec, lambda x, k: surrogate(x, *augs[k]),
                                  consistency=consistency, prior=prior)
            return preds, rec, OrderedDict((n, p.detach().clone()) for n, p in zip(names, params))

        preds, records, final = run(source, xs)
        assert min(r['mask_margin'] for r in records) > 1e-3, [r['mask_margin'] for r in records]
        t = OrderedDict((f'pred{k}', p) for k, p in enumerate(preds))
        for n, p in final.items():
            t[f'final.{n}'] = p
        st.save(os.path.join(ADAPT, f'{case}.safetensors'), t, META)
        p32, _, f32 = run(copy.deepcopy(source).float(), [x.float() for x in xs])
        got = OrderedDict((f'pred{k}', p) for k, p in enumerate(p32))
        got.update((f'final.{n}', p) for n, p in f32.items())
        errs = {k: float(f'{rel(got[k], t[k]):.3e}') for k in got}
        print(f'  adapt/{case}: kept {[r["kept"] for r in records]} losses {[round(r["loss"], 5) for r in records]} '
              f'min mask margin {min(r["mask_margin"] for r in records):.4f} float32 max rel {max(errs.values()):.2e}')
        write_json(os.path.join(ADAPT, f'{case}.json'), {
            'case': case, 'algorithm': 'roid', 'model': 'models/resnext_small', 'inputs': 'inputs.safetensors (x0..x2)',
            'batch_size': 8, 'optimizer': spec, 'consistency': consistency, 'prior_correction': prior,
            'weighting': True, 'temperature': 1 / 3, 'momentum_src': 0.99, 'momentum_probs': 0.9,
            'norm': 'batch statistics (running statistics dropped), norm-layer affines trained',
            'augment': [{'brightness': b, 'flip': bool(f)} for b, f in augs],
            'augment_rule': 'clip(brightness * x_kept, 0, 1), then flipped left-right when flip',
            'steps': [{k: r[k] for k in ('kept', 'loss', 'mask_margin', 'weights')} for r in records],
            'float32_torch_rel_err': errs})


def make_roid_tta(xs):
    """ROID's augmentation with fixed parameters on one image (reflect padding, no blur or noise)."""
    img = xs[1][:1]
    params = {'jitter_order': ['gamma', 'hue', 'contrast', 'brightness', 'saturation'], 'brightness': 1.27,
              'contrast': 0.81, 'saturation': 1.38, 'hue': -0.041, 'gamma': 1.17, 'pad': 16,
              'angle': 11.3, 'translate': [3, -2], 'scale': 1.07, 'shear': [0.0, 0.0], 'flip': True}
    out = roid_tta(img, params)
    y32 = roid_tta(img.float(), params)
    st.save(os.path.join(AUGMENT, 'roid_tta.safetensors'), OrderedDict(input=img, output=out), META)
    write_json(os.path.join(AUGMENT, 'roid_tta.json'), {
        'input': 'adapt/inputs.safetensors x1[0] (NCHW)', 'params': params,
        'pipeline': 'clip, jitter in jitter_order, reflect pad, affine (bilinear, fill 0), centre crop, flip, clip',
        'float32_abs_err': float(f'{(y32.double() - out).abs().max().item():.3e}')})
    print(f'  augment/roid_tta: float32 max abs err {(y32.double() - out).abs().max().item():.2e}')


def make_rdumb(source, xs):
    adapt_ref.make_optimizer = _nesterov_optimizer  # run_eata's optimizer, with the Nesterov flag honoured
    def run(src, inputs):
        model, params, names = configure_batch_bn(src)
        initial = copy.deepcopy(model.state_dict())
        logits, steps, _, _ = run_eata(model, params, names, inputs[:RDUMB_K], SGD_RDUMB, E_MARGIN, D_MARGIN)
        # the reset: source parameters, a fresh optimizer and no moving average
        model.load_state_dict(initial)
        more, steps2, _, _ = run_eata(model, params, names, inputs[RDUMB_K:], SGD_RDUMB, E_MARGIN, D_MARGIN)
        return logits + more, steps + steps2, OrderedDict((n, p.detach().clone()) for n, p in zip(names, params))

    logits, steps, final = run(source, xs)
    t = OrderedDict((f'logits{k}', l) for k, l in enumerate(logits))
    for n, p in final.items():
        t[f'final.{n}'] = p
    st.save(os.path.join(ADAPT, 'rdumb.safetensors'), t, META)
    print(f'  adapt/rdumb: used {[s["used"] for s in steps]}')
    write_json(os.path.join(ADAPT, 'rdumb.json'), {
        'case': 'rdumb', 'algorithm': 'rdumb', 'base': 'eta', 'reset_every': RDUMB_K, 'optimizer': SGD_RDUMB,
        'e_margin': E_MARGIN, 'd_margin': D_MARGIN, 'model': 'models/resnext_small',
        'inputs': 'inputs.safetensors (x0..x2)', 'batch_size': 8,
        'steps': [{k: s[k] for k in ('updated', 'reliable', 'used')} for s in steps]})


def make_bn_alpha(source, xs):
    model = alpha_bn_model(source, BN_ALPHA)
    t = OrderedDict()
    with torch.no_grad():
        for k, x in enumerate(xs):
            t[f'logits{k}'] = model(x)
        t['logits_single'] = model(xs[0][:1])
    st.save(os.path.join(ADAPT, 'bn_alpha.safetensors'), t, META)
    write_json(os.path.join(ADAPT, 'bn_alpha.json'), {
        'case': 'bn_alpha', 'alpha': BN_ALPHA, 'model': 'models/resnext_small',
        'inputs': 'inputs.safetensors (x0..x2; logits_single: the first image of x0 alone)',
        'norm': '(1 - alpha) * source + alpha * batch statistics, unbiased batch variance'})


def quantise(x):
    """[1,C,H,W] float in [0, 1] -> the 8-bit PIL image floor(255 x + 0.5) (what augmix.ts reads)."""
    a = np.floor(x[0].permute(1, 2, 0).double().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(a)


def make_memo(source, xs, rng):
    samples = [x[i:i + 1] for x in xs for i in range(2)]      # 3 steps of 2 samples
    params = [[draw_params(rng, 32, 32) for _ in range(MEMO_VIEWS)] for _ in samples]
    views = [torch.stack([augmix_view(quantise(s), p) for p in ps]).double() for s, ps in zip(samples, params)]

    def run(src, dtype):
        model = alpha_bn_model(src, BN_ALPHA).to(dtype)
        preds, losses = run_memo(model, [s.to(dtype) for s in samples], [v.to(dtype) for v in views], MEMO_OPT)
        return preds, losses, OrderedDict((n, p.detach().clone()) for n, p in model.named_parameters())

    preds, losses, final = run(source, torch.float64)
    init = OrderedDict(source.named_parameters())
    t = OrderedDict()
    for k in range(len(xs)):
        t[f'logits{k}'] = torch.cat(preds[2 * k:2 * k + 2])
    small = [n for n in final if 'bn' in n or n.startswith('classifier') or n.startswith('fc')]
    for n in small:
        t[f'final.{n}'] = final[n]
    # every parameter's update norm after the last sample (the full tensors would not fit the budget)
    t['update_norms'] = torch.tensor([(final[n] - init[n].detach()).norm().item() for n in final])
    st.save(os.path.join(ADAPT, 'memo.safetensors'), t, META)
    p32, _, f32 = run(copy.deepcopy(source).float(), torch.float32)
    errs = {f'logits{k}': float(f'{rel(torch.cat(p32[2 * k:2 * k + 2]), t[f"logits{k}"]):.3e}') for k in range(len(xs))}
    errs.update({f'final.{n}': float(f'{rel(f32[n], final[n]):.3e}') for n in final})
    print(f'  adapt/memo: losses {[round(v, 5) for v in losses]} float32 max rel {max(errs.values()):.2e}')
    write_json(os.path.join(ADAPT, 'memo.json'), {
        'case': 'memo', 'algorithm': 'memo', 'model': 'models/resnext_small', 'alpha': BN_ALPHA,
        'optimizer': MEMO_OPT, 'views_per_sample': MEMO_VIEWS,
        'inputs': 'inputs.safetensors: step k = the first two images of x<k>, one at a time',
        'parameters': list(final.keys()), 'final_stored': small, 'losses': losses,
        'views': params, 'float32_torch_rel_err': errs})


def make_augmix(rng):
    t = OrderedDict()
    cases = []
    imgs = [rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8) for _ in range(2)]
    # a larger low-contrast image, so autocontrast stretches and equalize's step is above 1
    imgs.append(rng.integers(60, 140, size=(24, 24, 3), dtype=np.uint8))
    values = {'autocontrast': [0], 'equalize': [0], 'posterize': [4, 2], 'rotate': [2, -1, 17],
              'solarize': [231, 254, 128], 'shear_x': [0.03, -0.013], 'shear_y': [0.021, -0.03],
              'translate_x': [1, -2], 'translate_y': [-1, 3]}
    for i, a in enumerate(imgs):
        t[f'img{i}'] = torch.from_numpy(a.astype(np.float32))
    for op in OPS:
        for v in values[op]:
            for i, a in enumerate(imgs):
                if i == 2 and op not in ('autocontrast', 'equalize'):
                    continue
                out = np.asarray(apply_op(Image.fromarray(a), op, v))
                key = f'op{len(cases)}'
                t[key] = torch.from_numpy(out.astype(np.float32))
                cases.append({'key': key, 'image': i, 'op': op, 'value': v})
    # PIL bilinear upscaling of crops (RandomResizedCrop on a 20 x 20 image)
    big = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    t['big'] = torch.from_numpy(big.astype(np.float32))
    resizes = []
    for box in ((0, 0, 7, 11), (5, 3, 13, 9), (2, 4, 18, 16)):
        top, left, h, w = box
        out = np.asarray(Image.fromarray(big).crop((left, top, left + w, top + h)).resize((20, 20), Image.BILINEAR))
        key = f'resize{len(resizes)}'
        t[key] = torch.from_numpy(out.astype(np.float32))
        resizes.append({'key': key, 'crop': list(box)})
    # whole views: CIFAR branch (32 x 32) and RandomResizedCrop branch (20 x 20)
    cifar = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    t['cifar'] = torch.from_numpy(cifar.astype(np.float32))
    views = []
    for src, name in ((cifar, 'cifar'), (big, 'big')):
        for _ in range(2):
            p = draw_params(rng, src.shape[0], src.shape[1])
            key = f'view{len(views)}'
            t[key] = augmix_view(Image.fromarray(src), p).permute(1, 2, 0).contiguous()
            views.append({'key': key, 'image': name, 'params': p})
    st.save(os.path.join(AUGMENT, 'augmix.safetensors'), t, META)
    write_json(os.path.join(AUGMENT, 'augmix.json'), {
        'layout': 'images and outputs HWC, 8-bit values stored as float32; views HWC float32 in [0, 1]',
        'ops': cases, 'resizes': resizes, 'views': views})
    print(f'  augment/augmix: {len(cases)} op cases, {len(resizes)} resizes, {len(views)} views')


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(57)
    rng = np.random.default_rng(58)
    source = load_source()
    raw, _ = st.load(os.path.join(ADAPT, 'inputs.safetensors'))
    xs = [torch.from_numpy(raw[f'x{i}'].astype(np.float64)) for i in range(3)]
    make_roid(source, xs, gen)
    make_roid_tta(xs)
    make_rdumb(source, xs)
    make_bn_alpha(source, xs)
    make_memo(source, xs, rng)
    make_augmix(rng)
    print('done')


if __name__ == '__main__':
    main()
