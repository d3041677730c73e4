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

``y_true`` and ``y_pred`` must have the shapes Keras' own losses accept (ValueError otherwise, never a
broadcast); ``tf.Variable`` inputs work.  The softmax classes also take ``prior``/``tau`` (logit adjustment,
Balanced Softmax) and ``z_loss``.

Per-sample values equal the torch core's: softmax losses give ``polyfocal.poly_loss(..., reduction="none")``
of the logits moved to class dim 1; the binary loss gives the sigmoid element loss averaged over ``axis``
(the Keras binary convention, as ``keras.losses.BinaryFocalCrossentropy``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from ._params import (
    _describe,
    _finite,
    _is_real_number,
    check_epsilon,
    check_gamma,
    check_label_smoothing,
    check_sigmoid_alpha,
    check_softcap,
    check_tau,
    check_z_loss,
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


# --- tensors and shapes -------------------------------------------------------------------------------------


def _tensor(x: Any, dtype: Any = None) -> Any:
    """``x`` as a backend tensor.

    On TensorFlow ``ops.convert_to_tensor`` (and ``ops.cast`` to the same dtype) returns a ``tf.Variable``
    as it is, and some of Keras' TF ops then fail on it (``moveaxis``: ``'ResourceVariable' object has no
    attribute 'ndim'``); ``ops.copy`` (``tf.identity``) reads it into a tensor, differentiably.  Tensors of
    every backend have ``ndim`` and are returned as they are.
    """
    x = ops.convert_to_tensor(x, dtype=dtype)
    if not hasattr(x, "ndim"):
        x = ops.copy(x)
    return x


def _shape(x: Any) -> tuple[int | None, ...]:
    """The static shape; ``None`` for a dimension unknown while tracing (TensorFlow graphs)."""
    return tuple(None if d is None else int(d) for d in x.shape)


def _compatible(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(d is None or e is None or d == e for d, e in zip(a, b, strict=True))


def _same_rank(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """Keras' own losses' first step (``squeeze_or_expand_to_same_rank``): where the ranks differ by one and
    the longer shape ends in 1, squeeze that axis, or expand a rank-1 partner instead."""
    t_rank, p_rank = len(y_true.shape), len(y_pred.shape)
    if t_rank == p_rank + 1 and y_true.shape[-1] == 1:
        if p_rank == 1:
            y_pred = ops.expand_dims(y_pred, axis=-1)
        else:
            y_true = ops.squeeze(y_true, axis=-1)
    elif p_rank == t_rank + 1 and y_pred.shape[-1] == 1:
        if t_rank == 1:
            y_true = ops.expand_dims(y_true, axis=-1)
        else:
            y_pred = ops.squeeze(y_pred, axis=-1)
    return y_true, y_pred


def _check_dense_targets(y_true: Any, y_pred: Any, what: str) -> None:
    """``y_true`` must have ``y_pred``'s shape (dimensions unknown while tracing are not compared)."""
    t_shape, p_shape = _shape(y_true), _shape(y_pred)
    if not _compatible(t_shape, p_shape):
        raise ValueError(f"expected y_true ({what}) of y_pred's shape {p_shape}, got y_true of shape {t_shape}")


def _class_axis(y_pred: Any, axis: int, what: str = "class axis") -> int:
    """``axis`` of ``y_pred`` as a non-negative index; ValueError if ``y_pred`` has no such axis."""
    rank = len(y_pred.shape)
    if not -rank <= axis < rank:
        raise ValueError(
            f"expected y_pred with a {what} {axis} (rank >= {axis + 1 if axis >= 0 else -axis}), "
            f"got y_pred of shape {_shape(y_pred)}"
        )
    return axis % rank


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
    logit_offset: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float = 0.0,
) -> Any:
    """Per-sample softmax PolyLoss of tensors ``y_true`` (one-hot / probabilities) and ``y_pred`` of one
    shape (checked by the caller), classes along ``axis`` (a valid, non-negative axis).

    ``softcap`` c > 0 (logits only) caps them first, ``c * tanh(z / c)``; ``logit_offset`` (``tau *
    log(prior_c / sum(prior))``, logits only) is added to them, and ``z_loss * logsumexp(z)^2`` of those adjusted
    logits is added per row.
    """
    num_classes = y_pred.shape[axis]
    for name, values in (("alpha", alpha), ("prior", logit_offset)):
        if values is not None and num_classes is not None and len(values) != num_classes:
            raise ValueError(f"expected {name} of length C={num_classes} (one per class), got length {len(values)}")
    y_pred = ops.moveaxis(y_pred, axis, -1)
    y_true = ops.moveaxis(ops.cast(y_true, y_pred.dtype), axis, -1)
    if label_smoothing > 0.0:
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / num_classes
    if softcap:
        y_pred = softcap * ops.tanh(y_pred / softcap)
    if logit_offset is not None:
        y_pred = y_pred + ops.convert_to_tensor(list(logit_offset), dtype=y_pred.dtype)
    if from_logits:
        logp = ops.log_softmax(y_pred, axis=-1)
    else:
        eps = keras.config.epsilon()
        logp = ops.log(ops.clip(y_pred / ops.sum(y_pred, axis=-1, keepdims=True), eps, 1.0 - eps))
    if alpha is not None:
        weighted = y_true * ops.convert_to_tensor(list(alpha), dtype=y_pred.dtype)
    else:
        weighted = y_true
    ce = -ops.sum(weighted * logp, axis=-1)
    need_pt = gamma != 0.0 or any(e != 0.0 for e in epsilon)
    log_1m_pt = _logsumexp_last(logp + _safe_log(1.0 - y_true)) if need_pt else None
    loss = _combine(ce, log_1m_pt, gamma, epsilon)
    if z_loss != 0.0:
        loss = loss + z_loss * ops.square(ops.logsumexp(y_pred, axis=-1))
    return loss


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
    """Element-wise sigmoid PolyLoss of tensors ``y_true`` in [0, 1] and ``y_pred`` of one shape."""
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


def _check_prior(prior: object) -> list[float] | None:
    """Class counts or probabilities (length C): every entry a finite real number > 0."""
    if prior is None:
        return None
    values = list(prior) if isinstance(prior, Sequence) and not isinstance(prior, str) else None
    if values is None and hasattr(prior, "tolist"):
        values = prior.tolist()  # a NumPy array or a tensor
        values = values if isinstance(values, list) else None  # a 0-d array gives a number
    if values is None or not all(_is_real_number(p) for p in values):
        raise TypeError(
            f"expected prior to be a sequence of class counts or probabilities (real numbers) or None, "
            f"got {_describe(prior)}"
        )
    if not values or not all(_finite(float(p)) and p > 0 for p in values):
        raise ValueError(
            f"expected prior to be a non-empty sequence of finite values > 0 (class counts or probabilities), "
            f"got {values!r}"
        )
    return [float(p) for p in values]


def _check_logit_options(
    prior: object, tau: object, z_loss: object, from_logits: bool
) -> tuple[list[float] | None, float, float, tuple[float, ...] | None]:
    """Validate ``prior``/``tau``/``z_loss``; return them and the logit offset ``tau * log(prior / sum(prior))``."""
    prior_ = _check_prior(prior)
    tau_ = check_tau(tau)
    z_loss_ = check_z_loss(z_loss)
    if prior_ is not None and not from_logits:
        raise ValueError(
            "expected from_logits=True with a prior: the logit adjustment adds tau * log(prior) to the logits, "
            "and probabilities have no logits to adjust (pass the logits), got from_logits=False"
        )
    if z_loss_ != 0.0 and not from_logits:
        raise ValueError(
            "expected from_logits=True with z_loss > 0: the z-loss is logsumexp(logits)^2, "
            "and probabilities have no logits (pass the logits), got from_logits=False"
        )
    if prior_ is None:
        return None, tau_, z_loss_, None
    total = math.fsum(prior_)
    return prior_, tau_, z_loss_, tuple(tau_ * math.log(p / total) for p in prior_)


# --- seed 000: the PolyLoss paper's TensorFlow listings ----------------------------------------------------


def poly1_cross_entropy(epsilon: float = 1.0) -> Any:
    r"""The paper's ``poly1_cross_entropy(epsilon)``: returns ``fn(y_true, y_pred)`` = batch mean of Poly-1.

    .. math:: \mathrm{mean}\big(\mathrm{CE} + \epsilon (1 - p_t)\big),\quad p_t = \sum_c y_c\,\mathrm{softmax}(x)_c

    ``y_true`` one-hot or soft labels ``[batch, C]`` of ``y_pred``'s shape (ValueError otherwise; the TF
    listing's ``tf.nn.softmax_cross_entropy_with_logits`` would broadcast), ``y_pred`` logits.

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
        y_true, y_pred = _tensor(y_true), _tensor(y_pred)
        _check_dense_targets(y_true, y_pred, "one-hot or probability labels")
        axis = _class_axis(y_pred, -1)
        per_sample = _softmax_poly(
            y_true, y_pred, epsilon=eps, gamma=0.0, alpha=None, from_logits=True, label_smoothing=0.0, axis=axis
        )
        return ops.mean(per_sample)

    return _poly1_cross_entropy


def poly1_focal_loss(gamma: float = 2.0, epsilon: float = 1.0, alpha: float = 0.25) -> Any:
    r"""The paper's ``poly1_focal_loss(gamma, epsilon, alpha)``: ``fn(y_true, y_pred)`` = mean of Poly-1 focal.

    .. math:: \mathrm{mean}\big(\alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE} + \epsilon (1 - p_t)^{\gamma + 1}\big)

    Sigmoid, multi-label 0/1 ``y_true`` of ``y_pred``'s shape (ValueError otherwise), ``y_pred`` logits; the
    mean is over every element.  ``alpha < 0`` disables the alpha balance, as in the listing.

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
        y_true, y_pred = _tensor(y_true), _tensor(y_pred)
        _check_dense_targets(y_true, y_pred, "0/1 targets")
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


class _SoftmaxPolyLossBase(_PolyLossBase):
    """The softmax classes' shared options: ``prior``/``tau`` (logit adjustment), ``z_loss`` and ``softcap``."""

    def _set_logit_options(self, prior: object, tau: object, z_loss: object, softcap: object) -> None:
        self.prior, self.tau, self.z_loss, self._logit_offset = _check_logit_options(
            prior, tau, z_loss, self.from_logits
        )
        self.softcap, self._softcap = softcap, check_softcap(softcap)
        if self._softcap and not self.from_logits:
            raise ValueError("expected from_logits=True with softcap (it caps logits), got from_logits=False")

    def _dense(self, y_true: Any, y_pred: Any, *, gamma: float, alpha: Sequence[float] | None) -> Any:
        """Per-sample loss for one-hot / probability labels, after Keras' rank alignment and a shape check."""
        y_true, y_pred = _same_rank(_tensor(y_true), _tensor(y_pred))
        _check_dense_targets(y_true, y_pred, "one-hot or probability labels")
        return _softmax_poly(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            gamma=gamma,
            alpha=alpha,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=_class_axis(y_pred, self.axis),
            logit_offset=self._logit_offset,
            z_loss=self.z_loss,
            softcap=self._softcap,
        )


_LOGIT_OPTIONS_DOC = """
    ``prior`` (class counts or probabilities, length C, each finite and > 0) and ``tau``: the loss is
    computed on the adjusted logits ``z_c + tau * log(prior_c / sum(prior))``, so ``p_t``, the focal factor
    and the Poly terms all use the adjusted softmax (logit adjustment, Menon et al., ICLR 2021; ``tau=1`` is
    Balanced Softmax, Ren et al., NeurIPS 2020).  ``z_loss`` (>= 0) adds ``z_loss * logsumexp(z)^2`` per
    sample (PaLM's auxiliary z-loss) of the logits the loss sees, i.e. after the adjustment; it is part of
    the sample's loss, so ``sample_weight`` scales it and ``alpha`` does not.  Both need ``from_logits=True``
    (ValueError otherwise: probabilities have no logits to adjust).  ``tau`` alone, without a ``prior``,
    changes nothing.  ``softcap`` (``None`` or c > 0; ``from_logits=True``): logit soft-capping, every logit is
    ``c * tanh(z / c)`` before the adjustment (Gemma 2 / 3).  Without ``prior``, ``z_loss`` and ``softcap`` the
    numbers are the plain loss's, bit for bit.
"""


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyCategoricalCrossentropy(_SoftmaxPolyLossBase):
    r"""Poly-1 / Poly-N categorical cross-entropy: :math:`\mathrm{CE} + \sum_j \epsilon_j (1 - p_t)^j`.

    ``y_true`` one-hot or soft labels of ``y_pred``'s shape (ValueError otherwise, after Keras' own rank
    alignment: a trailing axis of size 1 is squeezed), ``y_pred`` probabilities (``from_logits=False``, the
    Keras default) or logits.  ``epsilon`` is one number (Poly-1) or a sequence (Poly-N); with ``epsilon=0``
    this is ``keras.losses.CategoricalCrossentropy``.  ``label_smoothing`` as there (``y (1 - ls) + ls / C``).
    {logit_options}
    Example:
        >>> import numpy as np, keras
        >>> from polyfocal.keras import PolyCategoricalCrossentropy
        >>> y_true = np.eye(4, dtype="float32")[[0, 3, 1]]
        >>> logits = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
        >>> ours = PolyCategoricalCrossentropy(epsilon=0.0, from_logits=True, label_smoothing=0.1)
        >>> theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
        >>> bool(np.isclose(float(ours(y_true, logits)), float(theirs(y_true, logits))))
        True
        >>> counts = [500, 50, 20, 5]  # Balanced Softmax: the cross-entropy of logits + log(prior)
        >>> balanced = PolyCategoricalCrossentropy(epsilon=0.0, from_logits=True, prior=counts)
        >>> shifted = logits + np.log(np.array(counts) / sum(counts)).astype("float32")
        >>> plain = keras.losses.CategoricalCrossentropy(from_logits=True)
        >>> bool(np.isclose(float(balanced(y_true, logits)), float(plain(y_true, shifted))))
        True
    """

    _hyper = ("epsilon", "from_logits", "label_smoothing", "axis", "prior", "tau", "z_loss", "softcap")

    def __init__(
        self,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "poly_categorical_crossentropy",
        dtype: Any = None,
        prior: Sequence[float] | None = None,
        tau: float = 1.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.axis = int(axis)
        self._set_logit_options(prior, tau, z_loss, softcap)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self._dense(y_true, y_pred, gamma=0.0, alpha=None)


@keras.saving.register_keras_serializable(package="polyfocal")
class SparsePolyCategoricalCrossentropy(_SoftmaxPolyLossBase):
    r"""Poly-1 / Poly-N categorical cross-entropy with integer labels (``SparseCategoricalCrossentropy``'s twin).

    ``y_true`` integer class indices of ``y_pred``'s shape without the class axis; the shapes Keras'
    ``SparseCategoricalCrossentropy`` accepts are accepted (a class axis of size 1, e.g. labels ``(N, 1)``
    for ``y_pred`` ``(N, C)``), any other gives a ValueError.  ``y_pred`` probabilities or logits, classes
    along ``axis`` (last by default).
    {logit_options}
    Example:
        >>> import numpy as np
        >>> from polyfocal.keras import PolyCategoricalCrossentropy, SparsePolyCategoricalCrossentropy
        >>> labels, logits = np.array([2, 0, 1]), np.random.default_rng(1).normal(size=(3, 3)).astype("float32")
        >>> sparse = SparsePolyCategoricalCrossentropy(epsilon=1.0, from_logits=True)(labels, logits)
        >>> dense = PolyCategoricalCrossentropy(epsilon=1.0, from_logits=True)(np.eye(3)[labels], logits)
        >>> bool(np.isclose(float(sparse), float(dense)))
        True
    """

    _hyper = ("epsilon", "from_logits", "axis", "prior", "tau", "z_loss", "softcap")

    def __init__(
        self,
        epsilon: float | Sequence[float] = 1.0,
        from_logits: bool = False,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "sparse_poly_categorical_crossentropy",
        dtype: Any = None,
        prior: Sequence[float] | None = None,
        tau: float = 1.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.axis = int(axis)
        self._set_logit_options(prior, tau, z_loss, softcap)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels, y_pred = _same_rank(_tensor(y_true), _tensor(y_pred))
        axis = _class_axis(y_pred, self.axis)
        if len(labels.shape) == len(y_pred.shape) and labels.shape[axis] == 1:
            labels = ops.squeeze(labels, axis=axis)
        expected = tuple(d for i, d in enumerate(_shape(y_pred)) if i != axis)
        if not _compatible(_shape(labels), expected):
            raise ValueError(
                f"expected integer labels of shape {expected} (y_pred's shape {_shape(y_pred)} without the class "
                f"axis {axis}, or with it of size 1), got {_shape(labels)}"
            )
        one_hot = ops.one_hot(ops.cast(labels, "int32"), y_pred.shape[axis], axis=axis, dtype=y_pred.dtype)
        return _softmax_poly(
            one_hot,
            y_pred,
            epsilon=self.epsilon,
            gamma=0.0,
            alpha=None,
            from_logits=self.from_logits,
            label_smoothing=0.0,
            axis=axis,
            logit_offset=self._logit_offset,
            z_loss=self.z_loss,
            softcap=self._softcap,
        )


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyCategoricalFocalCrossentropy(_SoftmaxPolyLossBase):
    r"""Softmax focal loss with Poly terms.

    .. math:: (1-p_t)^\gamma\,\mathrm{CE}_\alpha + \sum_j \epsilon_j (1-p_t)^{j+\gamma}

    ``alpha`` is per class (a sequence of length C, weighting only the focal-CE term) or ``None``; a scalar
    is refused.  ``p_t = sum_c y_c p_c``: for one-hot labels with ``epsilon=0`` and ``alpha=None`` this is
    ``keras.losses.CategoricalFocalCrossentropy(alpha=1.0)``; for soft labels Keras modulates each class by
    ``(1 - p_c)^gamma`` instead.  ``y_true`` must have ``y_pred``'s shape as for
    :class:`PolyCategoricalCrossentropy` (Keras' focal class broadcasts instead).  Defaults: ``gamma=2``,
    ``epsilon=1`` (Poly-1 focal).
    {logit_options}
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

    _hyper = (
        "gamma",
        "alpha",
        "epsilon",
        "from_logits",
        "label_smoothing",
        "axis",
        "prior",
        "tau",
        "z_loss",
        "softcap",
    )

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
        prior: Sequence[float] | None = None,
        tau: float = 1.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma = check_gamma(gamma)
        self.alpha = _check_class_alpha(alpha)
        self.epsilon = check_epsilon(epsilon)
        self.from_logits = bool(from_logits)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.axis = int(axis)
        self._set_logit_options(prior, tau, z_loss, softcap)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self._dense(y_true, y_pred, gamma=self.gamma, alpha=self.alpha)


for _cls in (PolyCategoricalCrossentropy, SparsePolyCategoricalCrossentropy, PolyCategoricalFocalCrossentropy):
    _cls.__doc__ = _cls.__doc__.replace("{logit_options}", _LOGIT_OPTIONS_DOC)  # type: ignore[union-attr]
del _cls


@keras.saving.register_keras_serializable(package="polyfocal")
class PolyBinaryFocalCrossentropy(_PolyLossBase):
    r"""Sigmoid focal loss with Poly terms.

    .. math:: \alpha_t (1-p_t)^\gamma\,\mathrm{BCE} + \sum_j \epsilon_j (1-p_t)^{j+\gamma}

    Multi-label ``y_true`` in [0, 1] of ``y_pred``'s shape (ValueError otherwise, after Keras' own rank
    alignment, as ``keras.losses.BinaryFocalCrossentropy``); the per-sample loss is the mean over ``axis``, as
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
        y_true, y_pred = _same_rank(_tensor(y_true), _tensor(y_pred))
        _check_dense_targets(y_true, y_pred, "0/1 or soft targets")
        axis = _class_axis(y_pred, self.axis, "reduced axis")
        per_element = _sigmoid_poly(
            y_true,
            y_pred,
            epsilon=self.epsilon,
            gamma=self.gamma,
            alpha=self.alpha,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )
        return ops.mean(per_element, axis=axis)
