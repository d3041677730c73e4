"""Identities against torch's own losses and closed forms (independent of polyfocal.reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import polyfocal

REDUCTIONS = ("none", "mean", "sum")
FLT_MIN = torch.finfo(torch.float32).tiny  # a tiny positive parameter hypothesis draws now and then (issue 18)


def _values_and_grads(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    g = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view(out.shape)
    (grad,) = torch.autograd.grad((out * g).sum(), x)
    return out.detach(), grad


CE_CASES = [
    # (input shape, target kind)
    ((8, 5), "index"),
    ((4, 3, 7), "index"),
    ((2, 4, 3, 3), "index"),
    ((5,), "index"),
    ((8, 5), "prob"),
    ((3, 4, 2, 2), "prob"),
    ((6,), "prob"),
]


def _ce_inputs(shape, kind, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) * 3
    class_dim = 1 if len(shape) > 1 else 0
    num_classes = shape[class_dim]
    if kind == "index":
        y = torch.randint(0, num_classes, shape[:class_dim] + shape[class_dim + 1 :], generator=gen)
        if y.ndim and y.numel() > 2:
            y.view(-1)[::3] = -100
            y.view(-1)[1] = 1
    else:
        y = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), class_dim).to(dtype)
    return x, y, num_classes


@pytest.mark.parametrize(("shape", "kind"), CE_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_equals_torch(shape, kind, reduction, use_weight, label_smoothing, dtype):
    x, y, num_classes = _ce_inputs(shape, kind, dtype)
    weight = torch.linspace(0.2, 2.0, num_classes, dtype=dtype) if use_weight else None
    kw = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    ours, ours_grad = _values_and_grads(polyfocal.cross_entropy, x, y, **kw)
    ref, ref_grad = _values_and_grads(F.cross_entropy, x, y, **kw)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(ours_grad, ref_grad, **tol)
    # the general entry point with gamma=0 and no poly term is the same function
    same = polyfocal.poly_loss(x, y, epsilon=0.0, gamma=0.0, **kw)
    torch.testing.assert_close(same, ref, **tol)
    module = polyfocal.CrossEntropyLoss(weight, reduction=reduction, label_smoothing=label_smoothing)
    torch_module = torch.nn.CrossEntropyLoss(weight, reduction=reduction, label_smoothing=label_smoothing)
    torch.testing.assert_close(module(x, y), torch_module(x, y), **tol)


@pytest.mark.parametrize("ignore_index", [-1, 2, -100])
def test_cross_entropy_ignore_index_values(ignore_index):
    x, _, _ = _ce_inputs((10, 4), "index", torch.float64)
    y = torch.tensor([0, 1, 2, 3, 2, 2, 1, 0, 3, 3])
    if ignore_index == -1:
        y[::2] = -1
    for reduction in REDUCTIONS:
        kw = dict(weight=torch.rand(4, dtype=torch.float64), ignore_index=ignore_index, reduction=reduction)
        torch.testing.assert_close(polyfocal.cross_entropy(x, y, **kw), F.cross_entropy(x, y, **kw))


def test_all_ignored_mean_is_nan_like_torch():
    x = torch.randn(3, 4)
    y = torch.full((3,), -100)
    assert torch.isnan(F.cross_entropy(x, y))
    assert torch.isnan(polyfocal.cross_entropy(x, y))
    assert torch.isnan(polyfocal.poly_loss(x, y, gamma=2.0))
    assert polyfocal.poly_loss(x, y, reduction="sum") == 0


def test_empty_batch_matches_torch():
    x, y = torch.randn(0, 4), torch.zeros(0, dtype=torch.long)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(
            polyfocal.cross_entropy(x, y, reduction=reduction),
            F.cross_entropy(x, y, reduction=reduction),
            equal_nan=True,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("use_pos_weight", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_gamma0_equals_bce_with_logits(reduction, use_weight, use_pos_weight, soft):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64) * 3
    t = torch.rand(6, 4, 3, generator=gen, dtype=torch.float64)
    t = t if soft else (t > 0.5).to(t.dtype)
    kw = dict(
        weight=torch.rand(4, 3, generator=gen, dtype=torch.float64) if use_weight else None,
        pos_weight=torch.rand(3, generator=gen, dtype=torch.float64) * 3 if use_pos_weight else None,
        reduction=reduction,
    )
    ours, ours_grad = _values_and_grads(
        polyfocal.poly_loss, x, t, activation="sigmoid", gamma=0.0, alpha=None, epsilon=0.0, **kw
    )
    ref, ref_grad = _values_and_grads(F.binary_cross_entropy_with_logits, x, t, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-12, atol=1e-12)


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss's formula (torchvision is not installable here), transcribed."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


@pytest.mark.parametrize("alpha", [0.25, 0.9, -1])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_focal_equals_torchvision(alpha, gamma, reduction, dtype):
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(32, 5, generator=gen, dtype=torch.float64) * 4).to(dtype)
    t = (torch.rand(32, 5, generator=gen) > 0.7).to(dtype)
    ours, ours_grad = _values_and_grads(
        polyfocal.sigmoid_focal_loss, x, t, gamma=gamma, alpha=None if alpha < 0 else alpha, reduction=reduction
    )
    # The formula evaluated in float64: in float32, F.binary_cross_entropy_with_logits itself loses ~3e-7
    # absolute on confident elements (it adds log1p(e^-|x|) to |x| before subtracting), which polyfocal avoids.
    ref, ref_grad = _values_and_grads(
        torchvision_sigmoid_focal_loss, x.double(), t.double(), alpha=alpha, gamma=gamma, reduction=reduction
    )
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, ref.to(dtype), **tol)
    torch.testing.assert_close(ours_grad, ref_grad.to(dtype), **tol)


@settings(max_examples=40, deadline=None)
@example(gamma=FLT_MIN, alpha=[0.05, 1.0, 2.0, 0.5], seed=1)  # tiny positive exponents (issue 18)
@example(gamma=5e-324, alpha=[1.0, 1.0, 1.0, 1.0], seed=2)
@given(
    gamma=st.floats(0.0, 5.0),
    alpha=st.lists(st.floats(0.05, 2.0), min_size=4, max_size=4),
    seed=st.integers(0, 1000),
)
def test_softmax_focal_over_ce_ratio_is_alpha_t_times_modulator(gamma, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (12,), generator=gen)
    focal = polyfocal.softmax_focal_loss(x, y, gamma=gamma, alpha=alpha, reduction="none")
    ce = F.cross_entropy(x, y, reduction="none")
    p_t = torch.softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    expected = torch.tensor(alpha, dtype=torch.float64)[y] * (1 - p_t) ** gamma
    torch.testing.assert_close(focal / ce, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@example(gamma=FLT_MIN, alpha=5e-324, seed=1)  # tiny positive and subnormal parameters (issue 18)
@example(gamma=5e-324, alpha=1.0 - 2.0**-53, seed=2)
@given(gamma=st.floats(0.0, 5.0), alpha=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_sigmoid_focal_over_bce_ratio_is_alpha_t_times_modulator(gamma, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(10, 3, generator=gen, dtype=torch.float64)
    focal = polyfocal.sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = torch.sigmoid(x)
    p_t = t * p + (1 - t) * (1 - p)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    torch.testing.assert_close(focal / bce, alpha_t * (1 - p_t) ** gamma, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(epsilon=st.floats(-1.0, 5.0), seed=st.integers(0, 1000))
def test_poly1_gradient_is_row_scaled_softmax_minus_onehot(epsilon, seed):
    """For hard labels, d(CE + eps (1 - p_t))/dx = (1 + eps p_t) (softmax - onehot)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (9,), generator=gen)
    (grad,) = torch.autograd.grad(polyfocal.poly1_cross_entropy(x, y, epsilon=epsilon, reduction="sum"), x)
    p = torch.softmax(x.detach(), 1)
    p_t = p.gather(1, y[:, None])
    torch.testing.assert_close(grad, (1 + epsilon * p_t) * (p - F.one_hot(y, 6)), rtol=1e-10, atol=1e-12)


def test_poly1_focal_is_focal_plus_eps_power():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    t = (torch.rand(7, 3, generator=gen) > 0.5).double()
    fl = torchvision_sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
    p = torch.sigmoid(x)
    p_t = t * p + (1 - t) * (1 - p)
    torch.testing.assert_close(
        polyfocal.poly1_focal_loss(x, t, epsilon=1.5, reduction="none"), fl + 1.5 * (1 - p_t) ** 3
    )


def test_sigmoid_class_indices_equal_dense_one_hot_with_background():
    """Index C is background (all-zero row): PaddleDetection's one-hot over C + 1 classes minus the last."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (10, 3), generator=gen)
    dense = F.one_hot(y, 5)[..., :4].movedim(-1, 1).double()
    for reduction in REDUCTIONS:
        torch.testing.assert_close(
            polyfocal.sigmoid_focal_loss(x, y, reduction=reduction),
            polyfocal.sigmoid_focal_loss(x, dense, reduction=reduction),
        )


def test_sigmoid_ignore_index_masks_rows_and_mean_counts_the_rest():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, -100, 2, 3, -100, 1])
    keep = y != -100
    full = polyfocal.sigmoid_focal_loss(x, y, reduction="none")
    assert torch.equal(full[~keep], torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(full[keep], polyfocal.sigmoid_focal_loss(x[keep], y[keep], reduction="none"))
    torch.testing.assert_close(
        polyfocal.sigmoid_focal_loss(x, y, reduction="mean"), polyfocal.sigmoid_focal_loss(x[keep], y[keep])
    )


def test_epsilon_zero_and_empty_sequence_are_focal():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    a = polyfocal.poly_loss(x, y, gamma=2.0, epsilon=0.0)
    torch.testing.assert_close(a, polyfocal.poly_loss(x, y, gamma=2.0, epsilon=()))
    torch.testing.assert_close(a, polyfocal.softmax_focal_loss(x, y, gamma=2.0))


def test_alpha_does_not_weight_the_poly_term():
    """alpha scales only the focal-CE term (seed 000); weight scales the whole element loss."""
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0, 2])
    alpha = torch.tensor([0.2, 0.5, 3.0], dtype=torch.float64)
    ce = F.cross_entropy(x, y, reduction="none")
    p_t = torch.exp(-ce)
    got = polyfocal.poly_loss(x, y, gamma=1.0, epsilon=2.0, alpha=alpha, reduction="none")
    torch.testing.assert_close(got, alpha[y] * (1 - p_t) * ce + 2.0 * (1 - p_t) ** 2)
    got_w = polyfocal.poly_loss(x, y, gamma=1.0, epsilon=2.0, weight=alpha, reduction="none")
    torch.testing.assert_close(got_w, alpha[y] * ((1 - p_t) * ce + 2.0 * (1 - p_t) ** 2))
