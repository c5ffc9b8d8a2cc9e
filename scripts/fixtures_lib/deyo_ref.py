"""Float64 plain-PyTorch re-statement of DeYO (Lee et al., ICLR 2024) for the parity fixtures.

Written from the method description and checked against the behaviour of the official code
(github:Jhyun17/DeYO, methods/deyo.py with config.py's defaults), not copied from it:

* S1 = {H < deyo_margin} on the prediction forward; none: no step;
* x' = the S1 images with their patch_len × patch_len grid of patches shuffled (one permutation per
  image, given here so the TS side can replay it), forwarded without gradient (train-mode BN:
  the statistics of x');
* PLPD = p(x)[ŷ] − p(x')[ŷ], ŷ = argmax p(x); S2 = {i ∈ S1 : PLPD > plpd_threshold}; none: no step;
* loss = mean over S2 of H · (exp(−(H − margin_e0)) + exp(PLPD)), the weights without gradient;
  one SGD step.
"""
import torch

from .adapt_ref import entropy, make_optimizer


def patch_shuffle(x, patch_len, perms):
    """x [n, c, h, w] with h, w divisible by patch_len; perms [n, patch_len²]: new patch j = old perms[j]."""
    n, c, h, w = x.shape
    s, t = h // patch_len, w // patch_len
    p = x.reshape(n, c, patch_len, s, patch_len, t).permute(0, 2, 4, 1, 3, 5).reshape(n, patch_len * patch_len, c, s, t)
    p = p[torch.arange(n).unsqueeze(1), perms]
    return p.reshape(n, patch_len, patch_len, c, s, t).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def run_deyo(model, params, xs, opt_spec, deyo_margin, margin_e0, plpd_threshold, patch_len, gen):
    opt = make_optimizer(params, opt_spec)
    logits_all, steps, perms_all, diag = [], [], [], []
    for x in xs:
        opt.zero_grad()
        logits = model(x)
        h = entropy(logits)
        ids1 = torch.where(h < deyo_margin)[0]
        rec = {'updated': False, 'reliable': int(ids1.numel()), 'used': 0}
        perms = torch.zeros(0, patch_len * patch_len, dtype=torch.int64)
        d = {'h': h.detach(), 'plpd': None}
        if ids1.numel() > 0:
            perms = torch.argsort(torch.rand(ids1.numel(), patch_len * patch_len, generator=gen), dim=-1)
            xp = patch_shuffle(x[ids1].detach(), patch_len, perms)
            with torch.no_grad():
                prob_p = model(xp).softmax(1)
            prob = logits[ids1].softmax(1)
            cls = prob.argmax(1, keepdim=True)
            plpd = (prob.gather(1, cls) - prob_p.gather(1, cls)).reshape(-1)
            d['plpd'] = plpd.detach()
            ids2 = torch.where(plpd > plpd_threshold)[0]
            rec['used'] = int(ids2.numel())
            if ids2.numel() > 0:
                ent = h[ids1][ids2]
                pl = plpd[ids2].detach()
                coeff = torch.exp(-(ent.detach() - margin_e0)) + torch.exp(pl)
                loss = (ent * coeff).mean(0)
                loss.backward()
                opt.step()
                rec['updated'] = True
                rec['loss'] = loss.item()
        opt.zero_grad()
        logits_all.append(logits.detach())
        perms_all.append(perms)
        steps.append(rec)
        diag.append(d)
    return logits_all, steps, perms_all, diag
