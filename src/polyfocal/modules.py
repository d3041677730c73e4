"""``nn.Module`` twins of the functional losses: they store hyperparameters and call the function once.

Tensor-valued hyperparameters (``alpha`` and ``weight`` sequences, ``pos_weight``) are registered as
buffers, so ``.to(device)``, ``.half()`` and ``state_dict()`` treat them like ``nn.CrossEntropyLoss``'s
``weight``.  The scalar hyperparameters are validated once, at construction, into one frozen
:class:`polyfocal._args.Hyper` (and again when one is reassigned, e.g. a gamma schedule setting ``loss.gamma``);
a call runs only the tensor stage of the validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import functional as PF
from ._args import hyper
from ._params import (
    _is_real_number,
    check_activation,
    check_clip,
    check_epsilon,
    check_gamma,
    check_gamma_neg,
    check_ignore_index,
    check_label_smoothing,
    check_logit_scale,
    check_nonnegative,
    check_reduction,
    check_sigmoid_alpha,
    check_tau,
    check_z_loss,
)
from ._validation import long_tail_vector
from .functional import Activation, ClassVector, Epsilon, Normalizer, Reduction

__all__ = [
    "AsymmetricLoss",
    "BalancedSoftmaxLoss",
    "CrossEntropyLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "PolyLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
]


class _PolyFamilyLoss(nn.Module):
    """Stores and validates hyperparameters; subclasses define ``forward`` as one functional call."""

    _activation: str = "softmax"
    #: ``True`` writes the input gradient over the logits (see ``inplace`` in :func:`polyfocal.poly_loss`);
    #: set it on an instance: ``loss_fn.inplace = True``.
    inplace: bool = False

    def __init__(self, *, reduction: str, **hyper: object) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        activation = check_activation(hyper.pop("activation", self._activation))
        self.activation = activation
        self._names: list[str] = ["activation"]
        for name, value in hyper.items():
            self._check(name, value, activation)
            if isinstance(value, torch.Tensor) or (
                isinstance(value, Sequence) and name in ("alpha", "weight", *_VECTORS) and not isinstance(value, str)
            ):
                tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float32)
                self.register_buffer(name, tensor)
            else:
                setattr(self, name, value)
            self._names.append(name)
        self._names.append("reduction")
        self._rebuild_hyper()

    _epsilon_sequence = True
    _HYPER_NAMES = frozenset(
        ("activation", "epsilon", "gamma", "alpha", "ignore_index", "label_smoothing", "reduction", "tau")
    ) | frozenset(("logit_scale", "z_loss"))

    def _rebuild_hyper(self) -> None:
        """Stage 1 of the validation, once: the scalar hyperparameters as one :class:`polyfocal._args.Hyper`."""
        alpha = getattr(self, "alpha", None)
        object.__setattr__(
            self,
            "_hyper",
            hyper(
                activation=self.activation,
                epsilon=getattr(self, "epsilon", ()),
                gamma=getattr(self, "gamma", 0.0),
                alpha=alpha if self.activation == "sigmoid" else None,
                ignore_index=getattr(self, "ignore_index", None),
                label_smoothing=getattr(self, "label_smoothing", 0.0),
                reduction=self.reduction,
                epsilon_sequence=self._epsilon_sequence,
                tau=getattr(self, "tau", 1.0),
                logit_scale=getattr(self, "logit_scale", 1.0),
                z_loss=getattr(self, "z_loss", 0.0),
            ),
        )

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._HYPER_NAMES and "_hyper" in self.__dict__:  # a schedule reassigns gamma: validate again
            self._check(name, value, value if name == "activation" else self.activation)
            super().__setattr__(name, value)
            self._rebuild_hyper()
        elif name in _VECTORS and "_hyper" in self.__dict__:  # prior / margin: checked here, once, not per call
            self._check(name, value, self.activation)
            if value is not None and not isinstance(value, torch.Tensor):
                value = torch.tensor(value, dtype=torch.float32)
            super().__setattr__(name, value)
        else:
            super().__setattr__(name, value)

    def _loss(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        """The function's computation with the stored, already validated hyperparameters (stage 2 only)."""
        softmax = self.activation == "softmax"
        return PF._apply(
            input,
            target,
            self._hyper,
            alpha=getattr(self, "alpha", None) if softmax else None,
            weight=getattr(self, "weight", None),
            pos_weight=getattr(self, "pos_weight", None),
            normalizer=getattr(self, "normalizer", None) if normalizer is None else normalizer,
            prior=getattr(self, "prior", None),
            margin=getattr(self, "margin", None),
            values_checked=True,  # by _check, at construction / assignment
            inplace=self.inplace,
        )

    @staticmethod
    def _check(name: str, value: object, activation: str) -> None:
        if name == "reduction":
            check_reduction(value)
        elif name == "activation":
            check_activation(value)
        elif name == "gamma":
            check_gamma(value)
        elif name == "epsilon":
            check_epsilon(value)
        elif name == "label_smoothing":
            check_label_smoothing(value)
        elif name == "ignore_index":
            check_ignore_index(value)
        elif name == "alpha" and activation == "sigmoid":
            check_sigmoid_alpha(value)
        elif name == "tau":
            check_tau(value)
        elif name == "logit_scale":
            check_logit_scale(value)
            if activation == "sigmoid" and float(value) != 1.0:  # type: ignore[arg-type]
                raise ValueError(f"expected logit_scale=1 for activation='sigmoid', got {value!r}")
        elif name == "z_loss":
            check_z_loss(value)
            if activation == "sigmoid" and float(value) != 0.0:  # type: ignore[arg-type]
                raise ValueError(f"expected z_loss=0 for activation='sigmoid', got {value!r}")
        elif name in _VECTORS and value is not None:
            if activation == "sigmoid":
                raise ValueError(
                    f"expected {name}=None for activation='sigmoid' (a softmax-family argument), got a value"
                )
            is_tensor = isinstance(value, torch.Tensor)
            if is_tensor:
                length = value.shape[0] if value.ndim >= 1 else 0  # type: ignore[union-attr]
            else:
                length = len(value) if isinstance(value, Sequence) else 0
            device = value.device if is_tensor else torch.device("cpu")  # type: ignore[union-attr]
            long_tail_vector(value, name, length, device=device, positive=name == "prior")
        elif name == "alpha" and (_is_real_number(value) or (isinstance(value, torch.Tensor) and value.ndim == 0)):
            raise ValueError(
                f"expected a per-class alpha (sequence or tensor of length C) for activation='softmax', "
                f"got the scalar {value!r}; e.g. alpha=[a] + [1 - a] * (C - 1) "
                "or polyfocal.class_balanced_alpha(counts)"
            )

    def __prepare_scriptable__(self) -> nn.Module:  # called by torch.jit.script: refuse it with a clear message
        PF._refuse_torchscript()
        return self

    def extra_repr(self) -> str:
        parts = []
        for name in self._names:
            value = getattr(self, name)
            parts.append(
                f"{name}={value!r}" if not isinstance(value, torch.Tensor) else f"{name}=tensor{tuple(value.shape)}"
            )
        return ", ".join(parts)


_VECTORS = ("prior", "margin")  # the softmax family's long-tail vectors: values checked at construction


def _long_tail(prior: object, tau: object, margin: object, logit_scale: object, z_loss: object) -> dict[str, object]:
    """The long-tail keywords that differ from their defaults (the others stay out of the module's repr)."""
    given = {"prior": prior, "tau": tau, "margin": margin, "logit_scale": logit_scale, "z_loss": z_loss}
    defaults = {"prior": None, "tau": 1.0, "margin": None, "logit_scale": 1.0, "z_loss": 0.0}
    plain_default = {k for k, v in given.items() if type(v) in (int, float) and v == defaults[k]}
    return {k: v for k, v in given.items() if v is not defaults[k] and k not in plain_default}


class PolyLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.poly_loss`; ``forward(input, target, normalizer=None)``.

    A ``normalizer`` given to ``forward`` overrides the one given at construction.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> criterion = polyfocal.PolyLoss(epsilon=[1.0, 0.5], gamma=1.0)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.equal(criterion(x, y), polyfocal.poly_loss(x, y, epsilon=[1.0, 0.5], gamma=1.0))
        True
    """

    def __init__(
        self,
        *,
        activation: Activation = "softmax",
        epsilon: Epsilon = 1.0,
        gamma: float = 0.0,
        alpha: ClassVector | float = None,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        pos_weight: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        prior: ClassVector = None,
        tau: float = 1.0,
        margin: ClassVector = None,
        logit_scale: float = 1.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(
            activation=activation,
            epsilon=epsilon,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            pos_weight=pos_weight,
            reduction=reduction,
            **_long_tail(prior, tau, margin, logit_scale, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class CrossEntropyLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.cross_entropy`, a drop-in for ``torch.nn.CrossEntropyLoss``.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.allclose(polyfocal.CrossEntropyLoss(label_smoothing=0.2)(x, y),
        ...                torch.nn.CrossEntropyLoss(label_smoothing=0.2)(x, y))
        True
    """

    def __init__(
        self,
        weight: torch.Tensor | Sequence[float] | None = None,
        *,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        prior: ClassVector = None,
        tau: float = 1.0,
        margin: ClassVector = None,
        logit_scale: float = 1.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            **_long_tail(prior, tau, margin, logit_scale, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(input, target)


class Poly1CrossEntropyLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.poly1_cross_entropy`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> crit = polyfocal.Poly1CrossEntropyLoss(epsilon=2.0)
        >>> torch.equal(crit(x, y), polyfocal.poly1_cross_entropy(x, y, epsilon=2.0))
        True
    """

    _epsilon_sequence = False

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        alpha: ClassVector = None,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        reduction: Reduction = "mean",
        prior: ClassVector = None,
        tau: float = 1.0,
        margin: ClassVector = None,
        logit_scale: float = 1.0,
        z_loss: float = 0.0,
    ) -> None:
        check_epsilon(epsilon, allow_sequence=False)
        super().__init__(
            epsilon=epsilon,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            reduction=reduction,
            **_long_tail(prior, tau, margin, logit_scale, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class SoftmaxFocalLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.softmax_focal_loss`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> crit = polyfocal.SoftmaxFocalLoss(gamma=2.0, alpha=[0.25, 0.75, 0.75])
        >>> torch.equal(crit(x, y), polyfocal.softmax_focal_loss(x, y, gamma=2.0, alpha=[0.25, 0.75, 0.75]))
        True
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: ClassVector = None,
        epsilon: Epsilon = 0.0,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        reduction: Reduction = "mean",
        prior: ClassVector = None,
        tau: float = 1.0,
        margin: ClassVector = None,
        logit_scale: float = 1.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            reduction=reduction,
            **_long_tail(prior, tau, margin, logit_scale, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class LogitAdjustedLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.logit_adjusted_loss`; ``prior`` is a buffer, checked at construction.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y, counts = torch.randn(4, 3), torch.tensor([0, 2, 1, 2]), [100, 10, 1]
        >>> crit = polyfocal.LogitAdjustedLoss(prior=counts, tau=1.5)
        >>> torch.equal(crit(x, y), polyfocal.logit_adjusted_loss(x, y, prior=counts, tau=1.5))
        True
    """

    def __init__(
        self,
        *,
        prior: ClassVector,
        tau: float = 1.0,
        gamma: float = 0.0,
        epsilon: Epsilon = 0.0,
        alpha: ClassVector = None,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        reduction: Reduction = "mean",
        z_loss: float = 0.0,
    ) -> None:
        if prior is None:
            raise ValueError("expected prior (class counts or probabilities, length C), got None")
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            reduction=reduction,
            prior=prior,
            tau=tau,
            **_long_tail(None, 1.0, None, 1.0, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Module form of :func:`polyfocal.balanced_softmax_loss` (:class:`LogitAdjustedLoss` with ``tau=1``).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.equal(polyfocal.BalancedSoftmaxLoss(prior=[5, 3, 1])(x, y),
        ...             polyfocal.balanced_softmax_loss(x, y, prior=[5, 3, 1]))
        True
    """

    def __init__(
        self,
        *,
        prior: ClassVector,
        gamma: float = 0.0,
        epsilon: Epsilon = 0.0,
        alpha: ClassVector = None,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        reduction: Reduction = "mean",
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(
            prior=prior,
            tau=1.0,
            gamma=gamma,
            epsilon=epsilon,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            reduction=reduction,
            z_loss=z_loss,
        )


class LDAMLoss(_PolyFamilyLoss):
    """Module form of :func:`polyfocal.ldam_loss`; ``margin`` is a buffer (e.g. :func:`polyfocal.ldam_margins`).
    ``logit_scale`` defaults to 1, as on every loss (pass the paper's 30 for cosine logits).

    For the paper's deferred re-weighting (DRW), assign ``criterion.weight = polyfocal.class_balanced_alpha(counts,
    beta=0.9999)`` at the DRW epoch (or build the module with it then).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> m = polyfocal.ldam_margins([100, 10, 1])
        >>> torch.equal(polyfocal.LDAMLoss(margin=m)(x, y), polyfocal.ldam_loss(x, y, margin=m))
        True
    """

    def __init__(
        self,
        *,
        margin: ClassVector,
        logit_scale: float = 1.0,
        gamma: float = 0.0,
        epsilon: Epsilon = 0.0,
        alpha: ClassVector = None,
        weight: ClassVector = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        normalizer: Normalizer = None,
        reduction: Reduction = "mean",
        z_loss: float = 0.0,
    ) -> None:
        if margin is None:
            raise ValueError("expected margin (per-class margins, length C), got None")
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            normalizer=normalizer,
            reduction=reduction,
            margin=margin,
            logit_scale=logit_scale,
            **_long_tail(None, 1.0, None, 1.0, z_loss),
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class _SigmoidFamilyLoss(_PolyFamilyLoss):
    _activation = "sigmoid"

    def __init__(
        self,
        *,
        gamma: float,
        alpha: float | None,
        epsilon: Epsilon,
        normalizer: Normalizer,
        weight: torch.Tensor | None,
        pos_weight: torch.Tensor | None,
        ignore_index: int | None,
        label_smoothing: float,
        reduction: Reduction,
    ) -> None:
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._loss(input, target, normalizer)


class SigmoidFocalLoss(_SigmoidFamilyLoss):
    """Module form of :func:`polyfocal.sigmoid_focal_loss`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
        >>> torch.equal(polyfocal.SigmoidFocalLoss()(x, t), polyfocal.sigmoid_focal_loss(x, t))
        True
    """

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        epsilon: Epsilon = 0.0,
        normalizer: Normalizer = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )


class Poly1FocalLoss(_SigmoidFamilyLoss):
    """Module form of :func:`polyfocal.poly1_focal_loss` (sigmoid).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 3, 1, 2])  # index 3 = background
        >>> torch.equal(polyfocal.Poly1FocalLoss(epsilon=1.0)(x, y), polyfocal.poly1_focal_loss(x, y, epsilon=1.0))
        True
    """

    _epsilon_sequence = False

    def __init__(
        self,
        *,
        epsilon: float = 1.0,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
        normalizer: Normalizer = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
    ) -> None:
        check_epsilon(epsilon, allow_sequence=False)
        super().__init__(
            gamma=gamma,
            alpha=alpha,
            epsilon=epsilon,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )


# --- the dense-detection and multi-label members of the sigmoid family ---------------------------------------


class _DetectionLoss(_PolyFamilyLoss):
    """Sigmoid-family modules whose hyperparameters go beyond ``_PolyFamilyLoss``'s (asymmetric, varifocal, quality
    focal): each subclass says how its attributes map onto :func:`polyfocal._args.hyper`."""

    _activation = "sigmoid"
    _EXTRA: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._HYPER_NAMES = _PolyFamilyLoss._HYPER_NAMES | frozenset(cls._EXTRA)

    def _hyper_kwargs(self) -> dict[str, object]:
        raise NotImplementedError

    def _rebuild_hyper(self) -> None:
        h = hyper(activation="sigmoid", reduction=self.reduction, **self._hyper_kwargs())  # type: ignore[arg-type]
        object.__setattr__(self, "_hyper", h)

    @staticmethod
    def _check(name: str, value: object, activation: str) -> None:
        if name == "gamma_neg":
            check_gamma_neg(value)
        elif name == "clip":
            check_clip(value)
        elif name in ("gamma_pos", "beta"):
            check_nonnegative(value, name)
        else:
            _PolyFamilyLoss._check(name, value, activation)

    def _detection_loss(self, input: torch.Tensor, target: object, normalizer: Normalizer) -> torch.Tensor:
        label, score = PF._score_pair(target)
        return PF._apply(
            input,
            label,  # type: ignore[arg-type]
            self._hyper,
            weight=getattr(self, "weight", None),
            pos_weight=getattr(self, "pos_weight", None),
            normalizer=getattr(self, "normalizer", None) if normalizer is None else normalizer,
            score=score,
            inplace=self.inplace,
        )


class AsymmetricLoss(_DetectionLoss):
    """Module form of :func:`polyfocal.asymmetric_loss`; ``forward(input, target, normalizer=None)``.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(4, 6), torch.randint(0, 2, (4, 6)).float()
        >>> torch.equal(polyfocal.AsymmetricLoss(gamma_neg=2.0)(x, t), polyfocal.asymmetric_loss(x, t, gamma_neg=2.0))
        True
    """

    _EXTRA = ("gamma_pos", "gamma_neg", "clip", "detach_modulator")

    def __init__(
        self,
        *,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        epsilon: Epsilon = 0.0,
        alpha: float | None = None,
        normalizer: Normalizer = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
        detach_modulator: bool = False,
    ) -> None:
        super().__init__(
            gamma_pos=gamma_pos,
            gamma_neg=gamma_neg,
            clip=clip,
            epsilon=epsilon,
            alpha=alpha,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
            detach_modulator=detach_modulator,
        )

    def _hyper_kwargs(self) -> dict[str, object]:
        return dict(
            epsilon=self.epsilon,
            gamma=self.gamma_pos,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            detach_modulator=self.detach_modulator,
            gamma_neg=self.gamma_neg,
            clip=self.clip,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor, normalizer: Normalizer = None) -> torch.Tensor:
        return self._detection_loss(input, target, normalizer)


class VarifocalLoss(_DetectionLoss):
    """Module form of :func:`polyfocal.varifocal_loss`; ``forward(input, score, normalizer=None)`` with ``score`` a
    tensor of the input's shape or a ``(label, score)`` pair.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, q = torch.randn(4, 3), torch.rand(4, 3) * (torch.rand(4, 3) > 0.7)
        >>> torch.equal(polyfocal.VarifocalLoss()(x, q), polyfocal.varifocal_loss(x, q))
        True
    """

    _EXTRA = ("iou_weighted",)

    def __init__(
        self,
        *,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        normalizer: Normalizer = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: Reduction = "mean",
    ) -> None:
        check_nonnegative(alpha, "alpha")
        super().__init__(
            alpha=float(alpha),
            gamma=gamma,
            iou_weighted=iou_weighted,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    @staticmethod
    def _check(name: str, value: object, activation: str) -> None:
        if name == "alpha":  # VFL's alpha weighs the negatives: any number >= 0 (mmdet asserts alpha >= 0)
            check_nonnegative(value, "alpha")
        else:
            _DetectionLoss._check(name, value, activation)

    def _hyper_kwargs(self) -> dict[str, object]:
        return dict(
            epsilon=0.0,
            gamma=self.gamma,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            variant="varifocal",
            iou_weighted=bool(self.iou_weighted),
        )

    def forward(self, input: torch.Tensor, score: object, normalizer: Normalizer = None) -> torch.Tensor:
        return self._detection_loss(input, score, normalizer)


class QualityFocalLoss(_DetectionLoss):
    """Module form of :func:`polyfocal.quality_focal_loss`; ``forward(input, score, normalizer=None)`` with
    ``score`` a tensor of the input's shape or a ``(label, score)`` pair.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, label, score = torch.randn(4, 3), torch.tensor([0, 3, 2, 3]), torch.rand(4)
        >>> torch.equal(polyfocal.QualityFocalLoss(beta=1.5)(x, (label, score)),
        ...             polyfocal.quality_focal_loss(x, (label, score), beta=1.5))
        True
    """

    _EXTRA = ("beta",)

    def __init__(
        self,
        *,
        beta: float = 2.0,
        epsilon: Epsilon = 0.0,
        normalizer: Normalizer = None,
        weight: torch.Tensor | None = None,
        pos_weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(
            beta=beta,
            epsilon=epsilon,
            normalizer=normalizer,
            weight=weight,
            pos_weight=pos_weight,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def _hyper_kwargs(self) -> dict[str, object]:
        return dict(epsilon=self.epsilon, gamma=self.beta, ignore_index=self.ignore_index, variant="quality")

    def forward(self, input: torch.Tensor, score: object, normalizer: Normalizer = None) -> torch.Tensor:
        return self._detection_loss(input, score, normalizer)
