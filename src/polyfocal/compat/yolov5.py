"""YOLOv5's ``FocalLoss`` wrapper (seed 004): focal modulation around an ``nn.BCEWithLogitsLoss``."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as PF

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    r"""``FocalLoss(loss_fcn, gamma=1.5, alpha=0.25)`` wrapping ``nn.BCEWithLogitsLoss``.

    .. math:: \ell = \alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE}_{w, w_+}(x, t)

    where the BCE keeps the wrapped loss's ``weight`` and ``pos_weight`` and ``p_t = t p + (1-t)(1-p)``
    (the TF-addons form; soft targets such as IoU objectness are fine).  As in the original, the wrapped
    loss's ``reduction`` becomes this module's ``reduction`` and ``loss_fcn.reduction`` is set to ``"none"``.

    Example:
        >>> import torch
        >>> from polyfocal.compat.yolov5 import FocalLoss
        >>> crit = FocalLoss(torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.5])), gamma=1.5)
        >>> crit(torch.randn(6, 4), torch.rand(6, 4)).shape
        torch.Size([])
    """

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        if not isinstance(loss_fcn, nn.BCEWithLogitsLoss):
            raise TypeError(f"expected loss_fcn to be a torch.nn.BCEWithLogitsLoss, got {type(loss_fcn).__name__}")
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # as the original: the focal factor applies to each element

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        if not isinstance(true, torch.Tensor) or not isinstance(pred, torch.Tensor) or true.shape != pred.shape:
            got = tuple(true.shape) if isinstance(true, torch.Tensor) else type(true).__name__
            want = tuple(pred.shape) if isinstance(pred, torch.Tensor) else "pred's shape"
            raise ValueError(f"expected targets of pred's shape {want}, got {got}")
        return PF.poly_loss(
            pred,
            true,
            activation="sigmoid",
            epsilon=0.0,  # the plain loss: no poly term, nothing ignored
            ignore_index=None,
            gamma=self.gamma,
            alpha=self.alpha,
            weight=self.loss_fcn.weight,
            pos_weight=self.loss_fcn.pos_weight,
            reduction=self.reduction,
        )
