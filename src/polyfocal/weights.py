"""Per-class weights for imbalanced data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["class_balanced_alpha"]


def class_balanced_alpha(counts: Sequence[int] | torch.Tensor, beta: float = 0.999) -> torch.Tensor:
    r"""Per-class weights by the effective number of samples (Cui et al., CVPR 2019).

    .. math::

        E_c = \frac{1 - \beta^{n_c}}{1 - \beta}, \qquad
        \alpha_c = C \, \frac{1 / E_c}{\sum_k 1 / E_k}

    so the weights sum to ``C``.  ``beta=0`` gives uniform weights; ``beta -> 1`` approaches inverse
    class frequency, and ``beta=1`` is accepted as that limit (:math:`E_c = n_c`).
    Pass the result as ``alpha`` (or ``weight``) of a softmax loss.

    Args:
        counts: number of training samples of each class, all positive; sequence or 1-D tensor.
        beta: in [0, 1]; the paper uses 0.9, 0.99, 0.999 or 0.9999.

    Returns:
        A float32 tensor of shape ``(C,)`` on the device of ``counts`` (CPU for a sequence).

    Example:
        >>> import polyfocal
        >>> w = polyfocal.class_balanced_alpha([5000, 500, 50], beta=0.999)
        >>> bool(w[2] > w[1] > w[0]), round(float(w.sum()), 4)
        (True, 3.0)
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"expected beta to be a number in [0, 1], got {beta!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"expected beta in [0, 1], got {beta!r}")
    if isinstance(counts, torch.Tensor):
        if counts.dtype.is_complex or counts.dtype == torch.bool:
            raise TypeError(f"expected real-valued counts, got dtype {counts.dtype}")
        n = counts.detach().to(torch.float64)
    elif isinstance(counts, Sequence) and not isinstance(counts, str):
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in counts):
            raise TypeError(f"expected a sequence of class counts, got {counts!r}")
        n = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    else:
        raise TypeError(f"expected counts to be a sequence or a 1-D tensor, got {type(counts).__name__}")
    if n.ndim != 1 or n.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of counts, got shape {tuple(n.shape)}")
    if not bool(torch.isfinite(n).all()) or bool((n <= 0).any()):
        raise ValueError(f"expected positive finite counts for every class, got {n.tolist()!r}")
    if beta == 1.0:
        effective = n
    elif beta == 0.0:
        effective = torch.ones_like(n)
    else:
        effective = -torch.expm1(n * math.log(beta)) / (1.0 - beta)
    inverse = 1.0 / effective
    return (inverse * (n.numel() / inverse.sum())).to(torch.float32)
