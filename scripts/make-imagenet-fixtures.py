#!/usr/bin/python3
"""Generates the ImageNet-side reference fixtures under test/fixtures/imagenet/.

Run from the repository root with Debian's PyTorch / torchvision / Pillow
(python3-torch 1.13, python3-torchvision 0.14, python3-pil 9.4):

    /usr/bin/python3 scripts/make-imagenet-fixtures.py

Deterministic (fixed seeds, one CPU thread). Everything is small (< 1 MB in all):

  resnet50_small.safetensors   torchvision-named state_dict of a reduced ResNet-50: torchvision's
                               own Bottleneck/_make_layer, blocks [2, 2, 1, 1], stem 8, planes
                               [4, 8, 16, 32] (same structure, fewer blocks, smaller widths)
  resnet50_small.input.npy     uint8 input [2,3,64,64] (NCHW; the model sees input/255)
  resnet50_small.io.safetensors  float64-computed logits in eval mode, in
                               train mode (batch statistics), and of the RobustBench-style wrapper
                               (normalize.mean/std + model.) with non-ImageNet mean/std; one Tent
                               step (SGD lr 0.05, momentum 0.9) on the BN affine parameters
  vit_small.safetensors        timm-named state_dict of a reduced ViT (plain PyTorch below with
                               timm's key names; timm itself is not in Debian): width 48, 12 heads,
                               depth 2, MLP 96, patch 8, 32 px input, 10 classes
  vit_small.input.npy          uint8 input [2,3,32,32]
  vit_small.io.safetensors     float64 logits; one Tent step (SGD lr 0.05,
                               momentum 0.9) on the LayerNorm affine parameters: the updated values
  arch.json                    full-size torchvision resnet50() and ViT-B/16 (timm names) state_dict
                               keys + shapes + parameter counts (random init; only shapes matter),
                               and the reduced models' configs
  images/*.jpg, images/*.png   JPEGs written by PIL and the exact PIL/torchvision output for them
                               (PNG, lossless): Resize(256) + CenterCrop(224) for the clean-domain
                               pipeline, plain decode for the 224 px ImageNet-C file
"""
import sys

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms as T  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from fixtures_lib import safetensors_io as st  # noqa: E402

OUT = os.path.join(ROOT, 'test', 'fixtures', 'imagenet')
META = {'generator': 'scripts/make-imagenet-fixtures.py', 'torch': torch.__version__.split('+')[0],
        'torchvision': torchvision.__version__.split('+')[0]}
torch.set_num_threads(1)


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, separators=(',', ':'))
        f.write('\n')


def entropy_mean(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()


def to_unit(u8):
    """uint8 NCHW -> float64 in [0,1] (torchvision ToTensor: /255)."""
    return torch.from_numpy(u8.astype(np.float64) / 255.0)


# ------------------------------------------------------------------------------------------------
# ResNet-50 (torchvision classes, reduced widths)

class SmallResNet(ResNet):
    """torchvision ResNet with chosen stem/plane widths; forward and key names are torchvision's."""

    def __init__(self, layers, planes, stem, num_classes):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = stem
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, planes[0], layers[0])
        self.layer2 = self._make_layer(Bottleneck, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * Bottleneck.expansion, num_classes)


class ImageNormalizer(nn.Module):
    """RobustBench's input normaliser (buffers mean/std [1,3,1,1])."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer('mean', torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer('std', torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_CFG = dict(layers=[2, 2, 1, 1], planes=[4, 8, 16, 32], stem=8, num_classes=10)
WRAP_MEAN = (0.4, 0.5, 0.6)
WRAP_STD = (0.2, 0.25, 0.3)
TENT_LR = 0.05


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(c, generator=gen)
            m.bias.data = 0.2 * torch.randn(c, generator=gen)
            m.running_mean.data = 0.1 * torch.randn(c, generator=gen)
            m.running_var.data = 0.5 + torch.rand(c, generator=gen)


def f32_exact(model):
    """Round every parameter/buffer to float32, then compute in float64 (exactly those values)."""
    model.float()
    sd32 = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    model.double()
    return sd32


def tent_step(model, params, x):
    opt = torch.optim.SGD(params, lr=TENT_LR, momentum=0.9)
    z = model(x)
    loss = entropy_mean(z)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return z.detach(), float(loss)


def make_resnet(rng):
    torch.manual_seed(50)
    gen = torch.Generator().manual_seed(51)
    model = SmallResNet(**RESNET_CFG)
    randomize_bn(model, gen)
    sd32 = f32_exact(model)
    st.save(os.path.join(OUT, 'resnet50_small.safetensors'), sd32, META)
    u8 = rng.randint(0, 256, size=(2, 3, 64, 64)).astype(np.uint8)
    x = to_unit(u8)
    with torch.no_grad():
        model.eval()
        logits_eval = model(x)
        m_train = copy.deepcopy(model).train()
        logits_train = m_train(x)
        wrapped = nn.Sequential(OrderedDict([('normalize', ImageNormalizer(WRAP_MEAN, WRAP_STD)),
                                             ('model', copy.deepcopy(model))])).double().eval()
        logits_wrapped = wrapped(x)
    # torchvision weights carry no normaliser: the TS model applies ImageNet mean/std itself, so the
    # reference for the plain state_dict is model((x - mean) / std).
    norm = ImageNormalizer(IMAGENET_MEAN, IMAGENET_STD).double()
    with torch.no_grad():
        logits_eval_in = model(norm(x))
        logits_train_in = copy.deepcopy(model).train()(norm(x))
    # Tent (docs/methods.md#configuration, docs/methods.md#tent): train-mode BN without running
    # statistics, BN affine only.
    tent = copy.deepcopy(model)
    tent.train()
    tent.requires_grad_(False)
    bn_names = []
    params = []
    for name, m in tent.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            bn_names.append(name)
            params += [m.weight, m.bias]
    z0, loss0 = tent_step(tent, params, norm(x))
    after = OrderedDict()
    for name, m in tent.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            after[f'tent.{name}.weight'] = m.weight.detach()
            after[f'tent.{name}.bias'] = m.bias.detach()
    np.save(os.path.join(OUT, 'resnet50_small.input.npy'), u8)  # uint8 (safetensors_io widens ints to I64)
    io = OrderedDict(logits_eval=logits_eval_in, logits_train=logits_train_in,
                     logits_wrapped=logits_wrapped, tent_logits=z0, **after)
    st.save(os.path.join(OUT, 'resnet50_small.io.safetensors'), io, META)
    print(f'  resnet50_small: {len(sd32)} entries, {sum(p.numel() for p in model.parameters())} params, '
          f'logits eval std {logits_eval_in.std():.3f}, tent loss {loss0:.4f}')
    del logits_eval, logits_train
    return {'config': RESNET_CFG, 'bn_layers': bn_names, 'wrap_mean': WRAP_MEAN, 'wrap_std': WRAP_STD,
            'tent_lr': TENT_LR, 'tent_momentum': 0.9, 'input_size': 64}


# ------------------------------------------------------------------------------------------------
# ViT with timm's key names (plain PyTorch; the math of timm's VisionTransformer for vit_base_*)

class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, g*g, D]


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, img=224, patch=16, dim=768, depth=12, heads=12, mlp_ratio=4.0, num_classes=1000, eps=1e-6):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        grid = img // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


VIT_CFG = dict(img=32, patch=8, dim=48, depth=2, heads=12, mlp_ratio=2.0, num_classes=10)
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


def make_vit(rng):
    torch.manual_seed(60)
    gen = torch.Generator().manual_seed(61)
    model = VisionTransformer(**VIT_CFG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ('cls_token', 'pos_embed'):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif '.norm' in name or name.startswith('norm.'):
                p.copy_((1.0 if name.endswith('weight') else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith('bias'):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in ** 0.5))
    sd32 = f32_exact(model)
    st.save(os.path.join(OUT, 'vit_small.safetensors'), sd32, META)
    u8 = rng.randint(0, 256, size=(2, 3, 32, 32)).astype(np.uint8)
    norm = ImageNormalizer(VIT_MEAN, VIT_STD).double()
    x = norm(to_unit(u8))
    with torch.no_grad():
        logits = model(x)
    # Tent on a ViT: every LayerNorm's affine parameters (train() changes nothing: no dropout/BN).
    tent = copy.deepcopy(model).train()
    tent.requires_grad_(False)
    ln_names, params = [], []
    for name, m in tent.named_modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            ln_names.append(name)
            params += [m.weight, m.bias]
    z0, loss0 = tent_step(tent, params, x)
    assert torch.allclose(z0, logits)
    np.save(os.path.join(OUT, 'vit_small.input.npy'), u8)
    io = OrderedDict(logits=logits)
    for name, m in tent.named_modules():
        if isinstance(m, nn.LayerNorm):
            io[f'tent.{name}.weight'] = m.weight.detach()
            io[f'tent.{name}.bias'] = m.bias.detach()
    st.save(os.path.join(OUT, 'vit_small.io.safetensors'), io, META)
    delta = torch.cat([(tent.state_dict()[k] - model.state_dict()[k]).flatten() for k in
                       [f'{n}.{s}' for n in ln_names for s in ('weight', 'bias')]])
    print(f'  vit_small: {len(sd32)} entries, {sum(p.numel() for p in model.parameters())} params, '
          f'logits std {logits.std():.3f}, tent loss {loss0:.4f}, |delta| max {delta.abs().max():.2e}')
    return {'config': VIT_CFG, 'ln_layers': ln_names, 'mean': VIT_MEAN, 'std': VIT_STD, 'ln_eps': 1e-6,
            'tent_lr': TENT_LR, 'tent_momentum': 0.9}


# ------------------------------------------------------------------------------------------------
# Full-size key lists

def key_list(model):
    return [{'name': k, 'shape': list(v.shape)} for k, v in model.state_dict().items()
            if not k.endswith('num_batches_tracked')]


def full_size():
    r50 = torchvision.models.resnet50()
    vit = VisionTransformer()
    out = {}
    for name, m in (('resnet50', r50), ('vit_b16', vit)):
        keys = key_list(m)
        out[name] = {'num_parameters': int(sum(p.numel() for p in m.parameters())),
                     'num_entries': len(keys), 'state_dict': keys}
        print(f'  {name}: {len(keys)} entries, {out[name]["num_parameters"]} parameters')
    assert out['resnet50']['num_parameters'] == 25557032  # docs/data-formats.md#resnet-50
    assert out['vit_b16']['num_parameters'] == 86567656
    return out


# ------------------------------------------------------------------------------------------------
# Images: PIL-written JPEGs and the PIL/torchvision outputs the TS pipeline must match (±2 levels)

def synthetic_photo(rng, w, h):
    """A smooth, photo-like RGB image: colour gradients, soft blobs, a few hard edges, fine texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1, 3)
        img[..., c] = 0.5 + 0.25 * np.sin(a * xx / 40 + b * yy / 55 + ph * 3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 0.4 * min(w, h))
        col = rng.uniform(0, 1, 3)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r ** 2
        if rng.rand() < 0.5:
            m = (d2 < 1).astype(np.float64)  # hard edge
        else:
            m = np.exp(-2 * d2)
        img = img * (1 - m[..., None]) + col * m[..., None]
    img += 0.04 * (np.sin(xx * 1.3 + yy * 0.7) > 0.6)[..., None]  # sparse fine stripes (near Nyquist)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


CLEAN_CASES = [  # name, size (w, h), mode: shrinking landscape / portrait, enlarging, grayscale
    ('clean_landscape', (400, 300), 'RGB'),
    ('clean_portrait', (270, 360), 'RGB'),
    ('clean_small', (160, 120), 'RGB'),
    ('clean_gray', (300, 260), 'L'),
]


def make_images(rng):
    d = os.path.join(OUT, 'images')
    os.makedirs(d, exist_ok=True)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224)])  # EATA / MECTA clean ImageNet (docs/protocol.md#pre-processing)
    cases = []
    for name, (w, h), mode in CLEAN_CASES:
        im = Image.fromarray(synthetic_photo(rng, w, h))
        if mode == 'L':
            im = im.convert('L')
        im.save(os.path.join(d, f'{name}.jpg'), quality=90)
        out = tf(Image.open(os.path.join(d, f'{name}.jpg')).convert('RGB'))
        out.save(os.path.join(d, f'{name}.pil.png'))
        cases.append({'name': name, 'size': [w, h], 'mode': mode, 'pipeline': 'resize256_crop224'})
    # ImageNet-C file: 224x224, PIL JPEG q=85 (docs/data-formats.md#imagenet-c); reference = decode only
    im = Image.fromarray(synthetic_photo(rng, 224, 224))
    im.save(os.path.join(d, 'imagenetc.jpg'), quality=85, optimize=True)
    Image.open(os.path.join(d, 'imagenetc.jpg')).convert('RGB').save(os.path.join(d, 'imagenetc.pil.png'))
    cases.append({'name': 'imagenetc', 'size': [224, 224], 'mode': 'RGB', 'pipeline': 'decode'})
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.RandomState(2024)
    arch = {'generator': META}
    arch['resnet50_small'] = make_resnet(rng)
    arch['vit_small'] = make_vit(rng)
    arch['full'] = full_size()
    arch['images'] = make_images(rng)
    write_json(os.path.join(OUT, 'arch.json'), arch)
    total = 0
    for root, _, files in os.walk(OUT):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f'  total {total} bytes in {OUT}')


if __name__ == '__main__':
    main()
