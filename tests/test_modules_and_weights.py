"""nn.Module twins (one functional call, buffers, repeated calls) and class_balanced_alpha."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import polyfocal

GEN = torch.Generator().manual_seed(0)
X = torch.randn(6, 4, 3, generator=GEN, dtype=torch.float64)
Y = torch.randint(0, 4, (6, 3), generator=GEN)
T = (torch.rand(6, 4, 3, generator=GEN) > 0.6).double()

TWINS = [
    (polyfocal.PolyLoss, polyfocal.poly_loss, dict(epsilon=[1.0, 0.5], gamma=1.5, alpha=[0.1, 0.2, 0.3, 0.4]), "index"),
    (polyfocal.PolyLoss, polyfocal.poly_loss, dict(activation="sigmoid", gamma=2.0, alpha=0.25), "dense"),
    (polyfocal.CrossEntropyLoss, polyfocal.cross_entropy, dict(weight=torch.rand(4, dtype=torch.float64)), "index"),
    (polyfocal.Poly1CrossEntropyLoss, polyfocal.poly1_cross_entropy, dict(epsilon=2.0, label_smoothing=0.1), "index"),
    (polyfocal.SoftmaxFocalLoss, polyfocal.softmax_focal_loss, dict(gamma=2.0, weight=[1.0, 2.0, 1.0, 0.5]), "index"),
    (polyfocal.SigmoidFocalLoss, polyfocal.sigmoid_focal_loss, dict(alpha=None, normalizer=3.0), "index"),
    (polyfocal.Poly1FocalLoss, polyfocal.poly1_focal_loss, dict(epsilon=-1.0, pos_weight=torch.tensor([2.0])), "dense"),
]


@pytest.mark.parametrize(("module", "function", "kwargs", "target"), TWINS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_module_equals_function(module, function, kwargs, target, reduction):
    crit = module(reduction=reduction, **kwargs)
    y = Y if target == "index" else T
    for _ in range(3):  # repeated calls stay correct
        x = X.clone().requires_grad_()
        got = crit(x, y)
        want = function(X.clone().requires_grad_(), y, reduction=reduction, **kwargs)
        torch.testing.assert_close(got, want)
        (g1,) = torch.autograd.grad(got.sum(), x)
        assert torch.isfinite(g1).all()


def test_tensor_hyperparameters_are_buffers_that_follow_the_module():
    crit = polyfocal.SoftmaxFocalLoss(alpha=[0.25, 0.75, 0.5, 1.0], weight=torch.ones(4))
    assert set(dict(crit.named_buffers())) == {"alpha", "weight"}
    assert set(crit.state_dict()) == {"alpha", "weight"}
    crit = crit.double()
    assert crit.alpha.dtype == torch.float64
    clone = copy.deepcopy(crit)
    torch.testing.assert_close(clone(X, Y), crit(X, Y))


def test_forward_normalizer_overrides_constructor():
    crit = polyfocal.SigmoidFocalLoss(normalizer=2.0, reduction="sum")
    torch.testing.assert_close(crit(X, T, normalizer=4.0), polyfocal.sigmoid_focal_loss(X, T, reduction="sum") / 4)
    torch.testing.assert_close(crit(X, T), polyfocal.sigmoid_focal_loss(X, T, reduction="sum") / 2)


def test_module_repr_lists_hyperparameters():
    text = repr(polyfocal.Poly1FocalLoss(epsilon=2.0))
    assert "epsilon=2.0" in text and "gamma=2.0" in text and "alpha=0.25" in text


def _class_balanced_plain(counts, beta):
    weights = [(1 - beta) / (1 - beta**n) for n in counts]
    return [w * len(counts) / sum(weights) for w in weights]


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 100000), min_size=1, max_size=20),
    beta=st.sampled_from([0.5, 0.9, 0.99, 0.999, 0.9999]),
)
def test_class_balanced_alpha_matches_paper_formula(counts, beta):
    got = polyfocal.class_balanced_alpha(counts, beta=beta)
    assert got.dtype == torch.float32 and got.shape == (len(counts),)
    torch.testing.assert_close(
        got.double(), torch.tensor(_class_balanced_plain(counts, beta), dtype=torch.float64), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        got.double().sum(), torch.tensor(float(len(counts)), dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_class_balanced_alpha_limits():
    counts = [1000, 100, 10]
    torch.testing.assert_close(polyfocal.class_balanced_alpha(counts, beta=0.0), torch.ones(3))
    inverse = torch.tensor([1 / 1000, 1 / 100, 1 / 10])
    torch.testing.assert_close(polyfocal.class_balanced_alpha(counts, beta=1.0), inverse * 3 / inverse.sum())
    torch.testing.assert_close(
        polyfocal.class_balanced_alpha(torch.tensor(counts), beta=0.99), polyfocal.class_balanced_alpha(counts, 0.99)
    )


@pytest.mark.parametrize(
    ("counts", "beta", "exc"),
    [
        ([10, 0], 0.9, ValueError),
        ([10, -1], 0.9, ValueError),
        ([], 0.9, ValueError),
        ([1, 2], 1.5, ValueError),
        ("12", 0.9, TypeError),
        ([1, 2], "0.9", TypeError),
        (torch.ones(2, 2), 0.9, ValueError),
    ],
)
def test_class_balanced_alpha_bad_input(counts, beta, exc):
    with pytest.raises(exc, match="expected"):
        polyfocal.class_balanced_alpha(counts, beta=beta)


def test_class_balanced_alpha_as_focal_alpha():
    alpha = polyfocal.class_balanced_alpha([500, 50, 5, 5], beta=0.99)
    loss = polyfocal.softmax_focal_loss(X, Y, alpha=alpha)
    assert torch.isfinite(loss)


def test_modules_validate_hyperparameters_once_and_again_on_reassignment(monkeypatch):
    from polyfocal import _args

    crit = polyfocal.SoftmaxFocalLoss(gamma=2.0, epsilon=1.0)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    before = crit(x, y)

    def fail(*args, **kwargs):
        raise AssertionError("a module call re-validated its scalar hyperparameters")

    monkeypatch.setattr(_args, "_hyper", fail)  # the validation itself: a module call finds it memoised
    assert torch.equal(crit(x, y), before)
    monkeypatch.undo()
    crit.gamma = 0.5  # a schedule: validated again and used
    assert torch.equal(crit(x, y), polyfocal.softmax_focal_loss(x, y, gamma=0.5, epsilon=1.0))
    with pytest.raises(ValueError, match="expected gamma"):
        crit.gamma = -1.0
