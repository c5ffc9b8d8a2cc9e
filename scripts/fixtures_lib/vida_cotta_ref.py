"""Plain-PyTorch float64 re-statement of ViDA's mean-teacher step (Liu et al., ICLR 2024; the
official cifar/vida.py and imagenet/vida.py `forward_and_adapt`) as cta-eval runs it:
`--alg cotta --adapt-params vida` on the reduced ViT (scripts/fixtures_lib/adapters_ref.py).

Two models carry the ViDA modules: the student (trained) and its EMA teacher. The scales
(lambda_low on the rank-1 branch, lambda_high on the high-rank branch) are one pair shared by
both models. Per batch x, in this order:
  1. the TEACHER predicts N augmented copies of x with the scales it currently has (those of the
     previous batch; 1, 1 at the start);
  2. U = 0.1 * mean over the logits of their unbiased variance across the N copies;
  3. the allotment: U >= thr gives lambda_high = 1 + U, lambda_low = 1 - U, otherwise
     lambda_low = 1 + U, lambda_high = 1 - U ('paper'; 'official' leaves lambda_high at 1, as the
     released set_scale only reaches scale1); the pair is set on the student AND on the teacher;
  4. the teacher's target (also the prediction) with the new scales: CoTTA's mean of its logits
     over M augmented copies of x (the anchor gate always open: threshold 1), then the student
     predicts x with the new scales;
  5. loss = batch mean of -sum softmax(target) * log_softmax(student); one SGD step (no momentum)
     on the student's module parameters;
  6. teacher <- alpha * teacher + (1 - alpha) * student on the module parameters.
The averaged target is used rather than the teacher's plain prediction of x (ViDA's own loop)
because at the first step teacher and student are equal, so the plain target has a zero
gradient. The anchor's confidence gate and the stochastic restore (p = 0 here) are checked by the
CoTTA fixtures (scripts/make-cotta-fixtures.py).
"""
import torch

from .adapters_ref import vit_forward, vida_hooks


def uncertainty(outputs):
    """0.1 * mean of torch.var (unbiased) over the stack of augmented logits [N, B, K]."""
    return (torch.stack(outputs).var(dim=0) * 0.1).mean()


def allot(u, thr, mode):
    """(lambda_low, lambda_high) from the uncertainty."""
    if mode == 'off':
        return 1.0, 1.0
    if u >= thr:
        low, high = 1.0 - u, 1.0 + u
    else:
        low, high = 1.0 + u, 1.0 - u
    return (low, high) if mode == 'paper' else (low, 1.0)


def run(sd, heads, xs, augs, target_augs, init, lr, alpha, thr, mode, teacher_decides=True):
    """Steps over the batches `xs` (NCHW float64); augs[k] = the N augmented copies of xs[k] for
    the uncertainty (the same copies whichever model predicts them), target_augs[k] the M copies
    of CoTTA's averaged target. Returns per step
    (target, U, scales) and the final student and teacher parameters.

    teacher_decides=False is the behaviour this fixture guards against (the student decides from
    its own predictions and only the student takes the scales; the teacher keeps 1, 1)."""
    student = {k: v.clone() for k, v in init.items()}
    teacher = {k: v.clone() for k, v in init.items()}
    s_scales = (1.0, 1.0)
    t_scales = (1.0, 1.0)
    steps = []
    for x, copies, tcopies in zip(xs, augs, target_augs):
        judge, judge_scales = (teacher, t_scales) if teacher_decides else (student, s_scales)
        with torch.no_grad():
            outs = [vit_forward(sd, c, heads, vida_hooks(judge, {'scales': judge_scales})) for c in copies]
            u = uncertainty(outs).item()
        s_scales = allot(u, thr, mode)
        if teacher_decides:
            t_scales = s_scales
        with torch.no_grad():
            target = torch.stack([vit_forward(sd, c, heads, vida_hooks(teacher, {'scales': t_scales})) for c in tcopies]).mean(0)
        ps = {k: v.clone().requires_grad_(True) for k, v in student.items()}
        z = vit_forward(sd, x, heads, vida_hooks(ps, {'scales': s_scales}))
        loss = -(target.softmax(1) * z.log_softmax(1)).sum(1).mean()
        grads = torch.autograd.grad(loss, list(ps.values()))
        student = {k: (v - lr * g).detach() for (k, v), g in zip(ps.items(), grads)}
        teacher = {k: alpha * teacher[k] + (1.0 - alpha) * student[k] for k in teacher}
        steps.append({'target': target, 'u': u, 'scales': s_scales, 'teacher_scales': t_scales, 'loss': loss.item()})
    return steps, student, teacher
