"""Float64 re-statement of MEMO (Zhang et al., NeurIPS 2022) with AlphaBatchNorm, as
mariodoebler/test-time-adaptation runs it (methods/memo.py, methods/bn.py), for the fixtures.

AlphaBN: every BatchNorm2d normalises with (1 - a) * source + a * batch statistics, the batch
variance unbiased (what a momentum-1 BatchNorm leaves in running_var) and the mixed statistics
constant for autograd. MEMO per sample: reload the source state, one SGD step on the marginal
entropy of the views' mean prediction over every parameter, then predict the sample.
"""
import copy

import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class AlphaBN(nn.BatchNorm2d):
    """A BatchNorm2d (same parameter names) normalising with the source/batch mix."""

    def __init__(self, bn, alpha):
        super().__init__(bn.num_features, eps=bn.eps)
        self.to(bn.weight.dtype)
        self.load_state_dict(bn.state_dict())
        self.alpha = alpha

    def forward(self, x):
        with torch.no_grad():
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=True)
            mu = (1 - self.alpha) * self.running_mean + self.alpha * mean
            v = (1 - self.alpha) * self.running_var + self.alpha * var
        return F.batch_norm(x, mu, v, self.weight, self.bias, False, 0.0, self.eps)


def alpha_bn_model(model, alpha):
    model = copy.deepcopy(model)

    def swap(parent):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, AlphaBN(child, alpha))
            else:
                swap(child)
    swap(model)
    model.eval()
    model.requires_grad_(True)
    return model


def marginal_entropy(z):
    logp = z - z.logsumexp(dim=-1, keepdim=True)
    avg = logp.logsumexp(dim=0) - math.log(z.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(-1)


def run_memo(model, samples, views, opt_spec):
    """samples: list of [1,C,H,W] tensors; views: list of [n,C,H,W]. Returns predictions, losses."""
    source = copy.deepcopy(model.state_dict())
    preds, losses = [], []
    for x, v in zip(samples, views):
        model.load_state_dict(source)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=opt_spec['lr'], momentum=opt_spec['momentum'], dampening=0.0,
                              weight_decay=0.0, nesterov=opt_spec['nesterov'])
        loss = marginal_entropy(model(v))
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            preds.append(model(x))
        losses.append(loss.item())
    return preds, losses
