"""polyfocal: cross-entropy, focal loss and PolyLoss as one exact, numerically safe loss family.

Every loss is one PolyLoss (Leng et al., ICLR 2022): per element
``alpha_t * (1 - p_t)^gamma * CE + sum_j eps_j * (1 - p_t)^(j + gamma)``, with ``p_t`` from a softmax
(class indices / probabilities) or a sigmoid (multi-label / detection).

Layers: :mod:`polyfocal.reference` (plain float64 textbook formulas, the test oracle),
``polyfocal._core`` (the log-space implementation), :mod:`polyfocal.functional` and
:mod:`polyfocal.modules` (the public API, re-exported here), :mod:`polyfocal.compat`
(signature- and number-exact shims of popular listings) and :mod:`polyfocal.keras` (Keras 3 losses).

The PyTorch API is imported lazily on first attribute access, so ``import polyfocal.keras`` works on a
machine without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "balanced_softmax_loss": "functional",
    "cross_entropy": "functional",
    "ldam_loss": "functional",
    "logit_adjusted_loss": "functional",
    "poly1_cross_entropy": "functional",
    "poly1_focal_loss": "functional",
    "poly_loss": "functional",
    "sigmoid_focal_loss": "functional",
    "softmax_focal_loss": "functional",
    "asymmetric_loss": "functional",
    "varifocal_loss": "functional",
    "quality_focal_loss": "functional",
    "CrossEntropyLoss": "modules",
    "Poly1CrossEntropyLoss": "modules",
    "Poly1FocalLoss": "modules",
    "PolyLoss": "modules",
    "SigmoidFocalLoss": "modules",
    "SoftmaxFocalLoss": "modules",
    "BalancedSoftmaxLoss": "modules",
    "LDAMLoss": "modules",
    "LogitAdjustedLoss": "modules",
    "adjust_logits": "weights",
    "AsymmetricLoss": "modules",
    "VarifocalLoss": "modules",
    "QualityFocalLoss": "modules",
    "class_balanced_alpha": "weights",
    "ldam_margins": "weights",
    "all_reduce_normalizer": "distributed",
    "linear_poly_loss": "linear",
    "linear_cross_entropy": "linear",
    "linear_softmax_focal_loss": "linear",
    "linear_poly1_cross_entropy": "linear",
    "LinearPolyLoss": "linear",
    "LinearCrossEntropyLoss": "linear",
    "LinearSoftmaxFocalLoss": "linear",
    "LinearPoly1CrossEntropyLoss": "linear",
}

__all__ = [
    "AsymmetricLoss",
    "BalancedSoftmaxLoss",
    "CrossEntropyLoss",
    "LDAMLoss",
    "LinearCrossEntropyLoss",
    "LinearPoly1CrossEntropyLoss",
    "LinearPolyLoss",
    "LinearSoftmaxFocalLoss",
    "LogitAdjustedLoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "PolyLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "VarifocalLoss",
    "__version__",
    "adjust_logits",
    "all_reduce_normalizer",
    "asymmetric_loss",
    "balanced_softmax_loss",
    "class_balanced_alpha",
    "cross_entropy",
    "ldam_loss",
    "ldam_margins",
    "linear_cross_entropy",
    "linear_poly1_cross_entropy",
    "linear_poly_loss",
    "linear_softmax_focal_loss",
    "logit_adjusted_loss",
    "poly1_cross_entropy",
    "poly1_focal_loss",
    "poly_loss",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "varifocal_loss",
]

if TYPE_CHECKING:
    from .distributed import all_reduce_normalizer
    from .functional import (
        asymmetric_loss,
        balanced_softmax_loss,
        cross_entropy,
        ldam_loss,
        logit_adjusted_loss,
        poly1_cross_entropy,
        poly1_focal_loss,
        poly_loss,
        quality_focal_loss,
        sigmoid_focal_loss,
        softmax_focal_loss,
        varifocal_loss,
    )
    from .linear import (
        LinearCrossEntropyLoss,
        LinearPoly1CrossEntropyLoss,
        LinearPolyLoss,
        LinearSoftmaxFocalLoss,
        linear_cross_entropy,
        linear_poly1_cross_entropy,
        linear_poly_loss,
        linear_softmax_focal_loss,
    )
    from .modules import (
        AsymmetricLoss,
        BalancedSoftmaxLoss,
        CrossEntropyLoss,
        LDAMLoss,
        LogitAdjustedLoss,
        Poly1CrossEntropyLoss,
        Poly1FocalLoss,
        PolyLoss,
        QualityFocalLoss,
        SigmoidFocalLoss,
        SoftmaxFocalLoss,
        VarifocalLoss,
    )
    from .weights import adjust_logits, class_balanced_alpha, ldam_margins


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'polyfocal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
