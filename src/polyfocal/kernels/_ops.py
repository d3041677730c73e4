"""The ``torch.library`` custom op: how the fused kernels appear inside ``torch.compile`` graphs.

Eager calls do not come here (:func:`polyfocal.kernels.loss` calls the backend through an ``autograd.Function``,
without custom-op dispatch).  Under tracing each loss is one opaque node with a fake (meta) kernel, so graphs stay
whole (``fullgraph=True``); the op picks its backend when it runs.

The op schema is ``(x, target, compute_grad, *fields)`` with the fields of :class:`polyfocal._args.Args` in
order (:data:`polyfocal._args.SCHEMA`), converted by :func:`polyfocal._args.flatten` / ``unflatten``: a new field
of the argument object is a new op argument without any change here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._args import SCHEMA, Args, flatten, unflatten
from .._validation import compute_dtype
from ._dispatch import backward_input, forward, select

__all__ = ["loss", "poly_op"]


def _poly(x: Tensor, target: Tensor, compute_grad: bool, *flat: object) -> tuple[Tensor, Tensor]:
    """The PolyLoss of ``unflatten(flat)`` and, when ``compute_grad``, its input gradient (else an empty tensor)."""
    args = unflatten(flat)
    out, grad = forward(select(x, target, args), x, target, args, compute_grad)
    return out, grad if compute_grad else x.new_empty(0)


poly_op = torch.library.custom_op(
    "polyfocal::poly_loss", _poly, mutates_args=(), schema=f"(Tensor x, Tensor target, bool compute_grad, {SCHEMA}) "
    "-> (Tensor, Tensor)"
)  # fmt: skip


@poly_op.register_fake
def _(x: Tensor, target: Tensor, compute_grad: bool, *flat: object) -> tuple[Tensor, Tensor]:
    args = unflatten(flat)
    loss_shape = (target.shape if args.softmax else x.shape) if args.reduction == "none" else ()
    return x.new_empty(loss_shape, dtype=compute_dtype(x)), (torch.empty_like(x) if compute_grad else x.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    _, grad = output
    ctx.target, ctx.flat = inputs[1], inputs[3:]
    ctx.save_for_backward(inputs[0])
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # else autograd allocates a logits-sized zero "gradient" for the buffer output
    ctx.grad_buffer = grad if grad.numel() == inputs[0].numel() else None  # see kernels._Fused


def _backward(ctx, grad_loss: Tensor | None, _unused: Tensor | None):
    nothing = (None,) * (2 + len(ctx.flat))
    if grad_loss is None:
        return (None, *nothing)
    (x,) = ctx.saved_tensors
    grad, ctx.grad_buffer = ctx.grad_buffer, None
    return (backward_input(x, ctx.target, unflatten(ctx.flat), grad, grad_loss), *nothing)


poly_op.register_autograd(_backward, setup_context=_setup_context)


def loss(x: Tensor, target: Tensor, args: Args, compute_grad: bool) -> Tensor:
    return poly_op(x, target, compute_grad, *flatten(args))[0]
