"""Regression tests of the loss path's correctness (issue 10): each test failed before its fix.

Every test that concerns the kernels runs on every backend: ``native`` (C, CPU float32), ``torch`` (torch ops),
``triton`` (Triton's CPU interpreter here, CUDA on a GPU) and ``composite`` (the eager autograd formulas).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import polyfocal
from polyfocal import kernels
from polyfocal.compat.clcarwin import FocalLoss as ClcarwinFocalLoss
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference

BACKENDS = [
    "torch",
    "composite",
    pytest.param("native", marks=pytest.mark.skipif(not _native.available(), reason="no native build")),
    pytest.param("triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")),
]
FUSED = [b for b in BACKENDS if b != "composite"]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

NAN, INF = float("nan"), float("inf")


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------ 1. indices out of range


def _op(x, y, **options):
    """The custom op called directly, with class-index targets (no host validation of the indices before it)."""
    args = dataclasses.replace(polyfocal._args.hyper(**options), is_index=True)
    return kernels.poly_op(x, y, True, *polyfocal._args.flatten(args))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("bad", [255, 100_000_000, -3])
def test_kernels_check_class_indices_themselves(backend, bad):
    """The ops are called directly (no host validation before them): each kernel must refuse the index."""
    dev = _device(backend)
    x = torch.randn(8, 5, device=dev, requires_grad=True)
    y = torch.randint(0, 5, (8,), device=dev)
    y[5] = bad
    if dev == "cuda":  # no host sync on CUDA: the kernel never addresses the index and makes the loss nan
        with kernels.backend(backend):
            out, grad = _op(x, y, ignore_index=-100)
            assert out.isnan() and grad[5].isnan().all() and not grad[:5].isnan().any()
            out, grad = _op(x, y, activation="sigmoid", alpha=0.25, gamma=2.0, ignore_index=-100, reduction="none")
            assert out[5].isnan().all() and not out[:5].isnan().any()
        return
    with kernels.backend(backend), pytest.raises(IndexError, match=rf"expected class indices in \[0, 4\].*got {bad}"):
        _op(x, y, ignore_index=-100)
    with kernels.backend(backend), pytest.raises(IndexError, match=rf"expected class indices in \[0, 5\].*got {bad}"):
        _op(x, y, activation="sigmoid", alpha=0.25, gamma=2.0, ignore_index=-100)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [255, 100_000_000])
def test_index_out_of_range_under_torch_compile_raises(backend, bad):
    """Compiled code skips the host check: y[5] = 255 gave a wrong loss and 1e8 a segfault in the C kernel."""
    torch._dynamo.reset()
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    y[5] = bad
    fn = torch.compile(lambda v, t: polyfocal.cross_entropy(v, t), backend="aot_eager", fullgraph=True)
    match = str(bad)
    with kernels.backend(backend), pytest.raises((IndexError, RuntimeError), match=match):
        fn(x, y).backward()
    sig = torch.compile(lambda v, t: polyfocal.sigmoid_focal_loss(v, t), backend="aot_eager", fullgraph=True)
    with kernels.backend(backend), pytest.raises((IndexError, RuntimeError), match=match):
        sig(x, y).backward()


# ------------------------------------------------------------------------ 2. NaN / inf logits

NAN_X = [[0.5, NAN, 0.1], [1.0, 2.0, 3.0], [INF, 0.0, 0.0], [-INF, 0.0, 1.0], [0.0, -INF, 1.0], [2.0, 1.0, -INF]]
NAN_Y = [0, 1, 1, 0, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_logits_propagate_as_in_cross_entropy(backend, dtype):
    dev = _device(backend)
    x = torch.tensor(NAN_X, dtype=dtype, device=dev, requires_grad=True)
    y = torch.tensor(NAN_Y, device=dev)
    expected = F.cross_entropy(x, y, reduction="none")
    (expected_grad,) = torch.autograd.grad(F.cross_entropy(x, y), x)
    with kernels.backend(backend):
        ours = polyfocal.cross_entropy(x, y, reduction="none")
        mean = polyfocal.cross_entropy(x, y)
        (grad,) = torch.autograd.grad(mean, x)
        for fn in (polyfocal.softmax_focal_loss, polyfocal.poly1_cross_entropy):
            other = fn(x, y, reduction="none")
            assert torch.equal(other.isnan(), expected.isnan()), fn.__name__
    torch.testing.assert_close(ours, expected.to(ours.dtype), equal_nan=True)
    assert mean.isnan()
    assert torch.equal(grad.isnan(), expected_grad.isnan())
    torch.testing.assert_close(grad, expected_grad, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_logits_never_give_a_finite_sigmoid_loss(backend):
    """NaN logits give NaN as in BCE-with-logits; an infinite logit never gives a finite loss (BCE itself gives
    inf or NaN there, from 0 * inf in its formula); finite logits give BCE's numbers."""
    dev = _device(backend)
    x = torch.tensor(NAN_X, device=dev, requires_grad=True)
    t = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]], device=dev)
    expected = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    with kernels.backend(backend):
        for loss in (
            polyfocal.sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, reduction="none"),
            polyfocal.sigmoid_focal_loss(x, t, reduction="none"),
            polyfocal.poly1_focal_loss(x, t, reduction="none"),
        ):
            assert torch.equal(loss.isnan() & x.isnan(), x.isnan())
            assert not torch.isfinite(loss[x.isinf()]).any()
            assert torch.isfinite(loss[x.isfinite()]).all()
        mean = polyfocal.sigmoid_focal_loss(x, t)
    finite = x.isfinite()
    plain = polyfocal.sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, reduction="none")
    torch.testing.assert_close(plain[finite], expected[finite])
    assert not torch.isfinite(expected[x.isinf()]).any()
    assert mean.isnan()


# ------------------------------------------------------------------------ 3. all ignored


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("shape", "dtype"), [((4, 3), torch.float32), ((4, 3), torch.float64), ((2, 3, 4, 4), torch.float32)]
)
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_all_ignored_mean_is_nan_with_zero_gradient(backend, shape, dtype, gamma):
    dev = _device(backend)
    x = torch.randn(shape, dtype=dtype, device=dev, requires_grad=True)
    y = torch.full((shape[0], *shape[2:]), -100, device=dev)
    with kernels.backend(backend):
        loss = polyfocal.softmax_focal_loss(x, y, gamma=gamma)
        (grad,) = torch.autograd.grad(loss, x)
        sig = polyfocal.sigmoid_focal_loss(x, y, gamma=gamma)
        (sig_grad,) = torch.autograd.grad(sig, x)
    reference = F.cross_entropy(x, y)
    (reference_grad,) = torch.autograd.grad(reference, x)
    assert loss.isnan() and reference.isnan() and sig.isnan()
    assert torch.equal(grad, reference_grad)  # all zeros
    assert torch.equal(sig_grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_step_on_all_ignored_batch_keeps_weights_finite(backend):
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with kernels.backend(backend):
        polyfocal.sigmoid_focal_loss(layer(torch.randn(5, 6)), torch.full((5,), -100)).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in layer.parameters())


# ------------------------------------------------------------------------ 4. gradients of other arguments


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_sigmoid_target_gets_its_gradient(backend):
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    with kernels.backend(backend):
        (gx, gt) = torch.autograd.grad(polyfocal.sigmoid_focal_loss(x, t, gamma=0.0, alpha=None), (x, t))
        (fx, ft) = torch.autograd.grad(polyfocal.poly1_focal_loss(x, t, gamma=1.5), (x, t))
    (ex, et) = torch.autograd.grad(F.binary_cross_entropy_with_logits(x, t), (x, t))
    torch.testing.assert_close((gx, gt), (ex, et))
    (rx, rt) = torch.autograd.grad(
        poly_loss_reference(x, t, activation="sigmoid", epsilon=1.0, gamma=1.5, alpha=0.25), (x, t)
    )
    torch.testing.assert_close((fx, ft), (rx, rt))


def _plain_weighted_focal(x, y, alpha, weight, normalizer, gamma):
    """Textbook float64 softmax focal loss with per-class alpha, weight and a per-row normalizer (mean)."""
    logp = torch.log_softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    loss = weight[y] * alpha[y] * (1 - logp.exp()) ** gamma * -logp / normalizer
    return loss.sum() / weight[y].sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_weight_normalizer_tensors_get_their_gradients(backend):
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,))
    alpha = torch.rand(4, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    norm = (torch.rand(6, dtype=torch.float64) + 1).requires_grad_()
    with kernels.backend(backend):
        ours = polyfocal.softmax_focal_loss(x, y, gamma=2.0, alpha=alpha, weight=weight, normalizer=norm)
        grads = torch.autograd.grad(ours, (x, alpha, weight, norm))
    expected = torch.autograd.grad(_plain_weighted_focal(x, y, alpha, weight, norm, 2.0), (x, alpha, weight, norm))
    torch.testing.assert_close(grads, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_weight_and_pos_weight_tensors_get_their_gradients(backend):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 2, (5, 3)).double()
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    pw = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    with kernels.backend(backend):
        ours = torch.autograd.grad(
            polyfocal.sigmoid_focal_loss(x, t, gamma=0.0, alpha=None, weight=w, pos_weight=pw), (x, w, pw)
        )
    plain = (w * ((1 - t) * -torch.log(1 - x.sigmoid()) - pw * t * torch.log(x.sigmoid()))).mean()
    expected = torch.autograd.grad(plain, (x, w, pw))  # torch's BCE refuses gradients for weight and pos_weight
    torch.testing.assert_close(ours, expected)


# ------------------------------------------------------------------------ 5. second derivatives


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_finite_for_float_binary_targets(backend):
    """optax's extreme-logit Hessian test: float 0/1 targets must give the integer targets' Hessian."""
    v = torch.tensor([2.0, -2.0, 0.3], dtype=torch.float64)

    def hessian(target):
        fn = lambda z: polyfocal.sigmoid_focal_loss(z, target, gamma=2.0, alpha=None, reduction="sum")  # noqa: E731
        with kernels.backend(backend):
            return torch.autograd.functional.hessian(fn, v)

    h_float = hessian(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    h_int = hessian(torch.tensor([1, 0, 1]))
    assert torch.isfinite(h_float).all()
    torch.testing.assert_close(h_float, h_int)
    torch.testing.assert_close(
        h_float.diagonal(), torch.tensor([0.0127, 0.0127, 0.3048], dtype=torch.float64), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_hessian_finite_for_float32_soft_targets_at_large_logits(backend, gamma):
    v = torch.tensor([100.0, -100.0, 30.0, -0.5])
    t = torch.tensor([0.3, 0.0, 1.0, 0.7])
    fn = lambda z: polyfocal.sigmoid_focal_loss(z, t, gamma=gamma, reduction="sum")  # noqa: E731
    with kernels.backend(backend):
        h = torch.autograd.functional.hessian(fn, v)
    assert torch.isfinite(h).all()
    ref = torch.autograd.functional.hessian(
        lambda z: poly_loss_reference(
            z, t.double(), activation="sigmoid", epsilon=0.0, gamma=gamma, alpha=0.25, reduction="sum"
        ),
        v.double().clamp(-30, 30),
    )
    torch.testing.assert_close(h[2:, 2:].double(), ref[2:, 2:], rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------ 6. precision at large C


@pytest.mark.parametrize("backend", ["torch", *[b for b in FUSED if b != "torch"]])
@pytest.mark.parametrize("num_classes", [32_000, 200_000])
def test_cross_entropy_precision_at_vocabulary_sized_c(backend, num_classes):
    if backend == "triton" and not torch.cuda.is_available() and num_classes > 32_000:
        pytest.skip("the Triton interpreter is too slow for C = 200,000 on the CPU")
    gen = torch.Generator().manual_seed(num_classes)
    x = (torch.randn(4, num_classes, generator=gen) * 3).requires_grad_()
    y = torch.randint(0, num_classes, (4,), generator=gen)
    x64 = x.detach().double().requires_grad_()
    exact = F.cross_entropy(x64, y)
    (exact_grad,) = torch.autograd.grad(exact, x64)
    theirs = F.cross_entropy(x, y)
    (theirs_grad,) = torch.autograd.grad(theirs, x)
    with kernels.backend(backend):
        ours = polyfocal.cross_entropy(x, y)
        (ours_grad,) = torch.autograd.grad(ours, x)
    torch_error = max(abs(theirs.double() - exact).item() / exact.item(), 2e-7)
    assert abs(ours.double() - exact).item() / exact.item() <= 4 * torch_error
    torch_grad_error = (theirs_grad.double() - exact_grad).abs().max().item()
    assert (ours_grad.double() - exact_grad).abs().max().item() <= 4 * max(torch_grad_error, 1e-9)


# ------------------------------------------------------------------------ 7. negative class weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_class_weights_match_torch(backend):
    x = torch.tensor([[0.3, -1.2, 0.8], [1.0, 0.2, -0.5]])
    y = torch.tensor([0, 2])
    w = torch.tensor([-1.5, 2.0, 0.5])
    with kernels.backend(backend):
        assert polyfocal.cross_entropy(x, y, w).item() == pytest.approx(0.575288, abs=1e-6)
        assert polyfocal.cross_entropy(x, y, [-1.5, 2.0, 0.5]).item() == pytest.approx(0.575288, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_weights_drawn_like_pytorchs_generated_inputs(backend, label_smoothing):
    """PyTorch's generated inputs draw class weights in [-9, 9]."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (7,), generator=gen)
    y[2] = -100
    w = torch.rand(5, generator=gen, dtype=torch.float64) * 18 - 9
    for reduction in ("none", "sum", "mean"):
        expected = F.cross_entropy(x, y, w, reduction=reduction, label_smoothing=label_smoothing)
        with kernels.backend(backend):
            ours = polyfocal.poly_loss(
                x, y, epsilon=0.0, weight=w, reduction=reduction, label_smoothing=label_smoothing
            )
            grads = torch.autograd.grad(ours.sum(), x)
        torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), x))


def test_negative_alpha_sequence_is_still_refused_and_documented():
    with pytest.raises(ValueError, match="non-negative alpha"):
        polyfocal.softmax_focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), alpha=[0.5, -0.1, 1.0])


# ------------------------------------------------------------------------ 8. torch.compile(fullgraph=True)


@pytest.mark.parametrize("backend", ["auto", "composite"])
def test_compile_with_class_weights_and_changing_hyperparameters(backend):
    """Each distinct gamma / epsilon compiles its own graph, as a changing label_smoothing does for
    F.cross_entropy (dynamo specialises floats that select code paths); 16 configurations need more than dynamo's
    default 8 recompiles (README: torch.compile)."""
    torch._dynamo.reset()

    def fn(v, t, gamma, eps, weight, alpha):
        return polyfocal.softmax_focal_loss(v, t, gamma=gamma, epsilon=eps, weight=weight, alpha=alpha)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    w, a = torch.rand(5) + 0.5, torch.rand(5)
    with kernels.backend(backend), torch._dynamo.config.patch(recompile_limit=64):
        for gamma, eps in [(2.0, 1.0), (1.5, 0.5), (0.5, 2.0), (0.0, 0.0)]:
            for weight, alpha in [(None, None), (w, None), (w, a), (-w, a)]:
                ours = compiled(x, y, gamma, eps, weight, alpha)
                (grad,) = torch.autograd.grad(ours, x)
                expected = fn(x, y, gamma, eps, weight, alpha)
                (expected_grad,) = torch.autograd.grad(expected, x)
                torch.testing.assert_close(ours, expected)
                torch.testing.assert_close(grad, expected_grad)


def test_compile_sigmoid_with_weight_and_changing_gamma():
    torch._dynamo.reset()
    fn = lambda v, t, g, w: polyfocal.sigmoid_focal_loss(v, t, gamma=g, weight=w)  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    x, t = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float()
    for g in (2.0, 1.0, 0.25):
        w = torch.rand(4)
        torch.testing.assert_close(compiled(x, t, g, w), fn(x, t, g, w))


# ------------------------------------------------------------------------ 9. small ones


@pytest.mark.parametrize("wrap", [torch.tensor, np.array, np.float32], ids=["tensor", "ndarray", "numpy-scalar"])
def test_zero_dim_tensor_and_array_hyperparameters(wrap):
    x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    expected = polyfocal.softmax_focal_loss(x, y, gamma=1.5, epsilon=0.5, label_smoothing=0.1)
    ours = polyfocal.softmax_focal_loss(x, y, gamma=wrap(1.5), epsilon=wrap(0.5), label_smoothing=wrap(0.1))
    assert torch.equal(ours, expected)
    sig = polyfocal.sigmoid_focal_loss(x, y, alpha=wrap(0.25), normalizer=wrap(2.0))
    assert torch.equal(sig, polyfocal.sigmoid_focal_loss(x, y, alpha=0.25, normalizer=2.0))


def test_hyperparameter_tensor_that_requires_grad_is_refused():
    with pytest.raises(TypeError, match="requires grad"):
        polyfocal.softmax_focal_loss(
            torch.randn(2, 3), torch.tensor([0, 1]), gamma=torch.tensor(2.0, requires_grad=True)
        )


def test_ignore_index_outside_int64_is_a_clear_error():
    with pytest.raises(ValueError, match="expected ignore_index in the int64 range"):
        polyfocal.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), ignore_index=2**64)


def test_weight_on_meta_device_is_a_clear_error():
    with pytest.raises(ValueError, match="expected weight on the input's device"):
        polyfocal.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), weight=torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="expected weight on the input's device"):
        polyfocal.sigmoid_focal_loss(torch.randn(3, 4), torch.rand(3, 4), weight=torch.ones(4, device="meta"))


def test_clcarwin_shim_with_empty_batch():
    for shape in [(0, 3), (0, 3, 4, 4)]:
        x = torch.randn(shape, requires_grad=True)
        y = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
        assert ClcarwinFocalLoss(gamma=2)(x, y).isnan()
        assert ClcarwinFocalLoss(gamma=2, size_average=False)(x, y).item() == 0.0


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_functorch_grad_vmap_jvp(activation):
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])

    def fn(v):
        return polyfocal.poly_loss(v, y, activation=activation, gamma=1.5, epsilon=1.0)

    def ref(v):
        return poly_loss_reference(v, y, activation=activation, gamma=1.5, epsilon=1.0)

    torch.testing.assert_close(torch.func.grad(fn)(x), torch.func.grad(ref)(x))
    batch = torch.randn(3, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(fn)(batch), torch.stack([ref(b) for b in batch]))
    tangent = torch.randn_like(x)
    torch.testing.assert_close(torch.func.jvp(fn, (x,), (tangent,)), torch.func.jvp(ref, (x,), (tangent,)))


@pytest.mark.parametrize("target", [polyfocal.cross_entropy, polyfocal.sigmoid_focal_loss, polyfocal.PolyLoss()])
def test_torchscript_is_refused_with_the_alternative(target):
    with pytest.raises(TypeError, match=r"torch\.compile"):
        torch.jit.script(target)
