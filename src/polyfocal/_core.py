"""The PolyLoss core: one log-space implementation for the whole family (eager PyTorch).

Per element, with ``p_t`` the predicted probability of the target::

    loss = (1 - p_t)^gamma * CE_alpha  +  w_t * sum_j eps_j * (1 - p_t)^(j + gamma)

The arguments reaching this module are already validated (:mod:`polyfocal._args`).  :func:`softmax_loss` and
:func:`sigmoid_loss` are the composite path (eager autograd formulas, every gradient including double backward)
and own the reductions and ``"mean"`` denominators of both families; the fused kernels follow the same rules.

Numerics: ``log(1 - p_t)`` is computed directly in log space, never as ``log(1 - exp(-CE))``:

* softmax: ``1 - p_t = sum_c (1 - q_c) p_c``, so ``log(1 - p_t) = logsumexp_c(log p_c + log(1 - q_c))``
  with ``log(0) = -inf`` masking the target class.  This stays finite (about ``-|logit gap|``) when
  ``p_t`` rounds to 1, so ``(1 - p_t)^gamma = exp(gamma * log(1 - p_t))`` has a finite gradient for
  every ``gamma >= 0``, including ``gamma < 1``.
* sigmoid: ``1 - p_t = t * sigmoid(-x) + (1 - t) * sigmoid(x)``, a log-add-exp of two log-sigmoids.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._args import Args
from ._validation import check_index_range

NEG_INF = float("-inf")


def _safe_log(t: torch.Tensor) -> torch.Tensor:
    """``log(t)`` for ``t >= 0`` with ``log(0) = -inf`` and a zero (not NaN) gradient there."""
    positive = t > 0
    return torch.where(positive, torch.log(torch.where(positive, t, torch.ones_like(t))), NEG_INF)


def _logsumexp(v: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` whose all ``-inf`` slices give ``-inf`` with a zero gradient instead of NaN."""
    empty = torch.isneginf(v).all(dim, keepdim=True)
    out = torch.logsumexp(torch.where(empty, 0.0, v), dim, keepdim=True)
    return torch.where(empty, NEG_INF, out).squeeze(dim)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))`` as ``max + log1p(exp(-|a - b|))``: torch.logaddexp's double backward divides
    inf by inf (NaN) once ``|a - b|`` passes ~88 in float32; this form's derivatives stay finite."""
    return torch.maximum(a, b) + torch.log1p(torch.exp(-(a - b).abs()))


def _combine(
    ce: torch.Tensor, log_1m_pt: torch.Tensor | None, args: Args, *, poly_weight: torch.Tensor | None
) -> torch.Tensor:
    """``(1 - p_t)^gamma * ce + poly_weight * sum_j eps_j (1 - p_t)^(j + gamma)``."""
    loss, gamma = ce, args.gamma
    if gamma != 0.0:
        assert log_1m_pt is not None
        modulator = torch.exp(gamma * log_1m_pt)
        if args.detach_modulator:
            modulator = modulator.detach()
        loss = modulator * ce
    poly = None
    for j, eps in enumerate(args.epsilon, start=1):
        if eps == 0.0:
            continue
        assert log_1m_pt is not None
        term = eps * torch.exp((j + gamma) * log_1m_pt)
        poly = term if poly is None else poly + term
    if poly is not None:
        loss = loss + (poly if poly_weight is None else poly_weight * poly)
    return loss


def _needs_pt(gamma: float, epsilon: tuple[float, ...]) -> bool:
    return gamma != 0.0 or any(e != 0.0 for e in epsilon)


def _adjusted_logits(x: torch.Tensor, target: torch.Tensor, args: Args) -> torch.Tensor:
    """The logits the softmax loss sees: ``s (z + bias - margin_y onehot_y)`` with ``z = c tanh(x / c)`` (softcap
    ``c``, before every other adjustment) or ``z = x``."""
    if args.softcap:
        x = args.softcap * torch.tanh(x / args.softcap)
    if args.bias is not None:
        x = x + args.bias.view((1, x.shape[1]) + (1,) * (x.ndim - 2))
    if args.margin is not None:  # class indices only (prepare refuses a margin for probability targets)
        y_m = target if args.ignore_index is None else torch.where(target != args.ignore_index, target, 0)
        x = x.scatter_add(1, y_m.unsqueeze(1), -args.margin[y_m].unsqueeze(1))
    if args.logit_scale != 1.0:
        x = x * args.logit_scale
    return x


def softmax_poly_loss(x: torch.Tensor, target: torch.Tensor, args: Args) -> tuple[torch.Tensor, torch.Tensor | int]:
    """Per-element softmax PolyLoss and the denominator of ``reduction="mean"``.

    ``x`` is ``(N, C, *)`` in the compute dtype; ``target`` is ``(N, *)`` class indices or ``(N, C, *)``
    probabilities.  ``class_weight`` (alpha * weight) and ``weight`` are ``(C,)`` vectors in the compute dtype.
    The denominator follows ``F.cross_entropy``: the summed target weights of the non-ignored elements
    (their count without ``weight``) for class indices, the number of elements for probabilities.

    Long-tail options (see :class:`polyfocal._args.Args`): the loss sees
    ``logit_scale * (x + bias - margin[y] onehot_y)`` and adds ``z_loss * logsumexp(...)^2`` per element.
    """
    is_index = not target.dtype.is_floating_point
    epsilon, gamma, ignore_index = args.epsilon, args.gamma, args.ignore_index
    class_weight, weight = args.class_weight, args.weight
    num_classes = x.shape[1]
    shape = (1, num_classes) + (1,) * (x.ndim - 2)
    x = _adjusted_logits(x, target, args)
    logp = torch.log_softmax(x, dim=1)
    need_pt = _needs_pt(gamma, epsilon)
    ls = args.label_smoothing
    valid: torch.Tensor | None = None
    log_1m_pt: torch.Tensor | None = None

    if is_index:
        y = target
        if ignore_index is not None:
            valid = target != ignore_index
            y = torch.where(valid, target, 0)
        y1 = y.unsqueeze(1)
        nll = -logp.gather(1, y1).squeeze(1)
        ce = nll if class_weight is None else class_weight[y] * nll
        target_weight = None if weight is None else weight[y]
        poly_weight = target_weight
        if ls > 0.0:
            # q = (1 - ls) * onehot + ls / C, entering CE_c with the class weights
            smooth = -(logp if class_weight is None else logp * class_weight.view(shape)).sum(1)
            ce = (1.0 - ls) * ce + (ls / num_classes) * smooth
            if weight is not None:
                poly_weight = (1.0 - ls) * poly_weight + (ls / num_classes) * weight.sum()
        if need_pt:
            # log(1 - q_c): log(1 - ls/C) off target, log(ls * (1 - 1/C)) on target (-inf when 0)
            off = math.log1p(-ls / num_classes) if ls / num_classes < 1.0 else NEG_INF
            on_value = ls * (1.0 - 1.0 / num_classes)
            on = math.log(on_value) if on_value > 0.0 else NEG_INF
            v = logp if off == 0.0 else logp + off
            v = v.scatter(1, y1, (-nll + on).unsqueeze(1))
            log_1m_pt = _logsumexp(v, 1)
        if target_weight is None:
            denominator: torch.Tensor | int = y.numel() if valid is None else valid.sum()
        else:
            denominator = (target_weight if valid is None else target_weight * valid).sum()
    else:
        q = target.to(x.dtype)
        if ls > 0.0:
            q = q * (1.0 - ls) + ls / num_classes
        weighted_q = q if class_weight is None else q * class_weight.view(shape)
        ce = -(weighted_q * logp).sum(1)
        poly_weight = None if weight is None else (q * weight.view(shape)).sum(1)
        if need_pt:
            log_1m_pt = _logsumexp(logp + _safe_log(1.0 - q), 1)
        denominator = ce.numel()

    loss = _combine(ce, log_1m_pt, args, poly_weight=poly_weight)
    if args.z_loss != 0.0:  # not class-weighted; masked, normalised and averaged like the row loss
        loss = loss + args.z_loss * torch.logsumexp(x, 1) ** 2
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    return loss, denominator


def index_to_multi_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Class indices ``(N, *)`` to a ``(N, C, *)`` 0/1 target; index ``C`` is the all-zero background."""
    shape = (*y.shape[:1], num_classes, *y.shape[1:])
    out = torch.zeros(shape, dtype=dtype, device=y.device)
    foreground = (y < num_classes).unsqueeze(1).to(dtype)
    return out.scatter_(1, y.clamp(max=num_classes - 1).unsqueeze(1), foreground)


def sigmoid_poly_loss(x: torch.Tensor, t: torch.Tensor, args: Args, *, hard: bool) -> torch.Tensor:
    """Element-wise sigmoid PolyLoss; ``t`` has ``x``'s shape and dtype, values in [0, 1].

    ``hard=True`` promises ``t`` is exactly 0 or 1 (it came from class indices), which allows the
    cheaper ``log(1 - p_t) = logsigmoid(-x)`` / ``logsigmoid(x)``.  ``gamma_neg`` / ``clip`` (asymmetric loss) and
    ``variant`` (``"varifocal"``, ``"quality"``) select the detection members: :func:`_sigmoid_detection_loss`.
    """
    ls, alpha, weight, pos_weight = args.label_smoothing, args.alpha, args.weight, args.pos_weight
    if ls > 0.0:
        t = t * (1.0 - ls) + 0.5 * ls
        hard = False
    if args.is_detection:
        loss = _sigmoid_detection_loss(x, t, args)
        return loss if weight is None else loss * weight
    if pos_weight is not None and pos_weight.requires_grad:  # torch's BCE refuses a gradient for pos_weight
        ce = (1.0 - t) * F.softplus(x) + pos_weight * t * F.softplus(-x)
    else:
        ce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")
    if alpha is not None:
        ce = (alpha * t + (1.0 - alpha) * (1.0 - t)) * ce
    log_1m_pt = None
    if _needs_pt(args.gamma, args.epsilon):
        hard_part = F.logsigmoid(torch.where(t > 0.5, -x, x))
        if hard:
            log_1m_pt = hard_part
        else:
            # Exactly 0/1 float targets take the hard formula: logaddexp with a -inf argument has a finite first
            # derivative but a NaN second one.  The soft branch sees t = 1/2 there, so no -inf reaches it.
            exact = (t == 0.0) | (t == 1.0)
            ts = torch.where(exact, 0.5, t)
            soft = _logaddexp(torch.log(ts) + F.logsigmoid(-x), torch.log1p(-ts) + F.logsigmoid(x))
            log_1m_pt = torch.where(exact, hard_part, soft)
    loss = _combine(ce, log_1m_pt, args, poly_weight=None)
    return loss if weight is None else loss * weight


def _bce(x: torch.Tensor, t: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor:
    if pos_weight is not None and pos_weight.requires_grad:  # torch's BCE refuses a gradient for pos_weight
        return (1.0 - t) * F.softplus(x) + pos_weight * t * F.softplus(-x)
    return F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")


def _power(log_u: torch.Tensor, g: torch.Tensor | float) -> torch.Tensor:
    """``u^g = exp(g log u)`` with ``0^0 = 1`` and no NaN in either derivative where ``g = 0`` and ``u = 0``."""
    if isinstance(g, torch.Tensor):
        return torch.exp(g * torch.where(g == 0, 0.0, log_u))
    return torch.ones_like(log_u) if g == 0.0 else torch.exp(g * log_u)


def _sigmoid_detection_loss(x: torch.Tensor, t: torch.Tensor, args: Args) -> torch.Tensor:
    """The asymmetric (``"poly"`` with ``gamma_neg`` / ``clip``), varifocal and quality focal losses, in log space.

    Modulating factors are ``exp(g * log u)``; ``log u`` comes from log-sigmoids for exact 0/1 targets (relative
    precision at any logit) and from ``_safe_log`` of a sum of non-negative parts otherwise, so ``u = 0`` (below the
    clip margin, or ``s`` exactly equal to a soft ``q``) gives ``u^g = 0`` with zero, not NaN, derivatives.
    """
    gamma, gamma_neg, clip, alpha, pos_weight = args.gamma, args.gamma_neg, args.clip, args.alpha, args.pos_weight
    exact_one, exact_zero = t == 1.0, t == 0.0
    log_s, log_1ms = F.logsigmoid(x), F.logsigmoid(-x)
    if args.variant == "varifocal":
        positive = _bce(x, t, pos_weight) * (t if args.iou_weighted else 1.0)
        # negatives (t <= 0): alpha s^gamma (-log(1 - s)); s^gamma = exp(gamma log s)
        negative = (1.0 if alpha is None else alpha) * _power(log_s, gamma) * F.softplus(x)
        return torch.where(t > 0, positive, negative)
    if args.variant == "quality":
        s, one_minus_s = torch.exp(log_s), torch.exp(log_1ms)
        distance = (t * one_minus_s - (1.0 - t) * s).abs()  # |t - s| as a difference of non-negative parts
        log_u = torch.where(exact_one, log_1ms, torch.where(exact_zero, log_s, _safe_log(distance)))
        ce = _bce(x, t, pos_weight)
        g: torch.Tensor | float = gamma
    else:  # asymmetric: probability margin on the negatives, gamma_t = gamma t + gamma_neg (1 - t)
        s = torch.exp(log_s)
        if clip > 0.0:
            s_m = (s - clip).clamp(min=0.0)
            # -log(1 - s_m) = -log(min(1 - s + c, 1)) in log space from log(1 - s) = logsigmoid(-x): forming 1 - s_m
            # from s cancels as s -> 1 for a tiny clip; clamp's derivative passes at the kink s = c, as s_m's does
            ce_neg = (-_logaddexp(log_1ms, torch.full_like(log_1ms, math.log(clip)))).clamp(min=0.0)
            log_neg = _safe_log(s_m)
        else:
            s_m, ce_neg, log_neg = s, F.softplus(x), log_s
        ce_pos = F.softplus(-x) if pos_weight is None else pos_weight * F.softplus(-x)
        ce = t * ce_pos + (1.0 - t) * ce_neg
        soft = _safe_log(t * torch.exp(log_1ms) + (1.0 - t) * s_m)
        log_u = torch.where(exact_one, log_1ms, torch.where(exact_zero, log_neg, soft))
        g = gamma if gamma_neg is None or gamma_neg == gamma else gamma * t + gamma_neg * (1.0 - t)
        if alpha is not None:
            ce = (alpha * t + (1.0 - alpha) * (1.0 - t)) * ce
    modulator = _power(log_u, g)
    if args.detach_modulator:
        modulator = modulator.detach()
    loss = modulator * ce
    for j, eps in enumerate(args.epsilon, start=1):
        if eps != 0.0:
            loss = loss + eps * _power(log_u, g + j)
    return loss


def _reduce(loss: torch.Tensor, normalizer: torch.Tensor | None, reduction: str, denominator) -> torch.Tensor:
    if normalizer is not None:
        loss = loss / normalizer
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / denominator


def softmax_loss(x: torch.Tensor, target: torch.Tensor, args: Args) -> torch.Tensor:
    """The softmax family on the composite path: ``x`` ``(N, C, *)``, ``target`` class indices ``(N, *)`` or
    probabilities of ``x``'s shape; reduced as ``args.reduction`` says (``"none"``: shape ``(N, *)``)."""
    if not target.dtype.is_floating_point:
        check_index_range(target, x.shape[1], args.ignore_index, background=False)
    xc = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    loss, denominator = softmax_poly_loss(xc, target, args)
    return _reduce(loss, args.normalizer, args.reduction, denominator)


def sigmoid_loss(x: torch.Tensor, target: torch.Tensor, args: Args) -> torch.Tensor:
    """The sigmoid family on the composite path: ``x`` at least 1-D; dense targets of ``x``'s shape or, with
    ``args.is_index``, class indices ``(N, *)`` (index ``C`` = background, ``ignore_index`` masks the row)."""
    ct = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(ct)
    valid = None
    if args.is_index:
        num_classes = x.shape[1]
        check_index_range(target, num_classes, args.ignore_index, background=True)
        y = target
        if args.ignore_index is not None:
            valid = (y != args.ignore_index).unsqueeze(1)
            y = torch.where(y == args.ignore_index, num_classes, y)
        t = index_to_multi_hot(y, num_classes, ct)
        if args.score is not None:  # (label, score): the target class's element is the score
            t = t * args.score.to(ct).unsqueeze(1)
    else:
        t = target.to(ct)
    hard = (args.is_index and args.score is None) or not target.dtype.is_floating_point
    loss = sigmoid_poly_loss(xc, t, args, hard=hard)
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
        denominator = valid.sum() * loss.shape[1]
    else:
        denominator = loss.numel()
    return _reduce(loss, args.normalizer, args.reduction, denominator)
