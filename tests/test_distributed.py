"""polyfocal.all_reduce_normalizer: local behaviour, and 2 gloo processes (torchrun on localhost) where a DDP
model trained with sigmoid focal loss and the all-reduced normalizer gets the single-process gradients."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
import torch

import polyfocal
from polyfocal.distributed import all_reduce_normalizer
from process_helpers import free_port, run_process_group


def test_without_process_group_returns_the_local_count_clamped():
    assert float(polyfocal.all_reduce_normalizer(torch.tensor(7))) == 7.0
    assert float(all_reduce_normalizer(3.5)) == 3.5
    assert float(all_reduce_normalizer(torch.tensor(0.0))) == 1.0
    assert float(all_reduce_normalizer(0, min_value=0.5)) == 0.5
    x = torch.tensor([2.0, 0.0], requires_grad=True)
    out = all_reduce_normalizer(x)
    assert out.tolist() == [2.0, 1.0] and not out.requires_grad
    assert x.tolist() == [2.0, 0.0]  # input not modified
    with pytest.raises(TypeError, match="expected normalizer"):
        all_reduce_normalizer("3")
    with pytest.raises(TypeError, match="expected average"):
        all_reduce_normalizer(3, average=1)


WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import polyfocal

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 5, (10,), generator=g)     # index 4 = background (no positive)
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4).double()
    ddp = DistributedDataParallel(model)
    shard = [slice(0, 3), slice(3, 10)][rank]           # unequal shards on purpose
    xs, ys = x[shard], y[shard]
    local_pos = int((ys < 4).sum())
    norm = polyfocal.all_reduce_normalizer(torch.tensor(local_pos))
    total = polyfocal.all_reduce_normalizer(torch.tensor(local_pos), average=False)
    loss = polyfocal.sigmoid_focal_loss(ddp(xs), ys, normalizer=norm.double(), reduction="sum")
    loss.backward()
    values = torch.tensor([loss.item()], dtype=torch.float64)
    dist.all_reduce(values)
    out = {"local_pos": local_pos, "norm": norm.item(), "total": total.item(), "mean_loss": values.item() / world,
           "grad": [p.grad.flatten().tolist() for p in model.parameters()]}
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()  # nobody tears down its connections while the other rank still uses them
    dist.destroy_process_group()
    sys.stdout.flush()
    # Skip the interpreter's shutdown: there, C++ static destructors of torch's thread pools have aborted a rank
    # ("terminate called without an active exception", SIGABRT) after its work was done and written.
    os._exit(0)
    """
)


def test_two_gloo_ranks_match_single_process_sigmoid_focal_loss(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), str(script), str(tmp_path)]
    proc = run_process_group(cmd, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # the single-process reference over the whole batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 5, (10,), generator=g)
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4).double()
    positives = int((y < 4).sum())
    loss = polyfocal.sigmoid_focal_loss(model(x), y, normalizer=float(max(positives, 1)), reduction="sum")
    loss.backward()

    assert ranks[0]["local_pos"] + ranks[1]["local_pos"] == positives
    for r in ranks:
        assert r["total"] == max(positives, 1)  # plain sum over ranks
        assert r["norm"] == pytest.approx(max(positives / 2, 1))  # the sum averaged over the 2 ranks
        assert r["mean_loss"] == pytest.approx(loss.item(), rel=1e-12)
        for got, p in zip(r["grad"], model.parameters(), strict=True):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), p.grad.flatten(), rtol=1e-12, atol=1e-14)
