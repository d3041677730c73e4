"""``polyfocal.compat.timm`` and ``polyfocal.compat.mmdet`` against plain-torch transcriptions of their listings
(``tests/detection_listings.py``): values and input gradients, every argument of the originals."""

from __future__ import annotations

import pytest
import torch

import detection_listings as listing
from polyfocal.compat import mmdet, timm

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _both(ours, theirs, x, *args, **kwargs):
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    a, b = ours(xa, *args, **kwargs), theirs(xb, *args, **kwargs)
    g = torch.rand(a.shape, generator=torch.Generator().manual_seed(1), dtype=a.dtype) + 0.5
    (ga,) = torch.autograd.grad((a * g).sum(), xa)
    (gb,) = torch.autograd.grad((b * g.to(b.dtype)).sum(), xb)
    return a, b, ga, gb


def _assert_same(ours, theirs, x, *args, rtol=1e-6, atol=1e-7, **kwargs):
    a, b, ga, gb = _both(ours, theirs, x, *args, **kwargs)
    torch.testing.assert_close(a, b.to(a.dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


def _data(seed=0, n=24, c=7, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=dtype) * 3  # moderate logits: the listings' eps clamps stay inactive
    q = torch.rand(n, c, generator=gen, dtype=dtype)
    q = torch.where(q < 0.7, 0.0, q)
    label = torch.randint(0, c + 1, (n,), generator=gen)
    score = torch.rand(n, generator=gen, dtype=dtype)
    return x, q, label, score, gen


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(gamma_neg=2, gamma_pos=0, clip=0.0),
        dict(gamma_neg=4, gamma_pos=1, clip=None),
        dict(gamma_neg=0, gamma_pos=0),
        dict(gamma_neg=3.5, gamma_pos=0.5, clip=0.2, disable_torch_grad_focal_loss=True),
        dict(gamma_neg=1, gamma_pos=1, clip=0.1, eps=1e-6),
    ],
)
@pytest.mark.parametrize("soft", [False, True])
def test_timm_asymmetric_loss_multilabel(kwargs, soft):
    x, q, *_ = _data(1)
    y = q if soft else (q > 0).double()
    _assert_same(timm.AsymmetricLossMultiLabel(**kwargs), listing.AsymmetricLossMultiLabel(**kwargs), x, y)
    # float32 through the fused kernels
    _assert_same(
        timm.AsymmetricLossMultiLabel(**kwargs), listing.AsymmetricLossMultiLabel(**kwargs), x.float(), y.float(),
        rtol=2e-5, atol=2e-5,
    )  # fmt: skip


def test_timm_defaults_and_detached_gradient_differs():
    assert timm.AsymmetricLossMultiLabel().gamma_pos == 1 and timm.AsymmetricLossMultiLabel().gamma_neg == 4
    x, q, *_ = _data(2)
    y = (q > 0).double()
    _, _, ga, _ = _both(
        timm.AsymmetricLossMultiLabel(disable_torch_grad_focal_loss=True), listing.AsymmetricLossMultiLabel(), x, y
    )
    _, _, gfull, _ = _both(timm.AsymmetricLossMultiLabel(), listing.AsymmetricLossMultiLabel(), x, y)
    assert not torch.allclose(ga, gfull)
    with pytest.raises(ValueError, match="expected clip"):
        timm.AsymmetricLossMultiLabel(clip=1.5)


@pytest.mark.parametrize(
    "init",
    [{}, dict(alpha=0.5, gamma=1.5, iou_weighted=False), dict(alpha=2.0, reduction="sum", loss_weight=2.5)],
)
@pytest.mark.parametrize(
    "call",
    [{}, dict(reduction_override="none"), dict(avg_factor=5.0), dict(avg_factor=0.0, reduction_override="none"),
     dict(avg_factor=0.0),  # all ignored in mmdet: sum / float32 eps
     dict(weight="w"), dict(weight="w", avg_factor=3.0)],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mmdet_varifocal_loss(init, call, dtype):
    x, q, _, _, gen = _data(3, dtype=dtype)
    call = dict(call)
    if call.get("weight") == "w":
        call["weight"] = torch.rand(x.shape, generator=gen, dtype=dtype)
    if "avg_factor" in call and init.get("reduction") == "sum" and call.get("reduction_override") is None:
        with pytest.raises(ValueError, match="avg_factor"):
            mmdet.VarifocalLoss(**init)(x, q, **call)
        return
    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    if call.get("avg_factor") == 0.0 and dtype == torch.float32:
        tol["atol"] /= torch.finfo(torch.float32).eps  # everything is scaled by 1 / eps
    _assert_same(mmdet.VarifocalLoss(**init), listing.VarifocalLoss(**init), x, q, **call, **tol)


@pytest.mark.parametrize("init", [{}, dict(beta=1.5, loss_weight=0.5), dict(reduction="sum")])
@pytest.mark.parametrize(
    "call",
    [{}, dict(reduction_override="none"), dict(avg_factor=4.0), dict(weight="w"), dict(weight="w", avg_factor=2.0)],
)
@pytest.mark.parametrize("form", ["pair", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mmdet_quality_focal_loss(init, call, form, dtype):
    x, q, label, score, gen = _data(4, dtype=dtype)
    target = (label, score) if form == "pair" else q
    call = dict(call)
    if call.get("weight") == "w":
        call["weight"] = torch.rand(x.shape[0], generator=gen, dtype=dtype)
    if "avg_factor" in call and init.get("reduction") == "sum":
        with pytest.raises(ValueError, match="avg_factor"):
            mmdet.QualityFocalLoss(**init)(x, target, **call)
        return
    tol = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    if call.get("avg_factor") == 0.0 and dtype == torch.float32:
        tol["atol"] /= torch.finfo(torch.float32).eps
    _assert_same(mmdet.QualityFocalLoss(**init), listing.QualityFocalLoss(**init), x, target, **call, **tol)


def test_mmdet_shims_refuse_what_mmdet_refuses():
    with pytest.raises(ValueError, match="use_sigmoid=True"):
        mmdet.VarifocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="use_sigmoid=True"):
        mmdet.QualityFocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="activated=False"):
        mmdet.QualityFocalLoss(activated=True)
    with pytest.raises(ValueError, match="expected alpha"):
        mmdet.VarifocalLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        mmdet.VarifocalLoss()(torch.randn(2, 3), torch.zeros(2, 3), reduction_override="avg")
