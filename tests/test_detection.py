"""The dense-detection and multi-label members of the sigmoid family (issue 14): asymmetric loss, varifocal loss,
quality focal loss.  Every backend against the float64 reference (values and input gradients), the numerics
claims (|logit| 1e4, exponents below 1, s exactly equal to q, the clip kink), autograd (gradcheck, gradgradcheck,
torch.compile), identities with the rest of the family and hypothesis properties."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import polyfocal
from polyfocal import kernels
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [
    "torch",
    "composite",
    pytest.param("native", marks=pytest.mark.skipif(not _native.available(), reason="no native build")),
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
]
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _loss_and_grad(fn, x, seed=0):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    (grad,) = torch.autograd.grad((loss * g.to(loss.dtype).to(loss.device)).sum(), x)
    return loss.detach(), grad


# (public function, its keywords, the reference's keywords)
LOSSES = {
    "asl": (polyfocal.asymmetric_loss, dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05), dict(gamma=1.0, gamma_neg=4.0)),
    "asl-poly-alpha": (
        polyfocal.asymmetric_loss,
        dict(gamma_pos=0.5, gamma_neg=2.5, clip=0.1, epsilon=(1.0, -0.5), alpha=0.3),
        dict(gamma=0.5, gamma_neg=2.5, clip=0.1, epsilon=(1.0, -0.5), alpha=0.3),
    ),
    "asl-noclip-ls": (
        polyfocal.asymmetric_loss,
        dict(gamma_pos=0.0, gamma_neg=3.0, clip=0.0, label_smoothing=0.1),
        dict(gamma=0.0, gamma_neg=3.0, clip=0.0, label_smoothing=0.1),
    ),
    "vfl": (polyfocal.varifocal_loss, dict(alpha=0.75, gamma=2.0), dict(variant="varifocal", alpha=0.75, gamma=2.0)),
    "vfl-plain": (
        polyfocal.varifocal_loss,
        dict(alpha=1.5, gamma=1.5, iou_weighted=False),
        dict(variant="varifocal", alpha=1.5, gamma=1.5, iou_weighted=False),
    ),
    "qfl": (polyfocal.quality_focal_loss, dict(beta=2.0), dict(variant="quality", gamma=2.0)),
    "qfl-poly": (
        polyfocal.quality_focal_loss,
        dict(beta=1.5, epsilon=(1.0, 0.5)),
        dict(variant="quality", gamma=1.5, epsilon=(1.0, 0.5)),
    ),
}
REF_DEFAULTS = dict(activation="sigmoid", epsilon=(), clip=0.05)


def _ref_kwargs(name):
    fn, _, ref = LOSSES[name]
    kw = dict(REF_DEFAULTS)
    if fn is not polyfocal.asymmetric_loss:
        kw["clip"] = 0.0
    kw.update(ref)
    return kw


def _targets(kind, shape, gen):
    """Dense soft scores (with exact zeros), 0/1 floats, class indices (index C = background, ignored rows) or the
    (label, score) pair; returns (target for our call, target for the reference, score for the reference)."""
    if kind in ("index", "pair"):
        y = torch.randint(0, shape[1] + 1, shape[:1] + shape[2:], generator=gen)
        y.view(-1)[::3] = -100
        y.view(-1)[1] = 0
        if kind == "index":
            return y, y, None
        score = torch.rand(y.shape, generator=gen, dtype=torch.float64)
        return (y, score), y, score
    dense = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "soft":
        dense = torch.where(dense < 0.5, 0.0, dense)
        return dense, dense, None
    binary = (dense > 0.7).double()
    return binary, binary, None


def _run(backend, name, x, target, dtype=None, **extra):
    fn, kw, _ = LOSSES[name]
    dev = _device(backend)
    if isinstance(target, tuple):
        target = tuple(v.to(dev) if v.is_floating_point() is False else v.to(dev, dtype or v.dtype) for v in target)
    else:
        target = target.to(dev, dtype or target.dtype) if target.is_floating_point() else target.to(dev)
    extra = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    if fn is polyfocal.varifocal_loss:
        extra.pop("label_smoothing", None)
    with kernels.backend(backend):
        loss, grad = _loss_and_grad(lambda v: fn(v, target, **kw, **extra), x.to(dev))
    return loss.cpu(), grad.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 5), (3, 5, 4)])
@pytest.mark.parametrize("kind", ["soft", "binary", "index", "pair"])
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_detection_losses_match_reference(backend, shape, kind, name, reduction):
    if kind == "pair" and name.startswith("asl"):
        pytest.skip("the (label, score) pair is a varifocal / quality focal form")
    gen = torch.Generator().manual_seed(len(name) + shape[0])
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    ours_target, ref_target, score = _targets(kind, shape, gen)
    extra: dict = dict(reduction=reduction)
    if shape == (8, 5):  # weight, pos_weight and a normaliser (broadcast views) on one of the shapes
        extra["weight"] = torch.rand(5, generator=gen, dtype=torch.float64)
        extra["pos_weight"] = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
        extra["normalizer"] = 7.0
    rtol, atol, dtype = 1e-9, 1e-11, None
    if backend == "native":  # float32 kernels
        x, rtol, atol, dtype = x.float(), 2e-5, 2e-6, torch.float32
    ours, ours_grad = _run(backend, name, x, ours_target, dtype, **extra)
    ref_kw = {**_ref_kwargs(name), **extra}
    ref, ref_grad = _loss_and_grad(
        lambda v: poly_loss_reference(v, ref_target, score=score, **ref_kw), x.to(torch.float64)
    )
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(ours_grad.double(), ref_grad, rtol=rtol, atol=atol)
    assert ours_grad.dtype == x.dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["asl", "vfl", "qfl-poly"])
def test_low_precision_inputs_use_float32_math(backend, dtype, name):
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(300, 7, generator=gen) * 3).to(dtype)  # 2100 elements: several native blocks
    target = torch.where(torch.rand(300, 7, generator=gen) < 0.6, 0.0, torch.rand(300, 7, generator=gen))
    if name == "asl":
        target = (target > 0).float()
    loss, grad = _run(backend, name, x, target.to(dtype))
    ref, ref_grad = _loss_and_grad(
        lambda v: poly_loss_reference(v, target.to(dtype).double(), **_ref_kwargs(name)), x.double()
    )
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-7)
    rtol = {torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}[dtype]
    torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=rtol, atol=1e-6)


def test_native_kernel_takes_the_detection_members():
    """The fast path really runs in C for these arguments (not a silent torch-ops fallback)."""
    if not _native.available():
        pytest.skip("no native build")
    from polyfocal._args import hyper, prepare

    x, t = torch.randn(4, 3), torch.rand(4, 3)
    for h in (
        hyper(activation="sigmoid", gamma_neg=4.0, clip=0.05),
        hyper(activation="sigmoid", variant="varifocal", gamma=2.0, alpha=0.75),
        hyper(activation="sigmoid", variant="quality", gamma=2.0),
    ):
        call = prepare(x, t, h)
        assert kernels.select(call.x, call.target, call.args) == "native"


# --- numerics ---------------------------------------------------------------------------------------------------

EXTREME = [
    ("asl", dict(gamma_pos=0.5, gamma_neg=0.5, clip=0.05)),
    ("asl", dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.0)),
    ("asl", dict(gamma_pos=0.3, gamma_neg=0.7, clip=0.05, epsilon=1.0)),
    ("vfl", dict(gamma=0.5)),
    ("vfl", dict(gamma=2.0, iou_weighted=False)),
    ("qfl", dict(beta=0.5)),
    ("qfl", dict(beta=0.5, epsilon=1.0)),
    ("qfl", dict(beta=2.0)),
]
FUNCTIONS = {
    "asl": polyfocal.asymmetric_loss,
    "vfl": polyfocal.varifocal_loss,
    "qfl": polyfocal.quality_focal_loss,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "kw"), EXTREME)
def test_extreme_logits_and_exponents_below_one_are_finite(backend, name, kw):
    dev = _device(backend)
    x = torch.tensor([[1e4, -1e4, 0.0, 30.0], [-1e4, 1e4, -30.0, 90.0], [1e4, 1e4, -1e4, -1e4]], device=dev)
    soft = torch.tensor([[1.0, 0.0, 0.5, 0.3], [0.7, 0.2, 0.0, 1.0], [0.0, 0.4, 1.0, 0.9]], device=dev)
    with kernels.backend(backend):
        for target in (soft, (soft > 0.45).float(), torch.tensor([0, 4, 2], device=dev)):
            loss, grad = _loss_and_grad(lambda v, t=target: FUNCTIONS[name](v, t, reduction="none", **kw), x)
            assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), (target, loss, grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_quality_focal_at_s_exactly_equal_to_q(backend, beta):
    """sigmoid(0) = 0.5 and sigmoid(log 3) = 0.75 (to rounding): the modulating factor |q - s|^beta is 0 there; loss
    and gradient are finite and the gradient is that of the other terms (0 without epsilon)."""
    dev = _device(backend)
    x = torch.tensor([[0.0, 0.0, 1.5]], device=dev)
    q = torch.tensor([[0.5, 0.0, 0.9]], device=dev)
    with kernels.backend(backend):
        loss, grad = _loss_and_grad(
            lambda v: polyfocal.quality_focal_loss(v, q, beta=beta, epsilon=1.0, reduction="none"), x
        )
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert loss[0, 0] == 0 and grad[0, 0] == 0  # u = 0: u^beta (BCE + u) = 0, derivative taken as 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma_neg", [0.0, 0.5, 4.0])
def test_asymmetric_clip_kink_is_finite_and_flat_below(backend, gamma_neg):
    """Negatives with s <= clip contribute exactly nothing (loss and gradient 0); around the kink s = clip the loss
    and gradient are finite and continuous from above."""
    dev = _device(backend)
    clip = 0.25
    logit = torch.logit(torch.tensor(clip, dtype=torch.float64)).item()
    x = torch.tensor([[-3.0, logit - 1e-3, logit, logit + 1e-6, logit + 1e-3, 2.0]], device=dev)
    t = torch.zeros_like(x)
    with kernels.backend(backend):
        loss, grad = _loss_and_grad(
            lambda v: polyfocal.asymmetric_loss(v, t, gamma_pos=1.0, gamma_neg=gamma_neg, clip=clip, reduction="none"),
            x,
        )
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (loss[0, :2] == 0).all() and (grad[0, :2] == 0).all()
    assert loss[0, 3] < 1e-5 and loss[0, 4] < 1e-2 and loss[0, 5] > 0.1
    if gamma_neg > 0:  # s_m^g (-log(1 - s_m)) ~ s_m^(g+1): the gradient vanishes at the kink from above too
        assert abs(grad[0, 3]) < 1e-3


FLT_MIN = torch.finfo(torch.float32).tiny  # 1.1754943508222875e-38


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [FLT_MIN, 1e-6, 1e-3])
@pytest.mark.parametrize(("gamma_pos", "gamma_neg"), [(0.0, 1.0), (1.0, 4.0)])
def test_asymmetric_tiny_clip_is_precise_in_float32(backend, clip, gamma_pos, gamma_neg):
    """Issue 18: a tiny non-zero clip made ``1 - p_m = 1 - (p - clip)`` cancel in float32 as p -> 1 (gradient 4e-5
    off at x = 8.496, t = 0.677; at x = 17, clip FLT_MIN, ``-log(1 - p_m)`` was 16.6 (torch ops) or inf (native),
    not 17).  Float32 values and input gradients, soft and 0/1 targets, logits up to 17, against the float64
    reference at the tolerance the other members meet in float32 (rtol 2e-5, atol 2e-6)."""
    dev = _device(backend)
    gen = torch.Generator().manual_seed(18)
    ramp = torch.linspace(-17.0, 17.0, 35, dtype=torch.float64)
    x = torch.cat([torch.tensor([8.496, 12.0, 15.5, 16.0, 17.0], dtype=torch.float64), ramp]).view(8, 5)
    x = torch.cat([x, torch.randn(8, 5, generator=gen, dtype=torch.float64) * 6]).float()
    soft = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    soft[0, 0] = 0.677
    ref_kw = dict(activation="sigmoid", epsilon=(), gamma=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    for t in (torch.where(soft < 0.3, 0.0, soft).float(), (soft > 0.6).float()):
        with kernels.backend(backend):
            loss, grad = _loss_and_grad(
                lambda v, t=t: polyfocal.asymmetric_loss(
                    v, t.to(dev), gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, reduction="none"
                ),
                x.to(dev),
            )
        ref, ref_grad = _loss_and_grad(
            lambda v, t=t: poly_loss_reference(v, t.double(), reduction="none", **ref_kw), x.double()
        )
        assert loss.dtype == grad.dtype == torch.float32
        torch.testing.assert_close(loss.cpu().double(), ref, rtol=2e-5, atol=2e-6)
        torch.testing.assert_close(grad.cpu().double(), ref_grad, rtol=2e-5, atol=2e-6)


def test_gradcheck_and_gradgradcheck_float64_composite():
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    q = torch.where(torch.rand(4, 5, generator=gen, dtype=torch.float64) < 0.5, 0.0, torch.rand(4, 5, generator=gen))
    q = q.double()
    y, score = torch.tensor([0, 5, 2, 4]), torch.rand(4, generator=gen, dtype=torch.float64)
    calls = [
        lambda v: polyfocal.asymmetric_loss(v, (q > 0).double(), gamma_pos=0.5, gamma_neg=2.5, clip=0.05, epsilon=1.0),
        lambda v: polyfocal.asymmetric_loss(v, q, gamma_pos=1.0, gamma_neg=4.0, clip=0.05),
        lambda v: polyfocal.asymmetric_loss(v * 4, q, gamma_pos=0.0, gamma_neg=1.0, clip=1e-6),  # the log-space clip
        lambda v: polyfocal.varifocal_loss(v, q, gamma=1.5),
        lambda v: polyfocal.varifocal_loss(v, (y, score)),
        lambda v: polyfocal.quality_focal_loss(v, q, beta=2.0, epsilon=0.5),
        lambda v: polyfocal.quality_focal_loss(v, (y, score), beta=1.5),
    ]
    for call in calls:
        assert torch.autograd.gradcheck(call, (x,))
        assert torch.autograd.gradgradcheck(call, (x,))  # double backward: the composite formulas


@pytest.mark.parametrize("name", ["asl", "vfl", "qfl"])
def test_torch_compile_fullgraph(name):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    lin = torch.nn.Linear(6, 5)
    x = torch.randn(16, 6, generator=gen)
    q = torch.where(torch.rand(16, 5, generator=gen) < 0.6, 0.0, torch.rand(16, 5, generator=gen))
    target = (q > 0).float() if name == "asl" else q
    fn = FUNCTIONS[name]

    def step(inp):
        return fn(lin(inp), target, weight=torch.full((5,), 0.5))

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss_c = compiled(x)
    grads_c = torch.autograd.grad(loss_c, list(lin.parameters()))
    loss_e = step(x)
    grads_e = torch.autograd.grad(loss_e, list(lin.parameters()))
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge)


def test_opcheck_sigmoid_op_with_detection_arguments():
    x, y, score = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 4, 1, 3, 4, 2]), torch.rand(6)
    h = polyfocal._args.hyper(activation="sigmoid", epsilon=1.0, gamma=1.5, ignore_index=-100, variant="quality")
    flat = polyfocal._args.flatten(dataclasses.replace(h, is_index=True, score=score))
    torch.library.opcheck(kernels.poly_op, (x, y, True, *flat), test_utils=("test_schema", "test_faketensor"))


# --- identities -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_identities_with_the_rest_of_the_family(backend):
    dev = _device(backend)
    gen = torch.Generator().manual_seed(9)
    x = (torch.randn(32, 6, generator=gen) * 3).to(dev)
    soft = torch.rand(32, 6, generator=gen).to(dev)
    hard = (soft > 0.7).float()
    sparse = torch.where(soft < 0.6, 0.0, soft)
    close = dict(rtol=1e-5, atol=1e-6)
    with kernels.backend(backend):
        for g in (0.0, 1.5, 2.0):  # ASL with one gamma and no clip is sigmoid focal loss without alpha (soft too)
            asl = polyfocal.asymmetric_loss(x, soft, gamma_pos=g, gamma_neg=g, clip=0.0, reduction="none")
            fl = polyfocal.sigmoid_focal_loss(x, soft, gamma=g, alpha=None, reduction="none")
            torch.testing.assert_close(asl, fl, **close)
        # QFL with 0/1 targets is sigmoid focal loss with gamma = beta and no alpha, epsilon terms included
        qfl = polyfocal.quality_focal_loss(x, hard, beta=1.5, epsilon=1.0, reduction="none")
        fl = polyfocal.sigmoid_focal_loss(x, hard, gamma=1.5, alpha=None, epsilon=1.0, reduction="none")
        torch.testing.assert_close(qfl, fl, **close)
        # VFL negatives are focal negatives with alpha_focal = 1 - alpha_vfl; positives BCE(x, q) times q
        vfl = polyfocal.varifocal_loss(x, sparse, alpha=0.75, gamma=2.0, reduction="none")
        fl = polyfocal.sigmoid_focal_loss(x, sparse, alpha=0.25, gamma=2.0, reduction="none")
        neg = sparse == 0
        torch.testing.assert_close(vfl[neg], fl[neg], **close)
        bce = F.binary_cross_entropy_with_logits(x, sparse, reduction="none")
        torch.testing.assert_close(vfl[~neg], (sparse * bce)[~neg], **close)
        plain = polyfocal.varifocal_loss(x, sparse, iou_weighted=False, reduction="none")
        torch.testing.assert_close(plain[~neg], bce[~neg], **close)
        # the (label, score) pair equals its dense one-hot-times-score target; background rows are all negative
        y = torch.randint(0, 7, (32,), generator=gen).to(dev)
        score = torch.rand(32, generator=gen).to(dev)
        dense = torch.zeros(32, 6, device=dev)
        fg = (y < 6).nonzero().squeeze(1)
        dense[fg, y[fg]] = score[fg]
        for fn in (polyfocal.quality_focal_loss, polyfocal.varifocal_loss):
            torch.testing.assert_close(fn(x, (y, score), reduction="sum"), fn(x, dense, reduction="sum"), **close)


def test_detached_modulator_is_asl_disable_torch_grad_focal_loss():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    t = (torch.rand(6, 5, generator=gen) > 0.6).double()
    kw = dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    ours, grad = _loss_and_grad(lambda v: polyfocal.asymmetric_loss(v, t, detach_modulator=True, **kw), x)
    ref, ref_grad = _loss_and_grad(
        lambda v: poly_loss_reference(
            v, t, activation="sigmoid", epsilon=(), gamma=1.0, gamma_neg=4.0, clip=0.05, detach_modulator=True
        ),
        x,
    )
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_grad)
    _, full = _loss_and_grad(lambda v: polyfocal.asymmetric_loss(v, t, **kw), x)
    assert not torch.allclose(grad, full)  # the detached gradient is not the loss's


def test_modules_equal_functions_and_validate():
    x, q = torch.randn(5, 4), torch.rand(5, 4)
    y, score = torch.tensor([0, 4, 2, 4, 1]), torch.rand(5)
    assert torch.equal(
        polyfocal.AsymmetricLoss(gamma_pos=1.0, clip=0.1)(x, (q > 0.5).float()),
        polyfocal.asymmetric_loss(x, (q > 0.5).float(), gamma_pos=1.0, clip=0.1),
    )
    assert torch.equal(
        polyfocal.VarifocalLoss(alpha=0.5)(x, (y, score)), polyfocal.varifocal_loss(x, (y, score), alpha=0.5)
    )
    assert torch.equal(polyfocal.QualityFocalLoss(beta=1.0)(x, q), polyfocal.quality_focal_loss(x, q, beta=1.0))
    crit = polyfocal.AsymmetricLoss()
    crit.gamma_neg = 2.0  # a schedule: validated and rebuilt
    assert torch.equal(crit(x, (q > 0.5).float()), polyfocal.asymmetric_loss(x, (q > 0.5).float(), gamma_neg=2.0))
    with pytest.raises(ValueError, match="expected gamma_neg"):
        crit.gamma_neg = -1.0
    assert crit.gamma_neg == 2.0
    for make in (
        lambda: polyfocal.AsymmetricLoss(clip=1.0),
        lambda: polyfocal.VarifocalLoss(alpha=-0.5),
        lambda: polyfocal.QualityFocalLoss(beta=-1.0),
    ):
        with pytest.raises(ValueError, match="expected"):
            make()


# --- hypothesis -------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
# Issue 18: the draw that failed on a fresh clone (FLT_MIN clip, soft targets), 1e-6 and a float64 subnormal clip,
# and tiny positive exponents: pinned here so every profile, derandomised CI included, runs them
@example(rows=40, cols=9, variant="asl", g1=0.0, g2=1.0, clip=FLT_MIN, hard=False, seed=0)
@example(rows=40, cols=9, variant="asl", g1=0.0, g2=1.0, clip=1e-6, hard=False, seed=4)
@example(rows=40, cols=9, variant="asl", g1=5e-324, g2=1.0, clip=5e-324, hard=False, seed=1)
@example(rows=40, cols=9, variant="asl", g1=FLT_MIN, g2=FLT_MIN, clip=0.0, hard=True, seed=2)
@example(rows=40, cols=9, variant="vfl", g1=FLT_MIN, g2=5e-324, clip=0.0, hard=False, seed=3)
@example(rows=40, cols=9, variant="qfl", g1=FLT_MIN, g2=0.0, clip=0.0, hard=False, seed=5)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 9),
    variant=st.sampled_from(["asl", "vfl", "qfl"]),
    g1=st.floats(0.0, 4.0),
    g2=st.floats(0.0, 4.0),
    clip=st.floats(0.0, 0.5),
    hard=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_torch_and_native_match_reference(rows, cols, variant, g1, g2, clip, hard, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 3
    t = torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    t = (t > 0.6).double() if hard else torch.where(t < 0.4, 0.0, t)
    if variant == "asl":
        if clip > 0:  # the reference's plain power has a NaN gradient at 0^g, g < 1 (below the margin); see above
            g2 = max(g2, 1.0)
        call = dict(gamma_pos=g1, gamma_neg=g2, clip=clip)
        ref = dict(gamma=g1, gamma_neg=g2, clip=clip)
    elif variant == "vfl":
        call, ref = dict(alpha=g2 / 4, gamma=g1), dict(variant="varifocal", alpha=g2 / 4, gamma=g1)
    else:
        g1 = max(g1, 1.0)  # beta < 1 is ill-conditioned near s = q (float32 backends), tested above
        call, ref = dict(beta=g1), dict(variant="quality", gamma=g1)
    expected, expected_grad = _loss_and_grad(
        lambda v: poly_loss_reference(v, t, activation="sigmoid", epsilon=(), reduction="sum", **ref), x
    )
    runs = [("torch", torch.float64), ("torch", torch.float32), ("composite", torch.float32)]
    for backend, dtype in runs + ([("native", torch.float32)] if _native.available() else []):
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-10)
        with kernels.backend(backend):
            loss, grad = _loss_and_grad(
                lambda v, d=dtype: FUNCTIONS[variant](v, t.to(d), reduction="sum", **call), x.to(dtype)
            )
        torch.testing.assert_close(loss.double(), expected, **tol)
        torch.testing.assert_close(grad.double(), expected_grad, **tol)
