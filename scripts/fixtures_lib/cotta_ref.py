"""Float64 re-statement of CoTTA (Wang et al., CVPR 2022) for the parity fixtures.

Follows the per-batch procedure of the official forward_and_adapt (qinenergy/cotta, cifar/ and
imagenet/cotta.py; MECTA's algorithm/cotta.py for the norm-only variant), with every random draw
supplied by the caller so the TypeScript test can replay it:
  - aug_copies[k]: the augmented copies of batch k (a list of tensors, used only when the anchor's
    mean max-probability is below ap);
  - restore_sets[k]: for each trained parameter name, a boolean mask (PyTorch layout) of the
    elements put back to their source values after step k.
"""
import copy

import torch
import torch.nn as nn


def configure_cotta(model, train_all):
    """Train mode, BatchNorm on batch statistics (running buffers dropped), trainable parameters:
    all of them (cotta) or the BatchNorm affines (cotta_bn). Returns (model, [(name, param)])."""
    model = copy.deepcopy(model)
    model.train()
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        elif train_all:
            m.requires_grad_(True)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return model, trained


def teacher_student_loss(student, teacher, symmetric):
    """Batch mean of -sum softmax(t) log softmax(s) (or its symmetric average with the reverse)."""
    fwd = -(teacher.softmax(1) * student.log_softmax(1)).sum(1)
    if not symmetric:
        return fwd.mean()
    bwd = -(student.softmax(1) * teacher.log_softmax(1)).sum(1)
    return (0.5 * fwd + 0.5 * bwd).mean()


def make_optimizer(params, spec):
    if spec['name'] == 'adam':
        return torch.optim.Adam(params, lr=spec['lr'], betas=tuple(spec['betas']), eps=spec['eps'], weight_decay=0.0)
    if spec['name'] == 'sgd':
        return torch.optim.SGD(params, lr=spec['lr'], momentum=spec['momentum'], dampening=0.0,
                               weight_decay=0.0, nesterov=spec['nesterov'])
    raise ValueError(spec['name'])


def anchor_confidence(anchor, x):
    with torch.no_grad():
        return anchor(x).softmax(1).max(1)[0].mean().item()


def run_cotta(model, trained, xs, opt_spec, alpha, ap, symmetric, aug_copies, restore_sets):
    """Runs len(xs) CoTTA steps on the configured `model`. Returns (targets, records, teacher)."""
    names = [n for n, _ in trained]
    params = [p for _, p in trained]
    opt = make_optimizer(params, opt_spec)
    src = {n: p.detach().clone() for n, p in trained}
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.detach_()
    anchor = copy.deepcopy(model)
    t_params = dict(teacher.named_parameters())
    targets, records = [], []
    for k, x in enumerate(xs):
        student_logits = model(x)
        conf = anchor_confidence(anchor, x)
        with torch.no_grad():
            if conf < ap:
                target = torch.stack([teacher(a) for a in aug_copies[k]]).mean(0)
            else:
                target = teacher(x)
        loss = teacher_student_loss(student_logits, target, symmetric)
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for n, p in trained:
                t = t_params[n]
                t.copy_(alpha * t + (1 - alpha) * p)
            restored = 0
            for n, p in trained:
                m = restore_sets[k][n]
                restored += int(m.sum().item())
                p.copy_(torch.where(m, src[n], p))
        targets.append(target.detach().clone())
        records.append({'anchor_confidence': conf, 'augmented': conf < ap, 'loss': loss.item(), 'restored': restored})
    return targets, records, teacher
