"""Validation in two named stages, each producing the one argument object, :class:`Args`.

1. :func:`hyper` checks the scalar hyperparameters (no tensors needed) into an :class:`Args` whose tensor fields
   are empty.  It is memoised on the values, so a repeated call (every module call, every call of a public function
   with the same options) is one dictionary lookup.
2. :func:`prepare` checks the tensors against the input and returns a :class:`Call`: the input and target in the
   canonical layout the backends take (softmax ``(N, C, *)`` with class dim 1; an unbatched ``(C,)`` input becomes
   ``(1, C)``) and the same :class:`Args` with its tensor fields filled in.

Below the public signatures nothing else carries the arguments: ``_core``, the backends and the custom ops take the
:class:`Args`; the op schema is generated from its fields (:data:`SCHEMA`, :func:`flatten`, :func:`unflatten`).
A new hyperparameter is one field here, with its check in the field's metadata.  Every check runs before any loss
computation and raises ``TypeError`` / ``ValueError`` / ``IndexError`` with a message ``"expected …, got …"``; the
class-index range is checked by the kernels themselves (no extra pass).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
    check_softcap,
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

__all__ = ["NO_IGNORE", "SCHEMA", "Args", "Call", "check_vectors", "flatten", "hyper", "prepare", "unflatten"]

#: ``ignore_index`` of the C and Triton kernels for "nothing is ignored" (no class index equals it).
NO_IGNORE = -(2**63)


def _option(default: object, check=None, family: str | None = None, stage: int = 1):
    """A field of :class:`Args`: its default, the check of stage 1 (``None``: checked by hand in :func:`_hyper`),
    the family it belongs to (``None``: both) and its stage (2: filled in by :func:`prepare` from the tensors)."""
    return field(default=default, metadata={"check": check, "family": family, "stage": stage})


def _flag(value: object) -> bool:
    return bool(value)


@dataclass(frozen=True, eq=False)
class Args:
    """Every argument of one loss call below the public signature.

    Stage 1 (scalars, :func:`hyper`): ``epsilon`` has its trailing zero terms dropped (``()`` = no poly term);
    ``alpha`` is the sigmoid's number (softmax's per-class alpha is the tensor ``class_weight``).

    Stage 2 (tensors, :func:`prepare`), all in the compute dtype.  **softmax**: ``class_weight = alpha * weight``
    (``None`` when both are absent) enters the CE term per class; ``weight`` alone gives the poly terms' ``w_t``
    and the ``"mean"`` denominator ``sum_i w[y_i]`` over non-ignored elements; ``(C,)`` vectors.  Long-tail options:
    the loss sees ``logit_scale * (z + bias - margin[y] onehot_y)`` (``z = softcap * tanh(x / softcap)`` when
    ``softcap`` > 0, else the logits ``x``) with ``bias = tau * log(prior / sum(prior))``
    (``None``: no prior, or ``tau = 0``), ``margin`` ``(C,)`` or ``None`` (class-index targets only); ``z_loss``
    adds ``z_loss * logsumexp(z')^2`` to each row's loss.  **sigmoid**: ``is_index``: the target is class indices
    ``(N, *)`` for ``x`` ``(N, C, *)`` with index ``C`` = background (``ignore_index`` masks the whole row), else
    dense targets of ``x``'s shape; ``weight``, ``pos_weight``: ``None`` or broadcast views of ``x``'s shape.  The
    detection members (:func:`polyfocal.asymmetric_loss`, :func:`polyfocal.varifocal_loss`,
    :func:`polyfocal.quality_focal_loss`): ``gamma_neg`` (``None``: ``gamma``) and ``clip`` make ``"poly"``
    asymmetric; ``variant`` is ``"poly"``, ``"varifocal"`` or ``"quality"`` (``gamma`` is QFL's ``beta``);
    ``score``: ``None`` or the value of the target class's element beside class indices.  Both: ``normalizer``
    ``None`` or broadcast to the loss shape."""

    activation: str = _option("softmax", check_activation)
    epsilon: tuple[float, ...] = _option(())
    gamma: float = _option(0.0, check_gamma)
    alpha: float | None = _option(None, family="sigmoid")
    ignore_index: int | None = _option(None, check_ignore_index)
    label_smoothing: float = _option(0.0, check_label_smoothing)
    reduction: str = _option("mean", check_reduction)
    detach_modulator: bool = _option(False, _flag)
    tau: float = _option(1.0, check_tau, "softmax")
    logit_scale: float = _option(1.0, check_logit_scale, "softmax")
    z_loss: float = _option(0.0, check_z_loss, "softmax")
    softcap: float = _option(0.0, check_softcap, "softmax")  # c * tanh(z / c) on load; 0: off (public None)
    gamma_neg: float | None = _option(None, check_gamma_neg, "sigmoid")
    clip: float = _option(0.0, check_clip, "sigmoid")
    variant: str = _option("poly", check_sigmoid_variant, "sigmoid")
    iou_weighted: bool = _option(True, _flag, "sigmoid")
    is_index: bool = _option(False, stage=2)
    class_weight: torch.Tensor | None = _option(None, stage=2)
    weight: torch.Tensor | None = _option(None, stage=2)
    pos_weight: torch.Tensor | None = _option(None, stage=2)
    normalizer: torch.Tensor | None = _option(None, stage=2)
    bias: torch.Tensor | None = _option(None, stage=2)
    margin: torch.Tensor | None = _option(None, stage=2)
    score: torch.Tensor | None = _option(None, stage=2)
    # the argument objects of calls without tensor arguments, built once per stage-1 object (prepare's fast path)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False, metadata={"stage": 0})

    @property
    def softmax(self) -> bool:
        """The softmax family (else sigmoid)."""
        return self.activation == "softmax"

    @property
    def is_detection(self) -> bool:
        """A detection / multi-label member of the sigmoid family (asymmetric, varifocal, quality focal)."""
        return self.variant != "poly" or self.gamma_neg is not None or self.clip > 0.0

    @property
    def ignore_code(self) -> int:
        """``ignore_index`` as the kernels take it: :data:`NO_IGNORE` for none."""
        return NO_IGNORE if self.ignore_index is None else self.ignore_index

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensor fields that are set (computed once per object)."""
        found = self._memo.get("tensors")
        if found is None:
            found = tuple(v for v in (getattr(self, n) for n in _TENSOR_FIELDS) if v is not None)
            if not torch.compiler.is_compiling():
                self._memo["tensors"] = found
        return found


_FIELDS = tuple(f for f in dataclasses.fields(Args) if f.metadata["stage"])
_STAGE1 = tuple(f for f in _FIELDS if f.metadata["stage"] == 1)
_STAGE1_NAMES = frozenset(f.name for f in _STAGE1)
_TENSOR_FIELDS = tuple(f.name for f in _FIELDS if f.type == "torch.Tensor | None")
_NAMES = tuple(f.name for f in _FIELDS)

# ------------------------------------------------------------------------------------ the flat form (op schema)

_SCHEMA_TYPES = {
    "str": "str",
    "bool": "bool",
    "float": "float",
    "float | None": "float?",
    "int | None": "int?",
    "tuple[float, ...]": "float[]",
    "torch.Tensor | None": "Tensor?",
}
#: The fields of :class:`Args` as a ``torch.library`` schema fragment, in field order.
SCHEMA = ", ".join(f"{_SCHEMA_TYPES[f.type]} {f.name}" for f in _FIELDS)


def flatten(args: Args) -> tuple:
    """The fields of ``args`` in :data:`SCHEMA` order (sequences as lists)."""
    return tuple(list(v) if type(v) is tuple else v for v in (getattr(args, n) for n in _NAMES))


def unflatten(flat) -> Args:
    """The inverse of :func:`flatten`."""
    return Args(**{n: tuple(v) if type(v) is list else v for n, v in zip(_NAMES, flat, strict=True)})


def _with(args: Args, **values: object) -> Args:
    """``dataclasses.replace(args, **values)`` (a new object; the memo is not shared), 1 us cheaper: ``replace``
    walks ``fields()`` on every call, and this is on the path of every call with a tensor argument."""
    return Args(**{**{n: getattr(args, n) for n in _NAMES}, **values})


class Call(NamedTuple):
    """One validated call: canonical ``x`` and ``target``, the arguments, and how to shape ``"none"`` output."""

    x: torch.Tensor
    target: torch.Tensor
    args: Args
    out_shape: torch.Size


# --------------------------------------------------------------------------------------- stage 1: the scalars

_PLAIN = (float, int, str, bool, type(None))
_MEMO: dict[tuple, Args] = {}


def hyper(**options: object) -> Args:
    """Stage 1: the scalar hyperparameters, by the names of :class:`Args`' stage-1 fields (``alpha`` only as the
    sigmoid's number; softmax alpha is checked in :func:`prepare`), plus ``epsilon_sequence=False`` to refuse
    Poly-N sequences (the Poly-1 functions).

    Calls with plain Python values (the usual case) are memoised: a repeated call costs one dictionary lookup."""
    if torch.compiler.is_compiling():
        return _hyper(options)
    values = tuple(options.values())
    key = (tuple(options), values, tuple(map(type, values)))  # the types: True must not hit the entry of 1
    try:
        hit = _MEMO.get(key)
    except TypeError:  # an unhashable value (a list): not memoised
        return _hyper(options)
    if hit is None:
        hit = _hyper(options)
        if all(type(v) in _PLAIN or (type(v) is tuple and all(type(e) in _PLAIN for e in v)) for v in values):
            if len(_MEMO) >= 1024:
                _MEMO.clear()
            _MEMO[key] = hit  # plain values only: a tensor's value can change under the same identity
    return hit


def _hyper(options: dict) -> Args:
    """Each option through its field's check, then the rules across fields (the family's own options)."""
    options = dict(options)
    sequence = options.pop("epsilon_sequence", True)
    unknown = options.keys() - _STAGE1_NAMES
    if unknown:
        raise TypeError(f"expected hyperparameters among {sorted(_STAGE1_NAMES)}, got {sorted(unknown)}")
    checked = (f for f in _STAGE1 if f.metadata["check"] and f.name in options)
    values = {f.name: f.metadata["check"](options[f.name]) for f in checked}
    activation, variant = values.get("activation", "softmax"), values.get("variant", "poly")
    alpha = options.get("alpha")
    if activation == "sigmoid":
        values["alpha"] = check_nonnegative(alpha, "alpha") if variant == "varifocal" else check_sigmoid_alpha(alpha)
    else:
        values.pop("alpha", None)  # softmax alpha is a per-class tensor: prepare checks it
    for f in _STAGE1:  # an option of the other family must keep its default
        family = f.metadata["family"]
        if family and family != activation and f.name in values and values[f.name] != f.default:
            raise ValueError(
                f"expected {f.name}={f.default!r} for activation={activation!r} (one of the {family} arguments), "
                f"got {f.name}={options[f.name]!r}"
            )
    eps = check_epsilon(options.get("epsilon", ()), allow_sequence=sequence)
    while eps and eps[-1] == 0.0:
        eps = eps[:-1]
    return Args(**values, epsilon=eps)


# ---------------------------------------------------------------------------------------- stage 2: the tensors

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


_FLOATS = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))


def prepare(input: object, target: object, h: Args, **tensors: object) -> Call:
    """Stage 2: the tensor arguments (``alpha`` (softmax), ``weight``, ``pos_weight``, ``normalizer``, ``prior``,
    ``margin``, ``score``; ``None`` = absent) against the input; returns the canonical :class:`Call`."""
    for value in tensors.values():
        if value is not None:
            break
    else:
        call = _fast(input, target, h)
        if call is not None:
            return call
    x = check_logits(input)
    return _softmax_call(x, target, h, **tensors) if h.softmax else _sigmoid_call(x, target, h, **tensors)


def _fast(input: object, target: object, h: Args) -> Call | None:
    """The common call, checked in a few attribute tests: what the full checks accept unchanged (else ``None``)."""
    if not (
        type(input) is torch.Tensor
        and type(target) is torch.Tensor
        and input.dtype in _FLOATS
        and ((input.is_cpu and target.is_cpu) or target.device == input.device)
    ):
        return None
    if h.softmax:
        if input.ndim == 2 and target.dtype is torch.int64 and target.shape == input.shape[:1] and input.shape[1]:
            args = h._memo.get("softmax")
            if args is None:
                args = h._memo.setdefault("softmax", _with(h, is_index=True))
            return Call(input, target, args, target.shape)
    elif h.variant == "poly" and input.ndim and target.dtype is input.dtype and target.shape == input.shape:
        return Call(input, target, h, input.shape)
    return None


def _softmax_call(x, target, h: Args, *, alpha=None, weight=None, prior=None, margin=None, **other) -> Call:
    """Stage 2 of the softmax family: the per-class vectors, the long-tail vectors, the target."""
    for name, value in other.items():
        if value is not None and name != "normalizer":
            raise ValueError(f"expected {name}=None for activation='softmax' (a sigmoid argument), got a value")
    if x.ndim == 0:
        raise ValueError("expected input of shape (C,), (N, C) or (N, C, d1, ...), got a 0-D tensor")
    ct, device = compute_dtype(x), x.device
    class_dim = 1 if x.ndim >= 2 else 0
    num_classes = x.shape[class_dim]
    if num_classes == 0:
        raise ValueError(f"expected at least one class along dim {class_dim}, got input shape {tuple(x.shape)}")
    alpha_t = per_class_tensor(alpha, "alpha", num_classes, device=device, dtype=ct)
    weight_t = per_class_tensor(weight, "weight", num_classes, device=device, dtype=ct)
    bias_t, margin_t = _long_tail(h, prior, margin, num_classes, device, ct)
    targets = check_target(x, target, activation="softmax")
    if margin_t is not None and not targets.is_index:
        raise ValueError(
            "expected class-index targets with margin= (the margin is subtracted from the target class's "
            "logit), got a floating-point (probability) target"
        )
    loss_shape = x.shape[:class_dim] + x.shape[class_dim + 1 :]
    norm = broadcast_tensor(other.get("normalizer"), "normalizer", loss_shape, device=device, dtype=ct)
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
    args = _with(h, is_index=targets.is_index, class_weight=class_weight, weight=weight_t, normalizer=norm,
                 bias=bias_t, margin=margin_t)  # fmt: skip
    return Call(x, y, args, loss_shape)


def _long_tail(h: Args, prior, margin, num_classes: int, device, ct) -> tuple:
    """``bias = tau * log(prior / sum(prior))`` and the margin vector, memoised per source tensor."""
    tail = (num_classes, device, ct)

    def bias_of() -> torch.Tensor | None:
        p = long_tail_vector(prior, "prior", num_classes, device=device, positive=True)
        if p is None or h.tau == 0.0:  # tau = 0: no adjustment at all (bit-identical to no prior)
            return None
        return (h.tau * (torch.log(p) - torch.log(p.sum()))).to(ct)

    def margin_of() -> torch.Tensor | None:
        m = long_tail_vector(margin, "margin", num_classes, device=device, positive=False)
        return None if m is None else m.to(ct)

    bias_t = None if prior is None else _derived("bias", (prior,), (*tail, h.tau), bias_of)
    margin_t = None if margin is None else _derived("margin", (margin,), tail, margin_of)
    return bias_t, margin_t


def _sigmoid_call(x, target, h: Args, *, weight=None, pos_weight=None, normalizer=None, score=None, **other) -> Call:
    """Stage 2 of the sigmoid family: element-wise tensors broadcast to the input, the target, the score."""
    for name, value in other.items():
        if value is not None and name != "alpha":
            raise ValueError(f"expected {name}=None for activation='sigmoid' (a softmax argument), got a value")
    ct, device = compute_dtype(x), x.device
    weight_t = broadcast_tensor(weight, "weight", x.shape, device=device, dtype=ct)
    pos_weight_t = broadcast_tensor(pos_weight, "pos_weight", x.shape, device=device, dtype=ct)
    targets = check_target(x, target, activation="sigmoid")
    norm = broadcast_tensor(normalizer, "normalizer", x.shape, device=device, dtype=ct)
    out_shape = x.shape
    y = targets.values
    score_t = _check_score(score, y, targets.is_index, x, ct) if score is not None else None
    if h.variant != "poly" and not targets.is_index and y.dtype.is_floating_point:
        check_unit_range(y, "score (the soft target)")
    vectors = (weight_t, pos_weight_t, norm)
    if targets.is_index:
        if y.dtype != torch.int64:
            y = y.long()
        if x.ndim == 1:  # unbatched (C,) logits with a 0-D class index
            x, y = x.unsqueeze(0), y.unsqueeze(0)
            vectors = tuple(None if v is None else v.unsqueeze(0) for v in vectors)
            score_t = None if score_t is None else score_t.reshape(1)
    elif x.ndim == 0:
        x, y = x.reshape(1), y.reshape(1)
        vectors = tuple(None if v is None else v.reshape(1) for v in vectors)
    weight_t, pos_weight_t, norm = (None if v is None else torch.broadcast_to(v, x.shape) for v in vectors)
    args = _with(h, is_index=targets.is_index, weight=weight_t, pos_weight=pos_weight_t, normalizer=norm,
                 score=score_t)  # fmt: skip
    return Call(x, y, args, out_shape)


def check_vectors(h: Args, tensors: dict) -> None:
    """The tensor options' own checks without an input (a module's construction): the family's options, and per-class
    vectors (softmax ``alpha`` / ``weight`` / ``prior`` / ``margin``) against their own length."""
    own, other = (("alpha", "weight", "prior", "margin"), ("pos_weight", "score")) if h.softmax else ((), _SOFTMAX)
    for name in other:
        if tensors.get(name) is not None:
            family = "softmax" if name in _SOFTMAX else "sigmoid"
            raise ValueError(
                f"expected {name}=None for activation={h.activation!r} (a {family}-family argument), got a value"
            )
    for name in own:
        value = tensors.get(name)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            length, device = (value.shape[0] if value.ndim else 0), value.device
        else:
            length, device = len(value) if isinstance(value, Sequence) else 0, torch.device("cpu")
        if name in ("prior", "margin"):
            long_tail_vector(value, name, length, device=device, positive=name == "prior")
        else:
            per_class_tensor(value, name, length, device=device, dtype=torch.float32)


_SOFTMAX = ("prior", "margin")


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
