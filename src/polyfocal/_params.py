"""Hyperparameter checks that need no framework: shared by the torch API and the Keras adapter.

Each raises ``ValueError`` or ``TypeError`` with a message of the form ``"expected …, got …"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

REDUCTIONS = ("none", "mean", "sum")
ACTIVATIONS = ("softmax", "sigmoid")


def _describe(value: object) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor or array of any framework
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{value!r} ({type(value).__name__})"


def _is_real_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _zero_dim_real(value: object, name: str) -> float | None:
    """A 0-dim tensor or array of any framework (torch, numpy, ...) holding a real number, as a float;
    ``None`` if ``value`` is not one.  A tensor that requires grad is refused: its gradient would be dropped."""
    shape = getattr(value, "shape", None)
    if shape is None or tuple(shape) != () or not hasattr(value, "__float__"):
        return None
    dtype = str(getattr(value, "dtype", ""))
    if "bool" in dtype or "complex" in dtype:
        return None
    if getattr(value, "requires_grad", False):
        raise TypeError(
            f"expected {name} to be a number or a tensor without requires_grad (polyfocal computes no gradient "
            f"with respect to {name}), got a tensor that requires grad"
        )
    return float(value)  # type: ignore[arg-type]


def _real(value: object, name: str) -> float | None:
    """``value`` as a float if it is a real number (not bool) or a 0-dim real tensor/array, else ``None``."""
    if _is_real_number(value):
        return value  # type: ignore[return-value]  # kept as given: a SymFloat under torch.compile stays symbolic
    return _zero_dim_real(value, name)


def _finite(value: float) -> bool:
    """``math.isfinite`` as comparisons, which torch.compile can trace on a symbolic float."""
    return -math.inf < value < math.inf


def check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"expected reduction to be one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def check_activation(activation: object) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"expected activation to be 'softmax' or 'sigmoid', got {activation!r}")
    return activation


def check_nonnegative(value: object, name: str) -> float:
    """A finite number >= 0: ``gamma``, ``z_loss``, QFL's ``beta``, VFL's ``alpha``."""
    number = _real(value, name)
    if number is None:
        raise TypeError(f"expected {name} to be a real number >= 0, got {_describe(value)}")
    number = float(number)
    if not _finite(number) or number < 0:
        raise ValueError(f"expected {name} to be a finite number >= 0, got {value!r}")
    return number


def check_gamma(gamma: object) -> float:
    return check_nonnegative(gamma, "gamma")


def check_epsilon(epsilon: object, *, allow_sequence: bool = True) -> tuple[float, ...]:
    """Return the Poly-N coefficients ``(eps_1, ..., eps_N)``; a number means Poly-1."""
    single = _real(epsilon, "epsilon")
    if single is not None:
        values: tuple[float, ...] = (float(single),)
    elif allow_sequence and isinstance(epsilon, Sequence) and not isinstance(epsilon, str):
        items = [_real(e, "epsilon") for e in epsilon]
        if any(e is None for e in items):
            raise TypeError(f"expected epsilon to be a sequence of real numbers, got {epsilon!r}")
        values = tuple(float(e) for e in items)  # type: ignore[arg-type]
    else:
        kind = "a real number or a sequence of real numbers" if allow_sequence else "a real number"
        raise TypeError(f"expected epsilon to be {kind}, got {_describe(epsilon)}")
    if not all(_finite(e) for e in values):
        raise ValueError(f"expected finite epsilon values, got {epsilon!r}")
    return values


def check_label_smoothing(label_smoothing: object) -> float:
    value = _real(label_smoothing, "label_smoothing")
    if value is None:
        raise TypeError(f"expected label_smoothing to be a number in [0, 1], got {_describe(label_smoothing)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected label_smoothing in [0, 1], got {label_smoothing!r}")
    return value


def check_ignore_index(ignore_index: object) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        if tuple(getattr(ignore_index, "shape", (0,))) == () and "int" in str(getattr(ignore_index, "dtype", "")):
            ignore_index = int(ignore_index)  # type: ignore[call-overload]  # a 0-dim integer tensor or array
        else:
            raise TypeError(f"expected ignore_index to be an int or None, got {_describe(ignore_index)}")
    value = int(ignore_index)
    if not -(2**63) < value < 2**63:  # -2**63 is reserved by the kernels for "nothing ignored"
        raise ValueError(f"expected ignore_index in the int64 range (-2**63, 2**63), got {value}")
    return value


def check_sigmoid_alpha(alpha: object) -> float | None:
    if alpha is None:
        return None
    value = _real(alpha, "alpha")
    if value is None:
        raise TypeError(
            "expected alpha to be a number in [0, 1] or None for activation='sigmoid' "
            f"(per-class alpha is for activation='softmax'), got {_describe(alpha)}"
        )
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected alpha in [0, 1] or None (None disables the alpha balance), got {alpha!r}")
    return value


# ------------------------------------------------------------------ long-tail options of the softmax family


def check_tau(tau: object) -> float:
    value = _real(tau, "tau")
    if value is None:
        raise TypeError(f"expected tau to be a finite real number, got {_describe(tau)}")
    value = float(value)
    if not _finite(value):
        raise ValueError(f"expected tau to be a finite number, got {tau!r}")
    return value


def check_logit_scale(logit_scale: object) -> float:
    value = _real(logit_scale, "logit_scale")
    if value is None:
        raise TypeError(f"expected logit_scale to be a finite real number > 0, got {_describe(logit_scale)}")
    value = float(value)
    if not (_finite(value) and value > 0):
        raise ValueError(f"expected logit_scale to be a finite number > 0, got {logit_scale!r}")
    return value


def check_z_loss(z_loss: object) -> float:
    return check_nonnegative(z_loss, "z_loss")


def check_softcap(softcap: object) -> float:
    """Logit soft-capping ``c * tanh(z / c)``: ``None`` -> 0.0 (off); else a finite number > 0."""
    if softcap is None:
        return 0.0
    value = _real(softcap, "softcap")
    if value is None:
        raise TypeError(f"expected softcap to be None or a number > 0, got {_describe(softcap)}")
    value = float(value)
    if not (_finite(value) and value > 0):
        raise ValueError(f"expected softcap to be None or a finite number > 0, got {softcap!r}")
    return value


# --- the dense-detection / multi-label members of the sigmoid family (asymmetric, varifocal, quality focal) ---

SIGMOID_VARIANTS = ("poly", "varifocal", "quality")


def check_gamma_neg(gamma_neg: object) -> float | None:
    """The negatives' focusing parameter of the asymmetric loss: ``None`` (same as ``gamma``) or a number >= 0."""
    if gamma_neg is None:
        return None
    value = _real(gamma_neg, "gamma_neg")
    if value is None:
        raise TypeError(f"expected gamma_neg to be a real number >= 0 or None, got {_describe(gamma_neg)}")
    value = float(value)
    if not _finite(value) or value < 0:
        raise ValueError(f"expected gamma_neg to be a finite number >= 0 (None: the same as gamma), got {gamma_neg!r}")
    return value


def check_clip(clip: object) -> float:
    """The asymmetric loss's probability margin: ``s_m = max(s - clip, 0)`` for the negatives, in [0, 1)."""
    value = _real(clip, "clip") if clip is not None else 0.0
    if value is None:
        raise TypeError(f"expected clip to be a number in [0, 1) (0 or None disables it), got {_describe(clip)}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"expected clip in [0, 1) (0 or None disables the probability margin), got {clip!r}")
    return value


def check_sigmoid_variant(variant: object) -> str:
    if not isinstance(variant, str) or variant not in SIGMOID_VARIANTS:
        raise ValueError(f"expected variant to be one of {SIGMOID_VARIANTS}, got {variant!r}")
    return variant
