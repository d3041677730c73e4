"""PaddlePaddle's ``paddle.nn.functional.sigmoid_focal_loss`` (seed 001), on torch tensors."""

from __future__ import annotations

import torch

from .. import functional as PF

__all__ = ["sigmoid_focal_loss"]


def sigmoid_focal_loss(
    logit: torch.Tensor,
    label: torch.Tensor,
    normalizer: torch.Tensor | float | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    name: str | None = None,
) -> torch.Tensor:
    r"""Paddle's sigmoid focal loss: same signature and defaults (``reduction="sum"``).

    .. math::

        Out = -Labels \cdot \alpha (1 - \sigma(Logit))^{\gamma} \log\sigma(Logit)
              - (1 - Labels)(1 - \alpha)\,\sigma(Logit)^{\gamma}\log(1 - \sigma(Logit))

    divided by ``normalizer`` (broadcast, e.g. shape ``[1]`` or ``[C]``) before the reduction.
    ``label`` is a float tensor of the logit's shape.  ``name`` is accepted and ignored (Paddle's op name).

    Example (the numbers printed in seed 001):
        >>> import torch
        >>> from polyfocal.compat.paddle import sigmoid_focal_loss
        >>> logit = torch.tensor([[0.97, -0.91, 0.03], [-0.55, -0.43, 0.71]])
        >>> label = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> out = sigmoid_focal_loss(logit, label, reduction="none")
        >>> seed = torch.tensor([[0.00607155, 0.02089742, 0.13681222], [0.04572806, 0.08544625, 0.37411612]])
        >>> torch.allclose(out, seed, atol=1e-7)
        True
    """
    if not isinstance(label, torch.Tensor) or not isinstance(logit, torch.Tensor) or label.shape != logit.shape:
        got = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        want = tuple(logit.shape) if isinstance(logit, torch.Tensor) else "the logit's shape"
        raise ValueError(f"expected label of the logit's shape {want}, got {got}")
    return PF.poly_loss(
        logit,
        label,
        activation="sigmoid",
        epsilon=0.0,  # the plain loss: no poly term, nothing ignored
        ignore_index=None,
        gamma=gamma,
        alpha=alpha,
        normalizer=normalizer,
        reduction=reduction,
    )
