"""mmdetection's ``VarifocalLoss`` and ``QualityFocalLoss`` (mmdet 3.x ``mmdet/models/losses``): same constructor and
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``, same numbers, one fused pass.

mmdet's reduction (``weight_reduce_loss``): the element loss times ``weight``; without ``avg_factor`` the plain
``"none"`` / ``"mean"`` / ``"sum"``; with it, ``"mean"`` is ``sum / (avg_factor + float32 eps)``, ``"none"`` ignores it
and ``"sum"`` is an error.  Both shims multiply by ``loss_weight``."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as PF
from .._params import check_nonnegative, check_reduction

__all__ = ["QualityFocalLoss", "VarifocalLoss"]

_EPS = torch.finfo(torch.float32).eps


def _check_sigmoid(use_sigmoid: object, name: str) -> None:
    if use_sigmoid is not True:
        raise ValueError(
            f"expected use_sigmoid=True (mmdet's {name} supports only the sigmoid form), got {use_sigmoid!r}"
        )


def _reduction(default: str, override: object) -> str:
    if override is not None:
        check_reduction(override)
    return override if override else default  # type: ignore[return-value]


def _avg_factor_normalizer(avg_factor: object, reduction: str) -> object:
    if reduction == "sum":
        raise ValueError(
            'expected avg_factor=None with reduction="sum" (as mmdet: it cannot be used with "sum"), got a value'
        )
    return avg_factor + _EPS  # type: ignore[operator]


class VarifocalLoss(nn.Module):
    r"""mmdet's ``VarifocalLoss(use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True, reduction="mean",
    loss_weight=1.0)``: :func:`polyfocal.varifocal_loss` with mmdet's reduction.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: ``pred`` ``(N, C)`` logits,
    ``target`` the IoU-aware scores of the same shape (values in [0, 1]), ``weight`` broadcastable to ``pred``.

    Example:
        >>> import torch
        >>> from polyfocal.compat.mmdet import VarifocalLoss
        >>> q = torch.zeros(4, 3)
        >>> q[0, 1] = 0.8
        >>> VarifocalLoss()(torch.randn(4, 3), q, avg_factor=1.0).shape
        torch.Size([])
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        reduction: str = "mean",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        _check_sigmoid(use_sigmoid, "VarifocalLoss")
        self.use_sigmoid = use_sigmoid
        self.alpha = check_nonnegative(alpha, "alpha")
        self.gamma = gamma
        self.iou_weighted = iou_weighted
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight
        PF.hyper(activation="sigmoid", gamma=gamma, alpha=alpha, variant="varifocal")  # validate now

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | torch.Tensor | None = None,
        reduction_override: str | None = None,
    ) -> torch.Tensor:
        reduction = _reduction(self.reduction, reduction_override)
        normalizer = None
        if avg_factor is not None and reduction != "none":
            normalizer, reduction = _avg_factor_normalizer(avg_factor, reduction), "sum"
        loss = PF.varifocal_loss(
            pred,
            target,
            alpha=self.alpha,
            gamma=self.gamma,
            iou_weighted=bool(self.iou_weighted),
            weight=weight,
            normalizer=normalizer,  # type: ignore[arg-type]
            ignore_index=None,
            reduction=reduction,  # type: ignore[arg-type]
        )
        return self.loss_weight * loss


class QualityFocalLoss(nn.Module):
    r"""mmdet's ``QualityFocalLoss(use_sigmoid=True, beta=2.0, reduction="mean", loss_weight=1.0, activated=False)``:
    :func:`polyfocal.quality_focal_loss` summed over the classes, then mmdet's reduction over the anchors.

    ``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``: ``pred`` ``(N, C)`` logits;
    ``target`` either the pair ``(label, score)`` -- class indices ``(N,)`` in ``[0, C]`` (``C`` = background) and the
    quality score ``(N,)`` of the labelled class -- or a soft score tensor of ``pred``'s shape (mmdet's tensor
    target); ``weight`` is per anchor ``(N,)``.  ``"none"`` returns the per-anchor loss ``(N,)``; ``"mean"`` divides
    by the number of anchors.  ``activated=True`` (probabilities instead of logits) is refused: pass logits.

    Example:
        >>> import torch
        >>> from polyfocal.compat.mmdet import QualityFocalLoss
        >>> QualityFocalLoss()(torch.randn(4, 3), (torch.tensor([0, 3, 1, 3]), torch.rand(4))).shape
        torch.Size([])
    """

    def __init__(
        self,
        use_sigmoid: bool = True,
        beta: float = 2.0,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        activated: bool = False,
    ) -> None:
        super().__init__()
        _check_sigmoid(use_sigmoid, "QualityFocalLoss")
        if activated:
            raise ValueError("expected activated=False (polyfocal computes from logits, in log space), got True")
        self.use_sigmoid = use_sigmoid
        self.beta = check_nonnegative(beta, "beta")
        self.reduction = check_reduction(reduction)
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        weight: torch.Tensor | None = None,
        avg_factor: float | torch.Tensor | None = None,
        reduction_override: str | None = None,
    ) -> torch.Tensor:
        reduction = _reduction(self.reduction, reduction_override)
        if isinstance(pred, torch.Tensor) and pred.ndim < 2:
            raise ValueError(f"expected pred of shape (N, C), got {tuple(pred.shape)}")
        if weight is not None and isinstance(weight, torch.Tensor) and weight.ndim == pred.ndim - 1:
            weight = weight.unsqueeze(1)  # per anchor: every class of the anchor
        kw = dict(beta=self.beta, weight=weight, ignore_index=None)
        if reduction == "none":
            loss = PF.quality_focal_loss(pred, target, reduction="none", **kw).sum(1)  # type: ignore[arg-type]
        else:
            if avg_factor is not None:
                normalizer = _avg_factor_normalizer(avg_factor, reduction)
            else:
                normalizer = float(pred.numel() // pred.shape[1]) if reduction == "mean" else None
            loss = PF.quality_focal_loss(pred, target, reduction="sum", normalizer=normalizer, **kw)  # type: ignore[arg-type]
        return self.loss_weight * loss
