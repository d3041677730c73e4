"""Fused forward+backward kernels for the PolyLoss family, registered as ``torch.library`` custom ops.

Layers (Liger-Kernel style): kernel (:mod:`._torch_impl` for every device, :mod:`._triton_impl` for
CUDA) -> custom op with autograd (this module) -> :mod:`polyfocal.functional` -> :mod:`polyfocal.modules`.

* ``polyfocal::softmax_poly`` -- softmax family with class-index targets (every ``alpha``, ``weight``,
  ``ignore_index``, ``label_smoothing``, ``gamma``, ``epsilon``, ``normalizer`` and ``reduction``).
* ``polyfocal::sigmoid_poly`` -- sigmoid family with dense (soft or 0/1) or class-index targets.

Each op returns the reduced loss *and*, when the input requires grad, the input gradient for
``grad_output = 1``, computed in the same pass.  The backward multiplies that buffer by ``grad_output`` in
place (skipping the pass when it is exactly 1: a free host check on CPU, a device-side branch in the
Triton kernel on CUDA) and hands it to autograd: the only logits-sized memory is the gradient itself.
Softmax probability targets and the clcarwin shim's detached modulator keep the composite path in
:mod:`polyfocal._core`.

Backward through the same graph a second time (``retain_graph=True``) recomputes the gradient; double
backward (``create_graph=True``) differentiates the composite implementation instead, so
``torch.autograd.gradgradcheck`` works.  The ops have fake (meta) kernels, so the losses trace into
``torch.compile(..., fullgraph=True)`` graphs as single nodes.

The backend is chosen per call: CUDA tensors use Triton when it is importable, CPU tensors the native C
kernels where they build and cover the call, everything else the torch implementation.  :func:`backend`
overrides the choice (tests run the Triton kernels on CPU through
``TRITON_INTERPRET=1``; benchmarks compare against ``"composite"``).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from .._validation import compute_dtype
from . import _native, _torch_impl
from ._torch_impl import NO_IGNORE

__all__ = [
    "NO_IGNORE",
    "Backend",
    "backend",
    "checks_indices_on_device",
    "current_backend",
    "sigmoid_poly",
    "softmax_poly",
    "triton_available",
]

Backend = Literal["auto", "native", "torch", "triton", "composite"]
_BACKENDS = ("auto", "native", "torch", "triton", "composite")
_state = {"backend": "auto"}
_triton_module: list[ModuleType | None] = []


def current_backend() -> str:
    return _state["backend"]


@contextlib.contextmanager
def backend(name: Backend) -> Iterator[None]:
    """Force an implementation inside the ``with`` block (process-wide; not thread-safe).

    ``"auto"`` (default): Triton for CUDA tensors when importable, the native C kernels for CPU tensors when they
    build (float32; other dtypes and layouts fall back to torch), else torch; ``"native"``: the C kernels (CPU
    only); ``"torch"``: the torch implementation on every device; ``"triton"``: Triton on every device (CPU
    needs ``TRITON_INTERPRET=1``);
    ``"composite"``: no fused kernel, the eager autograd formulas of :mod:`polyfocal._core`.
    """
    if name not in _BACKENDS:
        raise ValueError(f"expected backend in {_BACKENDS}, got {name!r}")
    previous = _state["backend"]
    _state["backend"] = name
    try:
        yield
    finally:
        _state["backend"] = previous


def triton_available() -> bool:
    """Whether :mod:`polyfocal.kernels._triton_impl` imports (Triton installed)."""
    if not _triton_module:
        try:
            _triton_module.append(importlib.import_module("._triton_impl", __name__))
        except ImportError:
            _triton_module.append(None)
    return _triton_module[0] is not None


def checks_indices_on_device(x: Tensor) -> bool:
    """Whether the fused kernel for ``x`` validates class indices itself (the Triton kernels on CUDA do, with a
    device-side assertion in their preparation launch), so the caller can skip its own range check.

    Only the class-index paths reach the kernels with indices; probability targets have no range to check."""
    return _uses_triton(x)


def _impl(x: Tensor) -> ModuleType:
    name = _state["backend"]
    if name == "triton" or (name == "auto" and x.is_cuda and triton_available()):
        if not triton_available():
            raise RuntimeError("expected Triton to be importable for backend 'triton', got an ImportError")
        return _triton_module[0]  # type: ignore[return-value]
    if name == "native" or (name == "auto" and x.device.type == "cpu" and _native.available()):
        if not _native.available():
            raise RuntimeError("expected the native CPU kernels to build for backend 'native', got no library")
        return _native  # the ops fall back to torch for what it does not cover (_native.supports)
    return _torch_impl


def _uses_triton(x: Tensor) -> bool:
    """Whether calls on the CUDA tensor ``x`` run the Triton kernels."""
    return x.is_cuda and triton_available() and _impl(x) is _triton_module[0]


def _cpu_fallback(impl: ModuleType, x: Tensor, is_index: bool, epsilon: list[float], softmax: bool) -> ModuleType:
    return _torch_impl if impl is _native and not _native.supports(x, is_index, epsilon, softmax) else impl


# --------------------------------------------------------------------------------------------- ops


@torch.library.custom_op("polyfocal::softmax_poly", mutates_args=())
def softmax_poly(
    x: Tensor,
    target: Tensor,
    alpha: Tensor | None,
    weight: Tensor | None,
    normalizer: Tensor | None,
    epsilon: list[float],
    gamma: float,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Softmax PolyLoss of ``x`` ``(N, C, *)`` for class indices ``target`` ``(N, *)`` (int64), and the
    gradient for ``grad_output = 1`` when ``compute_grad`` (else an empty tensor).  ``alpha``/``weight``
    are ``(C,)`` in the compute dtype, ``normalizer`` is ``None`` or of the target's shape; ``ignore_index``
    is :data:`NO_IGNORE` for none."""
    impl = _cpu_fallback(_impl(x), x, True, epsilon, softmax=True)
    return impl.softmax_forward(
        x, target, alpha, weight, normalizer, epsilon, gamma, ignore_index, label_smoothing, reduction, compute_grad
    )


@torch.library.custom_op("polyfocal::sigmoid_poly", mutates_args=())
def sigmoid_poly(
    x: Tensor,
    target: Tensor,
    is_index: bool,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    normalizer: Tensor | None,
    alpha: float | None,
    epsilon: list[float],
    gamma: float,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Sigmoid PolyLoss of ``x`` (at least 1-D) for dense targets of ``x``'s shape or, with ``is_index``,
    class indices ``(N, *)`` (index ``C`` = background), and its gradient as in :func:`softmax_poly`.
    ``weight``, ``pos_weight`` and ``normalizer`` are ``None`` or of ``x``'s shape (broadcast views)."""
    impl = _cpu_fallback(_impl(x), x, is_index, epsilon, softmax=False)
    return impl.sigmoid_forward(
        x,
        target,
        is_index,
        weight,
        pos_weight,
        normalizer,
        alpha,
        epsilon,
        gamma,
        ignore_index,
        label_smoothing,
        reduction,
        compute_grad,
    )


def _fake_outputs(x: Tensor, loss_shape, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    loss = x.new_empty(loss_shape if reduction == "none" else (), dtype=compute_dtype(x))
    return loss, (torch.empty_like(x) if compute_grad else x.new_empty(0))


@softmax_poly.register_fake
def _(x, target, alpha, weight, normalizer, epsilon, gamma, ignore_index, label_smoothing, reduction, compute_grad):
    return _fake_outputs(x, target.shape, reduction, compute_grad)


@sigmoid_poly.register_fake
def _(x, target, is_index, weight, pos_weight, normalizer, alpha, epsilon, gamma, ignore_index, ls, reduction, cg):
    return _fake_outputs(x, x.shape, reduction, cg)


# ---------------------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output) -> None:
    _, grad = output
    ctx.inputs = inputs[1:]  # everything but x: targets, class vectors and hyperparameters
    ctx.save_for_backward(inputs[0])
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # else autograd allocates a logits-sized zero "gradient" for the buffer output
    # Not a saved tensor: the backward drops this reference before handing the buffer to autograd, so that
    # AccumulateGrad can adopt it as x.grad instead of copying it (it copies a gradient that is still shared).
    ctx.grad_buffer = grad if grad.numel() == inputs[0].numel() else None


def _softmax_grad(ctx, x: Tensor) -> Tensor:
    (target, alpha, weight, normalizer, eps, gamma, ignore, ls, reduction, _) = ctx.inputs
    return softmax_poly(x, target, alpha, weight, normalizer, eps, gamma, ignore, ls, reduction, True)[1]


def _sigmoid_grad(ctx, x: Tensor) -> Tensor:
    (target, is_index, weight, pos_weight, normalizer, alpha, eps, gamma, ignore, ls, reduction, _) = ctx.inputs
    return sigmoid_poly(
        x, target, is_index, weight, pos_weight, normalizer, alpha, eps, gamma, ignore, ls, reduction, True
    )[1]


def _composite_loss(ctx, x: Tensor, activation: str) -> Tensor:
    """The same loss through :mod:`polyfocal._core` (autograd formulas), for double backward."""
    from .. import functional

    if activation == "softmax":
        (target, alpha, weight, normalizer, eps, gamma, ignore, ls, reduction, _) = ctx.inputs
        pos_weight = None
    else:
        (target, _, weight, pos_weight, normalizer, alpha, eps, gamma, ignore, ls, reduction, _) = ctx.inputs
    with backend("composite"):
        return functional._poly_loss(
            x,
            target,
            activation=activation,
            epsilon=tuple(eps),
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=None if ignore == NO_IGNORE else ignore,
            label_smoothing=ls,
            normalizer=normalizer,
            reduction=reduction,
        )


def _scale_by_grad_output(grad: Tensor, grad_loss: Tensor, reduction: str, expand_class_dim: bool) -> Tensor:
    """``grad *= grad_output`` in place (the buffer is ours to hand out), skipping the pass when it is 1.

    The host read of ``grad_output`` is limited to real CPU tensors: tracing (fake/functional tensors under
    ``torch.compile``) always multiplies."""
    if reduction == "none":
        return grad.mul_(grad_loss.unsqueeze(1) if expand_class_dim else grad_loss)
    if _uses_triton(grad):
        return _triton_module[0].scale_unless_one_(grad, grad_loss)  # type: ignore[union-attr]
    if grad.device.type == "cpu" and type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling():
        return grad if float(grad_loss) == 1.0 else grad.mul_(grad_loss)  # a host read is free on CPU
    return grad.mul_(grad_loss)


def _make_backward(activation: str):
    recompute = _softmax_grad if activation == "softmax" else _sigmoid_grad
    num_inputs = 11 if activation == "softmax" else 13

    def backward(ctx, grad_loss: Tensor | None, _unused: Tensor | None):
        if grad_loss is None:  # no gradient reached the loss (grads are not materialised as zeros)
            return (None,) * num_inputs
        (x,) = ctx.saved_tensors
        reduction = ctx.inputs[-2]
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composite formulas instead
            with torch.enable_grad():
                loss = _composite_loss(ctx, x, activation)
            (dx,) = torch.autograd.grad(loss, x, grad_loss, create_graph=True)
            return (dx,) + (None,) * (num_inputs - 1)
        grad, ctx.grad_buffer = ctx.grad_buffer, None  # handed out once; a second backward (retain_graph) ...
        if grad is None:  # ... or a forward without grad recomputes it
            grad = recompute(ctx, x.detach())
        grad = _scale_by_grad_output(grad, grad_loss, reduction, expand_class_dim=activation == "softmax")
        return (grad,) + (None,) * (num_inputs - 1)

    return backward


softmax_poly.register_autograd(_make_backward("softmax"), setup_context=_setup_context)
sigmoid_poly.register_autograd(_make_backward("sigmoid"), setup_context=_setup_context)
