#!/usr/bin/python3
"""Reference gradients of EVERY parameter after one Tent entropy loss on the small fixture models.

Run from the repository root with Debian's PyTorch (torch 1.13, numpy 1.24):

    /usr/bin/python3 scripts/make-trainable-fixtures.py

For each small fixture model (weights already committed under test/fixtures, made by
scripts/make-fixtures.py and scripts/make-imagenet-fixtures.py) the model is put in train mode with
batch statistics only (the reference's configure_model with local_bn: running buffers removed,
docs/methods.md#configuration), every parameter gets requires_grad=True (what CoTTA trains), and
the mean per-sample entropy of the logits on the model's committed fixture input is
back-propagated once, in float64. The output, test/fixtures/trainable/<model>.grads.safetensors,
holds `grad.<PyTorch name>` for every parameter in named_parameters() (= state_dict) order, in
PyTorch layouts (OIHW conv weights, [out, in] linear weights), rounded to F32, plus `loss`.
test/fixtures/trainable/n_layer.json lists, per CIFAR model, the parameter names that MECTA's
`--n_layer N` (parse_filter(model, filter=N) + collect_bn_params) trains, for a few N.
src/models/trainable-parity.test.ts checks src/models' trainable layers against them.
Deterministic: no randomness, one CPU thread.
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib import safetensors_io as st  # noqa: E402
from fixtures_lib.models import CifarResNeXt, WideResNet  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'trainable')
META = {'generator': 'scripts/make-trainable-fixtures.py', 'torch': torch.__version__.split('+')[0]}
N_LAYER = {}  # model -> {n: parameter names MECTA's filter=n trains}
CIFAR = os.path.join(ROOT, 'test', 'fixtures', 'models')
IMAGENET = os.path.join(ROOT, 'test', 'fixtures', 'imagenet')


def load_imagenet_module():
    """The plain-PyTorch ResNet-50 / ViT re-statements of scripts/make-imagenet-fixtures.py."""
    spec = importlib.util.spec_from_file_location('imagenet_fixtures', os.path.join(HERE, 'make-imagenet-fixtures.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_weights(model, path):
    sd, _ = st.load(path)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    return model.double()


def batch_stats_only(model):
    """Train mode, BN normalising with the batch statistics (running buffers removed)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    model.requires_grad_(True)
    return model


def entropy_mean(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()


def grads_of(model, x):
    loss = entropy_mean(model(x))
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()], allow_unused=True)
    out = {'loss': torch.tensor([float(loss)])}
    for n, g in zip(names, grads):
        p = dict(model.named_parameters())[n]
        out[f'grad.{n}'] = torch.zeros_like(p) if g is None else g
    return out


def n_layer_param_names(model, n_layer):
    """MECTA's parse_filter(model, filter=n_layer) + collect_bn_params, restated: BatchNorm2d modules
    in named_modules() order whose name has no 'downsample', the last n (n > 0) or first |n| (n <= 0),
    and their 'weight'/'bias' parameter names."""
    layer_names = [n for n, m in model.named_modules()
                   if 'downsample' not in n and isinstance(m, nn.BatchNorm2d)]
    layer_names = layer_names[-n_layer:] if n_layer > 0 else layer_names[:-n_layer]
    assert len(layer_names) == abs(n_layer)
    names = []
    for nm, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and nm in layer_names:
            names += [f'{nm}.{p}' for p, _ in m.named_parameters() if p in ('weight', 'bias')]
    return names


def cifar_case(name, model):
    N_LAYER[name] = {str(n): n_layer_param_names(model, n) for n in (0, 1, 3, 7)}
    model = batch_stats_only(load_weights(model, os.path.join(CIFAR, f'{name}.safetensors')))
    io, _ = st.load(os.path.join(CIFAR, f'{name}.io.safetensors'))
    x = torch.from_numpy(np.array(io['input'])).double()  # NCHW in [0, 1]
    return grads_of(model, x)


def imagenet_case(name, model, mod, mean, std):
    """The TS models own their input normalisation, so the reference sees (x - mean) / std."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        N_LAYER[name] = {str(n): n_layer_param_names(model, n) for n in (0, 1, 3, 7)}
    model = batch_stats_only(load_weights(model, os.path.join(IMAGENET, f'{name}.safetensors')))
    u8 = np.load(os.path.join(IMAGENET, f'{name}.input.npy'))
    return grads_of(model, mod.ImageNormalizer(mean, std).double()(mod.to_unit(u8)))


def build_cases():
    spec = importlib.util.spec_from_file_location('make_fixtures', os.path.join(HERE, 'make-fixtures.py'))
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    cases = {
        'resnext_small': lambda: cifar_case('resnext_small', CifarResNeXt(**mf.RESNEXT_CFG)),
        'wrn_small': lambda: cifar_case('wrn_small', WideResNet(**mf.WRN_CFG)),
    }
    try:
        im = load_imagenet_module()
    except ImportError as err:  # scripts/make-imagenet-fixtures.py needs torchvision
        print(f'  skipping resnet50_small / vit_small: {err}')
        return cases
    if hasattr(im, 'SmallResNet'):
        cases['resnet50_small'] = lambda: imagenet_case('resnet50_small', im.SmallResNet(**im.RESNET_CFG), im,
                                                        im.IMAGENET_MEAN, im.IMAGENET_STD)
    if hasattr(im, 'VisionTransformer'):
        cases['vit_small'] = lambda: imagenet_case('vit_small', im.VisionTransformer(**im.VIT_CFG), im,
                                                   im.VIT_MEAN, im.VIT_STD)
    return cases


if __name__ == '__main__':
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    only = set(sys.argv[1:])
    for name, make in build_cases().items():
        if only and name not in only:
            continue
        out = make()
        st.save(os.path.join(OUT, f'{name}.grads.safetensors'), out, META)
        n = sum(1 for k in out if k.startswith('grad.'))
        print(f'  {name}: loss {out["loss"].item():.6f}, {n} parameter gradients')
    with open(os.path.join(OUT, 'n_layer.json'), 'w') as f:
        json.dump({'generator': META, 'n_layer': N_LAYER}, f, indent=1)
        f.write('\n')
