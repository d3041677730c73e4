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

# The one list of the lazy top-level exports, by submodule (the TYPE_CHECKING imports below mirror it for type
# checkers; tests/test_readme.py keeps them equal).
_EXPORTS = {
    "functional": (
        "asymmetric_loss",
        "balanced_softmax_loss",
        "cross_entropy",
        "ldam_loss",
        "logit_adjusted_loss",
        "poly1_cross_entropy",
        "poly1_focal_loss",
        "poly_loss",
        "quality_focal_loss",
        "sigmoid_focal_loss",
        "softmax_focal_loss",
        "varifocal_loss",
    ),
    "modules": (
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
    ),
    "weights": (
        "adjust_logits",
        "class_balanced_alpha",
        "ldam_margins",
    ),
    "distributed": ("all_reduce_normalizer",),
    "linear": (
        "LinearCrossEntropyLoss",
        "LinearPoly1CrossEntropyLoss",
        "LinearPolyLoss",
        "LinearSoftmaxFocalLoss",
        "linear_cross_entropy",
        "linear_poly1_cross_entropy",
        "linear_poly_loss",
        "linear_softmax_focal_loss",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

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
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'polyfocal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
