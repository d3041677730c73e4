"""Native CPU kernels (``_native.c``): compiled once per machine with the system C compiler, loaded with ctypes.

Why compiled code on CPU: a chain of whole-tensor torch ops cannot meet the targets (the sigmoid family
needs ~25 element-wise passes against BCE-with-logits' handful), while one C loop per row / per block of
elements, vectorised (inlined exp / log1p / log, glibc's libmvec for the other libm calls) and parallelised with
OpenMP, reads the logits once and writes the gradient once.  The C file has no Python or torch headers, so it
compiles in well under a second:

* cold first call (compile + load): ~2.5 s wall here (four units compiled in parallel, ~4.3 s of CPU on
  two cores); warm cache (load only): a few milliseconds;
* cached in ``$POLYFOCAL_CACHE_DIR`` or ``$XDG_CACHE_HOME/polyfocal`` (default ``~/.cache/polyfocal``),
  keyed by the source, the compiler, its flags and the CPU's feature flags (``-march=native``); written
  atomically, so concurrent processes are safe;
* ``POLYFOCAL_NATIVE_MARCH`` (e.g. ``x86-64-v3``, ``x86-64-v4``) replaces ``-march=native``: the library of another
  instruction-set level, part of the cache key (with ``ATEN_CPU_CAPABILITY=avx2`` for torch, an AVX2 machine is
  reproduced on an AVX-512 one; ``polyfocal bench --matrix --level avx2`` sets both);
* no compiler, a failed build or ``POLYFOCAL_NATIVE=0``: the torch implementation is used instead (same
  results, slower), with one warning when a build fails.

The kernels cover float32, bfloat16 and float16 input (float32 math; the gradient is written in the input
dtype, with no float32 copy of the logits): softmax with class-index targets on ``(N, C)`` or ``(N, C, d1, ...)``
logits, contiguous or class-last in memory (channels_last); sigmoid with dense targets of any shape (float32,
bfloat16, float16, bool/uint8 read in place) or class indices on ``(N, C)`` logits; up to 16 epsilon terms.
``weight`` / ``pos_weight`` / ``normalizer`` broadcast views are read through their strides, not expanded.
Everything else (float64, sigmoid class indices on spatial layouts) goes to the torch implementation.  Unit 4
holds the two-phase form of the softmax family for :mod:`polyfocal.linear_parallel` (:func:`two_phase_stats`,
:func:`two_phase_grad_`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from .._args import Args
from .._validation import index_range_message

__all__ = [
    "WRITES_INTO",
    "available",
    "library",
    "sigmoid",
    "softmax",
    "supports",
    "two_phase_grad_",
    "two_phase_stats",
    "two_phase_supports",
]

#: The optional capability of the backend protocol: ``softmax`` / ``sigmoid`` take ``grad_into=x`` and write the
#: gradient over the logits' storage (``inplace=True`` without a logits-sized buffer).
WRITES_INTO = True

_SOURCE = Path(__file__).with_name("_native.c")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
_MARCH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
_LIBS = ["-lmvec", "-lm"]
_MAX_EPS = 16
_state: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def march() -> str:
    """The ``-march`` of the build: ``$POLYFOCAL_NATIVE_MARCH`` (e.g. ``x86-64-v3``) or ``native``."""
    value = os.environ.get("POLYFOCAL_NATIVE_MARCH", "").strip() or "native"
    if not set(value) <= _MARCH_CHARS:
        raise ValueError(f"expected POLYFOCAL_NATIVE_MARCH to be a -march value such as x86-64-v3, got {value!r}")
    return value


def libmvec() -> bool:
    """Whether the build links glibc's vector math library (SIMD ``expf`` / ``logf`` in the loops that call them):
    glibc on x86_64, or on aarch64 from glibc 2.38 (its first AdvSIMD ``expf`` / ``logf``).  Elsewhere those
    loops call the scalar functions (correct, slower); the exp of the softmax and sigmoid passes and the sigmoid's
    log1p / log are inlined C and vectorise either way."""
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return False
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        return True
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return False
    return machine in ("aarch64", "arm64") and (major, minor) >= (2, 38)


def build_flags() -> list[str]:
    """The compiler flags of the build (``_FLAGS`` with the :func:`march` of this process, ``-DPF_LIBMVEC``)."""
    flags = [f"-march={march()}" if f == "-march=native" else f for f in _FLAGS]
    return [*flags, "-DPF_LIBMVEC"] if libmvec() else flags


def build_libs() -> list[str]:
    return _LIBS if libmvec() else [lib for lib in _LIBS if lib != "-lmvec"]


def _cache_dir() -> Path:
    explicit = os.environ.get("POLYFOCAL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polyfocal"


_PARTS = (1, 2, 3, 4)  # PF_PART units of _native.c (softmax, sigmoid, its detection block, the two-phase
# class-parallel softmax), compiled in parallel


def _build(compiler: str) -> Path:
    """Compile the library once per (source, compiler, flags, CPU) into the cache: the units of ``_PARTS`` in
    parallel processes (the cold build's wall time is about half its CPU time on two cores), then one link."""
    source = _SOURCE.read_bytes()
    flags = build_flags()
    key = hashlib.sha256(
        b"\0".join([source, compiler.encode(), " ".join(flags + build_libs()).encode(), _cpu_flags().encode()])
    )
    target = _cache_dir() / f"native-{platform.machine()}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    tmp = work / "native.so"
    objects = [work / f"part{part}.o" for part in _PARTS]
    compile_flags = [f for f in flags if f != "-shared"]
    procs: list[subprocess.Popen] = []
    try:
        procs = [
            subprocess.Popen(
                [compiler, *compile_flags, f"-DPF_PART={part}", "-c", str(_SOURCE), "-o", str(obj)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for part, obj in zip(_PARTS, objects, strict=True)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            if proc.returncode:
                raise subprocess.CalledProcessError(proc.returncode, proc.args, stderr=err)
        subprocess.run(
            [compiler, *flags, *map(str, objects), "-o", str(tmp), *build_libs()],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
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
    if lib is not None:  # one argument: the address of a _SoftmaxArgs / _SigmoidArgs
        for entry in (lib.pf_softmax_packed, lib.pf_sigmoid_packed):
            entry.restype, entry.argtypes = ctypes.c_int, [ctypes.c_void_p]
    _state["lib"] = lib
    return lib


def available() -> bool:
    return library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=256)
def _eps_array(epsilon: tuple[float, ...]):
    return (ctypes.c_double * max(len(epsilon), 1))(*epsilon)


# dtype codes of the C kernels (DT_* in _native.c): logits and gradient, dense sigmoid targets
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_TARGET_DTYPES = {**_DTYPES, torch.uint8: 3, torch.bool: 3}
_VARIANTS = {"poly": 0, "varifocal": 2, "quality": 3}  # 1: "poly" with gamma_neg / clip (the asymmetric loss)


_SCALAR = torch.empty((), dtype=torch.float32)  # empty_like of it: the cheapest new 0-D float32 tensor


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float32).contiguous()


def supports(x: torch.Tensor, target: torch.Tensor, args: Args) -> bool:
    """Whether these kernels cover the call (else the op uses the torch implementation): CPU float32, bfloat16
    or float16 logits; softmax with class dim 1 of any rank; sigmoid dense of any shape, or class indices on
    ``(N, C)``."""
    if not x.is_cpu or x.dtype not in _DTYPES or len(args.epsilon) > _MAX_EPS or not available():
        return False
    if args.softmax:
        return x.ndim >= 2 and x.shape[1] > 0
    return not args.is_index or x.ndim == 2


def _struct(name: str, fields: str, doc: str) -> type[ctypes.Structure]:
    """A ctypes mirror of a C argument struct of ``_native.c``: ``fields`` is ``"name:kind ..."`` in the struct's
    order, kind ``p`` (pointer, ``None`` for NULL), ``i`` (int64) or ``d`` (double); every field is 8 bytes."""
    kinds = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "d": ctypes.c_double}
    pairs = [field.split(":") for field in fields.split()]
    return type(name, (ctypes.Structure,), {"_fields_": [(n, kinds[k]) for n, k in pairs], "__doc__": doc})


#: ``pf_softmax_args`` / ``pf_sigmoid_args`` of ``_native.c``, field for field (its ``_Static_assert`` pins the size;
#: the reference tests, which exercise every field, pin the order).  A call builds one with a single constructor
#: call and passes its address: ctypes converts one argument instead of 25 / 34 (the 8x10 softmax call through ctypes,
#: C included: 4.4 -> 2.5 us, of which building the struct is 1.4 us and the C kernel 1.1 us).
_SoftmaxArgs = _struct(
    "_SoftmaxArgs",
    "x:p xdt:i y:p a:p w:p norm:p eps:p n_eps:i gamma:d ls:d ignore_index:i N:i C:i S:i mean:i loss_out:p out:p g:p "
    "nthreads:i bad:i bias:p margin:p logit_scale:d z_loss:d softcap:d",
    "The arguments of pf_softmax (see pf_softmax_args in _native.c).",
)
_SigmoidArgs = _struct(
    "_SigmoidArgs",
    "x:p xdt:i t:p tdt:i y:p ignore_index:i N:i L:i w:p ws0:i ws1:i pw:p ps0:i ps1:i norm:p ns0:i ns1:i has_alpha:i "
    "alpha:d eps:p n_eps:i gamma:d ls:d mean:i loss:p out:p g:p nthreads:i bad:i variant:i gamma_neg:d clip:d "
    "iou_weighted:i score:p",
    "The arguments of pf_sigmoid (see pf_sigmoid_args in _native.c).",
)


def _softmax_layout(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` as the kernel reads it and the number S of spatial positions it takes per (n, c): a contiguous
    ``(N, C, *)`` tensor gives S = prod(*); a class-last memory layout (channels_last, or ``movedim(1, -1)``
    of a contiguous tensor) is read as ``(N * prod(*), C)`` rows, S = 1.  Anything else is made contiguous."""
    if x.ndim == 2 or x.is_contiguous():
        return x, math.prod(x.shape[2:])
    if x.movedim(1, -1).is_contiguous():
        return x, 1
    x = x.contiguous()
    return x, math.prod(x.shape[2:])


def _scalars(args: Args) -> tuple:
    """The scalar C arguments of ``args`` (the softmax kernel's), converted once per argument object."""
    found = args._memo.get("native")
    if found is None:
        eps = _eps_array(args.epsilon)  # kept alive by the memo (and the lru_cache) while its address is used
        found = (ctypes.addressof(eps), len(args.epsilon), float(args.gamma), float(args.label_smoothing),
                 args.ignore_code, int(args.reduction == "mean"), float(args.logit_scale), float(args.z_loss),
                 eps)  # fmt: skip
        args._memo["native"] = found
    return found


def softmax(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool, grad_into=None):
    """Same contract as :func:`._torch_impl.softmax`; ``grad_into=x`` writes the gradient over ``x`` (the
    kernel reads each row or tile into scratch before writing it).  ``softcap`` and the long-tail options (``bias =
    tau log prior``, ``margin``, ``logit_scale``, ``z_loss``) are applied by the kernel as it loads the logits."""
    lib = library()
    x, spatial = _softmax_layout(x)
    if grad_into is not None and grad_into.data_ptr() != x.data_ptr():
        grad_into = None  # a copy was made for the kernel: it writes there, and the caller copies it over
    y = target if target.is_contiguous() else target.contiguous()
    rows, num_classes = y.numel(), x.shape[1]
    a, w, b, mg = _f32(args.class_weight), _f32(args.weight), _f32(args.bias), _f32(args.margin)
    norm = None if args.normalizer is None else _f32(torch.broadcast_to(args.normalizer, target.shape))
    none = args.reduction == "none"
    out = torch.empty(target.shape, dtype=torch.float32) if none else torch.empty_like(_SCALAR)  # rows / 0-D total
    grad = grad_into if grad_into is not None else torch.empty_like(x) if compute_grad else None  # x's layout
    eps, n_eps, gamma, ls, ignore, mean, scale, z_loss, _ = _scalars(args)
    call = _SoftmaxArgs(
        x.data_ptr(), _DTYPES[x.dtype], y.data_ptr(), _ptr(a), _ptr(w), _ptr(norm), eps, n_eps, gamma, ls, ignore,
        rows if spatial == 1 else x.shape[0], num_classes, spatial, mean, out.data_ptr() if none else None,
        None if none else out.data_ptr(), _ptr(grad), torch.get_num_threads(), 0, _ptr(b), _ptr(mg), scale, z_loss,
        args.softcap,
    )  # fmt: skip
    status = lib.pf_softmax_packed(ctypes.addressof(call))
    if status == 1:
        raise _index_error(call.bad, num_classes, args.ignore_index, background=False)
    if status:
        raise MemoryError("polyfocal: the native softmax kernel could not allocate its scratch rows")
    return out, x.new_empty(0) if grad is None else grad  # "mean": the rows carry 1/denominator


def _strided(v: torch.Tensor | None, n: int, length: int) -> tuple[torch.Tensor | None, int, int]:
    """A float32 vector broadcast to x's shape as the kernel addresses it: ``v[row * s0 + col * s1]`` over x
    viewed as ``(n, length)``.  Broadcast views keep their zero strides (no logits-sized copy) wherever they
    fold into that 2-D view; other layouts are made contiguous."""
    if v is None:
        return None, 0, 0
    if v.dtype != torch.float32:
        v = v.to(torch.float32)
    try:
        v2 = v.view(n, length)
    except RuntimeError:
        v2 = v.contiguous().view(n, length)
    return v2, v2.stride(0), v2.stride(1)


def sigmoid(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool, grad_into=None):
    """Same contract as :func:`._torch_impl.sigmoid`; the detection members through ``variant`` / ``gamma_neg`` /
    ``clip`` / ``iou_weighted`` / ``score``; ``grad_into=x`` writes the gradient over ``x`` (each block is read
    completely before its gradient is stored)."""
    lib = library()
    x = x if x.is_contiguous() else x.contiguous()
    if grad_into is not None and grad_into.data_ptr() != x.data_ptr():
        grad_into = None  # a contiguous copy was made: the kernel writes there, and the caller copies it over
    length = x.shape[-1] if x.ndim else 1
    n = x.numel() // length if length else 0
    w, ws0, ws1 = _strided(args.weight, n, length)
    pw, ps0, ps1 = _strided(args.pos_weight, n, length)
    norm, ns0, ns1 = _strided(args.normalizer, n, length)
    if args.is_index:
        y, t, t_code = (target if target.is_contiguous() else target.contiguous()), None, 0
    else:
        y, t = None, target
        if t.dtype not in _TARGET_DTYPES:  # int 0/1 targets: one byte per element
            t = t.to(torch.uint8 if not t.dtype.is_floating_point else torch.float32)
        t = t if t.is_contiguous() else t.contiguous()
        t_code = _TARGET_DTYPES[t.dtype]
    none = args.reduction == "none"
    out = torch.empty(x.shape, dtype=torch.float32) if none else torch.empty_like(_SCALAR)  # elements / 0-D result
    grad = grad_into if grad_into is not None else torch.empty_like(x) if compute_grad else None
    if not x.numel():
        if not none:
            out.fill_(float("nan") if args.reduction == "mean" else 0.0)  # a mean over nothing is nan, as in torch
        return out, x.new_empty(0) if grad is None else grad
    code = _VARIANTS[args.variant]
    if code == 0 and args.is_detection:
        code = 1  # the asymmetric loss
    score = None if args.score is None else args.score.to(torch.float32).contiguous()
    alpha, gamma = args.alpha, args.gamma
    eps = _eps_array(args.epsilon)
    call = _SigmoidArgs(
        x.data_ptr(), _DTYPES[x.dtype], _ptr(t), t_code, _ptr(y), args.ignore_code, n, length, _ptr(w), ws0, ws1,
        _ptr(pw), ps0, ps1, _ptr(norm), ns0, ns1, int(alpha is not None), 0.0 if alpha is None else float(alpha),
        ctypes.addressof(eps), len(args.epsilon), float(gamma), float(args.label_smoothing),
        int(args.reduction == "mean"), out.data_ptr() if none else None, None if none else out.data_ptr(),
        _ptr(grad), torch.get_num_threads(), 0, code, float(gamma if args.gamma_neg is None else args.gamma_neg),
        float(args.clip), int(args.iou_weighted), _ptr(score),
    )  # fmt: skip
    status = lib.pf_sigmoid_packed(ctypes.addressof(call))
    if status:
        raise _index_error(call.bad, length, args.ignore_index, background=True)
    return out, x.new_empty(0) if grad is None else grad


def _index_error(offending: int, num_classes: int, ignore_index: int | None, *, background: bool) -> IndexError:
    return IndexError(f"{index_range_message(num_classes, ignore_index, background=background)}, got {offending}")


# ------------------------------------------------ the two-phase form for class-parallel linear + loss (PF_PART 4)


def _two_phase_lib() -> ctypes.CDLL | None:
    """The library with the argument types of ``pf_lp_stats`` / ``pf_lp_grad`` set (once)."""
    lib = library()
    if lib is not None and "two_phase" not in _state:
        _p, _i, _i64, _d = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double
        lib.pf_lp_stats.restype = ctypes.c_int
        lib.pf_lp_stats.argtypes = [_p, _i, _p, _p, _p, _d, _p, _i, _i64, _i64, _p, _i]
        lib.pf_lp_grad.restype = ctypes.c_int
        lib.pf_lp_grad.argtypes = [_p, _i, _p, _p, _p, _d, _p, _p, _p, _p, _p, _i64, _i64, _i]
        _state["two_phase"] = True
    return lib


def two_phase_supports(z: torch.Tensor) -> bool:
    """Whether :func:`two_phase_stats` / :func:`two_phase_grad_` take this ``(rows, V_r)`` chunk: a contiguous CPU
    float32 / bfloat16 / float16 tensor, with the library built."""
    return z.device.type == "cpu" and z.dtype in _DTYPES and z.ndim == 2 and z.is_contiguous() and available()


def _two_phase_common(z, target_local, bias, margin):
    v = z.shape[1]
    t = target_local if target_local.dtype == torch.int64 and target_local.is_contiguous() else (
        target_local.to(torch.int64).contiguous())  # fmt: skip
    b = torch.zeros(v, dtype=torch.float32) if bias is None else _f32(bias)
    return t, b, _f32(margin)


def two_phase_stats(z, target_local, *, bias=None, margin=None, logit_scale=1.0, class_weight=None,
                    label_smoothing=False):  # fmt: skip
    """Phase 1 over a ``(rows, V_r)`` chunk of local logits ``z`` (read only): a ``(4, rows)`` float32 tensor of
    the local max ``M`` of ``z' = s ((z + bias) - margin_t onehot_t)``, ``sum_{c != t} exp(z'_c - M)``, ``z'_t``
    (0 where ``target_local`` is -1: not this shard's class, or an ignored row) and, with ``label_smoothing``,
    ``sum_c a_c z'_c`` (``a = class_weight``, or 1); see ``pf_lp_stats`` in ``_native.c``."""
    lib = _two_phase_lib()
    rows, v = z.shape
    t, b, mg = _two_phase_common(z, target_local, bias, margin)
    a = _f32(class_weight) if label_smoothing else None
    st = torch.empty(4, rows, dtype=torch.float32)
    status = lib.pf_lp_stats(z.data_ptr(), _DTYPES[z.dtype], t.data_ptr(), b.data_ptr(), _ptr(mg), float(logit_scale),
                             _ptr(a), int(bool(label_smoothing)), rows, v, st.data_ptr(),
                             torch.get_num_threads())  # fmt: skip
    if status:
        raise MemoryError("polyfocal: the native two-phase kernel could not allocate its scratch rows")
    return st


def two_phase_grad_(z, target_local, lse, coef, k1, k2, *, bias=None, margin=None, logit_scale=1.0,
                    class_weight=None):  # fmt: skip
    """Phase 2: writes ``dL/dz'_c = coef exp(z'_c - lse) - k1 onehot_t - k2 a_c`` per row over ``z`` (in its
    dtype; ``a = class_weight`` or 1; ``k2`` is 0 without label smoothing) from the per-row global ``lse`` and
    coefficients (``(rows,)`` tensors); a row whose three coefficients are 0 is written as zeros.  Returns ``z``."""
    lib = _two_phase_lib()
    rows, v = z.shape
    t, b, mg = _two_phase_common(z, target_local, bias, margin)
    lse, coef, k1, k2 = (_f32(u) for u in (lse, coef, k1, k2))
    a = _f32(class_weight)  # held until the call returns
    status = lib.pf_lp_grad(z.data_ptr(), _DTYPES[z.dtype], t.data_ptr(), b.data_ptr(), _ptr(mg), float(logit_scale),
                            _ptr(a), lse.data_ptr(), coef.data_ptr(), k1.data_ptr(), k2.data_ptr(),
                            rows, v, torch.get_num_threads())  # fmt: skip
    if status:
        raise MemoryError("polyfocal: the native two-phase kernel could not allocate its scratch rows")
    return z
