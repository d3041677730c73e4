"""polyfocal.compat against plain-PyTorch transcriptions of the seed listings (tests/seed_listings.py).

Every comparison checks the loss values and the input gradients; the only hard-coded numbers are the ones
printed in seed 001.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import polyfocal
import seed_listings as seed
from polyfocal.compat import Poly1CrossEntropyLoss, Poly1FocalLoss, clcarwin, paddle, ppdet, yatenglg, yolov5

F64 = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-12}  # float64 shim vs float64 transcription
LOOSE = {"rtol": 2e-4, "atol": 1e-6}  # float32 shim vs float64 transcription
REDUCTIONS = ["none", "mean", "sum"]
GAMMAS = [0.0, 0.5, 1.5, 2.0]


def _gen(*key: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _logits(gen: torch.Generator, *shape: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype) if t.is_floating_point() else t


def _compare(shim_fn, ref_fn, x: torch.Tensor, *, dtype: torch.dtype = F64, gen: torch.Generator | None = None):
    """Values and input gradients of ``shim_fn(x)`` (in ``dtype``) against ``ref_fn(x)`` in float64.

    For a non-scalar loss the gradient is that of ``(loss * g).sum()`` with a random ``g``."""
    tol = TIGHT if dtype == F64 else LOOSE
    xs = x.detach().to(dtype).requires_grad_()
    xr = x.detach().to(F64).requires_grad_()
    out_s, out_r = shim_fn(xs), ref_fn(xr)
    assert out_s.dtype == dtype
    assert out_s.shape == out_r.shape
    torch.testing.assert_close(out_s.to(F64), out_r, **tol)
    g = torch.randn(out_r.shape, generator=gen or _gen("g", tuple(x.shape)), dtype=F64) + 1.5
    (grad_s,) = torch.autograd.grad((out_s * g.to(dtype)).sum(), xs)
    (grad_r,) = torch.autograd.grad((out_r * g).sum(), xr)
    assert grad_s.dtype == dtype
    torch.testing.assert_close(grad_s.to(F64), grad_r, **tol)


def _labels_for(shape: tuple[int, ...], num_classes: int, gen: torch.Generator, class_dim: int = 1) -> torch.Tensor:
    """Class indices for logits of ``shape`` (class dim removed), every class present when possible."""
    label_shape = shape[:class_dim] + shape[class_dim + 1 :]
    labels = torch.randint(0, num_classes, label_shape, generator=gen)
    flat = labels.view(-1)
    k = min(num_classes, flat.numel())
    flat[:k] = torch.arange(k)
    return labels


# --- seed 000: Poly1CrossEntropyLoss / Poly1FocalLoss -------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_cross_entropy_matches_seed000(reduction, epsilon, dtype):
    gen = _gen("p1ce", reduction, epsilon)
    x, y = _logits(gen, 7, 5), _labels_for((7, 5), 5, gen)
    shim = Poly1CrossEntropyLoss(num_classes=5, epsilon=epsilon, reduction=reduction)
    ref = seed.Poly1CrossEntropyLoss(num_classes=5, epsilon=epsilon, reduction=reduction)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x, dtype=dtype)


def test_poly1_cross_entropy_default_reduction_is_none():
    gen = _gen("p1ce-default")
    x, y = _logits(gen, 6, 3), _labels_for((6, 3), 3, gen)
    _compare(lambda v: Poly1CrossEntropyLoss(3)(v, y), lambda v: seed.Poly1CrossEntropyLoss(3)(v, y), x)


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (2, 4, 3, 5)], ids=["NC", "NCL", "NCHW"])
@pytest.mark.parametrize("alpha", [0.25, 0.7, 0.0, -1.0, -0.5])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_focal_matches_seed000(reduction, gamma, alpha, shape):
    gen = _gen("p1fl", reduction, gamma, alpha, shape)
    x, y = _logits(gen, *shape), _labels_for(shape, shape[1], gen)
    kw = {"num_classes": shape[1], "epsilon": 1.5 if alpha > 0.5 else 1.0, "alpha": alpha, "gamma": gamma}
    shim = Poly1FocalLoss(**kw, reduction=reduction)
    ref = seed.Poly1FocalLoss(**kw, reduction=reduction)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x)


@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3, 5)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_focal_float32(reduction, shape):
    gen = _gen("p1fl32", reduction, shape)
    x, y = _logits(gen, *shape), _labels_for(shape, shape[1], gen)
    shim = Poly1FocalLoss(shape[1], epsilon=-0.5, gamma=1.5, reduction=reduction)
    ref = seed.Poly1FocalLoss(shape[1], epsilon=-0.5, gamma=1.5, reduction=reduction)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x, dtype=torch.float32)


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_seed000_tensorflow_listings_match_pytorch_shims(gamma, alpha):
    """The TF listings (mean over all elements, one-hot y_true) against the shims with reduction='mean'."""
    gen = _gen("tf", gamma, alpha)
    x, y = _logits(gen, 8, 5), _labels_for((8, 5), 5, gen)
    onehot = F.one_hot(y, 5).to(F64)
    shim_fl = Poly1FocalLoss(5, epsilon=2.0, alpha=alpha, gamma=gamma, reduction="mean")
    _compare(
        lambda v: shim_fl(v, y),
        lambda v: seed.poly1_focal_loss_tf(onehot, v, gamma=gamma, epsilon=2.0, alpha=alpha),
        x,
    )
    shim_ce = Poly1CrossEntropyLoss(5, epsilon=2.0, reduction="mean")
    _compare(lambda v: shim_ce(v, y), lambda v: seed.poly1_cross_entropy_tf(onehot, v, epsilon=2.0), x)


def test_seed000_tensorflow_listings_soft_targets_match_polyfocal():
    """The TF listings take any y_true; with probabilities they are polyfocal's soft-target losses."""
    gen = _gen("tf-soft")
    x = _logits(gen, 6, 4)
    q = torch.softmax(torch.randn(6, 4, generator=gen, dtype=F64), dim=1)
    t = torch.rand(6, 4, generator=gen, dtype=F64)
    _compare(
        lambda v: polyfocal.poly1_cross_entropy(v, _like(q, v), epsilon=1.5),
        lambda v: seed.poly1_cross_entropy_tf(q, v, epsilon=1.5),
        x,
    )
    _compare(
        lambda v: polyfocal.poly1_focal_loss(v, _like(t, v), epsilon=1.5, gamma=1.5, alpha=0.3),
        lambda v: seed.poly1_focal_loss_tf(t, v, gamma=1.5, epsilon=1.5, alpha=0.3),
        x,
    )


# --- seed 001: paddle sigmoid_focal_loss ---------------------------------------------------------------------

SEED001_LOGITS = [[0.97, -0.91, 0.03], [-0.55, -0.43, 0.71]]
SEED001_MANUAL = [[0.00607155, 0.02089742, 0.13681224], [0.04572807, 0.08544625, 0.37411609]]
SEED001_FUNCTION = [[0.00607155, 0.02089742, 0.13681222], [0.04572806, 0.08544625, 0.37411612]]
SEED001_NORMALIZED = [[0.00050596, 0.00174145, 0.01140102], [0.00381067, 0.00712052, 0.03117634]]


def _seed001_label() -> torch.Tensor:
    """The only 0/1 label that reproduces the seed's printed manual-formula numbers."""
    logits, printed = torch.tensor(SEED001_LOGITS, dtype=F64), torch.tensor(SEED001_MANUAL, dtype=F64)
    match_pos = (seed.paddle_manual_formula(logits, torch.ones_like(logits)) - printed).abs() <= 1e-6
    match_neg = (seed.paddle_manual_formula(logits, torch.zeros_like(logits)) - printed).abs() <= 1e-6
    assert bool((match_pos ^ match_neg).all()), "each element must be explained by exactly one label value"
    return match_pos.to(F64)


def test_seed001_label_is_unique_and_is_the_documented_one():
    assert torch.equal(_seed001_label(), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_seed001_printed_outputs(dtype):
    logit = torch.tensor(SEED001_LOGITS, dtype=dtype)
    label = _seed001_label().to(dtype)
    out = paddle.sigmoid_focal_loss(logit, label, reduction="none")
    torch.testing.assert_close(out, torch.tensor(SEED001_FUNCTION, dtype=dtype), rtol=0, atol=1e-7)
    for normalizer in (torch.tensor([12.0], dtype=dtype), torch.tensor([12.0, 12.0, 12.0], dtype=dtype)):
        out_n = paddle.sigmoid_focal_loss(logit, label, normalizer=normalizer, reduction="none")
        torch.testing.assert_close(out_n, torch.tensor(SEED001_NORMALIZED, dtype=dtype), rtol=0, atol=1e-8)
    total = paddle.sigmoid_focal_loss(logit, label)  # default reduction: 'sum'
    assert total.shape == ()
    torch.testing.assert_close(total, torch.tensor(SEED001_FUNCTION, dtype=dtype).sum(), rtol=0, atol=1e-6)
    torch.testing.assert_close(total, out.sum(), rtol=1e-6, atol=0)


def test_seed001_transcription_reproduces_printed_outputs():
    """Guards the reference itself: the transcription gives the printed numbers too."""
    logit = torch.tensor(SEED001_LOGITS, dtype=F64)
    out = seed.paddle_sigmoid_focal_loss(logit, _seed001_label(), reduction="none")
    torch.testing.assert_close(out, torch.tensor(SEED001_FUNCTION, dtype=F64), rtol=0, atol=1e-7)


def _normalizer(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "one":
        return torch.tensor([7.0], dtype=F64)
    return 0.5 + 3 * torch.rand(shape[-1], generator=gen, dtype=F64)  # per last dim, e.g. per class


@pytest.mark.parametrize("target", ["hard", "soft"])
@pytest.mark.parametrize("normalizer", ["none", "one", "last"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4)], ids=["NC", "NCL"])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.25, 0.5), (0.6, 1.5), (0.9, 0.0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_paddle_sigmoid_focal_loss_matches_seed001(reduction, alpha, gamma, shape, normalizer, target):
    gen = _gen("paddle", reduction, alpha, gamma, shape, normalizer, target)
    x = _logits(gen, *shape)
    t = torch.rand(shape, generator=gen, dtype=F64)
    t = t.round() if target == "hard" else t
    norm = _normalizer(normalizer, shape, gen)

    def shim(v):
        n = None if norm is None else norm.to(v.dtype)
        return paddle.sigmoid_focal_loss(v, _like(t, v), n, alpha, gamma, reduction, name="x")

    _compare(shim, lambda v: seed.paddle_sigmoid_focal_loss(v, t, norm, alpha, gamma, reduction), x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_paddle_sigmoid_focal_loss_float32(reduction):
    gen = _gen("paddle32", reduction)
    x, t = _logits(gen, 6, 4), torch.rand(6, 4, generator=gen, dtype=F64).round()
    norm = torch.tensor([3.0], dtype=F64)
    _compare(
        lambda v: paddle.sigmoid_focal_loss(v, _like(t, v), norm.to(v.dtype), gamma=1.5, reduction=reduction),
        lambda v: seed.paddle_sigmoid_focal_loss(v, t, norm, gamma=1.5, reduction=reduction),
        x,
        dtype=torch.float32,
    )


def test_paddle_default_reduction_is_sum():
    gen = _gen("paddle-default")
    x, t = _logits(gen, 4, 3), torch.rand(4, 3, generator=gen, dtype=F64).round()
    _compare(lambda v: paddle.sigmoid_focal_loss(v, t), lambda v: seed.paddle_sigmoid_focal_loss(v, t), x)


# --- seed 001: PaddleDetection FocalLoss ---------------------------------------------------------------------


def _ppdet_target(n: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Indices in [0, num_classes], with num_classes (background) and class 0 always present."""
    target = torch.randint(0, num_classes + 1, (n,), generator=gen)
    target[0], target[1] = num_classes, 0
    return target


@pytest.mark.parametrize("num_classes", [1, 6])
@pytest.mark.parametrize("loss_weight", [1.0, 2.5])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.25, 0.5), (0.6, 1.5), (0.1, 0.0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ppdet_focal_loss_matches_seed001(reduction, alpha, gamma, loss_weight, num_classes):
    gen = _gen("ppdet", reduction, alpha, gamma, loss_weight, num_classes)
    x, y = _logits(gen, 9, num_classes), _ppdet_target(9, num_classes, gen)
    shim = ppdet.FocalLoss(alpha=alpha, gamma=gamma, loss_weight=loss_weight)
    ref = seed.PPDetFocalLoss(alpha=alpha, gamma=gamma, loss_weight=loss_weight)
    _compare(lambda v: shim(v, y, reduction=reduction), lambda v: ref(v, y, reduction=reduction), x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ppdet_focal_loss_float32_and_default_reduction(reduction):
    gen = _gen("ppdet32", reduction)
    x, y = _logits(gen, 12, 80), _ppdet_target(12, 80, gen)
    shim, ref = ppdet.FocalLoss(), seed.PPDetFocalLoss()
    _compare(lambda v: shim(v, y, reduction), lambda v: ref(v, y, reduction), x, dtype=torch.float32)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x)  # default reduction 'none'


def test_ppdet_all_background_rows():
    gen = _gen("ppdet-bg")
    x, y = _logits(gen, 5, 4), torch.full((5,), 4)
    _compare(lambda v: ppdet.FocalLoss()(v, y, "sum"), lambda v: seed.PPDetFocalLoss()(v, y, "sum"), x)


# --- seed 002: yatengLG focal_loss ---------------------------------------------------------------------------

YATENG_ALPHAS = {
    "scalar": lambda c: 0.25,
    "scalar-inexact": lambda c: 0.6,  # [0.6, 0.4, ...] is rounded to float32 in the original
    "zero-int": lambda c: 0,
    "list": lambda c: [0.1 + 0.37 * i for i in range(c)],
}


@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4), (2, 6, 3)], ids=["BC", "BNC", "BNC-3"])
@pytest.mark.parametrize("alpha", list(YATENG_ALPHAS))
@pytest.mark.parametrize("gamma", [*GAMMAS, 2])
@pytest.mark.parametrize("size_average", [True, False])
def test_yatenglg_matches_seed002(size_average, gamma, alpha, shape):
    gen = _gen("yateng", size_average, gamma, alpha, shape)
    c = shape[-1]
    x, y = _logits(gen, *shape), _labels_for(shape, c, gen, class_dim=len(shape) - 1)
    kw = {"alpha": YATENG_ALPHAS[alpha](c), "gamma": gamma, "num_classes": c, "size_average": size_average}
    shim, ref = yatenglg.focal_loss(**kw), seed.YatengLGFocalLoss(**kw)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x)


@pytest.mark.parametrize("size_average", [True, False])
def test_yatenglg_float32_and_defaults(size_average):
    gen = _gen("yateng32", size_average)
    x, y = _logits(gen, 2, 5, 3), _labels_for((2, 5, 3), 3, gen, class_dim=2)
    shim, ref = yatenglg.focal_loss(size_average=size_average), seed.YatengLGFocalLoss(size_average=size_average)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x, dtype=torch.float32)
    _compare(lambda v: yatenglg.focal_loss()(v, y), lambda v: seed.YatengLGFocalLoss()(v, y), x)


# --- seed 003: clcarwin FocalLoss ----------------------------------------------------------------------------

CLCARWIN_ALPHAS = {  # name -> (alpha factory, number of classes it needs or None for any)
    "none": (lambda c: None, None),
    "float": (lambda c: 0.25, 2),
    "float-inexact": (lambda c: 0.3, 2),  # [0.3, 0.7] is rounded to float32 in the original
    "int": (lambda c: 1, 2),
    "list": (lambda c: [0.2 + 0.3 * i for i in range(c)], None),
    "tensor64": (lambda c: torch.linspace(0.1, 0.9, c, dtype=F64), None),
}


@pytest.mark.parametrize("shape", [(2, 7), (2, 3, 4, 3), (4, 3, 5)], ids=["NC", "NCHW", "NCL"])
@pytest.mark.parametrize("alpha", list(CLCARWIN_ALPHAS))
@pytest.mark.parametrize("gamma", [*GAMMAS, 5])
@pytest.mark.parametrize("size_average", [True, False])
def test_clcarwin_matches_seed003(size_average, gamma, alpha, shape):
    make_alpha, needs = CLCARWIN_ALPHAS[alpha]
    if needs is not None:
        shape = (shape[0], needs, *shape[2:])
    gen = _gen("clcarwin", size_average, gamma, alpha, shape)
    x, y = _logits(gen, *shape), _labels_for(shape, shape[1], gen)
    kw = {"gamma": gamma, "alpha": make_alpha(shape[1]), "size_average": size_average}
    shim, ref = clcarwin.FocalLoss(**kw), seed.ClcarwinFocalLoss(**kw)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x)


def test_clcarwin_gradient_treats_pt_as_constant():
    """The listing's detached p_t: its gradient differs from the full focal-loss gradient."""
    gen = _gen("clcarwin-detach")
    x, y = _logits(gen, 6, 4), _labels_for((6, 4), 4, gen)
    xs = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(clcarwin.FocalLoss(gamma=2)(xs, y), xs)
    xf = x.clone().requires_grad_()
    (grad_full,) = torch.autograd.grad(polyfocal.softmax_focal_loss(xf, y, gamma=2.0), xf)
    assert not torch.allclose(grad, grad_full)


@pytest.mark.parametrize("target_shape", [(24,), (24, 1), (2, 12)])
def test_clcarwin_any_target_layout_with_one_index_per_prediction(target_shape):
    """The listing reshapes the target with view(-1, 1): any layout with N*H*W indices works."""
    gen = _gen("clcarwin-target", target_shape)
    x, y = _logits(gen, 2, 3, 3, 4), _labels_for((2, 3, 3, 4), 3, gen).reshape(target_shape)
    kw = {"gamma": 2.0, "alpha": [0.2, 0.3, 0.5]}
    _compare(lambda v: clcarwin.FocalLoss(**kw)(v, y), lambda v: seed.ClcarwinFocalLoss(**kw)(v, y), x)


@pytest.mark.parametrize("size_average", [True, False])
def test_clcarwin_float32_and_defaults(size_average):
    gen = _gen("clcarwin32", size_average)
    x, y = _logits(gen, 2, 4, 3, 3), _labels_for((2, 4, 3, 3), 4, gen)
    kw = {"gamma": 1.5, "alpha": [0.1, 0.2, 0.3, 0.4], "size_average": size_average}
    shim, ref = clcarwin.FocalLoss(**kw), seed.ClcarwinFocalLoss(**kw)
    _compare(lambda v: shim(v, y), lambda v: ref(v, y), x, dtype=torch.float32)
    _compare(lambda v: clcarwin.FocalLoss()(v, y), lambda v: seed.ClcarwinFocalLoss()(v, y), x)


# --- seed 004: YOLOv5 FocalLoss ------------------------------------------------------------------------------


def _bce(reduction: str, weight: torch.Tensor | None, pos_weight: torch.Tensor | None, dtype: torch.dtype):
    def cast(t):
        return None if t is None else t.to(dtype)

    return nn.BCEWithLogitsLoss(weight=cast(weight), pos_weight=cast(pos_weight), reduction=reduction)


@pytest.mark.parametrize("target", ["soft", "hard"])
@pytest.mark.parametrize("weight", ["none", "per-class", "full"])
@pytest.mark.parametrize("pos_weight", [False, True])
@pytest.mark.parametrize("shape", [(8, 5), (2, 3, 4, 5)], ids=["NC", "BAHWC"])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 1.5), (0.25, 0.5), (0.7, 2.0), (0.5, 0.0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_yolov5_matches_seed004(reduction, alpha, gamma, shape, pos_weight, weight, target):
    gen = _gen("yolov5", reduction, alpha, gamma, shape, pos_weight, weight, target)
    x = _logits(gen, *shape)
    t = torch.rand(shape, generator=gen, dtype=F64)
    t = t.round() if target == "hard" else t
    pw = 0.5 + 2 * torch.rand(shape[-1], generator=gen, dtype=F64) if pos_weight else None
    w = {"none": None, "per-class": torch.rand(shape[-1], generator=gen, dtype=F64) + 0.5}.get(weight)
    if weight == "full":
        w = torch.rand(shape, generator=gen, dtype=F64) + 0.5
    shim = yolov5.FocalLoss(_bce(reduction, w, pw, F64), gamma=gamma, alpha=alpha)
    ref = seed.YOLOv5FocalLoss(_bce(reduction, w, pw, F64), gamma=gamma, alpha=alpha)  # its own loss_fcn
    _compare(lambda v: shim(v, t), lambda v: ref(v, t), x)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_yolov5_float32_and_defaults(reduction):
    gen = _gen("yolov5-32", reduction)
    x, t = _logits(gen, 6, 4), torch.rand(6, 4, generator=gen, dtype=F64)
    pw = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    shim = yolov5.FocalLoss(_bce(reduction, None, pw, torch.float32), gamma=2.0)
    ref = seed.YOLOv5FocalLoss(_bce(reduction, None, pw, F64), gamma=2.0)
    _compare(lambda v: shim(v, _like(t, v)), lambda v: ref(v, t), x, dtype=torch.float32)
    shim_d, ref_d = yolov5.FocalLoss(nn.BCEWithLogitsLoss()), seed.YOLOv5FocalLoss(nn.BCEWithLogitsLoss())
    _compare(lambda v: shim_d(v, t), lambda v: ref_d(v, t), x)  # defaults: gamma 1.5, alpha 0.25, 'mean'


def test_yolov5_takes_over_the_wrapped_reduction():
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    shim = yolov5.FocalLoss(bce)
    assert shim.reduction == "sum" and bce.reduction == "none"  # as the original does


# --- hypothesis ----------------------------------------------------------------------------------------------

_PROPERTY = settings(max_examples=25, deadline=None)


@_PROPERTY
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 5),
    spatial=st.lists(st.integers(1, 3), max_size=2),
    gamma=st.floats(0.0, 4.0),
    use_alpha=st.booleans(),
    size_average=st.booleans(),
    key=st.integers(0, 2**16),
)
def test_clcarwin_property(n, c, spatial, gamma, use_alpha, size_average, key):
    shape = (n, c, *spatial)
    gen = _gen("h-clcarwin", key)
    x, y = _logits(gen, *shape), torch.randint(0, c, (n, *spatial), generator=gen)
    alpha = (torch.rand(c, generator=gen) + 0.1).tolist() if use_alpha else None
    kw = {"gamma": gamma, "alpha": alpha, "size_average": size_average}
    _compare(lambda v: clcarwin.FocalLoss(**kw)(v, y), lambda v: seed.ClcarwinFocalLoss(**kw)(v, y), x, gen=gen)


@_PROPERTY
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    gamma=st.floats(0.0, 3.0),
    alpha=st.floats(0.0, 1.0),
    reduction=st.sampled_from(REDUCTIONS),
    use_pos_weight=st.booleans(),
    key=st.integers(0, 2**16),
)
def test_yolov5_property(shape, gamma, alpha, reduction, use_pos_weight, key):
    gen = _gen("h-yolov5", key)
    x, t = _logits(gen, *shape), torch.rand(shape, generator=gen, dtype=F64)
    pw = torch.rand(shape[-1], generator=gen, dtype=F64) + 0.5 if use_pos_weight else None
    shim = yolov5.FocalLoss(_bce(reduction, None, pw, F64), gamma=gamma, alpha=alpha)
    ref = seed.YOLOv5FocalLoss(_bce(reduction, None, pw, F64), gamma=gamma, alpha=alpha)
    _compare(lambda v: shim(v, t), lambda v: ref(v, t), x, gen=gen)


@_PROPERTY
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 3), max_size=2),
    gamma=st.floats(0.0, 3.0),
    alpha=st.one_of(st.floats(0.0, 1.0), st.just(-1.0)),
    epsilon=st.floats(-1.0, 3.0),
    reduction=st.sampled_from(REDUCTIONS),
    key=st.integers(0, 2**16),
)
def test_poly1_focal_property(n, c, spatial, gamma, alpha, epsilon, reduction, key):
    shape = (n, c, *spatial)
    gen = _gen("h-p1fl", key)
    x, y = _logits(gen, *shape), torch.randint(0, c, (n, *spatial), generator=gen)
    kw = {"num_classes": c, "epsilon": epsilon, "alpha": alpha, "gamma": gamma, "reduction": reduction}
    _compare(lambda v: Poly1FocalLoss(**kw)(v, y), lambda v: seed.Poly1FocalLoss(**kw)(v, y), x, gen=gen)


# --- repeated calls ------------------------------------------------------------------------------------------
# One shim object, three calls on different inputs (shapes and dtypes change), each against a fresh reference.

_CALLS = [(F64, 0), (torch.float32, 1), (F64, 2)]


def _repeat(shim, make_ref, make_inputs):
    for dtype, i in _CALLS:
        gen = _gen("repeat", type(shim).__name__, i)
        x, target, extra = make_inputs(gen, i)
        ref = make_ref()
        _compare(
            lambda v, t=target, e=extra: shim(v, _like(t, v), *e),
            lambda v, t=target, e=extra, r=ref: r(v, t, *e),
            x,
            dtype=dtype,
        )


def test_repeated_calls_poly1_cross_entropy():
    def inputs(gen, i):
        n = 3 + 2 * i
        return _logits(gen, n, 4), _labels_for((n, 4), 4, gen), ()

    _repeat(Poly1CrossEntropyLoss(4, reduction="mean"), lambda: seed.Poly1CrossEntropyLoss(4, reduction="mean"), inputs)


def test_repeated_calls_poly1_focal():
    shapes = [(4, 3), (2, 3, 2, 2), (5, 3, 4)]

    def inputs(gen, i):
        return _logits(gen, *shapes[i]), _labels_for(shapes[i], 3, gen), ()

    kw = {"num_classes": 3, "alpha": 0.3, "gamma": 1.5, "reduction": "sum"}
    _repeat(Poly1FocalLoss(**kw), lambda: seed.Poly1FocalLoss(**kw), inputs)


def test_repeated_calls_paddle():
    def inputs(gen, i):
        shape = (2 + i, 3)
        x, t = _logits(gen, *shape), torch.rand(shape, generator=gen, dtype=F64).round()
        return x, t, ()

    def shim(v, t):
        return paddle.sigmoid_focal_loss(v, t, reduction="mean")

    _repeat(shim, lambda: lambda v, t: seed.paddle_sigmoid_focal_loss(v, t, reduction="mean"), inputs)


def test_repeated_calls_ppdet():
    reductions = ["none", "sum", "mean"]

    def inputs(gen, i):
        return _logits(gen, 4 + i, 5), _ppdet_target(4 + i, 5, gen), (reductions[i],)

    kw = {"alpha": 0.3, "gamma": 1.5, "loss_weight": 2.0}
    _repeat(ppdet.FocalLoss(**kw), lambda: seed.PPDetFocalLoss(**kw), inputs)


def test_repeated_calls_yatenglg():
    shapes = [(4, 3), (2, 5, 3), (3, 3)]  # batch sizes change: the original's overwritten alpha would break

    def inputs(gen, i):
        return _logits(gen, *shapes[i]), _labels_for(shapes[i], 3, gen, class_dim=len(shapes[i]) - 1), ()

    for alpha in (0.3, [0.2, 0.5, 0.3]):
        kw = {"alpha": alpha, "gamma": 2, "num_classes": 3}
        _repeat(yatenglg.focal_loss(**kw), lambda kw=kw: seed.YatengLGFocalLoss(**kw), inputs)


def _two_cls(gen, i):
    shape = [(6, 2), (2, 2, 3), (3, 2)][i]
    return _logits(gen, *shape), _labels_for(shape, 2, gen), ()


def test_repeated_calls_clcarwin():
    shapes = [(5, 3), (2, 3, 2, 3), (4, 3)]

    def inputs(gen, i):
        return _logits(gen, *shapes[i]), _labels_for(shapes[i], 3, gen), ()

    # a float64 alpha must not be rounded by the float32 call in between
    alpha = torch.tensor([0.1, 0.3, 0.7], dtype=F64)
    kw = {"gamma": 2, "alpha": alpha}
    _repeat(clcarwin.FocalLoss(**kw), lambda: seed.ClcarwinFocalLoss(**kw), inputs)
    _repeat(clcarwin.FocalLoss(gamma=0.5, alpha=0.3), lambda: seed.ClcarwinFocalLoss(gamma=0.5, alpha=0.3), _two_cls)


def test_repeated_calls_yolov5():
    pw = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=F64)

    def inputs(gen, i):
        shape = [(5, 4), (2, 3, 4), (1, 4)][i]
        return _logits(gen, *shape), torch.rand(shape, generator=gen, dtype=F64), ()

    shim = yolov5.FocalLoss(_bce("mean", None, pw, F64), gamma=1.5)
    _repeat(shim, lambda: seed.YOLOv5FocalLoss(_bce("mean", None, pw, F64), gamma=1.5), inputs)


# --- bad input -----------------------------------------------------------------------------------------------


def _x(*shape):
    return torch.zeros(*shape)


def _y(*values):
    return torch.tensor(values)


BAD_INPUT = {
    # wrong number of classes vs num_classes
    "p1ce-classes": (ValueError, lambda: Poly1CrossEntropyLoss(3)(_x(2, 4), _y(0, 1))),
    "p1fl-classes": (ValueError, lambda: Poly1FocalLoss(3)(_x(2, 4), _y(0, 1))),
    "p1fl-classes-nchw": (ValueError, lambda: Poly1FocalLoss(3)(_x(2, 4, 2, 2), torch.zeros(2, 2, 2, dtype=int))),
    "yateng-classes": (ValueError, lambda: yatenglg.focal_loss(num_classes=3)(_x(2, 4), _y(0, 1))),
    # label out of range
    "p1ce-label": (IndexError, lambda: Poly1CrossEntropyLoss(3)(_x(2, 3), _y(0, 3))),
    "p1ce-label-neg": (IndexError, lambda: Poly1CrossEntropyLoss(3)(_x(2, 3), _y(-1, 0))),
    "p1fl-label": (IndexError, lambda: Poly1FocalLoss(3)(_x(2, 3), _y(0, 4))),
    "p1fl-label-neg": (IndexError, lambda: Poly1FocalLoss(3)(_x(2, 3), _y(0, -1))),
    "ppdet-label": (IndexError, lambda: ppdet.FocalLoss()(_x(2, 3), _y(0, 4))),
    "ppdet-label-neg": (IndexError, lambda: ppdet.FocalLoss()(_x(2, 3), _y(-1, 0))),
    "yateng-label": (IndexError, lambda: yatenglg.focal_loss(num_classes=3)(_x(2, 3), _y(0, 3))),
    "clcarwin-label": (IndexError, lambda: clcarwin.FocalLoss(gamma=2)(_x(2, 3), _y(3, 0))),
    "clcarwin-label-neg": (IndexError, lambda: clcarwin.FocalLoss(gamma=2)(_x(2, 3), _y(0, -1))),
    # constructor / argument errors of the originals, as clear exceptions
    "yolov5-loss-fcn": (TypeError, lambda: yolov5.FocalLoss(nn.MSELoss())),
    "yolov5-loss-fcn-ce": (TypeError, lambda: yolov5.FocalLoss(nn.CrossEntropyLoss())),
    "ppdet-softmax": (ValueError, lambda: ppdet.FocalLoss(use_sigmoid=False)),
    "yateng-alpha-1": (ValueError, lambda: yatenglg.focal_loss(alpha=1.0)),
    "yateng-alpha-2": (ValueError, lambda: yatenglg.focal_loss(alpha=2)),
    "yateng-alpha-len": (ValueError, lambda: yatenglg.focal_loss(alpha=[0.5, 0.5], num_classes=3)),
    "clcarwin-float-alpha-c3": (ValueError, lambda: clcarwin.FocalLoss(alpha=0.25)(_x(2, 3), _y(0, 1))),
    "clcarwin-list-alpha-len": (ValueError, lambda: clcarwin.FocalLoss(alpha=[0.5, 0.5])(_x(2, 3), _y(0, 1))),
    "paddle-label-shape": (ValueError, lambda: paddle.sigmoid_focal_loss(_x(2, 3), _x(2, 1))),
    "paddle-label-index": (ValueError, lambda: paddle.sigmoid_focal_loss(_x(2, 3), _y(0, 1))),
    "yolov5-target-shape": (ValueError, lambda: yolov5.FocalLoss(nn.BCEWithLogitsLoss())(_x(2, 3), _x(2))),
    # unknown reduction
    "p1ce-reduction": (ValueError, lambda: Poly1CrossEntropyLoss(3, reduction="avg")),
    "p1fl-reduction": (ValueError, lambda: Poly1FocalLoss(3, reduction="avg")),
    "paddle-reduction": (ValueError, lambda: paddle.sigmoid_focal_loss(_x(2, 3), _x(2, 3), reduction="avg")),
    "ppdet-reduction": (ValueError, lambda: ppdet.FocalLoss()(_x(2, 3), _y(0, 3), reduction="avg")),
    "yolov5-reduction": (
        ValueError,
        lambda: yolov5.FocalLoss(nn.BCEWithLogitsLoss(reduction="avg"))(_x(2, 3), _x(2, 3)),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_clear_error(case):
    error, call = BAD_INPUT[case]
    with pytest.raises(error, match="expected"):
        call()


def test_valid_edge_inputs_are_accepted():
    """Counterparts of the bad inputs that the originals accept: they must not raise."""
    Poly1FocalLoss(3, alpha=-1.0)(_x(2, 3), _y(0, 2))
    ppdet.FocalLoss()(_x(2, 3), _y(3, 3))  # all background
    yatenglg.focal_loss(alpha=0.99)(_x(2, 3), _y(0, 2))
    clcarwin.FocalLoss(alpha=0.25)(_x(2, 2), _y(0, 1))
    paddle.sigmoid_focal_loss(_x(2, 3), _x(2, 3), normalizer=torch.tensor([2.0, 2.0, 2.0]))
