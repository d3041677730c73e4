"""``polyfocal bench``: forward+backward time and peak extra memory of the loss family against torch baselines.

Workloads (fixed seed, identical data on every device):

* **softmax**: logits ``N x C`` (default 16384 x 1000), int64 class targets; ``ce+weight+ignore+ls`` uses a
  copy with every 10th row set to ``ignore_index=-100`` and a class-weight vector.
* **sigmoid**: logits ``N x C`` (default 100000 x 80), dense 0/1 targets in the logits' dtype with ~1%
  positives, and for ``sigmoid-focal-index`` class-index targets in ``[0, C]`` (``C`` = background, ~90%).

Every callable runs ``loss = f(x, ...); loss.backward()`` on a leaf ``x`` with ``requires_grad`` (``x.grad``
is reset to ``None`` between calls, outside the timed region), except the softmax unit ``torch-softmax``,
one forward ``torch.softmax(x, 1)`` under ``no_grad``.  Units: ``torch-softmax`` (softmax family) and
``torch-bce`` = ``F.binary_cross_entropy_with_logits`` forward+backward (sigmoid family); each row is also
compared with a reference baseline: ``F.cross_entropy`` (softmax) or the torchvision-formula focal loss in
eager torch (sigmoid).  The polyfocal rows call the public API, so they measure whatever it dispatches to.

**Timing**: ``warmup`` untimed rounds, then ``repeats`` rounds; each round runs every selected callable (both
families) once, in an order reshuffled every round (seeded), so drifts in clock speed, thermal state or
background load hit all callables alike.  Each call is timed alone with ``time.perf_counter`` (on CUDA with
``torch.cuda.synchronize()`` before and after, i.e. launch overhead included, as a training step sees it).
The reported time is the per-callable median; a ratio is that median over the median of the unit or
reference baseline *from the same run*.

**Peak extra memory** (in logits' bytes; the input gradient alone is 1.0):

* CPU: each callable runs in its own fresh process, forked (two at a time, one torch thread each) from a
  child that has imported torch and run each callable on 8 rows with one thread (:func:`_memory_zygote`).
  It runs one warm-up forward+backward on a 64-row slice (lazy initialisations; a full-size warm-up could
  leave caches sized by the input behind and hide them), builds the inputs, writes ``5`` to
  ``/proc/self/clear_refs`` (resets the peak RSS ``VmHWM`` to the current RSS), reads ``VmRSS`` as the base,
  runs one forward+backward and reads ``VmHWM``; extra = ``(VmHWM - base) / logits bytes``.  The child fixes
  glibc's mmap threshold at 128 KiB with ``mallopt`` (which also stops the dynamic threshold from growing to
  32 MiB after frees), so every tensor-sized buffer is a fresh ``mmap`` that counts in RSS while alive and
  is returned on free; buffers under 128 KiB may be recycled from the heap and go uncounted (negligible
  against the logits).  Skipped, with a note, where ``/proc/self/clear_refs`` is not writable.
* CUDA: in process; inputs exist before ``torch.cuda.reset_peak_memory_stats()``;
  extra = ``(max_memory_allocated - memory_allocated before) / logits bytes``.

On CUDA each row also gets the achieved bandwidth, ``2 * element size * N * C / time`` (read logits, write
gradient), and its share of the peak HBM bandwidth (``--peak-bandwidth`` or a table by device name).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import functional as pf
from . import weights
from .cli import CLIError

__all__ = ["VARIANTS", "Workload", "make_workload", "run_bench", "run_from_args", "run_matrix"]

FAMILIES = ("softmax", "sigmoid")
UNIT = {"softmax": "torch-softmax", "sigmoid": "torch-bce"}
REFERENCE = {"softmax": "torch-ce", "sigmoid": "tv-focal"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEFAULT_SHAPES = {"softmax": (16384, 1000), "sigmoid": (100000, 80)}
# GB/s by device-name fragments, first match wins.
PEAK_BANDWIDTH = (
    (("H100", "PCIe"), 2000.0),
    (("H100", "NVL"), 3900.0),
    (("H100",), 3350.0),
    (("H200",), 4800.0),
    (("A100", "80GB", "PCIe"), 1935.0),
    (("A100", "80GB"), 2039.0),
)


@dataclass
class Workload:
    """Inputs of one family: leaf logits ``x`` and the targets / weights its callables use."""

    family: str
    x: torch.Tensor
    target: torch.Tensor  # softmax: int64 (N,); sigmoid: dense 0/1 in x's dtype, (N, C)
    target_ignore: torch.Tensor | None = None  # softmax: every 10th row -100
    weight: torch.Tensor | None = None  # softmax: class weights (C,)
    target_index: torch.Tensor | None = None  # sigmoid: int64 (N,) in [0, C], C = background


def make_workload(
    family: str, shape: Sequence[int], dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> Workload:
    """Build a family's inputs from a fixed seed (on the CPU, then moved, so every device sees the same data)."""
    n, c = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(device=device, dtype=dtype).requires_grad_()
    if family == "softmax":
        y = torch.randint(0, c, (n,), generator=g)
        y_ign = y.clone()
        y_ign[::10] = -100
        w = torch.rand(c, generator=g) + 0.5
        return Workload(family, x, y.to(device), y_ign.to(device), w.to(device=device, dtype=dtype))
    dense = (torch.rand(n, c, generator=g) < 0.01).to(device=device, dtype=dtype)
    idx = torch.where(torch.rand(n, generator=g) < 0.1, torch.randint(0, c, (n,), generator=g), c)
    return Workload(family, x, dense, target_index=idx.to(device))


def tv_focal(x: torch.Tensor, t: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """torchvision's ``sigmoid_focal_loss`` formula in eager torch, reduction mean (not imported from torchvision)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean()


def eager_poly1_focal(x: torch.Tensor, t: torch.Tensor, epsilon: float = 1.0, gamma: float = 2.0) -> torch.Tensor:
    """The seed-style eager Poly-1 focal loss: torchvision focal (alpha .25) + ``epsilon * (1 - p_t)^(gamma+1)``."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    fl = (0.25 * t + 0.75 * (1 - t)) * ce * ((1 - p_t) ** gamma)
    return (fl + epsilon * (1 - p_t) ** (gamma + 1)).mean()


def eager_poly1(x: torch.Tensor, y: torch.Tensor, epsilon: float = 2.0) -> torch.Tensor:
    """The seed-snippet eager Poly-1 cross-entropy: ``CE + epsilon * (1 - p_t)`` with softmax + gather."""
    p_t = torch.softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    return (F.cross_entropy(x, y, reduction="none") + epsilon * (1 - p_t)).mean()


@dataclass(frozen=True)
class Variant:
    """One benchmarked callable: ``fn(workload) -> loss`` (forward+backward unless ``backward`` is false)."""

    name: str
    family: str
    kind: str  # "baseline" | "polyfocal"
    description: str
    fn: Callable[[Workload], torch.Tensor]
    backward: bool = True


_FL = {"gamma": 2.0, "alpha": 0.25}
_TABLE: dict[tuple[str, str], dict[str, tuple[str, Callable[[Workload], torch.Tensor]]]] = {
    ("softmax", "baseline"): {
        "torch-softmax": ("torch.softmax(x, 1), forward only", lambda w: torch.softmax(w.x, 1)),
        "torch-ce": ("F.cross_entropy", lambda w: F.cross_entropy(w.x, w.target)),
        "eager-poly1": ("eager CE + 2(1 - p_t), softmax + gather", lambda w: eager_poly1(w.x, w.target)),
    },
    ("softmax", "polyfocal"): {
        "ce": ("cross_entropy", lambda w: pf.cross_entropy(w.x, w.target)),
        "ce+weight+ignore+ls": (
            "cross_entropy(weight, 10% ignored, label_smoothing=.1)",
            lambda w: pf.cross_entropy(w.x, w.target_ignore, w.weight, label_smoothing=0.1),
        ),
        "focal": ("softmax_focal_loss(gamma=2)", lambda w: pf.softmax_focal_loss(w.x, w.target, gamma=2.0)),
        "focal-g0.5": ("softmax_focal_loss(gamma=.5)", lambda w: pf.softmax_focal_loss(w.x, w.target, gamma=0.5)),
        "poly1": ("poly1_cross_entropy(epsilon=2)", lambda w: pf.poly1_cross_entropy(w.x, w.target, epsilon=2.0)),
        "polyN": ("poly_loss(epsilon=[1, .5])", lambda w: pf.poly_loss(w.x, w.target, epsilon=[1.0, 0.5])),
        "poly1-focal-softmax": (
            "softmax_focal_loss(gamma=2, epsilon=1)",
            lambda w: pf.softmax_focal_loss(w.x, w.target, gamma=2.0, epsilon=1.0),
        ),
        "logit-adjusted": (
            "logit_adjusted_loss(prior=counts, tau=1): ce's cost + a per-column bias",
            lambda w: pf.logit_adjusted_loss(w.x, w.target, prior=w.weight),
        ),
        "ldam": (
            "ldam_loss(margin=ldam_margins(counts), logit_scale=30)",
            lambda w: pf.ldam_loss(w.x, w.target, margin=weights.ldam_margins(w.weight), logit_scale=30.0),
        ),
        "ce+z-loss": ("cross_entropy(z_loss=1e-4)", lambda w: pf.cross_entropy(w.x, w.target, z_loss=1e-4)),
    },
    ("sigmoid", "baseline"): {
        "torch-bce": (
            "F.binary_cross_entropy_with_logits",
            lambda w: F.binary_cross_entropy_with_logits(w.x, w.target),
        ),
        "tv-focal": ("torchvision-formula focal loss, eager", lambda w: tv_focal(w.x, w.target)),
        "eager-poly1-focal": ("seed-style eager Poly-1 focal loss", lambda w: eager_poly1_focal(w.x, w.target)),
    },
    ("sigmoid", "polyfocal"): {
        "sigmoid-focal": (
            "sigmoid_focal_loss(gamma=2, alpha=.25)",
            lambda w: pf.sigmoid_focal_loss(w.x, w.target, **_FL),
        ),
        "sigmoid-focal-g1.5": (
            "sigmoid_focal_loss(gamma=1.5, alpha=.25)",
            lambda w: pf.sigmoid_focal_loss(w.x, w.target, gamma=1.5, alpha=0.25),
        ),
        "sigmoid-poly1-focal": (
            "poly1_focal_loss(epsilon=1, gamma=2, alpha=.25)",
            lambda w: pf.poly1_focal_loss(w.x, w.target, epsilon=1.0, **_FL),
        ),
        "sigmoid-focal-index": (
            "sigmoid_focal_loss, index targets, C = background",
            lambda w: pf.sigmoid_focal_loss(w.x, w.target_index, **_FL),
        ),
        "asymmetric": (
            "asymmetric_loss(gamma_pos=0, gamma_neg=4, clip=.05), 0/1 targets",
            lambda w: pf.asymmetric_loss(w.x, w.target),
        ),
        "varifocal": ("varifocal_loss(alpha=.75, gamma=2), 0/1 scores", lambda w: pf.varifocal_loss(w.x, w.target)),
        "quality-focal": ("quality_focal_loss(beta=2), 0/1 scores", lambda w: pf.quality_focal_loss(w.x, w.target)),
    },
}
VARIANTS: dict[str, Variant] = {
    name: Variant(name, family, kind, desc, fn, name != "torch-softmax")
    for (family, kind), entries in _TABLE.items()
    for name, (desc, fn) in entries.items()
}


def _run_once(v: Variant, wl: Workload) -> Any:
    if not v.backward:
        with torch.no_grad():
            return v.fn(wl)
    loss = v.fn(wl)
    loss.backward()
    return loss


def _select(variants: Sequence[str] | None, family: str) -> list[str]:
    if family not in (*FAMILIES, "all"):
        raise CLIError(f"--family: expected softmax, sigmoid or all, got {family!r}")
    fams = FAMILIES if family == "all" else (family,)
    if variants is None:
        return [n for n, v in VARIANTS.items() if v.family in fams]
    unknown = [n for n in variants if n not in VARIANTS]
    if unknown:
        raise CLIError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    picked = {n for n in variants if VARIANTS[n].family in fams}
    if not picked:
        raise CLIError(f"no selected variant is in family {family!r}")
    for n in list(picked):  # each family present needs its unit and reference baseline
        picked |= {UNIT[VARIANTS[n].family], REFERENCE[VARIANTS[n].family]}
    return [n for n in VARIANTS if n in picked]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _fixed_mmap_threshold() -> None:
    with contextlib.suppress(OSError, AttributeError):  # glibc: fixed 128 KiB mmap threshold, see module doc
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _peak_extra(run: Callable[[], Any], logits: torch.Tensor) -> float:
    """Extra peak RSS of ``run()`` in ``logits``' bytes: clear_refs=5 resets VmHWM to the current RSS."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    out = run()
    peak = _status_kib("VmHWM")
    del out
    return (peak - base) * 1024 / (logits.numel() * logits.element_size())


def _memory_child(spec: dict[str, Any]) -> float:
    """Run in a fresh process: extra peak RSS of one forward+backward of ``spec["name"]``, in logits' bytes."""
    _fixed_mmap_threshold()
    torch.set_num_threads(spec["threads"])
    v = VARIANTS[spec["name"]]
    n, c = spec["shape"]
    small = make_workload(v.family, (min(n, 64), c), DTYPES[spec["dtype"]])
    _run_once(v, small)  # warm-up: lazy initialisations
    del small
    wl = make_workload(v.family, (n, c), DTYPES[spec["dtype"]])
    return _peak_extra(lambda: _run_once(v, wl), wl.x)


def _fork_each(specs: list[dict[str, Any]], child: Callable[[dict[str, Any]], float], at_once: int) -> list:
    """Run ``child(spec)`` in one forked grandchild per spec, ``at_once`` at a time; ``None`` where one failed."""
    results: dict[int, Any] = {}
    pending, running = list(enumerate(specs)), {}
    while pending or running:
        while pending and len(running) < at_once:
            i, spec = pending.pop(0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover (grandchild)
                code = 1
                try:
                    os.close(r)
                    os.write(w, json.dumps(child(spec)).encode())
                    code = 0
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(w)
            running[pid] = (i, r)
        pid, status = os.wait()
        i, r = running.pop(pid)
        with os.fdopen(r) as f:
            data = f.read()
        results[i] = json.loads(data) if status == 0 and data else None
    return [results[i] for i in range(len(specs))]


def _launch_zygote(entry: str, specs: list[dict[str, Any]]) -> list[float | None]:
    """Run ``polyfocal.bench.<entry>(specs as JSON)`` in a fresh interpreter and read its JSON list back."""
    import subprocess

    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = f"import sys, polyfocal.bench as b; b.{entry}(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(specs)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return [None] * len(specs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_zygote(specs_json: str) -> None:
    """Child-process entry: fork one grandchild per spec (two at a time), print the results as JSON.

    This process imports torch and runs each callable once on 8 rows with one thread (lazy imports and
    registrations happen once, here), so forking it is safe (no OpenMP pool exists) and each grandchild starts
    from the same small heap without paying those costs again.
    """
    specs = json.loads(specs_json)
    torch.set_num_threads(1)  # no OpenMP pool before fork
    for spec in specs:  # lazy imports / registrations once here, not in every child (8 rows, negligible heap)
        v = VARIANTS[spec["name"]]
        _run_once(v, make_workload(v.family, (8, spec["shape"][1]), DTYPES[spec["dtype"]]))
    gc.collect()
    print(json.dumps(_fork_each(specs, _memory_child, at_once=2)))


def cpu_peak_memory(
    names: Sequence[str], shapes: dict[str, tuple[int, int]], dtype: str = "float32"
) -> list[float | None]:
    """Extra peak memory of each callable (``None`` where a child failed), each in a fresh forked process."""
    specs = [{"name": n, "shape": list(shapes[VARIANTS[n].family]), "dtype": dtype, "threads": 1} for n in names]
    return _launch_zygote("_memory_zygote", specs)


def _cuda_peak_memory(run: Callable[[], Any], logits: torch.Tensor) -> float:
    """Extra peak CUDA memory of ``run()`` (after one warm-up call) in ``logits``' bytes."""
    run()
    logits.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del out
    logits.grad = None
    return extra / (logits.numel() * logits.element_size())


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = None
    return {"polyfocal": __version__, "torch": torch.__version__, "python": platform.python_version(), "triton": triton}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def simd_level(device: str = "cpu") -> str:
    """The CPU's vector level as torch's own kernels use it (``torch.backends.cpu.get_cpu_capability()``, e.g.
    ``AVX512``, ``AVX2``) and whether the CPU has AVX-512 at all: ratios to torch's losses depend on both (our
    native kernels are compiled with ``-march=native``, torch's with its dispatch level)."""
    if device != "cpu":
        return "-"
    torch_level = torch.backends.cpu.get_cpu_capability()
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^flags\s*:\s*(.+)$", f.read(), re.M)
        flags = m.group(1) if m else ""
    cpu = "AVX-512" if " avx512f" in f" {flags}" else "AVX2" if " avx2" in f" {flags}" else platform.machine()
    return f"torch {torch_level}, CPU {cpu}"


def peak_bandwidth_for(name: str) -> float | None:
    """Peak HBM bandwidth in GB/s from a small table by device name, or ``None``.

    >>> peak_bandwidth_for("NVIDIA H100 80GB HBM3"), peak_bandwidth_for("NVIDIA H100 PCIe"), peak_bandwidth_for("x")
    (3350.0, 2000.0, None)
    """
    for parts, gbs in PEAK_BANDWIDTH:
        if all(p in name for p in parts):
            return gbs
    return None


def run_bench(
    *,
    device: str = "cpu",
    variants: Sequence[str] | None = None,
    family: str = "all",
    softmax_shape: tuple[int, int] = DEFAULT_SHAPES["softmax"],
    sigmoid_shape: tuple[int, int] = DEFAULT_SHAPES["sigmoid"],
    dtype: torch.dtype | str = torch.float32,
    repeats: int = 5,
    warmup: int = 1,
    memory: bool = True,
    threads: int | None = None,
    peak_bandwidth: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time (and measure the memory of) the selected callables; returns the JSON-ready result (see module doc)."""
    dtype_name = dtype if isinstance(dtype, str) else next((k for k, d in DTYPES.items() if d == dtype), str(dtype))
    if dtype_name not in DTYPES:
        raise CLIError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype_name!r}")
    if device not in ("cpu", "cuda"):
        raise CLIError(f"--device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available to torch")
    if repeats < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise CLIError(f"expected repeats >= 1, warmup >= 0, threads >= 1; got {repeats}, {warmup}, {threads}")
    names = _select(variants, family)
    shapes = {"softmax": tuple(softmax_shape), "sigmoid": tuple(sigmoid_shape)}
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    fams = [f for f in FAMILIES if any(VARIANTS[n].family == f for n in names)]
    wls = {f: make_workload(f, shapes[f], DTYPES[dtype_name], device) for f in fams}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    order, rng = list(names), random.Random(seed)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + repeats):
            rng.shuffle(order)
            for n in order:
                v, wl = VARIANTS[n], wls[VARIANTS[n].family]
                wl.x.grad = None
                sync()
                t0 = time.perf_counter()
                _run_once(v, wl)
                sync()
                if r >= warmup:
                    times[n].append(time.perf_counter() - t0)
    finally:
        for wl in wls.values():
            wl.x.grad = None
        if gc_was_enabled:
            gc.enable()

    timing_s, start = time.perf_counter() - start, time.perf_counter()
    mem: dict[str, float | None] = dict.fromkeys(names)
    note = "skipped (--no-memory)"
    if memory and device == "cuda":
        for n in names:
            v, wl = VARIANTS[n], wls[VARIANTS[n].family]
            mem[n] = _cuda_peak_memory(lambda v=v, wl=wl: _run_once(v, wl), wl.x)
        note = "torch.cuda.max_memory_allocated - memory_allocated before, after reset_peak_memory_stats"
    elif memory and not os.access("/proc/self/clear_refs", os.W_OK):
        note = "skipped: /proc/self/clear_refs is not writable"
    elif memory:
        mem.update(zip(names, cpu_peak_memory(names, shapes, dtype_name), strict=True))
        note = "VmHWM - VmRSS after clear_refs=5, one fresh forked child per callable"
        failed = [n for n in names if mem[n] is None]
        note += f"; the child failed for {', '.join(failed)}" if failed else ""

    name = _device_name(device)
    if device == "cuda" and peak_bandwidth is None:
        peak_bandwidth = peak_bandwidth_for(name)
    medians = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    for n in names:
        v, x = VARIANTS[n], wls[VARIANTS[n].family].x
        unit, ref = UNIT[v.family], REFERENCE[v.family]
        row: dict[str, Any] = {
            "name": n,
            "family": v.family,
            "kind": v.kind,
            "description": v.description,
            "unit": unit,
            "baseline": ref,
            "median_ms": medians[n] * 1e3,
            "times_ms": [t * 1e3 for t in times[n]],
            "ratio_unit": medians[n] / medians[unit],
            "ratio_baseline": medians[n] / medians[ref],
            "extra_peak_memory": mem[n],
        }
        if device == "cuda":
            gbs = 2 * x.element_size() * x.numel() / medians[n] / 1e9
            row["bandwidth_gbs"] = gbs
            row["bandwidth_pct_peak"] = 100 * gbs / peak_bandwidth if peak_bandwidth else None
        rows.append(row)
    meta = {
        "device": device,
        "device_name": name,
        "simd": simd_level(device),
        **_versions(),
        "threads": threads,
        "dtype": dtype_name,
        "shapes": {f: list(shapes[f]) for f in fams},
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "memory": note,
        "wall_s": {"timing": round(timing_s, 2), "memory": round(time.perf_counter() - start, 2)},
        "peak_bandwidth_gbs": peak_bandwidth,
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {"meta": meta, "results": rows}


def format_table(result: dict[str, Any]) -> str:
    """The plain-text report: a header with device and versions, then one row per callable."""
    m = result["meta"]
    shapes = ", ".join(f"{f} {n}x{c}" for f, (n, c) in m["shapes"].items())
    lines = [
        f"polyfocal bench on {m['device']} ({m['device_name']}; {m.get('simd', '-')}), {m['threads']} threads",
        f"polyfocal {m['polyfocal']}, torch {m['torch']}, python {m['python']}, triton {m['triton'] or '-'}",
        f"{m['dtype']}, {shapes}; forward+backward, median of {m['repeats']} interleaved rounds "
        f"after {m['warmup']} warm-up; memory: {m['memory']}",
    ]
    cuda = m["device"] == "cuda"
    table = [["variant", "family", "ms", "x unit", "x base", "base", "peak mem x logits"]]
    table[0] += ["GB/s", "% peak"] if cuda else []
    for r in result["results"]:
        mem, pct = r["extra_peak_memory"], r.get("bandwidth_pct_peak")
        table.append([r["name"], r["family"], *(f"{r[k]:.2f}" for k in ("median_ms", "ratio_unit", "ratio_baseline"))])
        table[-1] += [r["baseline"], "-" if mem is None else f"{mem:.2f}"]
        table[-1] += [f"{r['bandwidth_gbs']:.0f}", "-" if pct is None else f"{pct:.0f}%"] if cuda else []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines.append("")
    for row in table:  # text columns left-aligned, numbers right-aligned
        cells = [c.ljust(w) if i in (0, 1, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.append(f"units: softmax family {UNIT['softmax']} (forward only), sigmoid family {UNIT['sigmoid']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the --matrix mode

# (family, shape, dtype): the shapes, layouts and dtypes people train with (issue 12's table)
MATRIX_CELLS: tuple[tuple[str, tuple[int, ...], str], ...] = (
    ("softmax", (8, 10), "float32"),
    ("softmax", (64, 100), "float32"),
    ("softmax", (256, 1000), "float32"),
    ("softmax", (16384, 1000), "float32"),
    ("softmax", (16384, 1000), "bfloat16"),
    ("softmax", (8, 21, 96, 96), "float32"),
    ("softmax", (2, 150, 96, 96), "float32"),
    ("sigmoid", (8, 80), "float32"),
    ("sigmoid", (512, 80), "float32"),
    ("sigmoid", (100000, 80), "float32"),
    ("sigmoid", (100000, 80), "bfloat16"),
)
# added on CUDA: a large-vocabulary language-model head (Llama-3 vocabulary), issue 23
MATRIX_CELLS_CUDA: tuple[tuple[str, tuple[int, ...], str], ...] = (("softmax", (8192, 128256), "bfloat16"),)
# row name -> (family, description, fn(x, target)); the first row of a family is torch's own loss
MATRIX_ROWS: dict[str, tuple[str, str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "torch-ce": ("softmax", "F.cross_entropy", lambda x, y: F.cross_entropy(x, y)),
    "ce": ("softmax", "polyfocal.cross_entropy", lambda x, y: pf.cross_entropy(x, y)),
    "focal": ("softmax", "softmax_focal_loss(gamma=2)", lambda x, y: pf.softmax_focal_loss(x, y, gamma=2.0)),
    "poly1": ("softmax", "poly1_cross_entropy(epsilon=1)", lambda x, y: pf.poly1_cross_entropy(x, y, epsilon=1.0)),
    "torch-bce": ("sigmoid", "F.binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits),
    "bce": (
        "sigmoid",
        "poly_loss(activation='sigmoid', epsilon=0) = BCE",
        lambda x, t: pf.poly_loss(x, t, activation="sigmoid", epsilon=0.0),
    ),
    "sigmoid-focal": ("sigmoid", "sigmoid_focal_loss(gamma=2, alpha=.25)", lambda x, t: pf.sigmoid_focal_loss(x, t)),
    "sigmoid-poly1-focal": (
        "sigmoid",
        "poly1_focal_loss(epsilon=1, gamma=2, alpha=.25)",
        lambda x, t: pf.poly1_focal_loss(x, t, epsilon=1.0, gamma=2.0, alpha=0.25),
    ),
}
MATRIX_BASELINE = {"softmax": "torch-ce", "sigmoid": "torch-bce"}
# --level -> (POLYFOCAL_NATIVE_MARCH, ATEN_CPU_CAPABILITY); "native": neither set (the machine's own level)
MATRIX_LEVELS: dict[str, tuple[str | None, str | None]] = {
    "native": (None, None),
    "avx512": ("x86-64-v4", "avx512"),
    "avx2": ("x86-64-v3", "avx2"),
    "sse4": ("x86-64-v2", "default"),
}


def level_environment(level: str) -> dict[str, str]:
    """The environment a process needs to run at ``level`` (see :data:`MATRIX_LEVELS`)."""
    march, capability = MATRIX_LEVELS[level]
    env = {k: v for k, v in os.environ.items() if k not in ("POLYFOCAL_NATIVE_MARCH", "ATEN_CPU_CAPABILITY")}
    if march is not None:
        env["POLYFOCAL_NATIVE_MARCH"] = march
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    return env


def check_level(level: str) -> None:
    """Raise CLIError unless this process runs at ``level``: its native kernels' -march and torch's capability."""
    from .kernels import _native

    march, capability = MATRIX_LEVELS[level]
    if _native.march() != (march or "native"):
        raise CLIError(f"--level {level}: expected native kernels built with -march={march or 'native'}, got "
                       f"-march={_native.march()} (POLYFOCAL_NATIVE_MARCH)")  # fmt: skip
    torch_level = torch.backends.cpu.get_cpu_capability()
    if capability is not None and torch_level.lower() != capability:
        raise CLIError(f"--level {level}: expected torch's CPU capability {capability.upper()}, got {torch_level} "
                       "(this CPU or torch build cannot run at that level)")  # fmt: skip
    if march is not None and _native.library() is None:
        raise CLIError(f"--level {level}: expected the native kernels built with -march={march}, got no library")


def matrix_inputs(family: str, shape: Sequence[int], dtype: str, device: str = "cpu"):
    """A cell's leaf logits and targets (fixed seed): class indices ``(N, *)`` for softmax, dense 0/1 targets
    with ~1% positives in the logits' dtype for sigmoid."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tuple(shape), generator=g).to(device=device, dtype=DTYPES[dtype]).requires_grad_()
    if family == "softmax":
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    else:
        target = (torch.rand(tuple(shape), generator=g) < 0.01).to(device=device, dtype=DTYPES[dtype])
    return x, target


def _matrix_memory_child(spec: dict[str, Any]) -> float:
    """In a fresh process: extra peak RSS of one forward+backward of a matrix row, in logits' bytes."""
    _fixed_mmap_threshold()
    torch.set_num_threads(1)
    fn = MATRIX_ROWS[spec["row"]][2]
    small = [min(d, 8) for d in spec["shape"]]
    fn(*matrix_inputs(spec["family"], small, spec["dtype"])).backward()  # warm-up: lazy initialisations
    x, target = matrix_inputs(spec["family"], spec["shape"], spec["dtype"])
    return _peak_extra(lambda: fn(x, target).backward(), x)


def _matrix_memory_zygote(specs_json: str) -> None:
    """Child-process entry for the matrix: one forked grandchild per spec, one at a time (the cells are large)."""
    specs = json.loads(specs_json)
    torch.set_num_threads(1)
    for spec in specs:  # imports and registrations once, before any fork
        MATRIX_ROWS[spec["row"]][2](*matrix_inputs(spec["family"], [2] * len(spec["shape"]), spec["dtype"])).backward()
    gc.collect()
    print(json.dumps(_fork_each(specs, _matrix_memory_child, at_once=1)))


def _time_rows(fns: dict[str, Callable[[], Any]], sync: Callable[[], None], budget_s: float, rng: random.Random):
    """Interleaved medians: each round runs every callable once (in a reshuffled order), with as many rounds as
    fit ``budget_s`` (at least 5, at most 400) after one warm-up round."""
    for f in fns.values():
        f()
    sync()
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    sync()
    per_round = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(400, max(5, budget_s / per_round)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            sync()
            t = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, rounds


def run_matrix(
    *,
    device: str = "cpu",
    threads: Sequence[int] = (1, 2),
    budget_s: float = 1.0,
    memory: bool = True,
    cells: Sequence[tuple[str, tuple[int, ...], str]] | None = None,
    seed: int = 0,
    level: str = "native",
) -> dict[str, Any]:
    """The benchmark matrix: every cell x row, forward+backward, ratio to torch's own loss on the same input
    (medians of one interleaved run per cell and thread count), and the extra peak memory of each row."""
    if device not in ("cpu", "cuda"):
        raise CLIError(f"--device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available to torch")
    if not threads or any(t < 1 for t in threads):
        raise CLIError(f"--threads: expected positive thread counts, got {list(threads)}")
    if cells is None:
        cells = MATRIX_CELLS + (MATRIX_CELLS_CUDA if device == "cuda" else ())
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    thread_counts = list(threads) if device == "cpu" else [torch.get_num_threads()]
    previous = torch.get_num_threads()
    start = time.perf_counter()
    try:
        for t in thread_counts:
            torch.set_num_threads(t)
            for family, shape, dtype in cells:
                x, target = matrix_inputs(family, shape, dtype, device)
                names = [n for n, (fam, _, _) in MATRIX_ROWS.items() if fam == family]

                def call(fn=None, x=x, target=target):
                    x.grad = None
                    fn(x, target).backward()

                fns = {n: functools.partial(call, MATRIX_ROWS[n][2]) for n in names}
                medians, rounds = _time_rows(fns, sync, budget_s, rng)
                x.grad = None
                base = medians[MATRIX_BASELINE[family]]
                for n in names:
                    rows.append({
                        "cell": f"{family} {'x'.join(map(str, shape))} {dtype}", "family": family,
                        "shape": list(shape), "dtype": dtype, "threads": t, "row": n,
                        "median_us": medians[n] * 1e6, "ratio": medians[n] / base, "rounds": rounds,
                        "extra_peak_memory": None,
                    })  # fmt: skip
                del x, target
    finally:
        torch.set_num_threads(previous)
    timing_s = time.perf_counter() - start
    note = "skipped (--no-memory)"
    if memory and device == "cuda":
        for r in rows:
            x, target = matrix_inputs(r["family"], r["shape"], r["dtype"], device)
            fn = MATRIX_ROWS[r["row"]][2]
            r["extra_peak_memory"] = _cuda_peak_memory(lambda fn=fn, x=x, target=target: fn(x, target).backward(), x)
        note = "torch.cuda.max_memory_allocated - memory_allocated before"
    elif memory and not os.access("/proc/self/clear_refs", os.W_OK):
        note = "skipped: /proc/self/clear_refs is not writable"
    elif memory:  # once per (cell, row): memory does not depend on the thread count; cells under 1 MiB of
        # logits are below what page-granular RSS can resolve (one 4 KiB page is 12x an 8x10 float32 input)
        first = [r for r in rows if r["threads"] == thread_counts[0] and _logits_bytes(r) >= 1 << 20]
        specs = [{"family": r["family"], "shape": r["shape"], "dtype": r["dtype"], "row": r["row"]} for r in first]
        for r, m in zip(first, _launch_zygote("_matrix_memory_zygote", specs), strict=True):
            for other in rows:
                if (other["cell"], other["row"]) == (r["cell"], r["row"]):
                    other["extra_peak_memory"] = m
        note = "VmHWM - VmRSS after clear_refs=5, one fresh forked child per cell and row, 1 thread; '-' under 1 MiB"
    meta = {
        "mode": "matrix",
        "device": device,
        "device_name": _device_name(device),
        "simd": simd_level(device),
        "level": level,
        "native_march": _native_march(),
        **_versions(),
        "threads": thread_counts,
        "budget_s": budget_s,
        "memory": note,
        "wall_s": {"timing": round(timing_s, 2), "memory": round(time.perf_counter() - start - timing_s, 2)},
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {"meta": meta, "results": rows}


def _native_march() -> str:
    from .kernels import _native

    return _native.march()


def _logits_bytes(row: dict[str, Any]) -> int:
    return math.prod(row["shape"]) * DTYPES[row["dtype"]].itemsize


def format_matrix(result: dict[str, Any]) -> str:
    """The matrix as text: one line per cell and thread count (each row's ratio to torch's own loss and its
    extra peak memory in logits' bytes), then the worst polyfocal cell."""
    m = result["meta"]
    lines = [
        f"polyfocal bench --matrix on {m['device']} ({m['device_name']}; {m['simd']}; level "
        f"{m.get('level', 'native')}: native kernels -march={m.get('native_march', 'native')})",
        f"polyfocal {m['polyfocal']}, torch {m['torch']}, python {m['python']}, triton {m['triton'] or '-'}",
        "forward+backward; ratio = median / median of torch's own loss on the same input, one interleaved run "
        f"per cell; memory: {m['memory']}",
        "",
    ]
    table = [["cell", "threads", "torch us", "rows: ratio (peak mem x logits)"]]
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in result["results"]:
        cells.setdefault((r["cell"], r["threads"]), []).append(r)
    worst = None
    for (cell, t), rs in cells.items():
        base = next(r for r in rs if r["row"] == MATRIX_BASELINE[r["family"]])
        parts = []
        for r in rs:
            mem = "-" if r["extra_peak_memory"] is None else f"{r['extra_peak_memory']:.2f}"
            if r is base:
                parts.append(f"{r['row']} ({mem})")
                continue
            parts.append(f"{r['row']} {r['ratio']:.2f}x ({mem})")
            if worst is None or r["ratio"] > worst["ratio"]:
                worst = r
        table.append([cell, str(t), f"{base['median_us']:.0f}", "  ".join(parts)])
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]), row[3]]))
    if worst is not None:
        lines += ["", f"worst cell: {worst['cell']}, {worst['threads']} thread(s), {worst['row']}: "
                  f"{worst['ratio']:.2f}x torch's own loss"]  # fmt: skip
    return "\n".join(lines)


def _shape(text: str, flag: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        n, c = (int(p) for p in parts)
    except ValueError:
        raise CLIError(f"{flag}: expected N,C with two positive integers, got {text!r}") from None
    if n < 1 or c < 1:
        raise CLIError(f"{flag}: expected N,C with two positive integers, got {text!r}")
    return n, c


def run_from_args(args: argparse.Namespace) -> int:
    """The ``bench`` subcommand: validate, run, print the table, write ``--json`` (only after a full run)."""
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise CLIError(f"--json: directory of {args.json!r} does not exist")
    if args.matrix:
        threads = _threads(args.threads_list)
        current = (os.environ.get("POLYFOCAL_NATIVE_MARCH") or None, os.environ.get("ATEN_CPU_CAPABILITY") or None)
        if args.level is not None:
            if current != MATRIX_LEVELS[args.level]:
                return _rerun_at_level(args)  # torch reads ATEN_CPU_CAPABILITY once, at import: a fresh process
            check_level(args.level)
        level = args.level or next((k for k, v in MATRIX_LEVELS.items() if v == current), "custom (environment)")
        result = run_matrix(
            device=args.device,
            threads=threads,
            budget_s=args.budget,
            memory=not args.no_memory,
            level=level,
        )
        print(format_matrix(result))
        _write_json(result, args.json)
        return 0
    result = run_bench(
        device=args.device,
        variants=None if args.variants is None else [v.strip() for v in args.variants.split(",") if v.strip()],
        family=args.family,
        softmax_shape=_shape(args.softmax_shape, "--softmax-shape"),
        sigmoid_shape=_shape(args.sigmoid_shape, "--sigmoid-shape"),
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        threads=args.threads,
        peak_bandwidth=args.peak_bandwidth,
    )
    print(format_table(result))
    _write_json(result, args.json)
    return 0


def _rerun_at_level(args: argparse.Namespace) -> int:
    """``bench --matrix --level L`` in a child process with L's environment (see :func:`level_environment`)."""
    import subprocess

    argv = ["--matrix", "--level", args.level, "--device", args.device, "--matrix-threads", args.threads_list]
    argv += ["--budget", str(args.budget), *(["--no-memory"] if args.no_memory else [])]
    argv += [] if args.json is None else ["--json", args.json]
    cmd = [sys.executable, "-m", "polyfocal._bench_cli", *argv]  # the subcommand alone (python -m entry)
    return subprocess.run(cmd, env=level_environment(args.level), check=False).returncode


def _threads(text: str) -> list[int]:
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise CLIError(f"--matrix-threads: expected comma-separated positive integers, got {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise CLIError(f"--matrix-threads: expected comma-separated positive integers, got {text!r}")
    return counts


def _write_json(result: dict[str, Any], path: str | None) -> None:
    if path is None:
        return
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
