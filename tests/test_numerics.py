"""Finite losses and gradients where the textbook formulas break: p_t -> 1, |logit| = 1e4, gamma < 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polyfocal

GAMMAS = [0.1, 0.5, 0.9, 1.0, 2.0]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _loss_and_grad(x, y, **kw):
    x = x.detach().clone().requires_grad_()
    loss = polyfocal.poly_loss(x, y, **kw)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


def _extreme_softmax_logits(dtype):
    # row 0: target far ahead (p_t rounds to 1); row 1: target far behind; row 2: ties at 1e4;
    # row 3: target ahead by 40 (p_t == 1 in float32, 1 - p_t ~ 4e-18 in float64)
    x = torch.tensor([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0], [1e4, 1e4, 1e4], [40.0, 0.0, 0.0]], dtype=torch.float64)
    return x.to(dtype), torch.tensor([0, 0, 1, 0])


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epsilon", [0.0, 1.0, (1.0, -0.5)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_softmax_extreme_logits_are_finite(gamma, dtype, epsilon, label_smoothing):
    x, y = _extreme_softmax_logits(dtype)
    loss, grad = _loss_and_grad(x, y, gamma=gamma, epsilon=epsilon, label_smoothing=label_smoothing, reduction="none")
    assert torch.isfinite(loss).all(), loss
    assert torch.isfinite(grad).all(), grad
    # probability targets (one-hot and soft) take the general path
    q = F.one_hot(y, 3).to(dtype)
    loss, grad = _loss_and_grad(x, q, gamma=gamma, epsilon=epsilon, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    soft = torch.tensor([[0.9, 0.1, 0.0]] * 4, dtype=dtype)
    loss, grad = _loss_and_grad(x, soft, gamma=gamma, epsilon=epsilon, reduction="none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_confident_correct_row_has_tiny_loss_and_zero_gradient(gamma, dtype):
    x = torch.tensor([[1e4, 0.0, -1e4]], dtype=dtype)
    loss, grad = _loss_and_grad(x, torch.tensor([0]), gamma=gamma, epsilon=1.0, reduction="none")
    assert float(loss.detach()) == 0.0  # CE and (1 - p_t) underflow to exactly 0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_softmax_gradient_matches_closed_form_where_pt_near_one(gamma):
    """At 1 - p_t ~ 4e-9 the log-space gradient equals the analytic one written in u = 1 - p_t."""
    x = torch.tensor([[20.0, 0.0, 0.0]], dtype=torch.float64)
    _, grad = _loss_and_grad(x, torch.tensor([0]), gamma=gamma, epsilon=0.0, reduction="sum")
    x0 = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    u = 2 * torch.exp(-x0) / (1 + 2 * torch.exp(-x0))  # 1 - p_t without cancellation
    loss = u**gamma * torch.log1p(2 * torch.exp(-x0))  # (1 - p_t)^gamma * CE
    (d0,) = torch.autograd.grad(loss, x0)
    torch.testing.assert_close(grad[0, 0], d0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_sigmoid_extreme_logits_are_finite(gamma, dtype, alpha, epsilon):
    x = torch.tensor([[1e4, -1e4, 0.0, 1e4], [-1e4, 1e4, 30.0, -30.0]], dtype=torch.float64).to(dtype)
    hard = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=dtype)
    soft = torch.tensor([[0.9, 0.1, 0.5, 1.0], [0.0, 0.3, 1.0, 0.7]], dtype=dtype)
    index = torch.tensor([0, 4])  # C = 4 is background
    for target in (hard, soft, index):
        loss, grad = _loss_and_grad(
            x, target, activation="sigmoid", gamma=gamma, alpha=alpha, epsilon=epsilon, reduction="none"
        )
        assert torch.isfinite(loss).all(), (target, loss)
        assert torch.isfinite(grad).all(), (target, grad)
        assert grad.dtype == dtype


def test_sigmoid_confident_correct_elements_have_zero_gradient_for_gamma_below_one():
    x = torch.tensor([1e4, -1e4, 50.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0])
    loss = polyfocal.sigmoid_focal_loss(x, t, gamma=0.5, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.equal(grad[:2], torch.zeros(2))  # the true gradient underflows to 0
    assert torch.isfinite(grad[2]) and 0 < -float(grad[2]) < 1e-30  # ~ -1.5 e^-75, not NaN or inf
    assert torch.equal(loss.detach()[:2], torch.zeros(2))


def test_half_precision_loss_is_float32_and_close_to_float32_math():
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(64, 10, generator=gen) * 5
    y = torch.randint(0, 10, (64,), generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        xl = x32.to(dtype)
        got = polyfocal.softmax_focal_loss(xl, y, gamma=2.0, epsilon=1.0)
        assert got.dtype == torch.float32
        # fp32 math on the rounded input: identical to feeding the float32 upcast
        torch.testing.assert_close(got, polyfocal.softmax_focal_loss(xl.float(), y, gamma=2.0, epsilon=1.0))
        # and close to the unrounded float32 result (difference only from input rounding)
        torch.testing.assert_close(
            got, polyfocal.softmax_focal_loss(x32, y, gamma=2.0, epsilon=1.0), rtol=2e-2, atol=2e-2
        )
