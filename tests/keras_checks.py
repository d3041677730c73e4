"""Backend-independent checks of ``polyfocal.keras``, against a float64 reference written plainly in NumPy.

Each check is a function of a :class:`Grad` adapter (how to take a gradient on the current Keras backend)
and raises ``AssertionError`` on failure.  ``tests/test_keras.py`` runs them in-process on the torch
backend; ``tests/keras_backend_run.py`` runs them in a subprocess per backend (JAX, TensorFlow) with torch
made unimportable.  This module imports no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

import polyfocal.keras as pk

# --- the float64 reference ----------------------------------------------------------------------------------


def ref_softmax_poly(
    z: np.ndarray,
    q: np.ndarray,
    *,
    epsilon: tuple[float, ...] = (),
    gamma: float = 0.0,
    alpha: list[float] | None = None,
    label_smoothing: float = 0.0,
    prior: list[float] | None = None,
    tau: float = 1.0,
    z_loss: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and its gradient with respect to the (unadjusted) logits ``z``; classes on the last axis.

    ``z~ = z + tau log(prior / sum prior)``, ``lse = logsumexp(z~)``, ``log p = z~ - lse``, ``q`` smoothed to
    ``q (1 - ls) + ls / C``, ``CE = -sum_c alpha_c q_c log p_c``, ``p_t = sum_c q_c p_c``, ``u = 1 - p_t``:
    ``loss = u^gamma CE + sum_j eps_j u^(j + gamma) + z_loss lse^2``.  The gradient is the chain rule by hand:
    ``dCE/dz = -w + (sum w) p`` with ``w = alpha q``, ``dp_t/dz = p (q - p_t)``, ``dlse/dz = p``.
    """
    z = np.asarray(z, np.float64)
    q = np.asarray(q, np.float64)
    num_classes = z.shape[-1]
    if label_smoothing:
        q = q * (1 - label_smoothing) + label_smoothing / num_classes
    if prior is not None:
        prior_ = np.asarray(prior, np.float64)
        z = z + tau * np.log(prior_ / prior_.sum())
    top = z.max(axis=-1, keepdims=True)
    lse = top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True))
    logp = z - lse
    p = np.exp(logp)
    lse = lse[..., 0]
    w = q if alpha is None else q * np.asarray(alpha, np.float64)
    ce = -(w * logp).sum(axis=-1)
    u = 1.0 - (q * p).sum(axis=-1)
    loss = u**gamma * ce + z_loss * lse**2
    dloss_du = gamma * u ** (gamma - 1) * ce if gamma else np.zeros_like(u)
    for j, eps in enumerate(epsilon, start=1):
        loss = loss + eps * u ** (j + gamma)
        dloss_du = dloss_du + eps * (j + gamma) * u ** (j + gamma - 1)
    dce = -w + w.sum(axis=-1, keepdims=True) * p
    du = -p * (q - (1.0 - u)[..., None])
    grad = (u**gamma)[..., None] * dce + dloss_du[..., None] * du + 2 * z_loss * lse[..., None] * p
    return loss, grad


# --- the backend adapter ------------------------------------------------------------------------------------


class Grad:
    """``value_and_grad(f, x)``: ``f`` maps a backend tensor to a scalar tensor; returns NumPy arrays."""

    def value_and_grad(self, f: Callable[[Any], Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError("a backend's adapter implements value_and_grad")


def make_grad(backend: str) -> Grad:
    """The adapter of a Keras backend: torch autograd, ``jax.value_and_grad`` or ``tf.GradientTape``."""
    if backend == "torch":
        import torch

        class TorchGrad(Grad):
            def value_and_grad(self, f, x):
                xt = torch.tensor(x, requires_grad=True)
                value = f(xt)
                (g,) = torch.autograd.grad(value, xt)
                return value.detach().cpu().numpy(), g.cpu().numpy()

        return TorchGrad()
    if backend == "jax":
        import jax

        class JaxGrad(Grad):
            def value_and_grad(self, f, x):
                value, g = jax.value_and_grad(f)(jax.numpy.asarray(x))
                return np.asarray(value), np.asarray(g)

        return JaxGrad()
    if backend == "tensorflow":
        import tensorflow as tf

        class TfGrad(Grad):
            def value_and_grad(self, f, x):
                xv = tf.Variable(x)  # a tf.Variable on purpose: issue 10, item 11
                with tf.GradientTape() as tape:
                    value = f(xv)
                return value.numpy(), tape.gradient(value, xv).numpy()

        return TfGrad()
    raise ValueError(f"expected a Keras backend 'torch', 'jax' or 'tensorflow', got {backend!r}")


def _np(t: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(t), np.float64)


def _close(actual: Any, expected: Any, tol: float = 1e-10, what: str = "") -> None:
    np.testing.assert_allclose(_np(actual), np.asarray(expected, np.float64), rtol=tol, atol=tol, err_msg=what)


def _raises(exc: type[BaseException], fn: Callable[[], Any], match: str = "expected") -> str:
    try:
        fn()
    except exc as e:
        assert match in str(e), f"{type(e).__name__} without {match!r}: {e}"
        return str(e)
    raise AssertionError(f"no {exc.__name__} raised")


# --- prior / tau / z_loss against the reference (values and gradients) --------------------------------------

RNG_SEED = 20240613
COUNTS = [400.0, 120.0, 30.0, 8.0, 2.0]  # a long-tailed prior over C = 5 classes


def _inputs(shape: tuple[int, ...], seed: int, soft: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of ``shape`` (classes last), integer labels and one-hot or soft labels."""
    rng = np.random.default_rng(RNG_SEED + seed)
    z = rng.normal(size=shape) * 2.0
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    q = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]) if soft else np.eye(shape[-1])[labels]
    return z, labels, q


def _check_against_reference(grad: Grad, loss: keras.losses.Loss, y: np.ndarray, z: np.ndarray, **ref: Any) -> None:
    expected, expected_grad = ref_softmax_poly(z, ref.pop("q"), **ref)
    _close(loss(y, z), expected, what=f"values of {loss.get_config()}")
    _, g = grad.value_and_grad(lambda x: ops.sum(loss(y, x)), z)
    _close(g, expected_grad, what=f"gradients of {loss.get_config()}")


_CATEGORICAL_CASES = [
    # epsilon, label_smoothing, soft, prior, tau, z_loss
    (0.0, 0.0, False, COUNTS, 1.0, 0.0),  # Balanced Softmax
    (1.0, 0.0, False, COUNTS, 1.0, 0.0),
    ((1.0, -0.5), 0.2, False, COUNTS, 0.5, 0.1),
    (2.0, 0.0, True, [0.5, 0.2, 0.15, 0.1, 0.05], 2.0, 0.0),  # probabilities as the prior
    (1.0, 0.1, True, None, 1.0, 0.05),  # z-loss alone
    (0.0, 0.0, False, COUNTS, -1.0, 1e-3),
]


def check_logit_options_categorical(grad: Grad) -> None:
    for i, (epsilon, ls, soft, prior, tau, z_loss) in enumerate(_CATEGORICAL_CASES):
        z, _, q = _inputs((6, 5), i, soft)
        loss = pk.PolyCategoricalCrossentropy(
            epsilon=epsilon,
            from_logits=True,
            label_smoothing=ls,
            prior=prior,
            tau=tau,
            z_loss=z_loss,
            reduction=None,
            dtype="float64",
        )
        eps = (epsilon,) if isinstance(epsilon, float) else epsilon
        _check_against_reference(
            grad, loss, q, z, q=q, epsilon=eps, label_smoothing=ls, prior=prior, tau=tau, z_loss=z_loss
        )


def check_logit_options_sparse(grad: Grad) -> None:
    for i, (shape, axis, trailing_one, epsilon, prior, tau, z_loss) in enumerate(
        [
            ((7, 5), -1, False, 1.0, COUNTS, 1.0, 0.0),
            ((7, 5), -1, True, (1.0, 1.0), COUNTS, 0.7, 0.1),
            ((2, 3, 5), -1, False, 0.0, None, 1.0, 0.2),
            ((2, 3, 5), 1, False, 1.0, COUNTS, 1.0, 0.05),  # channels first: y_pred (2, 5, 3)
        ]
    ):
        z, labels, q = _inputs(shape, 10 + i, soft=False)
        y = labels[..., None] if trailing_one else labels
        loss = pk.SparsePolyCategoricalCrossentropy(
            epsilon=epsilon,
            from_logits=True,
            axis=axis,
            prior=prior,
            tau=tau,
            z_loss=z_loss,
            reduction=None,
            dtype="float64",
        )
        eps = (epsilon,) if isinstance(epsilon, float) else epsilon
        expected, expected_grad = ref_softmax_poly(z, q, epsilon=eps, prior=prior, tau=tau, z_loss=z_loss)
        if axis == 1:  # the reference has classes last; the loss sees them on axis 1
            z = np.moveaxis(z, -1, 1)
            expected_grad = np.moveaxis(expected_grad, -1, 1)
        _close(loss(y, z), expected, what=f"values of {loss.get_config()}")
        _, g = grad.value_and_grad(lambda x, y=y, loss=loss: ops.sum(loss(y, x)), z)
        _close(g, expected_grad, what=f"gradients of {loss.get_config()}")


def check_logit_options_focal(grad: Grad) -> None:
    alpha = [0.25, 0.75, 0.75, 1.5, 1.0]
    for i, (gamma, a, epsilon, ls, soft, prior, tau, z_loss) in enumerate(
        [
            (2.0, None, 0.0, 0.0, False, COUNTS, 1.0, 0.0),
            (2.0, alpha, 1.0, 0.0, False, COUNTS, 1.0, 0.1),
            (0.5, alpha, (1.0, 0.5), 0.1, False, COUNTS, 0.5, 0.0),
            (1.5, None, 1.0, 0.0, True, [1.0, 2.0, 3.0, 4.0, 5.0], 1.0, 0.02),
            (3.0, alpha, 2.0, 0.0, False, None, 1.0, 0.3),
        ]
    ):
        z, _, q = _inputs((6, 5), 20 + i, soft)
        loss = pk.PolyCategoricalFocalCrossentropy(
            gamma=gamma,
            alpha=a,
            epsilon=epsilon,
            from_logits=True,
            label_smoothing=ls,
            prior=prior,
            tau=tau,
            z_loss=z_loss,
            reduction=None,
            dtype="float64",
        )
        eps = (epsilon,) if isinstance(epsilon, float) else epsilon
        _check_against_reference(
            grad,
            loss,
            q,
            z,
            q=q,
            epsilon=eps,
            gamma=gamma,
            alpha=a,
            label_smoothing=ls,
            prior=prior,
            tau=tau,
            z_loss=z_loss,
        )


def check_reference_gradient_is_the_derivative(grad: Grad) -> None:
    """The hand-written reference gradient equals central differences of the reference loss."""
    z, _, q = _inputs((4, 5), 30, soft=True)
    kw = dict(epsilon=(1.0, -0.5), gamma=1.5, alpha=[0.5, 1.0, 2.0, 1.0, 0.3], label_smoothing=0.1)
    kw.update(prior=COUNTS, tau=0.8, z_loss=0.1)
    _, analytic = ref_softmax_poly(z, q, **kw)
    h, numeric = 1e-6, np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (ref_softmax_poly(up, q, **kw)[0].sum() - ref_softmax_poly(down, q, **kw)[0].sum()) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


def check_z_loss_is_scaled_by_sample_weight_not_alpha(grad: Grad) -> None:
    z, _, q = _inputs((6, 5), 40, soft=False)
    sw = np.random.default_rng(41).uniform(0.1, 2.0, size=6)
    alpha = [2.0, 0.5, 1.0, 1.0, 3.0]
    per_row, per_row_grad = ref_softmax_poly(z, q, gamma=2.0, alpha=alpha, prior=COUNTS, z_loss=0.2)
    for reduction, expected in [
        ("sum", (per_row * sw).sum()),
        ("sum_over_batch_size", (per_row * sw).sum() / 6),
        ("mean_with_sample_weight", (per_row * sw).sum() / sw.sum()),
    ]:
        loss = pk.PolyCategoricalFocalCrossentropy(
            gamma=2.0,
            alpha=alpha,
            epsilon=0.0,
            from_logits=True,
            prior=COUNTS,
            z_loss=0.2,
            reduction=reduction,
            dtype="float64",
        )
        value, g = grad.value_and_grad(lambda x, loss=loss: loss(q, x, sample_weight=sw), z)
        # keras.ops.mean / divisions run in float32 on the torch backend (keras 3.15): 1e-6
        _close(value, expected, tol=1e-6, what=reduction)
        if reduction == "sum":
            _close(g, per_row_grad * sw[:, None], tol=1e-9, what="gradient of the sample-weighted sum")


def check_absent_options_are_bit_identical(grad: Grad) -> None:
    """Without prior and z_loss, the same numbers bit for bit whether the defaults are spelled out or not
    (``tau`` alone changes nothing), and a prior with ``tau=0`` is exactly no prior (the adjustment is only
    an added bias)."""
    z, labels, q = _inputs((6, 5), 50, soft=False)
    for dtype in ("float32", "float64"):
        x, kw = z.astype(dtype), dict(reduction=None, dtype=dtype)
        pairs = [
            (pk.PolyCategoricalCrossentropy(epsilon=1.0, from_logits=True, label_smoothing=0.1, **kw), q),
            (pk.SparsePolyCategoricalCrossentropy(epsilon=(1.0, 2.0), from_logits=True, **kw), labels),
            (pk.PolyCategoricalFocalCrossentropy(gamma=1.5, alpha=[1, 2, 3, 4, 5], from_logits=True, **kw), q),
        ]
        for plain, y in pairs:
            config = plain.get_config()
            assert config["prior"] is None and config["tau"] == 1.0 and config["z_loss"] == 0.0, config
            v1, g1 = grad.value_and_grad(lambda x, loss=plain, y=y: ops.sum(loss(y, x)), x)
            for options in (dict(prior=None, tau=3.0, z_loss=0.0), dict(prior=COUNTS, tau=0.0)):
                same = type(plain)(**{**config, **options, "dtype": dtype})
                v2, g2 = grad.value_and_grad(lambda x, loss=same, y=y: ops.sum(loss(y, x)), x)
                assert v1.tobytes() == v2.tobytes() and g1.tobytes() == g2.tobytes(), (type(plain).__name__, options)


def check_logit_options_bad_input(grad: Grad) -> None:
    softmax_classes = (
        pk.PolyCategoricalCrossentropy,
        pk.SparsePolyCategoricalCrossentropy,
        pk.PolyCategoricalFocalCrossentropy,
    )
    for cls in softmax_classes:
        for prior in ([1.0, 0.0, 2.0], [1.0, -3.0], [1.0, float("nan")], [1.0, float("inf")], []):
            _raises(ValueError, lambda cls=cls, prior=prior: cls(from_logits=True, prior=prior), "expected prior")
        for prior in ("abc", [1.0, "2"], 3.0, [[1.0, 2.0]]):
            _raises(TypeError, lambda cls=cls, prior=prior: cls(from_logits=True, prior=prior), "expected prior")
        for tau in (float("inf"), float("-inf"), float("nan")):
            _raises(ValueError, lambda cls=cls, tau=tau: cls(from_logits=True, prior=COUNTS, tau=tau), "expected tau")
        _raises(TypeError, lambda cls=cls: cls(from_logits=True, tau=None), "expected tau")
        for z_loss in (-0.1, float("inf"), float("nan")):
            _raises(ValueError, lambda cls=cls, z_loss=z_loss: cls(from_logits=True, z_loss=z_loss), "expected z_loss")
        _raises(TypeError, lambda cls=cls: cls(from_logits=True, z_loss="1e-4"), "expected z_loss")
        message = _raises(ValueError, lambda cls=cls: cls(prior=COUNTS), "expected from_logits=True")
        assert "probabilities" in message, message
        _raises(ValueError, lambda cls=cls: cls(z_loss=1e-4), "expected from_logits=True")
        # wrong length: at the call, before any computation
        z, labels, q = _inputs((3, 4), 60, soft=False)
        y = labels if cls is pk.SparsePolyCategoricalCrossentropy else q
        _raises(
            ValueError,
            lambda cls=cls, y=y, z=z: cls(from_logits=True, prior=COUNTS)(y, z),
            "expected prior of length C=4",
        )
    # a NumPy array works as the prior
    loss = pk.PolyCategoricalCrossentropy(from_logits=True, prior=np.array(COUNTS))
    assert loss.prior == COUNTS


def check_logit_options_config_round_trip(grad: Grad) -> None:
    import json

    for loss in (
        pk.PolyCategoricalCrossentropy(epsilon=[1.0, 0.5], from_logits=True, prior=COUNTS, tau=0.5, z_loss=1e-4),
        pk.SparsePolyCategoricalCrossentropy(from_logits=True, prior=[0.7, 0.2, 0.1], z_loss=1e-3),
        pk.PolyCategoricalFocalCrossentropy(
            gamma=2.0, alpha=[1.0, 2.0, 3.0], from_logits=True, prior=[3, 2, 1], tau=2.0
        ),
    ):
        config = loss.get_config()
        json.dumps(config)
        clone = type(loss).from_config(config)
        assert clone.get_config() == config and clone._logit_offset == loss._logit_offset
        revived = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(revived) is type(loss) and revived.get_config() == config


# --- shapes: exactly what Keras' own losses accept ----------------------------------------------------------

_DENSE_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1), (3, 4)),  # issue 10, item 10: silently broadcast before
    ((3,), (3, 4)),
    ((3, 4, 1), (3, 4)),
    ((1, 4), (3, 4)),
    ((4,), (3, 4)),
    ((3, 4), (3, 4, 1)),
    ((3,), (3, 1)),
    ((2, 3, 4), (2, 3, 4)),
    ((2, 1, 4), (2, 3, 4)),
    ((3, 4), (2, 3, 4)),
    ((1, 3, 4), (3, 4)),
    ((3, 1), (3,)),
    ((3,), (3,)),
    ((12,), (3, 4)),
]
_SPARSE_SHAPES = [
    ((3,), (3, 4)),
    ((3, 1), (3, 4)),
    ((3, 1, 1), (3, 4)),
    ((1,), (3, 4)),
    ((4,), (3, 4)),
    ((3, 4), (3, 4)),
    ((1, 3), (3, 4)),
    ((2, 3), (2, 3, 4)),
    ((2, 3, 1), (2, 3, 4)),
    ((2, 1), (2, 3, 4)),
    ((6,), (2, 3, 4)),
    ((3,), (3, 1)),
    ((3, 1), (3, 1)),
    ((1,), (4,)),
    ((), (4,)),
]


def _outcome(fn: Callable[[], Any]) -> Any:
    """The loss's value as float64 NumPy, or the string ``"ValueError"``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns (SyntaxWarning) about C = 1
        try:
            return _np(fn())
        except ValueError:
            return "ValueError"


def _parity(ours: Callable[[], Any], theirs: Callable[[], Any], case: str) -> None:
    a, b = _outcome(ours), _outcome(theirs)
    if isinstance(a, str) or isinstance(b, str):
        assert isinstance(a, str) and isinstance(b, str), (
            f"{case}: ours {a if isinstance(a, str) else 'ok'}, Keras {b if isinstance(b, str) else 'ok'}"
        )
    else:
        assert a.shape == b.shape, f"{case}: ours {a.shape}, Keras {b.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=case)


def check_shapes_as_keras_categorical(grad: Grad) -> None:
    rng = np.random.default_rng(70)
    kw = dict(from_logits=True, reduction=None)
    theirs = keras.losses.CategoricalCrossentropy(**kw)
    for y_shape, p_shape in _DENSE_SHAPES:
        y = rng.dirichlet(np.ones(y_shape[-1] if y_shape else 1), size=y_shape[:-1]).astype("float32")
        x = rng.normal(size=p_shape).astype("float32")
        for ours in (
            pk.PolyCategoricalCrossentropy(epsilon=0.0, **kw),
            pk.PolyCategoricalFocalCrossentropy(gamma=0.0, epsilon=0.0, **kw),
        ):
            _parity(
                lambda ours=ours, y=y, x=x: ours(y, x),
                lambda y=y, x=x: theirs(y, x),
                f"{type(ours).__name__} {y_shape} {p_shape}",
            )
    message = _raises(
        ValueError,
        lambda: pk.PolyCategoricalCrossentropy(epsilon=0, reduction=None)([[0], [1], [2]], rng.normal(size=(3, 3))),
    )
    assert "(3, 3)" in message and "(3, 1)" in message, message


def check_shapes_as_keras_sparse(grad: Grad) -> None:
    rng = np.random.default_rng(71)
    kw = dict(from_logits=True, reduction=None)
    theirs = keras.losses.SparseCategoricalCrossentropy(**kw)
    ours = pk.SparsePolyCategoricalCrossentropy(epsilon=0.0, **kw)
    for y_shape, p_shape in _SPARSE_SHAPES:
        y = rng.integers(0, 1, size=y_shape)
        x = rng.normal(size=p_shape).astype("float32")
        _parity(lambda y=y, x=x: ours(y, x), lambda y=y, x=x: theirs(y, x), f"sparse {y_shape} {p_shape}")
    _raises(
        ValueError, lambda: ours(np.zeros((4, 2)), rng.normal(size=(3, 3))), "expected integer labels of shape (3,)"
    )
    _raises(ValueError, lambda: ours(np.zeros(()), np.zeros(())), "expected y_pred with a class axis")


def check_shapes_as_keras_binary(grad: Grad) -> None:
    rng = np.random.default_rng(72)
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, from_logits=True, reduction=None
    )
    ours = pk.PolyBinaryFocalCrossentropy(gamma=2.0, alpha=0.25, epsilon=0.0, from_logits=True, reduction=None)
    for y_shape, p_shape in _DENSE_SHAPES:
        y = (rng.uniform(size=y_shape) > 0.5).astype("float32")
        x = rng.normal(size=p_shape).astype("float32")
        _parity(lambda y=y, x=x: ours(y, x), lambda y=y, x=x: theirs(y, x), f"binary {y_shape} {p_shape}")


def check_shapes_of_the_listings(grad: Grad) -> None:
    """The seed-000 functions take ``y_true`` of ``y_pred``'s shape exactly, and refuse anything else."""
    rng = np.random.default_rng(73)
    for fn in (pk.poly1_cross_entropy(1.0), pk.poly1_focal_loss()):
        assert np.isfinite(_np(fn(np.eye(4)[[0, 1, 3]], rng.normal(size=(3, 4)))))
        for y_shape, p_shape in [
            ((3, 1), (3, 4)),
            ((3,), (3, 4)),
            ((3, 4, 1), (3, 4)),
            ((1, 4), (3, 4)),
            ((3, 4), (3, 4, 1)),
        ]:
            message = _raises(
                ValueError,
                lambda fn=fn, y_shape=y_shape, p_shape=p_shape: fn(np.zeros(y_shape), rng.normal(size=p_shape)),
            )
            assert str(p_shape) in message and str(y_shape) in message, message
    _raises(
        ValueError, lambda: pk.poly1_cross_entropy(1.0)(np.zeros(()), np.zeros(())), "expected y_pred with a class axis"
    )


# --- training ------------------------------------------------------------------------------------------------


def check_fit_with_logit_options(grad: Grad) -> None:
    """``compile`` + ``fit`` (a traced / compiled step on every backend, dimensions unknown while tracing on
    TensorFlow): the loss decreases and stays finite."""
    rng = np.random.default_rng(80)
    x = rng.normal(size=(48, 4)).astype("float32")
    labels = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    prior = np.bincount(labels, minlength=3).astype(float) + 1.0
    for loss, y in (
        (
            pk.PolyCategoricalCrossentropy(epsilon=1.0, from_logits=True, prior=prior, z_loss=1e-3),
            np.eye(3, dtype="float32")[labels],
        ),
        (pk.SparsePolyCategoricalCrossentropy(epsilon=2.0, from_logits=True, prior=prior, tau=0.5), labels),
        (
            pk.PolyCategoricalFocalCrossentropy(gamma=2.0, alpha=[1.0, 1.0, 2.0], from_logits=True, z_loss=1e-2),
            np.eye(3, dtype="float32")[labels],
        ),
        (pk.PolyBinaryFocalCrossentropy(from_logits=True), np.eye(3, dtype="float32")[labels]),
    ):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
        assert all(math.isfinite(v) for v in history) and history[-1] < history[0], (type(loss).__name__, history)


CHECKS: dict[str, Callable[[Grad], None]] = {
    name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_") and callable(fn)
}
