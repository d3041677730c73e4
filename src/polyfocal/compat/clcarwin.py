"""clcarwin's ``FocalLoss`` (focal_loss_pytorch, seed 003): softmax focal loss with a detached ``p_t``."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import functional as PF

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    r"""``FocalLoss(gamma=0, alpha=None, size_average=True)``: :math:`-\alpha_y (1-p_y)^\gamma \log p_y`.

    A number ``alpha`` becomes ``[alpha, 1-alpha]`` (two classes); a list or tensor gives one weight per
    class.  ``forward(input, target)`` takes ``[N, C]`` or ``[N, C, d1, ...]`` logits (flattened to
    ``[N*d1*..., C]``) and integer targets with one entry per prediction; mean (``size_average=True``) or
    sum over all of them.

    As in the listing, ``p_t`` is taken from ``logpt.data``: the factor :math:`(1-p_t)^\gamma` is a
    constant for autograd, so the input gradient is :math:`\alpha_y (1-p_y)^\gamma (\mathrm{softmax} -
    \mathrm{onehot})`, not the full focal-loss gradient.  Use :func:`polyfocal.softmax_focal_loss` for
    the latter.

    Example:
        >>> import torch
        >>> from polyfocal.compat.clcarwin import FocalLoss
        >>> FocalLoss(gamma=2, alpha=0.25)(torch.randn(8, 2), torch.randint(0, 2, (8,))).shape
        torch.Size([])
    """

    def __init__(
        self, gamma: float = 0, alpha: float | list[float] | torch.Tensor | None = None, size_average: bool = True
    ) -> None:
        super().__init__()
        self.gamma = gamma
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            alpha = torch.tensor([float(alpha), 1.0 - float(alpha)])
        elif isinstance(alpha, list):
            alpha = torch.tensor([float(a) for a in alpha])
        elif alpha is not None and not isinstance(alpha, torch.Tensor):
            raise TypeError(f"expected alpha to be a number, a list, a tensor or None, got {alpha!r}")
        self.register_buffer("alpha", alpha)
        self.size_average = size_average

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or input.ndim < 2:
            got = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            raise ValueError(f"expected input of shape [N, C] or [N, C, d1, ...], got {got}")
        num_classes = input.shape[1]
        logits = (input.flatten(2) if input.ndim > 2 else input.unsqueeze(2)).transpose(1, 2).reshape(-1, num_classes)
        if not isinstance(target, torch.Tensor) or target.numel() != logits.shape[0]:
            got = f"{target.numel()} elements" if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"expected a target with one class index per prediction ({logits.shape[0]}), got {got}")
        if self.alpha is not None and self.alpha.numel() != num_classes:
            raise ValueError(
                f"expected alpha with one weight per class (C={num_classes}), got {self.alpha.numel()} "
                "(a number alpha means [alpha, 1-alpha], i.e. two classes)"
            )
        return PF.poly_loss(
            logits,
            target.reshape(-1),
            activation="softmax",
            epsilon=0.0,  # the plain loss: no poly term, nothing ignored
            ignore_index=None,
            gamma=self.gamma,
            alpha=self.alpha,
            reduction="mean" if self.size_average else "sum",
            detach_modulator=True,
        )
