"""The long-tail options of the softmax family (issue 13): prior / tau (logit adjustment, Balanced Softmax), target
margin and logit scale (LDAM), z-loss.  Values and gradients against the float64 reference on every backend, the
identities that tie them to plain cross-entropy, autograd (gradcheck, double backward, torch.compile) and modules."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import polyfocal
from polyfocal import kernels
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference
from test_kernels import BACKENDS, _check, _device, _loss_and_grad

HAS_NATIVE = _native.available()
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

PRIOR = [500.0, 120.0, 40.0, 9.0, 3.0, 1.0]  # counts (normalised by the loss)
MARGIN = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
ALPHA = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
WEIGHT = [1.0, 2.0, 0.5, 1.0, 0.0, 3.0]
# every long-tail option at once, with focusing, Poly-1, label smoothing, class weights and an ignored class (also
# test_softcap_kernels' "longtail_all")
ALL_OPTIONS = dict(
    gamma=1.5,
    epsilon=1.0,
    prior=PRIOR,
    tau=1.3,
    margin=MARGIN,
    logit_scale=1.5,
    z_loss=0.02,
    label_smoothing=0.3,
    alpha=ALPHA,
    weight=WEIGHT,
    ignore_index=2,
)

LT_PARAMS = [
    dict(epsilon=(), prior=PRIOR),
    dict(gamma=2.0, epsilon=1.0, prior=PRIOR, tau=-0.7),
    dict(epsilon=(), margin=MARGIN, logit_scale=3.0),
    dict(gamma=0.5, epsilon=(1.0, -0.5), margin=MARGIN, logit_scale=2.0, label_smoothing=0.2, ignore_index=2),
    dict(epsilon=(), z_loss=0.1),
    dict(gamma=2.0, epsilon=(), z_loss=0.05, label_smoothing=0.1, alpha=ALPHA, weight=WEIGHT, normalizer=3.0),
    ALL_OPTIONS,
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(9, 6), (3, 6, 5), (2, 6, 2, 3), (6,)])
@pytest.mark.parametrize("params", LT_PARAMS, ids=range(len(LT_PARAMS)))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_long_tail_options_match_reference(backend, shape, params, reduction):
    gen = torch.Generator().manual_seed(len(shape) * 13 + len(params))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
    y = torch.randint(0, 6, batch, generator=gen)
    if y.numel() > 2:
        y.view(-1)[::4] = params.get("ignore_index", -100)
        y.view(-1)[1] = 5  # the rarest class, the largest margin
    _check(backend, x, y, reduction=reduction, **params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_tail_options_many_classes(backend):
    """C = 5000: Triton's chunked online softmax (both passes apply the adjustment), a per-row normalizer."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5000, generator=gen, dtype=torch.float64) * 2
    y = torch.tensor([0, 4999, 2500])
    prior = torch.rand(5000, generator=gen, dtype=torch.float64) + 0.01
    margin = torch.rand(5000, generator=gen, dtype=torch.float64) * 0.5
    norm = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    kw = dict(prior=prior, margin=margin, logit_scale=1.7, z_loss=0.01, normalizer=norm, label_smoothing=0.1)
    for reduction in ("none", "sum"):
        _check(backend, x, y, gamma=2.0, epsilon=1.0, reduction=reduction, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_probability_targets_take_prior_scale_and_z_loss(backend, reduction):
    """Soft targets run on the composite formulas whatever the backend: prior, logit_scale and z-loss apply."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(7, 6, 3, generator=gen, dtype=torch.float64) * 2
    q = torch.softmax(torch.randn(7, 6, 3, generator=gen, dtype=torch.float64), 1)
    kw = dict(prior=PRIOR, tau=0.8, logit_scale=1.5, z_loss=0.05, gamma=1.0, epsilon=1.0, label_smoothing=0.1)
    with kernels.backend(backend):
        ours, ours_grad = _loss_and_grad(lambda v: polyfocal.poly_loss(v, q, reduction=reduction, **kw), x)
    ref, ref_grad = _loss_and_grad(lambda v: poly_loss_reference(v, q, reduction=reduction, **kw), x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-9, atol=1e-11)


@pytest.mark.skipif(not HAS_NATIVE, reason="no C compiler / native build failed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["rows", "spatial", "channels_last"])
def test_native_long_tail_low_precision_and_layouts(dtype, layout):
    """The native kernel itself (not a fallback) on bf16/fp16 rows, (N, C, H, W) tiles and channels_last rows."""
    gen = torch.Generator().manual_seed(12)
    shape = {"rows": (37, 6), "spatial": (3, 6, 7, 5), "channels_last": (2, 6, 4, 9)}[layout]
    x64 = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).double()
    y = torch.randint(0, 6, shape[:1] + shape[2:], generator=gen)
    y.view(-1)[::6] = 2
    x = x64.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    params = dict(LT_PARAMS[-1])
    h = polyfocal._args.hyper(gamma=1.5, ignore_index=2, tau=1.3, logit_scale=1.5, z_loss=0.02)
    call = polyfocal._args.prepare(x, y, h, prior=PRIOR, margin=MARGIN)
    assert kernels.select(call.x, call.target, call.args) == "native"
    for reduction in ("none", "mean", "sum"):
        loss, grad = _loss_and_grad(lambda v, r=reduction: polyfocal.poly_loss(v, y, reduction=r, **params), x)
        ref, ref_grad = _loss_and_grad(lambda v, r=reduction: poly_loss_reference(v, y, reduction=r, **params), x64)
        assert loss.dtype == torch.float32 and grad.dtype == dtype and grad.stride() == x.stride()
        torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)
        rtol = {torch.float32: 2e-5, torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}[dtype]
        torch.testing.assert_close(grad.double(), ref_grad.to(dtype).double(), rtol=rtol, atol=1e-5)


# ------------------------------------------------------------------ identities


@pytest.mark.parametrize("backend", BACKENDS)
def test_absent_options_are_bit_identical(backend):
    """prior=None / margin=None / logit_scale=1 / z_loss=0 given explicitly, and tau=0 with a prior, are the plain
    call bit for bit (loss and gradient)."""
    gen = torch.Generator().manual_seed(1)
    dev = _device(backend)
    x = (torch.randn(11, 6, generator=gen) * 3).to(dev)
    y = torch.randint(0, 6, (11,), generator=gen).to(dev)
    base = dict(gamma=1.5, epsilon=1.0, label_smoothing=0.1, alpha=ALPHA, reduction="sum")
    with kernels.backend(backend):
        plain = _loss_and_grad(lambda v: polyfocal.poly_loss(v, y, **base), x)
        for extra in (
            dict(prior=None, margin=None, logit_scale=1.0, z_loss=0.0, tau=3.0),
            dict(prior=PRIOR, tau=0.0),
        ):
            other = _loss_and_grad(lambda v, e=extra: polyfocal.poly_loss(v, y, **base, **e), x)
            assert torch.equal(plain[0], other[0]) and torch.equal(plain[1], other[1]), extra


@pytest.mark.parametrize("backend", BACKENDS)
def test_neutral_values_match_the_plain_loss(backend):
    """A uniform prior (any tau), zero margins with logit_scale 1, and counts vs their probabilities: the same loss
    and gradient up to rounding (these take the adjusted path, so not bit for bit)."""
    gen = torch.Generator().manual_seed(2)
    dev = _device(backend)
    x = (torch.randn(13, 6, generator=gen, dtype=torch.float64) * 3).to(dev)
    y = torch.randint(0, 6, (13,), generator=gen).to(dev)
    base = dict(gamma=2.0, epsilon=1.0, label_smoothing=0.2, weight=WEIGHT, reduction="mean")
    with kernels.backend(backend):
        fn = polyfocal.poly_loss
        plain = _loss_and_grad(lambda v: fn(v, y, **base), x)
        for extra in (dict(prior=[7.0] * 6, tau=2.5), dict(margin=[0.0] * 6, logit_scale=1.0)):
            other = _loss_and_grad(lambda v, e=extra: fn(v, y, **base, **e), x)
            torch.testing.assert_close(other, plain, rtol=1e-12, atol=1e-13)
        counts = torch.tensor(PRIOR, dtype=torch.float64)
        a = _loss_and_grad(lambda v: fn(v, y, **base, prior=counts, z_loss=0.1), x)
        b = _loss_and_grad(lambda v: fn(v, y, **base, prior=counts / counts.sum(), z_loss=0.1), x)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_balanced_softmax_logit_adjusted_and_ldam_equal_cross_entropy_of_adjusted_logits(backend):
    gen = torch.Generator().manual_seed(3)
    dev = _device(backend)
    x = torch.randn(10, 6, generator=gen).to(dev)
    y = torch.randint(0, 6, (10,), generator=gen).to(dev)
    counts = torch.tensor(PRIOR, device=dev)
    log_prior = torch.log(counts)
    m = polyfocal.ldam_margins(counts, max_margin=0.5)
    with kernels.backend(backend):
        bs = polyfocal.balanced_softmax_loss(x, y, prior=counts)
        la = polyfocal.logit_adjusted_loss(x, y, prior=counts, tau=0.5, reduction="none")
        ldam = polyfocal.ldam_loss(x, y, margin=m, logit_scale=10.0)
        ce_z = polyfocal.cross_entropy(x, y, z_loss=0.3, reduction="sum")
    torch.testing.assert_close(bs, F.cross_entropy(x + log_prior, y))
    torch.testing.assert_close(la, F.cross_entropy(x + 0.5 * log_prior, y, reduction="none"))
    torch.testing.assert_close(ldam, F.cross_entropy(10.0 * (x - m[y, None] * F.one_hot(y, 6)), y))
    lse = torch.logsumexp(x, 1)
    torch.testing.assert_close(ce_z, F.cross_entropy(x, y, reduction="sum") + 0.3 * (lse**2).sum())


def test_z_loss_semantics_ignore_weight_normalizer_mean():
    """The z-term is 0 on ignored rows, not class-weighted, divided by the normalizer and averaged by the same
    ``"mean"`` denominator (sum of target weights) as the row loss."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, -100, 3, 4, 5, -100, 2])
    w = torch.tensor(WEIGHT, dtype=torch.float64)
    norm = torch.rand(8, generator=gen, dtype=torch.float64) + 0.5
    got = polyfocal.cross_entropy(x, y, w, z_loss=0.2, reduction="none")
    valid = y != -100
    ce = F.cross_entropy(x, y, w, reduction="none")
    expect = torch.where(valid, ce + 0.2 * torch.logsumexp(x, 1) ** 2, 0.0)
    torch.testing.assert_close(got, expect)
    mean = polyfocal.poly_loss(x, y, epsilon=(), weight=w, normalizer=norm, z_loss=0.2)
    torch.testing.assert_close(mean, (expect / norm).sum() / w[y[valid]].sum())


def test_margin_applies_to_the_target_index_under_label_smoothing():
    """With label smoothing the margin is still subtracted from the target class's logit only, and every smoothed
    CE term uses those logits: CE of the margin-adjusted logits with F.cross_entropy's label smoothing."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (9,), generator=gen)
    m = torch.tensor(MARGIN, dtype=torch.float64)
    z = 2.0 * (x + 0.7 * torch.log(torch.tensor(PRIOR, dtype=torch.float64)) - m[y, None] * F.one_hot(y, 6))
    for backend in ("composite", "torch", "native"):
        with kernels.backend(backend):
            got = polyfocal.cross_entropy(
                x, y, margin=m, prior=PRIOR, tau=0.7, logit_scale=2.0, label_smoothing=0.3, reduction="none"
            )
        torch.testing.assert_close(got, F.cross_entropy(z, y, label_smoothing=0.3, reduction="none"))


def test_adjust_logits_and_ldam_margins():
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    prior = torch.tensor([8.0, 3.0, 1.0], dtype=torch.float64)
    out = polyfocal.adjust_logits(z, prior, tau=1.5)
    torch.testing.assert_close(out, z - 1.5 * torch.log(prior / prior.sum()).view(1, 3, 1))
    torch.testing.assert_close(polyfocal.adjust_logits(z[0, :, 0], [8, 3, 1]), z[0, :, 0] - torch.log(prior / 12))
    m = polyfocal.ldam_margins([10000, 625, 16, 1], max_margin=0.8)
    torch.testing.assert_close(m, torch.tensor([0.08, 0.16, 0.4, 0.8]))
    assert m.dtype == torch.float32
    with pytest.raises(ValueError, match="expected prior of length C = 3"):
        polyfocal.adjust_logits(z, [1.0, 2.0])
    with pytest.raises(ValueError, match="expected positive finite prior"):
        polyfocal.adjust_logits(z, [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="expected max_margin"):
        polyfocal.ldam_margins([3, 2], max_margin=-0.1)
    with pytest.raises(ValueError, match="expected positive finite counts"):
        polyfocal.ldam_margins([3, 0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_long_tail_vectors_refuse_bad_entries(bad, dtype):
    """Every non-finite or out-of-range entry is refused (one aminmax decides, NaN included), in every dtype."""
    if not dtype.is_floating_point and not math.isfinite(bad):
        pytest.skip("an integer tensor holds no NaN or inf")
    values = torch.tensor([1.0, bad, 2.0]).to(dtype)
    x, y = torch.randn(2, 3), torch.tensor([0, 2])
    with pytest.raises(ValueError, match="expected every prior entry finite and > 0"):
        polyfocal.logit_adjusted_loss(x, y, prior=values)
    with pytest.raises(ValueError, match="expected positive finite counts"):
        polyfocal.ldam_margins(values)
    if bad == 0.0:  # a zero margin is allowed
        torch.testing.assert_close(polyfocal.ldam_loss(x, y, margin=values, logit_scale=1.0),
                                   polyfocal.ldam_loss(x, y, margin=values.double(), logit_scale=1.0))  # fmt: skip
    else:
        with pytest.raises(ValueError, match="expected every margin entry finite and >= 0"):
            polyfocal.ldam_loss(x, y, margin=values)


# ------------------------------------------------------------------ autograd


@pytest.mark.parametrize("index", [True, False], ids=["index", "prob"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_gradcheck_and_gradgradcheck_with_long_tail_options(index, label_smoothing):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    if index:
        y = torch.randint(0, 3, (4, 2), generator=gen)
        y[0, 0] = -100
        extra = dict(margin=[0.2, 0.1, 0.3])
    else:
        y = torch.softmax(torch.randn(4, 3, 2, generator=gen, dtype=torch.float64), 1)
        extra = {}
    fn = lambda inp: polyfocal.poly_loss(  # noqa: E731
        inp, y, gamma=1.5, epsilon=1.0, alpha=[0.3, 0.5, 0.2], prior=[5.0, 2.0, 1.0], tau=1.2, logit_scale=1.7,
        z_loss=0.1, label_smoothing=label_smoothing, reduction="none", **extra,
    )  # fmt: skip
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_double_backward_through_the_fused_op_with_options():
    x = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (6,))
    kw = dict(gamma=2.0, prior=PRIOR, margin=MARGIN, logit_scale=2.0, z_loss=0.1)
    (g,) = torch.autograd.grad(polyfocal.poly_loss(x, y, **kw), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(poly_loss_reference(xr, y, **kw), xr, create_graph=True)
    (ggr,) = torch.autograd.grad(gr.square().sum(), xr)
    torch.testing.assert_close(gg, ggr)


def test_prior_gradient_flows_on_the_composite_path():
    """A prior that requires grad sends the call to the composite formulas, which differentiate it."""
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(0, 6, (5,))
    prior = torch.tensor(PRIOR, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(polyfocal.logit_adjusted_loss(x, y, prior=prior, tau=0.5), prior)
    pr = prior.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(F.cross_entropy(x + 0.5 * torch.log(pr / pr.sum()), y), pr)
    assert g.abs().max() > 0
    torch.testing.assert_close(g, gr)


def test_torch_compile_fullgraph_with_long_tail_options():
    torch._dynamo.reset()
    lin = torch.nn.Linear(6, 6)
    x = torch.randn(16, 6)
    y = torch.randint(0, 6, (16,))
    prior, margin = torch.tensor(PRIOR), torch.tensor(MARGIN)

    def step(inp):
        out = lin(inp)
        return polyfocal.poly_loss(
            out, y, gamma=2.0, epsilon=1.0, prior=prior, tau=1.2, margin=margin, logit_scale=2.0, z_loss=0.05
        ) + polyfocal.balanced_softmax_loss(out, y, prior=prior, reduction="sum")

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss_c = compiled(x)
    grads_c = torch.autograd.grad(loss_c, list(lin.parameters()))
    loss_e = step(x)
    grads_e = torch.autograd.grad(loss_e, list(lin.parameters()))
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge)


def test_opcheck_custom_op_with_long_tail_arguments():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=gen, requires_grad=True)
    y = torch.randint(0, 4, (5,), generator=gen)
    b, m = torch.randn(4, generator=gen), torch.rand(4, generator=gen)
    for reduction in ("none", "mean"):
        h = polyfocal._args.hyper(epsilon=1.0, gamma=2.0, ignore_index=-100, label_smoothing=0.1, reduction=reduction,
                                  logit_scale=2.0, z_loss=0.1)  # fmt: skip
        flat = polyfocal._args.flatten(dataclasses.replace(h, is_index=True, bias=b, margin=m))
        torch.library.opcheck(kernels.poly_op, (x, y, True, *flat), test_utils=("test_schema", "test_faketensor"))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(1, 7),
    spatial=st.sampled_from([(), (3,), (2, 2)]),
    gamma=st.sampled_from([0.0, 0.5, 2.0]),
    epsilon=st.sampled_from([(), (1.0,), (1.0, -0.5)]),
    tau=st.floats(-2.0, 2.0),
    use_prior=st.booleans(),
    use_margin=st.booleans(),
    logit_scale=st.sampled_from([1.0, 0.5, 3.0]),
    z_loss=st.sampled_from([0.0, 0.1]),
    label_smoothing=st.sampled_from([0.0, 0.2]),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    backend=st.sampled_from(["torch", "composite"] + (["native"] if HAS_NATIVE else [])),
    seed=st.integers(0, 10_000),
)
def test_property_long_tail_options(
    n, c, spatial, gamma, epsilon, tau, use_prior, use_margin, logit_scale, z_loss, label_smoothing, reduction,
    backend, seed,
):  # fmt: skip
    if c == 1 and 0 < gamma < 1:  # a constant loss with an undefined (0 * inf) reference gradient
        gamma = 2.0
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, *spatial), generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, c, (n, *spatial), generator=gen)
    kw = dict(gamma=gamma, epsilon=epsilon, tau=tau, logit_scale=logit_scale, z_loss=z_loss)
    kw.update(label_smoothing=label_smoothing, reduction=reduction)
    if use_prior:
        kw["prior"] = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.05).tolist()
    if use_margin:
        kw["margin"] = (torch.rand(c, generator=gen, dtype=torch.float64) * 0.5).tolist()
    _check(backend, x, y, **kw)


# ------------------------------------------------------------------ modules


def test_modules_match_the_functions_and_keep_vectors_as_buffers():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 6, generator=gen)
    y = torch.randint(0, 6, (7,), generator=gen)
    m = polyfocal.ldam_margins(PRIOR)
    pairs = [
        (
            polyfocal.LogitAdjustedLoss(prior=PRIOR, tau=1.5, gamma=1.0),
            dict(epsilon=(), prior=PRIOR, tau=1.5, gamma=1.0),
        ),
        (polyfocal.BalancedSoftmaxLoss(prior=PRIOR, z_loss=0.1), dict(epsilon=(), prior=PRIOR, z_loss=0.1)),
        (polyfocal.LDAMLoss(margin=m), dict(epsilon=(), margin=m)),  # logit_scale 1 by default, as everywhere
        (polyfocal.LDAMLoss(margin=m, logit_scale=30.0), dict(epsilon=(), margin=m, logit_scale=30.0)),
        (polyfocal.PolyLoss(prior=PRIOR, margin=m, logit_scale=2.0), dict(prior=PRIOR, margin=m, logit_scale=2.0)),
        (polyfocal.SoftmaxFocalLoss(prior=PRIOR, z_loss=0.1), dict(gamma=2.0, epsilon=(), prior=PRIOR, z_loss=0.1)),
        (polyfocal.CrossEntropyLoss(prior=PRIOR, tau=0.5), dict(epsilon=(), prior=PRIOR, tau=0.5)),
        (polyfocal.Poly1CrossEntropyLoss(margin=m, logit_scale=4.0), dict(margin=m, logit_scale=4.0)),
    ]
    for module, kw in pairs:
        kw = {"epsilon": 1.0, **kw}  # PolyLoss / Poly1CrossEntropyLoss: epsilon 1 by default
        torch.testing.assert_close(module(x, y), polyfocal.poly_loss(x, y, **kw), rtol=1e-6, atol=1e-7)
    crit = polyfocal.LogitAdjustedLoss(prior=PRIOR)
    assert "prior" in dict(crit.named_buffers())
    assert "prior" in crit.state_dict()
    crit.tau = 2.0  # reassigned: validated and used
    torch.testing.assert_close(crit(x, y), polyfocal.logit_adjusted_loss(x, y, prior=PRIOR, tau=2.0))
    assert "prior" not in repr(polyfocal.PolyLoss())  # absent options stay out of the repr


MODULE_ERRORS = [
    (lambda: polyfocal.LogitAdjustedLoss(prior=[1.0, 0.0, 2.0]), ValueError, "prior entry finite and > 0"),
    (lambda: polyfocal.LogitAdjustedLoss(prior=[1.0, 2.0], tau=math.inf), ValueError, "tau"),
    (lambda: polyfocal.LDAMLoss(margin=[0.1, -0.2]), ValueError, "margin entry finite and >= 0"),
    (lambda: polyfocal.LDAMLoss(margin=[0.1, 0.2], logit_scale=0.0), ValueError, "logit_scale"),
    (lambda: polyfocal.PolyLoss(z_loss=-1.0), ValueError, "z_loss"),
    (lambda: polyfocal.PolyLoss(activation="sigmoid", prior=[1.0, 2.0]), ValueError, "softmax-family"),
]


@pytest.mark.parametrize(("make", "exc", "fragment"), MODULE_ERRORS)
def test_long_tail_modules_validate_at_construction(make, exc, fragment):
    with pytest.raises(exc, match="expected") as info:
        make()
    assert fragment in str(info.value)


def test_module_reassigned_prior_is_checked():
    crit = polyfocal.BalancedSoftmaxLoss(prior=PRIOR)
    with pytest.raises(ValueError, match="expected every prior entry"):
        crit.prior = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    crit.prior = [1.0] * 6
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 5])
    torch.testing.assert_close(crit(x, y), F.cross_entropy(x, y))


# ------------------------------------------------------------------ polyfocal compare's loss specs


def test_compare_loss_specs_la_balanced_softmax_ldam():
    from polyfocal.experiments.losses import DEFAULT_LOSSES, build_loss, parse_loss_spec

    assert "la:tau=1" in DEFAULT_LOSSES and parse_loss_spec("la").label == "la:tau=1"
    assert parse_loss_spec("ldam:max_margin=0.3,s=2,drw=3").params == {"max_margin": 0.3, "s": 2.0, "drw": 3, "ls": 0.0}
    counts = [50, 20, 10, 5, 2]
    torch.manual_seed(0)
    x, y, n = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,)), torch.tensor(12.0)
    prior = torch.tensor(counts, dtype=torch.float64)
    torch.testing.assert_close(
        build_loss(parse_loss_spec("la:tau=2"), class_counts=counts)(x, y, n),
        F.cross_entropy(x + 2.0 * torch.log(prior / prior.sum()), y),
    )
    torch.testing.assert_close(
        build_loss(parse_loss_spec("balanced-softmax"), class_counts=counts)(x, y, n),
        F.cross_entropy(x + prior.log(), y),
    )
    fn = build_loss(parse_loss_spec("ldam:s=3,drw=2"), class_counts=counts)
    m = polyfocal.ldam_margins(counts).double()
    z = 3.0 * (x - m[y, None] * F.one_hot(y, 5))
    torch.testing.assert_close(fn(x, y, n), F.cross_entropy(z, y))
    fn.set_epoch(2)  # deferred re-weighting from epoch 2 on: class-balanced weights (sum over samples / n)
    w = polyfocal.class_balanced_alpha(counts, beta=0.9999).double()
    torch.testing.assert_close(fn(x, y, n), F.cross_entropy(z, y, w, reduction="sum") / 12)
    for bad in ("ldam:drw=1.5", "ldam:s=0", "la:tau=inf", "ldam:max_margin=-1"):
        with pytest.raises(ValueError, match="expected"):
            parse_loss_spec(bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_target_margin_stays_finite_and_exact(backend):
    """s * m_y = 60 (beyond the native kernel's margin-free stabiliser, which takes its exact branch there)."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64) * 0.2
    x[torch.arange(9), torch.arange(9) % 6] += 1.0  # the target is the largest logit before its margin
    y = torch.arange(9) % 6
    _check(backend, x, y, epsilon=1.0, gamma=2.0, margin=[0.6] * 6, logit_scale=100.0, label_smoothing=0.1)


def test_compare_cli_defaults_are_the_loss_modules_defaults():
    """The torch-free CLI keeps its own copy of the default list (for --help): it must not drift."""
    from polyfocal.experiments import cli as experiments_cli
    from polyfocal.experiments.losses import DEFAULT_LOSSES

    assert experiments_cli._DEFAULT_LOSSES == DEFAULT_LOSSES


def test_logit_scale_defaults_to_1_everywhere():
    """Issue 18: one rule for the logit_scale default (ldam_loss had 30 while every other loss and the CLI's ldam spec
    had 1): 1 on every function and module, LDAM's included."""
    import inspect

    from polyfocal.experiments.losses import parse_loss_spec

    owners = [getattr(polyfocal, n) for n in polyfocal.__all__]
    defaults = {}
    for obj in owners:  # a module class's signature is its constructor's (the function's options)
        if callable(obj) and "logit_scale" in inspect.signature(obj).parameters:
            defaults[obj.__name__] = inspect.signature(obj).parameters["logit_scale"].default
    assert {"ldam_loss", "LDAMLoss", "poly_loss", "cross_entropy"} <= set(defaults)
    assert set(defaults.values()) == {1.0}, defaults
    assert parse_loss_spec("ldam").params["s"] == 1.0
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    m = polyfocal.ldam_margins([100, 10, 1])
    z = x - m[y, None] * torch.nn.functional.one_hot(y, 3)
    torch.testing.assert_close(polyfocal.ldam_loss(x, y, margin=m), torch.nn.functional.cross_entropy(z, y))
    torch.testing.assert_close(polyfocal.LDAMLoss(margin=m)(x, y), polyfocal.ldam_loss(x, y, margin=m))
