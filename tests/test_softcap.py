"""``softcap``: logit soft-capping ``z -> c tanh(z / c)`` (Gemma 2 / 3) as a keyword of the softmax family, applied
before ``prior`` / ``margin`` / ``logit_scale``, on every backend, against the float64 reference; gradcheck, double
backward, ``torch.compile``, bf16, the modules and Keras.  (The kernels' own edge cases -- |z| up to 1e4, tiny z,
in-place, many classes -- are in ``tests/test_softcap_kernels.py``.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import polyfocal
from polyfocal import kernels
from polyfocal.reference import poly_loss_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")  # masked lanes

BACKENDS = ["composite", "torch", "native"] + (["triton"] if importlib.util.find_spec("triton") else [])
C = 5
OPTIONS = [
    dict(),
    dict(gamma=2.0, epsilon=(1.0, 0.5)),
    dict(gamma=0.5, label_smoothing=0.1, alpha=[0.5, 1.0, 2.0, 1.0, 0.7], weight=[1.0, 2.0, 1.0, 0.5, 1.0]),
    dict(prior=[50.0, 10.0, 5.0, 2.0, 1.0], tau=1.5, z_loss=0.05),
    dict(margin=[0.4, 0.3, 0.2, 0.1, 0.0], logit_scale=4.0, gamma=1.0),
]


def _data(shape, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 6).to(dtype)
    y = torch.randint(0, C, (shape[0], *shape[2:]), generator=gen)
    y.view(-1)[::5] = -100
    return x, y


def _loss_and_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("shape", [(7, C), (3, C, 2, 3)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softcap_matches_the_float64_reference_on_every_backend(backend, options, shape, reduction):
    x, y = _data(shape)
    dtype = torch.float32 if backend == "native" else torch.float64  # the C kernels read fp32 / bf16 / fp16
    kw = dict(softcap=2.5, reduction=reduction, **options)
    with kernels.backend(backend):
        loss, grad = _loss_and_grad(lambda v: polyfocal.poly_loss(v, y, **kw), x.to(dtype))
    ref, ref_grad = _loss_and_grad(lambda v: poly_loss_reference(v, y, **kw), x.to(dtype).double())
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


def test_softcap_changes_the_loss_and_its_gradient_carries_the_chain_rule():
    """Guards against a cap that is dropped, or applied without its derivative ``1 - tanh^2(z / c)``."""
    x, y = _data((6, C))
    for backend in BACKENDS:
        dtype = torch.float32 if backend == "native" else torch.float64
        with kernels.backend(backend):
            capped, g_capped = _loss_and_grad(lambda v: polyfocal.cross_entropy(v, y, softcap=1.5), x.to(dtype))
            plain, _ = _loss_and_grad(lambda v: polyfocal.cross_entropy(v, y), x.to(dtype))
        assert not torch.allclose(capped, plain), backend
        z = (1.5 * torch.tanh(x / 1.5)).detach()  # the capped logits, as constants: the gradient without the factor
        _, g_no_chain = _loss_and_grad(lambda v: polyfocal.cross_entropy(v, y), z)
        assert not torch.allclose(g_capped.double(), g_no_chain, rtol=1e-3, atol=1e-4), backend


def test_softcap_is_exactly_the_capped_logits():
    """The definition: the loss of ``c tanh(z / c)``, for every softmax-family function."""
    x, y = _data((6, C))
    z = 3.0 * torch.tanh(x / 3.0)
    prior = [5.0, 4.0, 3.0, 2.0, 1.0]
    margin = [0.3, 0.2, 0.1, 0.1, 0.0]
    cases = [
        (polyfocal.cross_entropy, dict()),
        (polyfocal.poly1_cross_entropy, dict(epsilon=2.0)),
        (polyfocal.softmax_focal_loss, dict(gamma=2.0)),
        (polyfocal.logit_adjusted_loss, dict(prior=prior, tau=0.5)),
        (polyfocal.balanced_softmax_loss, dict(prior=prior)),
        (polyfocal.ldam_loss, dict(margin=margin, logit_scale=2.0)),
    ]
    for fn, kw in cases:
        torch.testing.assert_close(fn(x, y, softcap=3.0, **kw), fn(z, y, **kw), rtol=1e-12, atol=1e-12)


def test_softcap_gradcheck_and_double_backward():
    x, y = _data((4, C), seed=3)
    x = (x / 3).requires_grad_()
    fn = lambda v: polyfocal.poly_loss(v, y, softcap=2.0, gamma=1.5, epsilon=1.0, reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_softcap_under_torch_compile(backend):
    x, y = _data((8, C), dtype=torch.float32)
    fn = lambda v: polyfocal.softmax_focal_loss(v, y, softcap=2.0, gamma=2.0, prior=[5.0, 4.0, 3.0, 2.0, 1.0])  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    with kernels.backend(backend):
        want, want_grad = _loss_and_grad(fn, x)
        got, got_grad = _loss_and_grad(compiled, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_softcap_bf16_input(backend):
    x, y = _data((16, C), dtype=torch.bfloat16)
    with kernels.backend(backend):
        loss, grad = _loss_and_grad(lambda v: polyfocal.cross_entropy(v, y, softcap=2.0, z_loss=0.01), x)
    ref, ref_grad = _loss_and_grad(
        lambda v: poly_loss_reference(v, y, epsilon=0.0, softcap=2.0, z_loss=0.01), x.double()
    )
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2**-7, atol=2**-9)


def test_softcap_module_twins():
    x, y = _data((6, C))
    for module, function in [
        (polyfocal.CrossEntropyLoss, polyfocal.cross_entropy),
        (polyfocal.SoftmaxFocalLoss, polyfocal.softmax_focal_loss),
        (polyfocal.PolyLoss, polyfocal.poly_loss),
    ]:
        crit = module(softcap=4.0)
        assert "softcap=4.0" in repr(crit)
        torch.testing.assert_close(crit(x, y), function(x, y, softcap=4.0))
        crit.softcap = 1.0  # re-validated and used
        torch.testing.assert_close(crit(x, y), function(x, y, softcap=1.0))
        with pytest.raises(ValueError, match="softcap"):
            crit.softcap = -1.0


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        (dict(softcap=0.0), ValueError),
        (dict(softcap=-2.0), ValueError),
        (dict(softcap=float("inf")), ValueError),
        (dict(softcap="3"), TypeError),
        (dict(softcap=2.0, activation="sigmoid"), ValueError),
    ],
)
def test_softcap_bad_values(kw, exc):
    x, y = _data((4, C))
    with pytest.raises(exc, match="expected"):
        polyfocal.poly_loss(x, y, **kw)


def test_softcap_in_keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("compared in-process on the torch backend")
    import polyfocal.keras as pk

    x, y = _data((6, C))
    y = y.clamp(min=0)
    one_hot = torch.nn.functional.one_hot(y, C).double()
    prior = [5.0, 4.0, 3.0, 2.0, 1.0]
    loss = pk.PolyCategoricalFocalCrossentropy(
        gamma=2.0, epsilon=1.0, from_logits=True, prior=prior, softcap=2.0, reduction=None
    )
    got = torch.as_tensor(loss(one_hot, x)).double()
    want = polyfocal.poly_loss(x, y, gamma=2.0, epsilon=1.0, prior=prior, softcap=2.0, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # Keras' floatx: float32
    assert pk.PolyCategoricalFocalCrossentropy.from_config(loss.get_config()).softcap == 2.0
    with pytest.raises(ValueError, match="from_logits"):
        pk.SparsePolyCategoricalCrossentropy(softcap=2.0)
    with pytest.raises(ValueError, match="softcap"):
        pk.PolyCategoricalCrossentropy(from_logits=True, softcap=-1.0)
