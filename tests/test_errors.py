"""Bad input raises ValueError / TypeError / IndexError with "expected …, got …" before any work."""

from __future__ import annotations

import math
import re

import pytest
import torch

import polyfocal

X = torch.randn(4, 3)
Y = torch.tensor([0, 2, 1, 1])
XS = torch.randn(4, 3, 5)


CASES = [
    # (description, callable, exception, message fragment)
    ("index >= C", lambda: polyfocal.poly_loss(X, torch.tensor([0, 3, 1, 1])), IndexError, r"\[0, 2\].*got 3"),
    ("negative index", lambda: polyfocal.cross_entropy(X, torch.tensor([0, -1, 1, 1])), IndexError, "got -1"),
    (
        "index > C for sigmoid (C is background)",
        lambda: polyfocal.sigmoid_focal_loss(X, torch.tensor([0, 4, 1, 1])),
        IndexError,
        r"\[0, 3\].*background.*got 4",
    ),
    (
        "ignore_index=None makes -100 an error",
        lambda: polyfocal.poly_loss(X, torch.tensor([0, -100, 1, 1]), ignore_index=None),
        IndexError,
        "got -100",
    ),
    ("batch mismatch", lambda: polyfocal.poly_loss(X, torch.tensor([0, 1, 1])), ValueError, r"shape \(4,\)"),
    ("spatial mismatch", lambda: polyfocal.poly_loss(XS, torch.zeros(4, 4, dtype=torch.long)), ValueError, "got shape"),
    ("prob target shape", lambda: polyfocal.poly_loss(X, torch.rand(4, 4)), ValueError, "input's shape"),
    ("sigmoid target shape", lambda: polyfocal.sigmoid_focal_loss(X, torch.rand(4, 1)), ValueError, "input's shape"),
    ("unknown reduction", lambda: polyfocal.poly_loss(X, Y, reduction="avg"), ValueError, "got 'avg'"),
    ("unknown activation", lambda: polyfocal.poly_loss(X, Y, activation="relu"), ValueError, "got 'relu'"),
    ("gamma < 0", lambda: polyfocal.softmax_focal_loss(X, Y, gamma=-1.0), ValueError, "got -1.0"),
    ("gamma nan", lambda: polyfocal.softmax_focal_loss(X, Y, gamma=float("nan")), ValueError, "gamma"),
    ("gamma string", lambda: polyfocal.softmax_focal_loss(X, Y, gamma="2"), TypeError, "gamma"),
    ("sigmoid alpha > 1", lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), alpha=1.5), ValueError, "got 1.5"),
    (
        "sigmoid alpha -1 (torchvision's off switch)",
        lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), alpha=-1),
        ValueError,
        "None disables",
    ),
    ("sigmoid alpha list", lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), alpha=[0.1]), TypeError, "got"),
    (
        "softmax scalar alpha",
        lambda: polyfocal.softmax_focal_loss(X, Y, alpha=0.25),
        ValueError,
        r"per-class.*C=3.*got the scalar 0.25.*class_balanced_alpha",
    ),
    ("alpha wrong length", lambda: polyfocal.softmax_focal_loss(X, Y, alpha=[0.1, 0.9]), ValueError, r"\(3,\).*\(2,\)"),
    ("weight wrong length", lambda: polyfocal.cross_entropy(X, Y, torch.ones(4)), ValueError, r"\(3,\).*\(4,\)"),
    ("negative alpha", lambda: polyfocal.softmax_focal_loss(X, Y, alpha=[0.1, -0.2, 1.0]), ValueError, "non-negative"),
    ("integer logits", lambda: polyfocal.poly_loss(Y.view(2, 2), Y[:2]), TypeError, "got torch.int64"),
    ("non-tensor input", lambda: polyfocal.poly_loss([[0.0, 1.0]], Y), TypeError, "torch.Tensor"),
    ("bool target softmax", lambda: polyfocal.poly_loss(X, Y > 0), TypeError, "got dtype torch.bool"),
    ("label_smoothing > 1", lambda: polyfocal.cross_entropy(X, Y, label_smoothing=1.5), ValueError, "got 1.5"),
    ("epsilon string", lambda: polyfocal.poly_loss(X, Y, epsilon="1"), TypeError, "epsilon"),
    ("epsilon inf", lambda: polyfocal.poly_loss(X, Y, epsilon=float("inf")), ValueError, "finite"),
    ("poly1 epsilon sequence", lambda: polyfocal.poly1_cross_entropy(X, Y, epsilon=[1.0, 2.0]), TypeError, "a real"),
    ("pos_weight with softmax", lambda: polyfocal.poly_loss(X, Y, pos_weight=torch.ones(3)), ValueError, "pos_weight"),
    (
        "sigmoid weight that would enlarge",
        lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), weight=torch.ones(2, 4, 3)),
        ValueError,
        "without enlarging",
    ),
    (
        "normalizer that would enlarge",
        lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), normalizer=torch.ones(4)),
        ValueError,
        "normalizer",
    ),
    ("zero normalizer", lambda: polyfocal.sigmoid_focal_loss(X, X.sigmoid(), normalizer=0), ValueError, "positive"),
    ("0-d softmax input", lambda: polyfocal.poly_loss(torch.tensor(1.0), torch.tensor(0)), ValueError, "0-D"),
    ("ignore_index float", lambda: polyfocal.poly_loss(X, Y, ignore_index=1.5), TypeError, "ignore_index"),
    ("complex target", lambda: polyfocal.poly_loss(X, Y.to(torch.complex64)), TypeError, "complex"),
    # long-tail options of the softmax family
    ("prior zero entry", lambda: polyfocal.poly_loss(X, Y, prior=[1.0, 0.0, 2.0]), ValueError, r"> 0, got \[1.0, 0.0"),
    ("prior negative", lambda: polyfocal.balanced_softmax_loss(X, Y, prior=[1.0, -2.0, 2.0]), ValueError, "> 0"),
    ("prior nan", lambda: polyfocal.poly_loss(X, Y, prior=torch.tensor([1.0, math.nan, 1.0])), ValueError, "nan"),
    ("prior inf", lambda: polyfocal.poly_loss(X, Y, prior=[1.0, math.inf, 1.0]), ValueError, "finite"),
    ("prior wrong length", lambda: polyfocal.poly_loss(X, Y, prior=[1.0, 2.0]), ValueError, r"\(3,\).*\(2,\)"),
    ("prior scalar", lambda: polyfocal.poly_loss(X, Y, prior=5.0), ValueError, "per-class"),
    ("prior string", lambda: polyfocal.poly_loss(X, Y, prior="abc"), TypeError, "prior"),
    ("tau inf", lambda: polyfocal.logit_adjusted_loss(X, Y, prior=[1, 2, 3], tau=math.inf), ValueError, "tau"),
    ("prior None", lambda: polyfocal.balanced_softmax_loss(X, Y, prior=None), ValueError, "prior.*got None"),
    ("margin None", lambda: polyfocal.ldam_loss(X, Y, margin=None), ValueError, "margin.*got None"),
    ("tau nan", lambda: polyfocal.poly_loss(X, Y, prior=[1, 2, 3], tau=math.nan), ValueError, "tau"),
    ("margin negative", lambda: polyfocal.ldam_loss(X, Y, margin=[0.1, -0.1, 0.2]), ValueError, ">= 0"),
    ("margin wrong length", lambda: polyfocal.poly_loss(X, Y, margin=[0.1] * 4), ValueError, r"\(3,\).*\(4,\)"),
    ("margin nan", lambda: polyfocal.poly_loss(X, Y, margin=[0.1, math.nan, 0.2]), ValueError, "finite"),
    ("margin with probabilities", lambda: polyfocal.poly_loss(X, X.softmax(1), margin=[0.1] * 3), ValueError, "index"),
    ("logit_scale 0", lambda: polyfocal.poly_loss(X, Y, logit_scale=0.0), ValueError, "> 0, got 0.0"),
    ("logit_scale negative", lambda: polyfocal.ldam_loss(X, Y, margin=[0.1] * 3, logit_scale=-2), ValueError, "> 0"),
    ("logit_scale inf", lambda: polyfocal.poly_loss(X, Y, logit_scale=math.inf), ValueError, "finite"),
    ("z_loss negative", lambda: polyfocal.cross_entropy(X, Y, z_loss=-0.1), ValueError, ">= 0, got -0.1"),
    ("z_loss string", lambda: polyfocal.cross_entropy(X, Y, z_loss="1"), TypeError, "z_loss"),
    (
        "prior with sigmoid",
        lambda: polyfocal.poly_loss(X, Y, activation="sigmoid", prior=[1, 2, 3]),
        ValueError,
        "prior",
    ),
    ("z_loss with sigmoid", lambda: polyfocal.poly_loss(X, Y, activation="sigmoid", z_loss=0.1), ValueError, "z_loss"),
    # the detection / multi-label members of the sigmoid family
    ("gamma_neg < 0", lambda: polyfocal.asymmetric_loss(X, X.sigmoid(), gamma_neg=-1.0), ValueError, "gamma_neg.*-1.0"),
    ("gamma_neg string", lambda: polyfocal.asymmetric_loss(X, X.sigmoid(), gamma_neg="4"), TypeError, "gamma_neg"),
    ("gamma_pos < 0", lambda: polyfocal.asymmetric_loss(X, X.sigmoid(), gamma_pos=-0.5), ValueError, "gamma.*-0.5"),
    ("clip = 1", lambda: polyfocal.asymmetric_loss(X, X.sigmoid(), clip=1.0), ValueError, r"clip in \[0, 1\).*1.0"),
    ("clip < 0", lambda: polyfocal.asymmetric_loss(X, X.sigmoid(), clip=-0.1), ValueError, r"clip.*-0.1"),
    (
        "clip via poly_loss",
        lambda: polyfocal.poly_loss(X, X.sigmoid(), activation="sigmoid", clip=2),
        ValueError,
        "clip",
    ),
    ("gamma_neg with softmax", lambda: polyfocal.poly_loss(X, Y, gamma_neg=1.0), ValueError, "sigmoid arguments"),
    ("beta < 0", lambda: polyfocal.quality_focal_loss(X, X.sigmoid(), beta=-0.5), ValueError, "beta.*-0.5"),
    ("beta nan", lambda: polyfocal.quality_focal_loss(X, X.sigmoid(), beta=float("nan")), ValueError, "beta"),
    ("varifocal alpha < 0", lambda: polyfocal.varifocal_loss(X, X.sigmoid(), alpha=-0.1), ValueError, "alpha.*-0.1"),
    ("varifocal gamma < 0", lambda: polyfocal.varifocal_loss(X, X.sigmoid(), gamma=-2.0), ValueError, "gamma"),
    ("varifocal score > 1", lambda: polyfocal.varifocal_loss(X, X.sigmoid() * 2), ValueError, r"score.*\[0, 1\]"),
    ("quality score < 0", lambda: polyfocal.quality_focal_loss(X, -X.sigmoid()), ValueError, r"score.*\[0, 1\]"),
    ("pair score < 0", lambda: polyfocal.quality_focal_loss(X, (Y, -torch.rand(4))), ValueError, r"score values"),
    ("pair score shape", lambda: polyfocal.varifocal_loss(X, (Y, torch.rand(3))), ValueError, r"score of.*\(4,\)"),
    ("pair score dtype", lambda: polyfocal.quality_focal_loss(X, (Y, Y)), TypeError, "floating-point"),
    (
        "pair with a dense target",
        lambda: polyfocal.quality_focal_loss(X, (X.sigmoid(), torch.rand(4))),
        ValueError,
        "pair",
    ),
    ("target of three items", lambda: polyfocal.quality_focal_loss(X, (Y, Y, Y)), ValueError, "3 items"),
]


@pytest.mark.parametrize(("desc", "call", "exc", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(desc, call, exc, fragment):
    with pytest.raises(exc, match="expected") as info:
        call()
    assert re.search(fragment, str(info.value)), str(info.value)


def _record_backend_calls(monkeypatch) -> list[str]:
    """Replace every implementation the loss path can dispatch to (each backend's softmax/sigmoid and the
    composite formulas) by a recorder."""
    from polyfocal import _core, kernels

    calls: list[str] = []

    def recorder(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise RuntimeError("recorded")

        return record

    modules = {"composite": _core}
    for name, spec in kernels.BACKENDS.items():
        if spec.available():
            modules[name] = spec.module()
    for name, module in modules.items():
        for fn in ("softmax", "sigmoid", "softmax_loss", "sigmoid_loss"):
            if hasattr(module, fn):
                monkeypatch.setattr(module, fn, recorder(f"{name}.{fn}"))
    return calls


@pytest.mark.parametrize("backend", ["auto", "torch", "native", "composite"])
def test_errors_are_raised_before_any_computation(monkeypatch, backend):
    """A bad argument is reported before the loss path dispatches to any implementation."""
    from polyfocal import kernels

    calls = _record_backend_calls(monkeypatch)
    with kernels.backend(backend):
        with pytest.raises(RuntimeError, match="recorded"):  # the recorders are on the path: this test can fail
            polyfocal.poly_loss(X, Y)
        with pytest.raises(RuntimeError, match="recorded"):
            polyfocal.sigmoid_focal_loss(X, Y)
        assert len(calls) == 2, calls
        for desc, call, exc, _ in CASES:
            if exc is IndexError:  # class-index ranges are checked by the kernels themselves (test_correctness)
                continue
            with pytest.raises(exc, match="expected"):
                call()
            assert len(calls) == 2, f"{desc}: dispatched to {calls[2:]} before the error"


MODULE_CASES = [
    (lambda: polyfocal.SoftmaxFocalLoss(alpha=0.25), ValueError),
    (lambda: polyfocal.SigmoidFocalLoss(alpha=2.0), ValueError),
    (lambda: polyfocal.PolyLoss(gamma=-0.5), ValueError),
    (lambda: polyfocal.PolyLoss(reduction="avg"), ValueError),
    (lambda: polyfocal.PolyLoss(activation="tanh"), ValueError),
    (lambda: polyfocal.Poly1CrossEntropyLoss(epsilon=[1.0]), TypeError),
    (lambda: polyfocal.CrossEntropyLoss(label_smoothing=-0.1), ValueError),
    (lambda: polyfocal.BalancedSoftmaxLoss(prior=[3.0, 0.0]), ValueError),
    (lambda: polyfocal.PolyLoss(margin=[0.1, -1.0]), ValueError),
    (lambda: polyfocal.SoftmaxFocalLoss(logit_scale=-1.0), ValueError),
    (lambda: polyfocal.CrossEntropyLoss(z_loss=math.nan), ValueError),
    (lambda: polyfocal.AsymmetricLoss(gamma_neg=-1.0), ValueError),
    (lambda: polyfocal.AsymmetricLoss(clip=1.5), ValueError),
    (lambda: polyfocal.VarifocalLoss(alpha=-1.0), ValueError),
    (lambda: polyfocal.QualityFocalLoss(beta=-2.0), ValueError),
    (lambda: polyfocal.LogitAdjustedLoss(prior=None), ValueError),  # a required option, refused as None
    (lambda: polyfocal.LDAMLoss(margin=None), ValueError),
    (lambda: polyfocal.LDAMLoss(), TypeError),  # missing, as for the function
]


@pytest.mark.parametrize(("make", "exc"), MODULE_CASES)
def test_modules_validate_at_construction(make, exc):
    with pytest.raises(exc, match="expected"):
        make()


def test_target_on_other_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        polyfocal.poly_loss(X, Y.to("meta"))


def test_meta_tensors_skip_data_checks_and_trace_shapes():
    x, y = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    assert polyfocal.softmax_focal_loss(x, y, reduction="none").shape == (4,)
    assert polyfocal.sigmoid_focal_loss(x, y, reduction="none").shape == (4, 3)
