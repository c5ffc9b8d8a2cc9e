#!/usr/bin/python3
"""Generates test/fixtures/npz/ (Google ViT .npz checkpoints, src/io/npz.test.ts and
src/models/vit-npz.test.ts). Run from the repository root with Debian's numpy + PyTorch:

    /usr/bin/python3 scripts/make-npz-fixtures.py

  vit_tiny.npz            a reduced ViT in the real Google (Flax) name layout of ViT-B_16.npz:
                          width 24, 4 heads of 6, depth 2, MLP 48, patch 8, 32 px, 10 classes;
                          float32 arrays, STORED members (numpy.savez)
  vit_tiny.input.npy      input uint8 [2, 3, 32, 32] (NCHW; the model sees (x/255 - 0.5)/0.5, as
                          Google's ViT input pipeline)
  vit_tiny.io.safetensors the float64 logits of the equivalent
                          timm-layout PyTorch model (fixtures_lib/prompt_ref.py), which the script
                          checks against the ViT computed directly in Google's layout
  dtypes.npz              a few small arrays of every dtype the reader takes, DEFLATEd members
                          (numpy.savez_compressed), including a big-endian and a 0-d array;
                          values in expected.json

The archives are written the way numpy.savez writes them (one `<name>.npy` member per array,
numpy.lib.format.write_array, force_zip64) but with a fixed member timestamp, so two runs give
byte-identical files; the script checks that numpy.load reads them back unchanged.
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import json  # noqa: E402
import os  # noqa: E402
import zipfile  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from fixtures_lib import prompt_ref as pr  # noqa: E402
from fixtures_lib import safetensors_io as st  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'npz')
META = {'generator': 'scripts/make-npz-fixtures.py', 'torch': torch.__version__.split('+')[0], 'numpy': np.__version__}
torch.set_num_threads(1)

CFG = dict(dim=24, heads=4, depth=2, mlp=48, patch=8, img=32, classes=10)


def write_npz(path, arrays, compress):
    """numpy.savez / savez_compressed's layout with a fixed timestamp (deterministic bytes)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, mode='w', compression=method, allowZip64=True) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(name + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, 'w', force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    back = np.load(path, allow_pickle=False)
    assert list(back.keys()) == list(arrays.keys())
    for k, a in arrays.items():
        assert back[k].dtype == np.asarray(a).dtype and np.array_equal(back[k], a), k


def google_vit(gen):
    """Random float32 parameters under Google's names (ViT-B_16.npz's layout, reduced sizes)."""
    d, h, m, p, c = CFG['dim'], CFG['heads'], CFG['mlp'], CFG['patch'], CFG['classes']
    hd = d // h
    tokens = (CFG['img'] // p) ** 2 + 1

    def rnd(shape, scale):
        return (scale * gen.standard_normal(shape)).astype(np.float32)
    g = {
        'cls': rnd((1, 1, d), 0.5),
        'embedding/kernel': rnd((p, p, 3, d), 1.5 / (p * p * 3) ** 0.5),
        'embedding/bias': rnd((d,), 0.1),
        'Transformer/posembed_input/pos_embedding': rnd((1, tokens, d), 0.5),
        'Transformer/encoder_norm/scale': (1 + rnd((d,), 0.2)).astype(np.float32),
        'Transformer/encoder_norm/bias': rnd((d,), 0.2),
        'head/kernel': rnd((d, c), 1.5 / d ** 0.5),
        'head/bias': rnd((c,), 0.1),
    }
    for i in range(CFG['depth']):
        b = f'Transformer/encoderblock_{i}/'
        a = b + 'MultiHeadDotProductAttention_1/'
        for n in ('LayerNorm_0', 'LayerNorm_2'):
            g[f'{b}{n}/scale'] = (1 + rnd((d,), 0.2)).astype(np.float32)
            g[f'{b}{n}/bias'] = rnd((d,), 0.2)
        for n in ('query', 'key', 'value'):
            g[f'{a}{n}/kernel'] = rnd((d, h, hd), 1.5 / d ** 0.5)
            g[f'{a}{n}/bias'] = rnd((h, hd), 0.1)
        g[f'{a}out/kernel'] = rnd((h, hd, d), 1.5 / d ** 0.5)
        g[f'{a}out/bias'] = rnd((d,), 0.1)
        g[f'{b}MlpBlock_3/Dense_0/kernel'] = rnd((d, m), 1.5 / d ** 0.5)
        g[f'{b}MlpBlock_3/Dense_0/bias'] = rnd((m,), 0.1)
        g[f'{b}MlpBlock_3/Dense_1/kernel'] = rnd((m, d), 1.5 / m ** 0.5)
        g[f'{b}MlpBlock_3/Dense_1/bias'] = rnd((d,), 0.1)
    # the archive order of the real checkpoints (flattened parameter tree, sorted names)
    return OrderedDict(sorted(g.items()))


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = np.random.default_rng(2026)
    g = google_vit(gen)
    write_npz(os.path.join(OUT, 'vit_tiny.npz'), g, compress=False)

    u8 = gen.integers(0, 256, size=(2, 3, CFG['img'], CFG['img']), dtype=np.uint8)
    x = (torch.from_numpy(u8.astype(np.float64)) / 255 - 0.5) / 0.5
    sd = pr.google_to_timm(g)
    with torch.no_grad():
        _, logits = pr.forward(sd, x, CFG['heads'])
        direct = pr.google_forward(g, x.permute(0, 2, 3, 1).numpy())
    err = (logits - direct).abs().max().item()
    assert err < 1e-12, err  # the layout conversion is exact
    np.save(os.path.join(OUT, 'vit_tiny.input.npy'), u8)
    io = OrderedDict(logits=logits)
    st.save(os.path.join(OUT, 'vit_tiny.io.safetensors'), io, META)

    dtypes = OrderedDict([
        ('f4', np.arange(6, dtype=np.float32).reshape(2, 3) / 4 - 0.5),
        ('f8', np.array([1.0 / 3, -2.5, 1e-8], dtype=np.float64)),
        ('be_f4', np.array([1.5, -0.25, 3.0], dtype='>f4')),
        ('i8', np.array([[-3, 2 ** 40], [7, 0]], dtype=np.int64)),
        ('i4', np.array([-1, 0, 1, 2 ** 31 - 1], dtype=np.int32)),
        ('u1', np.array([0, 128, 255], dtype=np.uint8)),
        ('b1', np.array([True, False], dtype=np.bool_)),
        ('scalar', np.array(2.75, dtype=np.float32)),
        ('nested/name', np.array([4.0, 5.0], dtype=np.float32)),
    ])
    write_npz(os.path.join(OUT, 'dtypes.npz'), dtypes, compress=True)
    expected = {
        'arch': {**CFG, 'keys': list(g.keys())},
        'dtypes': {k: {'descr': a.dtype.str, 'shape': list(a.shape), 'values': [float(v) for v in np.asarray(a, dtype=np.float64).flatten()]}
                   for k, a in dtypes.items()},
        'generator': META,
    }
    with open(os.path.join(OUT, 'expected.json'), 'w') as f:
        json.dump(expected, f, indent=1)
        f.write('\n')
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f'  vit_tiny: {len(g)} arrays, logits std {logits.std():.3f}, Google-layout check {err:.1e}; {total} bytes in {OUT}')


if __name__ == '__main__':
    main()
