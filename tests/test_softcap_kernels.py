"""Logit soft-capping (Gemma 2/3) in the softmax kernels: each raw logit z is read as ``c * tanh(z / c)`` before the
prior bias / margin / logit scale, and the gradient carries the factor ``1 - tanh(z / c)^2``.

The kernels are called directly (``_native.softmax`` and the Triton launcher with ``Args.softcap`` set, under
``TRITON_INTERPRET=1``) and compared with a float64 autograd reference: ``c * tanh(z / c)`` applied in float64, then
:func:`polyfocal.reference.poly_loss_reference`.  ``test_chain_rule_factor_is_applied`` fails if the gradient drops
the factor (the gradient of the capped logits differs from it by far more than the tolerance)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from polyfocal import _args
from polyfocal.kernels import _native
from polyfocal.reference import poly_loss_reference
from test_longtail import ALL_OPTIONS, MARGIN

HAS_NATIVE = _native.available()
try:
    from polyfocal.kernels import _triton_impl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton missing
    HAS_TRITON = False

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

C = len(MARGIN)  # test_longtail's class vectors
CAPS = [None, 0.0, 0.5, 3.0, 30.0]

# (name, reference keywords); the kernels get the same options spelled out by _kernel_kwargs
OPTIONS = [
    ("plain", dict(epsilon=1.0, gamma=2.0)),
    ("ce_smooth_ignore", dict(epsilon=(), label_smoothing=0.2, ignore_index=2)),
    ("ldam", dict(epsilon=(), margin=MARGIN, logit_scale=3.0)),
    ("longtail_all", ALL_OPTIONS),
]


def _tensor(v):
    return None if v is None else torch.tensor(v, dtype=torch.float64)


def _kernel_kwargs(opts: dict) -> dict:
    """The reference keywords as the kernels' arguments (class_weight = alpha * weight, bias = tau log prior)."""
    eps = opts.get("epsilon", 1.0)
    eps = (float(eps),) if isinstance(eps, (int, float)) else tuple(eps)
    alpha, weight = _tensor(opts.get("alpha")), _tensor(opts.get("weight"))
    class_weight = (
        None
        if alpha is None and weight is None
        else (1 if alpha is None else alpha) * (1 if weight is None else weight)
    )
    prior = _tensor(opts.get("prior"))
    bias = None if prior is None else opts.get("tau", 1.0) * torch.log(prior / prior.sum())
    return dict(
        class_weight=class_weight,
        weight=weight,
        epsilon=eps,
        gamma=float(opts.get("gamma", 0.0)),
        ignore_index=opts.get("ignore_index", -100),
        label_smoothing=float(opts.get("label_smoothing", 0.0)),
        bias=bias,
        margin=_tensor(opts.get("margin")),
        logit_scale=float(opts.get("logit_scale", 1.0)),
        z_loss=float(opts.get("z_loss", 0.0)),
    )


def _reference(x, y, cap, opts, reduction, chain_rule=True):
    """Loss and gradient in float64: the soft-cap applied to the (rounded) input, then the textbook formulas."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    if cap:
        z = cap * torch.tanh(x64 / cap)
        if not chain_rule:  # the gradient with respect to the capped logits (the bug the tests must catch)
            z = x64 - (x64 - z).detach()
    else:
        z = x64
    loss = poly_loss_reference(z, y, reduction=reduction, **opts)
    (grad,) = torch.autograd.grad(loss.sum(), x64)
    return loss.detach(), grad


def _kernel_args(opts: dict, reduction: str, cap: float | None = None) -> _args.Args:
    """The argument object the kernels take (``softcap`` as the field: None / 0 off), tensors in float32."""
    k = _kernel_kwargs(opts)
    f32 = lambda v: None if v is None else v.to(torch.float32)  # noqa: E731
    h = _args.hyper(epsilon=k["epsilon"], gamma=k["gamma"], ignore_index=k["ignore_index"],
                    label_smoothing=k["label_smoothing"], reduction=reduction, logit_scale=k["logit_scale"],
                    z_loss=k["z_loss"])  # fmt: skip
    return dataclasses.replace(h, is_index=True, class_weight=f32(k["class_weight"]), weight=f32(k["weight"]),
                               bias=f32(k["bias"]), margin=f32(k["margin"]),
                               softcap=float(cap or 0.0))  # fmt: skip  # the kernels' own "off": <= 0


def _native_call(x, y, cap, opts, reduction, grad_into=None):
    return _native.softmax(x, y, _kernel_args(opts, reduction, cap), True, grad_into=grad_into)


def _triton_call(x, y, cap, opts, reduction):
    return _triton_impl.softmax(x, y, _kernel_args(opts, reduction, cap), True)


def _inputs(shape, dtype, seed, extreme=True, ignore_index=-100):
    """Logits and class indices (every 4th ignored); ``extreme`` only with a cap: uncapped, a 1e4 logit overflows
    the float64 reference (log of an underflowed probability)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    if extreme:  # saturated logits (|z| up to 1e4) and logits near 0 (tanh's cancellation-prone range)
        flat = x.view(-1)
        flat[0], flat[3], flat[7], flat[10] = 1e4, -1e4, 3e-7, -2e-5
        flat[11], flat[13] = 50.0, -0.01
    batch = shape[:1] + shape[2:]
    y = torch.randint(0, C, batch, generator=gen)
    y.view(-1)[::4] = ignore_index
    y.view(-1)[1] = 5
    return x.to(dtype), y


def _ignore(opts):
    return opts.get("ignore_index", -100)


def _tolerances(dtype):
    # float32: the native / long-tail tests' float64-reference tolerances; bfloat16: the gradient is rounded to it
    return (2e-5, 2e-6) if dtype == torch.float32 else (1e-2, 1e-3)


def _compare(got_loss, got_grad, x, y, cap, opts, reduction):
    opts = dict(opts)
    if opts.get("ignore_index") is None:
        opts["ignore_index"] = -100
    ref_loss, ref_grad = _reference(x, y, cap, opts, reduction)
    rtol, atol = _tolerances(x.dtype)
    assert got_grad.dtype == x.dtype and got_grad.shape == x.shape
    torch.testing.assert_close(got_loss.to(torch.float64), ref_loss, rtol=max(rtol, 2e-5), atol=max(atol, 2e-6))
    torch.testing.assert_close(got_grad.to(torch.float64), ref_grad, rtol=rtol, atol=atol)


@pytest.mark.skipif(not HAS_NATIVE, reason="native kernels unavailable")
@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("name,opts", OPTIONS, ids=[o[0] for o in OPTIONS])
@pytest.mark.parametrize("shape", [(9, C), (2, C, 3, 7)], ids=["rows", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_native_softcap_matches_reference(cap, name, opts, shape, dtype):
    x, y = _inputs(shape, dtype, seed=len(shape) * 31 + len(name), extreme=bool(cap), ignore_index=_ignore(opts))
    for reduction in ("none", "sum"):
        loss, grad = _native_call(x, y, cap, opts, reduction)
        _compare(loss, grad, x, y, cap, opts, reduction)


@pytest.mark.skipif(not HAS_NATIVE, reason="native kernels unavailable")
@pytest.mark.parametrize("cap", [0.5, 30.0])
@pytest.mark.parametrize("shape", [(9, C), (2, C, 3, 7)], ids=["rows", "nchw"])
def test_native_softcap_inplace_gradient(cap, shape):
    """grad_into=x: the gradient written over the logits (rows and tiles read into scratch first)."""
    opts = OPTIONS[3][1]
    x, y = _inputs(shape, torch.float32, seed=5, ignore_index=opts["ignore_index"])
    work = x.clone()
    loss, grad = _native_call(work, y, cap, opts, "mean", grad_into=work)
    assert grad.data_ptr() == work.data_ptr()
    _compare(loss, grad, x, y, cap, opts, "mean")


@pytest.mark.skipif(not HAS_NATIVE, reason="native kernels unavailable")
def test_native_softcap_many_classes_and_off_is_identical():
    """C = 3000 (several SUM_BLK blocks); softcap 0 / None / negative reproduce the uncapped call bit for bit."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3000, generator=gen) * 20
    y = torch.tensor([0, 2999, 1500, 7])
    opts = dict(epsilon=1.0, gamma=2.0, margin=torch.rand(3000, generator=gen).tolist(), logit_scale=2.0)
    base_loss, base_grad = _native_call(x, y, None, opts, "none")
    for off in (0.0, -1.0):
        loss, grad = _native_call(x, y, off, opts, "none")
        assert torch.equal(loss, base_loss) and torch.equal(grad, base_grad)
    loss, grad = _native_call(x, y, 5.0, opts, "none")
    _compare(loss, grad, x, y, 5.0, opts, "none")


@pytest.mark.skipif(not HAS_NATIVE, reason="native kernels unavailable")
@pytest.mark.parametrize("shape", [(9, C), (2, C, 3, 7)], ids=["rows", "nchw"])
def test_chain_rule_factor_is_applied(shape):
    """The gradient must carry 1 - tanh(z / c)^2: compared with the capped-logit gradient it is far off."""
    x, y = _inputs(shape, torch.float32, seed=11)
    opts = OPTIONS[0][1]
    _, grad = _native_call(x, y, 3.0, opts, "sum")
    _, wrong = _reference(x, y, 3.0, {**opts, "ignore_index": -100}, "sum", chain_rule=False)
    _, right = _reference(x, y, 3.0, {**opts, "ignore_index": -100}, "sum")
    assert (wrong - right).abs().max() > 1e-2  # the inputs make the factor matter
    torch.testing.assert_close(grad.double(), right, rtol=2e-5, atol=2e-6)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(grad.double(), wrong, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(not HAS_NATIVE, reason="native kernels unavailable")
def test_softcap_tanh_accuracy():
    """The capped logits themselves (a one-row loss with C = 2 exposes z_0 - z_1): relative accuracy near 0 and
    saturation for |z| up to 1e4, through the loss of each element against an exactly known partner."""
    z = torch.tensor([0.0, 1e-30, 3e-8, 1e-6, 1e-3, 0.3, 0.6, 0.7, 2.0, 10.0, 40.0, 90.0, 1e3, 1e4])
    z = torch.cat([z, -z])
    for cap in (0.5, 3.0, 30.0):
        x = torch.stack([z, torch.zeros_like(z)], 1)  # loss = softplus(-capped(z)) for target 0
        y = torch.zeros(len(z), dtype=torch.int64)
        loss, grad = _native_call(x, y, cap, dict(epsilon=()), "none")
        capped = cap * torch.tanh(z.double() / cap)
        ref = torch.nn.functional.softplus(-capped)
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-7)
        dref = -torch.sigmoid(-capped) / torch.cosh(z.double() / cap) ** 2
        # atol: the target's p - 1 is formed in float32 (as without the cap): ~6e-8 absolute where p -> 1
        torch.testing.assert_close(grad[:, 0].double(), dref, rtol=2e-5, atol=1e-7)
    # relative accuracy of tiny capped logits: a logit scale of 1e5 makes s * c tanh(z / c) ~ 0.1-1 (a
    # 1 - 2 / (exp(2u) + 1) form would be off by percents here)
    z = torch.tensor([1e-6, 3e-6, 1e-5, -1e-6, -7e-6])
    for cap in (0.5, 30.0):
        x = torch.stack([z, torch.zeros_like(z)], 1)
        y = torch.zeros(len(z), dtype=torch.int64)
        loss, _ = _native_call(x, y, cap, dict(epsilon=(), logit_scale=1e5), "none")
        ref = torch.nn.functional.softplus(-1e5 * cap * torch.tanh(z.double() / cap))
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-7)


@pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")
@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("name,opts", [OPTIONS[0], OPTIONS[3]], ids=[OPTIONS[0][0], OPTIONS[3][0]])
@pytest.mark.parametrize("shape", [(9, C), (2, C, 3, 7)], ids=["rows", "nchw"])
def test_triton_softcap_matches_reference(cap, name, opts, shape):
    x, y = _inputs(
        shape, torch.float32, seed=len(shape) * 17 + len(name), extreme=bool(cap), ignore_index=_ignore(opts)
    )
    loss, grad = _triton_call(x, y, cap, opts, "sum")
    _compare(loss, grad, x, y, cap, opts, "sum")


@pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")
def test_triton_softcap_chunked_rows():
    """C = 5000 with the interpreter's 4096-class chunks: both online-softmax passes apply the cap and its factor."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 5000, generator=gen) * 20
    y = torch.tensor([0, 4999, 4100])
    opts = dict(epsilon=1.0, gamma=2.0, margin=(torch.rand(5000, generator=gen) * 0.5).tolist(), logit_scale=1.7)
    loss, grad = _triton_call(x, y, 4.0, opts, "none")
    _compare(loss, grad, x, y, 4.0, opts, "none")
    assert math.isfinite(float(loss.sum()))
