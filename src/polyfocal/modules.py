"""``nn.Module`` twins of the functional losses: each class is the function it calls (kornia's pattern).

:class:`_Loss` stores the function's keyword arguments, validates them once with the function's own stage 1
(:func:`polyfocal.functional.check_options`: the same ``hyper()`` and vector checks, one rule in one place) at
construction and again when one is reassigned (a gamma schedule setting ``loss.gamma``), and ``forward`` is one call
of the public function.  Per-class vectors (``alpha`` / ``weight`` / ``prior`` / ``margin`` sequences, any tensor)
are buffers, so ``.to(device)``, ``.half()`` and ``state_dict()`` treat them like ``nn.CrossEntropyLoss``'s
``weight``; a call finds the scalars validated (stage 1 is memoised on their values: one dictionary lookup).
The constructor's signature is the function's (``inspect.signature`` and ``help`` show it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from . import _EXPORTS
from . import functional as PF

__all__ = list(_EXPORTS["modules"])  # the one list: polyfocal._EXPORTS

_VECTORS = ("alpha", "weight", "prior", "margin")  # a sequence given for one of these becomes a buffer


class _Loss(nn.Module):
    """Stores ``function``'s options; ``forward(input, target, normalizer=None)`` calls it once."""

    function: Callable[..., torch.Tensor]
    #: ``True`` writes the input gradient over the logits (see ``inplace`` in :func:`polyfocal.poly_loss`);
    #: set it on an instance: ``loss_fn.inplace = True``.
    inplace: bool = False
    _params: ClassVar[dict[str, inspect.Parameter]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        params = list(inspect.signature(cls.function).parameters.values())[2:]  # after input and target
        cls._params = {p.name: p for p in params if p.name != "inplace"}
        cls.__signature__ = inspect.Signature(list(cls._params.values()))  # type: ignore[attr-defined]

    def __init__(self, *args: object, **options: object) -> None:
        super().__init__()
        positional = [p.name for p in self._params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        if len(args) > len(positional):
            raise TypeError(f"expected at most {len(positional)} positional arguments, got {len(args)}")
        for name, value in zip(positional, args, strict=False):
            if name in options:
                raise TypeError(f"expected {name} once, got it both by position and by keyword")
            options[name] = value
        unknown = options.keys() - self._params.keys()
        if unknown:
            raise TypeError(f"expected keyword arguments among {sorted(self._params)}, got {sorted(unknown)}")
        missing = [p.name for p in self._params.values() if p.default is p.empty and p.name not in options]
        if missing:
            raise TypeError(f"expected {', '.join(missing)} (required by {self.function.__name__}), got none")
        values = {p.name: options.get(p.name, p.default) for p in self._params.values()}
        PF.check_options(self.function, values)  # stage 1, before anything is stored
        self._scalars: dict[str, object] = {}
        for name, value in values.items():
            self._store(name, value)

    def _store(self, name: str, value: object) -> None:
        """A tensor (or a per-class sequence) as a buffer, anything else as a plain value."""
        self._scalars.pop(name, None)
        self._buffers.pop(name, None)
        if isinstance(value, Sequence) and name in _VECTORS and not isinstance(value, str):
            value = torch.tensor(value, dtype=torch.float32)
        if isinstance(value, torch.Tensor):
            self.register_buffer(name, value)
        else:
            self._scalars[name] = value

    def __getattr__(self, name: str):
        scalars = self.__dict__.get("_scalars")
        if scalars is not None and name in scalars:
            return scalars[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._params and "_scalars" in self.__dict__:  # re-validated with the others, then stored
            PF.check_options(self.function, {**self._options(), name: value})
            self._store(name, value)
        else:
            super().__setattr__(name, value)

    def _options(self) -> dict[str, object]:
        return {**self._scalars, **self._buffers}

    def forward(self, input: torch.Tensor, target: object, normalizer: object = None) -> torch.Tensor:
        """The loss of ``function`` with the stored options; a ``normalizer`` given here overrides the stored one."""
        options = {**self._scalars, **self._buffers}
        if normalizer is not None:
            if "normalizer" not in options:
                raise TypeError(f"expected no normalizer for {type(self).__name__} ({self.function.__name__} has none)")
            options["normalizer"] = normalizer
        return self.function(input, target, inplace=self.inplace, **options)

    def __prepare_scriptable__(self) -> nn.Module:  # called by torch.jit.script: refuse it with a clear message
        PF._refuse_torchscript()
        return self

    def extra_repr(self) -> str:
        options = self._options()
        return ", ".join(
            f"{name}=tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"{name}={value!r}"
            for name, value in ((n, options.get(n)) for n in self._params)
            if value is not None
        )


class PolyLoss(_Loss):
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

    function = staticmethod(PF.poly_loss)


class CrossEntropyLoss(_Loss):
    """Module form of :func:`polyfocal.cross_entropy`, a drop-in for ``torch.nn.CrossEntropyLoss``.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.allclose(polyfocal.CrossEntropyLoss(label_smoothing=0.2)(x, y),
        ...                torch.nn.CrossEntropyLoss(label_smoothing=0.2)(x, y))
        True
    """

    function = staticmethod(PF.cross_entropy)


class Poly1CrossEntropyLoss(_Loss):
    """Module form of :func:`polyfocal.poly1_cross_entropy`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> crit = polyfocal.Poly1CrossEntropyLoss(epsilon=2.0)
        >>> torch.equal(crit(x, y), polyfocal.poly1_cross_entropy(x, y, epsilon=2.0))
        True
    """

    function = staticmethod(PF.poly1_cross_entropy)


class SoftmaxFocalLoss(_Loss):
    """Module form of :func:`polyfocal.softmax_focal_loss`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> crit = polyfocal.SoftmaxFocalLoss(gamma=2.0, alpha=[0.25, 0.75, 0.75])
        >>> torch.equal(crit(x, y), polyfocal.softmax_focal_loss(x, y, gamma=2.0, alpha=[0.25, 0.75, 0.75]))
        True
    """

    function = staticmethod(PF.softmax_focal_loss)


class LogitAdjustedLoss(_Loss):
    """Module form of :func:`polyfocal.logit_adjusted_loss`; ``prior`` is a buffer, checked at construction.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y, counts = torch.randn(4, 3), torch.tensor([0, 2, 1, 2]), [100, 10, 1]
        >>> crit = polyfocal.LogitAdjustedLoss(prior=counts, tau=1.5)
        >>> torch.equal(crit(x, y), polyfocal.logit_adjusted_loss(x, y, prior=counts, tau=1.5))
        True
    """

    function = staticmethod(PF.logit_adjusted_loss)


class BalancedSoftmaxLoss(_Loss):
    """Module form of :func:`polyfocal.balanced_softmax_loss` (:class:`LogitAdjustedLoss` with ``tau=1``).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
        >>> torch.equal(polyfocal.BalancedSoftmaxLoss(prior=[5, 3, 1])(x, y),
        ...             polyfocal.balanced_softmax_loss(x, y, prior=[5, 3, 1]))
        True
    """

    function = staticmethod(PF.balanced_softmax_loss)


class LDAMLoss(_Loss):
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

    function = staticmethod(PF.ldam_loss)


class SigmoidFocalLoss(_Loss):
    """Module form of :func:`polyfocal.sigmoid_focal_loss`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
        >>> torch.equal(polyfocal.SigmoidFocalLoss()(x, t), polyfocal.sigmoid_focal_loss(x, t))
        True
    """

    function = staticmethod(PF.sigmoid_focal_loss)


class Poly1FocalLoss(_Loss):
    """Module form of :func:`polyfocal.poly1_focal_loss` (sigmoid).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 3, 1, 2])  # index 3 = background
        >>> torch.equal(polyfocal.Poly1FocalLoss(epsilon=1.0)(x, y), polyfocal.poly1_focal_loss(x, y, epsilon=1.0))
        True
    """

    function = staticmethod(PF.poly1_focal_loss)


class AsymmetricLoss(_Loss):
    """Module form of :func:`polyfocal.asymmetric_loss`; ``forward(input, target, normalizer=None)``.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(4, 6), torch.randint(0, 2, (4, 6)).float()
        >>> torch.equal(polyfocal.AsymmetricLoss(gamma_neg=2.0)(x, t), polyfocal.asymmetric_loss(x, t, gamma_neg=2.0))
        True
    """

    function = staticmethod(PF.asymmetric_loss)


class VarifocalLoss(_Loss):
    """Module form of :func:`polyfocal.varifocal_loss`; ``forward(input, score, normalizer=None)`` with ``score`` a
    tensor of the input's shape or a ``(label, score)`` pair.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, q = torch.randn(4, 3), torch.rand(4, 3) * (torch.rand(4, 3) > 0.7)
        >>> torch.equal(polyfocal.VarifocalLoss()(x, q), polyfocal.varifocal_loss(x, q))
        True
    """

    function = staticmethod(PF.varifocal_loss)


class QualityFocalLoss(_Loss):
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

    function = staticmethod(PF.quality_focal_loss)
