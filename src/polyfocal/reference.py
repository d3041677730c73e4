r"""Plain float64 reference: the textbook formulas, written out with no numerical care.

This module is the oracle the tests (and benchmarks) compare every implementation against.  It shares
no code with :mod:`polyfocal._core`: probabilities come from ``softmax``/``sigmoid``, ``log`` is taken of
them directly, one-hot targets are materialised, and ``(1 - p_t) ** gamma`` is a plain power, so it is
slow and it overflows for extreme logits (where its gradients can be NaN).  Use moderate logits.

.. math::

    \ell = (1 - p_t)^{\gamma} \Big(-\sum_c \alpha_c w_c q_c \log p_c\Big)
         + \Big(\sum_c w_c q_c\Big) \sum_j \epsilon_j (1 - p_t)^{j+\gamma}
         + \lambda \big(\log \textstyle\sum_c e^{z'_c}\big)^2,
    \qquad p = \mathrm{softmax}(z'),\ p_t = \sum_c q_c p_c \quad\text{(softmax)}

with the adjusted logits :math:`z' = s\,(z + \tau \log(\pi / \textstyle\sum_c \pi_c) - m_y\,\mathrm{onehot}_y)`
(prior :math:`\pi`, margin :math:`m`, logit scale :math:`s`, z-loss weight :math:`\lambda`; all off by default) of
the logits :math:`z = c \tanh(x / c)` with ``softcap`` :math:`c` (else :math:`z = x`).

.. math::

    \ell = \alpha_t (1 - p_t)^{\gamma}\,\big(-w_{+} t \log p - (1-t) \log(1-p)\big)
         + \sum_j \epsilon_j (1 - p_t)^{j+\gamma},\qquad p_t = t p + (1-t)(1-p) \quad\text{(sigmoid)}

The detection / multi-label members of the sigmoid family (``gamma_neg``, ``clip``, ``variant``):

* asymmetric (``gamma_neg`` / ``clip``): :math:`p_m = \max(p - \text{clip}, 0)`,
  :math:`p_t = t p + (1-t)(1-p_m)`, :math:`\gamma_t = \gamma t + \gamma_- (1-t)`,
  :math:`\ell = \alpha_t (1-p_t)^{\gamma_t} (-w_+ t \log p - (1-t)\log(1-p_m)) + \sum_j \epsilon_j (1-p_t)^{j+\gamma_t}`
* varifocal: :math:`\ell = \mathrm{BCE}(x, t)\,(t \text{ or } 1)` for :math:`t > 0`,
  :math:`\alpha |p - t|^\gamma\,\mathrm{BCE}(x, t)` for :math:`t \le 0`
* quality: :math:`\ell = |t - p|^\gamma\,\mathrm{BCE}(x, t) + \sum_j \epsilon_j |t - p|^{j+\gamma}`
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["poly_loss_reference"]


def _f64(value: object) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    return torch.tensor(value, dtype=torch.float64)


def poly_loss_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str = "softmax",
    epsilon: float | Sequence[float] = 1.0,
    gamma: float = 0.0,
    alpha: object = None,
    weight: object = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    normalizer: object = None,
    pos_weight: object = None,
    reduction: str = "mean",
    detach_modulator: bool = False,
    prior: object = None,
    tau: float = 1.0,
    margin: object = None,
    logit_scale: float = 1.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    gamma_neg: float | None = None,
    clip: float = 0.0,
    variant: str = "poly",
    iou_weighted: bool = True,
    score: object = None,
) -> torch.Tensor:
    """The PolyLoss family in float64 from the textbook formulas (see the module docstring).

    Same arguments and semantics as :func:`polyfocal.poly_loss`; no validation.  Gradients flow to
    ``input`` through autograd; the result is float64.
    """
    eps = [float(epsilon)] if isinstance(epsilon, (int, float)) else [float(e) for e in epsilon]
    ls = float(label_smoothing)
    x = input.to(torch.float64)
    unbatched = x.ndim == 1 and activation == "softmax"
    if x.ndim == 1 and not target.dtype.is_floating_point and target.shape != x.shape:
        unbatched = True
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    num_classes = x.shape[1] if x.ndim >= 2 else 1
    mask = None

    if activation == "softmax":
        if target.dtype.is_floating_point:
            q = target.to(torch.float64)
        else:
            y = target.clone()
            if ignore_index is not None:
                mask = (y != ignore_index).to(torch.float64)
                y[y == ignore_index] = 0
            q = torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1).to(torch.float64)
        q = q * (1 - ls) + ls / num_classes
        shape = [1, num_classes] + [1] * (x.ndim - 2)
        a = _f64(alpha).view(shape) if alpha is not None else torch.ones(shape, dtype=torch.float64)
        w = _f64(weight).view(shape) if weight is not None else torch.ones(shape, dtype=torch.float64)
        if softcap:
            x = float(softcap) * torch.tanh(x / float(softcap))
        if prior is not None:
            pi = _f64(prior)
            x = x + float(tau) * torch.log(pi / pi.sum()).view(shape)
        if margin is not None:
            x = x - _f64(margin)[y].unsqueeze(1) * torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1)
        if logit_scale != 1.0:
            x = float(logit_scale) * x
        p = torch.softmax(x, dim=1)
        p_t = (q * p).sum(1)
        modulator = (1 - p_t) ** gamma
        if detach_modulator:
            modulator = modulator.detach()
        ce = -(a * w * q * torch.log(p)).sum(1)
        w_t = (w * q).sum(1)
        poly = sum(e * (1 - p_t) ** (j + gamma) for j, e in enumerate(eps, start=1))
        loss = modulator * ce + w_t * poly
        if z_loss:
            loss = loss + float(z_loss) * torch.log(torch.exp(x).sum(1)) ** 2
        if target.dtype.is_floating_point:
            denominator = torch.tensor(float(loss.numel()), dtype=torch.float64)
        else:
            hard = torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1).to(torch.float64)
            target_weight = (hard * w).sum(1)
            if mask is not None:
                target_weight = target_weight * mask
            denominator = target_weight.sum()
    else:
        if target.dtype.is_floating_point or target.shape == x.shape:
            t = target.to(torch.float64)
        else:
            y = target.clone()
            if ignore_index is not None:
                mask = (y != ignore_index).to(torch.float64).unsqueeze(1)
                y[y == ignore_index] = num_classes
            t = torch.nn.functional.one_hot(y, num_classes + 1).movedim(-1, 1)[:, :num_classes].to(torch.float64)
        if score is not None and not (target.dtype.is_floating_point or target.shape == x.shape):
            t = t * _f64(score).unsqueeze(1)  # mmdet's (label, score) pair: the target class's element is the score
        t = t * (1 - ls) + 0.5 * ls
        pw = _f64(pos_weight) if pos_weight is not None else 1.0
        p = torch.sigmoid(x)
        ce = -(pw * t * torch.log(p) + (1 - t) * torch.log(1 - p))
        if variant == "varifocal":
            a = 1.0 if alpha is None else float(alpha)
            focal_weight = torch.where(t > 0, t if iou_weighted else torch.ones_like(t), a * (p - t).abs() ** gamma)
            loss = ce * focal_weight
        elif variant == "quality":
            distance = (t - p).abs()
            poly = sum(e * distance ** (j + gamma) for j, e in enumerate(eps, start=1))
            loss = distance**gamma * ce + poly
        else:
            p_m = p if clip == 0 else (p - clip).clamp(min=0)  # the asymmetric loss's probability margin
            ce = -(pw * t * torch.log(p) + (1 - t) * torch.log(1 - p_m))
            p_t = t * p + (1 - t) * (1 - p_m)
            g = gamma if gamma_neg is None else gamma * t + gamma_neg * (1 - t)
            alpha_t = 1.0 if alpha is None else float(alpha) * t + (1 - float(alpha)) * (1 - t)
            modulator = (1 - p_t) ** g
            if detach_modulator:
                modulator = modulator.detach()
            poly = sum(e * (1 - p_t) ** (j + g) for j, e in enumerate(eps, start=1))
            loss = alpha_t * modulator * ce + poly
        if weight is not None:
            loss = loss * _f64(weight)
        if mask is not None:
            mask = mask.expand_as(loss)
        denominator = torch.tensor(float(loss.numel()), dtype=torch.float64) if mask is None else mask.sum()

    if mask is not None:
        loss = loss * mask
    if unbatched:
        loss = loss.squeeze(0)
    if normalizer is not None:
        loss = loss / _f64(normalizer)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / denominator
