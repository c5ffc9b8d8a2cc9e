"""Float64 references of Tent, ETA, EATA (docs/methods.md#configuration, #tent, #eata) and Tent + MECTA."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mecta_ref import replace_bn


def entropy(logits):
    """Per-sample Shannon entropy, -(softmax * log_softmax).sum(1)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure_batch_bn(model):
    """docs/methods.md#configuration with local_bn: train mode, only BN affine trainable, running statistics removed."""
    model = copy.deepcopy(model)
    model.train()
    model.requires_grad_(False)
    params, names = [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            params += [m.weight, m.bias]
            names += [f'{name}.weight', f'{name}.bias']
    return model, params, names


def make_optimizer(params, spec):
    if spec['name'] == 'sgd':
        return torch.optim.SGD(params, lr=spec['lr'], momentum=spec['momentum'], dampening=0.0,
                               weight_decay=0.0, nesterov=False)
    if spec['name'] == 'adam':
        return torch.optim.Adam(params, lr=spec['lr'], betas=tuple(spec['betas']), eps=spec['eps'],
                                weight_decay=0.0)
    raise ValueError(spec['name'])


def compute_fisher(model, params, names, batches):
    """docs/methods.md#fisher-estimation: pseudo-label CE (batch mean) per batch, squared grads summed, / #batches."""
    fisher = {n: torch.zeros_like(p) for n, p in zip(names, params)}
    for p in params:
        p.grad = None
    for x in batches:
        logits = model(x)
        target = logits.argmax(1)
        loss = F.cross_entropy(logits, target)
        grads = torch.autograd.grad(loss, params)
        for n, gr in zip(names, grads):
            fisher[n] += gr.detach() ** 2
    for n in names:
        fisher[n] /= len(batches)
    theta_star = {n: p.detach().clone() for n, p in zip(names, params)}
    return fisher, theta_star


def run_tent(model, params, xs, opt_spec):
    opt = make_optimizer(params, opt_spec)
    logits_all, steps = [], []
    for x in xs:
        logits = model(x)
        loss = entropy(logits).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        logits_all.append(logits.detach())
        steps.append({'updated': True, 'loss': loss.item()})
    return logits_all, steps


def run_eata(model, params, names, xs, opt_spec, e_margin, d_margin, fisher=None, theta_star=None,
             fisher_alpha=0.0):
    """ETA when fisher is None, EATA otherwise. Returns logits, per-step records, moving averages."""
    opt = make_optimizer(params, opt_spec)
    probs_ma = None
    logits_all, steps, mas, diag = [], [], [], []
    for x in xs:
        logits = model(x)
        ent = entropy(logits)
        rel_idx = torch.where(ent < e_margin)[0]
        ent_sel = ent[rel_idx]
        probs_rel = logits[rel_idx].softmax(1)
        cos = None
        if probs_ma is not None:
            cos = F.cosine_similarity(probs_ma.unsqueeze(0), probs_rel, dim=1)
            keep = torch.where(torch.abs(cos) < d_margin)[0]
            ent_sel = ent_sel[keep]
            new_probs = probs_rel[keep]
            used_idx = rel_idx[keep]
        else:
            new_probs = probs_rel
            used_idx = rel_idx
        with torch.no_grad():
            if new_probs.shape[0] > 0:
                if probs_ma is None:
                    probs_ma = new_probs.mean(0)
                else:
                    probs_ma = 0.9 * probs_ma + 0.1 * new_probs.mean(0)
        coeff = torch.exp(e_margin - ent_sel.detach())
        loss = (ent_sel * coeff).mean(0) if ent_sel.numel() > 0 else None
        ewc = None
        if loss is not None and fisher is not None:
            ewc = 0.0
            for n, p in zip(names, params):
                ewc = ewc + (fisher[n] * (p - theta_star[n]) ** 2).sum()
            ewc = fisher_alpha * ewc
            loss = loss + ewc
        updated = used_idx.numel() > 0
        if updated:
            loss.backward()
            opt.step()
        opt.zero_grad()
        logits_all.append(logits.detach())
        mas.append(None if probs_ma is None else probs_ma.detach().clone())
        steps.append({'updated': bool(updated), 'reliable': int(rel_idx.numel()), 'used': int(used_idx.numel()),
                      'reliable_indices': rel_idx.tolist(), 'used_indices': used_idx.tolist(),
                      'loss': None if loss is None else loss.item(),
                      'ewc': None if ewc is None else float(ewc)})
        diag.append({'entropy': ent.detach(), 'cos': None if cos is None else cos.detach(),
                     'rel_idx': rel_idx})
    return logits_all, steps, mas, diag


def run_tent_mecta(model, xs, opts, lr, momentum, removed_per_step):
    """Tent with every BN replaced by the MECTA reference (accum_bn, PyTorch 1.12 optimizer semantics).

    Matched layers get zero weight/bias gradients (zero-filled .grad), so SGD still applies momentum;
    when every layer is matched the whole backward + step is skipped (has_accum_bn_grad == False).
    """
    model = copy.deepcopy(model)
    model.train()
    model.requires_grad_(False)
    layers = replace_bn(model, opts)
    params = []
    for l in layers:
        l.weight.requires_grad_(True)
        l.bias.requires_grad_(True)
        params += [l.weight, l.bias]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=0.0, weight_decay=0.0, nesterov=False)
    logits_all, steps = [], []
    for k, x in enumerate(xs):
        for l in layers:
            l.removed_chooser = (lambda name, k=k: removed_per_step[k][name])
        logits = model(x)
        betas = [l.last_info['beta'] for l in layers]
        matched = [l.last_info['matched'] for l in layers]
        loss = entropy(logits).mean()
        updated = not all(matched)
        if updated:
            loss.backward()
            opt.step()
        opt.zero_grad()
        logits_all.append(logits.detach())
        steps.append({'updated': updated, 'loss': loss.item(), 'beta': betas, 'matched': matched})
    return logits_all, steps, layers
