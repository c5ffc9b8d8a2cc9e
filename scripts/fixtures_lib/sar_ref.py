"""Float64 plain-PyTorch re-statement of SAR (Niu et al., ICLR 2023) for the parity fixtures.

Written from the method description and checked against the behaviour of the official code
(github:mr-eggplant/SAR, sar.py + sam.py), not copied from it. What the re-statement keeps from the
official behaviour, on purpose:

* reliable filter 1 on the first forward (H < E0), filter 2 on the second forward restricted to the
  samples of filter 1 (H' < E0);
* an empty selection gives a NaN mean whose backward is all zeros: SAM then does not move θ
  (‖g‖ = 0) and the base SGD still takes its (momentum-only) step;
* the EMA of the second loss (momentum 0.9) is updated only when that loss is not NaN; when it is
  below the reset threshold the model and optimizer go back to their configure-time state, and the
  EMA value itself is kept (the official SAR.forward re-assigns self.ema after reset()).
"""
import copy
import math

import torch

from .adapt_ref import entropy, make_optimizer


def sar_selects(name):
    """collect_params' name filter: the top of the network stays frozen."""
    for part in ('layer4', 'blocks.9', 'blocks.10', 'blocks.11', 'norm.'):
        if part in name:
            return False
    return name != 'norm'


def run_sar(model, params, xs, opt_spec, e0, rho, reset_below, mecta_layers=None):
    """mecta_layers: the MectaBN layers when every BatchNorm2d was replaced (mecta_ref.replace_bn):
    both forwards then run through them, and a pass in which every layer is matched runs no
    backward; when that is the first pass, nothing else happens for the batch, when it is the
    second, θ is restored and no step is taken (MECTA's cache stopping)."""
    def all_matched():
        return mecta_layers is not None and all(l.last_info['matched'] for l in mecta_layers)

    opt = make_optimizer(params, opt_spec)
    start = copy.deepcopy(model.state_dict())
    ema = None
    logits_all, steps, diag = [], [], []
    for x in xs:
        for p in params:
            p.grad = None
        # pass 1 at θ
        logits = model(x)
        h1 = entropy(logits)
        ids1 = torch.where(h1 < e0)[0]
        matched = [] if mecta_layers is None else [[l.last_info['matched'] for l in mecta_layers]]
        betas = [] if mecta_layers is None else [[l.last_info['beta'] for l in mecta_layers]]
        if all_matched():
            logits_all.append(logits.detach())
            steps.append({'updated': False, 'reliable': int(ids1.numel()), 'used': 0, 'loss2': None, 'ema': ema,
                          'reset': False, 'matched': matched, 'beta': betas})
            diag.append({'h1': h1.detach(), 'h2': torch.zeros(0, dtype=h1.dtype)})
            continue
        h1[ids1].mean(0).backward()
        with torch.no_grad():
            gnorm = torch.stack([p.grad.norm(p=2) for p in params]).norm(p=2)
            scale = rho / (gnorm + 1e-12)
            theta = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        for p in params:
            p.grad.zero_()
        # pass 2 at θ + ε̂(θ)
        h2 = entropy(model(x))[ids1]
        ids2 = torch.where(h2 < e0)[0]
        loss2 = h2[ids2].mean(0)
        if not math.isnan(loss2.item()):
            ema = loss2.item() if ema is None else 0.9 * ema + 0.1 * loss2.item()
        if mecta_layers is not None:
            matched.append([l.last_info['matched'] for l in mecta_layers])
            betas.append([l.last_info['beta'] for l in mecta_layers])
        updated = not all_matched()
        if updated:
            loss2.backward()
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        if updated:
            opt.step()
        reset = ema is not None and ema < reset_below
        if reset:
            model.load_state_dict(start)
            opt = make_optimizer(params, opt_spec)  # the configure-time (empty) optimizer state
        logits_all.append(logits.detach())
        rec = {'updated': updated, 'reliable': int(ids1.numel()), 'used': int(ids2.numel()),
               'loss2': None if math.isnan(loss2.item()) else loss2.item(), 'ema': ema,
               'reset': bool(reset), 'grad_norm': gnorm.item()}
        if mecta_layers is not None:
            rec.update(matched=matched, beta=betas)
        steps.append(rec)
        diag.append({'h1': h1.detach(), 'h2': h2.detach()})
    return logits_all, steps, diag
