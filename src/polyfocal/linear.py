r"""Fused linear layer + softmax-family loss: the ``(N, V)`` logits are never materialised.

``linear_poly_loss(input, linear_weight, target, linear_bias=..., **options)`` is exactly
``poly_loss(F.linear(input, linear_weight, linear_bias), target, **options)`` -- every softmax-family option of
:func:`polyfocal.poly_loss` (focal ``gamma``, Poly-N ``epsilon``, per-class ``alpha`` / ``weight``,
``ignore_index``, ``label_smoothing``, ``prior`` / ``tau``, ``margin``, ``logit_scale``, ``z_loss``) -- plus
``softcap``: with ``softcap = c`` the loss sees ``c * tanh(F.linear(...) / c)`` (Gemma-2's final logit
soft-capping; the long-tail adjustments and ``logit_scale`` apply after the cap), i.e. it is exactly
``poly_loss(c * torch.tanh(F.linear(input, linear_weight, linear_bias) / c), target, **options)``.

How it runs: the rows are processed in chunks through one reused ``(chunk, V)`` buffer.  Per chunk

1. ``z = h @ W.T (+ b)`` into the buffer (``torch.mm`` / ``torch.addmm`` with ``out=``);
2. with ``softcap``: ``z <- c tanh(z / c)`` in place (and ``1 - (z / c)^2`` into a second chunk buffer);
3. the package's fused kernel (native C / Triton / torch ops, picked by the dispatcher exactly as for
   :func:`polyfocal.poly_loss`) writes the chunk's loss and ``dL/dz`` over the buffer (the ``inplace=True`` path);
4. with ``softcap`` the gradient is multiplied by the saved ``1 - (z / c)^2``;
5. ``grad_input[chunk] = g @ W``, ``grad_W += g.T @ h`` (the first chunk writes with ``out=``: no zero fill),
   ``grad_b += g.sum(0)``.

The gradients are computed in the forward (as Liger-Kernel's fused linear cross-entropy does) for ``"mean"`` and
``"sum"``; the ``"mean"`` denominator (non-ignored rows, or their summed class weights) is computed from the
targets before the first chunk, as a device tensor (no host synchronisation on CUDA), and divides the three
gradients once at the end.  The backward multiplies them by ``grad_output`` (nothing when it is 1 on CPU).
``reduction="none"`` computes only the losses in the forward and recomputes the chunks in the backward with the
per-row ``grad_output`` (folded into the ``(chunk, d)`` factors, not the ``(chunk, V)`` buffer).  A second
backward (``retain_graph=True``) recomputes; a double backward is refused.  Results are deterministic for a
fixed chunking.

**Precision.** float32 / float64 run in their own dtype.  For bfloat16 / float16 the kernel's math is float32 and
``grad_W`` / ``grad_b`` accumulate in float32 across chunks (rounded to the weight's dtype once, at the end); on
CUDA the chunk GEMMs run in the input dtype (``grad_W`` through ``out_dtype=float32`` GEMMs), on CPU every chunk
GEMM runs in float32 (CPUs without bf16 matrix units emulate bf16 GEMMs), so the CPU result is the float32 loss
of the bf16 inputs -- closer to the exact value than the unfused bf16 path, not bitwise equal to it.

**Chunk size.** ``chunk_size=None`` takes as many rows as fit a workspace of ``budget`` bytes:
``rows = max(1, budget // (V * itemsize * buffers))`` with ``buffers = 2`` when ``softcap`` needs its derivative
buffer, else 1 (never more than ``N``).  The budget is the smaller of half the weight's size and an eighth of
the full ``(N, V)`` logits' size, clamped to [32 MiB, 256 MiB] (:data:`MIN_CHUNK_BYTES`, :data:`MAX_CHUNK_BYTES`):
above the floor, the workspace stays within half of the ``grad_W`` that every path allocates anyway and a
sixteenth of the unfused path's extra memory (``F.linear`` + ``F.cross_entropy`` holds about twice the logits),
while chunks stay large enough (hundreds of rows) for the GEMMs to run at full speed (on 2 CPU threads, 256-row
chunks made the three GEMMs up to ~1.5x slower than 1024-row ones at ``d=1024, V=32000``).  The environment
variable ``POLYFOCAL_LINEAR_CHUNK_BYTES`` (bytes) replaces the budget;
``chunk_size=k`` forces ``k`` rows.  The extra memory beyond the inputs, parameters and the final gradients is
that workspace, plus a float32 ``grad_W`` (``V x d``) for bf16/fp16 weights and, on CPU, a float32 copy of a
bf16/fp16 weight.

Refused before any work (``TypeError`` / ``ValueError`` / ``IndexError``, "expected ..., got ..."): soft
(probability) targets, the sigmoid family (no ``activation`` keyword), shape / dtype / device mismatches, bad
options, gradients for ``alpha`` / ``weight`` / ``prior`` / ``margin``, ``torch.func`` transforms; a double
backward raises ``RuntimeError``.  Under ``torch.compile`` the loss is one ``torch.library`` custom op with a fake
kernel (``fullgraph=True`` works).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._args import hyper
from ._linear_chunks import (  # noqa: F401  (re-exported: the chunking constants, and the op for tests)
    _TENSORS,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    _check_chunk_size,
    _flat,
    _Plan,
    chunk_rows,
    fused_linear_loss,
    linear_poly,
)
from ._params import _describe, _real, check_softcap
from .linear_parallel import _check_group, sharded_linear_poly_loss

__all__ = [
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "LinearCrossEntropyLoss",
    "LinearPoly1CrossEntropyLoss",
    "LinearPolyLoss",
    "LinearSoftmaxFocalLoss",
    "chunk_rows",
    "linear_cross_entropy",
    "linear_poly1_cross_entropy",
    "linear_poly_loss",
    "linear_softmax_focal_loss",
]


def linear_poly_loss(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    epsilon: float | Sequence[float] = 1.0,
    gamma: float = 0.0,
    alpha: Sequence[float] | Tensor | None = None,
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    prior: Sequence[float] | Tensor | None = None,
    tau: float = 1.0,
    margin: Sequence[float] | Tensor | None = None,
    logit_scale: float = 1.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    process_group: object | None = None,
    grad_input: str = "all_reduce",
) -> Tensor:
    r"""PolyLoss of a linear layer's output, fused and chunked (see the module docstring).

    Exactly ``poly_loss(z, target, epsilon=..., gamma=..., ...)`` with ``z = F.linear(input, linear_weight,
    linear_bias)``, or ``z = softcap * tanh(F.linear(...) / softcap)`` when ``softcap`` is given, for every
    softmax-family option of :func:`polyfocal.poly_loss` (same defaults: ``epsilon=1`` is Poly-1).

    Args:
        input: ``(..., in_features)`` hidden states (``(in_features,)`` for one row, with a 0-D target).
        linear_weight: ``(num_classes, in_features)``, the input's dtype and device.
        target: class indices of shape ``input.shape[:-1]`` (integer; soft targets are refused).
        linear_bias: ``None`` or ``(num_classes,)``.
        softcap: ``None`` or ``c > 0``: the logits are ``c * tanh(z / c)`` before the loss (Gemma-2).
        chunk_size: rows per chunk; ``None``: from the workspace budget (see the module docstring).
        process_group: ``None``, or a ``torch.distributed`` process group over which ``linear_weight``,
            ``linear_bias`` and the per-class options are sharded by classes (class-parallel; see
            :mod:`polyfocal.linear_parallel`).
        grad_input: with ``process_group``: ``"all_reduce"`` (every rank gets the full input gradient) or
            ``"partial"`` (each rank gets its shard's partial sum, for a caller whose own collective reduces it:
            sequence parallelism); see :func:`polyfocal.linear_parallel.sharded_linear_poly_loss`.
        others: as :func:`polyfocal.poly_loss` (softmax).

    Returns:
        The reduced loss (0-D; float32 for bf16/fp16 input), or for ``reduction="none"`` the losses of shape
        ``input.shape[:-1]``.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> h, w, y = torch.randn(6, 4), torch.randn(10, 4), torch.randint(0, 10, (6,))
        >>> fused = polyfocal.linear_poly_loss(h, w, y, gamma=2.0, epsilon=1.0, softcap=3.0, chunk_size=4)
        >>> plain = polyfocal.poly_loss(3.0 * torch.tanh(F.linear(h, w) / 3.0), y, gamma=2.0, epsilon=1.0)
        >>> torch.allclose(fused, plain)
        True
    """
    options = locals()
    if process_group is not None:
        return sharded_linear_poly_loss(**options)
    if grad_input != "all_reduce":
        raise ValueError(f"expected grad_input='all_reduce' without a process_group, got {grad_input!r}")
    del options["process_group"], options["grad_input"]
    return fused_linear_loss(**options)


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    process_group: object | None = None,
) -> Tensor:
    """Fused linear + cross-entropy with the argument names and results of torch 2.13's
    ``F.linear_cross_entropy`` (class-index targets; ``ignore_index=None`` means -100, as there), plus ``softcap``,
    ``z_loss`` and ``chunk_size``.  See :func:`linear_poly_loss`."""
    return linear_poly_loss(
        input, linear_weight, target, linear_bias=linear_bias, epsilon=0.0, weight=weight, reduction=reduction,
        ignore_index=-100 if ignore_index is None else ignore_index, label_smoothing=label_smoothing,
        softcap=softcap, z_loss=z_loss, chunk_size=chunk_size, process_group=process_group,
    )  # fmt: skip


def linear_softmax_focal_loss(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    gamma: float = 2.0,
    alpha: Sequence[float] | Tensor | None = None,
    epsilon: float | Sequence[float] = 0.0,
    **kwargs,
) -> Tensor:
    """Fused linear + softmax focal loss (``gamma=2``, no polynomial term by default); the other keywords are
    :func:`linear_poly_loss`'s."""
    return linear_poly_loss(input, linear_weight, target, linear_bias=linear_bias, gamma=gamma, alpha=alpha,
                            epsilon=epsilon, **kwargs)  # fmt: skip


def linear_poly1_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    epsilon: float = 1.0,
    **kwargs,
) -> Tensor:
    """Fused linear + Poly-1 cross-entropy (``gamma=0``, one ``epsilon``); the other keywords are
    :func:`linear_poly_loss`'s."""
    if "gamma" in kwargs:
        raise TypeError("expected no gamma for linear_poly1_cross_entropy (it is gamma=0), got one")
    if _real(epsilon, "epsilon") is None:
        raise TypeError(f"expected epsilon to be a real number, got {_describe(epsilon)}")
    return linear_poly_loss(input, linear_weight, target, linear_bias=linear_bias, epsilon=epsilon, **kwargs)


# --------------------------------------------------------------------------------------------------- modules


_NOT_HYPER = frozenset((*_TENSORS, "softcap", "chunk_size", "process_group", "grad_input"))


class LinearPolyLoss(torch.nn.Module):
    """Module form of :func:`linear_poly_loss`: the options at construction, ``forward(input, linear_weight,
    target, linear_bias=None)``.  Per-class tensors (``alpha``, ``weight``, ``prior``, ``margin``) are buffers
    (they follow ``.to(device)``).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> head = torch.nn.Linear(4, 10)
        >>> criterion = polyfocal.LinearPolyLoss(gamma=2.0, epsilon=1.0)
        >>> loss = criterion(torch.randn(6, 4), head.weight, torch.randint(0, 10, (6,)), head.bias)
        >>> loss.backward()
    """

    _function = staticmethod(linear_poly_loss)

    def __init__(self, **options) -> None:
        super().__init__()
        self._options = {}
        for key, value in options.items():
            if key in _TENSORS and isinstance(value, Tensor):
                self.register_buffer(f"_{key}", value)
            else:
                self._options[key] = value
        # the scalar options are checked now; the per-class tensors against the class count at the first call
        hyper(**{k: v for k, v in self._options.items() if k not in _NOT_HYPER})
        if "softcap" in self._options:
            check_softcap(self._options["softcap"])
        if "chunk_size" in self._options:
            _check_chunk_size(self._options["chunk_size"])
        if self._options.get("process_group") is not None:
            _check_group(self._options["process_group"], initialised=False)  # the type now, the group at the call

    def forward(self, input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None = None):
        kwargs = dict(self._options)
        for key in _TENSORS:
            buffer = getattr(self, f"_{key}", None)
            if buffer is not None:
                kwargs[key] = buffer
        return self._function(input, linear_weight, target, linear_bias=linear_bias, **kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items())


class LinearCrossEntropyLoss(LinearPolyLoss):
    """Module form of :func:`linear_cross_entropy`."""

    _function = staticmethod(linear_cross_entropy)


class LinearSoftmaxFocalLoss(LinearPolyLoss):
    """Module form of :func:`linear_softmax_focal_loss` (``gamma=2`` by default)."""

    _function = staticmethod(linear_softmax_focal_loss)


class LinearPoly1CrossEntropyLoss(LinearPolyLoss):
    """Module form of :func:`linear_poly1_cross_entropy`."""

    _function = staticmethod(linear_poly1_cross_entropy)
