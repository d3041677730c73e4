"""Class-parallel fused linear + loss: a 200k-class head sharded over torch.distributed ranks (gloo on CPU).

    torchrun --nproc-per-node 2 examples/class_parallel.py                      # 200k classes, 1024 rows, d=512
    torchrun --nproc-per-node 2 examples/class_parallel.py --rows 4096 --steps 1   # the issue's peak-memory shape
    python examples/class_parallel.py --single ...                              # the unsharded run alone

Every rank holds the same features and targets and a contiguous shard of the classifier's rows (the classes
``[o_r, o_r + V_r)``, ``torch.tensor_split`` sizes); ``polyfocal.linear_poly_loss(..., process_group=...)`` gives the
loss of the whole head (the same value on every rank), the full input gradient (all-reduced) and this rank's weight
gradient, with only O(rows) statistics per chunk crossing between ranks.  A replicated trunk (one ``nn.Linear``) in
front of the head gets the all-reduced input gradient, so it stays identical on every rank without DDP.

Printed: the loss per step, seconds per step, the bytes each rank handed to collectives per step (and what a
logits all-gather would move instead), and the extra peak memory of one forward+backward per rank against the
same step unsharded (run first, alone, in a fresh process by rank 0; skip it with ``--no-baseline``).  Extra peak
memory is measured as in ``polyfocal bench --linear``: ``/proc/self/clear_refs`` resets the peak RSS, extra =
``VmHWM - VmRSS before``, reported with and without the final gradients (``h.grad`` and the weight's gradient).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import polyfocal
from polyfocal import linear_parallel

BLOCK = 1024  # classes per seeded block: any shard generates the same rows as the full weight
OPTIONS = dict(gamma=2.0, epsilon=1.0, label_smoothing=0.1, z_loss=1e-4)  # focal + Poly-1 + smoothing + z-loss


def weight_rows(start: int, stop: int, d: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of the seeded ``(V, d)`` head weight, without building the whole weight."""
    blocks = []
    for b in range(start // BLOCK, (stop + BLOCK - 1) // BLOCK):
        gen = torch.Generator().manual_seed(1000 + b)
        blk = torch.randn(BLOCK, d, generator=gen) * (0.5 / d**0.5)
        lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
        blocks.append(blk[lo:hi])
    return torch.cat(blocks).contiguous()


def batch(n: int, d: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=gen), torch.randint(0, v, (n,), generator=gen)


def _kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))  # type: ignore[union-attr]


def peak_step(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, group) -> dict:
    """One forward+backward of the head alone (``h``, ``W`` leaves, as ``bench --linear``): loss and extra peak."""
    h = x.clone().requires_grad_()
    w = w.requires_grad_()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _kib("VmRSS") * 1024
    start = time.perf_counter()
    loss = polyfocal.linear_poly_loss(h, w, y, process_group=group, **OPTIONS)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM") * 1024 - base
    grads = (h.grad.numel() + w.grad.numel()) * 4
    out = {
        "loss": loss.item(),
        "seconds": seconds,
        "extra_mib": peak / 2**20,
        "extra_no_grads_mib": (peak - grads) / 2**20,
    }
    w.grad = None
    w.requires_grad_(False)
    return out


def single(args) -> dict:
    """The unsharded fused run: the same step on the whole weight, in this (fresh) process."""
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    x, y = batch(args.rows, args.dim, args.classes)
    w = weight_rows(0, args.classes, args.dim)
    small = peak_step(x[:64], w, y[:64], None)  # warm-up (kernels, allocator)
    del small
    return peak_step(x, w, y, None)


def _line(name: str, r: dict, baseline: dict | None) -> str:
    text = (f"  {name}: loss {r['loss']:.6f}  extra peak {r['extra_mib']:.1f} MiB with gradients, "
            f"{r['extra_no_grads_mib']:.1f} MiB without")  # fmt: skip
    if baseline is not None:
        # a tiny head's step can fit in pages an earlier step left mapped: no extra peak, no ratio
        ratios = [
            f"{r[k] / baseline[k]:.3f}x" if baseline[k] > 0 else "n/a" for k in ("extra_mib", "extra_no_grads_mib")
        ]
        text += f" = {ratios[0]} / {ratios[1]} unsharded"
    return text + f"  ({r['seconds']:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="SGD step (default rows / dim)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / ranks)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unsharded run")
    parser.add_argument("--single", action="store_true", help="run only the unsharded step and print it as JSON")
    args = parser.parse_args()
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed (as polyfocal.bench): RSS = live memory
    if args.single:
        print(json.dumps(single(args)))
        return

    dist.init_process_group("gloo")
    group = dist.group.WORLD
    rank, world = dist.get_rank(), dist.get_world_size()
    baseline = None
    if rank == 0 and not args.no_baseline:  # first, alone: the other ranks wait at the barrier
        cmd = [sys.executable, __file__, "--single", "--classes", str(args.classes), "--rows", str(args.rows),
               "--dim", str(args.dim), "--threads", str(args.threads)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        baseline = json.loads(proc.stdout.splitlines()[-1])
    dist.barrier()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))

    sizes = [t.numel() for t in torch.arange(args.classes).tensor_split(world)]
    lo = sum(sizes[:rank])
    w = weight_rows(lo, lo + sizes[rank], args.dim)
    x, y = batch(args.rows, args.dim, args.classes)
    small = peak_step(x[:64], w, y[:64], group)  # warm-up
    del small
    mem = peak_step(x, w, y, group)
    comm = linear_parallel.last_communication()
    everyone = [None] * world
    dist.all_gather_object(everyone, {"rank": rank, "classes": sizes[rank], **mem, "comm": comm.total_bytes})
    if rank == 0:
        print(f"{world} ranks, N={args.rows}, d={args.dim}, V={args.classes} (shards {sizes}), options {OPTIONS}")
        if baseline is not None:
            print(_line("unsharded", baseline, None))
        for r in everyone:
            print(_line(f"rank {r['rank']} ({r['classes']} classes)", r, baseline))
        print(f"  communication per step and rank: {comm.total_bytes / 2**20:.2f} MiB = statistics "
              f"{comm.statistics_bytes / 2**10:.1f} KiB (O(N P): all-gathers) + grad_input "
              f"{comm.grad_input_bytes / 2**20:.2f} MiB "
              f"(N x d) + setup {comm.setup_bytes} B, in {comm.calls} collectives; independent of V "
              f"(an all-gather of the logits would move {args.rows * args.classes * 4 / 2**20:.0f} MiB)")  # fmt: skip

    # training: a replicated trunk (gets the all-reduced input gradient) and this rank's head shard
    torch.manual_seed(0)
    trunk = torch.nn.Linear(args.dim, args.dim)
    torch.nn.init.eye_(trunk.weight)
    torch.nn.init.zeros_(trunk.bias)
    w.requires_grad_()
    lr = args.lr if args.lr is not None else args.rows / args.dim
    params = [w, *trunk.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr)
    for step in range(args.steps):
        start = time.perf_counter()
        loss = polyfocal.linear_poly_loss(trunk(x), w, y, process_group=group, **OPTIONS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
        if rank == 0:
            print(f"  step {step}: loss {loss.item():.6f}  ({seconds:.2f} s)")
    check = trunk.weight.detach().sum().reshape(1).double()  # the trunk is identical on every rank
    gathered = [torch.empty_like(check) for _ in range(world)]
    dist.all_gather(gathered, check)
    if rank == 0:
        print(f"  trunk replicas identical across ranks: {len({float(t) for t in gathered}) == 1}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
