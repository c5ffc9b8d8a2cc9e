"""Float64 reference of MectaNorm2d written from docs/mecta-norm.md (not from the MECTA code).

State per layer: running_mean, running_var (accumulated statistics), past_size.
Forward (docs/mecta-norm.md#forward): batch mean / biased var -> beta (docs/mecta-norm.md#distances,
e = 1e-3, or the constant rates)
-> running update (copy if beta >= 1) -> output normalised with the UPDATED statistics.
Backward: caching layer -> PreG (docs/mecta-norm.md#preg) for kept channels, the refill
(docs/mecta-norm.md#refill) for removed channels;
fully matched layer (gate on and beta <= beta_thre) -> dx = g, no weight/bias gradient (zeros).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DIST_EPS = 1e-3


def distance(mu1, v1, mu2, v2, metric, e=DIST_EPS):
    """Per-channel distance between batch stats (1) and accumulated stats (2), docs/mecta-norm.md#distances."""
    if metric == 'simple':
        return (mu1 - mu2) ** 2 / (v2 + e)
    if metric == 'kl':
        return 0.5 * (torch.log(v2 + e) - torch.log(v1 + e)) + (v1 + e + (mu1 - mu2) ** 2) / (2 * (v2 + e)) - 0.5
    if metric == 'skl':
        d2 = (mu1 - mu2) ** 2
        return 0.5 * ((v1 + e + d2) / (v2 + e) + (v2 + e + d2) / (v1 + e)) - 1.0
    raise ValueError(metric)


def check_a4_table():
    """Asserts the test-vector table of docs/mecta-norm.md#distances (e = 1e-3, s = 1)."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    rows = [
        ((0.5, 2.0, 0.0, 1.0), 0.436969, 0.278052, 0.249750, 0.354009),
        ((0.1, 1.1, 0.0, 1.0), 0.014073, 0.007335, 0.009990, 0.013975),
        ((0.01, 1.0, 0.0, 1.0), 0.000100, 0.000050, 0.000100, 0.000100),
        ((0.3, 1.7, 0.3, 1.7), 0.0, 0.0, 0.0, 0.0),  # identical stats
    ]
    for (m1, v1, m2, v2), skl, kl, simple, beta in rows:
        a = [t(m1), t(v1), t(m2), t(v2)]
        got = {k: distance(*a, k).item() for k in ('skl', 'kl', 'simple')}
        for k, want in (('skl', skl), ('kl', kl), ('simple', simple)):
            assert abs(got[k] - want) < 1e-6, (k, got[k], want)
        b = 1 - math.exp(-got['skl'])
        assert abs(b - beta) < 1e-6, (b, beta)
    d = distance(t(0.5, 0.0), t(2.0, 1.0), t(0.0, 0.0), t(1.0, 1.0), 'skl')
    assert abs(d.mean().item() - 0.218485) < 1e-6
    assert abs(1 - math.exp(-d.mean().item()) - 0.196264) < 1e-6


class MectaOpts:
    def __init__(self, beta=0.1, init_beta=None, forget_gate=False, dist_metric='skl', dist_scale=1.0,
                 beta_thre=0.0, prune_q=0.0, eps=1e-5):
        self.beta = beta
        self.init_beta = init_beta
        self.forget_gate = forget_gate
        self.dist_metric = dist_metric
        self.dist_scale = dist_scale
        self.beta_thre = beta_thre
        self.prune_q = prune_q
        self.eps = eps

    def to_json(self):
        return {'beta': self.beta, 'init_beta': self.init_beta, 'forget_gate': self.forget_gate,
                'dist_metric': self.dist_metric, 'dist_scale': self.dist_scale, 'beta_thre': self.beta_thre,
                'prune_q': self.prune_q, 'eps': self.eps}


class MectaState:
    def __init__(self, running_mean, running_var):
        self.running_mean = running_mean.clone().double()
        self.running_var = running_var.clone().double()
        self.past_size = 0


def mecta_forward(state, x, weight, bias, opts):
    """One MectaNorm2d forward (docs/mecta-norm.md#forward); mutates state. Returns (y, info)."""
    with torch.no_grad():
        mu_b = x.mean(dim=(0, 2, 3))
        v_b = x.var(dim=(0, 2, 3), unbiased=False)
        if opts.forget_gate:
            d = distance(mu_b, v_b, state.running_mean, state.running_var, opts.dist_metric)
            beta = 1.0 - math.exp(-opts.dist_scale * d.mean().item())
        else:
            if state.past_size > 0:
                beta = opts.beta
            else:
                beta = opts.beta if opts.init_beta is None else opts.init_beta
        if beta < 1.0:
            state.running_mean = (1 - beta) * state.running_mean + beta * mu_b
            state.running_var = (1 - beta) * state.running_var + beta * v_b
        else:
            state.running_mean = mu_b.clone()
            state.running_var = v_b.clone()
        matched = bool(opts.forget_gate and beta <= opts.beta_thre)
        rm = state.running_mean.view(1, -1, 1, 1)
        rv = state.running_var.view(1, -1, 1, 1)
        y = weight.view(1, -1, 1, 1) * (x - rm) / torch.sqrt(rv + opts.eps) + bias.view(1, -1, 1, 1)
        state.past_size += x.shape[0]
    info = {'beta': beta, 'matched': matched, 'mu_b': mu_b, 'v_b': v_b,
            'running_mean': state.running_mean.clone(), 'running_var': state.running_var.clone()}
    return y, info


def n_removed(channels, prune_q):
    return int(math.floor(channels * prune_q))


def mecta_backward(x, g, weight, info, eps, removed=None):
    """Gradients (dx, dweight, dbias) of one MectaNorm2d forward given upstream g
    (docs/mecta-norm.md#cache-stopping, #preg, #pruning).

    `removed`: LongTensor of removed channel indices (docs/mecta-norm.md#pruning) or None / empty for no pruning.
    """
    C = x.shape[1]
    if info['matched']:
        return g.clone(), torch.zeros(C, dtype=g.dtype), torch.zeros(C, dtype=g.dtype)
    mu_b, v_b = info['mu_b'], info['v_b']
    mu_r, v_r = info['running_mean'], info['running_var']
    sig_r = torch.sqrt(v_r + eps)
    sig_b = torch.sqrt(v_b + eps)
    v = lambda t: t.view(1, -1, 1, 1)
    red = (0, 2, 3)
    gmean = g.mean(dim=red)
    xhat = (x - v(mu_b)) / v(sig_b)
    dbias = g.sum(dim=red)
    dweight = (g * (x - v(mu_r)) / v(sig_r)).sum(dim=red)
    dx = v(weight / sig_r) * (g - v(gmean) - xhat * v((g * xhat).mean(dim=red)))
    if removed is not None and len(removed) > 0:
        rm = torch.zeros(C, dtype=torch.bool)
        rm[removed] = True
        dx_refill = v(weight / sig_r) * (g - v(gmean))
        dx = torch.where(v(rm), dx_refill, dx)
        dweight = torch.where(rm, torch.zeros_like(dweight), dweight)
    return dx, dweight, dbias


def check_preg_against_autograd(x, g, weight, bias, info, eps):
    """docs/mecta-norm.md#preg: the closed-form gradients equal autograd of the reparameterised train-mode BN."""
    mu_b, v_b = info['mu_b'], info['v_b']
    mu_r, v_r = info['running_mean'], info['running_var']
    sig_r = torch.sqrt(v_r + eps)
    ratio = torch.sqrt(v_b + eps) / sig_r
    shift = (mu_b - mu_r) / sig_r
    xa = x.detach().clone().requires_grad_(True)
    wa = weight.detach().clone().requires_grad_(True)
    ba = bias.detach().clone().requires_grad_(True)
    y = F.batch_norm(xa, None, None, wa * ratio, wa * shift + ba, training=True, momentum=0.0, eps=eps)
    y_fwd = weight.view(1, -1, 1, 1) * (x - mu_r.view(1, -1, 1, 1)) / sig_r.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    assert torch.allclose(y, y_fwd, rtol=1e-10, atol=1e-11), (y - y_fwd).abs().max()
    y.backward(g)
    dx, dw, db = mecta_backward(x, g, weight, dict(info, matched=False), eps)
    for a, b in ((xa.grad, dx), (wa.grad, dw), (ba.grad, db)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11), (a - b).abs().max()


# --------------------------------------------------------------------------------------------------
# Full-network MECTA (for Tent + MECTA): every BatchNorm2d replaced by MectaBN.

class _MectaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, y, layer):
        ctx.layer = layer
        ctx.save_for_backward(x, weight)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        dx, dw, db = mecta_backward(x, g, weight, layer.last_info, layer.opts.eps, layer.current_removed)
        layer.last_grads = (dw, db)
        return dx, dw, db, None, None


class MectaBN(nn.Module):
    """Drop-in replacement for a BatchNorm2d holding the MECTA state; `name` = module path."""

    def __init__(self, bn, name, opts):
        super().__init__()
        self.name = name
        self.opts = opts
        self.num_features = bn.num_features
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())
        self.state = MectaState(bn.running_mean.detach(), bn.running_var.detach())
        self.removed_chooser = None  # callable(name) -> LongTensor of removed channels
        self.current_removed = None
        self.last_info = None
        self.last_grads = None

    def forward(self, x):
        y, info = mecta_forward(self.state, x.detach(), self.weight.detach(), self.bias.detach(), self.opts)
        self.last_info = info
        self.last_grads = None
        if self.opts.prune_q > 0 and self.removed_chooser is not None:
            self.current_removed = self.removed_chooser(self.name)
        else:
            self.current_removed = None
        return _MectaFn.apply(x, self.weight, self.bias, y, self)


def replace_bn(model, opts, prefix=''):
    """Replaces every BatchNorm2d child (recursively, module order); returns the list of MectaBN."""
    out = []
    for child_name, child in list(model.named_children()):
        path = f'{prefix}.{child_name}' if prefix else child_name
        if isinstance(child, nn.BatchNorm2d):
            new = MectaBN(child, path, opts)
            setattr(model, child_name, new)
            out.append(new)
        else:
            out.extend(replace_bn(child, opts, path))
    return out
