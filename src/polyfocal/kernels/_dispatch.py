"""Backend table, selection and the eager autograd path (see :mod:`polyfocal.kernels`)."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Literal, Protocol

import torch
from torch import Tensor

from .. import _core
from .._args import Args
from . import _native, _torch_impl

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "KernelBackend",
    "backend",
    "backward_input",
    "check_inplace",
    "composite",
    "current_backend",
    "fused",
    "loss_inplace",
    "needs_composite",
    "select",
    "triton_available",
]

Backend = Literal["auto", "native", "torch", "triton", "composite"]


class KernelBackend(Protocol):
    """What a backend module provides (see the module docstring).  Optional capability: a module attribute
    ``WRITES_INTO = True`` says ``softmax`` / ``sigmoid`` also take ``grad_into=x`` and write the gradient over
    the logits (``inplace=True`` without a buffer); without it the gradient is computed and copied over."""

    def softmax(self, x: Tensor, target: Tensor, args: Args, compute_grad: bool) -> tuple[Tensor, Tensor]: ...

    def sigmoid(self, x: Tensor, target: Tensor, args: Args, compute_grad: bool) -> tuple[Tensor, Tensor]: ...

    def supports(self, x: Tensor, target: Tensor, args: Args) -> bool: ...


@dataclass(frozen=True)
class BackendSpec:
    """One row of the backend table.  ``module`` is imported lazily (Triton is optional)."""

    name: str
    available: Callable[[], bool]
    supports: Callable[[Tensor, Tensor, Args], bool]
    module: Callable[[], KernelBackend]
    partial: bool = False  # forcing it falls back to torch ops for the calls it does not support


_triton_module: list[ModuleType | None] = []


def triton_available() -> bool:
    """Whether :mod:`polyfocal.kernels._triton_impl` imports (Triton installed)."""
    if not _triton_module:
        try:
            _triton_module.append(importlib.import_module("._triton_impl", __package__))
        except ImportError:
            _triton_module.append(None)
    return _triton_module[0] is not None


BACKENDS: dict[str, BackendSpec] = {
    "triton": BackendSpec(
        "triton",
        triton_available,
        lambda x, target, args: x.is_cuda and triton_available() and _triton_module[0].supports(x, target, args),  # type: ignore[union-attr]
        lambda: _triton_module[0],  # type: ignore[return-value]
    ),
    "native": BackendSpec("native", _native.available, _native.supports, lambda: _native, partial=True),  # type: ignore[return-value]
    "torch": BackendSpec("torch", lambda: True, _torch_impl.supports, lambda: _torch_impl),  # type: ignore[return-value]
}
# A static order, by measurement (issue 19 item 4): the native kernels took 0.02-0.91x the torch-ops path's time in
# every benchmark-matrix cell at AVX2 and AVX-512, 1 and 2 threads, so "auto" needs no per-machine calibration.
AUTO_ORDER = ("triton", "native", "torch")
_NAMES = ("auto", "composite", *BACKENDS)
_current: contextvars.ContextVar[str] = contextvars.ContextVar("polyfocal_backend", default="auto")


def current_backend() -> str:
    return _current.get()


@contextlib.contextmanager
def backend(name: Backend) -> Iterator[None]:
    """Force an implementation inside the ``with`` block (a context variable: per thread and per task).

    ``"auto"`` (default): see :data:`AUTO_ORDER`; ``"native"``: the C kernels where they cover the call, else
    torch (CPU only); ``"torch"``: the torch implementation on every device; ``"triton"``: Triton on every device
    (CPU needs ``TRITON_INTERPRET=1``); ``"composite"``: no fused kernel, the eager formulas of ``_core``.
    """
    if name not in _NAMES:
        raise ValueError(f"expected backend in {_NAMES}, got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def select(x: Tensor, target: Tensor, args: Args) -> str:
    """The backend that runs this call: ``"composite"`` or a key of :data:`BACKENDS` (decided once per call)."""
    name = _current.get()
    if name == "composite":  # only reached inside the custom ops (torch.compile): their fused torch-ops kernel
        return "torch"
    if name == "auto":
        for candidate in AUTO_ORDER:
            spec = BACKENDS[candidate]
            if spec.supports(x, target, args) and spec.available():  # supports first: cheap device/dtype tests
                return candidate
        return "torch"
    spec = BACKENDS[name]
    if not spec.available():
        raise RuntimeError(f"expected backend {name!r} to be available (importable / built), got none")
    if spec.partial and not spec.supports(x, target, args):
        return "torch"  # a backend covering a subset: forcing it means "there where it can"
    return name


def forward(name: str, x: Tensor, target: Tensor, args: Args, compute_grad: bool) -> tuple[Tensor, Tensor]:
    impl = BACKENDS[name].module()
    return (impl.softmax if args.softmax else impl.sigmoid)(x, target, args, compute_grad)


def forward_inplace(name: str, x: Tensor, target: Tensor, args: Args) -> tuple[Tensor, Tensor]:
    """The loss, with the gradient written over ``x``'s storage: directly by a backend that can (``WRITES_INTO``,
    no buffer), elsewhere into the backend's buffer and then copied over ``x``.  Returns ``(loss, x)``."""
    impl = BACKENDS[name].module()
    if getattr(impl, "WRITES_INTO", False):
        out, grad = (impl.softmax if args.softmax else impl.sigmoid)(x, target, args, True, grad_into=x)  # type: ignore[call-arg]
    else:
        out, grad = forward(name, x, target, args, True)
    if grad.data_ptr() != x.data_ptr():
        x.copy_(grad)
    return out, x


_COMPILE_REFUSAL = "expected inplace=False under torch.compile (it is for eager mode), got inplace=True"


def _raise_inplace_refusal() -> None:
    raise ValueError(_COMPILE_REFUSAL)


# Dynamo does not trace this function (a ValueError raised while tracing surfaces as dynamo's "Observed exception",
# with the message deep in its debug context).  With fullgraph=True the refusal is the error's first lines (dynamo
# quotes the reason); without, dynamo breaks the graph here and the function raises the ValueError itself.
try:
    _refuse_inplace_under_compile = torch.compiler.disable(_raise_inplace_refusal, reason=_COMPILE_REFUSAL)
except TypeError:  # torch before 2.7: no reason to quote; the ValueError's own message still shows without fullgraph
    _refuse_inplace_under_compile = torch.compiler.disable(_raise_inplace_refusal)


def check_inplace(input: object, x: Tensor, target: Tensor, args: Args, inplace: object) -> None:
    """Arguments of ``inplace=True``, before any work: what it needs (see :func:`polyfocal.poly_loss`)."""
    if type(inplace) is not bool:
        raise TypeError(f"expected inplace to be True or False, got {inplace!r}")
    if not inplace:
        return
    if torch.compiler.is_compiling():
        _refuse_inplace_under_compile()
    if not (isinstance(input, Tensor) and input.requires_grad and torch.is_grad_enabled()):
        raise ValueError("expected logits that require grad with grad mode on for inplace=True, got none to compute")
    if input.grad_fn is None:
        raise ValueError(
            "expected logits produced by an operation (a non-leaf tensor) for inplace=True, which overwrites them "
            "with their gradient, got a leaf tensor"
        )
    if needs_composite(x, target, args):
        raise ValueError(
            "expected a call the fused kernels compute for inplace=True (class-index or dense sigmoid targets, no "
            "gradient for target / weight / alpha / pos_weight / normalizer, no torch.func transform, no detached "
            "modulator), got one that needs the composite formulas"
        )
    if x.data_ptr() != input.data_ptr() or not (x.is_contiguous() or x.movedim(1, -1).is_contiguous()):
        raise ValueError("expected contiguous (or channels_last) logits for inplace=True, got a strided view")


def composite(x: Tensor, target: Tensor, args: Args) -> Tensor:
    """The loss through the composite autograd formulas of :mod:`polyfocal._core`."""
    return (_core.softmax_loss if args.softmax else _core.sigmoid_loss)(x, target, args)


def needs_composite(x: Tensor, target: Tensor, args: Args) -> bool:
    """Whether this call takes the composite formulas (see the package docstring for the list).  Under tracing
    the backend choice is left to the custom op, which reads it when it runs (dynamo cannot read a ContextVar)."""
    if (
        (not torch.compiler.is_compiling() and _current.get() == "composite")
        or args.detach_modulator
        or (args.softmax and target.dtype.is_floating_point)
    ):
        return True
    if torch._C._functorch.maybe_current_level() is not None:  # torch.func.grad / vmap / jvp
        return True
    if not torch.is_grad_enabled():
        return False
    return target.requires_grad or any(v.requires_grad for v in args.tensors())


def _is_one(grad_loss: Tensor) -> bool:
    """``grad_loss == 1`` for a 0-D CPU tensor, read straight from its memory for float32 (``float()`` on a
    tensor is a dispatcher round trip, a tenth of a small call)."""
    if grad_loss.dtype is torch.float32 and grad_loss.is_contiguous():
        return ctypes.c_float.from_address(grad_loss.data_ptr()).value == 1.0
    return float(grad_loss) == 1.0


def scale_by_grad_output(grad: Tensor, grad_loss: Tensor, args: Args) -> Tensor:
    """``grad *= grad_output`` in place (the buffer is ours to hand out), skipping the pass when it is 1.

    The host read of ``grad_output`` is limited to real CPU tensors; on CUDA with Triton a device-side branch
    skips the pass; tracing always multiplies."""
    if args.reduction == "none":
        return grad.mul_(grad_loss.unsqueeze(1) if args.softmax else grad_loss)
    if grad.is_cuda and triton_available():
        return _triton_module[0].scale_unless_one_(grad, grad_loss)  # type: ignore[union-attr]
    if grad.is_cpu and type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling():
        return grad if _is_one(grad_loss) else grad.mul_(grad_loss)  # a host read is free on CPU
    return grad.mul_(grad_loss)


def backward_input(
    x: Tensor, target: Tensor, args: Args, grad: Tensor | None, grad_loss: Tensor, name: str | None = None
) -> Tensor:
    """The input gradient for ``grad_loss``: the forward's buffer (or a recomputed one, by the backend ``name``
    the forward used, or -- from the custom op, which cannot pass it -- selected again), or, under
    ``create_graph=True``, the double-differentiable composite gradient."""
    if torch.is_grad_enabled():  # create_graph=True: differentiate the composite formulas
        with torch.enable_grad():
            (dx,) = torch.autograd.grad(composite(x, target, args), x, grad_loss, create_graph=True)
        return dx
    if grad is None:  # a second backward (retain_graph) recomputes the buffer handed out by the first
        grad = forward(name or select(x, target, args), x.detach(), target, args, True)[1]
    return scale_by_grad_output(grad, grad_loss, args)


class _Fused(torch.autograd.Function):
    """Eager path: the backend's forward computes the gradient buffer; the backward hands it out.  ``call`` is
    ``(target, args, backend name)`` in one argument (each argument of ``apply`` costs host time)."""

    @staticmethod
    def forward(ctx, x: Tensor, call: tuple[Tensor, Args, str]) -> Tensor:  # type: ignore[override]
        target, args, name = call
        out, grad = forward(name, x, target, args, True)
        ctx.save_for_backward(x)
        ctx.call = call
        ctx.set_materialize_grads(False)
        # Not a saved tensor: the backward drops this reference before handing the buffer to autograd, so that
        # AccumulateGrad can adopt it as x.grad instead of copying it (it copies a gradient that is still shared).
        ctx.grad_buffer = grad
        return out

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None):  # type: ignore[override]
        if grad_loss is None:
            return None, None
        grad, ctx.grad_buffer = ctx.grad_buffer, None  # handed out once
        target, args, name = ctx.call
        if grad is not None and not torch.is_grad_enabled():  # the common case: no saved tensor to unpack
            return scale_by_grad_output(grad, grad_loss, args), None
        (x,) = ctx.saved_tensors
        return backward_input(x, target, args, grad, grad_loss, name), None


class _FusedInplace(torch.autograd.Function):
    """``inplace=True``: the forward writes the gradient over the logits; the backward hands out that storage."""

    @staticmethod
    def forward(ctx, x: Tensor, call: tuple[Tensor, Args, str]) -> Tensor:  # type: ignore[override]
        target, args, name = call
        out, grad = forward_inplace(name, x, target, args)
        torch.autograd.graph.increment_version(x)  # x now holds the gradient: nodes that saved x raise
        ctx.set_materialize_grads(False)
        ctx.args, ctx.grad_buffer = args, grad.detach()
        return out

    @staticmethod
    def backward(ctx, grad_loss: Tensor | None):  # type: ignore[override]
        if grad_loss is None:
            return None, None
        grad, ctx.grad_buffer = ctx.grad_buffer, None
        if grad is None or torch.is_grad_enabled():
            raise RuntimeError(
                "polyfocal: inplace=True overwrote the logits with their gradient: a second backward "
                "(retain_graph=True) or a double backward (create_graph=True) cannot recompute it; use inplace=False"
            )
        return scale_by_grad_output(grad, grad_loss, ctx.args), None


def loss_inplace(x: Tensor, target: Tensor, args: Args) -> Tensor:
    """Eager fused call with ``inplace=True`` (checked by :func:`check_inplace`)."""
    return _FusedInplace.apply(x, (target, args, select(x, target, args)))


# autograd.Function's C-level apply: the Python wrapper (Function.apply) only binds default arguments of a
# setup_context (there is none) and unwraps functorch tensors (a transform takes the composite path instead)
_fused_apply = super(torch.autograd.Function, _Fused).apply  # type: ignore[misc]


def fused(x: Tensor, target: Tensor, args: Args, compute_grad: bool) -> Tensor:
    """Eager fused call: no custom-op dispatch."""
    name = select(x, target, args)
    if not compute_grad:
        return forward(name, x, target, args, False)[0]
    if torch._C._are_functorch_transforms_active():
        return _Fused.apply(x, (target, args, name))
    return _fused_apply(x, (target, args, name))
