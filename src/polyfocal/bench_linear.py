"""``polyfocal bench --linear``: the fused linear + loss against ``F.linear`` + ``F.cross_entropy`` and torch's
chunked ``F.linear_cross_entropy`` (and Liger-Kernel / Apple CCE when installed, CUDA).

Every row is one forward+backward of a classifier head ``(N, d) x (V, d)`` with gradients for the input and the
weight (``.grad`` reset to ``None`` before each call, so every call allocates its final gradients).

**Time**: ``--repeats`` interleaved rounds (each round runs every row once, in order, after ``--warmup`` untimed
rounds); the median per row, and its ratio to the medians of ``torch-unfused``, ``torch-chunked`` and our own
``fused-ce`` from the same run.

**Peak extra memory**: each row in a fresh process (``python -c``), after a warm-up on 64 rows: the peak beyond
the inputs, the parameters and the final gradients (``h.grad``, ``W.grad``), in MiB.  CPU: ``/proc/self/
clear_refs`` resets the peak RSS ``VmHWM`` to the current RSS, glibc's mmap threshold is fixed at 128 KiB (as in
:mod:`polyfocal.bench`) and extra = ``VmHWM - VmRSS before - gradient bytes``.  CUDA:
``max_memory_allocated - memory_allocated before - gradient bytes``.  Run one shape at a time on a shared
machine: the unfused row holds ``N x V`` logits several times over.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ROWS", "format_linear", "run_linear"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _prior(v: int, device: str) -> torch.Tensor:
    return torch.arange(1, v + 1, device=device, dtype=torch.float64).reciprocal()  # Zipf-like class frequencies


def _ours(**kw: Any) -> Callable[..., torch.Tensor]:
    def run(h, w, y, softcap):
        from polyfocal.linear import linear_poly_loss

        return linear_poly_loss(h, w, y, softcap=softcap, **kw)

    return run


def _unfused(h, w, y, softcap):
    z = F.linear(h, w)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z.float(), y)


def _chunked(h, w, y, softcap):
    if softcap:
        raise RuntimeError("torch's F.linear_cross_entropy has no softcap")
    return F.linear_cross_entropy(h, w, y, options=torch.nn.LinearCrossEntropyOptions())


def _liger(h, w, y, softcap):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(h, w, y, softcap=softcap)


def _cce(h, w, y, softcap):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(h, w, y, softcap=softcap)


# name -> (callable, CUDA only, needs module)
ROWS: dict[str, tuple[Callable[..., torch.Tensor], bool, str | None]] = {
    "torch-unfused": (_unfused, False, None),
    "torch-chunked": (_chunked, False, None),
    "fused-ce": (_ours(epsilon=0.0), False, None),
    "fused-focal": (_ours(gamma=2.0, epsilon=0.0), False, None),
    "fused-poly1": (_ours(epsilon=1.0), False, None),
    "fused-ls0.1": (_ours(epsilon=0.0, label_smoothing=0.1), False, None),
    "fused-z-loss": (_ours(epsilon=0.0, z_loss=1e-4), False, None),
    "fused-la": (None, False, None),  # type: ignore[dict-item]  # needs the prior of V: built in _row
    "liger": (_liger, True, "liger_kernel"),
    "cce": (_cce, True, "cut_cross_entropy"),
}
CE_ROWS = ("torch-unfused", "torch-chunked", "fused-ce")


def _row(name: str, v: int, device: str) -> Callable[..., torch.Tensor]:
    if name == "fused-la":
        prior = _prior(v, device)
        return _ours(epsilon=0.0, prior=prior)
    return ROWS[name][0]


def _available(name: str, device: str) -> bool:
    import importlib.util

    _, cuda_only, module = ROWS[name]
    if cuda_only and device != "cuda":
        return False
    return module is None or importlib.util.find_spec(module) is not None


def _inputs(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(n, d, generator=gen, device=device, dtype=torch.float32).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen, device=device, dtype=torch.float32) / d**0.5).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    return h, w, y


def _once(fn, h, w, y, softcap) -> None:
    h.grad = w.grad = None
    fn(h, w, y, softcap).backward()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _status_kib(key: str) -> int:
    import re

    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))  # type: ignore[union-attr]


def memory_child(spec: dict[str, Any]) -> float:
    """In a fresh process: the extra peak memory (bytes) of one forward+backward of ``spec["row"]``."""
    import ctypes
    import gc

    device = spec["device"]
    if device == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: see polyfocal.bench
    torch.set_num_threads(spec["threads"])
    n, d, v = spec["shape"]
    dtype = _DTYPES[spec["dtype"]]
    fn = _row(spec["row"], v, device)
    small = _inputs(min(n, 64), d, v, dtype, device)
    _once(fn, *small, spec["softcap"])
    del small
    h, w, y = _inputs(n, d, v, dtype, device)
    grad_bytes = (h.numel() + w.numel()) * h.element_size()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _once(fn, h, w, y, spec["softcap"])
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - grad_bytes
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS") * 1024
    _once(fn, h, w, y, spec["softcap"])
    return _status_kib("VmHWM") * 1024 - base - grad_bytes


def _memory(spec: dict[str, Any]) -> float | None:
    code = (
        "import json, sys; from polyfocal.bench_linear import memory_child; "
        "print(memory_child(json.loads(sys.argv[1])))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.split()[-1])


def run_linear(
    shapes: Sequence[tuple[int, int, int]],
    *,
    rows: Sequence[str] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    softcap: float | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Time and peak memory of each row on each shape (see the module docstring); a JSON-ready dict."""
    if threads is not None:
        torch.set_num_threads(threads)
    names = [r for r in (rows or ROWS) if _available(r, device)]
    if softcap:
        names = [r for r in names if r != "torch-chunked"]
    results = []
    for n, d, v in shapes:
        h, w, y = _inputs(n, d, v, _DTYPES[dtype], device)
        fns = {r: _row(r, v, device) for r in names}
        times: dict[str, list[float]] = {r: [] for r in names}
        for round_ in range(warmup + repeats):
            for r in names:
                _sync(device)
                start = time.perf_counter()
                _once(fns[r], h, w, y, softcap)
                _sync(device)
                if round_ >= warmup:
                    times[r].append(time.perf_counter() - start)
        del h, w, y
        med = {r: statistics.median(t) for r, t in times.items()}
        mem: dict[str, float | None] = {}
        if memory:
            for r in names:  # one fresh process at a time
                spec = {"row": r, "shape": [n, d, v], "dtype": dtype, "device": device, "softcap": softcap,
                        "threads": torch.get_num_threads()}  # fmt: skip
                mem[r] = _memory(spec)
        for r in names:
            results.append(
                {
                    "shape": [n, d, v],
                    "row": r,
                    "ms": 1e3 * med[r],
                    "times_ms": [1e3 * t for t in times[r]],
                    "x_unfused": med[r] / med["torch-unfused"] if "torch-unfused" in med else None,
                    "x_chunked": med[r] / med["torch-chunked"] if "torch-chunked" in med else None,
                    "x_fused_ce": med[r] / med["fused-ce"] if "fused-ce" in med else None,
                    "extra_peak_mib": None if mem.get(r) is None else mem[r] / 2**20,
                }
            )
    return {
        "meta": {
            "device": device,
            "dtype": dtype,
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "warmup": warmup,
            "softcap": softcap,
            "torch": torch.__version__,
            "chunk_bytes": os.environ.get("POLYFOCAL_LINEAR_CHUNK_BYTES", "default"),
        },
        "rows": results,
    }


def format_linear(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        f"polyfocal bench --linear: {m['device']}, {m['dtype']}, {m['threads']} threads, softcap {m['softcap']}, "
        f"torch {m['torch']}; forward+backward, median of {m['repeats']} interleaved rounds; extra peak memory "
        "beyond inputs, parameters and final gradients (fresh process per row)",
    ]
    header = ["shape (N,d,V)", "row", "ms", "x unfused", "x chunked", "x fused-ce", "extra MiB"]
    table = [header]

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in result["rows"]:
        table.append([",".join(map(str, r["shape"])), r["row"], f(r["ms"], ".0f"), f(r["x_unfused"], ".2f"),
                      f(r["x_chunked"], ".2f"), f(r["x_fused_ce"], ".2f"), f(r["extra_peak_mib"], ".0f")])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += [
        "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)) for row in table
    ]
    return "\n".join(lines)


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"expected a shape N,d,V of three positive integers, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def run_from_args(args: Any) -> int:
    """``polyfocal bench --linear``: the arguments of :mod:`polyfocal._bench_cli`."""
    from .cli import CLIError

    try:
        shapes = [_shape(s) for s in args.linear_shapes.split(";")]
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.dtype not in _DTYPES:
        raise CLIError(f"expected --dtype in {tuple(_DTYPES)}, got {args.dtype!r}")
    rows = None
    if args.linear_rows:
        rows = [r.strip() for r in args.linear_rows.split(",")]
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise CLIError(f"expected --linear-rows from {', '.join(ROWS)}, got {', '.join(unknown)}")
    result = run_linear(
        shapes,
        rows=rows,
        dtype=args.dtype,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        warmup=args.warmup,
        softcap=args.softcap,
        memory=not args.no_memory,
    )
    print(format_linear(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
