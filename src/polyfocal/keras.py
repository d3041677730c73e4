r"""Keras 3 adapter: the PolyLoss family as Keras losses, written with ``keras.ops`` (any backend).

Importing this module does not import torch: it runs on the TensorFlow, JAX, torch and NumPy backends
with only ``keras`` installed.  The math is the torch core's (:mod:`polyfocal.functional`), in the same
log-space form, with Keras conventions: argument order ``(y_true, y_pred)``, the class axis last
(``axis=-1``), ``from_logits`` (probabilities are normalised and clipped to ``[ε, 1-ε]`` with
``keras.config.epsilon()``, as Keras' own losses do), ``reduction``/``name``/``dtype`` and
``sample_weight`` handled by :class:`keras.losses.Loss`.

.. math::

    \ell = (1 - p_t)^{\gamma}\,\mathrm{CE}_{\alpha} + \sum_{j=1}^{N} \epsilon_j (1 - p_t)^{j + \gamma}

* :func:`poly1_cross_entropy` and :func:`poly1_focal_loss`: the TensorFlow listings of the PolyLoss paper
  (Leng et al., ICLR 2022, https://arxiv.org/abs/2204.12511; seed 000), same call shape and numbers:
  ``poly1_cross_entropy(epsilon)(y_true, y_pred)`` returns the batch mean.
* :class:`PolyCategoricalCrossentropy`, :class:`SparsePolyCategoricalCrossentropy`,
  :class:`PolyCategoricalFocalCrossentropy`, :class:`PolyBinaryFocalCrossentropy`: ``keras.losses.Loss``
  subclasses, serialisable (``get_config``/``from_config``, registered under the package ``polyfocal``).

Per-sample values equal the torch core's: softmax losses give ``polyfocal.poly_loss(..., reduction="none")``
of the logits moved to class dim 1; the binary loss gives the sigmoid element loss averaged over ``axis``
(the Keras binary convention, as ``keras.losses.BinaryFocalCrossentropy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from ._params import (
    _describe,
    _is_real_number,
    check_epsilon,
    check_gamma,
    check_label_smoothing,
    check_sigmoid_alpha,
)

__all__ = [
    "PolyBinaryFocalCrossentropy",
    "PolyCategoricalCrossentropy",
    "PolyCategoricalFocalCrossentropy",
    "SparsePolyCategoricalCrossentropy",
    "poly1_cross_entropy",
    "poly1_focal_loss",
]

_NEG_INF = float("-inf")


# --- math (keras.ops) ---------------------------------------------------------------------------------------


def _safe_log(t: Any) -> Any:
    """``log(t)`` for ``t >= 0`` with ``log(0) = -inf`` and a zero (not NaN) gradient there."""
    positive = ops.greater(t, 0)
    return ops.where(positive, ops.log(ops.where(positive, t, ops.ones_like(t))), _NEG_INF)


def _logsumexp_last(v: Any) -> Any:
    """``logsumexp`` over the last axis; an all ``-inf`` row gives ``-inf`` with a zero gradient."""
    empty = ops.all(ops.equal(v, _NEG_INF), axis=-1, keepdims=True)
    out = ops.logsumexp(ops.where(empty, ops.zeros_like(v), v), axis=-1, keepdims=True)
    return ops.squeeze(ops.where(empty, _NEG_INF, out), axis=-1)


def _combine(ce: Any, log_1m_pt: Any, gamma: float, epsilon: tuple[float, ...]) -> Any:
    loss = ce if gamma == 0.0 else ops.exp(gamma * log_1m_pt) * ce
    for j, eps in enumerate(epsilon, start=1):
        if eps != 0.0:
            loss = loss + eps * ops.exp((j + gamma) * log_1m_pt)
    return loss


def _softmax_poly(
    y_true: Any,
    y_pred: Any,
    *,
    epsilon: tuple[float, ...],
    gamma: float,
    alpha: Sequence[float] | None,
    from_logits: bool,
    label_smoothing: float,
    axis: int,
) -> Any:
    """Per-sample softmax PolyLoss; ``y_true`` is one-hot / probabilities of ``y_pred``'s shape."""
    y_pred = ops.moveaxis(ops.convert_to_tensor(y_pred), axis, -1)
    y_true = ops.moveaxis(ops.cast(y_true, y_pred.dtype), axis, -1)
    num_classes = y_pred.shape[-1]
    if label_smoothing > 0.0:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / num_classes
    if from_logits:
        logp = ops.log_softmax(y_pred, axis=-1)
    else:
        eps = keras.config.epsilon()
        logp = ops.log(ops.clip(y_pred / ops.sum(y_pred, axis=-1, keepdims=True), eps, 1.0 - eps))
    if alpha is not None:
        if len(alpha) != num_classes:
            raise ValueError(f"expected alpha of length C={num_classes} (one per class), got length {len(alpha)}")
        weighted = y_true * ops.convert_to_tensor(list(alpha), dtype=y_pred.dtype)
    else:
        weighted = y_true
    ce = -ops.sum(weighted * logp, axis=-1)
    need_pt = gamma != 0.0 or any(e != 0.0 for e in epsilon)
    log_1m_pt = _logsumexp_last(logp + _safe_log(1.0 - y_true)) if need_pt else None
    return _combine(ce, log_1m_pt, gamma, epsilon)


def _sigmoid_poly(
    y_true: Any,
    y_pred: Any,
    *,
    epsilon: tuple[float, ...],
    gamma: float,
    alpha: float | None,
    from_logits: bool,
    label_smoothing: float,
) -> Any:
    """Element-wise sigmoid PolyLoss; ``y_true`` in [0, 1] of ``y_pred``'s shape."""
    y_pred = ops.convert_to_tensor(y_pred)
    t = ops.cast(y_true, y_pred.dtype)
    if label_smoothing > 0.0:
        t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        log_p, log_1m_p = ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
    else:
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        log_p, log_1m_p = ops.log(p), ops.log(1.0 - p)
    ce = -(t * log_p + (1.0 - t) * log_1m_p)
    if alpha is not None:
        ce = (alpha * t + (1.0 - alpha) * (1.0 - t)) * ce
    need_pt = gamma != 0.0 or any(e != 0.0 for e in epsilon)
    log_1m_pt = ops.logaddexp(_safe_log(t) + log_1m_p, _safe_log(1.0 - t) + log_p) if need_pt else None
    return _combine(ce, log_1m_pt, gamma, epsilon)


def _check_class_alpha(alpha: object) -> list[float] | None:
    if alpha is None:
        return None
    if _is_real_number(alpha):
        raise ValueError(
            f"expected a per-class alpha (a sequence of length C) for a softmax loss, got the scalar {alpha!r}; "
            f"e.g. alpha=[{alpha}] + [{1 - float(alpha):g}] * (C - 1) to down-weight class 0"  # type: ignore[arg-type]
        )
    values = list(alpha) if isinstance(alpha, Sequence) and not isinstance(alpha, str) else None
    if values is None and hasattr(alpha, "tolist"):
        values = alpha.tolist()  # a NumPy array or a tensor
    if values is None or not all(_is_real_number(a) for a in values):
        raise TypeError(f"expected alpha to be a sequence of real numbers or None, got {_describe(alpha)}")
    if any(a < 0 for a in values):
        raise ValueError(f"expected non-negative alpha values, got {values!r}")
    return [float(a) for a in values]


def _alpha_or_none(alpha: float) -> float | None:
    """The listings' convention: ``alpha < 0`` disables the alpha balance."""
    if _is_real_number(alpha) and alpha < 0:  # type: ignore[operator]
        return None
    return check_sigmoid_alpha(alpha)


# --- seed 000: the PolyLoss paper's TensorFlow listings ----------------------------------------------------


def poly1_cross_entropy(epsilon: float = 1.0) -> Any:
    r"""The paper's ``poly1_cross_entropy(epsilon)``: returns ``fn(y_true, y_pred)`` = batch mean of Poly-1.

    .. math:: \mathrm{mean}\big(\mathrm{CE} + \epsilon (1 - p_t)\big),\quad p_t = \sum_c y_c\,\mathrm{softmax}(x)_c

    ``y_true`` one-hot or soft labels ``[batch, C]``, ``y_pred`` logits.

    Example:
        >>> import numpy as np
        >>> from polyfocal.keras import poly1_cross_entropy
        >>> y_true = np.eye(3, dtype="float32")[[0, 2, 1]]
        >>> logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.1, 1.5], [0.0, 3.0, 0.0]], dtype="float32")
        >>> p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        >>> expected = np.mean(-np.log((y_true * p).sum(-1)) + 2.0 * (1 - (y_true * p).sum(-1)))
        >>> bool(np.isclose(float(poly1_cross_entropy(epsilon=2.0)(y_true, logits)), expected))
        True
    """
    eps = check_epsilon(epsilon, allow_sequence=False)

    def _poly1_cross_entropy(y_true: Any, y_pred: Any) -> Any:
        per_sample = _softmax_poly(
            y_true, y_pred, epsilon=eps, gamma=0.0, alpha=None, from_logits=True, label_smoothing=0.0, axis=-1
        )
        return ops.mean(per_sample)

    return _poly1_cross_entropy


def poly1_focal_loss(gamma: float = 2.0, epsilon: float = 1.0, alpha: float = 0.25) -> Any:
    r"""The paper's ``poly1_focal_loss(gamma, epsilon, alpha)``: ``fn(y_true, y_pred)`` = mean of Poly-1 focal.

    .. math:: \mathrm{mean}\big(\alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE} + \epsilon (1 - p_t)^{\gamma + 1}\big)

    Sigmoid, multi-label 0/1 ``y_true`` of ``y_pred``'s shape, ``y_pred`` logits; the mean is over every
    element.  ``alpha < 0`` disables the alpha balance, as in the listing.

    Example:
        >>> import numpy as np
        >>> from polyfocal.keras import poly1_focal_loss
        >>> y_true = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
        >>> logits = np.array([[1.5, -0.5], [0.3, -2.0]], dtype="float32")
        >>> p = 1 / (1 + np.exp(-logits))
        >>> p_t = y_true * p + (1 - y_true) * (1 - p)
        >>> expected = np.mean(-np.log(p_t) * (1 - p_t) ** 2 + (1 - p_t) ** 3)
        >>> bool(np.isclose(float(poly1_focal_loss(alpha=-1)(y_true, logits)), expected))
        True
    """
    gamma_ = check_gamma(gamma)
    eps = check_epsilon(epsilon, allow_sequence=False)
    alpha_ = _alpha_or_none(alpha)

    def _poly1_focal_loss(y_true: Any, y_pred: Any) -> Any:
        per_element = _sigmoid_poly(
            y_true, y_pred, epsilon=eps, gamma=gamma_, alpha=alpha_, from_logits=True, label_smoothing=0.0
        )
        return ops.mean(per_element)

    return _poly1_focal_loss


# --- keras.losses.Loss subclasses ---------------------------------------------------------------------------


class _PolyLossBase(keras.losses.Loss):
    _hyper: tuple[str, ...] = ()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for name in self._hyper:
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyCategoricalCrossentropy(_PolyLossBase):
    r"""Poly-1 / Poly-N categorical cross-entropy: :math:`\mathrm{CE} + \sum_j \epsilon_j (1 - p_t)^j`.

    ``y_true`` one-hot or soft labels, ``y_pred`` probabilities (``from_logits=False``, the Keras default)
    or logits.  ``epsilon`` is one number (Poly-1) or a sequence (Poly-N); with ``epsilon=0`` this is
    ``keras.losses.CategoricalCrossentropy``.  ``label_smoothing`` as there (``y (1 - ls) + ls / C``).

    Example:
        >>> import numpy as np, keras
        >>> from polyfocal.keras import PolyCategoricalCrossentropy
        >>> y_true = np.eye(4, dtype="float32")[[0, 3, 1]]
        >>> logits = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
        >>> ours = PolyCategoricalCrossentropy(epsilon=0.0, from_logits=True, label_smoothing=0.1)
        >>> theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
        >>> bool(np.isclose(float(ours(y_true, logits)), float(theirs(y_true, logits))))
        True
    """

    _hyper = ("epsilon", "from_logits", "label_smoothing", "axis")

    def __init__(
        self,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "poly_categorical_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.axis = int(axis)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _softmax_poly(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            gamma=0.0,
            alpha=None,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
        )


@keras.saving.register_keras_serializable(package="polyfocal")
class SparsePolyCategoricalCrossentropy(_PolyLossBase):
    r"""Poly-1 / Poly-N categorical cross-entropy with integer labels (``SparseCategoricalCrossentropy``'s twin).

    ``y_true`` integer class indices of ``y_pred``'s shape without the class axis (a trailing axis of size 1
    is accepted, as in Keras); ``y_pred`` probabilities or logits with the class axis last.

    Example:
        >>> import numpy as np
        >>> from polyfocal.keras import PolyCategoricalCrossentropy, SparsePolyCategoricalCrossentropy
        >>> labels, logits = np.array([2, 0, 1]), np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
        >>> sparse = SparsePolyCategoricalCrossentropy(epsilon=1.0, from_logits=True)(labels, logits)
        >>> dense = PolyCategoricalCrossentropy(epsilon=1.0, from_logits=True)(np.eye(3)[labels], logits)
        >>> bool(np.isclose(float(sparse), float(dense)))
        True
    """

    _hyper = ("epsilon", "from_logits", "axis")

    def __init__(
        self,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "sparse_poly_categorical_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.axis = int(axis)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        labels = ops.convert_to_tensor(y_true)
        if len(labels.shape) == len(y_pred.shape) and labels.shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)
        expected = tuple(d for i, d in enumerate(y_pred.shape) if i != self.axis % len(y_pred.shape))
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"expected integer labels of shape {expected} (y_pred's shape without the class axis), "
                f"got {tuple(labels.shape)}"
            )
        one_hot = ops.one_hot(ops.cast(labels, "int32"), y_pred.shape[self.axis], axis=self.axis, dtype=y_pred.dtype)
        return _softmax_poly(
            one_hot,
            y_pred,
            epsilon=self.epsilon,
            gamma=0.0,
            alpha=None,
            from_logits=self.from_logits,
            label_smoothing=0.0,
            axis=self.axis,
        )


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyCategoricalFocalCrossentropy(_PolyLossBase):
    r"""Softmax focal loss with Poly terms.

    .. math:: (1-p_t)^\gamma\,\mathrm{CE}_\alpha + \sum_j \epsilon_j (1-p_t)^{j+\gamma}

    ``alpha`` is per class (a sequence of length C, weighting only the focal-CE term) or ``None``; a scalar
    is refused.  ``p_t = sum_c y_c p_c``: for one-hot labels with ``epsilon=0`` and ``alpha=None`` this is
    ``keras.losses.CategoricalFocalCrossentropy(alpha=1.0)``; for soft labels Keras modulates each class by
    ``(1 - p_c)^gamma`` instead.  Defaults: ``gamma=2``, ``epsilon=1`` (Poly-1 focal).

    Example:
        >>> import numpy as np, keras
        >>> from polyfocal.keras import PolyCategoricalFocalCrossentropy
        >>> y_true = np.eye(3, dtype="float32")[[0, 2, 1, 1]]
        >>> logits = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
        >>> ours = PolyCategoricalFocalCrossentropy(gamma=2.0, epsilon=0.0, from_logits=True)
        >>> theirs = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0, from_logits=True)
        >>> bool(np.isclose(float(ours(y_true, logits)), float(theirs(y_true, logits))))
        True
    """

    _hyper = ("gamma", "alpha", "epsilon", "from_logits", "label_smoothing", "axis")

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Sequence[float] | None = None,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "poly_categorical_focal_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma = check_gamma(gamma)
        self.alpha = _check_class_alpha(alpha)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.axis = int(axis)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return _softmax_poly(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            gamma=self.gamma,
            alpha=self.alpha,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
        )


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyBinaryFocalCrossentropy(_PolyLossBase):
    r"""Sigmoid focal loss with Poly terms.

    .. math:: \alpha_t (1-p_t)^\gamma\,\mathrm{BCE} + \sum_j \epsilon_j (1-p_t)^{j+\gamma}

    Multi-label ``y_true`` in [0, 1] of ``y_pred``'s shape; the per-sample loss is the mean over ``axis``, as
    in Keras' binary losses.  ``alpha`` in [0, 1] weights positives (only the focal-BCE term) or ``None``
    disables it; with ``epsilon=0`` this is ``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True)``.
    ``label_smoothing`` maps ``y`` to ``y (1 - ls) + ls / 2``.  Defaults: ``gamma=2``, ``alpha=0.25``,
    ``epsilon=1`` (the paper's Poly-1 focal loss).

    Example:
        >>> import numpy as np, keras
        >>> from polyfocal.keras import PolyBinaryFocalCrossentropy
        >>> y_true = np.array([[1, 0, 0], [0, 1, 1]], dtype="float32")
        >>> logits = np.array([[2.0, -1.0, 0.3], [-0.4, 1.2, 3.0]], dtype="float32")
        >>> ours = PolyBinaryFocalCrossentropy(epsilon=0.0, from_logits=True)
        >>> theirs = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True)
        >>> bool(np.isclose(float(ours(y_true, logits)), float(theirs(y_true, logits))))
        True
    """

    _hyper = ("gamma", "alpha", "epsilon", "from_logits", "label_smoothing", "axis")

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "poly_binary_focal_crossentropy",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma = check_gamma(gamma)
        self.alpha = check_sigmoid_alpha(alpha)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.axis = int(axis)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        per_element = _sigmoid_poly(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            gamma=self.gamma,
            alpha=self.alpha,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )
        return ops.mean(per_element, axis=self.axis)
