"""Float64 re-statement of RoTTA (Yuan et al., CVPR 2023) for the parity fixtures.

Follows the official code (github:BIT-DA/RoTTA core/adapter/rotta.py, core/utils/bn_layers.py,
core/utils/memory.py; mariodoebler/test-time-adaptation methods/rotta.py is the same algorithm):
  - robust BN: every BatchNorm2d becomes a layer whose stored statistics are an EMA of the batch
    statistics (momentum alpha), updated and used in train mode, used as they are in eval mode;
    only its affine parameters train;
  - per batch the EMA teacher predicts in eval mode; each sample enters the category-balanced
    memory bank (CSTU) under the teacher's pseudo-label with its entropy as uncertainty, and every
    `update_frequency` samples the student takes one optimizer step on the bank: the teacher (train
    mode) labels the bank, the student (train mode) sees its strong augmentation, and the
    cross-entropy is weighted by the timeliness weight exp(-a)/(1+exp(-a)) of each sample's age a;
    then teacher <- (1 - nu) teacher + nu student over all parameters.
The augmentation is supplied by the caller (a replayable surrogate in the fixture).
"""
import copy
import math

import torch
import torch.nn as nn


class RobustBN(nn.Module):
    def __init__(self, bn, momentum):
        super().__init__()
        self.momentum = momentum
        self.eps = bn.eps
        self.register_buffer('stat_mean', bn.running_mean.detach().clone())
        self.register_buffer('stat_var', bn.running_var.detach().clone())
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())

    def forward(self, x):
        if self.training:
            bv, bm = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
            mean = (1 - self.momentum) * self.stat_mean + self.momentum * bm
            var = (1 - self.momentum) * self.stat_var + self.momentum * bv
            self.stat_mean = mean.detach().clone()
            self.stat_var = var.detach().clone()
        else:
            mean, var = self.stat_mean, self.stat_var
        xh = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps)
        return xh * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def configure_rotta(source, momentum):
    """A copy of `source` with robust BN layers; returns (model, [(name, param)] trained).
    Names are the BatchNorm module paths + .weight / .bias, as in the state_dict."""
    model = copy.deepcopy(source)
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for n in names:
        parent = model
        parts = n.split('.')
        for p in parts[:-1]:
            parent = getattr(parent, p)
        setattr(parent, parts[-1], RobustBN(getattr(parent, parts[-1]), momentum))
    for m in model.modules():
        if isinstance(m, RobustBN):
            m.requires_grad_(True)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return model, trained


def rbn_stats(model):
    """{'<module>.running_mean' / '.running_var': stored statistics} of the robust BN layers."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, RobustBN):
            out[f'{n}.running_mean'] = m.stat_mean.detach().clone()
            out[f'{n}.running_var'] = m.stat_var.detach().clone()
    return out


class Item:
    def __init__(self, x, sid, uncertainty):
        self.x, self.sid, self.uncertainty, self.age = x, sid, uncertainty, 0


class BalancedBank:
    """CSTU: per-class lists, capacity split evenly, score = lambda_t * sigmoid(age / capacity)
    + lambda_u * uncertainty / ln(num_class); the highest score is evicted (last one on ties)."""

    def __init__(self, capacity, num_class, lambda_t, lambda_u):
        self.capacity, self.num_class = capacity, num_class
        self.per_class = capacity / num_class
        self.lt, self.lu = lambda_t, lambda_u
        self.data = [[] for _ in range(num_class)]
        self.min_gap = float('inf')  # closest decision seen (the fixture must stay away from ties)
        self.paths = {'free': 0, 'majority': 0, 'own_class': 0}  # which rule decided each sample

    def occupancy(self):
        return sum(len(c) for c in self.data)

    def score(self, age, u):
        return self.lt / (1 + math.exp(-age / self.capacity)) + self.lu * u / math.log(self.num_class)

    def evict_from(self, classes, new_score):
        best = None
        for c in classes:
            for i, it in enumerate(self.data[c]):
                s = self.score(it.age, it.uncertainty)
                if best is not None:
                    self.min_gap = min(self.min_gap, abs(s - best[0]))
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        self.min_gap = min(self.min_gap, abs(best[0] - new_score))
        if best[0] > new_score:
            self.data[best[1]].pop(best[2])
            return True
        return False

    def admits(self, cls, new_score):
        if len(self.data[cls]) < self.per_class:
            if self.occupancy() < self.capacity:
                self.paths['free'] += 1
                return True
            self.paths['majority'] += 1
            sizes = [len(c) for c in self.data]
            top = max(sizes)
            return self.evict_from([c for c, s in enumerate(sizes) if s == top], new_score)
        self.paths['own_class'] += 1
        return self.evict_from([cls], new_score)

    def add(self, x, sid, cls, u):
        ok = self.admits(cls, self.score(0, u))
        if ok:
            self.data[cls].append(Item(x, sid, u))
        for c in self.data:
            for it in c:
                it.age += 1
        return ok

    def memory(self):
        items = [it for c in self.data for it in c]
        return items, [it.age / self.capacity for it in items]

    def describe(self):
        return [[it.sid, c, it.age] for c, lst in enumerate(self.data) for it in lst]


def make_optimizer(params, spec):
    return torch.optim.Adam(params, lr=spec['lr'], betas=tuple(spec['betas']), eps=spec['eps'], weight_decay=0.0)


def run_rotta(model, trained, xs, opt_spec, capacity, frequency, nu, lambda_t, lambda_u, num_class, augment):
    """Runs len(xs) batches. `augment(j, sup)`: the strong augmentation of the j-th update.
    Returns (outputs per batch, records per batch, teacher, bank)."""
    params = [p for _, p in trained]
    opt = make_optimizer(params, opt_spec)
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.detach_()
    bank = BalancedBank(capacity, num_class, lambda_t, lambda_u)
    seen, n_updates = 0, 0
    outs, records = [], []

    def update():
        nonlocal n_updates
        model.train()
        teacher.train()
        items, ages = bank.memory()
        loss = None
        if items:
            sup = torch.stack([it.x for it in items])
            strong = augment(n_updates, sup)
            t_out = teacher(sup)
            s_out = model(strong)
            a = torch.tensor(ages, dtype=sup.dtype)
            w = torch.exp(-a) / (1 + torch.exp(-a))
            ce = -(t_out.softmax(1) * s_out.log_softmax(1)).sum(1)
            loss = (ce * w).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for tp, sp in zip(teacher.parameters(), model.parameters()):
                tp.copy_((1 - nu) * tp + nu * sp)
        n_updates += 1
        return loss.item() if loss is not None else None

    for k, x in enumerate(xs):
        model.eval()
        teacher.eval()
        with torch.no_grad():
            out = teacher(x)
            p = out.softmax(1)
            labels = p.argmax(1)
            ent = (-p * torch.log(p + 1e-6)).sum(1)
        admitted, losses = 0, []
        for i in range(x.shape[0]):
            admitted += int(bank.add(x[i], k * x.shape[0] + i, int(labels[i]), float(ent[i])))
            seen += 1
            if seen % frequency == 0:
                losses.append(update())
        outs.append(out.detach().clone())
        records.append({'updates': len(losses), 'admitted': admitted, 'bank': bank.occupancy(), 'losses': losses,
                        'pseudo_labels': [int(v) for v in labels], 'entropy': [float(v) for v in ent],
                        'memory': bank.describe()})
    return outs, records, teacher, bank
