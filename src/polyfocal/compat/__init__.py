"""Compatibility shims: the signatures, defaults and numbers of popular focal/poly loss listings.

Each shim keeps the original's constructor and call signature and defaults, gives the same values and
input gradients as the original listing, and computes through the polyfocal core (so it inherits its
log-space numerics and argument checks).  Unlike some originals, none mutates its state while being
called, so repeated calls stay correct.

============================================  ==========================================================
original                                      shim
============================================  ==========================================================
PolyLoss paper / seed 000 (PyTorch)           :class:`polyfocal.compat.Poly1CrossEntropyLoss`,
                                              :class:`polyfocal.compat.Poly1FocalLoss`
``paddle.nn.functional.sigmoid_focal_loss``   :func:`polyfocal.compat.paddle.sigmoid_focal_loss`
PaddleDetection ``FocalLoss``                 :class:`polyfocal.compat.ppdet.FocalLoss`
yatengLG ``focal_loss`` (focal-loss-torch)    :class:`polyfocal.compat.yatenglg.focal_loss`
clcarwin ``FocalLoss``                        :class:`polyfocal.compat.clcarwin.FocalLoss`
YOLOv5 ``FocalLoss``                          :class:`polyfocal.compat.yolov5.FocalLoss`
timm ``AsymmetricLossMultiLabel``             :class:`polyfocal.compat.timm.AsymmetricLossMultiLabel`
mmdet ``VarifocalLoss``                       :class:`polyfocal.compat.mmdet.VarifocalLoss`
mmdet ``QualityFocalLoss``                    :class:`polyfocal.compat.mmdet.QualityFocalLoss`
============================================  ==========================================================
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import functional as PF
from .._params import check_reduction

__all__ = [
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "clcarwin",
    "mmdet",
    "paddle",
    "ppdet",
    "timm",
    "yatenglg",
    "yolov5",
]


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
    return int(num_classes)


def _check_logits_classes(logits: torch.Tensor, num_classes: int) -> None:
    if isinstance(logits, torch.Tensor) and logits.ndim >= 2 and logits.shape[1] != num_classes:
        raise ValueError(
            f"expected logits with num_classes={num_classes} classes along dim 1, got shape {tuple(logits.shape)}"
        )


class Poly1CrossEntropyLoss(nn.Module):
    """Seed 000's PyTorch ``Poly1CrossEntropyLoss``: ``CE + epsilon * (1 - p_t)``, softmax.

    ``forward(logits, labels)``: logits ``[N, num_classes]`` and integer labels ``[N]`` (also
    ``[N, num_classes, d...]`` / ``[N, d...]``, class dim 1, an extension).  Reduction ``"none"`` by
    default, as in the listing.  Same as ``polyfocal.poly1_cross_entropy(..., ignore_index=None)``.

    Example:
        >>> import torch
        >>> from polyfocal.compat import Poly1CrossEntropyLoss
        >>> loss = Poly1CrossEntropyLoss(num_classes=3, reduction="mean")
        >>> loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 1])).shape
        torch.Size([])
    """

    def __init__(self, num_classes: int, epsilon: float = 1.0, reduction: str = "none") -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.epsilon = epsilon
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_logits_classes(logits, self.num_classes)
        return PF.poly1_cross_entropy(
            logits,
            labels,
            epsilon=self.epsilon,
            ignore_index=None,
            reduction=self.reduction,  # type: ignore[arg-type]
        )


class Poly1FocalLoss(nn.Module):
    """Seed 000's PyTorch ``Poly1FocalLoss`` (sigmoid): ``alpha_t (1-p_t)^gamma BCE + epsilon (1-p_t)^(gamma+1)``.

    ``forward(logits, labels)``: logits ``[N, num_classes]`` or ``[N, num_classes, ...]``, integer labels
    ``[N]`` or ``[N, ...]`` (one-hot encoded along dim 1).  ``alpha < 0`` disables the alpha balance, as in
    the listing; otherwise alpha must lie in [0, 1].  A label equal to ``num_classes`` is accepted as an
    all-negative (background) element, an extension; the listing would fail on it.

    Example:
        >>> import torch
        >>> from polyfocal.compat import Poly1FocalLoss
        >>> Poly1FocalLoss(num_classes=3)(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(
        self,
        num_classes: int,
        epsilon: float = 1.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str = "none",
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.epsilon = epsilon
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_logits_classes(logits, self.num_classes)
        if isinstance(labels, torch.Tensor) and labels.dtype.is_floating_point:
            raise TypeError(f"expected integer class labels (they are one-hot encoded), got {labels.dtype}")
        alpha = self.alpha
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha < 0:
            alpha = None  # the listing's "alpha < 0 disables"
        return PF.poly1_focal_loss(
            logits,
            labels,
            epsilon=self.epsilon,
            gamma=self.gamma,
            alpha=alpha,
            ignore_index=None,
            reduction=self.reduction,  # type: ignore[arg-type]
        )


from . import clcarwin, paddle, ppdet, yatenglg, yolov5  # noqa: E402  (submodules use the helpers above)
