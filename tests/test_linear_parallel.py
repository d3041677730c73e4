"""Class-parallel fused linear + loss (``process_group=``): 2 and 3 gloo ranks (torchrun on localhost), each holding
an uneven shard of the classes, against the single-process ``linear_poly_loss`` (float64: 1e-10; float32: 1e-5
relative) and, for float64, the float64 textbook reference (autograd over ``F.linear`` + ``poly_loss_reference``).

One spawned group per world size runs every case of :mod:`linear_parallel_cases` (the option grid: every family
option, three reductions, ignored rows, a chunk whose rows are all ignored, every row ignored, uneven shards, bf16 /
float32 / float64) and the checks that need a group (modules, mismatched ranks, communication volume)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import linear_parallel_cases as cases
import polyfocal
from polyfocal.reference import poly_loss_reference
from process_helpers import free_port, run_process_group

WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    import torch.distributed as dist
    import polyfocal
    from polyfocal import linear_parallel
    import linear_parallel_cases as cases

    device = sys.argv[3]
    dist.init_process_group("gloo")  # on CUDA too: gloo all-reduces CUDA tensors, so 2 ranks can share 1 GPU
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    sizes = cases.SPLITS[world]
    lo = sum(sizes[:rank]); hi = lo + sizes[rank]
    results = {"offsets": linear_parallel.shard_offsets(sizes[rank], group)}
    for index, (name, dtype, reduction, bias, chunk, ignore, opts) in enumerate(cases.CASES):
        dt = getattr(torch, dtype)
        h, w, b, y, up = cases.data(index, dt, bias, ignore, device)
        h = h.requires_grad_()
        ws = w[lo:hi].clone().requires_grad_()
        bs = None if b is None else b[lo:hi].clone().requires_grad_()
        out = polyfocal.linear_poly_loss(h, ws, y, linear_bias=bs, reduction=reduction, chunk_size=chunk,
                                         process_group=group, **cases.options(opts, lo, hi, device))
        out.backward(cases.upstream(reduction, up, out.dtype))
        results[name] = {"loss": out.detach().cpu(), "input": h.grad.cpu(), "weight": ws.grad.cpu(),
                         "bias": None if bs is None else bs.grad.cpu(), "comm": linear_parallel.last_communication()}
    if device != "cpu":
        torch.save(results, os.path.join(sys.argv[1], f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        os._exit(0)

    # the module option and the twins
    h, w, b, y, up = cases.data(0, torch.float64, True, "chunk")
    module = polyfocal.LinearSoftmaxFocalLoss(gamma=2.0, process_group=group, alpha=cases.ALPHA[lo:hi])
    results["module"] = module(h, w[lo:hi], y, b[lo:hi]).detach()
    results["ce_twin"] = polyfocal.linear_cross_entropy(h, w[lo:hi], y, linear_bias=b[lo:hi], label_smoothing=0.1,
                                                        process_group=group).detach()

    # sequence parallelism: row-sharded hidden states, an autograd all-gather, grad_input="partial" (the
    # all-gather's backward sums the partial input gradients and hands each rank its rows)
    import torch.distributed.nn.functional as dnn
    h, w, b, y, up = cases.data(15, torch.float64, True, "chunk")
    rows = 12 // world
    h_rows = h[rank * rows : (rank + 1) * rows].clone().requires_grad_()
    ws = w[lo:hi].clone().requires_grad_()
    out = linear_parallel.sharded_linear_poly_loss(torch.cat(dnn.all_gather(h_rows, group=group)), ws, y[:12],
                                                   linear_bias=b[lo:hi], gamma=2.0, label_smoothing=0.1,
                                                   chunk_size=5, process_group=group, grad_input="partial")
    comm = linear_parallel.last_communication()
    out.backward()
    results["sequence_parallel"] = (out.detach(), h_rows.grad, ws.grad, comm)
    try:
        linear_parallel.sharded_linear_poly_loss(h, w[lo:hi], y, process_group=group, grad_input="scatter")
    except ValueError as e:
        results["grad_input_error"] = str(e)

    # a second backward (retain_graph) recomputes, with the same collectives: the gradients add up
    h, w, b, y, up = cases.data(3, torch.float64, True, "chunk")
    h = h.requires_grad_()
    ws = w[lo:hi].clone().requires_grad_()
    out = polyfocal.linear_poly_loss(h, ws, y, linear_bias=b[lo:hi], gamma=2.0, chunk_size=4, process_group=group)
    out.backward(retain_graph=True)
    out.backward()
    results["twice"] = (h.grad, ws.grad)

    # communication volume of one step: independent of V (one large shard vs. the small one)
    big = 4000 if rank == 0 else 10
    torch.manual_seed(0)  # the same input and targets on every rank
    yb = torch.randint(0, 10, (64,))
    hb = torch.randn(64, 8, requires_grad=True)
    wb = torch.randn(big, 8, requires_grad=True)
    polyfocal.linear_poly_loss(hb, wb, yb, process_group=group, chunk_size=16, gamma=2.0).backward()
    comm_big = linear_parallel.last_communication()
    hb = torch.randn(64, 8, requires_grad=True)
    polyfocal.linear_poly_loss(hb, torch.randn(10, 8, requires_grad=True), yb, process_group=group,
                               chunk_size=16, gamma=2.0).backward()
    results["comm_v"] = (comm_big, linear_parallel.last_communication())

    # ranks that disagree: a ValueError on every rank, before any loss work
    errors = []
    for bad in ({"gamma": 1.0 + rank}, {"rows": 5 + rank}):
        rows = bad.get("rows", 5)
        try:
            polyfocal.linear_poly_loss(torch.randn(rows, 6).double(), w[lo:hi], torch.zeros(rows, dtype=torch.long),
                                       gamma=bad.get("gamma", 1.0), process_group=group)
        except ValueError as e:
            errors.append(str(e))
    results["errors"] = errors
    torch.save(results, os.path.join(sys.argv[1], f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no interpreter shutdown: its static destructors have aborted a gloo rank after its work (SIGABRT)
    """
)


def _spawn(tmp_path, world: int, device: str = "cpu") -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(script), str(tmp_path), here, device]  # fmt: skip
    proc = run_process_group(cmd, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks_said = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, ranks_said[-6000:] or proc.stderr[-6000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "class_parallel.py")


def _example() -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), EXAMPLE, "--classes", "3000", "--rows", "64", "--dim", "16",
           "--steps", "4", "--threads", "1", "--lr", "2"]  # fmt: skip
    proc = run_process_group(cmd, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture(scope="module")
def both_groups(tmp_path_factory):
    """The 2- and 3-rank groups and the example, started together (their start-up overlaps)."""
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {w: pool.submit(_spawn, tmp_path_factory.mktemp(f"world{w}"), w) for w in (2, 3)}
        futures["example"] = pool.submit(_example)
        return {w: f.result() for w, f in futures.items()}


@pytest.fixture(params=[2, 3])
def group_results(request, both_groups):
    return request.param, both_groups[request.param]


def _single(index: int, case, *, reference: bool = False, device: str = "cpu"):
    """The oracle: single-process linear_poly_loss on the whole weight (or the float64 textbook reference)."""
    _, dtype, reduction, bias, chunk, ignore, opts = case
    dt = getattr(torch, dtype)
    h, w, b, y, up = cases.data(index, dt, bias, ignore, device)
    kw = cases.options(opts, device=device)
    if reference:
        h, w, b = (None if t is None else t.double() for t in (h, w, b))
    leaves = [t if t is None else t.clone().requires_grad_() for t in (h, w, b)]
    if reference:
        cap = kw.pop("softcap", None)
        z = F.linear(*leaves)
        z = z if cap is None else cap * torch.tanh(z / cap)
        out = poly_loss_reference(z, y, reduction=reduction, **kw)
    else:
        out = polyfocal.linear_poly_loss(*leaves[:2], y, linear_bias=leaves[2], reduction=reduction,
                                         chunk_size=chunk, **kw)  # fmt: skip
    out.backward(cases.upstream(reduction, up, out.dtype))
    return out.detach().cpu(), [None if t is None else t.grad.cpu() for t in leaves]


def _close(got, want, tol, what):
    assert got.shape == want.shape, what
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")  # fmt: skip


TOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.mark.parametrize("index", range(len(cases.CASES)), ids=[c[0] for c in cases.CASES])
def test_shards_match_single_process(group_results, index):
    world, ranks = group_results
    case = cases.CASES[index]
    name, dtype, _, bias = case[:4]
    loss, (gi, gw, gb) = _single(index, case)
    sizes = cases.SPLITS[world]
    for rank, res in enumerate(ranks):
        got = res[name]
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        assert got["weight"].dtype == gw.dtype and got["input"].dtype == gi.dtype
        if dtype in ("bfloat16", "float16"):  # float32 statistics: the loss to float32 precision, gradients rounded
            _close(got["loss"], loss, 1e-5, f"{name} rank {rank} loss")
            for g, want in ((got["input"], gi), (got["weight"], gw[lo:hi])):
                torch.testing.assert_close(g.float(), want.float(), rtol=1e-2, atol=1e-2)
            continue
        tol = TOL[dtype]
        _close(got["loss"], loss, tol, f"{name} rank {rank} loss")
        _close(got["input"], gi, tol, f"{name} rank {rank} grad input")
        _close(got["weight"], gw[lo:hi], tol, f"{name} rank {rank} grad weight shard")
        if bias:
            _close(got["bias"], gb[lo:hi], tol, f"{name} rank {rank} grad bias shard")
        else:
            assert got["bias"] is None
    if dtype == "float64":  # and the independent float64 oracle
        ref, (ri, rw, rb) = _single(index, case, reference=True)
        _close(loss, ref, 1e-9, f"{name} single-process vs reference")
        for rank, res in enumerate(ranks):
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            _close(res[name]["loss"], ref, 1e-9, f"{name} rank {rank} loss vs reference")
            if name == "all_ignored":  # the mean over no rows: NaN loss, gradients 0 (as F.cross_entropy), not 0/0
                assert torch.isnan(res[name]["loss"]) and not res[name]["input"].any() and not res[name]["weight"].any()
                continue
            _close(res[name]["input"], ri, 1e-9, f"{name} rank {rank} grad input vs reference")
            _close(res[name]["weight"], rw[lo:hi], 1e-9, f"{name} rank {rank} grad weight vs reference")
            if bias:
                _close(res[name]["bias"], rb[lo:hi], 1e-9, f"{name} rank {rank} grad bias vs reference")


def test_group_checks(group_results):
    world, ranks = group_results
    sizes = cases.SPLITS[world]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    h, w, b, y, _ = cases.data(0, torch.float64, True, "chunk")
    focal = polyfocal.linear_softmax_focal_loss(h, w, y, linear_bias=b, gamma=2.0, alpha=cases.ALPHA)
    ce = polyfocal.linear_cross_entropy(h, w, y, linear_bias=b, label_smoothing=0.1)
    for rank, res in enumerate(ranks):
        assert res["offsets"] == offsets
        _close(res["module"], focal, 1e-10, "module")
        _close(res["ce_twin"], ce, 1e-10, "linear_cross_entropy")
        # retain_graph: the second backward recomputes the same gradients
        h, w, b, y, _ = cases.data(3, torch.float64, True, "chunk")
        h, w = h.requires_grad_(), w.requires_grad_()
        polyfocal.linear_poly_loss(h, w, y, linear_bias=b, gamma=2.0, chunk_size=4).backward()
        _close(res["twice"][0], 2 * h.grad, 1e-10, "retain_graph grad input")
        _close(res["twice"][1], 2 * w.grad[offsets[rank] : offsets[rank + 1]], 1e-10, "retain_graph grad weight")
        # sequence parallelism (grad_input="partial"): each rank's rows of the single-process input gradient
        h, w, b, y, _ = cases.data(15, torch.float64, True, "chunk")
        h, w = h[:12].requires_grad_(), w.requires_grad_()
        loss = polyfocal.linear_poly_loss(h, w, y[:12], linear_bias=b, gamma=2.0, label_smoothing=0.1, chunk_size=5)
        loss.backward()
        got_loss, got_rows, got_w, comm = res["sequence_parallel"]
        rows = 12 // world
        _close(got_loss, loss.detach(), 1e-10, "sequence-parallel loss")
        _close(got_rows, h.grad[rank * rows : (rank + 1) * rows], 1e-10, "sequence-parallel grad of this rank's rows")
        _close(got_w, w.grad[offsets[rank] : offsets[rank + 1]], 1e-10, "sequence-parallel grad weight")
        assert comm.grad_input_bytes == 0
        assert "expected grad_input to be 'all_reduce' or 'partial', got 'scatter'" in res["grad_input_error"]
        # mismatched options / shapes across ranks: every rank refuses, with a message naming what differs
        assert len(res["errors"]) == 2
        assert "expected the same options on every rank" in res["errors"][0]
        assert "expected the same rows (N) on every rank" in res["errors"][1]
        # communication: the same bytes whether rank 0's shard has 4000 or 10 classes (O(N), independent of V)
        big, small = res["comm_v"]
        assert big == small
        n, d, chunks = 64, 8, 4
        assert big.grad_input_bytes == n * d * 4
        assert big.statistics_bytes == chunks * (16 * 4 + 2 * 16 * 4)  # a max, then [z'_y, sum exp] per row
        # the grid: per-chunk statistics only, O(rows), for every case
        for name, dtype, _, _, _, _, opts in cases.CASES:
            values = 1 + (3 if opts.get("label_smoothing") else 2)  # the max; z'_y, sum exp (, sum a_c z'_c)
            itemsize = 8 if dtype == "float64" else 4
            comm = res[name]["comm"]
            assert comm.statistics_bytes == cases.N * values * itemsize, name
            assert comm.grad_input_bytes == cases.N * cases.D * itemsize, name


def test_process_group_argument_errors():
    h, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match=r"expected process_group to be None or a torch\.distributed ProcessGroup"):
        polyfocal.linear_poly_loss(h, w, y, process_group="world")
    with pytest.raises(TypeError, match="expected process_group"):
        polyfocal.LinearPolyLoss(process_group=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_two_gloo_ranks_on_one_gpu(tmp_path):
    """The grid on CUDA tensors: 2 gloo ranks sharing one GPU (NCCL needs one GPU per rank), against the
    single-process CUDA linear_poly_loss.  bf16: the single-process CUDA path rounds the logits to bf16 (bf16
    GEMMs), the sharded one keeps them in float32 (``out_dtype`` GEMMs), so bf16 is compared to bf16 precision."""
    ranks = _spawn(tmp_path, 2, "cuda")
    sizes = cases.SPLITS[2]
    for index, case in enumerate(cases.CASES):
        name, dtype, _, bias = case[:4]
        loss, (gi, gw, gb) = _single(index, case, device="cuda")
        tol = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 3e-2, "float16": 1e-2}[dtype]
        for rank, res in enumerate(ranks):
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            _close(res[name]["loss"], loss, tol, f"cuda {name} rank {rank} loss")
            _close(res[name]["input"], gi, tol, f"cuda {name} rank {rank} grad input")
            _close(res[name]["weight"], gw[lo:hi], tol, f"cuda {name} rank {rank} grad weight")
            if bias:
                _close(res[name]["bias"], gb[lo:hi], tol, f"cuda {name} rank {rank} grad bias")


def test_example_runs(both_groups):
    """examples/class_parallel.py on a small head: the unsharded and per-rank losses agree, training lowers the
    loss, the replicated trunk stays identical, the communication line is printed."""
    out = both_groups["example"]
    first = {m.group(1): float(m.group(2)) for m in re.finditer(r"  (unsharded|rank \d)\b.*?loss (\S+)", out)}
    assert set(first) == {"unsharded", "rank 0", "rank 1"}, out
    assert max(first.values()) - min(first.values()) < 1e-5 * first["unsharded"], out
    steps = [float(x) for x in re.findall(r"step \d: loss (\S+)", out)]
    assert len(steps) == 4 and steps == sorted(steps, reverse=True), out
    assert "trunk replicas identical across ranks: True" in out
    assert "independent of V" in out and "statistics 1.0 KiB" in out, out  # 64 rows x 4 values x 4 B


def test_one_rank_group_in_process_and_compile():
    """A group of one rank (in this process): the single-process result; under torch.compile the call runs
    eagerly (a graph break) with the same result."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        h, w, b, y, _ = cases.data(0, torch.float64, True, "chunk")
        kw = cases.options(cases.ALL)
        leaves = [t.clone().requires_grad_() for t in (h, w, b)]
        want = polyfocal.linear_poly_loss(*leaves[:2], y, linear_bias=leaves[2], chunk_size=4, **kw)
        want.backward()
        for fn in (polyfocal.linear_poly_loss, torch.compile(polyfocal.linear_poly_loss, backend="eager")):
            mine = [t.clone().requires_grad_() for t in (h, w, b)]
            got = fn(*mine[:2], y, linear_bias=mine[2], chunk_size=4, process_group=dist.group.WORLD, **kw)
            got.backward()
            _close(got.detach(), want.detach(), 1e-10, "one rank loss")
            for g, r in zip(mine, leaves, strict=True):
                _close(g.grad, r.grad, 1e-10, "one rank grad")
    finally:
        dist.destroy_process_group()
