"""Plain-PyTorch float64 re-statement of the --adapt-params modules on a CNN's 1x1 convolutions
(docs/adapters.md), on the reduced ResNeXt of scripts/fixtures_lib/models.py (RobustBench names).

A 1x1 convolution is a linear map on the channels of every pixel it reads (a strided one reads
every s-th pixel), so each module is the linear-layer module of adapters_ref.py applied there:
  lora        y + (alpha/r) conv(conv(x, A), B) beside the conv (loralib's ConvLoRA shapes)
  kadaptation y + x dW with dW = s * sum_i A_i (x) u_i v_i^T in R^{in x out}; one set of slow
              weights A_i = a_i b_i^T per conv role (reduce, expand, shortcut) for all blocks
  adapter     y + up(GELU(down(y))) on the conv's output channels (before its BatchNorm)
  compacter   the same with PHM projections y @ sum_i A_i (x) (s_i t_i^T) + b, one rule tensor A
              for every PHM layer
Module parameters are given by name in PyTorch layout; `attach(model, kind, params, cfg)` puts
forward hooks on the model's 1x1 convs and returns their handles.
"""
import torch.nn.functional as F

from .adapters_ref import kron_sum


def conv_sites(model):
    """(name, module, role) of the 1x1 convs in cta-eval's site order: per residual block in
    forward order its reduce, expand, then the projection shortcut."""
    out = []
    for stage in ('stage_1', 'stage_2', 'stage_3'):
        for i, block in enumerate(getattr(model, stage)):
            p = f'{stage}.{i}'
            out.append((f'{p}.conv_reduce', block.conv_reduce, 'reduce'))
            out.append((f'{p}.conv_expand', block.conv_expand, 'expand'))
            if block.downsample is not None:
                out.append((f'{p}.downsample.0', block.downsample[0], 'shortcut'))
    return out


def channels_last(fn, y):
    """fn applied to the channel vector of every pixel of an NCHW tensor."""
    return fn(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def delta_weight(dw):
    """A [in, out] matrix (rows x @ dw) as a 1x1 conv weight [out, in, 1, 1]."""
    return dw.t().reshape(dw.shape[1], dw.shape[0], 1, 1)


def hook_for(kind, name, role, conv, p, cfg):
    stride = conv.stride

    if kind == 'lora':
        scale = cfg['alpha'] / cfg['rank']

        def f(x, y):
            h = F.conv2d(x, p[f'{name}.lora_A.weight'], stride=stride)
            return y + F.conv2d(h, p[f'{name}.lora_B.weight']) * scale
    elif kind == 'kadaptation':
        def f(x, y):
            rule = p[f'kadaptation.{role}.rule_left'] @ p[f'kadaptation.{role}.rule_right']
            fast = p[f'{name}.kadaptation.W_left'] @ p[f'{name}.kadaptation.W_right']
            return y + F.conv2d(x, delta_weight(kron_sum(rule, fast) * cfg['kron_scale']), stride=stride)
    elif kind == 'adapter':
        def f(x, y):
            def bottleneck(v):
                d = F.linear(v, p[f'{name}.adapter.down.weight'], p[f'{name}.adapter.down.bias'])
                return v + F.linear(F.gelu(d), p[f'{name}.adapter.up.weight'], p[f'{name}.adapter.up.bias'])
            return channels_last(bottleneck, y)
    elif kind == 'compacter':
        rule = p['compacter.phm_rule']

        def phm(prefix, v):
            w = p[f'{prefix}.W_left'] @ p[f'{prefix}.W_right']
            return v @ kron_sum(rule, w) + p[f'{prefix}.b']

        def f(x, y):
            pre = f'{name}.compacter'
            return channels_last(lambda v: v + phm(f'{pre}.up', F.gelu(phm(f'{pre}.down', v))), y)
    else:
        raise ValueError(kind)
    return lambda module, inputs, output: f(inputs[0], output)


def attach(model, kind, params, cfg):
    return [conv.register_forward_hook(hook_for(kind, name, role, conv, params, cfg)) for name, conv, role in conv_sites(model)]
