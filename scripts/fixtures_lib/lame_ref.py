"""Float64 re-statement of LAME (Boudiaf et al., CVPR 2022) for the parity fixtures.

Follows the per-batch procedure of the official run_step (github:fiveai/LAME
src/adaptation/lame.py; the same in mariodoebler/test-time-adaptation methods/lame.py): the
eval-mode source model gives probabilities and its penultimate features; the features are L2
normalised, an affinity matrix is built over the batch, and the bound optimisation
(laplacian_optimization, lambda 1) refines the probabilities. Nothing is trained.
"""
import torch
import torch.nn.functional as F

from .models import CifarResNeXt, WideResNet


def features_and_logits(model, x):
    """The input of the final linear layer and the logits (mariodoebler's split_up_model)."""
    if isinstance(model, CifarResNeXt):
        h = (x - model.mu) / model.sigma
        h = F.relu(model.bn_1(model.conv_1_3x3(h)))
        h = model.stage_3(model.stage_2(model.stage_1(h)))
        f = model.avgpool(h).flatten(1)
        return f, model.classifier(f)
    if isinstance(model, WideResNet):
        h = model.block3(model.block2(model.block1(model.conv1(x))))
        f = F.avg_pool2d(model.relu(model.bn1(h)), 8).flatten(1)
        return f, model.fc(f)
    raise TypeError(type(model))


def pairwise_distances(f):
    return (f.unsqueeze(0) - f.unsqueeze(1)).norm(dim=-1)


def affinity(kind, f, k):
    """[N, N] affinity of unit-norm features f ('knn', 'rbf' or 'linear')."""
    n = f.shape[0]
    if kind == 'linear':
        return f @ f.t()
    d = pairwise_distances(f)
    # stable sort = the lower index first among equal distances
    order = torch.sort(d, dim=-1, stable=True).indices
    if kind == 'knn':
        m = min(k + 1, n)
        w = torch.zeros(n, n, dtype=f.dtype)
        w.scatter_(1, order[:, 1:m], 1.0)  # the nearest point (the row's own) left out
        return w
    if kind == 'rbf':
        m = min(k, n)
        kth = d.gather(1, order[:, m - 1:m]).squeeze(1)  # counting the point itself (distance 0)
        sigma = kth.mean()
        return torch.exp(-d ** 2 / (2 * sigma ** 2))
    raise ValueError(kind)


def energy(y, unary, pairwise, lam):
    return (unary * y - lam * pairwise * y + y * torch.log(y.clamp(min=1e-20))).sum().item()


def laplacian_optimization(unary, kernel, lam=1.0, max_steps=100):
    """Returns (Y, steps run)."""
    y = (-unary).softmax(-1)
    old = float('inf')
    steps = 0
    for i in range(max_steps):
        steps = i + 1
        pairwise = lam * kernel @ y
        y = (-unary + pairwise).softmax(-1)
        e = energy(y, unary, pairwise, lam)
        if i > 1 and abs(e - old) <= 1e-8 * abs(old):
            break
        old = e
    return y, steps


@torch.no_grad()
def lame_step(model, x, kind, k, force_symmetry=False, max_steps=100):
    """One LAME batch: (Y, steps, features, logits)."""
    feats, logits = features_and_logits(model, x)
    unary = -torch.log(logits.softmax(1) + 1e-10)
    f = F.normalize(feats, p=2, dim=-1)
    w = affinity(kind, f, k)
    if force_symmetry:
        w = 0.5 * (w + w.t())
    y, steps = laplacian_optimization(unary, w, 1.0, max_steps)
    return y, steps, feats, logits
