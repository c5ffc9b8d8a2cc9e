"""Plain-PyTorch re-statement of the --adapt-params modules (docs/adapters.md) on the reduced ViT
(timm key names, the model of scripts/make-imagenet-fixtures.py), float64.

Each module is written from its paper / official code:
  lora        Hu et al. 2022: h = W0 x + (alpha/r) B A x on the q and v slices of the fused qkv
  kadaptation He et al. 2023 (PEViT): dW = s * sum_i A_i (x) u_i v_i^T, A_i = a_i b_i^T shared
              across blocks per target (q, v); h = W0 x + x dW (PEViT's x @ H convention)
  adapter     Houlsby et al. 2019: h + up(GELU(down(h))) after attention and after the MLP
  compacter   Mahabadi et al. 2021: the same with PHM projections x @ sum_i A_i (x) (s_i t_i^T) + b,
              one rule tensor A shared by every PHM layer
  vida        Liu et al. 2024 (inject_vida.py): W0 x + s1 up(down(x)) + s2 up2(down2(x)) on every
              attention linear (qkv, proj)

Module parameters are given by name in PyTorch layout (what the fixture stores and cta-eval's
`init` map takes); `modules(kind, params, cfg)` returns hook functions the ViT below calls.
"""
import math

import torch
import torch.nn.functional as F


def kron_sum(a, b):
    """sum_i kron(a[i], b[i]) for a [n, p, q], b [n, r, s] -> [p*r, q*s] (PEViT's batched einsum)."""
    n, p, q = a.shape
    _, r, s = b.shape
    return torch.einsum('bac,bkp->bakcp', a, b).reshape(n, p * r, q * s).sum(0)


class Hooks:
    """Per-site functions: linear(name, x, y) -> y', branch(name, h) -> h'."""

    def __init__(self, linear=None, branch=None):
        self.linear = linear or (lambda name, x, y: y)
        self.branch = branch or (lambda name, h: h)


def lora_hooks(p, cfg):
    scale = cfg['alpha'] / cfg['rank']

    def linear(name, x, y):
        if not name.endswith('attn.qkv'):
            return y
        d = y.shape[-1] // 3
        parts = []
        for i, s in enumerate('qkv'):
            a = p.get(f'{name}.lora_A.{s}.weight')
            if a is None:
                parts.append(torch.zeros_like(y[..., i * d:(i + 1) * d]))
            else:
                parts.append(F.linear(F.linear(x, a), p[f'{name}.lora_B.{s}.weight']) * scale)
        return y + torch.cat(parts, -1)
    return Hooks(linear=linear)


def kadaptation_hooks(p, cfg):
    s = cfg['kron_scale']

    def linear(name, x, y):
        if not name.endswith('attn.qkv'):
            return y
        d = y.shape[-1] // 3
        parts = []
        for i, t in enumerate('qkv'):
            left = p.get(f'{name}.kadaptation.{t}.W_left')
            if left is None:
                parts.append(torch.zeros_like(y[..., i * d:(i + 1) * d]))
                continue
            rule = torch.bmm(p[f'kadaptation.{t}.rule_left'], p[f'kadaptation.{t}.rule_right'])
            fast = torch.bmm(left, p[f'{name}.kadaptation.{t}.W_right'])
            parts.append(torch.matmul(x, kron_sum(rule, fast)) * s)
        return y + torch.cat(parts, -1)
    return Hooks(linear=linear)


def adapter_hooks(p, cfg):
    def branch(name, h):
        down = F.linear(h, p[f'{name}.adapter.down.weight'], p[f'{name}.adapter.down.bias'])
        return h + F.linear(F.gelu(down), p[f'{name}.adapter.up.weight'], p[f'{name}.adapter.up.bias'])
    return Hooks(branch=branch)


def compacter_hooks(p, cfg):
    rule = p['compacter.phm_rule']

    def phm(prefix, x):
        w = torch.bmm(p[f'{prefix}.W_left'], p[f'{prefix}.W_right'])
        return torch.matmul(x, kron_sum(rule, w)) + p[f'{prefix}.b']

    def branch(name, h):
        return h + phm(f'{name}.compacter.up', F.gelu(phm(f'{name}.compacter.down', h)))
    return Hooks(branch=branch)


def vida_hooks(p, cfg):
    s1, s2 = cfg.get('scales', (1.0, 1.0))

    def linear(name, x, y):
        if f'{name}.vida_down.weight' not in p:
            return y
        low = F.linear(F.linear(x, p[f'{name}.vida_down.weight']), p[f'{name}.vida_up.weight'])
        high = F.linear(F.linear(x, p[f'{name}.vida_down2.weight']), p[f'{name}.vida_up2.weight'])
        return y + low * s1 + high * s2
    return Hooks(linear=linear)


HOOKS = {'lora': lora_hooks, 'kadaptation': kadaptation_hooks, 'adapter': adapter_hooks,
         'compacter': compacter_hooks, 'vida': vida_hooks}


def vit_forward(sd, x, heads, hooks, eps=1e-6, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """timm vit_base_* math on state_dict `sd` (float64 tensors) for NCHW x in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - m) / s
    patch = sd['patch_embed.proj.weight'].shape[-1]
    t = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch).flatten(2).transpose(1, 2)
    t = torch.cat([sd['cls_token'].expand(t.shape[0], -1, -1), t], 1) + sd['pos_embed']
    d = t.shape[-1]
    hd = d // heads
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})

    def lin(name, v):
        y = F.linear(v, sd[f'{name}.weight'], sd.get(f'{name}.bias'))
        return hooks.linear(name, v, y)

    for i in range(depth):
        p = f'blocks.{i}'
        h = F.layer_norm(t, (d,), sd[f'{p}.norm1.weight'], sd[f'{p}.norm1.bias'], eps)
        n, tt, _ = h.shape
        qkv = lin(f'{p}.attn.qkv', h).reshape(n, tt, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        o = lin(f'{p}.attn.proj', (a @ v).transpose(1, 2).reshape(n, tt, d))
        t = t + hooks.branch(f'{p}.attn', o)
        h = F.layer_norm(t, (d,), sd[f'{p}.norm2.weight'], sd[f'{p}.norm2.bias'], eps)
        o = lin(f'{p}.mlp.fc2', F.gelu(lin(f'{p}.mlp.fc1', h)))
        t = t + hooks.branch(f'{p}.mlp', o)
    t = F.layer_norm(t, (d,), sd['norm.weight'], sd['norm.bias'], eps)
    return F.linear(t[:, 0], sd['head.weight'], sd['head.bias'])


def entropy_mean(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()


def tent_step(sd, x, heads, kind, params, cfg, lr):
    """One Tent step (SGD; the first step of momentum SGD is plain SGD) on the module parameters
    only. Returns the pre-update logits and the updated parameters."""
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    z = vit_forward(sd, x, heads, HOOKS[kind](ps, cfg))
    loss = entropy_mean(z)
    grads = torch.autograd.grad(loss, list(ps.values()), allow_unused=True)
    new = {}
    for (k, v), g in zip(ps.items(), grads):
        new[k] = (v - lr * (g if g is not None else torch.zeros_like(v))).detach()
    return z.detach(), loss.item(), new
