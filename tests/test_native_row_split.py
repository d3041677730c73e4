"""The native softmax row's exp pass at every position of the target against the row's vectors and blocks.

``sm_row`` splits each block of ``SUM_BLK`` (1024) classes into whole vectors of ``PF_VL`` (16) floats and at most two
masked windows (the one holding the target, the block's last partial vector, shifted back to end at the block's
end and possibly reaching into the previous block); rows under 16 classes are split at the target itself.  These
tests put the target at each edge of that split -- first and last class, both ends of its vector, the last partial
vector, both sides of a block boundary -- for class counts around the vector and block sizes, and compare loss and
gradient with the float64 reference, with and without label smoothing, class weights, a prior bias, margins and a
logit scale.  A window that counted a class twice, dropped one, or counted the target in ``1 - p_t`` fails them.
"""

from __future__ import annotations

import pytest
import torch

import polyfocal as pf
from polyfocal.kernels import _native, backend
from polyfocal.reference import poly_loss_reference

pytestmark = pytest.mark.skipif(not _native.available(), reason="the native kernels are not built here")

CLASSES = [1, 7, 15, 16, 17, 31, 32, 40, 1000, 1024, 1025, 1030, 1040, 2049]


def _targets(c: int) -> list[int]:
    edges = {0, 1, c - 1, c - 2, 15, 16, 17, c // 2, c - c % 16, c - c % 16 - 1, 1023, 1024, 1025, 2047, 2048}
    return sorted(t for t in edges if 0 <= t < c)


CASES = {
    "ce": {},
    "focal gamma .5 + poly": {"gamma": 0.5, "epsilon": 1.0},
    "label smoothing": {"label_smoothing": 0.1, "epsilon": 0.0},
    "label smoothing + class weight": {"label_smoothing": 0.2, "weight": "w", "epsilon": 0.0},
    "prior (logit adjusted)": {"prior": "p", "epsilon": 0.0},
    "prior, wide (exact maximum)": {"prior": "wide", "logit_scale": 3.0, "epsilon": 0.0},
    "margin + logit scale (LDAM)": {"margin": "m", "logit_scale": 30.0, "epsilon": 0.0},
    "everything": {"label_smoothing": 0.1, "weight": "w", "prior": "p", "margin": "m", "logit_scale": 2.0,
                   "gamma": 2.0, "epsilon": 0.5},
}  # fmt: skip


def _options(name: str, c: int, g: torch.Generator) -> dict:
    opts = dict(CASES[name])
    if c == 1 and opts.get("gamma", 0.0) < 1.0 and "gamma" in opts:
        opts["gamma"] = 2.0  # one class: p_t = 1 exactly, where d(1 - p_t)^gamma is infinite for gamma < 1
    if opts.get("weight") == "w":
        opts["weight"] = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    if opts.get("prior") == "p":
        opts["prior"] = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    elif opts.get("prior") == "wide":  # log-prior range ~ 30 nats, times logit_scale 3: above the bound's gap of 40
        opts["prior"] = torch.exp(-30 * torch.rand(c, generator=g, dtype=torch.float64))
    if opts.get("margin") == "m":
        opts["margin"] = torch.rand(c, generator=g, dtype=torch.float64) * 0.5
    return opts


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("c", CLASSES)
def test_every_target_position_matches_the_reference(c, name):
    g = torch.Generator().manual_seed(c)
    targets = torch.tensor(_targets(c))
    x = (torch.randn(len(targets), c, generator=g, dtype=torch.float64) * 3).float()
    opts = _options(name, c, g)
    ref_x = x.double().requires_grad_()
    ref = poly_loss_reference(ref_x, targets, reduction="sum", **opts)
    ref.backward()
    xi = x.clone().requires_grad_()
    cast = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    with backend("native"):
        out = pf.poly_loss(xi, targets, reduction="sum", **cast)
        out.backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=2e-5, atol=2e-5 * len(targets))
    torch.testing.assert_close(xi.grad.double(), ref_x.grad, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("c", [16, 17, 1000, 1030])
def test_probability_of_a_confident_target_keeps_relative_precision(c):
    # p_t -> 1: 1 - p_t (the other classes' sum) must not come from a subtraction; the focal loss with gamma < 1
    # depends on it to relative precision
    targets = torch.tensor(_targets(c))
    x = torch.randn(len(targets), c, generator=torch.Generator().manual_seed(1)) - 10.0
    x[torch.arange(len(targets)), targets] = 12.0
    ref_x = x.double().requires_grad_()
    ref = poly_loss_reference(ref_x, targets, gamma=0.5, epsilon=0.0, reduction="none")
    ref.sum().backward()
    xi = x.clone().requires_grad_()
    with backend("native"):
        out = pf.softmax_focal_loss(xi, targets, gamma=0.5, reduction="none")
        out.sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-4, atol=0)
    rows = torch.arange(len(targets))
    others = torch.ones_like(xi.grad, dtype=torch.bool)
    others[rows, targets] = False
    # the other classes' gradient entries (~1e-10 here) to relative precision; the target's own entry,
    # k (p_t - 1) + ..., carries float32's absolute rounding of p_t (on every backend)
    torch.testing.assert_close(xi.grad.double()[others], ref_x.grad[others], rtol=1e-3, atol=0)
    torch.testing.assert_close(xi.grad.double()[rows, targets], ref_x.grad[rows, targets], rtol=0, atol=1e-9)
