"""Per-class weights, margins and logit adjustments for imbalanced (long-tailed) data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._validation import finite_and_above

__all__ = ["adjust_logits", "class_balanced_alpha", "ldam_margins"]


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
    n = _counts(counts)
    if beta == 1.0:
        effective = n
    elif beta == 0.0:
        effective = torch.ones_like(n)
    else:
        effective = -torch.expm1(n * math.log(beta)) / (1.0 - beta)
    inverse = 1.0 / effective
    return (inverse * (n.numel() / inverse.sum())).to(torch.float32)


def _counts(counts: Sequence[int] | torch.Tensor, name: str = "counts") -> torch.Tensor:
    """Positive finite per-class values (counts or probabilities) as a float64 1-D tensor."""
    if isinstance(counts, torch.Tensor):
        if counts.dtype.is_complex or counts.dtype == torch.bool:
            raise TypeError(f"expected real-valued {name}, got dtype {counts.dtype}")
        n = counts.detach().to(torch.float64)
    elif isinstance(counts, Sequence) and not isinstance(counts, str):
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in counts):
            raise TypeError(f"expected a sequence of class {name}, got {counts!r}")
        n = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    else:
        raise TypeError(f"expected {name} to be a sequence or a 1-D tensor, got {type(counts).__name__}")
    if n.ndim != 1 or n.numel() == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of {name}, got shape {tuple(n.shape)}")
    if not finite_and_above(n, positive=True):
        raise ValueError(f"expected positive finite {name} for every class, got {n.tolist()!r}")
    return n


def ldam_margins(counts: Sequence[int] | torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    r"""LDAM's label-distribution-aware margins (Cao et al., NeurIPS 2019, eq. 13).

    .. math:: m_c = \text{max\_margin} \cdot \frac{n_c^{-1/4}}{\max_k n_k^{-1/4}}

    so the rarest class gets ``max_margin`` (the paper's code uses 0.5 with ``logit_scale=30``).  Pass the result
    as ``margin`` of a softmax loss (:func:`polyfocal.ldam_loss`).

    Args:
        counts: number of training samples of each class, all positive; sequence or 1-D tensor.
        max_margin: the largest margin, finite and >= 0.

    Returns:
        A float32 tensor of shape ``(C,)`` on the device of ``counts`` (CPU for a sequence).

    Example:
        >>> import polyfocal
        >>> [round(m, 6) for m in polyfocal.ldam_margins([10000, 625, 16], max_margin=0.5).tolist()]
        [0.1, 0.2, 0.5]
    """
    if isinstance(max_margin, bool) or not isinstance(max_margin, (int, float)):
        raise TypeError(f"expected max_margin to be a number >= 0, got {max_margin!r}")
    if not (math.isfinite(max_margin) and max_margin >= 0):
        raise ValueError(f"expected max_margin to be a finite number >= 0, got {max_margin!r}")
    n = _counts(counts)
    m = n.pow(-0.25)
    out = m.mul_(float(max_margin) / m.max())  # a 0-D tensor: no host read on CUDA
    device = counts.device if isinstance(counts, torch.Tensor) else None
    return out.to(device=device, dtype=torch.float32)


def adjust_logits(logits: torch.Tensor, prior: Sequence[float] | torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    r"""Post-hoc logit adjustment (Menon et al., ICLR 2021, eq. 9): ``logits - tau * log(prior / sum(prior))``.

    .. math:: \hat y = \arg\max_c\; z_c - \tau \log \pi_c

    Use it at inference on a model trained with plain cross-entropy (not on one trained with
    :func:`polyfocal.logit_adjusted_loss`, whose logits are already balanced).  The class dim is 1 (0 for a 1-D
    input); normalising the prior shifts every logit by the same constant, so the softmax is unchanged by it.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> z = torch.tensor([[2.0, 1.5, 0.0]])
        >>> polyfocal.adjust_logits(z, [90, 9, 1]).argmax(1).item()
        2
    """
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"expected floating-point logits as a torch.Tensor, got {type(logits).__name__}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ValueError(f"expected tau to be a finite number, got {tau!r}")
    pi = _counts(prior, "prior")
    class_dim = 1 if logits.ndim >= 2 else 0
    if logits.ndim == 0 or logits.shape[class_dim] != pi.numel():
        raise ValueError(
            f"expected prior of length C = {logits.shape[class_dim] if logits.ndim else 0} (logits' dim "
            f"{class_dim}), got {pi.numel()}"
        )
    bias = float(tau) * (torch.log(pi) - math.log(float(pi.sum())))
    shape = [1] * logits.ndim
    shape[class_dim] = -1
    return logits - bias.to(device=logits.device, dtype=logits.dtype).view(shape)
