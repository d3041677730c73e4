"""The single-process machinery of the fused linear + loss (:mod:`polyfocal.linear` has the public API and the
design notes): the checks, the chunk sizing, the chunk loop, its autograd node and ``torch.compile`` custom ops.
:mod:`polyfocal.linear_parallel` builds its class-parallel form on these pieces."""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import Tensor

from ._args import SCHEMA, Args, Call, flatten, hyper, prepare, unflatten
from ._params import _describe, check_softcap
from ._validation import check_index_range, compute_dtype
from .kernels import _dispatch

MIN_CHUNK_BYTES = 32 << 20
"""The smallest default workspace of one chunk's logits buffer(s), in bytes."""
MAX_CHUNK_BYTES = 256 << 20
"""The largest default workspace (``POLYFOCAL_LINEAR_CHUNK_BYTES`` replaces the default, see the module doc)."""

_HALF = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------------- validation


def _check_chunk_size(chunk_size: object) -> int:
    """``None`` -> 0 (from the workspace budget); else an int >= 1."""
    if chunk_size is None:
        return 0
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"expected chunk_size to be None or an int >= 1, got {_describe(chunk_size)}")
    if chunk_size < 1:
        raise ValueError(f"expected chunk_size to be None or an int >= 1, got {chunk_size}")
    return chunk_size


def _budget(weight_bytes: int, logits_bytes: int) -> int:
    raw = os.environ.get("POLYFOCAL_LINEAR_CHUNK_BYTES")
    if raw is None or raw == "":
        return min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, min(weight_bytes // 2, logits_bytes // 8)))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected POLYFOCAL_LINEAR_CHUNK_BYTES to be a positive integer (bytes), got {raw!r}")
    return value


def chunk_rows(num_rows: int, num_classes: int, itemsize: int, *, in_features: int = 0, buffers: int = 1,
               chunk_size: int = 0) -> int:  # fmt: skip
    """Rows per chunk: ``chunk_size`` when given, else as many as fit the workspace budget (see the module
    docstring; ``in_features`` sizes the weight, ``num_rows`` the logits); at least 1, at most ``num_rows``."""
    if chunk_size:
        rows = chunk_size
    else:
        row_bytes = num_classes * itemsize
        rows = _budget(row_bytes * in_features, row_bytes * num_rows) // max(1, row_bytes * buffers)
    return max(1, min(rows, num_rows))


def _check_tensors(input: object, linear_weight: object, target: object, linear_bias: object) -> None:
    for name, value in (("input", input), ("linear_weight", linear_weight)):
        if not isinstance(value, Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {_describe(value)}")
        if not value.dtype.is_floating_point:
            raise TypeError(f"expected {name} to be floating point, got dtype {value.dtype}")
    assert isinstance(input, Tensor) and isinstance(linear_weight, Tensor)
    if input.ndim < 1:
        raise ValueError("expected input of shape (..., in_features), got a 0-D tensor")
    if linear_weight.ndim != 2:
        raise ValueError(
            f"expected linear_weight of shape (num_classes, in_features), got shape {tuple(linear_weight.shape)}"
        )
    if linear_weight.shape[0] == 0:
        raise ValueError("expected linear_weight with at least one class (row), got shape (0, in_features)")
    if linear_weight.shape[1] != input.shape[-1]:
        raise ValueError(
            f"expected linear_weight of shape (num_classes, {input.shape[-1]}) (in_features of the input), "
            f"got shape {tuple(linear_weight.shape)}"
        )
    if linear_weight.dtype != input.dtype:
        raise TypeError(f"expected linear_weight of the input's dtype {input.dtype}, got {linear_weight.dtype}")
    if linear_weight.device != input.device:
        raise ValueError(f"expected linear_weight on the input's device {input.device}, got {linear_weight.device}")
    if linear_bias is not None:
        if not isinstance(linear_bias, Tensor):
            raise TypeError(f"expected linear_bias to be None or a torch.Tensor, got {_describe(linear_bias)}")
        if linear_bias.dtype != input.dtype:
            raise TypeError(f"expected linear_bias of the input's dtype {input.dtype}, got {linear_bias.dtype}")
        if linear_bias.shape != linear_weight.shape[:1]:
            raise ValueError(
                f"expected linear_bias of shape ({linear_weight.shape[0]},), got shape {tuple(linear_bias.shape)}"
            )
        if linear_bias.device != input.device:
            raise ValueError(f"expected linear_bias on the input's device {input.device}, got {linear_bias.device}")
    if not isinstance(target, Tensor):
        raise TypeError(f"expected target to be a torch.Tensor of class indices, got {_describe(target)}")
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise TypeError(
            "expected integer class indices as target (the fused linear loss has no soft / probability targets: "
            f"use poly_loss(F.linear(...), target) for those), got dtype {target.dtype}"
        )
    if target.dtype == torch.bool:
        raise TypeError("expected integer class indices as target, got dtype torch.bool")
    if target.shape != input.shape[:-1]:
        raise ValueError(
            f"expected target of shape {tuple(input.shape[:-1])} (the input's shape without in_features), "
            f"got shape {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"expected target on the input's device {input.device}, got {target.device}")


def _gemm_dtype(input: Tensor) -> torch.dtype:
    """The chunk GEMMs' dtype: the input's, except bf16/fp16 on CPU (float32 there, see the module docstring)."""
    return torch.float32 if input.device.type == "cpu" and input.dtype in _HALF else input.dtype


# ------------------------------------------------------------------------------------------------ the chunk loop


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one call computes: the per-chunk kernel arguments (reduction ``"sum"`` for ``"mean"``/``"sum"``),
    the public reduction, the cap, the rows per chunk and (class-parallel form) its two-phase kernels."""

    args: Args
    reduction: str
    softcap: float
    rows: int
    backend: str = "torch"  # class-parallel: the two-phase kernels, "torch" (ops), "native" or "triton"


def chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor, softcap: float,
                 dcap: Tensor | None) -> Tensor:  # fmt: skip
    """Phase 1 of a chunk: ``out = h @ W.T (+ b)`` in ``out``'s dtype (a float32 ``out`` from bf16/fp16 GEMMs
    through ``out_dtype``), capped in place; ``dcap = 1 - (z'/c)^2`` when given."""
    if out.dtype != h.dtype:
        torch.mm(h, weight.t(), out_dtype=out.dtype, out=out)
        if bias is not None:
            out.add_(bias)
    elif bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    return cap_(out, softcap, dcap)


def cap_(z: Tensor, softcap: float, dcap: Tensor | None) -> Tensor:
    """``z = c tanh(z / c)`` in place (nothing for ``c = 0``); ``dcap = 1 - (z'/c)^2`` when given."""
    if softcap:
        z.div_(softcap).tanh_()
        if dcap is not None:
            torch.mul(z, z, out=dcap).neg_().add_(1.0)
        z.mul_(softcap)
    return z


def chunk_loss(z: Tensor, y: Tensor, args: Args, compute_grad: bool) -> Tensor:
    """Phase 2 of a chunk: the package's fused kernel through the dispatcher.  With ``compute_grad`` the
    gradient (for ``grad_output = 1``) is written over ``z`` (the ``inplace=True`` path); returns the loss."""
    name = _dispatch.select(z, y, args)
    if compute_grad:
        return _dispatch.forward_inplace(name, z, y, args)[0]
    return _dispatch.forward(name, z, y, args, False)[0]


class _Grads:
    """The three gradient accumulators; ``None`` where not wanted.  ``grad_W`` / ``grad_b`` accumulate in
    float32 for bf16/fp16 weights (see :func:`_accumulate`)."""

    def __init__(self, h: Tensor, weight: Tensor, bias: Tensor | None, gemm: torch.dtype, needs: tuple[bool, ...]):
        acc = torch.float32 if weight.dtype in _HALF else weight.dtype
        n, v = h.shape[0], weight.shape[0]
        self.input = h.new_empty(n, h.shape[1], dtype=gemm) if needs[0] else None
        self.weight = weight.new_empty(weight.shape, dtype=acc) if needs[1] else None
        self.bias = weight.new_empty(v, dtype=acc) if needs[2] and bias is not None else None
        self.first = True

    def add(self, g: Tensor, h: Tensor, weight: Tensor, rows: slice, row_scale: Tensor | None) -> None:
        """Phase 3 of a chunk: ``grad_input[rows] = g @ W``, ``grad_W += g.T @ h``, ``grad_b += g.sum(0)``;
        ``row_scale`` (``reduction="none"``'s per-row ``grad_output``) scales the ``(chunk, d)`` factors."""
        if self.input is not None:
            gi = self.input[rows]
            torch.mm(g, weight, out=gi)
            if row_scale is not None:
                gi.mul_(row_scale.unsqueeze(1))
        if self.weight is not None:
            _accumulate(self.weight, g.t(), h if row_scale is None else h * row_scale.unsqueeze(1), self.first)
        if self.bias is not None:
            if row_scale is None:
                part = g.sum(0, dtype=self.bias.dtype)
            else:
                part = torch.mv(g.t(), row_scale).to(self.bias.dtype)
            if self.first:
                self.bias.copy_(part)
            else:
                self.bias.add_(part)
        self.first = False


def _accumulate(acc: Tensor, a: Tensor, b: Tensor, first: bool) -> None:
    """``acc (=|+=) a @ b``; float32 ``acc`` for bf16/fp16 ``a``, ``b`` through the ``out_dtype`` GEMMs (CUDA)."""
    if acc.dtype == a.dtype:
        if first:
            torch.mm(a, b, out=acc)
        else:
            acc.addmm_(a, b)
    elif first:
        torch.mm(a, b, out_dtype=acc.dtype, out=acc)
    else:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)


def run_chunks(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, plan: _Plan, needs: tuple[bool, bool, bool],
               row_grad: Tensor | None = None, *, step=None, buffer_dtype: torch.dtype | None = None,
               ) -> tuple[Tensor, _Grads | None]:  # fmt: skip
    """The chunk loop: ``h`` ``(N, d)``, ``y`` ``(N,)``.  Returns the kernel loss (the sum over chunks for a scalar
    plan, the ``(N,)`` row losses for ``"none"``) and the unscaled gradients when ``any(needs)``.  ``row_grad``
    (``"none"`` in the backward): the per-row upstream gradient, folded into the gradients.

    ``step(z, rows, compute_grad) -> (loss, row_scale)`` is phase 2 of a chunk (default: :func:`chunk_loss`, with
    ``row_grad`` as the row scale of phase 3); the class-parallel form passes its two-phase step, which folds
    ``row_grad`` into its own coefficients, and a float32 ``buffer_dtype``."""
    gemm = _gemm_dtype(h)
    n, v = h.shape[0], weight.shape[0]
    ct = compute_dtype(h)
    wc = weight.to(gemm)
    bc = None if bias is None else bias.to(gemm)
    compute_grad = any(needs)
    grads = _Grads(h, weight, bias, gemm, needs) if compute_grad else None
    scalar = plan.args.reduction != "none"
    total = torch.zeros((), dtype=ct, device=h.device) if scalar else h.new_empty(n, dtype=ct)
    rows = min(plan.rows, max(n, 1))
    buf = h.new_empty(rows, v, dtype=gemm if buffer_dtype is None else buffer_dtype)
    dcap = torch.empty_like(buf) if plan.softcap and compute_grad else None
    if step is None:
        scale = None if row_grad is None else row_grad.to(gemm)

        def step(z: Tensor, sl: slice, cg: bool) -> tuple[Tensor, Tensor | None]:
            return chunk_loss(z, y[sl], plan.args, cg), None if scale is None else scale[sl]

    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sl = slice(start, stop)
        hc = h[sl].to(gemm)
        z = chunk_logits(hc, wc, bc, buf[: stop - start], plan.softcap, None if dcap is None else dcap[: stop - start])
        loss, row_scale = step(z, sl, compute_grad)
        if scalar:
            total.add_(loss.sum())
        else:
            total[sl] = loss
        if grads is not None:
            if dcap is not None:
                z.mul_(dcap[: stop - start])
            grads.add(z if z.dtype == gemm else z.to(gemm), hc, wc, sl, row_scale)
    if grads is not None and grads.first:  # no rows: nothing was written (N = 0)
        for g in (grads.weight, grads.bias):
            if g is not None:
                g.zero_()
    return total, grads


def denominator(y: Tensor, args: Args, dtype: torch.dtype, target_weight: Tensor | None = None) -> Tensor:
    """``reduction="mean"``'s denominator, as ``F.cross_entropy``: the non-ignored rows, or their summed target
    class weights (``target_weight``, per row, when given: the class-parallel form's, gathered from the owning
    ranks); a 0-D tensor on ``y``'s device (no host read)."""
    valid = None if args.ignore_index is None else y != args.ignore_index
    w = target_weight
    if w is None and args.weight is not None:
        w = args.weight[y if valid is None else torch.where(valid, y, 0)]
    if w is None:
        if valid is None:
            return torch.full((), float(y.numel()), dtype=dtype, device=y.device)  # a fill, not a host copy
        return valid.sum().to(dtype)
    return (w if valid is None else w * valid).sum().to(dtype)


def _inverse(denom: Tensor) -> Tensor:
    """``1 / denom``, 0 where the denominator is 0 (every row ignored: the loss is NaN as in ``F.cross_entropy``,
    the gradients are 0 as there)."""
    return torch.where(denom == 0, torch.zeros_like(denom), 1.0 / denom)


def _finish(grads: _Grads | None, h: Tensor, weight: Tensor, bias: Tensor | None,
            scale: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
    """Scale the accumulators by ``scale`` (the mean's ``1/denominator``) and cast them to the parameters' dtypes."""
    if grads is None:
        return None, None, None
    out = []
    for g, like in ((grads.input, h), (grads.weight, weight), (grads.bias, bias)):
        if g is not None:
            if scale is not None:
                g.mul_(scale.to(g.dtype))
            g = g if like is None or g.dtype == like.dtype else g.to(like.dtype)
        out.append(g)
    return out[0], out[1], out[2]


def _forward(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, plan: _Plan, needs: tuple[bool, bool, bool],
             run=run_chunks, target_weight: Tensor | None = None,
             ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
    """The loss (reduced as ``plan.reduction`` says) and, for the scalar reductions, the gradients for
    ``grad_output = 1``; ``run`` / ``target_weight``: the class-parallel form's chunk loop and row weights."""
    scalar = plan.reduction != "none"
    total, grads = run(h, weight, bias, y, plan, needs if scalar else (False, False, False))
    scale = None
    if plan.reduction == "mean":
        denom = denominator(y, plan.args, total.dtype, target_weight)
        total = total / denom
        scale = _inverse(denom)
    return (total, *_finish(grads, h, weight, bias, scale))


def _is_one(grad: Tensor) -> bool:
    """``grad == 1`` read on the host only where that is free (a CPU tensor, eager)."""
    return grad.device.type == "cpu" and not torch.compiler.is_compiling() and bool(grad == 1)


def _scaled(grads: tuple[Tensor | None, ...], grad_out: Tensor, inplace: bool) -> tuple[Tensor | None, ...]:
    if _is_one(grad_out):
        return grads
    return tuple(
        None if g is None else (g.mul_(grad_out.to(g.dtype)) if inplace else g * grad_out.to(g.dtype)) for g in grads
    )


def _backward_none(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, plan: _Plan,
                   needs: tuple[bool, bool, bool], grad_out: Tensor) -> tuple[Tensor | None, ...]:  # fmt: skip
    _, grads = run_chunks(h, weight, bias, y, plan, needs, row_grad=grad_out)
    return _finish(grads, h, weight, bias, None)


_DOUBLE_BACKWARD = (
    "polyfocal: expected a first-order backward through the fused linear loss (its gradients come out of the "
    "chunked kernels, not differentiable formulas), got create_graph=True; use poly_loss(F.linear(...)) for "
    "double backward"
)


class _SingleProcess:
    """How :class:`_LinearLoss` runs the chunks in one process (the class-parallel form has its own, with the
    collectives): the forward (loss and, for the scalar reductions, gradients) and ``"none"``'s backward."""

    forward = staticmethod(_forward)
    rows_backward = staticmethod(_backward_none)


class _LinearLoss(torch.autograd.Function):
    """Eager path: the forward runs the chunk loop (gradients included for the scalar reductions), the backward
    hands them out scaled by ``grad_output`` (or recomputes: ``"none"``, and a second backward).  ``call`` is
    ``(y, plan, engine)``; ``engine`` runs the chunks (:class:`_SingleProcess`, or the class-parallel one)."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, call: tuple):  # type: ignore[override]
        y, plan, engine = call
        needs = tuple(ctx.needs_input_grad[:3])  # False for an absent bias
        loss, *grads = engine.forward(h, weight, bias, y, plan, needs)
        ctx.save_for_backward(h, weight, bias)
        ctx.call, ctx.needs = call, needs
        ctx.grads = tuple(grads) if plan.reduction != "none" else None
        ctx.set_materialize_grads(False)
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor | None):  # type: ignore[override]
        if grad_out is None:
            return None, None, None, None
        if torch.is_grad_enabled():
            raise RuntimeError(_DOUBLE_BACKWARD)
        h, weight, bias = ctx.saved_tensors
        y, plan, engine = ctx.call
        if plan.reduction == "none":
            gi, gw, gb = engine.rows_backward(h, weight, bias, y, plan, ctx.needs, grad_out)
            return gi, gw, gb, None
        grads, ctx.grads = ctx.grads, None  # handed out once; a second backward (retain_graph) recomputes
        if grads is None:
            grads = engine.forward(h, weight, bias, y, plan, ctx.needs)[1:]
        gi, gw, gb = _scaled(grads, grad_out, inplace=True)
        return gi, gw, gb, None


# ----------------------------------------------------------------------------------- torch.compile: custom ops


_PLAN = "str plan_reduction, float plan_softcap, int rows, bool[] needs"


def _flat(plan: _Plan, needs: tuple[bool, ...]) -> tuple:
    """The op arguments after ``(h, weight, bias, y)``: the kernel arguments' fields, then the plan's own."""
    return (*flatten(plan.args), plan.reduction, plan.softcap, plan.rows, list(needs))


def _unflat(flat: tuple, bias: Tensor | None) -> tuple[_Plan, tuple[bool, bool, bool]]:
    """The plan and which of input / weight / bias gradients are wanted (the bias's only where there is one)."""
    *fields, reduction, softcap, rows, needs = flat
    return _Plan(unflatten(fields), reduction, softcap, rows), (needs[0], needs[1], needs[2] and bias is not None)


def _fake_grads(h: Tensor, weight: Tensor, needs) -> tuple[Tensor, Tensor, Tensor]:
    """The fake kernels' gradient outputs: the input's, weight's and bias's shapes where wanted, else empty."""
    gi = torch.empty_like(h) if needs[0] else h.new_empty(0)
    gw = torch.empty_like(weight) if needs[1] else weight.new_empty(0)
    gb = weight.new_empty(weight.shape[:1]) if needs[2] else weight.new_empty(0)
    return gi, gw, gb


def _empty(like: Tensor, grad: Tensor | None) -> Tensor:
    return like.new_empty(0) if grad is None else grad


def _linear_poly(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, *flat) -> tuple[Tensor, ...]:
    """The fused linear loss and (scalar reductions) its gradients for ``grad_output = 1`` (empty where not
    wanted); the flat arguments of :func:`_flat`."""
    plan, needs = _unflat(flat, bias)
    loss, gi, gw, gb = _forward(h, weight, bias, y, plan, needs if plan.reduction != "none" else (False, False, False))
    return loss, _empty(h, gi), _empty(weight, gw), _empty(weight, gb)


_HEAD = "Tensor h, Tensor linear_weight, Tensor? linear_bias, Tensor y"
linear_poly = torch.library.custom_op(
    "polyfocal::linear_poly", _linear_poly, mutates_args=(),
    schema=f"({_HEAD}, {SCHEMA}, {_PLAN}) -> (Tensor, Tensor, Tensor, Tensor)",
)  # fmt: skip


@linear_poly.register_fake
def _(h, weight, bias, y, *flat):
    plan, needs = _unflat(flat, bias)
    scalar = plan.reduction != "none"
    loss = h.new_empty(() if scalar else h.shape[:1], dtype=compute_dtype(h))
    return (loss, *_fake_grads(h, weight, needs if scalar else (False, False, False)))


def _rows_backward(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, *flat_and_grad) -> tuple[Tensor, ...]:
    """``reduction="none"``'s backward: the chunks recomputed with the per-row ``grad_out``."""
    *flat, grad_out = flat_and_grad
    plan, needs = _unflat(tuple(flat), bias)
    gi, gw, gb = _backward_none(h, weight, bias, y, plan, needs, grad_out)
    return _empty(h, gi), _empty(weight, gw), _empty(weight, gb)


linear_poly_rows_backward = torch.library.custom_op(
    "polyfocal::linear_poly_rows_backward", _rows_backward, mutates_args=(),
    schema=f"({_HEAD}, {SCHEMA}, {_PLAN}, Tensor grad_out) -> (Tensor, Tensor, Tensor)",
)  # fmt: skip


@linear_poly_rows_backward.register_fake
def _(h, weight, bias, y, *flat_and_grad):
    _, needs = _unflat(tuple(flat_and_grad[:-1]), bias)
    return _fake_grads(h, weight, needs)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2], output[1], output[2], output[3])
    ctx.inputs = inputs[3:]
    ctx.mark_non_differentiable(output[1], output[2], output[3])
    ctx.set_materialize_grads(False)


def _op_backward(ctx, grad_out, _gi, _gw, _gb):
    nothing = (None,) * len(ctx.inputs)
    if grad_out is None:
        return (None, None, None, *nothing)
    h, weight, bias, gi, gw, gb = ctx.saved_tensors
    rest = ctx.inputs
    plan, needs = _unflat(tuple(rest[1:]), bias)
    if plan.reduction == "none":
        gi, gw, gb = linear_poly_rows_backward(h, weight, bias, *rest, grad_out)
    else:
        gi, gw, gb = (g * grad_out.to(g.dtype) for g in (gi, gw, gb))
    out_gi = gi if needs[0] else None
    out_gw = gw if needs[1] else None
    out_gb = gb if needs[2] else None
    return (out_gi, out_gw, out_gb, *nothing)


linear_poly.register_autograd(_op_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------ public API


_TENSORS = ("alpha", "weight", "prior", "margin")  # the per-class options, checked by prepare


def validated(input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None, *, softcap: object,
              chunk_size: object, **options: object) -> tuple[float, int, Args, Call, tuple[bool, ...]]:  # fmt: skip
    """The fused linear loss's checks, before any work (single-process and class-parallel alike): the tensors,
    ``softcap`` / ``chunk_size``, the loss options (the scalars through ``hyper``), no ``torch.func`` transform, the
    per-class vectors through :func:`prepare` on a zero-stride stand-in for the ``(N, V)`` logits, none of them
    requiring grad.  Returns ``(softcap, chunk, hyper, call, needs)``, ``needs`` = which of input / weight / bias
    want a gradient."""
    _check_tensors(input, linear_weight, target, linear_bias)
    cap = check_softcap(softcap)
    chunk = _check_chunk_size(chunk_size)
    tensors = {name: options.pop(name) for name in _TENSORS if name in options}
    h = hyper(**options)
    if torch._C._functorch.maybe_current_level() is not None:
        raise ValueError("expected no torch.func transform around the fused linear loss (vmap / grad / jvp), got one")
    num_rows = math.prod(input.shape[:-1])
    # the per-class vectors through the same checks as poly_loss: a zero-stride stand-in for the (N, V) logits
    stand_in = input.new_empty(1, dtype=_gemm_dtype(input)).expand(num_rows, linear_weight.shape[0])
    call = prepare(stand_in, target.reshape(num_rows), h, **tensors)
    for name, value in tensors.items():
        if isinstance(value, Tensor) and value.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"expected {name} without requires_grad (the fused linear loss computes gradients for input, "
                f"linear_weight and linear_bias only), got a tensor that requires grad"
            )
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and input.requires_grad,
        grad_on and linear_weight.requires_grad,
        grad_on and linear_bias is not None and linear_bias.requires_grad,
    )
    return cap, chunk, h, call, needs


def fused_linear_loss(input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None = None,
                      **options: object) -> Tensor:  # fmt: skip
    """:func:`polyfocal.linear_poly_loss` in one process (``options``: its keyword arguments, all given)."""
    cap, chunk, h, call, needs = validated(input, linear_weight, target, linear_bias, **options)
    num_rows = math.prod(input.shape[:-1])
    num_classes = linear_weight.shape[0]
    gemm = _gemm_dtype(input)
    args = call.args
    y = call.target
    check_index_range(y, num_classes, args.ignore_index, background=False)
    buffers = 2 if cap and any(needs) else 1
    itemsize = torch.empty((), dtype=gemm).element_size()
    rows = chunk_rows(num_rows, num_classes, itemsize, in_features=input.shape[-1], buffers=buffers, chunk_size=chunk)
    plan = _Plan(dataclasses.replace(args, reduction="none" if h.reduction == "none" else "sum"), h.reduction, cap,
                 rows)  # fmt: skip
    x2 = input.reshape(num_rows, input.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if torch.compiler.is_compiling():
        out = linear_poly(x2, linear_weight, linear_bias, y, *_flat(plan, needs))[0]
    elif any(needs):
        out = _LinearLoss.apply(x2, linear_weight, linear_bias, (y, plan, _SingleProcess))
    else:
        out = _forward(x2, linear_weight, linear_bias, y, plan, (False, False, False))[0]
    return out.reshape(input.shape[:-1]) if h.reduction == "none" else out
