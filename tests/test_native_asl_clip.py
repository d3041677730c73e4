"""The native kernel's asymmetric-loss clip in log space (issue 18 item 1, the C part; issue 19 owns _native.c).

1 - p_m = min(q + clip, 1) and -log(1 - p_m) = max(0, -logaddexp(-softplus(x), log clip)): no cancellation as
p -> 1 for a tiny clip (FLT_MIN, 1e-6), where f8e57fb's ``1 - (p - clip)`` / ``log1p(-p_m)`` lost q's digits
(gradient error ~4e-5 at x = 8.496, t = 0.677, gamma_neg = 1).  Values and gradients against the float64 reference.
"""

from __future__ import annotations

import pytest
import torch

import polyfocal as pf
from polyfocal.kernels import _native, backend
from polyfocal.reference import poly_loss_reference

pytestmark = pytest.mark.skipif(not _native.available(), reason="native kernels not built (no C compiler)")

FLT_MIN = float(torch.finfo(torch.float32).tiny)


@pytest.mark.parametrize("clip", [FLT_MIN, 1e-6, 1e-3, 0.05])
@pytest.mark.parametrize("gamma_neg", [1.0, 4.0])
def test_native_asl_clip_matches_reference(clip, gamma_neg):
    x = torch.tensor([[8.496, 12.0, 4.0, 0.5, 0.0, -3.0, -15.0, 16.5, 9.0, 7.2]])
    t = torch.tensor([[0.677, 0.0, 0.0, 1.0, 0.3, 0.0, 1.0, 0.0, 0.9, 0.2]])
    kw = {"gamma_pos": 0.0, "gamma_neg": gamma_neg, "clip": clip, "reduction": "none"}
    xr = x.double().requires_grad_()
    ref_kw = {"activation": "sigmoid", "epsilon": 0.0, "gamma": 0.0, "gamma_neg": gamma_neg, "clip": clip}
    ref = poly_loss_reference(xr, t.double(), reduction="none", **ref_kw)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    xn = x.clone().requires_grad_()
    with backend("native"):
        out = pf.asymmetric_loss(xn, t, **kw)
    (grad,) = torch.autograd.grad(out.sum(), xn)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-6, atol=1e-7)
    assert torch.isfinite(grad).all()


def test_native_asl_clip_nan_and_inf_propagate():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 8.0]])
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    with backend("native"):
        out = pf.asymmetric_loss(x.clone().requires_grad_(), t, clip=1e-6, reduction="none")
    ref_kw = {"activation": "sigmoid", "epsilon": 0.0, "gamma": 0.0, "gamma_neg": 4.0, "clip": 1e-6}
    ref = poly_loss_reference(x.double(), t.double(), reduction="none", **ref_kw)
    assert torch.isnan(out[0, 0]) and torch.isnan(ref[0, 0])
    torch.testing.assert_close(out[0, 1:].double(), ref[0, 1:], rtol=2e-6, atol=1e-7, equal_nan=True)
