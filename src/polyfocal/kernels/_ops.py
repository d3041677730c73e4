"""The ``torch.library`` custom ops: how the fused kernels appear inside ``torch.compile`` graphs.

Eager calls do not come here (:func:`polyfocal.kernels.loss` calls the backend through an ``autograd.Function``,
without custom-op dispatch).  Under tracing each loss is one opaque node with a fake (meta) kernel, so graphs stay
whole (``fullgraph=True``); the op picks its backend when it runs.

The op schema is flat (``torch.library`` takes tensors, numbers and lists); :func:`_softmax_flat` /
:func:`_sigmoid_flat` and :func:`_softmax_args` / :func:`_sigmoid_args` are the one place that converts between
the argument objects and that list.  ``ignore_index`` travels as :data:`NO_IGNORE` for "none".
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._args import SigmoidArgs, SoftmaxArgs
from .._validation import compute_dtype
from ._dispatch import backward_input, forward, select
from ._torch_impl import NO_IGNORE

__all__ = ["loss", "sigmoid_poly", "softmax_poly"]


def _ignore(value: int | None) -> int:
    return NO_IGNORE if value is None else value


def _softmax_flat(args: SoftmaxArgs) -> tuple:
    return (args.class_weight, args.weight, args.normalizer, list(args.epsilon), args.gamma,
            _ignore(args.ignore_index), args.label_smoothing, args.reduction, args.bias, args.margin,
            args.logit_scale, args.z_loss)  # fmt: skip


def _softmax_args(class_weight, weight, normalizer, epsilon, gamma, ignore_index, ls, reduction, bias=None,
                  margin=None, logit_scale=1.0, z_loss=0.0) -> SoftmaxArgs:  # fmt: skip
    return SoftmaxArgs(class_weight=class_weight, weight=weight, normalizer=normalizer, epsilon=tuple(epsilon),
                       gamma=gamma, ignore_index=None if ignore_index == NO_IGNORE else ignore_index,
                       label_smoothing=ls, reduction=reduction, bias=bias, margin=margin, logit_scale=logit_scale,
                       z_loss=z_loss)  # fmt: skip


def _sigmoid_flat(args: SigmoidArgs) -> tuple:
    return (args.is_index, args.weight, args.pos_weight, args.normalizer, args.alpha, list(args.epsilon),
            args.gamma, _ignore(args.ignore_index), args.label_smoothing, args.reduction,
            args.gamma_neg, args.clip, args.variant, args.iou_weighted, args.score)  # fmt: skip


def _sigmoid_args(is_index, weight, pos_weight, normalizer, alpha, epsilon, gamma, ignore_index, ls, reduction,
                  gamma_neg=None, clip=0.0, variant="poly", iou_weighted=True, score=None):  # fmt: skip
    return SigmoidArgs(is_index=is_index, alpha=alpha, weight=weight, pos_weight=pos_weight, normalizer=normalizer,
                       epsilon=tuple(epsilon), gamma=gamma,
                       ignore_index=None if ignore_index == NO_IGNORE else ignore_index, label_smoothing=ls,
                       reduction=reduction, gamma_neg=gamma_neg, clip=clip, variant=variant,
                       iou_weighted=iou_weighted, score=score)  # fmt: skip


@torch.library.custom_op("polyfocal::softmax_poly", mutates_args=())
def softmax_poly(
    x: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    weight: Tensor | None,
    normalizer: Tensor | None,
    epsilon: list[float],
    gamma: float,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
    bias: Tensor | None = None,
    margin: Tensor | None = None,
    logit_scale: float = 1.0,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Softmax PolyLoss (class indices) and, when ``compute_grad``, its input gradient (else an empty tensor).
    The long-tail arguments (``bias = tau log prior``, ``margin``, ``logit_scale``, ``z_loss``) come last, with
    defaults that switch them off."""
    args = _softmax_args(class_weight, weight, normalizer, epsilon, gamma, ignore_index, label_smoothing, reduction,
                         bias, margin, logit_scale, z_loss)  # fmt: skip
    out, grad = forward(select(x, target, args), x, target, args, compute_grad)
    return out, grad if compute_grad else x.new_empty(0)


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
    gamma_neg: float | None = None,
    clip: float = 0.0,
    variant: str = "poly",
    iou_weighted: bool = True,
    score: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Sigmoid PolyLoss (dense or class-index targets) and its input gradient as in :func:`softmax_poly`."""
    args = _sigmoid_args(
        is_index, weight, pos_weight, normalizer, alpha, epsilon, gamma, ignore_index, label_smoothing, reduction,
        gamma_neg, clip, variant, iou_weighted, score,
    )  # fmt: skip
    out, grad = forward(select(x, target, args), x, target, args, compute_grad)
    return out, grad if compute_grad else x.new_empty(0)


def _fake(x: Tensor, loss_shape, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    out = x.new_empty(loss_shape if reduction == "none" else (), dtype=compute_dtype(x))
    return out, (torch.empty_like(x) if compute_grad else x.new_empty(0))


@softmax_poly.register_fake
def _(x, target, class_weight, weight, normalizer, epsilon, gamma, ignore_index, ls, reduction, compute_grad,
      bias=None, margin=None, logit_scale=1.0, z_loss=0.0):  # fmt: skip
    return _fake(x, target.shape, reduction, compute_grad)


@sigmoid_poly.register_fake
def _(x, target, is_index, weight, pos_weight, normalizer, alpha, epsilon, gamma, ignore_index, ls, reduction, cg,
      gamma_neg=None, clip=0.0, variant="poly", iou_weighted=True, score=None):  # fmt: skip
    return _fake(x, x.shape, reduction, cg)


def _setup_context(ctx, inputs, output) -> None:
    _, grad = output
    ctx.target, ctx.flat = inputs[1], inputs[2:-1]
    ctx.save_for_backward(inputs[0])
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # else autograd allocates a logits-sized zero "gradient" for the buffer output
    ctx.grad_buffer = grad if grad.numel() == inputs[0].numel() else None  # see kernels._Fused


def _softmax_setup_context(ctx, inputs, output) -> None:
    """As :func:`_setup_context` for the inputs up to ``compute_grad``; the long-tail arguments after it are
    appended to ``ctx.flat`` (the order of :func:`_softmax_args`)."""
    _setup_context(ctx, inputs[:11], output)
    ctx.flat = (*ctx.flat, *inputs[11:])


def _make_backward(to_args, num_inputs: int):
    def backward(ctx, grad_loss: Tensor | None, _unused: Tensor | None):
        if grad_loss is None:
            return (None,) * num_inputs
        (x,) = ctx.saved_tensors
        args = to_args(*ctx.flat)
        grad, ctx.grad_buffer = ctx.grad_buffer, None
        name = select(x, ctx.target, args)
        return (backward_input(x, ctx.target, args, name, grad, grad_loss),) + (None,) * (num_inputs - 1)

    return backward


softmax_poly.register_autograd(_make_backward(_softmax_args, 15), setup_context=_softmax_setup_context)


def _sigmoid_setup_context(ctx, inputs, output) -> None:
    """As :func:`_setup_context`; the detection arguments follow ``compute_grad`` (index 12) in this schema."""
    _setup_context(ctx, inputs[:13], output)
    ctx.flat = tuple(inputs[2:12]) + tuple(inputs[13:])


sigmoid_poly.register_autograd(_make_backward(_sigmoid_args, 18), setup_context=_sigmoid_setup_context)


def loss(x: Tensor, target: Tensor, args: SoftmaxArgs | SigmoidArgs, compute_grad: bool) -> Tensor:
    if isinstance(args, SoftmaxArgs):
        flat = _softmax_flat(args)
        return softmax_poly(x, target, *flat[:8], compute_grad, *flat[8:])[0]
    flat = _sigmoid_flat(args)
    return sigmoid_poly(x, target, *flat[:10], compute_grad, *flat[10:])[0]
