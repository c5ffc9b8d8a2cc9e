"""Float64 re-statement of ROID (Marsden et al., WACV 2024) for the parity fixtures.

Follows loss_calculation / forward_and_adapt of the authors' methods/roid.py (mariodoebler/
test-time-adaptation) with conf.py's ROID defaults; the augmented copy of the consistency loss is
supplied by the caller (aug(x_kept, k) for step k) so the TypeScript test can replay it.
"""
import torch
import torch.nn.functional as F

from .adapt_ref import make_optimizer as _plain_optimizer


def make_optimizer(params, spec):
    if spec['name'] == 'sgd':
        return torch.optim.SGD(params, lr=spec['lr'], momentum=spec['momentum'], dampening=0.0,
                               weight_decay=0.0, nesterov=spec.get('nesterov', False))
    return _plain_optimizer(params, spec)


def soft_likelihood_ratio(z, clip=0.99, eps=1e-5):
    p = z.softmax(1).clamp(0.0, clip)
    return -(p * torch.log(p / (1.0 - p) + eps)).sum(1)


def symmetric_ce(s, t):
    """0.5 * CE(softmax(t), s) + 0.5 * CE(softmax(s), t), per sample; neither side detached."""
    return -0.5 * (t.softmax(1) * s.log_softmax(1)).sum(1) - 0.5 * (s.softmax(1) * t.log_softmax(1)).sum(1)


def normalise(v):
    return (v - v.min()) / (v.max() - v.min())


def run_roid(model, params, xs, opt_spec, aug, temperature=1 / 3, mom_src=0.99, mom_probs=0.9,
             consistency=True, prior=True):
    """len(xs) ROID steps on a model configured with batch-statistics BN. Returns the returned
    predictions, per-step records and the final trained parameters."""
    source = [p.detach().clone() for p in params]
    opt = make_optimizer(params, opt_spec)
    n_cls = None
    m = None
    preds, records = [], []
    for k, x in enumerate(xs):
        z = model(x)
        b, n_cls = z.shape
        if m is None:
            m = torch.full((n_cls,), 1.0 / n_cls, dtype=z.dtype)
        with torch.no_grad():
            p = z.softmax(1)
            div = normalise(1 - F.cosine_similarity(m.unsqueeze(0), p, dim=1))
            drop = div < div.mean()
            cert = normalise((p * z.log_softmax(1)).sum(1))
            w = torch.exp(div * cert / temperature)
            w[drop] = 0.0
            margin = (div - div.mean()).abs().min().item()
            m = mom_probs * m + (1 - mom_probs) * p.mean(0)
        keep = ~drop
        loss = (soft_likelihood_ratio(z) * w)[keep].sum() / b
        if consistency:
            z_aug = model(aug(x[keep], k))
            loss = loss + (symmetric_ce(z_aug, z[keep]) * w[keep]).sum() / b
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for q, s in zip(params, source):
                q.copy_(mom_src * q + (1 - mom_src) * s)
            out = z.detach().clone()
            if prior:
                pr = out.softmax(1).mean(0)
                smooth = max(1 / b, 1 / n_cls) / pr.max()
                out = out * ((pr + smooth) / (1 + smooth * n_cls))
        preds.append(out)
        records.append({'kept': int(keep.sum()), 'loss': loss.item(), 'mask_margin': margin,
                        'weights': w.tolist(), 'probs_ema': m.tolist()})
    return preds, records


def roid_tta(img, params):
    """ROID's augmentation (get_tta_transforms(padding_mode='reflect', cotta_augs=False)) with fixed
    parameters, on full images: clip, colour jitter, reflect padding, affine, centre crop, flip, clip
    (the tensor operations of tv_ops, as CoTTA's pipeline without blur and noise)."""
    from . import tv_ops
    h, w = img.shape[-2:]
    y = img.clamp(0.0, 1.0)
    for op in params['jitter_order']:
        y = tv_ops.JITTER[op](y, params[op])
    p = params['pad']
    y = torch.nn.functional.pad(y, [p, p, p, p], mode='reflect')
    y = tv_ops.affine(y, params['angle'], params['translate'], params['scale'], params['shear'])
    y = tv_ops.center_crop(y, h, w)
    if params['flip']:
        y = tv_ops.hflip(y)
    return y.clamp(0.0, 1.0)
