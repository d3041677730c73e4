"""yatengLG's ``focal_loss`` (Focal-Loss-Pytorch / ``focal-loss-torch``, seed 002): softmax focal loss."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import functional as PF
from . import _check_num_classes

__all__ = ["focal_loss"]


class focal_loss(nn.Module):
    r"""``focal_loss(alpha=0.25, gamma=2, num_classes=3, size_average=True)``.

    Per prediction :math:`-\alpha_y (1-p_y)^\gamma \log p_y` with a softmax over the last dim.

    A scalar ``alpha`` (< 1) builds the per-class vector ``[alpha, 1-alpha, 1-alpha, ...]`` (down-weights
    class 0, the background in detection); a list gives one weight per class.  ``forward(preds, labels)``
    takes ``preds`` of shape ``[B, C]`` or ``[B, N, C]`` (**class dim last**) and labels ``[B]`` / ``[B, N]``;
    the loss is the mean (``size_average=True``) or sum over all ``B*N`` predictions.

    Differences from the listing: nothing is printed, and ``self.alpha`` is not overwritten by the first
    call (the listing replaces it by the gathered per-sample alphas, which breaks a second call).

    Example:
        >>> import torch
        >>> from polyfocal.compat.yatenglg import focal_loss
        >>> focal_loss(num_classes=5)(torch.randn(2, 7, 5), torch.randint(0, 5, (2, 7))).shape
        torch.Size([])
    """

    def __init__(
        self, alpha: float | list[float] = 0.25, gamma: float = 2, num_classes: int = 3, size_average: bool = True
    ) -> None:
        super().__init__()
        num_classes = _check_num_classes(num_classes)
        if isinstance(alpha, list):
            if len(alpha) != num_classes:
                raise ValueError(f"expected a list alpha of length num_classes={num_classes}, got length {len(alpha)}")
            values = [float(a) for a in alpha]
        elif isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            if not alpha < 1:
                raise ValueError(f"expected a scalar alpha < 1 (it builds [alpha, 1-alpha, ...]), got {alpha!r}")
            values = [float(alpha)] + [1.0 - float(alpha)] * (num_classes - 1)
        else:
            raise TypeError(f"expected alpha to be a number < 1 or a list of num_classes numbers, got {alpha!r}")
        self.num_classes = num_classes
        self.register_buffer("alpha", torch.tensor(values, dtype=torch.float32))
        self.gamma = gamma
        self.size_average = size_average

    def forward(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(preds, torch.Tensor) or preds.ndim not in (2, 3) or preds.shape[-1] != self.num_classes:
            got = tuple(preds.shape) if isinstance(preds, torch.Tensor) else type(preds).__name__
            raise ValueError(
                f"expected preds of shape [B, {self.num_classes}] or [B, N, {self.num_classes}], got {got}"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != preds.shape[:-1]:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"expected labels of shape {tuple(preds.shape[:-1])}, got {got}")
        return PF.poly_loss(
            preds.reshape(-1, self.num_classes),
            labels.reshape(-1),
            activation="softmax",
            epsilon=0.0,  # the plain loss: no poly term, nothing ignored
            ignore_index=None,
            gamma=self.gamma,
            alpha=self.alpha,
            reduction="mean" if self.size_average else "sum",
        )
