"""The fused kernels (torch implementation and Triton, the latter in Triton's CPU interpreter when there is no
GPU: the root conftest sets TRITON_INTERPRET=1) against the float64 reference, on values and gradients;
their autograd contract (grad_output != 1, retain_graph, double backward, no-grad calls), the custom-op
registration (torch.library.opcheck, torch.compile fullgraph) and low-precision inputs."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

import polyfocal
from polyfocal import _args, kernels
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_NATIVE = _native.available()
BACKENDS = [
    "torch",
    "composite",  # the eager formulas of _core: the same reference comparison runs on every backend
    pytest.param("native", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")),
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
]
# numpy warns inside Triton's interpreter for masked lanes (log2(0), inf - inf); a GPU computes them silently
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _loss_and_grad(fn, x, seed=0):
    """Loss and d(sum(g * loss))/dx for a random g (grad_output != 1 for every reduction)."""
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    (grad,) = torch.autograd.grad((loss * g.to(loss.dtype).to(loss.device)).sum(), x)
    return loss.detach(), grad


def _device(backend):
    """Triton runs on CUDA when there is a GPU, else in the interpreter on CPU tensors."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _check(backend, x, target, *, rtol=1e-9, atol=1e-11, **kw):
    if backend == "native":  # the C kernels are float32 (float64 falls back to the torch implementation)
        x, rtol, atol = x.float(), 2e-5, 2e-6
        if target.dtype == torch.float64:
            target = target.float()
    dev = _device(backend)
    dev_kw = {k: _to(v, dev) for k, v in kw.items()}
    with kernels.backend(backend):
        ours, ours_grad = _loss_and_grad(lambda v: polyfocal.poly_loss(v, target.to(dev), **dev_kw), x.to(dev))
        ours, ours_grad = ours.cpu(), ours_grad.cpu()
    ref, ref_grad = _loss_and_grad(lambda v: poly_loss_reference(v, target, **kw), x.to(torch.float64))
    torch.testing.assert_close(ours.to(torch.float64), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(ours_grad.to(torch.float64), ref_grad, rtol=rtol, atol=atol)
    assert ours_grad.dtype == x.dtype


SOFTMAX_PARAMS = [
    dict(epsilon=()),
    dict(epsilon=2.0),
    dict(gamma=2.0, epsilon=()),
    dict(gamma=0.5, epsilon=(1.0, -0.5, 0.25)),
    dict(gamma=1.5, epsilon=-1.0, label_smoothing=0.2),
    dict(gamma=2.0, epsilon=1.0, alpha=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], weight=[1.0, 2.0, 0.5, 1.0, 0.0, 3.0]),
    dict(epsilon=(), label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.0, 0.25, 3.0]),
    dict(gamma=0.5, epsilon=1.0, label_smoothing=0.3, alpha=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ignore_index=2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(9, 6), (3, 6, 5), (2, 6, 2, 3), (6,)])
@pytest.mark.parametrize("params", SOFTMAX_PARAMS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_kernel_matches_reference(backend, shape, params, reduction):
    gen = torch.Generator().manual_seed(len(shape) * 7 + len(params))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
    y = torch.randint(0, 6, batch, generator=gen)
    if y.numel() > 2:
        y.view(-1)[::4] = params.get("ignore_index", -100)
        y.view(-1)[1] = 3
    _check(backend, x, y, reduction=reduction, **params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_kernel_normalizer_and_many_classes(backend):
    """C = 5000 spans two Triton class chunks (online softmax across chunks); a per-row normalizer."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5000, generator=gen, dtype=torch.float64) * 4
    y = torch.tensor([0, 4999, 2500])
    norm = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    for reduction in ("none", "sum"):
        _check(backend, x, y, gamma=2.0, epsilon=1.0, normalizer=norm, label_smoothing=0.1, reduction=reduction)


SIGMOID_PARAMS = [
    dict(epsilon=(), gamma=0.0, alpha=None),
    dict(gamma=2.0, alpha=0.25, epsilon=()),
    dict(gamma=1.5, alpha=0.25, epsilon=1.0),
    dict(gamma=0.5, alpha=None, epsilon=(2.0, -0.5)),
    dict(gamma=2.0, alpha=0.75, epsilon=1.0, label_smoothing=0.1),
    dict(gamma=2.0, alpha=0.25, epsilon=1.0, weight="w", pos_weight="pw", normalizer=7.0),
]


def _sigmoid_target(kind, shape, gen):
    if kind == "index":  # class indices with background C and ignored rows
        y = torch.randint(0, shape[1] + 1, shape[:1] + shape[2:], generator=gen)
        y.view(-1)[::3] = -100
        y.view(-1)[1] = 0
        return y
    dense = torch.rand(shape, generator=gen, dtype=torch.float64)
    return {"soft": dense, "binary": (dense > 0.7).double(), "int": (dense > 0.7).long(), "bool": dense > 0.7}[kind]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 5), (3, 5, 4)])
@pytest.mark.parametrize("kind", ["soft", "binary", "int", "bool", "index"])
@pytest.mark.parametrize("params", SIGMOID_PARAMS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_kernel_matches_reference(backend, shape, kind, params, reduction):
    gen = torch.Generator().manual_seed(shape[0] + len(params))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    target = _sigmoid_target(kind, shape, gen)
    params = dict(params)
    bshape = (shape[1],) + (1,) * (len(shape) - 2)
    if params.get("weight") == "w":
        params["weight"] = torch.rand(bshape, generator=gen, dtype=torch.float64)
        params["pos_weight"] = torch.rand(bshape, generator=gen, dtype=torch.float64) + 0.5
    _check(backend, x, target, activation="sigmoid", reduction=reduction, **params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_use_float32_math(backend, dtype):
    """fp32 math inside: the loss equals the fp64 reference of the rounded input to fp32 precision, and the
    gradient (in the input dtype) equals the reference gradient to the precision of that dtype."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(64, 10, generator=gen) * 4).to(dtype)
    y = torch.randint(0, 10, (64,), generator=gen)
    t = torch.randint(0, 11, (64,), generator=gen)
    dev = _device(backend)
    for target, kw in ((y, dict(gamma=2.0, epsilon=1.0)), (t, dict(activation="sigmoid", gamma=2.0, alpha=0.25))):
        with kernels.backend(backend):
            loss, grad = _loss_and_grad(
                lambda v, target=target, kw=kw: polyfocal.poly_loss(v, target.to(dev), **kw), x.to(dev)
            )
        loss, grad = loss.cpu(), grad.cpu()
        ref, ref_grad = _loss_and_grad(lambda v, target=target, kw=kw: poly_loss_reference(v, target, **kw), x.double())
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-7)
        # the buffer is rounded to the input dtype once in the kernel and again when the backward multiplies it by
        # grad_output != 1 (exact for AMP's power-of-two scales): up to two roundings, 4 units of 2^-p relative
        rtol = {torch.float32: 1e-5, torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}[dtype]
        torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma", [0.1, 0.5, 2.0])
def test_extreme_logits_are_finite(backend, gamma):
    dev = _device(backend)
    x = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], device=dev)
    y = torch.tensor([0, 0, 1], device=dev)
    with kernels.backend(backend):
        for target, activation in ((y, "softmax"), (torch.tensor([0, 3, 1], device=dev), "sigmoid")):
            loss, grad = _loss_and_grad(
                lambda v, t=target, a=activation: polyfocal.poly_loss(
                    v, t, activation=a, gamma=gamma, epsilon=1.0, reduction="none"
                ),
                x,
            )
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_wrong_row_with_underflowing_probability_has_exact_ce(backend):
    x = torch.tensor([[200.0, 0.0, -50.0]])  # p_y for y = 2 is e^-250: below float32's range
    dev = _device(backend)
    with kernels.backend(backend):
        loss = polyfocal.cross_entropy(x.to(dev), torch.tensor([2], device=dev), reduction="none").cpu()
    ref = torch.nn.functional.cross_entropy(x.double(), torch.tensor([2]), reduction="none")
    torch.testing.assert_close(loss, ref.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_second_backward_and_no_grad(backend):
    gen = torch.Generator().manual_seed(0)
    dev = _device(backend)
    x = torch.randn(6, 4, generator=gen).to(dev).requires_grad_()
    y = torch.randint(0, 4, (6,), generator=gen).to(dev)
    with kernels.backend(backend):
        for activation in ("softmax", "sigmoid"):
            x.grad = None
            loss = polyfocal.poly_loss(x, y, activation=activation, gamma=2.0, epsilon=1.0)
            (loss * 3.0).backward(retain_graph=True)
            first = x.grad.clone()
            x.grad.zero_()  # the first gradient may be the kernel's buffer: zeroing it must not leak back
            (loss * 3.0).backward()
            torch.testing.assert_close(x.grad, first)
            with torch.no_grad():  # no gradient buffer is computed, the loss is the same
                again = polyfocal.poly_loss(x, y, activation=activation, gamma=2.0, epsilon=1.0)
            torch.testing.assert_close(again, loss.detach())


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_double_backward_through_fused_op(activation):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (4,), generator=gen)
    fn = lambda v: polyfocal.poly_loss(v, y, activation=activation, gamma=1.5, epsilon=1.0, reduction="sum")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_opcheck_custom_ops():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=gen, requires_grad=True)
    y = torch.randint(0, 4, (5,), generator=gen)
    a = torch.rand(4, generator=gen)
    for reduction, grad in itertools.product(("none", "mean"), (True, False)):
        h = _args.hyper(epsilon=1.0, gamma=2.0, ignore_index=-100, label_smoothing=0.1, reduction=reduction)
        flat = _args.flatten(dataclasses.replace(h, is_index=True, class_weight=a))
        torch.library.opcheck(kernels.poly_op, (x, y, grad, *flat), test_utils=("test_schema", "test_faketensor"))
        h = _args.hyper(activation="sigmoid", epsilon=1.0, gamma=2.0, alpha=0.25, reduction=reduction)
        flat = _args.flatten(dataclasses.replace(h, is_index=True))
        torch.library.opcheck(kernels.poly_op, (x, y, grad, *flat), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_matches_eager():
    lin = torch.nn.Linear(6, 5)
    x = torch.randn(16, 6)
    y = torch.randint(0, 5, (16,))

    def step(inp):
        out = lin(inp)
        return polyfocal.softmax_focal_loss(out, y, gamma=2.0, epsilon=1.0) + polyfocal.sigmoid_focal_loss(out, y)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss_c = compiled(x)
    grads_c = torch.autograd.grad(loss_c, list(lin.parameters()))
    loss_e = step(x)
    grads_e = torch.autograd.grad(loss_e, list(lin.parameters()))
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_scale_unless_one():
    from polyfocal.kernels import _triton_impl

    dev = _device("triton")
    for n in (5000, _triton_impl._SCALE_BY_TORCH + 5000):  # torch's mul_ for small buffers, the kernel above
        g = torch.randn(n, device=dev)
        before = g.clone()
        assert _triton_impl.scale_unless_one_(g, torch.tensor(1.0, device=dev)) is g and torch.equal(g, before)
        _triton_impl.scale_unless_one_(g, torch.tensor(2.5, device=dev))
        torch.testing.assert_close(g, before * 2.5)


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="expected backend in"):
        with kernels.backend("cuda"):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_rows_mean_denominator_across_programs(backend):
    """2500 rows span several Triton preparation programs (partial denominators summed in a second launch)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2500, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (2500,), generator=gen)
    y[::7] = -100
    _check(backend, x, y, gamma=2.0, epsilon=1.0, weight=torch.rand(4, generator=gen, dtype=torch.float64))
    t = torch.randint(0, 5, (2500,), generator=gen)
    t[::5] = -100
    _check(backend, x, t, activation="sigmoid", gamma=2.0, alpha=0.25)


@pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")
def test_native_kernels_only_take_cpu_tensors_of_their_dtypes():
    """Forcing backend "native" must never hand a non-CPU pointer (or a dtype it does not read) to the C code."""

    def supports(x, is_index, epsilon, softmax):
        h = _args.hyper(activation="softmax" if softmax else "sigmoid", epsilon=tuple(epsilon))
        return _native.supports(x, torch.empty(0), dataclasses.replace(h, is_index=is_index))

    assert supports(torch.empty(4, 3), False, [1.0], softmax=True)
    assert supports(torch.empty(4, 3, 2), True, [], softmax=True)  # spatial softmax
    for dtype in (torch.bfloat16, torch.float16):
        assert supports(torch.empty(4, 3, dtype=dtype), False, [1.0], softmax=True)
    assert not supports(torch.empty(4, 3, device="meta"), False, [1.0], softmax=True)
    assert not supports(torch.empty(4, 3, dtype=torch.float64), False, [1.0], softmax=False)
    assert not supports(torch.empty(4, 3, 2), True, [], softmax=False)  # sigmoid indices on a map
    assert not supports(torch.empty(4, 3), False, [1.0] * 17, softmax=True)


def test_backend_choice_is_per_thread():
    """``backend()`` is a context variable: a thread forcing one backend does not change another thread's."""
    import threading

    from polyfocal.kernels import _dispatch

    x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, str] = {}

    def forcing():
        with kernels.backend("torch"):
            seen["forcing"] = _dispatch.select(x, y, _args_of(x, y))
            entered.set()
            release.wait(10)

    def other():
        entered.wait(10)
        seen["other"] = kernels.current_backend()
        seen["other_select"] = _dispatch.select(x, y, _args_of(x, y))
        release.set()

    threads = [threading.Thread(target=forcing), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen["forcing"] == "torch"
    assert seen["other"] == "auto"
    assert seen["other_select"] == ("native" if HAS_NATIVE else "torch")
    assert kernels.current_backend() == "auto"


def _args_of(x, y):
    from polyfocal import _args

    return _args.prepare(x, y, _args.hyper()).args


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_takes_broadcast_weights_as_views():
    """A (C,) weight broadcast to (N, C) reaches the Triton kernel as a zero-stride view, not a logits-sized copy."""
    from polyfocal.kernels import _triton_impl

    for shape, wshape in [((1000, 80), (80,)), ((4, 3, 5, 6), (3, 1, 1)), ((7, 9), (7, 1))]:
        w = torch.rand(wshape)
        view, strides = _triton_impl._view3(
            torch.broadcast_to(w, shape), shape[0], shape[1], math.prod(shape[2:]), w.dtype
        )
        assert view.data_ptr() == w.data_ptr()  # no copy
        assert view.untyped_storage().nbytes() == w.untyped_storage().nbytes()
        assert 0 in strides


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_triton_chunked_softmax_rows(label_smoothing):
    """C > 4096 takes the online-softmax loop over class chunks (the row no longer fits one block)."""
    gen = torch.Generator().manual_seed(13)
    num_classes = 5000
    x = torch.randn(3, num_classes, generator=gen, dtype=torch.float64) * 3
    y = torch.tensor([17, -100, 4999])
    kw = dict(
        gamma=1.5,
        epsilon=1.0,
        alpha=torch.rand(num_classes, generator=gen, dtype=torch.float64),
        weight=torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.5,
        label_smoothing=label_smoothing,
    )
    _check("triton", x.float(), y, rtol=2e-5, atol=2e-7, **kw)


# ------------------------------------------------------------- native kernels: dtypes, layouts, broadcast views


@pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["rows", "spatial", "channels_last", "class_last_3d"])
@pytest.mark.parametrize(
    "params",
    [dict(epsilon=()), dict(gamma=2.0, epsilon=1.0, ignore_index=1), dict(gamma=0.5, label_smoothing=0.2,
     alpha=[0.5, 1.0, 2.0, 0.25, 1.5], weight=[1.0, 0.5, 2.0, 1.0, 3.0], epsilon=(1.0, -0.5))],
)  # fmt: skip
def test_native_softmax_dtypes_and_layouts(dtype, layout, params):
    """bf16/fp16 (float32 math, gradient in the input dtype), (N, C, H, W) maps with S not a multiple of the
    tile, channels_last and class-last memory: the native kernel runs (the dispatch picks it) and matches the
    float64 reference of the rounded input; the gradient keeps the input's memory layout."""
    gen = torch.Generator().manual_seed(11)
    shape = {"rows": (37, 5), "spatial": (3, 5, 7, 5), "channels_last": (2, 5, 4, 9), "class_last_3d": (3, 5, 19)}
    x64 = (torch.randn(shape[layout], generator=gen, dtype=torch.float64) * 3).to(dtype).double()
    y = torch.randint(0, 5, shape[layout][:1] + shape[layout][2:], generator=gen)
    y.view(-1)[::6] = params.get("ignore_index", -100)
    x = x64.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "class_last_3d":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    scalars = {k: v for k, v in params.items() if k not in ("alpha", "weight")}
    h = polyfocal._args.hyper(**scalars)
    args = polyfocal._args.prepare(x, y, h, alpha=params.get("alpha"), weight=params.get("weight"))
    assert kernels.select(args.x, args.target, args.args) == "native"
    for reduction in ("none", "mean", "sum"):
        loss, grad = _loss_and_grad(lambda v, r=reduction: polyfocal.poly_loss(v, y, reduction=r, **params), x)
        ref, ref_grad = _loss_and_grad(lambda v, r=reduction: poly_loss_reference(v, y, reduction=r, **params), x64)
        assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.stride() == x.stride()
        torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
        rtol = {torch.float32: 2e-5, torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}[dtype]
        torch.testing.assert_close(grad.double(), ref_grad.to(dtype).double(), rtol=rtol, atol=1e-5)


@pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target_kind", ["same", "float32", "bool", "int64", "index"])
def test_native_sigmoid_dtypes_and_broadcast_views(dtype, target_kind):
    """Low-precision logits and targets read in place; (C,), (N, 1) and full weight / pos_weight / normalizer
    views are addressed through their strides: values and gradients equal the float64 reference."""
    gen = torch.Generator().manual_seed(12)
    x64 = (torch.randn(300, 7, generator=gen, dtype=torch.float64) * 4).to(dtype).double()
    if target_kind == "index":
        t = torch.randint(0, 8, (300,), generator=gen)
        t[::9] = -100
        t64 = t
    else:
        t64 = (torch.rand(300, 7, generator=gen, dtype=torch.float64) < 0.3).double()
        t = {"same": t64.to(dtype), "float32": t64.float(), "bool": t64.bool(), "int64": t64.long()}[target_kind]
        t64 = t.double()
    weight = torch.rand(7, generator=gen, dtype=torch.float64)
    pos_weight = torch.rand(300, 1, generator=gen, dtype=torch.float64) + 0.5
    normalizer = torch.rand(300, 7, generator=gen, dtype=torch.float64) + 0.5
    kw = dict(activation="sigmoid", gamma=2.0, alpha=0.25, epsilon=1.0)
    for extra in (dict(weight=weight), dict(pos_weight=pos_weight, normalizer=normalizer), {}):
        for reduction in ("none", "mean"):
            loss, grad = _loss_and_grad(
                lambda v, e=extra, r=reduction: polyfocal.poly_loss(v, t, reduction=r, **kw, **e), x64.to(dtype)
            )
            ref, ref_grad = _loss_and_grad(
                lambda v, e=extra, r=reduction: poly_loss_reference(v, t64, reduction=r, **kw, **e), x64
            )
            assert grad.dtype == dtype
            torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
            rtol = {torch.float32: 2e-5, torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}[dtype]
            torch.testing.assert_close(grad.double(), ref_grad.to(dtype).double(), rtol=rtol, atol=1e-5)


@pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")
def test_native_sigmoid_reads_broadcast_views_without_expanding_them():
    """The vectors reach the C kernel as zero-stride views of the caller's storage (no logits-sized copy)."""
    w, pw = torch.rand(80), torch.rand(1000, 1)
    for v, strides in ((torch.broadcast_to(w, (1000, 80)), (0, 1)), (torch.broadcast_to(pw, (1000, 80)), (1, 0))):
        view, s0, s1 = _native._strided(v, 1000, 80)
        assert (s0, s1) == strides and view.untyped_storage().nbytes() < 1000 * 80 * 4
    spatial = torch.broadcast_to(torch.rand(80), (10, 100, 80))  # (N, A, C) detection layout
    view, s0, s1 = _native._strided(spatial, 1000, 80)
    assert (s0, s1) == (0, 1) and view.data_ptr() == spatial.data_ptr()


_MEMORY_PROBE = r"""
import ctypes, re, sys, torch, polyfocal
from polyfocal import _args, kernels
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
torch.set_num_threads(1)
def rss(key):
    return int(re.search(rf"^{key}:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1))
x = torch.randn(100000, 80, requires_grad=True)
t = (torch.rand(100000, 80) < 0.01).float()
w, pw, norm = torch.rand(80), torch.rand(100000, 1) + 0.5, torch.rand(80) + 0.5
def call():
    polyfocal.poly_loss(x, t, activation="sigmoid", gamma=2.0, weight=w, pos_weight=pw, normalizer=norm).backward()
with kernels.backend(sys.argv[1]):
    call()
    x.grad = None
    open("/proc/self/clear_refs", "w").write("5")
    base = rss("VmRSS")
    call()
print((rss("VmHWM") - base) * 1024 / (x.numel() * 4))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs /proc/self/clear_refs")
@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("native", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no native build"))]
)
def test_broadcast_weight_views_cost_no_logits_sized_copy(backend):
    """(C,) / (N, 1) weight, pos_weight and normalizer on 100000 x 80 logits: the extra peak of one
    forward+backward stays the gradient alone (1.0x the logits), measured in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, backend], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 1.2
