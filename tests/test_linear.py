"""The fused linear + loss (:mod:`polyfocal.linear`) against the float64 textbook reference on every backend.

The oracle is ``reference.poly_loss_reference(F.linear(h, W, b) in float64 (capped), y, ...)`` with autograd
gradients for the input, the weight and the bias; the fused path must give the same values and gradients for
every option, chunking, reduction and upstream gradient, and must never allocate the ``(N, V)`` logits.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import polyfocal
from polyfocal import _linear_chunks, kernels
from polyfocal import linear as lin
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference

BACKENDS = [
    "torch",
    pytest.param("native", marks=pytest.mark.skipif(not _native.available(), reason="no native build")),
    pytest.param("triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")),
]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
N, D, V = 11, 6, 13  # N % chunk != 0 for the chunk sizes used, odd V


def _data(seed=0, n=N, d=D, v=V, dtype=torch.float32, bias=True, ignore=True):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) / d**0.5 * 2
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    y = torch.randint(0, v, (n,), generator=gen)
    if ignore:
        y[::4] = -100
    cast = [t if t is None else t.to(dtype).requires_grad_() for t in (h, w, b)]
    return cast, y


def _reference(h, w, b, y, softcap=None, **kw):
    """float64 oracle: the textbook loss of the (capped) float64 logits, gradients by autograd."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (h, w, b)]
    z = F.linear(leaves[0], leaves[1], leaves[2])
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    loss = poly_loss_reference(z, y, **kw)
    return loss, leaves


def _grads(loss, leaves, upstream):
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    return torch.autograd.grad(loss, wanted, upstream)


PRIOR = torch.rand(V, generator=torch.Generator().manual_seed(5)).double() + 0.1
CLASS_W = torch.rand(V, generator=torch.Generator().manual_seed(6)).double() + 0.2
MARGIN = torch.rand(V, generator=torch.Generator().manual_seed(7)).double() * 0.5
CASES = {
    "ce": dict(epsilon=0.0),
    "poly1": dict(epsilon=1.0),
    "focal_half": dict(gamma=0.5, epsilon=0.0),
    "focal2_poly": dict(gamma=2.0, epsilon=[1.0, -0.5]),
    "smoothing": dict(epsilon=1.0, label_smoothing=0.1),
    "weight_alpha": dict(gamma=2.0, epsilon=1.0, weight=CLASS_W, alpha=CLASS_W.flip(0)),
    "weight_smooth": dict(epsilon=0.5, weight=CLASS_W, label_smoothing=0.2),
    "no_ignore": dict(epsilon=1.0, ignore_index=None),
    "prior": dict(epsilon=1.0, prior=PRIOR, tau=1.5),
    "margin_scale": dict(epsilon=0.0, margin=MARGIN, logit_scale=2.0),
    "z_loss": dict(gamma=1.0, epsilon=1.0, z_loss=0.01),
    "softcap": dict(epsilon=1.0, softcap=2.5),
    "softcap_all": dict(
        gamma=2.0,
        epsilon=1.0,
        softcap=1.5,
        weight=CLASS_W,
        label_smoothing=0.1,
        z_loss=0.02,
        prior=PRIOR,
        margin=MARGIN,
        logit_scale=1.3,
    ),
}


def _check(backend, kw, reduction, *, dtype=torch.float32, bias=True, chunk_size=4, seed=0, upstream_seed=1,
           ignore=True, n=N, atol=None):  # fmt: skip
    ignore = ignore and kw.get("ignore_index", -100) is not None
    (h, w, b), y = _data(seed, n=n, dtype=dtype, bias=bias, ignore=ignore)
    ref, leaves = _reference(h, w, b, y, reduction=reduction, **kw)
    gen = torch.Generator().manual_seed(upstream_seed)
    up = torch.randn(ref.shape, generator=gen, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7)
    ref_grads = _grads(ref, leaves, up.double())
    with kernels.backend(backend):
        out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, reduction=reduction, chunk_size=chunk_size, **kw)
        got = _grads(out, [h, w, b], up.to(out.dtype))
    tol = atol if atol is not None else (1e-5 if dtype == torch.float32 else 1e-10)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol, equal_nan=True)
    assert len(got) == len(ref_grads)
    names = ("input", "weight", "bias")[: len(got)]
    for g, r, name in zip(got, ref_grads, names, strict=True):
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")
    return out, got


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_grid(backend, case, reduction):
    _check(backend, CASES[case], reduction, bias=len(case) % 2 == 0 or case.startswith("softcap"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_float64_no_bias(backend):
    _check(backend, CASES["softcap_all"], "mean", dtype=torch.float64, bias=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    """Every row ignored: NaN mean (as F.cross_entropy), zero sum, zero gradients."""
    (h, w, b), y = _data(2)
    y.fill_(-100)
    with kernels.backend(backend):
        mean = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, chunk_size=3)
        gh, gw, gb = torch.autograd.grad(mean, (h, w, b))
        total = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, reduction="sum", chunk_size=3)
    plain = F.cross_entropy(F.linear(h, w, b), y)
    assert torch.isnan(mean) and torch.isnan(plain)
    assert total.item() == 0.0
    for g in (gh, gw, gb):
        assert torch.count_nonzero(g) == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, N, 64])
def test_chunk_size_invariance(chunk):
    out, grads = _check("auto", CASES["softcap_all"], "mean", chunk_size=chunk)
    out1, grads1 = _check("auto", CASES["softcap_all"], "mean", chunk_size=N)
    torch.testing.assert_close(out, out1, atol=1e-6, rtol=1e-6)
    for g, g1 in zip(grads, grads1, strict=True):
        torch.testing.assert_close(g, g1, atol=1e-6, rtol=1e-6)


def test_deterministic_for_fixed_chunking():
    first = _check("auto", CASES["focal2_poly"], "sum", chunk_size=3)
    second = _check("auto", CASES["focal2_poly"], "sum", chunk_size=3)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))


def test_budget_environment(monkeypatch):
    """``chunk_size=None``: rows from POLYFOCAL_LINEAR_CHUNK_BYTES (a tiny budget: one row per chunk)."""
    monkeypatch.setenv("POLYFOCAL_LINEAR_CHUNK_BYTES", "1")
    assert lin.chunk_rows(100, 7, 4) == 1
    _check("auto", CASES["softcap"], "mean", chunk_size=None)
    monkeypatch.setenv("POLYFOCAL_LINEAR_CHUNK_BYTES", str(3 * 7 * 4))
    assert lin.chunk_rows(100, 7, 4) == 3
    assert lin.chunk_rows(100, 7, 4, buffers=2) == 1
    monkeypatch.delenv("POLYFOCAL_LINEAR_CHUNK_BYTES")
    assert lin.chunk_rows(10**9, 1000, 4, in_features=8) == lin.MIN_CHUNK_BYTES // 4000  # small weight: the floor
    assert lin.chunk_rows(10**9, 32000, 4, in_features=1024) == 32000 * 1024 * 4 // 2 // (32000 * 4)  # half of W
    assert lin.chunk_rows(10**9, 128256, 4, in_features=4096) == lin.MAX_CHUNK_BYTES // (128256 * 4)  # the cap
    assert lin.chunk_rows(2048, 128256, 4, in_features=2048) == 2048 // 8  # an eighth of the logits
    monkeypatch.setenv("POLYFOCAL_LINEAR_CHUNK_BYTES", "lots")
    with pytest.raises(ValueError, match="POLYFOCAL_LINEAR_CHUNK_BYTES"):
        lin.chunk_rows(100, 7, 4)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_partial_requires_grad(reduction):
    """Input without grad, weight without grad, bias without grad: the other gradients unchanged."""
    (h, w, b), y = _data(3)
    full = _grads(polyfocal.linear_poly_loss(h, w, y, linear_bias=b, reduction=reduction, chunk_size=4, gamma=1.0),
                  [h, w, b], torch.ones(N) if reduction == "none" else torch.tensor(1.0))  # fmt: skip
    for frozen in range(3):
        leaves = [t.detach().requires_grad_(i != frozen) for i, t in enumerate((h, w, b))]
        out = polyfocal.linear_poly_loss(leaves[0], leaves[1], y, linear_bias=leaves[2], reduction=reduction,
                                         chunk_size=4, gamma=1.0)  # fmt: skip
        part = _grads(out, leaves, torch.ones(N) if reduction == "none" else torch.tensor(1.0))
        expected = [g for i, g in enumerate(full) if i != frozen]
        for g, e in zip(part, expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(reduction):
    """N = 0: the loss of torch (NaN mean, 0 sum, empty rows) and zero gradients (not uninitialised memory)."""
    (h, w, b), y = _data(18, n=0)
    out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, reduction=reduction)
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction=reduction)
    torch.testing.assert_close(out, ref, equal_nan=True)
    if reduction != "none":
        grads = torch.autograd.grad(out, (h, w, b))
        assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_no_grad_and_inference():
    (h, w, b), y = _data(4)
    with torch.no_grad():
        out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, softcap=3.0, chunk_size=5)
    ref, _ = _reference(h, w, b, y, softcap=3.0)
    torch.testing.assert_close(out.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    assert out.grad_fn is None


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retain_graph(reduction):
    (h, w, b), y = _data(5)
    out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, reduction=reduction, chunk_size=4, softcap=2.0)
    total = out.sum() * 3.0
    total.backward(retain_graph=True)
    first = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    total.backward()
    for t, g in zip((h, w, b), first, strict=True):
        torch.testing.assert_close(t.grad, g, atol=1e-6, rtol=1e-6)


def test_double_backward_refused():
    (h, w, b), y = _data(6)
    out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, chunk_size=4)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(out, h, create_graph=True)


@pytest.mark.filterwarnings("ignore:linear_cross_entropy. ..options.. ignored:UserWarning")
def test_torch_linear_cross_entropy_parity():
    """linear_cross_entropy gives torch 2.13's F.linear_cross_entropy (reference and chunked) on its options."""
    gen = torch.Generator().manual_seed(9)
    h = torch.randn(37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(29, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(29, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 29, (37,), generator=gen)
    y[::5] = -100
    cw = torch.rand(29, generator=gen, dtype=torch.float64) + 0.1
    chunked = torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=8)
    for kw in (
        {},
        {"weight": cw},
        {"label_smoothing": 0.15},
        {"weight": cw, "label_smoothing": 0.3},
        {"ignore_index": None},
        {"ignore_index": 3},
    ):
        yk = torch.where(y == -100, 3, y) if kw.get("ignore_index") == 3 else y
        for reduction in ("mean", "sum", "none"):
            for bias in (None, b):
                for options in (None, chunked):
                    theirs = F.linear_cross_entropy(h, w, yk, linear_bias=bias, reduction=reduction, options=options,
                                                    **kw)  # fmt: skip
                    ours = polyfocal.linear_cross_entropy(h, w, yk, linear_bias=bias, reduction=reduction,
                                                          chunk_size=7, **kw)  # fmt: skip
                    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
                    up = torch.rand(ours.shape, dtype=torch.float64) + 0.5
                    leaves = [h, w] + ([b] if bias is not None else [])
                    for g, t in zip(torch.autograd.grad(ours, leaves, up), torch.autograd.grad(theirs, leaves, up),
                                    strict=True):  # fmt: skip
                        torch.testing.assert_close(g, t, atol=1e-10, rtol=1e-10)


def test_batched_input_and_unbatched():
    gen = torch.Generator().manual_seed(10)
    h = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    w = torch.randn(9, 5, generator=gen, requires_grad=True)
    y = torch.randint(0, 9, (2, 3), generator=gen)
    out = polyfocal.linear_poly_loss(h, w, y, reduction="none", gamma=2.0, chunk_size=4)
    ref = polyfocal.poly_loss(F.linear(h, w).permute(0, 2, 1), y, reduction="none", gamma=2.0)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, ref)
    one = polyfocal.linear_poly_loss(h[0, 0], w, y[0, 0], gamma=2.0)
    torch.testing.assert_close(one, polyfocal.poly_loss(F.linear(h[0, 0], w), y[0, 0], gamma=2.0))


def test_bf16_weight_grad_no_worse_than_unfused():
    """bf16: grad_W accumulates in float32 over chunks (Liger #512 / #827 lost precision there); its error against
    the float64 gradient is no worse than the unfused bf16 path's, with many small chunks."""
    gen = torch.Generator().manual_seed(11)
    n, d, v = 512, 32, 257
    h64 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w64 = torch.randn(v, d, generator=gen, dtype=torch.float64) / d**0.5
    y = torch.randint(0, v, (n,), generator=gen)
    wr = w64.clone().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(F.linear(h64.bfloat16().double(), wr), y, reduction="sum"), wr)
    hb, wb = h64.bfloat16(), w64.bfloat16().requires_grad_()
    (unfused,) = torch.autograd.grad(F.cross_entropy(F.linear(hb, wb), y, reduction="sum"), wb)
    wb2 = w64.bfloat16().requires_grad_()
    out = polyfocal.linear_cross_entropy(hb, wb2, y, reduction="sum", chunk_size=8)
    (fused,) = torch.autograd.grad(out, wb2)
    assert fused.dtype == torch.bfloat16 and out.dtype == torch.float32
    err_fused = (fused.double() - ref).norm() / ref.norm()
    err_unfused = (unfused.double() - ref).norm() / ref.norm()
    assert err_fused <= err_unfused, (err_fused, err_unfused)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_values(dtype):
    """fp16 / bf16 inputs: float32 loss, gradients of the input dtype, close to the float64 oracle."""
    (h, w, b), y = _data(12, dtype=dtype)
    out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, softcap=3.0, gamma=2.0, chunk_size=4)
    grads = torch.autograd.grad(out, (h, w, b))
    ref, leaves = _reference(h, w, b, y, softcap=3.0, gamma=2.0)
    ref_grads = _grads(ref, leaves, torch.tensor(1.0, dtype=torch.float64))
    assert out.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, atol=2e-2, rtol=2e-2)


def test_extreme_logits_finite():
    (h, w, b), y = _data(13)
    with torch.no_grad():
        w.mul_(1e3)
    for kw in ({"gamma": 0.5}, {"gamma": 2.0, "epsilon": 1.0, "softcap": 30.0}, {"z_loss": 1e-4}):
        out = polyfocal.linear_poly_loss(h, w, y, linear_bias=b, chunk_size=4, **kw)
        grads = torch.autograd.grad(out, (h, w, b))
        assert torch.isfinite(out) and all(torch.isfinite(g).all() for g in grads)


def test_modules_match_functions():
    (h, w, b), y = _data(14)
    cw = CLASS_W.float()
    pairs = [
        (polyfocal.LinearPolyLoss(gamma=2.0, epsilon=1.0, weight=cw, softcap=4.0, chunk_size=3),
         polyfocal.linear_poly_loss(h, w, y, linear_bias=b, gamma=2.0, epsilon=1.0, weight=cw, softcap=4.0)),
        (polyfocal.LinearCrossEntropyLoss(label_smoothing=0.1),
         F.cross_entropy(F.linear(h, w, b), y, label_smoothing=0.1)),
        (polyfocal.LinearSoftmaxFocalLoss(), polyfocal.softmax_focal_loss(F.linear(h, w, b), y)),
        (polyfocal.LinearPoly1CrossEntropyLoss(epsilon=2.0),
         polyfocal.poly1_cross_entropy(F.linear(h, w, b), y, epsilon=2.0)),
    ]  # fmt: skip
    for module, expected in pairs:
        torch.testing.assert_close(module(h, w, y, b), expected, atol=1e-5, rtol=1e-5)
    module = polyfocal.LinearPolyLoss(weight=cw)
    assert "_weight" in dict(module.named_buffers())
    with pytest.raises(ValueError, match="gamma"):
        polyfocal.LinearPolyLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        polyfocal.LinearSoftmaxFocalLoss(softcap=0.0)


def _bad(**over):
    (h, w, b), y = _data(15)
    args = {"input": h, "linear_weight": w, "target": y, "linear_bias": b}
    args.update(over)
    return args


@pytest.mark.parametrize(
    ("over", "error", "match"),
    [
        ({"target": torch.rand(N, V)}, TypeError, "soft / probability"),
        ({"target": torch.rand(N)}, TypeError, "soft / probability"),
        ({"target": torch.ones(N, dtype=torch.bool)}, TypeError, "bool"),
        ({"target": torch.zeros(N + 1, dtype=torch.long)}, ValueError, "target of shape"),
        ({"target": torch.full((N,), V)}, IndexError, "class indices"),
        ({"linear_weight": torch.randn(V, D + 1)}, ValueError, "in_features"),
        ({"linear_weight": torch.randn(V, D, dtype=torch.float64)}, TypeError, "dtype"),
        ({"linear_weight": torch.randn(D)}, ValueError, "num_classes, in_features"),
        ({"linear_weight": torch.randn(0, D)}, ValueError, "at least one class"),
        ({"linear_bias": torch.randn(V + 1)}, ValueError, "linear_bias of shape"),
        ({"linear_bias": torch.randn(V, dtype=torch.float64)}, TypeError, "linear_bias"),
        ({"input": torch.ones(N, D, dtype=torch.long)}, TypeError, "floating point"),
        ({"input": torch.tensor(1.0)}, ValueError, "0-D"),
        ({"input": [1.0]}, TypeError, "torch.Tensor"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": float("inf")}, ValueError, "softcap"),
        ({"softcap": "30"}, TypeError, "softcap"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2.0}, TypeError, "chunk_size"),
        ({"chunk_size": True}, TypeError, "chunk_size"),
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"weight": torch.rand(V + 1)}, ValueError, "weight of shape"),
        ({"alpha": torch.rand(V, requires_grad=True)}, ValueError, "requires_grad"),
        ({"prior": [1.0] * (V - 1) + [0.0]}, ValueError, "prior"),
        ({"activation": "sigmoid"}, TypeError, "activation"),
        ({"pos_weight": torch.ones(V)}, TypeError, "pos_weight"),
    ],
)
def test_errors(over, error, match):
    with pytest.raises(error, match=match):
        polyfocal.linear_poly_loss(**_bad(**over))


def test_errors_before_any_work(monkeypatch):
    """A bad call raises before the first chunk GEMM."""
    calls = []
    monkeypatch.setattr(_linear_chunks, "chunk_logits", lambda *a: calls.append(a))  # where the chunk loop calls it
    for over in ({"target": torch.rand(N)}, {"softcap": -1.0}, {"target": torch.full((N,), V)}):
        with pytest.raises((TypeError, ValueError, IndexError)):
            polyfocal.linear_poly_loss(**_bad(**over))
    assert calls == []


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(reduction):
    (h, w, b), y = _data(16)

    def f(h, w, b, y):
        return polyfocal.linear_poly_loss(h, w, y, linear_bias=b, gamma=2.0, epsilon=1.0, softcap=3.0,
                                          reduction=reduction, chunk_size=4)  # fmt: skip

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    up = torch.rand(N) if reduction == "none" else torch.tensor(1.3)
    out = compiled(h, w, b, y)
    got = torch.autograd.grad(out, (h, w, b), up)
    ref = f(h, w, b, y)
    expected = torch.autograd.grad(ref, (h, w, b), up)
    torch.testing.assert_close(out, ref)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_custom_op_opcheck():
    (h, w, b), y = _data(17)
    from polyfocal._args import hyper
    from polyfocal.linear import _flat, _Plan, linear_poly

    args = hyper(epsilon=(1.0,), gamma=2.0, ignore_index=-100, reduction="sum")
    plan = _Plan(args, "mean", 3.0, 4)
    torch.library.opcheck(linear_poly, (h.detach(), w.detach(), b.detach(), y, *_flat(plan, (True, True, True))),
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch, polyfocal
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    n, d, v = 2048, 32, 32000
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) / 8).requires_grad_()
    y = torch.randint(0, v, (n,))
    polyfocal.linear_poly_loss(h[:8], w, y[:8], chunk_size=8).backward()  # warm-up: kernels built and loaded
    h.grad = w.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if sys.argv[1] == "fused":
            loss = polyfocal.linear_poly_loss(h, w, y, gamma=2.0, softcap=30.0)
        else:
            loss = polyfocal.softmax_focal_loss(30.0 * torch.tanh(torch.nn.functional.linear(h, w) / 30.0), y)
        loss.backward()
    current = peak = 0
    for event in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]":  # every allocation (+) and free (-) of torch's CPU allocator
            current += event.nbytes()
            peak = max(peak, current)
    print(peak - (h.numel() + w.numel()) * 4)  # beyond the final gradients
    """
)


def _peak(mode: str) -> int:
    env = {**os.environ, "POLYFOCAL_LINEAR_CHUNK_BYTES": str(16 << 20)}
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, mode], capture_output=True, text=True, check=True,
                          env=env)  # fmt: skip
    return int(proc.stdout.split()[-1])


def test_no_logits_sized_allocation():
    """Peak bytes allocated by torch's CPU allocator during one forward+backward, beyond the final gradients, in a
    fresh process (profiler memory events: exact, unlike RSS on a shared machine): the fused path stays at its
    16 MiB chunk, far below one (N, V) float32 logits tensor (262 MB here); the unfused path holds several."""
    logits = 2048 * 32000 * 4
    fused = _peak("fused")
    assert fused < 0.15 * logits, fused
    unfused = _peak("unfused")
    assert unfused > logits, unfused
