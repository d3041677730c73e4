"""GPU measurements for issue 23 (run by ``scripts/gpu_check.sh``; ``--device cpu --tiny`` is its dry run).

``host``: host time per call (forward + backward) at 8x10 and 64x1000, against ``F.cross_entropy`` /
``F.binary_cross_entropy_with_logits``: the CPU clock around ``K`` back-to-back calls, synchronised before and
after the loop only (so a host-bound call measures its host time), rounds interleaved in a reshuffled order,
median over rounds; plus the kernels one call launches (CUDA profiler).

``bandwidth``: time per forward + backward at large shapes (CUDA events around ``K`` calls, median of rounds),
as a share of the HBM peak counting one read of the logits (+ targets) and one write of the gradient (for
``torch.softmax``: one read and one write); the measured device copy is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import polyfocal as pf

PEAK_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}


def _peak(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _softmax_rows():
    return {
        "F.cross_entropy": lambda x, y: F.cross_entropy(x, y),
        "pf.cross_entropy": lambda x, y: pf.cross_entropy(x, y),
        "pf.softmax_focal_loss": lambda x, y: pf.softmax_focal_loss(x, y, gamma=2.0),
        "pf.poly1_cross_entropy": lambda x, y: pf.poly1_cross_entropy(x, y, epsilon=1.0),
        "pf.cross_entropy(no ignore)": lambda x, y: pf.cross_entropy(x, y, ignore_index=None),
    }


def _sigmoid_rows():
    return {
        "F.bce_with_logits": lambda x, t: F.binary_cross_entropy_with_logits(x, t),
        "pf.sigmoid_focal_loss": lambda x, t: pf.sigmoid_focal_loss(x, t),
        "pf.asymmetric_loss": lambda x, t: pf.asymmetric_loss(x, t),
    }


def _inputs(family: str, shape, dtype, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_()
    if family == "softmax":
        y = torch.randint(0, shape[1], shape[:1], generator=g).to(device)
    else:
        y = (torch.rand(shape, generator=g) < 0.01).to(device=device, dtype=dtype)
    return x, y


def _call(fn, x, y):
    def run():
        x.grad = None
        fn(x, y).backward()

    return run


def _launches(run, device: str) -> int | None:
    if device != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def host(args) -> dict:
    device, sync = args.device, _sync(args.device)
    rng = random.Random(0)
    results = []
    for family, shape in (("softmax", (8, 10)), ("softmax", (64, 1000)), ("sigmoid", (8, 10)), ("sigmoid", (64, 1000))):
        rows = _softmax_rows() if family == "softmax" else _sigmoid_rows()
        x, y = _inputs(family, shape, torch.float32, device)
        runs = {name: _call(fn, x, y) for name, fn in rows.items()}
        for run in runs.values():  # warm-up: compilation, tuning, caches
            for _ in range(5):
                run()
        sync()
        times: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for name in order:
                run = runs[name]
                sync()
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    run()
                sync()
                times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
        base_name = next(iter(rows))
        base = statistics.median(times[base_name])
        for name in runs:
            med = statistics.median(times[name])
            results.append({
                "family": family, "shape": list(shape), "row": name, "us_per_call": med,
                "minus_baseline_us": med - base, "baseline": base_name,
                "spread_us": [min(times[name]), max(times[name])], "launches": _launches(runs[name], device),
            })  # fmt: skip
    print(f"host time per forward+backward ({device}; median of {args.rounds} interleaved rounds of {args.calls} "
          "calls, CPU clock, synchronised outside the loop); target: <= baseline + 20 us")  # fmt: skip
    print(f"{'shape':>14}  {'row':30} {'us/call':>9} {'- base':>8} {'launches':>8}  min-max us")
    for r in results:
        sh = "x".join(map(str, r["shape"]))
        lo, hi = r["spread_us"]
        launches = "-" if r["launches"] is None else r["launches"]
        print(f"{r['family'][:3]} {sh:>10}  {r['row']:30} {r['us_per_call']:9.1f} {r['minus_baseline_us']:+8.1f} "
              f"{launches:>8}  {lo:.1f}-{hi:.1f}")  # fmt: skip
    return {"device": _device_name(device), "rounds": args.rounds, "calls": args.calls, "rows": results}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def _time_ms(run, device: str, calls: int, rounds: int) -> float:
    run()
    run()  # tuning happens on the first call of a new shape
    if device != "cuda":
        t = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            t.append((time.perf_counter() - t0) / calls * 1e3)
        return statistics.median(t)
    torch.cuda.synchronize()
    t = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            run()
        end.record()
        end.synchronize()
        t.append(start.elapsed_time(end) / calls)
    return statistics.median(t)


def bandwidth(args) -> dict:
    device = args.device
    peak = _peak(device)
    if args.tiny:
        cells = [("softmax", (64, 40)), ("softmax", (16, 320)), ("sigmoid", (1000, 8))]
    else:
        cells = [("softmax", (65536, 4000)), ("softmax", (16384, 32000)), ("sigmoid", (1000000, 80))]
    results = []
    copy_gbs = None
    for dtype in (torch.float32, torch.bfloat16):
        for family, shape in cells:
            x, y = _inputs(family, shape, dtype, device)
            logits = x.numel() * x.element_size()
            tgt = y.numel() * y.element_size()
            if copy_gbs is None or (dtype == torch.float32 and family == "softmax" and copy_gbs[1] < logits):
                dst = torch.empty_like(x, requires_grad=False)
                xd = x.detach()
                ms = _time_ms(lambda dst=dst, xd=xd: dst.copy_(xd), device, args.calls, args.rounds)
                copy_gbs = (2 * logits / ms / 1e6, logits)
                del dst
            rows = dict(_softmax_rows() if family == "softmax" else _sigmoid_rows())
            runs = {name: (_call(fn, x, y), 2 * logits + tgt) for name, fn in rows.items()}
            if family == "softmax":
                xd = x.detach()
                runs = {"torch.softmax (fwd)": (lambda xd=xd: torch.softmax(xd, 1), 2 * logits), **runs}
            for name, (run, nbytes) in runs.items():
                try:
                    ms = _time_ms(run, device, args.calls, args.rounds)
                except torch.OutOfMemoryError as e:
                    print(f"{name} {shape}: out of memory ({e})", file=sys.stderr)
                    continue
                gbs = nbytes / ms / 1e6
                results.append({
                    "family": family, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "row": name,
                    "ms": ms, "bytes": nbytes, "GBps": gbs, "pct_peak": None if peak is None else 100 * gbs / peak,
                    "pct_copy": 100 * gbs / copy_gbs[0],
                })  # fmt: skip
            del x, y, runs
            if device == "cuda":
                torch.cuda.empty_cache()
    print(f"bandwidth ({_device_name(device)}; peak {peak} GB/s, device copy measured {copy_gbs[0]:.0f} GB/s; bytes = "
          "read logits + targets, write gradient; CUDA events, median of rounds)")  # fmt: skip
    print(f"{'cell':26} {'row':30} {'ms':>9} {'GB/s':>7} {'%peak':>6} {'%copy':>6}")
    for r in results:
        cell = f"{r['family'][:3]} {'x'.join(map(str, r['shape']))} {r['dtype']}"
        pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}%"
        print(f"{cell:26} {r['row']:30} {r['ms']:9.3f} {r['GBps']:7.0f} {pct:>6} {r['pct_copy']:5.0f}%")
    return {"device": _device_name(device), "peak_GBps": peak, "copy_GBps": copy_gbs[0], "rows": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["host", "bandwidth"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="dry run: tiny shapes")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    result = {"host": host, "bandwidth": bandwidth}[args.mode](args)
    result["versions"] = {"torch": torch.__version__, "polyfocal": pf.__version__}
    try:
        import triton

        result["versions"]["triton"] = triton.__version__
    except ImportError:
        pass
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
