"""Argument checks shared by the public functions, the modules and the compatibility shims.

Every check runs before any loss computation and raises ``ValueError``, ``TypeError`` or
``IndexError`` with a message of the form ``"expected …, got …"``.

Value checks on tensors (class-index ranges) need the data.  On CPU they run eagerly and raise a
Python exception.  On an accelerator they are queued with :func:`torch._assert_async`, which raises a
device-side assertion without a host synchronisation, so the hot path never calls ``.item()``.
Under tracing (``torch.compile``/fake tensors) data-dependent checks are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._params import _describe, _is_real_number


def check_logits(input: object) -> torch.Tensor:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"expected input to be a torch.Tensor of logits, got {_describe(input)}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"expected floating-point logits (float16, bfloat16, float32 or float64), got {input.dtype}")
    return input


def compute_dtype(input: torch.Tensor) -> torch.dtype:
    """fp16/bf16 inputs are computed in float32; float32/float64 keep their own precision."""
    return torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype


def per_class_tensor(
    value: object, name: str, num_classes: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """A per-class vector (alpha or weight for softmax) as a tensor of length ``num_classes``."""
    if value is None:
        return None
    if _is_real_number(value) or (isinstance(value, torch.Tensor) and value.ndim == 0):
        scalar = value.item() if isinstance(value, torch.Tensor) else value
        hint = (
            f"; build per-class weights instead, e.g. alpha=[{scalar}] + [{1 - float(scalar):g}] * (C - 1) "
            "for RetinaNet-style background down-weighting of class 0, or "
            "polyfocal.class_balanced_alpha(class_counts)"
            if name == "alpha"
            else ""
        )
        raise ValueError(
            f"expected {name} to be a per-class sequence or tensor of length C={num_classes} for "
            f"activation='softmax', got the scalar {scalar!r}{hint}"
        )
    if isinstance(value, torch.Tensor):
        if not (value.dtype.is_floating_point or value.dtype in _INT_DTYPES):
            raise TypeError(f"expected {name} to be a real-valued tensor, got dtype {value.dtype}")
        tensor = value
        if tensor.device.type == "cpu" and bool((tensor < 0).any()):  # a (C,) vector: cheap to check on CPU
            raise ValueError(f"expected non-negative {name} values, got {tensor.tolist()!r}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(_is_real_number(v) for v in value):
            raise TypeError(f"expected {name} to be a sequence of real numbers, got {value!r}")
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
        if (tensor < 0).any():
            raise ValueError(f"expected non-negative {name} values, got {list(value)!r}")
    else:
        raise TypeError(f"expected {name} to be a sequence or 1-D tensor of length C, got {_describe(value)}")
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(
            f"expected {name} of shape ({num_classes},), one value per class, got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=dtype)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def broadcast_tensor(
    value: object, name: str, shape: torch.Size, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """A tensor that must broadcast to ``shape`` without changing it (weight, pos_weight, normalizer)."""
    if value is None:
        return None
    if _is_real_number(value):
        if name == "normalizer" and not float(value) > 0:  # type: ignore[arg-type]
            raise ValueError(f"expected a positive normalizer, got {value!r}")
        return torch.full((), float(value), device=device, dtype=dtype)  # type: ignore[arg-type]  # no H2D copy
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected {name} to be a number or a tensor, got {_describe(value)}")
    if value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"expected {name} to be a real-valued tensor, got dtype {value.dtype}")
    try:
        result = torch.broadcast_shapes(value.shape, shape)
    except RuntimeError:
        result = None
    if result != shape:
        raise ValueError(
            f"expected {name} broadcastable to the loss shape {tuple(shape)} without enlarging it, "
            f"got shape {tuple(value.shape)}"
        )
    return value.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Targets:
    """A validated target: either class indices or dense (probability / 0-1) values."""

    values: torch.Tensor
    is_index: bool


def _data_checks_enabled(tensor: torch.Tensor) -> bool:
    if tensor.device.type == "meta":
        return False
    compiling = getattr(torch.compiler, "is_compiling", None)
    return not (compiling is not None and compiling())


def check_index_range(target: torch.Tensor, low: int, high: int, ignore_index: int | None, what: str) -> None:
    """Raise IndexError if a class index (other than ``ignore_index``) lies outside ``[low, high]``."""
    if target.numel() == 0 or not _data_checks_enabled(target):
        return
    bad = (target < low) | (target > high)
    if ignore_index is not None:
        bad &= target != ignore_index
    ignore = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    message = f"expected class indices in [{low}, {high}] ({what}){ignore}"
    if target.device.type == "cpu":
        if bool(bad.any()):
            offending = int(target[bad][0])
            raise IndexError(f"{message}, got {offending}")
    else:  # no host sync on accelerators: a device-side assertion instead
        torch._assert_async(~bad.any(), f"{message}, got an index outside that range")


def check_target(
    input: torch.Tensor, target: object, *, activation: str, ignore_index: int | None, check_range: bool = True
) -> Targets:
    """Validate ``target`` against ``input`` (class dim 1, or 0 for an unbatched 1-D input).

    ``check_range=False`` leaves the class-index range to the caller (the CUDA kernels assert it on the
    device inside their own launch)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"expected target to be a torch.Tensor, got {_describe(target)}")
    if target.device != input.device:
        raise ValueError(f"expected target on the input's device {input.device}, got {target.device}")
    if target.dtype.is_complex:
        raise TypeError(f"expected integer class indices or real-valued targets, got {target.dtype}")
    class_dim = 1 if input.ndim >= 2 else 0
    index_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :] if input.ndim >= 1 else None
    if target.dtype.is_floating_point:
        if target.shape != input.shape:
            raise ValueError(
                f"expected a floating-point target of the input's shape {tuple(input.shape)} "
                f"(probabilities), got shape {tuple(target.shape)}"
            )
        return Targets(target, is_index=False)
    # integer or bool
    if activation == "sigmoid" and target.shape == input.shape:
        if target.dtype != torch.bool and target.dtype not in _INT_DTYPES:
            raise TypeError(f"expected a 0/1 multi-hot target, got dtype {target.dtype}")
        return Targets(target, is_index=False)  # 0/1 multi-hot, converted to float by the core
    if target.dtype == torch.bool or target.dtype not in _INT_DTYPES:
        raise TypeError(f"expected integer class indices or a floating-point target, got dtype {target.dtype}")
    if index_shape is None:
        raise ValueError(
            "expected input with a class dimension (at least 1-D) for class-index targets, got a 0-D input"
        )
    if target.shape != index_shape:
        raise ValueError(
            f"expected class-index target of shape {tuple(index_shape)} (the input's shape "
            f"{tuple(input.shape)} without class dim {class_dim}), got shape {tuple(target.shape)}"
        )
    num_classes = input.shape[class_dim]
    if check_range and activation == "softmax":
        check_index_range(target, 0, num_classes - 1, ignore_index, f"C={num_classes} classes")
    elif check_range:
        check_index_range(
            target, 0, num_classes, ignore_index, f"C={num_classes} classes, index {num_classes} = background"
        )
    return Targets(target, is_index=True)
