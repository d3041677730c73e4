"""Native CPU kernels (``_native.c``): compiled once per machine with the system C compiler, loaded with ctypes.

Why compiled code on CPU: a chain of whole-tensor torch ops cannot meet the targets (the sigmoid family
needs ~25 element-wise passes against BCE-with-logits' handful), while one C loop per row / per block of
elements, vectorised through glibc's libmvec and parallelised with OpenMP, reads the logits once and writes
the gradient once.  The C file has no Python or torch headers, so it compiles in well under a second:

* cold first call (compile + load): measured ~0.3 s here; warm cache (load only): a few milliseconds;
* cached in ``$POLYFOCAL_CACHE_DIR`` or ``$XDG_CACHE_HOME/polyfocal`` (default ``~/.cache/polyfocal``),
  keyed by the source, the compiler, its flags and the CPU's feature flags (``-march=native``); written
  atomically, so concurrent processes are safe;
* no compiler, a failed build or ``POLYFOCAL_NATIVE=0``: the torch implementation is used instead (same
  results, slower), with one warning when a build fails.

The kernels cover float32 input: softmax with ``(N, C)`` logits, sigmoid with dense targets or class indices
on ``(N, C)`` logits, up to 16 epsilon terms.  Everything else (float64, float16/bfloat16, spatial
``(N, C, d1, ...)`` softmax/index layouts) goes to the torch implementation.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from .._args import SigmoidArgs, SoftmaxArgs
from .._validation import index_range_message
from ._torch_impl import NO_IGNORE

__all__ = [
    "available",
    "library",
    "sigmoid",
    "sigmoid_forward",
    "softmax",
    "softmax_forward",
    "supports",
    "supports_call",
]

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
_LIBS = ["-lmvec", "-lm"]
_MAX_EPS = 16
_state: dict[str, object] = {}

_f32p = ctypes.POINTER(ctypes.c_float)
_f64p = ctypes.POINTER(ctypes.c_double)
_i64p = ctypes.POINTER(ctypes.c_int64)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    explicit = os.environ.get("POLYFOCAL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polyfocal"


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, compiler.encode(), " ".join(_FLAGS + _LIBS).encode(), _cpu_flags().encode()])
    )
    target = _cache_dir() / f"native-{platform.machine()}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", tmp, *_LIBS],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; ``None`` where unavailable."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    lib = None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if os.environ.get("POLYFOCAL_NATIVE", "1") != "0" and compiler and platform.system() == "Linux":
        try:
            lib = ctypes.CDLL(str(_build(compiler)))
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            message = "polyfocal: building the native CPU kernels failed, using the torch implementation"
            warnings.warn(f"{message} ({detail.strip()[:300]})", stacklevel=2)
            lib = None
    if lib is not None:  # tensor pointers travel as plain integers (c_void_p): no ctypes.cast per call
        _p = ctypes.c_void_p
        lib.pf_softmax_f32.restype = ctypes.c_int
        lib.pf_softmax_f32.argtypes = [_p, _p, _p, _p, _p, _f64p, ctypes.c_int, ctypes.c_double,
                                       ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                       _p, _f64p, _p, ctypes.c_int, _i64p]  # fmt: skip
        lib.pf_sigmoid_f32.restype = ctypes.c_int
        lib.pf_sigmoid_f32.argtypes = [_p, _p, _p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _p,
                                       ctypes.c_int, _p, ctypes.c_int, _p, ctypes.c_int, ctypes.c_double, _f64p,
                                       ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int, _p, _p,
                                       _p, ctypes.c_int, _f64p, _i64p]  # fmt: skip
    _state["lib"] = lib
    return lib


def available() -> bool:
    return library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=256)
def _eps_array(epsilon: tuple[float, ...]):
    return (ctypes.c_double * max(len(epsilon), 1))(*epsilon)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def supports(x: torch.Tensor, is_index: bool, epsilon: list[float], softmax: bool) -> bool:
    """Whether these kernels cover the call (else the op uses the torch implementation)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or len(epsilon) > _MAX_EPS or not available():
        return False
    if softmax:
        return x.ndim == 2 and x.shape[1] > 0
    return not is_index or x.ndim == 2


def softmax_forward(
    x, target, class_weight, weight, normalizer, epsilon, gamma, ignore_index, label_smoothing, reduction, compute_grad
):
    """:func:`softmax` with the arguments spelled out (``class_weight = alpha * weight``)."""
    lib = library()
    x = x.contiguous()
    y = target.contiguous()
    rows, num_classes = x.shape
    a, w = _f32(class_weight), _f32(weight)
    norm = None if normalizer is None else _f32(torch.broadcast_to(normalizer, (rows,)))
    loss = torch.empty(rows, dtype=torch.float32)
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    total, bad = ctypes.c_double(), ctypes.c_int64()
    status = lib.pf_softmax_f32(
        _ptr(x), _ptr(y), _ptr(a), _ptr(w), _ptr(norm), _eps_array(tuple(epsilon)), len(epsilon), float(gamma),
        float(label_smoothing), int(ignore_index), rows, num_classes, int(reduction == "mean"), _ptr(loss),
        ctypes.byref(total), _ptr(grad if compute_grad else None), torch.get_num_threads(), ctypes.byref(bad),
    )  # fmt: skip
    if status:
        raise _index_error(bad.value, num_classes, ignore_index, background=False)
    if reduction == "none":
        return loss, grad
    return torch.full((), total.value, dtype=torch.float32), grad  # "mean": the rows carry 1/denominator


def _vector_mode(v: torch.Tensor | None, rows_view: bool) -> tuple[int, torch.Tensor | None]:
    """0: none; 1: per-class (a view of an (N, C) input broadcast along rows); 2: a full array of x's shape."""
    if v is None:
        return 0, None
    if rows_view and v.stride(0) == 0:
        return 1, _f32(v[0])
    return 2, _f32(v)


def sigmoid_forward(
    x,
    target,
    is_index,
    weight,
    pos_weight,
    normalizer,
    alpha,
    epsilon,
    gamma,
    ignore_index,
    label_smoothing,
    reduction,
    compute_grad,
):
    """Same contract as :func:`._torch_impl.sigmoid_forward`."""
    lib = library()
    x = x.contiguous()
    rows_view = x.ndim == 2 and (is_index or any(v is not None and v.stride(0) == 0 for v in (weight, pos_weight)))
    n, length = (x.shape[0], x.shape[1]) if rows_view else (1, x.numel())
    w_mode, w = _vector_mode(weight, rows_view)
    pw_mode, pw = _vector_mode(pos_weight, rows_view)
    norm = _f32(normalizer)
    y, t = (target.contiguous(), None) if is_index else (None, _f32(target))
    threads = torch.get_num_threads()
    loss = torch.empty(x.shape, dtype=torch.float32) if reduction == "none" else None
    partial = torch.zeros(threads, dtype=torch.float64) if loss is None else None
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    denominator, bad = ctypes.c_double(float(x.numel())), ctypes.c_int64()
    if x.numel():
        status = lib.pf_sigmoid_f32(
            _ptr(x), _ptr(t), _ptr(y), int(ignore_index), n, length, _ptr(w), w_mode, _ptr(pw), pw_mode,
            _ptr(norm), int(alpha is not None), 0.0 if alpha is None else float(alpha), _eps_array(tuple(epsilon)),
            len(epsilon), float(gamma), float(label_smoothing), int(reduction == "mean"), _ptr(loss),
            _ptr(partial), _ptr(grad if compute_grad else None), threads, ctypes.byref(denominator),
            ctypes.byref(bad),
        )  # fmt: skip
        if status:
            raise _index_error(bad.value, length, ignore_index, background=True)
    if loss is not None:
        return loss, grad
    total = partial.sum().to(torch.float32)
    return (total if reduction == "sum" else total / denominator.value), grad


def _index_error(offending: int, num_classes: int, ignore_index: int, *, background: bool) -> IndexError:
    ignore = None if ignore_index == NO_IGNORE else ignore_index
    return IndexError(f"{index_range_message(num_classes, ignore, background=background)}, got {offending}")


# ------------------------------------------------------------------ the backend protocol (kernels.KernelBackend)


def supports_call(x: torch.Tensor, target: torch.Tensor, args: SoftmaxArgs | SigmoidArgs) -> bool:
    softmax_family = isinstance(args, SoftmaxArgs)
    return supports(x, softmax_family or args.is_index, list(args.epsilon), softmax=softmax_family)


def softmax(x: torch.Tensor, target: torch.Tensor, args: SoftmaxArgs, compute_grad: bool):
    """Same contract as :func:`._torch_impl.softmax`."""
    ignore = NO_IGNORE if args.ignore_index is None else args.ignore_index
    return softmax_forward(
        x, target, args.class_weight, args.weight, args.normalizer, list(args.epsilon), args.gamma, ignore,
        args.label_smoothing, args.reduction, compute_grad,
    )  # fmt: skip


def sigmoid(x: torch.Tensor, target: torch.Tensor, args: SigmoidArgs, compute_grad: bool):
    """Same contract as :func:`._torch_impl.sigmoid`."""
    ignore = NO_IGNORE if args.ignore_index is None else args.ignore_index
    return sigmoid_forward(
        x, target, args.is_index, args.weight, args.pos_weight, args.normalizer, args.alpha, list(args.epsilon),
        args.gamma, ignore, args.label_smoothing, args.reduction, compute_grad,
    )  # fmt: skip
