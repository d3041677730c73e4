"""Class-parallel fused linear + loss (``process_group=``): 2 and 3 gloo ranks (torchrun on localhost), each holding
an uneven shard of the classes, against the single-process ``linear_poly_loss`` (float64: 1e-10; float32: 1e-5
relative) and, for float64, the float64 textbook reference (autograd over ``F.linear`` + ``poly_loss_reference``).

One spawned group per world size runs the cases of :mod:`linear_parallel_cases` (the option grid: every family
option, three reductions, ignored rows, a chunk whose rows are all ignored, every row ignored, uneven shards, bf16 /
float32 / float64) on each two-phase backend (``BACKEND_CASES``: torch ops, native C, Triton -- the interpreter on
CPU) and the checks that need a group (modules, mismatched ranks, communication volume).  The two-phase kernels
are also tested in this process: against the torch-ops reference, over simulated shards, in a one-rank group."""

from __future__ import annotations

import concurrent.futures
import itertools
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
    import polyfocal.kernels
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
    for backend, names in cases.BACKEND_CASES.items():  # the grid on each two-phase backend
        for index, (name, dtype, reduction, bias, chunk, ignore, opts) in enumerate(cases.CASES):
            if name not in names:
                continue
            dt = getattr(torch, dtype)
            h, w, b, y, up = cases.data(index, dt, bias, ignore, device)
            h = h.requires_grad_()
            ws = w[lo:hi].clone().requires_grad_()
            bs = None if b is None else b[lo:hi].clone().requires_grad_()
            with polyfocal.kernels.backend(backend):
                out = polyfocal.linear_poly_loss(h, ws, y, linear_bias=bs, reduction=reduction, chunk_size=chunk,
                                                 process_group=group, **cases.options(opts, lo, hi, device))
                used = linear_parallel.two_phase_backend(h.device, torch.float64 if dt == torch.float64 else
                                                         torch.float32)
                out.backward(cases.upstream(reduction, up, out.dtype))
            results[f"{backend}:{name}"] = {"loss": out.detach().cpu(), "input": h.grad.cpu(),
                                            "weight": ws.grad.cpu(), "bias": None if bs is None else bs.grad.cpu(),
                                            "comm": linear_parallel.last_communication(), "used": used}
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
    out = polyfocal.linear_poly_loss(torch.cat(dnn.all_gather(h_rows, group=group)), ws, y[:12],
                                                   linear_bias=b[lo:hi], gamma=2.0, label_smoothing=0.1,
                                                   chunk_size=5, process_group=group, grad_input="partial")
    comm = linear_parallel.last_communication()
    out.backward()
    results["sequence_parallel"] = (out.detach(), h_rows.grad, ws.grad, comm)
    try:
        polyfocal.linear_poly_loss(h, w[lo:hi], y, process_group=group, grad_input="scatter")
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


GRID = [(backend, cases.CASES.index(next(c for c in cases.CASES if c[0] == name)))
        for backend, names in cases.BACKEND_CASES.items() for name in names]  # fmt: skip


@pytest.mark.parametrize(("backend", "index"), GRID, ids=[f"{b}-{cases.CASES[i][0]}" for b, i in GRID])
def test_shards_match_single_process(group_results, backend, index):
    world, ranks = group_results
    case = cases.CASES[index]
    name, dtype, _, bias = case[:4]
    key = f"{backend}:{name}"
    # the backend that ran: the one asked for (float64 chunks under "native" run the torch ops)
    assert ranks[0][key]["used"] == ("torch" if backend == "native" and dtype == "float64" else backend)
    loss, (gi, gw, gb) = _single(index, case)
    sizes = cases.SPLITS[world]
    for rank, res in enumerate(ranks):
        got = res[key]
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        assert got["weight"].dtype == gw.dtype and got["input"].dtype == gi.dtype
        if dtype in ("bfloat16", "float16"):  # float32 statistics: the loss to float32 precision, gradients rounded
            _close(got["loss"], loss, 1e-5, f"{key} rank {rank} loss")
            for g, want in ((got["input"], gi), (got["weight"], gw[lo:hi])):
                torch.testing.assert_close(g.float(), want.float(), rtol=1e-2, atol=1e-2)
            continue
        tol = TOL[dtype]
        _close(got["loss"], loss, tol, f"{key} rank {rank} loss")
        _close(got["input"], gi, tol, f"{key} rank {rank} grad input")
        _close(got["weight"], gw[lo:hi], tol, f"{key} rank {rank} grad weight shard")
        if bias:
            _close(got["bias"], gb[lo:hi], tol, f"{key} rank {rank} grad bias shard")
        else:
            assert got["bias"] is None
    if dtype == "float64" and backend == "torch":  # and the independent float64 oracle
        ref, (ri, rw, rb) = _single(index, case, reference=True)
        _close(loss, ref, 1e-9, f"{name} single-process vs reference")
        for rank, res in enumerate(ranks):
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            got = res[key]
            _close(got["loss"], ref, 1e-9, f"{name} rank {rank} loss vs reference")
            if name == "all_ignored":  # the mean over no rows: NaN loss, gradients 0 (as F.cross_entropy), not 0/0
                assert torch.isnan(got["loss"]) and not got["input"].any() and not got["weight"].any()
                continue
            _close(got["input"], ri, 1e-9, f"{name} rank {rank} grad input vs reference")
            _close(got["weight"], rw[lo:hi], 1e-9, f"{name} rank {rank} grad weight vs reference")
            if bias:
                _close(got["bias"], rb[lo:hi], 1e-9, f"{name} rank {rank} grad bias vs reference")


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
        # one all-gather per chunk of every rank's [local max, sum exp, z'_y] per row
        assert big.statistics_bytes == chunks * world * 3 * 16 * 4
        assert big.calls == 1 + chunks + 1  # the set-up exchange, one all-gather per chunk, the grad_input all-reduce
        # the grid: per-chunk statistics only, O(rows), for every case and backend
        for backend, names in cases.BACKEND_CASES.items():
            for name, dtype, _, _, _, _, opts in cases.CASES:
                if name not in names:
                    continue
                values = 4 if opts.get("label_smoothing") else 3  # max, sum exp, z'_y (, sum a_c z'_c)
                itemsize = 8 if dtype == "float64" else 4
                comm = res[f"{backend}:{name}"]["comm"]
                assert comm.statistics_bytes == world * cases.N * values * itemsize, (backend, name)
                assert comm.grad_input_bytes == cases.N * cases.D * itemsize, (backend, name)


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
    for key, res0 in ranks[0].items():
        if ":" not in key:
            continue
        backend, name = key.split(":")
        index = [c[0] for c in cases.CASES].index(name)
        case = cases.CASES[index]
        dtype, bias = case[1], case[3]
        assert res0["used"] == ("torch" if backend == "native" else backend)  # no native kernels for CUDA chunks
        loss, (gi, gw, gb) = _single(index, case, device="cuda")
        tol = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 3e-2, "float16": 1e-2}[dtype]
        for rank, res in enumerate(ranks):
            lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
            _close(res[key]["loss"], loss, tol, f"cuda {key} rank {rank} loss")
            _close(res[key]["input"], gi, tol, f"cuda {key} rank {rank} grad input")
            _close(res[key]["weight"], gw[lo:hi], tol, f"cuda {key} rank {rank} grad weight")
            if bias:
                _close(res[key]["bias"], gb[lo:hi], tol, f"cuda {key} rank {rank} grad bias")


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
    assert "independent of V" in out and "statistics 2.0 KiB" in out, out  # 2 ranks x 64 rows x 4 values x 4 B


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


# ---------------------------------------------------------------- the two-phase kernels, single process (no group)


def _kernel_module(backend: str):
    if backend == "native":
        from polyfocal.kernels import _native

        if not _native.available():
            pytest.skip("the native kernels are not built here (no compiler)")
        return _native
    from polyfocal.kernels import _dispatch

    if not _dispatch.triton_available():
        pytest.skip("Triton does not import")
    from polyfocal.kernels import _triton_impl

    return _triton_impl


def _problem(rows: int, v: int, opts: str, seed: int = 0):
    """A chunk of local logits, local targets (-1: not this shard's / ignored) and the phase options."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, v, generator=gen) * 3
    t = torch.randint(0, v, (rows,), generator=gen)
    t[::3] = -1  # rows whose target another rank owns (or ignored rows)
    kw: dict = {}
    if "bias" in opts:
        kw["bias"] = torch.randn(v, generator=gen)
    if "margin" in opts:
        kw["margin"] = torch.rand(v, generator=gen) * 0.5
    if "scale" in opts:
        kw["logit_scale"] = 1.7
    if "ls" in opts:
        kw["label_smoothing"] = True
        if "alpha" in opts:
            kw["class_weight"] = torch.rand(v, generator=gen) + 0.2
    return z, t, kw


KERNEL_OPTS = ["plain", "bias", "margin_scale", "bias_margin_scale", "ls", "ls_alpha", "bias_margin_scale_ls_alpha"]


@pytest.mark.parametrize("opts", KERNEL_OPTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("backend", "v"), [("native", 37), ("native", 2500), ("triton", 37), ("triton", 150)])
def test_two_phase_kernels_match_the_torch_ops(backend, v, dtype, opts):
    """Phase 1 (the four statistics) and phase 2 (the gradient from given coefficients) of the native C and
    Triton kernels against the torch-ops two-phase reference, on float32 and bf16 chunks: rows owning their
    target and rows not (-1), ignored rows (all coefficients 0: zeros), every per-chunk option."""
    from polyfocal import linear_parallel as lp

    kernels = _kernel_module(backend)
    rows = 7
    z, t, kw = _problem(rows, v, opts)
    z = z.to(dtype)
    ref_z = z.float().clone()  # the torch ops work in place
    want = lp.torch_two_phase_stats_(ref_z, t, **kw)
    got = kernels.two_phase_stats(z.clone(), t, **kw)
    assert got.shape == (4, rows)
    ls = kw.get("label_smoothing", False)
    for k, what in enumerate(("local max", "sum of exps over c != t", "target logit", "smoothing sum")):
        w_k = want[k] if (k < 3 or ls) else torch.zeros(rows)
        atol = 2e-6 * v if k == 3 else 2e-5  # the smoothing sum cancels: float32 rounding of V terms of size ~5
        torch.testing.assert_close(got[k].float(), w_k, rtol=2e-6, atol=atol, msg=lambda m, w=what: f"{w}: {m}")
    # phase 2 with coefficients of a (pretend) global softmax: lse above every local logit, an ignored row
    gen = torch.Generator().manual_seed(1)
    lse = want[0] + torch.log(want[1] + torch.exp(want[2] - want[0]) * (t >= 0)) + torch.rand(rows, generator=gen)
    coef = torch.rand(rows, generator=gen) + 0.5
    k1 = torch.rand(rows, generator=gen) + 0.5
    k2 = torch.rand(rows, generator=gen) * 0.1 if ls else torch.zeros(rows)
    coef[4], k1[4], k2[4] = 0.0, 0.0, 0.0  # an ignored row
    a = kw.get("class_weight")
    ref = lp.torch_two_phase_grad_(ref_z, t, want, lse, coef, k1, k2, class_weight=a)
    out = z.clone()
    phase_kw = {k: kw[k] for k in ("bias", "margin", "logit_scale") if k in kw}
    res = kernels.two_phase_grad_(out, t, lse, coef, k1, k2, class_weight=a, **phase_kw)
    assert res.data_ptr() == out.data_ptr() and out.dtype == dtype  # in place, in the chunk's dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    else:  # the float32 gradient rounded to bf16 as it is stored
        torch.testing.assert_close(out, ref.to(dtype), rtol=1e-2, atol=1e-5)
    assert not out[4].any()
    # the target's entries, spelled out: coef p_t - k1 - k2 a_t from the target logit of phase 1
    owned = ((t >= 0) & (torch.arange(rows) != 4)).nonzero().squeeze(1)
    a_t = 1.0 if a is None else a[t[owned]]
    at_t = coef[owned] * torch.exp(want[2, owned] - lse[owned]) - k1[owned] - k2[owned] * a_t
    assert owned.numel() >= 3
    torch.testing.assert_close(out.float()[owned, t[owned]], at_t, rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
@pytest.mark.parametrize("opts", ["bias_margin_scale", "bias_margin_scale_ls_alpha"])
def test_two_phase_over_simulated_shards_is_the_full_softmax(backend, opts):
    """Three shards' phase-1 statistics combined (:func:`combine_statistics`, what every rank computes from the
    all-gather) are the statistics of the whole row, and the shards' phase-2 gradients with the global
    coefficients concatenate to the full row's gradient ``coef softmax(z') - k1 onehot_y - k2 a``; checked
    against plain torch on the whole row (float64)."""
    from polyfocal import linear_parallel as lp

    rows, v = 9, 40
    z, y, kw = _problem(rows, v, opts, seed=3)
    y = torch.randint(0, v, (rows,), generator=torch.Generator().manual_seed(4))
    splits = [0, 11, 29, 40]
    kernels = None if backend == "torch" else _kernel_module(backend)
    parts, stats, zs = [], [], []
    for lo, hi in itertools.pairwise(splits):
        t = torch.where((y >= lo) & (y < hi), y - lo, -1)
        sub = {k: (val[lo:hi] if isinstance(val, torch.Tensor) else val) for k, val in kw.items()}
        zc = z[:, lo:hi].contiguous()
        st = lp.torch_two_phase_stats_(zc, t, **sub) if kernels is None else kernels.two_phase_stats(zc, t, **sub)
        parts.append((t, sub))
        stats.append(st)
        zs.append(zc)
    big, rest, z_t, xa = lp.combine_statistics(torch.stack(stats))
    # the whole row in float64
    zd = z.double()
    zp = (zd + kw["bias"].double()) * 1.7
    zp[torch.arange(rows), y] -= 1.7 * kw["margin"].double()[y]
    e = torch.exp(zp - zp.amax(1, keepdim=True))
    e_rest = e.clone()
    e_rest[torch.arange(rows), y] = 0
    torch.testing.assert_close(big.double(), zp.amax(1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(rest.double(), e_rest.sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_t.double(), zp[torch.arange(rows), y], rtol=1e-6, atol=1e-5)
    a = kw.get("class_weight")
    if "ls" in opts:
        torch.testing.assert_close(xa.double(), zp @ a.double(), rtol=1e-5, atol=1e-4)
    lse = big + torch.log(rest + torch.exp(z_t - big))
    coef, k1 = torch.full((rows,), 1.3), torch.full((rows,), 0.7)
    k2 = torch.full((rows,), 0.05) if "ls" in opts else torch.zeros(rows)
    grads = []
    for (t, sub), st, zc in zip(parts, stats, zs, strict=True):
        if kernels is None:
            lp.torch_two_phase_grad_(zc, t, st, lse, coef, k1, k2, class_weight=sub.get("class_weight"))
        else:
            phase_kw = {k: sub[k] for k in ("bias", "margin", "logit_scale", "class_weight") if k in sub}
            kernels.two_phase_grad_(zc, t, lse, coef, k1, k2, **phase_kw)
        grads.append(zc)
    want = coef.double()[:, None] * torch.softmax(zp, 1) - k2.double()[:, None] * (1.0 if a is None else a.double())
    want[torch.arange(rows), y] -= k1.double()
    torch.testing.assert_close(torch.cat(grads, 1).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_one_rank_group_per_backend(backend):
    """The whole call path (row terms, z-loss, margin / scale, smoothing, ignored rows, softcap) through each
    backend's two-phase kernels in a one-rank group in this process, against the single-process call."""
    import torch.distributed as dist

    from polyfocal import kernels, linear_parallel

    _kernel_module(backend)
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for name in ("f32_all_mean", "f32_margin_scale_zloss", "f32_alpha_smooth", "bf16_all_mean"):
            index = [c[0] for c in cases.CASES].index(name)
            _, dtype, reduction, bias, chunk, ignore, opts = cases.CASES[index]
            h, w, b, y, up = cases.data(index, getattr(torch, dtype), bias, ignore)
            kw = cases.options(opts)
            outs = []
            for pg in (None, dist.group.WORLD):
                leaves = [None if t is None else t.clone().requires_grad_() for t in (h, w, b)]
                with kernels.backend(backend if pg is not None else "auto"):
                    out = polyfocal.linear_poly_loss(*leaves[:2], y, linear_bias=leaves[2], reduction=reduction,
                                                     chunk_size=chunk, process_group=pg, **kw)  # fmt: skip
                    if pg is not None:
                        assert linear_parallel.two_phase_backend(h.device, torch.float32) == backend
                    out.backward(cases.upstream(reduction, up, out.dtype))
                outs.append([out.detach(), *(None if t is None else t.grad for t in leaves)])
            tol = 1e-5 if dtype == "float32" else 1e-2
            for got, want in zip(outs[1], outs[0], strict=True):
                if want is not None:
                    _close(got.float(), want.float(), tol, f"{backend} {name}")
    finally:
        dist.destroy_process_group()
