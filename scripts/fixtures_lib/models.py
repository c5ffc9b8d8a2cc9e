"""Reduced RobustBench architectures (same module names / state_dict keys as RobustBench).

- CifarResNeXt: RobustBench `architectures/resnext.py` (Hendrycks2020AugMix_ResNeXt) with a
  configurable stem width and stage widths, plus the `mu`/`sigma` input-normalisation buffers.
- WideResNet: RobustBench `architectures/wide_resnet.py` (`Standard`, WRN-28-10) with configurable
  depth and widen factor.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, cardinality, base_width, stride=1, downsample=None):
        super().__init__()
        dim = int(math.floor(planes * (base_width / 64.0)))
        inner = dim * cardinality
        self.conv_reduce = nn.Conv2d(inplanes, inner, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_conv = nn.Conv2d(inner, inner, kernel_size=3, stride=stride, padding=1,
                                   groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, planes * 4, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn_expand = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return F.relu(residual + out)


class CifarResNeXt(nn.Module):
    def __init__(self, depth=20, cardinality=4, base_width=32, stem=16, planes=(8, 16, 32),
                 num_classes=10, mu=(0.5, 0.5, 0.5), sigma=(0.5, 0.5, 0.5)):
        super().__init__()
        assert (depth - 2) % 9 == 0
        blocks = (depth - 2) // 9
        self.cardinality = cardinality
        self.base_width = base_width
        self.conv_1_3x3 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(stem)
        self.inplanes = stem
        self.stage_1 = self._make_layer(planes[0], blocks, 1)
        self.stage_2 = self._make_layer(planes[1], blocks, 2)
        self.stage_3 = self._make_layer(planes[2], blocks, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.classifier = nn.Linear(planes[2] * 4, num_classes)
        # RobustBench's Hendrycks2020AugMixResNeXtNet registers these after the base constructor.
        self.register_buffer('mu', torch.tensor(mu, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('sigma', torch.tensor(sigma, dtype=torch.float32).view(1, 3, 1, 1))

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))
        layers = [ResNeXtBottleneck(self.inplanes, planes, self.cardinality, self.base_width, stride, downsample)]
        self.inplanes = planes * 4
        for _ in range(1, blocks):
            layers.append(ResNeXtBottleneck(self.inplanes, planes, self.cardinality, self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = (x - self.mu) / self.sigma
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None
        if not self.equalInOut:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0,
                                          bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth=16, widen_factor=2, num_classes=10):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        assert (depth - 4) % 6 == 0
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(-1, self.nChannels)
        return self.fc(out)


def bn_modules(model):
    """(module path, module) for every BatchNorm2d, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def init_random(model, gen, logit_gain=1.0):
    """RobustBench-style conv init + non-trivial BN state (see fixtures README)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / n), generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, logit_gain / math.sqrt(m.in_features), generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
