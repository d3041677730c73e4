"""Fused forward+backward for the PolyLoss family: one pass writes the loss and the input gradient.

Layers (Liger-Kernel style): kernel (a backend module) -> :func:`loss` (eager: an ``autograd.Function`` that
calls the backend directly; under ``torch.compile``: the ``torch.library`` ops of :mod:`._ops`) ->
:mod:`polyfocal.functional` -> :mod:`polyfocal.modules`.

**Backends** implement :class:`KernelBackend`: ``softmax(x, target, args, compute_grad)`` and ``sigmoid(...)``
return ``(loss, grad)`` -- the reduced loss (or the element losses for ``"none"``) and, when ``compute_grad``,
the input gradient for ``grad_output = 1`` in ``x``'s dtype -- and ``supports(x, target, args)`` says whether
they cover a call.  Every backend checks class indices itself.  The table :data:`BACKENDS`:

============  ============================================  =============================================
name          covers                                        module
============  ============================================  =============================================
``triton``    CUDA tensors (any device when forced, CPU      :mod:`._triton_impl`
              through ``TRITON_INTERPRET=1``)
``native``    CPU, what :func:`._native.supports` says       :mod:`._native` (C, compiled on first use)
``torch``     every device, dtype and layout                 :mod:`._torch_impl`
============  ============================================  =============================================

``"auto"`` takes the first of triton, native, torch that is available and supports the call.  ``composite``
(:mod:`polyfocal._core`, eager autograd formulas) is used for what the fused kernels do not compute: softmax
probability targets, gradients for other arguments (soft targets, alpha, weight, pos_weight, normalizer),
functorch transforms, the detached modulator of the clcarwin listing, and double backward.  Under
``torch.compile`` the graph holds the fused custom op, which reads the backend when it runs (dynamo cannot trace
a ``ContextVar``): there a forced ``"composite"`` runs the torch-ops kernel.

**Autograd contract.** The backward hands the gradient buffer to autograd (scaled in place when
``grad_output != 1``; no pass when it is 1), so the only logits-sized memory is the gradient itself.  A second
backward (``retain_graph=True``) recomputes it; double backward (``create_graph=True``) differentiates the
composite formulas with the same validated arguments.

**Adding a backend**: write a module with ``softmax``, ``sigmoid`` and ``supports`` (same contract as
:mod:`._torch_impl`; check the index range in the kernel), add a :class:`BackendSpec` to :data:`BACKENDS` and
its name to :data:`AUTO_ORDER` where ``"auto"`` should try it, and run ``tests/test_kernels.py`` (its
``BACKENDS`` list) and ``tests/test_correctness.py`` on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._args import NO_IGNORE, Args
from . import _ops
from ._dispatch import (
    AUTO_ORDER,
    BACKENDS,
    Backend,
    BackendSpec,
    KernelBackend,
    backend,
    check_inplace,
    composite,
    current_backend,
    fused,
    loss_inplace,
    needs_composite,
    select,
    triton_available,
)
from ._ops import poly_op

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "NO_IGNORE",
    "Backend",
    "BackendSpec",
    "KernelBackend",
    "backend",
    "check_inplace",
    "current_backend",
    "loss",
    "loss_inplace",
    "poly_op",
    "select",
    "triton_available",
]


def loss(x: Tensor, target: Tensor, args: Args) -> Tensor:
    """The loss of one validated call (:class:`polyfocal._args.Call`), its gradient wired into autograd: eager
    calls go through an ``autograd.Function`` straight to the backend, traced calls through the custom ops."""
    if needs_composite(x, target, args):
        return composite(x, target, args)
    compute_grad = x.requires_grad and torch.is_grad_enabled()
    if torch.compiler.is_compiling():
        return _ops.loss(x, target, args, compute_grad)
    return fused(x, target, args, compute_grad)
