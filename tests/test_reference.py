"""Every public loss against the plain float64 textbook reference (values and input gradients)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import polyfocal
from polyfocal.reference import poly_loss_reference

REDUCTIONS = ("none", "mean", "sum")
FLT_MIN = torch.finfo(torch.float32).tiny  # a tiny positive parameter hypothesis draws now and then (issue 18)


def _grads(loss: torch.Tensor, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """d(sum(g * loss))/dx with a fixed random ``g`` (grad_output != 1)."""
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=loss.dtype) + 0.5
    (grad,) = torch.autograd.grad((loss * g).sum(), x)
    return grad


def _softmax_case(shape, *, index: bool, ignore: bool, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if index:
        y = torch.randint(0, num_classes, batch, generator=gen)
        if ignore and y.numel() > 1:
            y.view(-1)[:: max(1, y.numel() // 3)] = -100
            y.view(-1)[1] = 0  # keep at least one valid element
    else:
        y = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, dim=1 if len(shape) > 1 else 0)
    return x, y


def _compare(ours, ref, x_ours, x_ref, *, rtol, atol):
    # equal_nan: a mean over nothing (every element ignored) is nan in both, as in F.cross_entropy
    # (its gradient is then undefined: 0 * inf), so gradients are compared only where the loss is a number
    torch.testing.assert_close(ours.to(torch.float64), ref, rtol=rtol, atol=atol, equal_nan=True)
    if ref.isnan().any():
        return
    ours_grad = _grads(ours, x_ours).to(torch.float64)
    ref_grad = _grads(ref.to(ours.dtype), x_ref).to(torch.float64)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=rtol, atol=atol)


SOFTMAX_SHAPES = [(7, 5), (3, 4, 6), (2, 3, 4, 3), (6,), (1, 1), (5, 2)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
@pytest.mark.parametrize("index", [True, False], ids=["index", "prob"])
@pytest.mark.parametrize(
    ("gamma", "epsilon"), [(0.0, ()), (0.0, 1.0), (2.0, ()), (0.5, 2.0), (1.5, (1.0, -0.5, 0.25)), (3.0, -1.0)]
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_poly_loss_matches_reference(shape, index, gamma, epsilon, reduction):
    x, y = _softmax_case(shape, index=index, ignore=True, seed=hash((shape, index)) % 1000)
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    kw = dict(epsilon=epsilon, gamma=gamma, reduction=reduction)
    ours = polyfocal.poly_loss(x, y, **kw)
    x_ref = x.detach().clone().requires_grad_()
    ref = poly_loss_reference(x_ref, y, **kw)
    if num_classes == 1 and 0 < gamma < 1:
        # one class: p_t == 1 identically, the loss is constant and its true gradient is 0; the textbook
        # power (1 - p_t) ** gamma has an infinite derivative there, so only the values are comparable
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        assert torch.equal(_grads(ours, x), torch.zeros_like(x))
        return
    _compare(ours, ref, x, x_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("index", [True, False], ids=["index", "prob"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15, 1.0])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_weights_smoothing_ignore_match_reference(index, label_smoothing, with_alpha, with_weight, reduction):
    shape = (6, 4, 3)
    x, y = _softmax_case(shape, index=index, ignore=True, seed=11)
    gen = torch.Generator().manual_seed(3)
    alpha = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.1).tolist() if with_alpha else None
    weight = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1 if with_weight else None
    kw = dict(
        epsilon=(1.0, 0.5),
        gamma=1.5,
        alpha=alpha,
        weight=weight,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    ours = polyfocal.poly_loss(x, y, **kw)
    x_ref = x.detach().clone().requires_grad_()
    ref = poly_loss_reference(x_ref, y, **kw)
    _compare(ours, ref, x, x_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalizer", [None, 4.0, "tensor"])
def test_softmax_normalizer_matches_reference(reduction, normalizer):
    x, y = _softmax_case((5, 3, 2), index=True, ignore=False, seed=5)
    if normalizer == "tensor":
        normalizer = torch.rand(1, 2, dtype=torch.float64) + 0.5
    kw = dict(epsilon=1.0, gamma=2.0, normalizer=normalizer, reduction=reduction)
    x_ref = x.detach().clone().requires_grad_()
    _compare(polyfocal.poly_loss(x, y, **kw), poly_loss_reference(x_ref, y, **kw), x, x_ref, rtol=1e-9, atol=1e-12)


def _sigmoid_case(shape, *, kind: str, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    if kind == "binary":
        t = torch.randint(0, 2, shape, generator=gen).to(torch.float64)
    elif kind == "soft":
        t = torch.rand(shape, generator=gen, dtype=torch.float64)
        t.view(-1)[::4] = 1.0  # exact 0/1 values mixed with soft ones
        t.view(-1)[1::4] = 0.0
    elif kind == "multihot-int":
        t = torch.randint(0, 2, shape, generator=gen)
    else:  # class indices: background = C, plus ignore_index
        num_classes = shape[1]
        t = torch.randint(0, num_classes + 1, shape[:1] + shape[2:], generator=gen)
        t.view(-1)[::3] = -100
    return x, t


@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 4), (2, 3, 2, 2), (9,)])
@pytest.mark.parametrize("kind", ["binary", "soft", "multihot-int", "index"])
@pytest.mark.parametrize(
    ("gamma", "alpha", "epsilon"), [(0.0, None, ()), (2.0, 0.25, ()), (0.5, 0.75, 1.0), (1.5, None, (2.0, -0.5))]
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_poly_loss_matches_reference(shape, kind, gamma, alpha, epsilon, reduction):
    if kind == "index" and len(shape) < 2:
        shape = (shape[0], 3)
    x, t = _sigmoid_case(shape, kind=kind, seed=len(shape) * 7 + len(kind))
    kw = dict(activation="sigmoid", epsilon=epsilon, gamma=gamma, alpha=alpha, reduction=reduction)
    ours = polyfocal.poly_loss(x, t, **kw)
    x_ref = x.detach().clone().requires_grad_()
    ref = poly_loss_reference(x_ref, t, **kw)
    _compare(ours, ref, x, x_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["soft", "index"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sigmoid_weight_pos_weight_normalizer_smoothing(kind, label_smoothing, reduction):
    x, t = _sigmoid_case((5, 4, 3), kind=kind, seed=2)
    gen = torch.Generator().manual_seed(9)
    weight = torch.rand(4, 1, generator=gen, dtype=torch.float64) + 0.5
    pos_weight = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    normalizer = torch.rand(1, 4, 1, generator=gen, dtype=torch.float64) + 1.0
    kw = dict(
        activation="sigmoid",
        epsilon=1.0,
        gamma=2.0,
        alpha=0.25,
        weight=weight,
        pos_weight=pos_weight,
        normalizer=normalizer,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    x_ref = x.detach().clone().requires_grad_()
    _compare(polyfocal.poly_loss(x, t, **kw), poly_loss_reference(x_ref, t, **kw), x, x_ref, rtol=1e-9, atol=1e-12)


def test_sigmoid_unbatched_index_target():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for y in [torch.tensor(2), torch.tensor(4), torch.tensor(-100)]:
        kw = dict(activation="sigmoid", gamma=2.0, alpha=0.25, reduction="none")
        ours = polyfocal.poly_loss(x, y, **kw)
        x_ref = x.detach().clone().requires_grad_()
        _compare(ours, poly_loss_reference(x_ref, y, **kw), x, x_ref, rtol=1e-9, atol=1e-12)


WRAPPERS = {
    "cross_entropy": (polyfocal.cross_entropy, dict(), dict(epsilon=(), gamma=0.0)),
    "poly1_cross_entropy": (polyfocal.poly1_cross_entropy, dict(epsilon=2.0), dict(epsilon=2.0, gamma=0.0)),
    "softmax_focal_loss": (
        polyfocal.softmax_focal_loss,
        dict(gamma=2.0, alpha=[0.25, 0.75, 0.5]),
        dict(gamma=2.0, alpha=[0.25, 0.75, 0.5], epsilon=()),
    ),
    "softmax_focal_poly": (
        polyfocal.softmax_focal_loss,
        dict(gamma=0.7, epsilon=(1.0, 1.0)),
        dict(gamma=0.7, epsilon=(1.0, 1.0)),
    ),
    "sigmoid_focal_loss": (
        polyfocal.sigmoid_focal_loss,
        dict(),
        dict(activation="sigmoid", gamma=2.0, alpha=0.25, epsilon=()),
    ),
    "poly1_focal_loss": (
        polyfocal.poly1_focal_loss,
        dict(epsilon=-1.0, gamma=1.0, alpha=None),
        dict(activation="sigmoid", gamma=1.0, alpha=None, epsilon=-1.0),
    ),
}


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_named_wrappers_match_reference(name, reduction):
    fn, kwargs, ref_kwargs = WRAPPERS[name]
    x, y = _softmax_case((8, 3, 2), index=True, ignore=False, seed=21)
    if ref_kwargs.get("activation") == "sigmoid":
        y = (torch.rand(8, 3, 2, generator=torch.Generator().manual_seed(4)) > 0.6).to(torch.float64)
    ours = fn(x, y, reduction=reduction, **kwargs)
    x_ref = x.detach().clone().requires_grad_()
    ref = poly_loss_reference(x_ref, y, reduction=reduction, **ref_kwargs)
    _compare(ours, ref, x, x_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_low_precision_inputs_use_fp32_math(dtype, activation):
    """fp32 loss close to the float64 reference on the same (rounded) values; gradient in the input dtype."""
    x, y = _softmax_case((16, 5, 3), index=True, ignore=True, seed=8, dtype=dtype)
    if activation == "sigmoid":
        y = torch.where(y == -100, 5, y)  # background
    kw = dict(activation=activation, epsilon=1.0, gamma=2.0, reduction="none")
    ours = polyfocal.poly_loss(x, y, **kw)
    assert ours.dtype == torch.float32
    x_ref = x.detach().to(torch.float64).requires_grad_()
    ref = poly_loss_reference(x_ref, y, **kw)
    torch.testing.assert_close(ours.to(torch.float64), ref, rtol=2e-6, atol=2e-6)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert grad.dtype == dtype
    (ref_grad,) = torch.autograd.grad(ref.sum(), x_ref)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(grad.to(torch.float64), ref_grad, rtol=tol, atol=tol)


@st.composite
def _softmax_problem(draw):
    ndim = draw(st.integers(1, 4))
    num_classes = draw(st.integers(1, 6))
    shape = (
        (num_classes,)
        if ndim == 1
        else (
            draw(st.integers(1, 5)),
            num_classes,
            *draw(st.lists(st.integers(1, 3), min_size=ndim - 2, max_size=ndim - 2)),
        )
    )
    return shape


@settings(max_examples=60, deadline=None)
# tiny positive and subnormal parameters, pinned so that every profile (derandomised CI too) runs them (issue 18)
@example((5, 6), True, FLT_MIN, [FLT_MIN, 5e-324], 0.05, True, True, "mean", 1)
@example((4, 3, 2), False, 5e-324, [5e-324], 0.0, False, True, "none", 2)
@given(
    shape=_softmax_problem(),
    index=st.booleans(),
    gamma=st.floats(0.0, 4.0),
    epsilon=st.lists(st.floats(-2.0, 4.0), max_size=3),
    label_smoothing=st.sampled_from([0.0, 0.05, 0.5]),
    use_alpha=st.booleans(),
    use_weight=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_property_softmax_family(shape, index, gamma, epsilon, label_smoothing, use_alpha, use_weight, reduction, seed):
    x, y = _softmax_case(shape, index=index, ignore=index and seed % 2 == 0, seed=seed)
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    kw = dict(
        epsilon=tuple(epsilon),
        gamma=gamma,
        alpha=(torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.1) if use_alpha else None,
        weight=(torch.rand(num_classes, generator=gen, dtype=torch.float64) + 0.1) if use_weight else None,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    ours = polyfocal.poly_loss(x, y, **kw)
    x_ref = x.detach().clone().requires_grad_()
    ref = poly_loss_reference(x_ref, y, **kw)
    if num_classes == 1 and 0 < gamma < 1:  # constant loss, see test_softmax_poly_loss_matches_reference
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
        assert torch.equal(_grads(ours, x), torch.zeros_like(x))
        return
    _compare(ours, ref, x, x_ref, rtol=1e-8, atol=1e-10)


@settings(max_examples=60, deadline=None)
@example([4, 3], 5, "soft", FLT_MIN, FLT_MIN, [5e-324], "mean", 1)
@example([3, 2], 4, "index", 5e-324, 1.0 - 2.0**-53, [FLT_MIN, 0.0], "none", 2)
@example([6], 3, "binary", 1e-300, 5e-324, [], "sum", 3)
@given(
    batch=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    num_classes=st.integers(1, 5),
    kind=st.sampled_from(["binary", "soft", "index"]),
    gamma=st.floats(0.0, 4.0),
    alpha=st.one_of(st.none(), st.floats(0.0, 1.0)),
    epsilon=st.lists(st.floats(-2.0, 4.0), max_size=2),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_property_sigmoid_family(batch, num_classes, kind, gamma, alpha, epsilon, reduction, seed):
    shape = (batch[0], num_classes, *batch[1:])
    x, t = _sigmoid_case(shape, kind=kind, seed=seed)
    kw = dict(activation="sigmoid", epsilon=tuple(epsilon), gamma=gamma, alpha=alpha, reduction=reduction)
    ours = polyfocal.poly_loss(x, t, **kw)
    x_ref = x.detach().clone().requires_grad_()
    _compare(ours, poly_loss_reference(x_ref, t, **kw), x, x_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    ("activation", "kwargs"),
    list(
        itertools.product(
            ["softmax", "sigmoid"],
            [dict(gamma=0.0, epsilon=1.0), dict(gamma=2.0, epsilon=()), dict(gamma=1.5, epsilon=(1.0, 2.0))],
        )
    ),
)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_gradcheck_and_gradgradcheck(activation, kwargs, label_smoothing):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if activation == "softmax":
        y = torch.randint(0, 3, (4, 2), generator=gen)
        y[0, 0] = -100
        alpha = [0.3, 0.5, 0.2]
    else:
        y = torch.randint(0, 4, (4, 2), generator=gen)  # 3 = background
        alpha = 0.25
    fn = lambda inp: polyfocal.poly_loss(  # noqa: E731
        inp, y, activation=activation, alpha=alpha, label_smoothing=label_smoothing, reduction="none", **kwargs
    )
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
