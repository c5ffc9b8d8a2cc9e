#!/usr/bin/python3
"""Write small PyTorch checkpoint fixtures for the TypeScript weight readers (src/io/*.test.ts).

Run with Debian's torch (`/usr/bin/python3 scripts/make_io_fixtures.py`); scripts/make-fixtures.py
also imports this module and calls main(outdir).

Every file is a few KB. legacy.pt and whole_model.pt differ byte-wise between runs (legacy storage keys
are object ids), which the tests do not depend on; all other files are reproducible. `expected.json` records, for each fixture, what the TypeScript reader must
return, in file order and before loadStateDict's key normalisation (readTorchPt keeps `module.` prefixes
and `num_batches_tracked`; loadStateDict strips/drops them), as dtype + shape + flattened C-order values,
so the tests can compare exactly. Float values are written as Python floats: every float16, bfloat16
and float32 value is exactly representable as a double, so JSON round-trips them without loss.
float64 tensors are listed with their float64 values; the reader delivers them as float32, so the
tests compare against Math.fround(value).
"""
import argparse
import collections
import json
import math
import os
import struct
import sys
import zipfile

import numpy
import torch

TORCH_TO_RAW = {
    torch.float32: 'float32',
    torch.float16: 'float16',
    torch.bfloat16: 'bfloat16',
    torch.float64: 'float64',
    torch.int64: 'int64',
    torch.int32: 'int32',
    torch.int16: 'int16',
    torch.int8: 'int8',
    torch.uint8: 'uint8',
    torch.bool: 'bool',
}


def describe(t):
    """dtype, shape and flattened values (C order of the logical tensor, whatever its strides)."""
    flat = t.detach().contiguous().reshape(-1)
    if t.dtype.is_floating_point:
        # JSON has no inf/nan literals: write them as the strings JavaScript's Number() parses.
        values = [v if math.isfinite(v) else ('NaN' if math.isnan(v) else ('Infinity' if v > 0 else '-Infinity'))
                  for v in (float(x) for x in flat.to(torch.float64).tolist())]
    elif t.dtype == torch.bool:
        values = [1 if v else 0 for v in flat.tolist()]
    else:
        values = [int(v) for v in flat.tolist()]
    return {'dtype': TORCH_TO_RAW[t.dtype], 'shape': list(t.shape), 'values': values}


def describe_dict(sd):
    return {k: describe(v) for k, v in sd.items()}


def small_bn_net_state():
    """A conv + BN + linear state_dict with deterministic values (like a real model's, in miniature)."""
    g = torch.Generator().manual_seed(1234)
    sd = collections.OrderedDict()
    sd['conv.weight'] = torch.randn(4, 3, 3, 3, generator=g)
    sd['bn.weight'] = torch.rand(4, generator=g) + 0.5
    sd['bn.bias'] = torch.randn(4, generator=g)
    sd['bn.running_mean'] = torch.randn(4, generator=g)
    sd['bn.running_var'] = torch.rand(4, generator=g) + 0.1
    sd['bn.num_batches_tracked'] = torch.tensor(17, dtype=torch.int64)
    sd['fc.weight'] = torch.randn(10, 4, generator=g)
    sd['fc.bias'] = torch.randn(10, generator=g)
    return sd


def dtype_state():
    sd = collections.OrderedDict()
    # float16 values: exactly representable ones plus a subnormal, a large value, inf and -0.
    sd['half'] = torch.tensor([0.0, 1.0, -2.5, 65504.0, 5.960464477539063e-08, 0.0999755859375,
                               float('inf'), -0.0], dtype=torch.float16)
    sd['bf16'] = torch.tensor([[1.0, -3.0, 0.15625], [3.3895313892515355e+38, 1e-20, -7.0]],
                              dtype=torch.bfloat16)
    sd['double'] = torch.tensor([1.0 / 3.0, -2.0, 1e-300, 12345.678901234], dtype=torch.float64)
    sd['i64'] = torch.tensor([0, -5, 2 ** 40 + 3, -(2 ** 50) - 1, 2 ** 53], dtype=torch.int64)
    sd['i32'] = torch.tensor([[2 ** 31 - 1, -(2 ** 31)], [7, -7]], dtype=torch.int32)
    sd['i16'] = torch.tensor([-32768, 32767, 5], dtype=torch.int16)
    sd['i8'] = torch.tensor([-128, 127, -1], dtype=torch.int8)
    sd['u8'] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    sd['flag'] = torch.tensor([True, False, True], dtype=torch.bool)
    sd['empty'] = torch.zeros(0, 3)
    sd['scalar'] = torch.tensor(2.5)
    # nn.Parameter is pickled through torch._utils._rebuild_parameter.
    sd['param'] = torch.nn.Parameter(torch.tensor([[0.5, -0.25]]))
    return sd


def strided_state():
    """Views: torch.save writes the whole shared storage plus offset/size/stride for each view."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd['base'] = base
    sd['transposed'] = base.t()                  # stride (1, 6)
    sd['window'] = base[1:3, 2:5]                # storage offset 8, stride (6, 1)
    sd['every_other'] = base[:, ::2]             # stride (6, 2)
    sd['expanded'] = torch.tensor([1.5, -2.0, 3.0]).expand(2, 3)   # stride (0, 1)
    sd['half_t'] = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()
    return sd


def checkpoint_obj():
    sd = small_bn_net_state()
    prefixed = collections.OrderedDict(('module.' + k, v) for k, v in sd.items())
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if v.dtype == torch.float32]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    loss = sum((p * p).sum() for p in params)
    loss.backward()
    opt.step()
    # The AugMix training script saves this layout (epoch, dataset, model, state_dict, best_acc, optimizer).
    return {
        'epoch': 3,
        'dataset': 'cifar10',
        'model': 'resnext',
        'state_dict': prefixed,
        'best_acc': 0.25,
        'optimizer': opt.state_dict(),
    }, prefixed


SAFETENSORS_CODES = {
    torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64',
    torch.int64: 'I64', torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8', torch.uint8: 'U8',
    torch.bool: 'BOOL',
}


def write_safetensors_by_hand(sd, path):
    """A safetensors file made independently of the TypeScript writer (the `safetensors` package is not
    installed here), following the format spec: u64 LE header size, JSON header, packed LE data. The raw
    bytes come from torch itself (`view(torch.uint8)`), so torch's own float16/bfloat16 encodings are
    what the TypeScript reader must decode. Tensors are packed without padding, so most start unaligned."""
    header, blobs, offset = {'__metadata__': {'format': 'pt'}}, [], 0
    for name, t in sd.items():
        t = t.detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b''
        header[name] = {'dtype': SAFETENSORS_CODES[t.dtype], 'shape': list(t.shape),
                        'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    js = json.dumps(header).encode('utf-8')
    js += b' ' * (-len(js) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(js)))
        f.write(js)
        for b in blobs:
            f.write(b)


def write_deflated_copy(src, dst):
    """Re-pack a torch zip with DEFLATE entries so the reader's inflate path is exercised."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            # A fixed timestamp keeps the fixture byte-identical across runs.
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(zi, zin.read(info.filename))


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    p = lambda name: os.path.join(outdir, name)
    expected = {}

    sd = small_bn_net_state()
    torch.save(sd, p('plain.pt'))
    expected['plain.pt'] = {'tensors': describe_dict(sd)}

    write_deflated_copy(p('plain.pt'), p('plain_deflate.pt'))
    expected['plain_deflate.pt'] = {'tensors': describe_dict(sd)}

    sd = dtype_state()
    torch.save(sd, p('dtypes.pt'))
    expected['dtypes.pt'] = {'tensors': describe_dict(sd)}

    sd = dtype_state()
    # Start with a 3-byte uint8 tensor so that the following tensors sit at odd data offsets.
    unaligned = collections.OrderedDict([('u8_first', torch.tensor([1, 2, 3], dtype=torch.uint8))])
    unaligned.update(sd)
    write_safetensors_by_hand(unaligned, p('reference.safetensors'))
    expected['reference.safetensors'] = {'tensors': describe_dict(unaligned)}

    sd = strided_state()
    torch.save(sd, p('strided.pt'))
    expected['strided.pt'] = {'tensors': describe_dict(sd)}

    ckpt, inner = checkpoint_obj()
    torch.save(ckpt, p('checkpoint.pt'))
    expected['checkpoint.pt'] = {'tensors': describe_dict(inner)}

    # Some training scripts store the weights under 'net' (or 'model') next to scalars.
    sd = small_bn_net_state()
    torch.save({'net': sd, 'acc': 91.5, 'epoch': 200}, p('ckpt_net.pth'))
    expected['ckpt_net.pth'] = {'tensors': describe_dict(sd)}

    # Unknown globals outside the weights (argparse.Namespace, as some training scripts store) are harmless...
    sd = small_bn_net_state()
    torch.save({'args': argparse.Namespace(lr=0.1, arch='resnext'), 'state_dict': sd}, p('with_args.pt'))
    expected['with_args.pt'] = {'tensors': describe_dict(sd)}

    # ...but inside the weights they are reported by name (a numpy scalar pickles as numpy.core.multiarray.scalar).
    torch.save({'state_dict': collections.OrderedDict([('w', torch.ones(2)), ('acc', numpy.float64(0.5))])},
               p('mixed.pt'))
    expected['mixed.pt'] = {'error': 'numpy.core.multiarray.scalar'}

    # A pickled nn.Module (torch.save(model)) is not a state_dict: the reader must refuse it clearly.
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), p('whole_model.pt'))
    expected['whole_model.pt'] = {'error': 'torch.nn.modules.container.Sequential'}

    # Pre-1.6 serialization (a sequence of pickles, not a zip).
    torch.save(small_bn_net_state(), p('legacy.pt'), _use_new_zipfile_serialization=False)
    expected['legacy.pt'] = {'error': 'legacy'}

    with open(p('expected.json'), 'w') as f:
        json.dump(expected, f, allow_nan=False)  # insertion order = file order
        f.write('\n')


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'test/fixtures/io')
