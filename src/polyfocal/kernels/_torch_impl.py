r"""Fused loss *and* input gradient for the PolyLoss family, written with a few whole-tensor torch ops.

This is the default CPU implementation and the fallback on any device without Triton.  It needs no
compiler: every pass is one vectorised ATen kernel, and the passes are chosen so that the only
logits-sized allocation is the gradient itself.

**Softmax, class indices.**  For a hard label :math:`y` the whole family is a per-row function of
:math:`p = \mathrm{softmax}(x)` and the gradient is

.. math::

    \partial\ell/\partial x = (K_1 + K_2 A)\,p - K_1\,\mathrm{onehot}_y - K_2\,a,
    \qquad a = \alpha\odot w,\ A = \textstyle\sum_c a_c

with per-row scalars :math:`K_1, K_2` (:func:`softmax_row_terms`).  So one ``torch.softmax`` writes
:math:`p` into the buffer that becomes the gradient, a few gathers and one row sum give the row
statistics, and one in-place multiply plus a scatter turn :math:`p` into the gradient.

**Sigmoid.**  Element-wise; :func:`sigmoid_terms` gives the loss and the gradient of one block of rows
at a time, so the temporaries are block-sized and stay in cache.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._args import Args
from .._validation import check_index_range, compute_dtype

__all__ = ["detection_terms", "sigmoid", "sigmoid_terms", "softmax", "softmax_row_terms", "supports"]

_BLOCK_ELEMENTS = 1 << 16  # sigmoid block: 64K elements (256 KiB in fp32) per temporary: ~25 of them stay < 0.25x


def _horner(coefficients: list[float], u: torch.Tensor) -> torch.Tensor | float:
    """``sum_k coefficients[k] * u**k`` (k from 0)."""
    acc: torch.Tensor | float = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = acc * u + c
    return acc


def poly_terms(u: torch.Tensor, epsilon: list[float], gamma: float) -> tuple[torch.Tensor | float, ...]:
    """``sum_j eps_j u^j`` and ``sum_j eps_j (j + gamma) u^(j - 1)``: the poly part of the loss and of
    ``d loss / d u`` with ``u^gamma`` factored out."""
    if not any(epsilon):
        return 0.0, 0.0
    poly = _horner([0.0, *epsilon], u)
    dpoly = _horner([e * (j + gamma) for j, e in enumerate(epsilon, start=1)], u)
    return poly, dpoly


def modulator(log_u: torch.Tensor, gamma: float) -> torch.Tensor | float:
    """``(1 - p_t)^gamma = exp(gamma * log(1 - p_t))``; exactly 1 for gamma = 0 (no ``0 * -inf``)."""
    return 1.0 if gamma == 0.0 else torch.exp(gamma * log_u)


def softmax_row_terms(
    ce1: torch.Tensor,
    u1: torch.Tensor,
    p1: torch.Tensor,
    smooth: torch.Tensor | None,
    a_t: torch.Tensor | None,
    w_t: torch.Tensor | None,
    *,
    epsilon: list[float],
    gamma: float,
    label_smoothing: float,
    num_classes: int,
    weight_sum: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    r"""Per-row loss and gradient coefficients of the hard-label softmax PolyLoss.

    Inputs per row: ``ce1 = -log p_y``, ``u1 = 1 - p_y`` (computed without cancellation), ``p1 = p_y``,
    ``smooth = sum_c a_c (lse - x_c)`` (label smoothing only), ``a_t = alpha_y w_y``, ``w_t = w_y``.
    With :math:`q = (1-\text{ls})\,\mathrm{onehot} + \text{ls}/C`:

    * :math:`\mathrm{CE}_\alpha = (1-\text{ls})\,a_y\,\mathrm{ce1} + (\text{ls}/C)\,\mathrm{smooth}`
    * :math:`u = 1 - p_t = (1-\text{ls})\,u_1 + \text{ls}\,(C-1)/C`
    * :math:`w_t = (1-\text{ls})\,w_y + (\text{ls}/C)\sum_c w_c`
    * :math:`\ell = u^\gamma\,[\mathrm{CE}_\alpha + w_t \sum_j \epsilon_j u^j]`
    * :math:`\partial\ell/\partial u = u^\gamma\,[\gamma\,\mathrm{CE}_\alpha/u
      + w_t \sum_j \epsilon_j (j+\gamma) u^{j-1}]`, where :math:`\mathrm{CE}_\alpha/u \to a_y` as
      :math:`u \to 0` (finite for gamma < 1)
    * :math:`\partial u/\partial x = (1-\text{ls})\,p_y\,(p - \mathrm{onehot})` and
      :math:`\partial \mathrm{CE}_\alpha/\partial x = (1-\text{ls})\,a_y (p - \mathrm{onehot}) + (\text{ls}/C)(A p - a)`

    Returns ``(loss, K1, K2)`` with ``grad = (K1 + K2 A) p - K1 onehot - K2 a``:
    :math:`K_1 = (1-\text{ls})\,[u^\gamma a_y + p_y\,\partial\ell/\partial u]`, :math:`K_2 = u^\gamma\,\text{ls}/C`.
    """
    ls, c = label_smoothing, num_classes
    a_y: torch.Tensor | float = 1.0 if a_t is None else a_t
    w_y: torch.Tensor | float = 1.0 if w_t is None else w_t
    if ls > 0.0:
        assert smooth is not None
        ce_a = (1.0 - ls) * a_y * ce1 + (ls / c) * smooth
        u = (1.0 - ls) * u1 + ls * (c - 1) / c
        w_poly = (1.0 - ls) * w_y + (ls / c) * weight_sum
    else:
        ce_a, u, w_poly = a_y * ce1, u1, w_y
    mod = modulator(torch.log(u), gamma)
    poly, dpoly = poly_terms(u, epsilon, gamma)
    loss = mod * (ce_a + w_poly * poly)
    dl_du = w_poly * dpoly
    if gamma != 0.0:
        dl_du = dl_du + gamma * torch.where(u > 0, ce_a / u, a_y)
    k1 = (1.0 - ls) * mod * (a_y + dl_du * p1)
    k2 = mod * (ls / c) if ls > 0.0 else 0.0
    return loss, k1, k2


def _mean_denominator(valid: torch.Tensor | None, w_t: torch.Tensor | None, numel: int, dtype: torch.dtype):
    if w_t is not None:
        return (w_t if valid is None else w_t * valid).sum()
    if valid is not None:
        return valid.sum().to(dtype)
    return float(numel)


def _reduce(loss: torch.Tensor, reduction: str, denominator) -> torch.Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / denominator


def _exact_ce_of_tiny_rows(ce1, p_t, x, y, tiny: float) -> torch.Tensor:
    """``-log p_y`` from ``log_softmax`` where ``p_y`` underflowed (a row's logit gap beyond ~87 in fp32)."""
    bad = p_t < tiny
    if x.device.type == "cpu":  # a host check is free on CPU: fix only the few rows that need it
        idx = bad.nonzero(as_tuple=True)
        if idx[0].numel() == 0:
            return ce1
        rows = x.movedim(1, -1)[idx]
        exact = -torch.log_softmax(rows, -1).gather(-1, y[idx].unsqueeze(-1)).squeeze(-1)
        return ce1.index_put(idx, exact)
    # elsewhere stay free of host syncs: lse - x_y for every row
    return torch.where(bad, torch.logsumexp(x, 1) - x.gather(1, y.unsqueeze(1)).squeeze(1), ce1)


class _Rows(NamedTuple):
    """The row statistics of the hard-label softmax pass; ``p`` is the softmax buffer that becomes the gradient."""

    p: torch.Tensor
    y1: torch.Tensor
    valid: torch.Tensor | None
    p_t: torch.Tensor
    u1: torch.Tensor
    ce1: torch.Tensor
    lse: torch.Tensor | None
    smooth: torch.Tensor | None


def _softmax_rows(xc: torch.Tensor, target: torch.Tensor, args: Args) -> _Rows:
    """Stage 1: the softmax (in the buffer that becomes the gradient) and the per-row statistics ``p_y``,
    ``1 - p_y`` (to relative precision when gamma needs it), ``-log p_y``, and ``lse`` / the label-smoothing sum
    where the options need them."""
    class_weight, ls = args.class_weight, args.label_smoothing
    valid = None if args.ignore_index is None else target != args.ignore_index
    y = target if valid is None else torch.where(valid, target, 0)
    y1 = y.unsqueeze(1)
    # long-tail options: the loss sees z = s (x + b - m_y onehot), built in the buffer that becomes the gradient
    adjusted = args.bias is not None or args.margin is not None or args.logit_scale != 1.0 or args.softcap
    lse = smooth = None
    if adjusted:
        p = _adjusted_logits(xc, y1, args)
        lse = torch.logsumexp(p, 1)
        z_t = p.gather(1, y1).squeeze(1)
        if ls > 0.0:  # sum_c a_c (lse - z_c), read before p is overwritten
            smooth = _smooth(p, lse, class_weight)
        p.sub_(lse.unsqueeze(1)).exp_()
    else:
        p = torch.softmax(xc, 1)  # becomes the gradient
    p_t = p.gather(1, y1).squeeze(1)
    if args.gamma != 0.0:  # (1 - p_y)^gamma needs 1 - p_y to relative precision: sum the other classes
        u1 = p.scatter_(1, y1, 0.0).sum(1)
    else:  # only absolute precision matters: loss and gradient are smooth in u there
        u1 = (1.0 - p_t).clamp_(min=0.0)
    ce1 = torch.where(u1 < 0.5, -torch.log1p(-u1), -torch.log(p_t))
    tiny = torch.finfo(xc.dtype).tiny / torch.finfo(xc.dtype).eps
    if adjusted:
        ce1 = torch.where(p_t < tiny, lse - z_t, ce1)
    else:
        ce1 = _exact_ce_of_tiny_rows(ce1, p_t, xc, y, tiny)
        if ls > 0.0 or args.z_loss != 0.0:  # lse = x_y + CE
            lse = xc.gather(1, y1).squeeze(1) + ce1
        if ls > 0.0:
            smooth = _smooth(xc, lse, class_weight)
    return _Rows(p, y1, valid, p_t, u1, ce1, lse, smooth)


def _smooth(z: torch.Tensor, lse: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
    """``sum_c a_c (lse - z_c) = A lse - sum_c a_c z_c``: label smoothing's part of the CE."""
    if class_weight is None:
        return z.shape[1] * lse - z.sum(1)
    return class_weight.sum() * lse - torch.tensordot(z.movedim(1, -1), class_weight, dims=1)


def _softmax_gradient(r: _Rows, k1, k2, scale, args: Args, xc: torch.Tensor) -> torch.Tensor:
    """Stage 3: ``(K1 + K2 A + 2 z_loss lse) p - K1 onehot_y - K2 a``, times the row scale, over the buffer (and
    times ``1 - tanh^2(x / c)`` with ``softcap``)."""
    p, num_classes, class_weight = r.p, r.p.shape[1], args.class_weight
    if args.logit_scale != 1.0:  # chain rule through z = s (...)
        scale = scale * args.logit_scale
    k1 = k1 * scale
    k2 = k2 * scale
    smoothing = args.label_smoothing > 0.0
    a_sum = (float(num_classes) if class_weight is None else class_weight.sum()) if smoothing else 0.0
    coef = k1 + k2 * a_sum
    if args.z_loss != 0.0:  # d(lambda lse^2)/dz = 2 lambda lse softmax(z)
        coef = coef + (2.0 * args.z_loss) * r.lse * scale
    p.mul_(coef.unsqueeze(1))
    p.scatter_(1, r.y1, (coef * r.p_t - k1).unsqueeze(1))
    if smoothing:
        k2_ = k2.unsqueeze(1)
        if class_weight is None:
            p.sub_(k2_)
        else:
            p.addcmul_(k2_, class_weight.view((1, num_classes) + (1,) * (p.ndim - 2)), value=-1.0)
    if args.softcap:  # the chain rule through z = c tanh(x / c)
        p.mul_(1.0 - torch.tanh(xc / args.softcap).square_())
    return p


def softmax(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-label softmax PolyLoss of ``x`` ``(N, C, *)`` and, if ``compute_grad``, d(loss)/dx.

    The gradient is for ``grad_output = 1`` of the reduced loss (per row for ``"none"``); it has ``x``'s
    dtype and shape.  Returns ``(loss, grad)`` (``grad`` is empty when not computed)."""
    ct = compute_dtype(x)
    num_classes = x.shape[1]
    check_index_range(target, num_classes, args.ignore_index, background=False)
    xc = x.to(ct)
    r = _softmax_rows(xc, target, args)  # stage 1: row statistics
    y = r.y1.squeeze(1)
    a_t = None if args.class_weight is None else args.class_weight[y]
    w_t = None if args.weight is None else args.weight[y]
    loss, k1, k2 = softmax_row_terms(  # stage 2: the row losses and gradient coefficients
        r.ce1,
        r.u1,
        r.p_t,
        r.smooth,
        a_t,
        w_t,
        epsilon=list(args.epsilon),
        gamma=args.gamma,
        label_smoothing=args.label_smoothing,
        num_classes=num_classes,
        weight_sum=float(num_classes) if args.weight is None else args.weight.sum(),
    )
    if args.z_loss != 0.0:  # z_loss * lse^2, lse of the logits the loss sees
        loss = loss + args.z_loss * r.lse * r.lse
    denominator = _mean_denominator(r.valid, w_t, y.numel(), ct)
    if r.valid is not None:
        loss = torch.where(r.valid, loss, 0.0)
    if args.normalizer is not None:
        loss = loss / args.normalizer
    out = _reduce(loss, args.reduction, denominator)
    if not compute_grad:
        return out, x.new_empty(0)
    scale = _row_scale(r.valid, args.normalizer, args.reduction, denominator, ct)
    return out, _softmax_gradient(r, k1, k2, scale, args, xc).to(x.dtype)  # stage 3


def _adjusted_logits(xc: torch.Tensor, y1: torch.Tensor, args: Args) -> torch.Tensor:
    """A new tensor ``s (z + b - m_y onehot_y)``: the logits the loss sees (``z = c tanh(x / c)`` with ``softcap``
    c, else ``x``; prior bias b, target margin m, scale s)."""
    shape = (1, xc.shape[1]) + (1,) * (xc.ndim - 2)
    z = torch.tanh(xc / args.softcap).mul_(args.softcap) if args.softcap else xc.clone()
    if args.bias is not None:
        z.add_(args.bias.view(shape))
    if args.margin is not None:
        z.scatter_add_(1, y1, -args.margin[y1.squeeze(1)].unsqueeze(1))
    if args.logit_scale != 1.0:
        z.mul_(args.logit_scale)
    return z


def _row_scale(valid, normalizer, reduction: str, denominator, dtype: torch.dtype) -> torch.Tensor | float:
    """The factor each element's gradient gets from ``ignore_index``, ``normalizer`` and the reduction."""
    scale: torch.Tensor | float = 1.0
    if normalizer is not None:
        scale = 1.0 / normalizer
    if reduction == "mean":
        scale = scale / denominator
    if valid is not None:  # ignored rows get 0, also where 1/denominator is inf (all ignored: torch's gradient 0)
        scale = torch.where(valid, scale, 0.0).to(dtype)
    return scale


def sigmoid_terms(
    x: torch.Tensor, t: torch.Tensor, args: Args, *, pos_weight: torch.Tensor | None, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Element-wise sigmoid PolyLoss and its derivative, without ``weight`` (targets ``t`` in [0, 1]).

    With :math:`p = \sigma(x)`, :math:`q = \sigma(-x)`, :math:`u = 1 - p_t = t q + (1-t) p` (a sum of
    non-negative terms, so it keeps relative precision), :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)`:

    * :math:`\mathrm{CE} = -(\text{pw}\, t \log p + (1-t) \log q)`
    * :math:`\ell = u^\gamma\,[\alpha_t \mathrm{CE} + \sum_j \epsilon_j u^j]`
    * :math:`\partial\ell/\partial x = u^\gamma\,[\alpha_t \partial\mathrm{CE}/\partial x
      + (1-2t)\,R\,(\gamma \alpha_t \mathrm{CE} + \sum_j \epsilon_j (j+\gamma) u^j)]`, using
      :math:`\partial u/\partial x = (1-2t)\,p q = (1-2t)\,R\,u` with :math:`R = pq/u \le 1`
      (no ``u^(gamma-1)``, so gamma < 1 stays finite when u underflows), and
      :math:`\partial\mathrm{CE}/\partial x = (1 - t)\,p - \text{pw}\,t\,q`.
    """
    alpha, epsilon, gamma = args.alpha, list(args.epsilon), args.gamma
    softplus_tail = torch.log1p(torch.exp(-x.abs()))  # log(1 + e^-|x|)
    relu_x = x.clamp(min=0.0)
    log_q = -(relu_x + softplus_tail)  # log sigmoid(-x); log sigmoid(x) = -(relu(-x) + tail)
    # CE as a sum of non-negative parts (no cancellation for confident elements)
    if pos_weight is None:
        ce = torch.addcmul(relu_x, t, x, value=-1.0) + softplus_tail  # (1-t) relu(x) + t relu(-x) + tail
    else:
        ce = (1.0 - t) * (relu_x + softplus_tail) + pos_weight * t * ((-x).clamp(min=0.0) + softplus_tail)
    p, q = torch.sigmoid(x), torch.exp(log_q)
    one_minus_t = 1.0 - t
    u = torch.addcmul(t * q, one_minus_t, p)  # t q + (1 - t) p, both parts >= 0
    mod = modulator(torch.log(u), gamma)
    poly, dpoly = poly_terms(u, epsilon, gamma)
    alpha_t: torch.Tensor | float = 1.0 if alpha is None else (2.0 * alpha - 1.0) * t + (1.0 - alpha)
    loss = mod * (alpha_t * ce + poly)
    if not need_grad:
        return loss, None
    # dCE/dx = (pw t + 1 - t) p - pw t = (1 - t) p - pw t q: no cancellation when p rounds to 1
    t_q = t * q if pos_weight is None else pos_weight * t * q
    dce = one_minus_t * p - t_q
    ratio = torch.where(u > 0, p * q / u, 1.0)
    inner = u * dpoly
    if gamma != 0.0:
        inner = inner + gamma * alpha_t * ce
    grad = mod * (alpha_t * dce + (1.0 - 2.0 * t) * ratio * inner)
    return loss, grad


def detection_terms(
    x: torch.Tensor, t: torch.Tensor, args: Args, *, pos_weight: torch.Tensor | None, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Loss and derivative of the asymmetric, varifocal and quality focal members (see :mod:`polyfocal._core`).

    With :math:`p = \sigma(x)`, :math:`q = \sigma(-x)`, :math:`a_+ = -\log q`, :math:`a_- = -\log p`:

    * asymmetric (``"poly"``): :math:`p_m = \max(p - c, 0)`, :math:`u = t q + (1-t) p_m`,
      :math:`\mathrm{CE} = \text{pw}\,t a_- - (1-t)\log(1-p_m)`, :math:`g = \gamma t + \gamma_-(1-t)`,
      :math:`\ell = u^g(\alpha_t\mathrm{CE} + \sum_j\epsilon_j u^j)`; with :math:`u' = pq((1-t)[p \ge c] - t)`,
      :math:`\partial\ell/\partial x = u^g[\alpha_t \mathrm{CE}' + u'(g(\alpha_t\mathrm{CE} + P)/u + P')]`,
      :math:`P = \sum_j \epsilon_j u^j`, :math:`P' = \sum_j j\epsilon_j u^{j-1}`; the bracket's :math:`1/u` term is
      0 where :math:`u = 0` (there :math:`u^g = 0`, or :math:`g = 0`).
    * varifocal: :math:`t > 0`: :math:`w\,\mathrm{BCE}`, derivative :math:`w((1-t)p - \text{pw}\,t q)` (:math:`w = t`
      or 1); :math:`t = 0`: :math:`\alpha p^\gamma a_+`, derivative :math:`\alpha p^\gamma (p + \gamma q a_+)`.
    * quality: :math:`\delta = t q - (1-t) p = t - p`, :math:`u = |\delta|`, :math:`u' = -\mathrm{sign}(\delta) pq`,
      :math:`\ell = u^\beta(\mathrm{BCE} + P)`, same bracket as above with :math:`\alpha_t = 1`.
    """
    alpha, epsilon, gamma, gamma_neg, clip = args.alpha, list(args.epsilon), args.gamma, args.gamma_neg, args.clip
    softplus_tail = torch.log1p(torch.exp(-x.abs()))
    a_pos = x.clamp(min=0.0) + softplus_tail  # -log q = -log(1 - p)
    a_neg = (-x).clamp(min=0.0) + softplus_tail  # -log p
    p, q = torch.exp(-a_neg), torch.exp(-a_pos)
    one_minus_t = 1.0 - t
    pw_t = t if pos_weight is None else pos_weight * t
    pq = p * q
    if args.variant == "varifocal":
        positive = t > 0
        w_pos = t if args.iou_weighted else 1.0
        bce = one_minus_t * a_pos + pw_t * a_neg
        a = 1.0 if alpha is None else alpha
        mod = torch.exp(-gamma * a_neg) if gamma != 0.0 else 1.0  # p^gamma
        loss = torch.where(positive, w_pos * bce, a * mod * a_pos)
        if not need_grad:
            return loss, None
        grad = torch.where(positive, w_pos * (one_minus_t * p - pw_t * q), a * mod * (p + gamma * q * a_pos))
        return loss, grad
    if args.variant == "quality":
        delta = t * q - one_minus_t * p
        u = delta.abs()
        ce = one_minus_t * a_pos + pw_t * a_neg
        dce = one_minus_t * p - pw_t * q
        du = -torch.sign(delta) * pq
        g: torch.Tensor | float = gamma
        alpha_t: torch.Tensor | float = 1.0
    else:
        if clip > 0.0:
            # 1 - p_m = min(q + c, 1) from q = sigmoid(-x): no cancellation as p -> 1 (1 - (p - c) loses it all
            # for tiny c); -log of it in log space, -logaddexp(-a_pos, log c), clamped at 0 below the margin
            s_m = (p - clip).clamp(min=0.0)
            log_c = math.log(clip)
            ce_neg = (a_pos.clamp(max=-log_c) - torch.log1p(torch.exp(-(a_pos + log_c).abs()))).clamp(min=0.0)
            on = (p >= clip).to(x.dtype)  # torch.clamp's derivative passes at the kink itself
            dce_neg = on * pq / (q + clip).clamp(max=1.0)
        else:
            s_m, ce_neg, on, dce_neg = p, a_pos, 1.0, p
        u = torch.addcmul(t * q, one_minus_t, s_m)
        ce = one_minus_t * ce_neg + pw_t * a_neg
        dce = one_minus_t * dce_neg - pw_t * q
        du = (one_minus_t * on - t) * pq
        g = gamma if gamma_neg is None or gamma_neg == gamma else gamma * t + gamma_neg * one_minus_t
        alpha_t = 1.0 if alpha is None else (2.0 * alpha - 1.0) * t + (1.0 - alpha)
    if isinstance(g, torch.Tensor):
        mod = torch.where(g == 0, 1.0, torch.exp(g * torch.log(u)))
    else:
        mod = modulator(torch.log(u), g)
    poly, dpoly = poly_terms(u, epsilon, 0.0)  # sum_j eps_j u^j and sum_j j eps_j u^(j-1)
    body = alpha_t * ce + poly
    loss = mod * body
    if not need_grad:
        return loss, None
    positive_u = u > 0
    bracket = torch.where(positive_u, g * body / torch.where(positive_u, u, 1.0), 0.0) + dpoly
    grad = mod * (alpha_t * dce + du * bracket)
    return loss, grad


def _sigmoid_scale(x: torch.Tensor, target: torch.Tensor, args: Args, ct: torch.dtype):
    """The index targets' mask and classes, the ``"mean"`` denominator and the gradient's reduction factor."""
    valid = y = classes = None
    denominator: torch.Tensor | float = float(x.numel())
    if args.is_index:
        num_classes = x.shape[1]
        check_index_range(target, num_classes, args.ignore_index, background=True)
        valid = None if args.ignore_index is None else target != args.ignore_index
        y = target if valid is None else torch.where(valid, target, num_classes)
        classes = torch.arange(num_classes, device=x.device).view((1, num_classes) + (1,) * (x.ndim - 2))
        if valid is not None:
            denominator = (valid.sum() * num_classes).to(ct)
    grad_scale: torch.Tensor | float = 1.0
    if args.reduction == "mean":  # all ignored: the mean is nan (0/0) and the gradient 0, as in torch
        if isinstance(denominator, torch.Tensor):
            grad_scale = torch.where(denominator > 0, 1.0 / denominator, 0.0)
        else:
            grad_scale = 1.0 / denominator if denominator else 0.0
    return valid, y, classes, denominator, grad_scale


def _sigmoid_block(xb, tb, sl: slice, valid, args: Args, need_grad: bool):
    """Loss and gradient of one block of rows, with ``weight``, the mask and ``1 / normalizer`` applied."""
    if args.label_smoothing > 0.0:
        tb = tb * (1.0 - args.label_smoothing) + 0.5 * args.label_smoothing
    terms = detection_terms if args.is_detection else sigmoid_terms
    pos_weight = None if args.pos_weight is None else args.pos_weight[sl]
    lb, gb = terms(xb, tb, args, pos_weight=pos_weight, need_grad=need_grad)
    factor = None
    for f in (
        None if args.weight is None else args.weight[sl],
        None if valid is None else valid[sl].unsqueeze(1),
        None if args.normalizer is None else 1.0 / args.normalizer[sl],
    ):
        if f is not None:
            factor = f if factor is None else factor * f
    if factor is not None:
        lb = lb * factor
        gb = None if gb is None else gb * factor
    return lb, gb


def sigmoid(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid PolyLoss of ``x`` and, if ``compute_grad``, d(loss)/dx, in blocks of rows along dim 0.

    ``target`` is dense (``x``'s shape, float/int/bool) or, with ``is_index``, class indices ``(N, *)``
    for ``x`` ``(N, C, *)`` where index ``C`` is background.  ``weight``, ``pos_weight`` and ``normalizer``
    are ``None`` or broadcast to ``x``'s shape.  Returns ``(loss, grad)`` like :func:`softmax`."""
    ct = compute_dtype(x)
    valid, y, classes, denominator, grad_scale = _sigmoid_scale(x, target, args, ct)
    n = x.shape[0]  # x has at least one dimension
    loss_out = torch.empty(x.shape, dtype=ct, device=x.device) if args.reduction == "none" else None
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    sums = []
    rows = max(1, _BLOCK_ELEMENTS // max(x.numel() // n if n else 1, 1))
    for start in range(0, n, rows):
        sl = slice(start, start + rows)
        if args.is_index:
            tb = (classes == y[sl].unsqueeze(1)).to(ct)
            if args.score is not None:  # (label, score): the target class's element is the score
                tb = tb * args.score[sl].unsqueeze(1)
        else:
            tb = target[sl].to(ct)
        lb, gb = _sigmoid_block(x[sl].to(ct), tb, sl, valid, args, compute_grad)
        if loss_out is not None:
            loss_out[sl] = lb
        else:
            sums.append(lb.sum())
        if gb is not None:
            grad[sl] = gb * grad_scale
    if loss_out is not None:
        return loss_out, grad
    total = torch.stack(sums).sum() if sums else torch.zeros((), dtype=ct, device=x.device)
    return (total if args.reduction == "sum" else total / denominator), grad


def supports(x: torch.Tensor, target: torch.Tensor, args: Args) -> bool:
    """Every device, dtype and layout."""
    return True
