"""TensorFlow-only checks of ``polyfocal.keras``, run by ``tests/keras_backend_run.py`` on ``KERAS_BACKEND=tensorflow``.

Seed 000's TF listings (``tests/seed_listings_tf.py``) in real TensorFlow against the adapter, values and
``tf.GradientTape`` gradients; ``tf.Variable`` inputs (issue 10, item 11); shape checks inside
``tf.function`` graphs, where the batch dimension is unknown.  Same calling convention as
``tests/keras_checks.py``; TensorFlow is imported inside the checks, so that this module (collected by
``pytest --doctest-modules``) imports without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import polyfocal.keras as pk
from keras_checks import Grad, _close, _raises


def _value_and_grad(fn: Callable[[Any, Any], Any], y: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)  # a constant needs it; a variable is watched anyway
        value = fn(y, x)
    return value.numpy(), tape.gradient(value, x).numpy()


def _labels(rng: np.random.Generator, n: int, c: int, soft: bool) -> np.ndarray:
    return rng.dirichlet(np.ones(c), size=n) if soft else np.eye(c)[rng.integers(0, c, size=n)]


def check_tf_seed000_poly1_cross_entropy_listing(grad: Grad) -> None:
    import tensorflow as tf

    from seed_listings_tf import poly1_cross_entropy_tf

    rng = np.random.default_rng(90)
    epsilons = [0.0, 1.0, 2.0, -1.0, *rng.uniform(-1.0, 4.0, size=8)]
    for i, epsilon in enumerate(epsilons):
        for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
            y = tf.constant(_labels(rng, 6, 5, soft=i % 2 == 1), dtype=dtype)
            x = tf.Variable(rng.normal(size=(6, 5)) * 2.0, dtype=dtype)
            ours = _value_and_grad(pk.poly1_cross_entropy(epsilon=float(epsilon)), y, x)
            listing = _value_and_grad(poly1_cross_entropy_tf(epsilon=float(epsilon)), y, x)
            _close(ours[0], listing[0], tol, f"value, epsilon={epsilon}, {dtype}")
            _close(ours[1], listing[1], tol, f"gradient, epsilon={epsilon}, {dtype}")


def check_tf_seed000_poly1_focal_loss_listing(grad: Grad) -> None:
    import tensorflow as tf

    from seed_listings_tf import poly1_focal_loss_tf

    rng = np.random.default_rng(91)
    params = [(2.0, 1.0, 0.25), (0.0, 0.0, -1.0), (2.0, 0.0, 0.25), (1.5, -1.0, 0.5), (0.5, 2.0, -1.0)]
    params += [(rng.uniform(0, 4), rng.uniform(-1, 4), rng.choice([-1.0, rng.uniform(0, 1)])) for _ in range(8)]
    for gamma, epsilon, alpha in params:
        kw = dict(gamma=float(gamma), epsilon=float(epsilon), alpha=float(alpha))
        for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
            y = tf.constant(rng.uniform(size=(5, 4)) > 0.5, dtype=dtype)
            x = tf.Variable(rng.normal(size=(5, 4)) * 2.0, dtype=dtype)
            ours = _value_and_grad(pk.poly1_focal_loss(**kw), y, x)
            listing = _value_and_grad(poly1_focal_loss_tf(**kw), y, x)
            _close(ours[0], listing[0], tol, f"value, {kw}, {dtype}")
            _close(ours[1], listing[1], tol, f"gradient, {kw}, {dtype}")


def _entry_points() -> Iterator[tuple[str, Callable[[Any, Any], Any], str]]:
    """Every Keras entry point, with the kind of ``y_true`` it takes, then the softmax classes with ``prior``
    and ``z_loss``; each made when it is reached."""
    yield "poly1_cross_entropy", pk.poly1_cross_entropy(1.0), "one_hot"
    yield "poly1_focal_loss", pk.poly1_focal_loss(), "one_hot"
    yield "PolyCategoricalCrossentropy", pk.PolyCategoricalCrossentropy(from_logits=True), "one_hot"
    yield "SparsePolyCategoricalCrossentropy", pk.SparsePolyCategoricalCrossentropy(from_logits=True), "labels"
    yield "PolyCategoricalFocalCrossentropy", pk.PolyCategoricalFocalCrossentropy(from_logits=True), "one_hot"
    yield "PolyBinaryFocalCrossentropy", pk.PolyBinaryFocalCrossentropy(from_logits=True), "one_hot"
    kw = dict(from_logits=True, prior=[3, 2, 1, 1], tau=0.5, z_loss=1e-2)
    yield "PolyCategoricalCrossentropy(prior, z_loss)", pk.PolyCategoricalCrossentropy(**kw), "one_hot"
    yield "SparsePolyCategoricalCrossentropy(prior, z_loss)", pk.SparsePolyCategoricalCrossentropy(**kw), "labels"
    yield "PolyCategoricalFocalCrossentropy(prior, z_loss)", pk.PolyCategoricalFocalCrossentropy(**kw), "one_hot"


def check_tf_variable_inputs(grad: Grad) -> None:
    """``tf.Variable`` logits (and labels) work in every entry point, as in Keras' own losses: the same
    value and gradient as a watched constant."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(92)
    x_np = rng.normal(size=(3, 4)).astype("float32")
    labels = np.array([0, 3, 1])
    one_hot = np.eye(4, dtype="float32")[labels]
    keras.losses.CategoricalCrossentropy(from_logits=True)(one_hot, tf.Variable(x_np))  # Keras' own accepts it
    for name, fn, kind in _entry_points():
        y = labels if kind == "labels" else one_hot
        reference = _value_and_grad(fn, tf.constant(y), tf.constant(x_np))
        for y_in in (y, tf.Variable(y)):
            got = _value_and_grad(fn, y_in, tf.Variable(x_np))
            _close(got[0], reference[0], 0.0, f"{name}: value")
            _close(got[1], reference[1], 0.0, f"{name}: gradient")


def check_tf_shape_errors(grad: Grad) -> None:
    """Incompatible shapes raise ValueError in every entry point, for tensors, variables and lists."""
    import tensorflow as tf

    rng = np.random.default_rng(93)
    x_np = rng.normal(size=(3, 4)).astype("float32")
    for name, fn, kind in _entry_points():
        bad = [np.zeros((3, 1), "float32"), np.zeros((4,), "float32"), np.zeros((1, 4), "float32")]
        if kind == "labels":
            bad = [np.zeros((4,), "float32"), np.zeros((3, 4), "float32"), np.zeros((1,), "float32")]
        for y in bad:
            for y_in, x_in in ((y, tf.Variable(x_np)), (tf.Variable(y), tf.constant(x_np)), (y.tolist(), x_np)):
                message = _raises(ValueError, lambda fn=fn, y_in=y_in, x_in=x_in: fn(y_in, x_in))
                assert str(y.shape) in message, f"{name}: {message}"


def check_tf_function_with_unknown_batch(grad: Grad) -> None:
    """In a ``tf.function`` traced for any batch size, the shape checks compare the known dimensions only:
    equal values to eager mode, and a wrong class dimension still raises ValueError at tracing."""
    import tensorflow as tf

    rng = np.random.default_rng(94)
    x_np = rng.normal(size=(5, 4)).astype("float32")
    labels = rng.integers(0, 4, size=5)
    for name, fn, kind in _entry_points():
        y_np = labels.astype("float32") if kind == "labels" else np.eye(4, dtype="float32")[labels]
        y_spec = tf.TensorSpec([None] if kind == "labels" else [None, 4], tf.float32)
        traced = tf.function(fn, input_signature=[y_spec, tf.TensorSpec([None, 4], tf.float32)])
        _close(traced(tf.constant(y_np), tf.constant(x_np)), fn(y_np, x_np), 1e-6, name)
        wrong = tf.TensorSpec([None, 3], tf.float32) if kind == "labels" else tf.TensorSpec([None, 1], tf.float32)
        _raises(
            ValueError,
            lambda fn=fn, wrong=wrong: tf.function(fn).get_concrete_function(
                wrong, tf.TensorSpec([None, 4], tf.float32)
            ),
        )


CHECKS: dict[str, Callable[[Grad], None]] = {
    name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_") and callable(fn)
}
