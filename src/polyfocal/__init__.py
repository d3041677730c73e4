"""polyfocal: cross-entropy, focal loss and PolyLoss as one exact, numerically safe loss family.

Every loss is one PolyLoss (Leng et al., ICLR 2022): per element
``alpha_t * (1 - p_t)^gamma * CE + sum_j eps_j * (1 - p_t)^(j + gamma)``, with ``p_t`` from a softmax
(class indices / probabilities) or a sigmoid (multi-label / detection).

Layers: :mod:`polyfocal.reference` (plain float64 textbook formulas, the test oracle),
``polyfocal._core`` (the log-space implementation), :mod:`polyfocal.functional` and
:mod:`polyfocal.modules` (the public API, re-exported here) and :mod:`polyfocal.compat`
(signature- and number-exact shims of popular listings).
"""

from .functional import (
    cross_entropy,
    poly1_cross_entropy,
    poly1_focal_loss,
    poly_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from .modules import (
    CrossEntropyLoss,
    Poly1CrossEntropyLoss,
    Poly1FocalLoss,
    PolyLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
)
from .weights import class_balanced_alpha

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "Poly1CrossEntropyLoss",
    "Poly1FocalLoss",
    "PolyLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "class_balanced_alpha",
    "cross_entropy",
    "poly1_cross_entropy",
    "poly1_focal_loss",
    "poly_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
]
