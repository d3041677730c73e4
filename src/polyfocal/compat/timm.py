"""timm's ``AsymmetricLossMultiLabel`` (``timm.loss.asymmetric_loss``; Ridnik et al., ICCV 2021, the Alibaba-MIIL
listing it copies): the multi-label asymmetric loss, summed."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as PF
from .._params import check_nonnegative

__all__ = ["AsymmetricLossMultiLabel"]


class AsymmetricLossMultiLabel(nn.Module):
    r"""``AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8,
    disable_torch_grad_focal_loss=False)``.

    ``forward(x, y)``: logits and multi-hot (or soft) targets of the same shape; returns the **sum** over all
    elements of :math:`-y (1-s)^{\gamma_+}\log s - (1-y) s_m^{\gamma_-}\log(1-s_m)` with :math:`s_m = \max(s -
    \text{clip}, 0)` (the listing's ``-loss.sum()``).  Soft targets combine as in the listing: one
    :math:`p_t = y s + (1-y)(1 - s_m)` and the exponent :math:`\gamma_+ y + \gamma_-(1-y)`.
    ``disable_torch_grad_focal_loss=True`` makes the modulating factor a constant for autograd, as the listing does.
    ``clip=None`` or ``0`` disables the margin.

    One deliberate difference: the listing clamps the probabilities at ``eps`` before taking ``log``, so beyond
    ``|x| > -log(eps)`` (18.4 for ``eps=1e-8``) its loss saturates at ``-log(eps)`` with a zero gradient; this shim
    computes the exact loss in log space there (``eps`` is accepted and checked, and changes nothing else).

    Example:
        >>> import torch
        >>> from polyfocal.compat.timm import AsymmetricLossMultiLabel
        >>> AsymmetricLossMultiLabel()(torch.randn(4, 6), torch.randint(0, 2, (4, 6)).float()).shape
        torch.Size([])
    """

    def __init__(
        self,
        gamma_neg: float = 4,
        gamma_pos: float = 1,
        clip: float | None = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = False,
    ) -> None:
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = check_nonnegative(eps, "eps")
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss
        PF.hyper(activation="sigmoid", gamma=gamma_pos, gamma_neg=gamma_neg, clip=clip)  # validate now

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return PF.asymmetric_loss(
            x,
            y,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            clip=0.0 if self.clip is None else self.clip,
            ignore_index=None,
            reduction="sum",
            detach_modulator=bool(self.disable_torch_grad_focal_loss),
        )
