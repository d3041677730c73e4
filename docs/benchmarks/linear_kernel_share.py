"""The loss kernel's share of one fused-linear chunk (CPU, 2 threads): the three chunk GEMMs (logits, grad_input,
grad_W) against the softmax-family kernel on the same (512, 32000) buffer, 7 interleaved rounds, medians.  The
last column models a fused row's time over fused CE's: (GEMMs + kernel) / (GEMMs + CE kernel).

Run: ``python docs/benchmarks/linear_kernel_share.py``.
"""

import statistics
import time

import torch

from polyfocal import linear
from polyfocal._args import hyper, prepare

torch.set_num_threads(2)
n, d, v = 512, 1024, 32000
h, w, y = torch.randn(n, d), torch.randn(v, d) / 32, torch.randint(0, v, (n,))
prior = torch.arange(1, v + 1, dtype=torch.float64).reciprocal()
options = {
    "ce": {"epsilon": 0.0},
    "focal": {"gamma": 2.0, "epsilon": 0.0},
    "poly1": {"epsilon": 1.0},
    "ls0.1": {"epsilon": 0.0, "label_smoothing": 0.1},
    "z-loss": {"epsilon": 0.0, "z_loss": 1e-4},
    "la": {"epsilon": 0.0, "prior": prior},
}
args = {}
for name, opts in options.items():
    opts = dict(opts)
    p = opts.pop("prior", None)
    args[name] = prepare(torch.empty(1).expand(n, v), y, hyper(reduction="sum", **opts), prior=p).args
z0 = torch.mm(h, w.t())
buf, gi, gw = torch.empty_like(z0), torch.empty(n, d), torch.empty(v, d)
times: dict[str, list[float]] = {k: [] for k in args}
gemm_times = []
for _ in range(7):
    start = time.perf_counter()
    torch.mm(h, w.t(), out=buf)
    torch.mm(buf, w, out=gi)
    torch.mm(buf.t(), h, out=gw)
    gemm_times.append(time.perf_counter() - start)
    for name, a in args.items():
        buf.copy_(z0)
        start = time.perf_counter()
        linear.chunk_loss(buf, y, a, True)
        times[name].append(time.perf_counter() - start)
g, ce = statistics.median(gemm_times), statistics.median(times["ce"])
print(f"chunk {n}x{v}: three GEMMs {g * 1e3:.0f} ms; kernel ms and (GEMMs + kernel) / (GEMMs + CE kernel):")
for name, t in times.items():
    m = statistics.median(t)
    print(f"  {name:7s} {m * 1e3:6.1f} ms  {(g + m) / (g + ce):.3f}")
