"""The Triton path as a GPU runs it (issue 23): one kernel launch per forward, no host sync, CUDA-graph capture,
and a compact float64 / float32 / bf16 reference comparison of every member.

The reference comparison, the host-op accounting and the workspace reset also run on CPU (Triton's interpreter,
``TRITON_INTERPRET=1`` from the root conftest); the sync-debug, CUDA-graph and profiler tests need CUDA and are
skipped without it (``scripts/gpu_check.sh`` runs them on a GPU)."""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch
import torch.nn.functional as F

import polyfocal
from polyfocal import kernels
from polyfocal.reference import poly_loss_reference

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEV = "cuda" if CUDA else "cpu"
C = 6
PRIOR = [0.4, 0.2, 0.15, 0.1, 0.1, 0.05]
MARGIN = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
WEIGHT = [1.0, 2.0, 0.5, 1.0, 0.25, 3.0]

# every member: (id, keywords of polyfocal.poly_loss and of the float64 reference, target kind)
MEMBERS = [
    ("ce", dict(epsilon=()), "index"),
    ("focal", dict(epsilon=(), gamma=2.0), "index"),
    ("poly1", dict(epsilon=1.0), "index"),
    (
        "polyN-ls-weight-alpha",
        dict(epsilon=(1.0, -0.5), gamma=0.5, label_smoothing=0.1, weight=WEIGHT, alpha=PRIOR),
        "index",
    ),
    ("logit-adjusted", dict(epsilon=(), prior=PRIOR, tau=1.0), "index"),
    ("ldam", dict(epsilon=(), margin=MARGIN, logit_scale=3.0), "index"),
    ("z-loss", dict(epsilon=1.0, z_loss=0.05), "index"),
    ("sigmoid-focal", dict(activation="sigmoid", epsilon=(), gamma=2.0, alpha=0.25), "dense"),
    ("sigmoid-poly1-focal-index", dict(activation="sigmoid", epsilon=1.0, gamma=2.0, alpha=0.25), "sigmoid-index"),
    ("bce-pos-weight", dict(activation="sigmoid", epsilon=(), pos_weight="pw"), "dense"),
    ("asymmetric", dict(activation="sigmoid", epsilon=(), gamma=1.0, gamma_neg=4.0, clip=0.05), "dense"),
]


@contextlib.contextmanager
def _no_host_index_check():
    """Switch off the host index check the interpreter path runs (CUDA has none: it would need a sync)."""
    from polyfocal.kernels import _triton_impl

    flag = getattr(_triton_impl, "_HOST_INDEX_CHECK", [True])
    flag[0] = False
    try:
        yield
    finally:
        flag[0] = True


def _inputs(kind: str, dtype: torch.dtype, seed: int = 0, rows: int = 37):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, C, generator=gen, dtype=torch.float64) * 2).to(dtype)
    if kind == "dense":
        return x, (torch.rand(rows, C, generator=gen, dtype=torch.float64) < 0.3).double()
    y = torch.randint(0, C + (kind == "sigmoid-index"), (rows,), generator=gen)
    y[::5] = -100  # ignore_index: the mean denominator is computed on the device
    return x, y


def _loss_and_grad(fn, x: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().double().cpu(), grad.double().cpu()


def _kw(kw: dict, device: str) -> dict:
    out = dict(kw)
    if out.get("pos_weight") == "pw":
        out["pos_weight"] = torch.linspace(0.5, 2.0, C, dtype=torch.float64, device=device)
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("name,kw,kind", MEMBERS, ids=[m[0] for m in MEMBERS])
def test_every_member_matches_the_float64_reference_on_triton(name, kw, kind, dtype, reduction):
    """Values and gradients of each member on the Triton backend (CUDA when there is one) against the textbook
    float64 reference: tight for float64, float32 / bf16 at their rounding (bf16: the input is rounded first)."""
    x, y = _inputs(kind, dtype)
    ref_kw = _kw(kw, "cpu")
    ref, ref_grad = _loss_and_grad(lambda v: poly_loss_reference(v, y, reduction=reduction, **ref_kw), x.double())
    dev_kw = _kw(kw, DEV)
    if dtype != torch.float64 and isinstance(dev_kw.get("pos_weight"), torch.Tensor):
        dev_kw["pos_weight"] = dev_kw["pos_weight"].to(dtype)
    yd = y.to(DEV) if kind != "dense" else y.to(DEV, dtype)
    with kernels.backend("triton"):
        out, grad = _loss_and_grad(lambda v: polyfocal.poly_loss(v, yd, reduction=reduction, **dev_kw), x.to(DEV))
    # (rtol, atol as a share of the largest entry): float32 math, and for bf16 the gradient stored in 8 bits
    rtol, share = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6), torch.bfloat16: (1e-2, 1e-2)}[dtype]
    torch.testing.assert_close(out, ref, rtol=min(rtol, 2e-5), atol=share * ref.abs().max().item())
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=share * ref_grad.abs().max().item())


def test_repeated_calls_reuse_a_reset_workspace():
    """The in-kernel mean denominator and final sum use a per-stream workspace that each launch leaves reset:
    later calls with other targets must be as right as the first (a stale denominator or ticket fails here)."""
    from polyfocal.kernels import _triton_impl

    for seed in range(3):
        x, y = _inputs("index", torch.float64, seed=seed, rows=41 + seed)
        y[: seed + 1] = -100
        ref = poly_loss_reference(x, y, epsilon=1.0, gamma=2.0)
        with kernels.backend("triton"):
            out = polyfocal.poly_loss(x.to(DEV), y.to(DEV), epsilon=1.0, gamma=2.0)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-9, atol=1e-12)
    for (device, _, _), (tickets, _) in getattr(_triton_impl, "_WORKSPACES", {}).items():
        if device.type == DEV:
            assert tickets.tolist() == [0, 0, 0]


def test_kernel_makes_an_out_of_range_index_nan_itself():
    """With the host check switched off (as on CUDA, where it would need a sync) the kernel meets the bad index:
    it never addresses memory through it and makes that row's loss and gradient nan (``TRITON_DEBUG=1`` turns
    it into a device assertion).  The workspace stays reset for the next call."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, dtype=torch.float64, generator=gen).to(DEV).requires_grad_()
    y = torch.randint(0, 5, (8,), generator=gen).to(DEV)
    y[3] = 7  # softmax: outside [0, 4]; sigmoid: outside [0, 5] (5 = background)
    with _no_host_index_check(), kernels.backend("triton"):
        for fn in (polyfocal.cross_entropy, polyfocal.sigmoid_focal_loss):
            loss = fn(x, y, reduction="none")
            (grad,) = torch.autograd.grad(loss.sum(), x)
            assert loss[3].isnan().all() and not loss[torch.arange(8) != 3].isnan().any(), fn.__name__
            assert grad[3].isnan().all() and not grad[torch.arange(8) != 3].isnan().any(), fn.__name__
            assert fn(x, y).isnan()
    y[3] = 1
    with kernels.backend("triton"):
        torch.testing.assert_close(polyfocal.cross_entropy(x, y), F.cross_entropy(x, y))


def _host_ops(fn) -> tuple[list[str], list[str]]:
    """The aten ops the host code of one call runs outside the Triton kernels (whose launches are counted apart)."""
    import triton
    import triton.runtime.interpreter
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    from polyfocal.kernels import _triton_impl

    ops: list[str] = []
    launches: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    class Counted:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def run(*a, **k):
                launches.append(self.kernel.fn.__name__)
                with _disable_current_modes():
                    return self.kernel[grid](*a, **k)

            return run

    kinds = (triton.runtime.JITFunction, triton.runtime.interpreter.InterpretedFunction)
    names = [n for n, v in vars(_triton_impl).items() if isinstance(v, kinds) and n.endswith("_kernel")]
    saved = {n: getattr(_triton_impl, n) for n in names}
    try:
        for n in names:
            setattr(_triton_impl, n, Counted(saved[n]))
        with Record():
            fn()
    finally:
        for n, k in saved.items():
            setattr(_triton_impl, n, k)
    return ops, launches


ALLOCATIONS = {"empty", "empty_like", "new_empty", "empty_strided", "detach", "alias", "view"}


def _calls(dev: str) -> dict:
    """Calls with their tensors and modules built on ``dev`` first (the long-tail modules keep their vectors as
    buffers: after the first call no conversion kernel runs)."""
    w = torch.tensor(WEIGHT, device=dev)
    ldam = polyfocal.LDAMLoss(margin=MARGIN, logit_scale=2.0).to(dev)
    adjusted = polyfocal.LogitAdjustedLoss(prior=PRIOR).to(dev)
    return {
        "ce-mean": lambda x, y, t: polyfocal.cross_entropy(x, y),  # ignore_index=-100: denominator on the device
        "focal-sum": lambda x, y, t: polyfocal.softmax_focal_loss(x, y, gamma=2.0, reduction="sum"),
        "ce-ls-weight": lambda x, y, t: polyfocal.cross_entropy(x, y, label_smoothing=0.1, weight=w),
        "focal-alpha-weight": lambda x, y, t: polyfocal.softmax_focal_loss(x, y, alpha=w, weight=w),
        "ldam-module": lambda x, y, t: ldam(x, y),
        "logit-adjusted-module": lambda x, y, t: adjusted(x, y),
        "sigmoid-focal": lambda x, y, t: polyfocal.sigmoid_focal_loss(x, t),
        "sigmoid-index": lambda x, y, t: polyfocal.sigmoid_focal_loss(x, y),
        "asymmetric": lambda x, y, t: polyfocal.asymmetric_loss(x, t),
        "varifocal": lambda x, y, t: polyfocal.varifocal_loss(x, t),
    }


@pytest.mark.parametrize("name", list(_calls("cpu")))
def test_forward_is_one_kernel_launch_and_no_torch_compute(name):
    """The forward of a fused Triton call is exactly one kernel launch, and the host runs no torch compute op (no
    ``sum``, ``_assert_async``, prep kernels or per-call conversions of class vectors; before issue 23 a softmax
    call launched three Triton kernels and a module with a prior ran seven torch ops)."""
    x, y = _inputs("index", torch.float32)
    x = x.to(DEV).requires_grad_()
    t = (torch.rand(x.shape) < 0.3).float().to(DEV)
    y = y.to(DEV)
    call = _calls(DEV)[name]
    with kernels.backend("triton"):
        call(x, y, t)  # warm-up: compilation, cached constants, workspace and class vectors
        with _no_host_index_check():
            ops, launches = _host_ops(lambda: call(x, y, t))
    assert len(launches) == 1, launches
    compute = [op for op in ops if op not in ALLOCATIONS]
    if DEV == "cpu" and name == "varifocal":  # the soft targets' [0, 1] check: a free host read on CPU only
        compute = [op for op in compute if op not in ("aminmax", "_local_scalar_dense")]
    assert compute == [], compute


# ------------------------------------------------------------------------------------ CUDA only


def _cuda_inputs(dtype=torch.float32):
    x, y = _inputs("index", torch.float32, rows=64)
    x = x.to("cuda", dtype).requires_grad_()
    t = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.3).to("cuda", dtype)
    return x, y.cuda(), t


@needs_cuda
@pytest.mark.parametrize("name", list(_calls("cpu")))
def test_no_host_sync_eager_and_compiled(name):
    """Forward + backward under ``torch.cuda.set_sync_debug_mode("error")``: any ``.item()``, host read or
    synchronising copy on the path raises.  Eager and ``torch.compile(fullgraph=True)``."""
    fn = _calls("cuda")[name]
    x, y, t = _cuda_inputs()
    backend = "inductor" if name in ("ce-mean", "sigmoid-focal") else "aot_eager"  # the custom ops either way
    compiled = torch.compile(lambda a, b, c: fn(a, b, c), fullgraph=True, backend=backend)
    for f in (fn, compiled):  # warm-up outside the check: compilation, tuning, cached constants
        f(x, y, t).backward()
    half = torch.full((), 0.5, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for f in (fn, compiled):
            x.grad = None
            f(x, y, t).backward()
            f(x, y, t).backward(half)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@needs_cuda
@pytest.mark.parametrize("name", ["ce-mean", "ce-ls-weight", "ldam-module", "sigmoid-index"])
def test_training_step_captured_in_a_cuda_graph(name):
    """A whole step (model, polyfocal loss, backward, optimiser) captured with ``torch.cuda.graph`` and replayed
    on new batches equals the same steps run eagerly."""
    fn = _calls("cuda")[name]
    torch.manual_seed(0)
    batches = [_cuda_inputs() for _ in range(4)]
    feats = [torch.randn(64, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(4)]

    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(16, C).cuda()
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def step(model, opt, f, y, t):
        opt.zero_grad(set_to_none=False)
        loss = fn(model(f), y, t)
        loss.backward()
        opt.step()
        return loss

    eager_model, eager_opt = make()
    eager_losses = [step(eager_model, eager_opt, f, b[1], b[2]).detach() for f, b in zip(feats, batches, strict=True)]

    model, opt = make()
    static_f, static_y, static_t = feats[0].clone(), batches[0][1].clone(), batches[0][2].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    warm_model, warm_opt = make()  # warm-up (compilation, tuning, workspace) on a copy, on the side stream
    with torch.cuda.stream(side):
        for _ in range(3):
            step(warm_model, warm_opt, static_f, static_y, static_t)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with torch.cuda.graph(graph):
        static_loss = step(model, opt, static_f, static_y, static_t)
    # capture does not run the step: replay each batch from the same initial weights
    model_ref, _ = make()
    with torch.no_grad():
        for p, q in zip(model.parameters(), model_ref.parameters(), strict=True):
            p.copy_(q)
    graph_losses = []
    for f, b in zip(feats, batches, strict=True):
        static_f.copy_(f)
        static_y.copy_(b[1])
        static_t.copy_(b[2])
        graph.replay()
        graph_losses.append(static_loss.detach().clone())
    torch.cuda.synchronize()
    torch.testing.assert_close(torch.stack(graph_losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("name", list(_calls("cpu")))
def test_profiler_counts_one_launch_forward_and_at_most_one_in_backward(name):
    """Kernel launches seen by the CUDA profiler: the forward is one kernel; ``loss.backward()`` adds torch's own
    fill of ``grad_output = 1`` and at most one polyfocal kernel (which skips its pass when that is 1)."""
    from torch.profiler import ProfilerActivity, profile

    fn = _calls("cuda")[name]
    x, y, t = _cuda_inputs()
    fn(x, y, t).backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        loss = fn(x, y, t)
        torch.cuda.synchronize()
    forward = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        x.grad = None
        loss.backward()
        torch.cuda.synchronize()
    backward = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(forward) == 1, forward
    ours = [k for k in backward if "fill" not in k.lower()]
    assert len(ours) <= 1, backward


@needs_cuda
def test_bad_index_on_cuda_is_nan_not_a_crash():
    x, y, _ = _cuda_inputs()
    y[3] = C + 5
    with kernels.backend("triton"):
        loss = polyfocal.cross_entropy(x, y)
        (grad,) = torch.autograd.grad(loss, x)
    assert loss.isnan().item() and grad[3].isnan().all().item() and not grad[4:].isnan().any().item()


def test_kernels_compile_for_sm90_without_a_gpu():
    """Triton's compiler and ptxas on the real code paths (the interpreter runs none of: loop-carried types,
    scalar atomics, constexpr ``None`` pointers), for an H100/H200 target, without a GPU."""
    import os
    import subprocess
    import sys

    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.join(root, "src") + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, os.path.join(root, "scripts", "triton_compile_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
