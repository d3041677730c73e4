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


def check_reduction(reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"expected reduction to be one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def check_activation(activation: object) -> str:
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"expected activation to be 'softmax' or 'sigmoid', got {activation!r}")
    return activation


def check_gamma(gamma: object) -> float:
    if not _is_real_number(gamma):
        raise TypeError(f"expected gamma to be a real number >= 0, got {_describe(gamma)}")
    value = float(gamma)  # type: ignore[arg-type]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected gamma to be a finite number >= 0, got {gamma!r}")
    return value


def check_epsilon(epsilon: object, *, allow_sequence: bool = True) -> tuple[float, ...]:
    """Return the Poly-N coefficients ``(eps_1, ..., eps_N)``; a number means Poly-1."""
    if _is_real_number(epsilon):
        values: tuple[float, ...] = (float(epsilon),)  # type: ignore[arg-type]
    elif allow_sequence and isinstance(epsilon, Sequence) and not isinstance(epsilon, str):
        if not all(_is_real_number(e) for e in epsilon):
            raise TypeError(f"expected epsilon to be a sequence of real numbers, got {epsilon!r}")
        values = tuple(float(e) for e in epsilon)
    else:
        kind = "a real number or a sequence of real numbers" if allow_sequence else "a real number"
        raise TypeError(f"expected epsilon to be {kind}, got {_describe(epsilon)}")
    if not all(math.isfinite(e) for e in values):
        raise ValueError(f"expected finite epsilon values, got {epsilon!r}")
    return values


def check_label_smoothing(label_smoothing: object) -> float:
    if not _is_real_number(label_smoothing):
        raise TypeError(f"expected label_smoothing to be a number in [0, 1], got {_describe(label_smoothing)}")
    value = float(label_smoothing)  # type: ignore[arg-type]
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected label_smoothing in [0, 1], got {label_smoothing!r}")
    return value


def check_ignore_index(ignore_index: object) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"expected ignore_index to be an int or None, got {_describe(ignore_index)}")
    return int(ignore_index)


def check_sigmoid_alpha(alpha: object) -> float | None:
    if alpha is None:
        return None
    if not _is_real_number(alpha):
        raise TypeError(
            "expected alpha to be a number in [0, 1] or None for activation='sigmoid' "
            f"(per-class alpha is for activation='softmax'), got {_describe(alpha)}"
        )
    value = float(alpha)  # type: ignore[arg-type]
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected alpha in [0, 1] or None (None disables the alpha balance), got {alpha!r}")
    return value
