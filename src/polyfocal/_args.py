"""Validation in two named stages, each returning one frozen argument object.

1. :func:`hyper` checks the scalar hyperparameters (no tensors needed): a :class:`Hyper`.  The modules build it
   once, at construction (and again when an attribute is reassigned), so a module call skips this stage.
2. :func:`prepare` checks the tensors against the input and returns a :class:`Call`: the input and target in
   the canonical layout the backends take (softmax ``(N, C, *)`` with class dim 1; an unbatched ``(C,)`` input
   becomes ``(1, C)``) and a :class:`SoftmaxArgs` or :class:`SigmoidArgs`.

Backends receive ``(x, target, args)`` and nothing else; the only place the arguments are spelled out as a flat
list is the ``torch.library`` op schema (:mod:`polyfocal.kernels._ops`), converted by one pair of functions.
Every check runs before any loss computation and raises ``TypeError`` / ``ValueError`` / ``IndexError`` with a
message ``"expected …, got …"``; the class-index range is checked by the kernels themselves (no extra pass).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import torch

from ._params import (
    check_activation,
    check_clip,
    check_epsilon,
    check_gamma,
    check_gamma_neg,
    check_ignore_index,
    check_label_smoothing,
    check_logit_scale,
    check_nonnegative,
    check_reduction,
    check_sigmoid_alpha,
    check_sigmoid_variant,
    check_tau,
    check_z_loss,
)
from ._validation import (
    broadcast_tensor,
    check_logits,
    check_target,
    check_unit_range,
    compute_dtype,
    long_tail_vector,
    per_class_tensor,
)

__all__ = ["Call", "Hyper", "SigmoidArgs", "SoftmaxArgs", "hyper", "prepare"]


@dataclass(frozen=True)
class Hyper:
    """Validated scalar hyperparameters.  ``epsilon`` has its trailing zero terms dropped (``()`` = no poly
    term); ``alpha`` is the sigmoid's number (softmax's per-class alpha is a tensor, see :class:`SoftmaxArgs`)."""

    activation: str
    epsilon: tuple[float, ...]
    gamma: float
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    alpha: float | None = None
    detach_modulator: bool = False
    # softmax family only (long-tail options): the prior's temperature, the logit scale and the z-loss weight
    tau: float = 1.0
    logit_scale: float = 1.0
    z_loss: float = 0.0
    # sigmoid family only: the asymmetric loss (gamma_neg, clip) and the varifocal / quality focal variants
    gamma_neg: float | None = None
    clip: float = 0.0
    variant: str = "poly"
    iou_weighted: bool = True
    # the argument objects of calls without tensor arguments, built once per Hyper (see prepare's fast path)
    _plain: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class SoftmaxArgs:
    """Softmax family.  ``class_weight = alpha * weight`` (combined once; ``None`` when both are absent) enters
    the CE term per class; ``weight`` alone gives the poly terms' ``w_t`` and the ``"mean"`` denominator
    ``sum_i w[y_i]`` over non-ignored elements.  Vectors are ``(C,)`` in the compute dtype; ``normalizer`` is
    ``None`` or broadcastable to the loss shape ``(N, *)``.

    Long-tail options: the loss sees the logits ``z' = logit_scale * (z + bias - margin[y] onehot_y)`` with
    ``bias = tau * log(prior / sum(prior))`` (``None``: no prior, or ``tau = 0``) and ``margin`` ``(C,)`` or
    ``None`` (class-index targets only); ``z_loss`` adds ``z_loss * logsumexp(z')^2`` to each row's loss."""

    class_weight: torch.Tensor | None
    weight: torch.Tensor | None
    normalizer: torch.Tensor | None
    epsilon: tuple[float, ...]
    gamma: float
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    detach_modulator: bool = False
    bias: torch.Tensor | None = None
    margin: torch.Tensor | None = None
    logit_scale: float = 1.0
    z_loss: float = 0.0


@dataclass(frozen=True)
class SigmoidArgs:
    """Sigmoid family.  ``is_index``: the target is class indices ``(N, *)`` for ``x`` ``(N, C, *)`` with index
    ``C`` = background (and ``ignore_index`` masking the whole row), else dense targets of ``x``'s shape.
    ``weight``, ``pos_weight``, ``normalizer``: ``None`` or tensors broadcastable to ``x`` (not expanded).

    The detection / multi-label members (see :func:`polyfocal.asymmetric_loss`, :func:`polyfocal.varifocal_loss`,
    :func:`polyfocal.quality_focal_loss`): ``gamma_neg`` (``None``: ``gamma``) and ``clip`` make the ``"poly"``
    variant asymmetric; ``variant`` is ``"poly"``, ``"varifocal"`` (``alpha``, ``gamma``, ``iou_weighted``) or
    ``"quality"`` (``gamma`` is QFL's ``beta``); ``score``: ``None`` or a float tensor of the index target's shape,
    the value of the target class's element (mmdet's ``(label, score)`` pair; 1 without it)."""

    is_index: bool
    alpha: float | None
    weight: torch.Tensor | None
    pos_weight: torch.Tensor | None
    normalizer: torch.Tensor | None
    epsilon: tuple[float, ...]
    gamma: float
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    detach_modulator: bool = False
    gamma_neg: float | None = None
    clip: float = 0.0
    variant: str = "poly"
    iou_weighted: bool = True
    score: torch.Tensor | None = None


@dataclass(frozen=True)
class Call:
    """One validated call: canonical ``x`` and ``target``, the arguments, and how to shape ``"none"`` output."""

    x: torch.Tensor
    target: torch.Tensor
    args: SoftmaxArgs | SigmoidArgs
    out_shape: torch.Size


_PLAIN = (float, int, str, bool, type(None))


def hyper(
    *,
    activation: object = "softmax",
    epsilon: object = (),
    gamma: object = 0.0,
    alpha: object = None,
    ignore_index: object = None,
    label_smoothing: object = 0.0,
    reduction: object = "mean",
    epsilon_sequence: bool = True,
    detach_modulator: bool = False,
    tau: object = 1.0,
    logit_scale: object = 1.0,
    z_loss: object = 0.0,
    gamma_neg: object = None,
    clip: object = 0.0,
    variant: str = "poly",
    iou_weighted: bool = True,
) -> Hyper:
    """Stage 1: the scalar hyperparameters (``alpha`` only as the sigmoid's number; softmax alpha is checked in
    :func:`prepare`).  ``epsilon_sequence=False`` refuses Poly-N sequences (the Poly-1 functions).

    Calls with plain Python values (the usual case) are memoised: a repeated call costs one dictionary lookup."""
    values = (activation, epsilon, gamma, alpha, ignore_index, label_smoothing, reduction)
    plain = (
        type(gamma) in _PLAIN
        and type(alpha) in _PLAIN
        and type(ignore_index) in _PLAIN
        and type(label_smoothing) in _PLAIN
        and type(activation) is str
        and type(reduction) is str
        and (type(epsilon) in _PLAIN or (type(epsilon) is tuple and all(type(e) in _PLAIN for e in epsilon)))
        and type(tau) in _PLAIN
        and type(logit_scale) in _PLAIN
        and type(z_loss) in _PLAIN
        and type(gamma_neg) in _PLAIN
        and type(clip) in _PLAIN
        and type(variant) is str
        and type(iou_weighted) is bool
    )
    extra = (tau, logit_scale, z_loss, gamma_neg, clip, variant, iou_weighted)
    if plain and not torch.compiler.is_compiling():
        return _hyper_cached(*values, epsilon_sequence, detach_modulator, *extra)
    return _hyper(*values, epsilon_sequence, detach_modulator, *extra)


@functools.lru_cache(maxsize=1024, typed=True)  # typed: True must not hit the entry of 1
def _hyper_cached(*values: object) -> Hyper:
    return _hyper(*values)  # type: ignore[arg-type]


def _hyper(
    activation: object,
    epsilon: object,
    gamma: object,
    alpha: object,
    ignore_index: object,
    label_smoothing: object,
    reduction: object,
    epsilon_sequence: bool,
    detach_modulator: bool,
    tau: object = 1.0,
    logit_scale: object = 1.0,
    z_loss: object = 0.0,
    gamma_neg: object = None,
    clip: object = 0.0,
    variant: object = "poly",
    iou_weighted: object = True,
) -> Hyper:
    activation = check_activation(activation)
    tau_v, scale_v, z_v = check_tau(tau), check_logit_scale(logit_scale), check_z_loss(z_loss)
    if activation == "sigmoid" and (scale_v != 1.0 or z_v != 0.0):
        raise ValueError(
            "expected logit_scale=1 and z_loss=0 for activation='sigmoid' (softmax-family arguments), "
            f"got logit_scale={logit_scale!r}, z_loss={z_loss!r}"
        )
    variant = check_sigmoid_variant(variant)
    if activation == "softmax" and (gamma_neg is not None or (clip is not None and clip != 0) or variant != "poly"):
        raise ValueError(
            "expected gamma_neg=None, clip=0 and the 'poly' variant for activation='softmax' (they are sigmoid "
            f"arguments), got gamma_neg={gamma_neg!r}, clip={clip!r}, variant={variant!r}"
        )
    eps = check_epsilon(epsilon, allow_sequence=epsilon_sequence)
    while eps and eps[-1] == 0.0:
        eps = eps[:-1]
    return Hyper(
        activation=activation,
        epsilon=eps,
        gamma=check_gamma(gamma),
        ignore_index=check_ignore_index(ignore_index),
        label_smoothing=check_label_smoothing(label_smoothing),
        reduction=check_reduction(reduction),
        alpha=(check_nonnegative(alpha, "alpha") if variant == "varifocal" else check_sigmoid_alpha(alpha))
        if activation == "sigmoid"
        else None,
        detach_modulator=bool(detach_modulator),
        tau=tau_v,
        logit_scale=scale_v,
        z_loss=z_v,
        gamma_neg=check_gamma_neg(gamma_neg),
        clip=check_clip(clip),
        variant=variant,
        iou_weighted=bool(iou_weighted),
    )


_DERIVED: dict[tuple, tuple] = {}


def _derived(tag: str, sources: tuple, extra: tuple, make):
    """``make()``, memoised on the identity and version counter of its source tensors: a module's buffers (or the
    same tensor passed again) give the same device tensor on every call after the first, without the conversion
    kernels (on a GPU: launches, or a host read to check values) each call.  A source that is not a tensor, was
    freed, modified in place or requires grad, or a traced call, computes afresh."""
    if torch.compiler.is_compiling() or not all(type(v) is torch.Tensor and not v.requires_grad for v in sources):
        return make()
    key = (tag, *map(id, sources), *extra)
    versions = tuple(v._version for v in sources)
    hit = _DERIVED.get(key)
    if hit is not None and hit[1] == versions and all(r() is v for r, v in zip(hit[0], sources, strict=True)):
        return hit[2]
    value = make()
    if len(_DERIVED) >= 256:
        _DERIVED.clear()
    _DERIVED[key] = (tuple(weakref.ref(v) for v in sources), versions, value)
    return value


def prepare(
    input: object,
    target: object,
    h: Hyper,
    *,
    alpha: object = None,
    weight: object = None,
    pos_weight: object = None,
    normalizer: object = None,
    prior: object = None,
    margin: object = None,
    values_checked: bool = False,
    score: object = None,
) -> Call:
    """Stage 2: tensors against the input; returns the canonical :class:`Call`.  ``prior`` / ``margin``: the
    softmax family's long-tail vectors; ``values_checked=True`` (modules, which check them at construction)
    skips the check of their values."""
    if (  # the common call, checked in a few attribute tests: what the full checks below accept unchanged
        alpha is None
        and weight is None
        and pos_weight is None
        and normalizer is None
        and prior is None
        and margin is None
        and score is None
        and type(input) is torch.Tensor
        and type(target) is torch.Tensor
        and input.dtype in _FLOATS
        and target.device == input.device
    ):
        if h.activation == "softmax":
            if input.ndim == 2 and target.dtype is torch.int64 and target.shape == input.shape[:1] and input.shape[1]:
                args = h._plain.get("softmax")
                if args is None:
                    args = h._plain.setdefault("softmax", _softmax_args(h, None, None, None, None, None))
                return Call(input, target, args, target.shape)
        elif h.variant == "poly" and input.ndim and target.dtype is input.dtype and target.shape == input.shape:
            args = h._plain.get("sigmoid")
            if args is None:
                args = h._plain.setdefault("sigmoid", _sigmoid_args(h, False, None, None, None, None))
            return Call(input, target, args, input.shape)
    x = check_logits(input)
    ct = compute_dtype(x)
    device = x.device
    if h.activation == "softmax":
        if score is not None:
            raise ValueError("expected score=None for activation='softmax' (a sigmoid-family argument), got a value")
        if x.ndim == 0:
            raise ValueError("expected input of shape (C,), (N, C) or (N, C, d1, ...), got a 0-D tensor")
        if pos_weight is not None:
            raise ValueError(
                "expected pos_weight=None for activation='softmax' (it is a sigmoid/BCE argument), got a value"
            )
        class_dim = 1 if x.ndim >= 2 else 0
        num_classes = x.shape[class_dim]
        if num_classes == 0:
            raise ValueError(f"expected at least one class along dim {class_dim}, got input shape {tuple(x.shape)}")
        alpha_t = per_class_tensor(alpha, "alpha", num_classes, device=device, dtype=ct)
        weight_t = per_class_tensor(weight, "weight", num_classes, device=device, dtype=ct)
        check = not values_checked
        tail = (num_classes, device, ct, check)

        def bias_of() -> torch.Tensor | None:
            p = long_tail_vector(prior, "prior", num_classes, device=device, positive=True, check_values=check)
            if p is None or h.tau == 0.0:  # tau = 0: no adjustment at all (bit-identical to no prior)
                return None
            return (h.tau * (torch.log(p) - torch.log(p.sum()))).to(ct)

        def margin_of() -> torch.Tensor | None:
            m = long_tail_vector(margin, "margin", num_classes, device=device, positive=False, check_values=check)
            return None if m is None else m.to(ct)

        bias_t = _derived("bias", (prior,), (*tail, h.tau), bias_of)
        margin_t = _derived("margin", (margin,), tail, margin_of)
        targets = check_target(x, target, activation="softmax")
        if margin_t is not None and not targets.is_index:
            raise ValueError(
                "expected class-index targets with margin= (the margin is subtracted from the target class's "
                "logit), got a floating-point (probability) target"
            )
        loss_shape = x.shape[:class_dim] + x.shape[class_dim + 1 :]
        norm = broadcast_tensor(normalizer, "normalizer", loss_shape, device=device, dtype=ct)
        y = targets.values
        if x.ndim == 1:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
            norm = None if norm is None else norm.reshape(1)
        elif norm is not None:
            norm = torch.broadcast_to(norm, y.shape)  # a view
        if targets.is_index and y.dtype != torch.int64:
            y = y.long()
        class_weight = alpha_t if weight_t is None else weight_t
        if alpha_t is not None and weight_t is not None:
            class_weight = _derived("alpha*weight", (alpha_t, weight_t), (), lambda: alpha_t * weight_t)
        return Call(x, y, _softmax_args(h, class_weight, weight_t, norm, bias_t, margin_t), loss_shape)

    if prior is not None or margin is not None:
        raise ValueError(
            "expected prior=None and margin=None for activation='sigmoid' (softmax-family arguments), got a value"
        )
    weight_t = broadcast_tensor(weight, "weight", x.shape, device=device, dtype=ct)
    pos_weight_t = broadcast_tensor(pos_weight, "pos_weight", x.shape, device=device, dtype=ct)
    targets = check_target(x, target, activation="sigmoid")
    norm = broadcast_tensor(normalizer, "normalizer", x.shape, device=device, dtype=ct)
    out_shape = x.shape
    y = targets.values
    score_t = _check_score(score, y, targets.is_index, x, ct) if score is not None else None
    if h.variant != "poly" and not targets.is_index and y.dtype.is_floating_point:
        check_unit_range(y, "score (the soft target)")
    if targets.is_index:
        if y.dtype != torch.int64:
            y = y.long()
        if x.ndim == 1:  # unbatched (C,) logits with a 0-D class index
            x, y = x.unsqueeze(0), y.unsqueeze(0)
            weight_t, pos_weight_t, norm = (
                None if v is None else v.unsqueeze(0) for v in (weight_t, pos_weight_t, norm)
            )
            score_t = None if score_t is None else score_t.reshape(1)
    elif x.ndim == 0:
        x, y = x.reshape(1), y.reshape(1)
        weight_t, pos_weight_t, norm = (None if v is None else v.reshape(1) for v in (weight_t, pos_weight_t, norm))
    weight_t, pos_weight_t, norm = (
        None if v is None else torch.broadcast_to(v, x.shape) for v in (weight_t, pos_weight_t, norm)
    )
    return Call(x, y, _sigmoid_args(h, targets.is_index, weight_t, pos_weight_t, norm, score_t), out_shape)


_FLOATS = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))


def _softmax_args(h: Hyper, class_weight, weight, normalizer, bias, margin) -> SoftmaxArgs:
    return SoftmaxArgs(
        class_weight=class_weight,
        weight=weight,
        normalizer=normalizer,
        epsilon=h.epsilon,
        gamma=h.gamma,
        ignore_index=h.ignore_index,
        label_smoothing=h.label_smoothing,
        reduction=h.reduction,
        detach_modulator=h.detach_modulator,
        bias=bias,
        margin=margin,
        logit_scale=h.logit_scale,
        z_loss=h.z_loss,
    )


def _sigmoid_args(h: Hyper, is_index: bool, weight, pos_weight, normalizer, score) -> SigmoidArgs:
    return SigmoidArgs(
        is_index=is_index,
        alpha=h.alpha,
        weight=weight,
        pos_weight=pos_weight,
        normalizer=normalizer,
        epsilon=h.epsilon,
        gamma=h.gamma,
        ignore_index=h.ignore_index,
        label_smoothing=h.label_smoothing,
        reduction=h.reduction,
        detach_modulator=h.detach_modulator,
        gamma_neg=h.gamma_neg,
        clip=h.clip,
        variant=h.variant,
        iou_weighted=h.iou_weighted,
        score=score,
    )


def _check_score(score: object, y: torch.Tensor, is_index: bool, x: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """mmdet's per-anchor quality score beside class indices: a float tensor of the index target's shape, values in
    [0, 1] (checked on CPU tensors; elsewhere a data-dependent check would synchronise the device)."""
    if not is_index:
        raise ValueError("expected class-index targets with a score (the (label, score) pair form), got a dense target")
    if not isinstance(score, torch.Tensor) or not score.dtype.is_floating_point:
        kind = f"dtype {score.dtype}" if isinstance(score, torch.Tensor) else type(score).__name__
        raise TypeError(f"expected score to be a floating-point tensor, got {kind}")
    if score.shape != y.shape:
        raise ValueError(
            f"expected score of the class-index target's shape {tuple(y.shape)}, got shape {tuple(score.shape)}"
        )
    if score.device != x.device:
        raise ValueError(f"expected score on the input's device {x.device}, got {score.device}")
    check_unit_range(score, "score")
    return score.to(ct)
