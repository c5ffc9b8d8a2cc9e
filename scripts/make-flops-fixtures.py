#!/usr/bin/python3
"""Reference operation counts of one forward and one backward, counted by PyTorch's dispatcher.

Run from the repository root with Debian's PyTorch (torch 1.13):

    /usr/bin/python3 scripts/make-flops-fixtures.py

Writes test/fixtures/flops/flops.json, which src/memory/flops.test.ts checks src/memory/flops.ts
against. The counting convention is the one docs/memory.md#flops describes (that of MECTA's
utils/count_op.py): multiply-accumulates of convolutions, matrix products (mm / addmm / bmm: the
linear layers and attention's two products) and their backward kernels (convolution_backward per
output_mask, the mm / bmm of the backward); batch norm 6 per element in train mode and 4 in eval
mode, its backward 6; layer norm 6 and 6; nothing for anything else. The counts come from the
ATen calls PyTorch actually makes (a TorchDispatchMode sees each kernel below autograd), so the
backward is what autograd runs for the trainable set.

Models (only their shapes matter; weights stay at their random init): the small fixture ResNeXt and
WRN (fixtures_lib/models.py, the shapes of test/fixtures/models/{resnext_small,wrn_small}), and a
small timm-style ViT (width 24, 12 heads, depth 2, MLP 48, patch 8, 32 px, qkv bias) written below
with timm's state_dict names. Batch 2, loss = mean softmax entropy of the logits. Per model:
forward in eval mode, forward in train mode, and the backward with the norm affines trainable
('norm') and with every parameter trainable ('all'). Deterministic: shapes only.
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import json  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fixtures_lib.models import CifarResNeXt, WideResNet  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'flops')
BATCH = 2
aten = torch.ops.aten


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def conv_macs(out_shape, w_shape):
    # every output element takes C_in/groups · kh · kw products (w_shape = [C_out, C_in/g, kh, kw])
    return numel(out_shape) * numel(w_shape[1:])


class Counter(TorchDispatchMode):
    """Sums the convention's counts over the ATen kernels run inside `with`."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.by_op = {}

    def add(self, name, n):
        self.total += n
        self.by_op[name] = self.by_op.get(name, 0) + n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = func.overloadpacket
        if op is aten.convolution:
            self.add('conv', conv_macs(out.shape, args[1].shape))
        elif op is aten.convolution_backward:
            grad_out, _, weight = args[:3]
            mask = args[-1]
            per = conv_macs(grad_out.shape, weight.shape)
            self.add('conv_backward', per * (int(bool(mask[0])) + int(bool(mask[1]))))
        elif op is aten.mm:
            a, b = args[:2]
            self.add('mm', a.shape[0] * a.shape[1] * b.shape[1])
        elif op is aten.addmm:
            a, b = args[1:3]
            self.add('mm', a.shape[0] * a.shape[1] * b.shape[1])
        elif op is aten.bmm:
            a, b = args[:2]
            self.add('bmm', a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2])
        elif op is aten.native_batch_norm:
            training = args[5]
            self.add('batch_norm', numel(args[0].shape) * (6 if training else 4))
        elif op is aten.native_batch_norm_backward:
            self.add('batch_norm_backward', 6 * numel(args[1].shape))
        elif op is aten.native_layer_norm:
            self.add('layer_norm', 6 * numel(args[0].shape))
        elif op is aten.native_layer_norm_backward:
            self.add('layer_norm_backward', 6 * numel(args[1].shape))
        return out


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q * hd ** -0.5) @ k.transpose(-2, -1)
        y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """timm's VisionTransformer forward (class token, learned position embedding, pre-norm blocks)."""

    def __init__(self, dim=24, depth=2, heads=12, hidden=48, patch=8, size=32, classes=10):
        super().__init__()
        tokens = (size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.patch_embed(x)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], dim=1) + self.pos_embed
        h = self.norm(self.blocks(h))
        return self.head(h[:, 0])


def entropy(z):
    p = z.softmax(1)
    return -(p * z.log_softmax(1)).sum(1).mean()


def counts(make):
    torch.manual_seed(0)
    x = torch.rand(BATCH, 3, 32, 32)
    out = {}
    model = make()
    model.eval()
    with torch.no_grad(), Counter() as c:
        model(x)
    out['forward_eval'] = c.total
    model.train()
    with torch.no_grad(), Counter() as c:
        model(x)
    out['forward_train'] = c.total
    norm_types = (nn.BatchNorm2d, nn.LayerNorm)
    for train in ('norm', 'all'):
        model = make()
        model.train()
        for m in model.modules():
            for p in m.parameters(recurse=False):
                p.requires_grad_(train == 'all' or isinstance(m, norm_types))
        loss = entropy(model(x))
        with Counter() as c:
            loss.backward()
        out[f'backward_{train}'] = c.total
        out[f'backward_{train}_by_op'] = dict(sorted(c.by_op.items()))
    return out


def main():
    torch.set_num_threads(1)
    models = {
        'resnext_small': lambda: CifarResNeXt(depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32)),
        'wrn_small': lambda: WideResNet(depth=16, widen_factor=1),
        'vit_small': lambda: ViT(),
    }
    result = {
        'description': 'operation counts (docs/memory.md#flops) of one forward / backward at batch 2 on 32x32 input, counted by scripts/make-flops-fixtures.py from the ATen kernels PyTorch runs',
        'torch': torch.__version__,
        'batch': BATCH,
        'vit_small': {'dim': 24, 'depth': 2, 'heads': 12, 'mlp': 48, 'patch': 8, 'size': 32, 'classes': 10},
        'models': {name: counts(make) for name, make in models.items()},
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, 'flops.json'), 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')
    print(json.dumps(result['models'], indent=1))


if __name__ == '__main__':
    main()
