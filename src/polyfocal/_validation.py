"""Tensor argument checks shared by the validation stages (:mod:`polyfocal._args`) and the kernels.

Every check runs before any loss computation and raises ``ValueError``, ``TypeError`` or ``IndexError`` with a
message of the form ``"expected …, got …"``.

The class-index range needs the data: the kernels check it in their own pass (:func:`check_index_range` for the
torch-ops and composite paths: eagerly on CPU, as a ``torch._assert_async`` device-side assertion elsewhere and
under ``torch.compile``, so the hot path never synchronises with the host).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._params import _describe, _is_real_number, _real


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
        _check_device(value, name, device)
        tensor = value  # values are not checked (as torch's weight): a data-dependent check would sync / break graphs
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(_is_real_number(v) for v in value):
            raise TypeError(f"expected {name} to be a sequence of real numbers, got {value!r}")
        if name == "alpha" and any(v < 0 for v in value):  # free for a Python sequence; weight may be negative
            raise ValueError(f"expected non-negative alpha values, got {list(value)!r}")
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(f"expected {name} to be a sequence or 1-D tensor of length C, got {_describe(value)}")
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(
            f"expected {name} of shape ({num_classes},), one value per class, got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=dtype)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_device(value: torch.Tensor, name: str, device: torch.device) -> None:
    """A tensor argument lives on the input's device, or on the CPU (then it is copied over, as a Python list is)."""
    if value.device != device and value.device.type != "cpu":
        raise ValueError(f"expected {name} on the input's device {device} (or the CPU), got a tensor on {value.device}")


def broadcast_tensor(
    value: object, name: str, shape: torch.Size, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """A tensor that must broadcast to ``shape`` without changing it (weight, pos_weight, normalizer)."""
    if value is None:
        return None
    number = None if isinstance(value, torch.Tensor) else _real(value, name)
    if number is not None:
        if name == "normalizer" and not float(number) > 0:
            raise ValueError(f"expected a positive normalizer, got {value!r}")
        return torch.full((), float(number), device=device, dtype=dtype)  # no H2D copy
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected {name} to be a number or a tensor, got {_describe(value)}")
    if value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"expected {name} to be a real-valued tensor, got dtype {value.dtype}")
    _check_device(value, name, device)
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
    """Data checks need data: not on meta tensors, nor on a target that a functorch transform (vmap) batches."""
    if tensor.device.type == "meta":
        return False
    return torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def index_range_message(num_classes: int, ignore_index: int | None, *, background: bool) -> str:
    """The start of every class-index range error (host checks, native kernels, device assertions)."""
    if background:
        high, what = num_classes, f"C={num_classes} classes, index {num_classes} = background"
    else:
        high, what = num_classes - 1, f"C={num_classes} classes"
    ignore = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
    return f"expected class indices in [0, {high}] ({what}){ignore}"


def check_index_range(target: torch.Tensor, num_classes: int, ignore_index: int | None, *, background: bool) -> None:
    """Raise IndexError if a class index (other than ``ignore_index``) lies outside ``[0, C - 1]`` (or ``[0, C]``
    with the ``background`` index ``C``).  Queued as a device-side assertion (no host sync) off the CPU."""
    if target.numel() == 0 or not _data_checks_enabled(target):
        return
    high = num_classes if background else num_classes - 1
    bad = (target < 0) | (target > high)
    if ignore_index is not None:
        bad &= target != ignore_index
    message = index_range_message(num_classes, ignore_index, background=background)
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            offending = int(target[bad][0])
            raise IndexError(f"{message}, got {offending}")
    else:  # no host sync on accelerators, and traceable under torch.compile: an asynchronous assertion instead
        torch._assert_async(~bad.any(), f"{message}, got an index outside that range")


def check_target(input: torch.Tensor, target: object, *, activation: str) -> Targets:
    """Validate ``target`` against ``input`` (class dim 1, or 0 for an unbatched 1-D input): type, dtype, shape.

    The class-index range is not checked here: every kernel checks it in its own pass over the targets (and the
    composite path with :func:`check_index_range`), so a call costs no extra pass and compiled code is covered."""
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
    return Targets(target, is_index=True)


def finite_and_above(values: torch.Tensor, positive: bool) -> bool:
    """Whether every entry of a non-empty real tensor is finite and > 0 (``positive``) or >= 0: one ``aminmax``
    (a NaN makes both NaN, so it fails), read with two ``.item()`` on CPU (2 us; the isfinite / compare / any chain
    took 14 us) and one host read elsewhere."""
    if values.numel() == 0:
        return True
    lo, hi = torch.aminmax(values.detach())
    if values.is_cpu:
        low = lo.item()
        return (low > 0 if positive else low >= 0) and hi.item() < math.inf
    return bool(((lo > 0) if positive else (lo >= 0)) & (hi < math.inf))


def long_tail_vector(
    value: object, name: str, num_classes: int, *, device: torch.device, positive: bool
) -> torch.Tensor | None:
    """``prior`` (every entry finite and > 0) or ``margin`` (finite and >= 0) of the softmax family: a per-class
    sequence or 1-D tensor of length C, as a float64 tensor on ``device``.  Unlike alpha / weight the values are
    checked, before any loss computation: free for a Python sequence or a CPU tensor, one host read for a tensor on
    an accelerator -- once per tensor: ``_args._derived`` memoises the result on the tensor's identity and version,
    so a module's buffer (or the same tensor passed again) pays it on the first call only; skipped under
    torch.compile and on meta tensors (no data)."""
    if value is None:
        return None
    bound = "> 0" if positive else ">= 0"
    if _is_real_number(value) or (isinstance(value, torch.Tensor) and value.ndim == 0):
        scalar = value.item() if isinstance(value, torch.Tensor) else value
        raise ValueError(
            f"expected {name} to be a per-class sequence or tensor of length C={num_classes} (entries finite and "
            f"{bound}), got the scalar {scalar!r}"
        )
    if isinstance(value, torch.Tensor):
        if not (value.dtype.is_floating_point or value.dtype in _INT_DTYPES):
            raise TypeError(f"expected {name} to be a real-valued tensor, got dtype {value.dtype}")
        _check_device(value, name, device)
        tensor = value
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not all(_is_real_number(v) for v in value):
            raise TypeError(f"expected {name} to be a sequence of real numbers, got {value!r}")
        tensor = torch.tensor([float(v) for v in value], dtype=torch.float64)
    else:
        raise TypeError(f"expected {name} to be a sequence or 1-D tensor of length C, got {_describe(value)}")
    if tensor.ndim != 1 or tensor.shape[0] != num_classes:
        raise ValueError(
            f"expected {name} of shape ({num_classes},), one value per class, got shape {tuple(tensor.shape)}"
        )
    if not torch.compiler.is_compiling() and _data_checks_enabled(tensor) and not finite_and_above(tensor, positive):
        values = tensor.detach()
        bad = ~torch.isfinite(values) | ((values <= 0) if positive else (values < 0))
        if bool(bad.any()):
            shown = values.tolist() if values.numel() <= 16 else f"{values[bad][0].item()!r} at a bad entry"
            raise ValueError(f"expected every {name} entry finite and {bound}, got {shown}")
    return tensor.to(device=device, dtype=torch.float64)


def check_unit_range(values: torch.Tensor, name: str) -> None:
    """Values in [0, 1] (the varifocal / quality focal scores).  Checked on CPU tensors outside compiled graphs, where
    a host read is free; on an accelerator or inside ``torch.compile`` it would synchronise, so it is skipped there."""
    if values.device.type != "cpu" or torch.compiler.is_compiling() or not _data_checks_enabled(values):
        return
    if values.numel() == 0 or not values.dtype.is_floating_point:
        return
    low, high = torch.aminmax(values.detach())
    if not (float(low) >= 0.0 and float(high) <= 1.0):  # NaN fails too
        raise ValueError(f"expected {name} values in [0, 1], got values in [{float(low)}, {float(high)}]")
