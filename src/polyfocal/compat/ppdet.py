"""PaddleDetection's ``FocalLoss`` (seed 001): sigmoid focal loss on class indices, index C = background."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as PF

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """PaddleDetection's ``FocalLoss(use_sigmoid=True, alpha=0.25, gamma=2.0, loss_weight=1.0)``.

    ``forward(pred, target, reduction="none")``: ``pred`` ``(N, num_classes)`` logits, ``target`` ``(N,)``
    class indices in ``[0, num_classes]`` where ``num_classes`` is the background (its one-hot row is all
    zeros: the original one-hot encodes ``num_classes + 1`` classes and drops the last column).  The loss is
    multiplied by ``loss_weight``.

    Example:
        >>> import torch
        >>> from polyfocal.compat.ppdet import FocalLoss
        >>> FocalLoss()(torch.randn(4, 80), torch.tensor([3, 80, 80, 7]), reduction="sum").shape
        torch.Size([])
    """

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        if use_sigmoid is not True:
            raise ValueError(f"expected use_sigmoid=True (Focal Loss only supports sigmoid), got {use_sigmoid!r}")
        self.use_sigmoid = use_sigmoid
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        if isinstance(target, torch.Tensor) and target.dtype.is_floating_point:
            raise TypeError(f"expected integer class indices (num_classes = background), got {target.dtype}")
        loss = PF.poly_loss(
            pred,
            target,
            activation="sigmoid",
            epsilon=0.0,  # the plain loss: no poly term, nothing ignored
            ignore_index=None,
            gamma=self.gamma,
            alpha=self.alpha,
            reduction=reduction,
        )
        return loss * self.loss_weight
