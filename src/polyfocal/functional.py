r"""Public functional API: every loss is one PolyLoss.

Per element, with :math:`p_t` the predicted probability of the target,

.. math::

    \ell = \alpha_t (1 - p_t)^{\gamma}\,\mathrm{CE} + w_t \sum_{j=1}^{N} \epsilon_j (1 - p_t)^{j + \gamma}

* cross-entropy: :math:`\gamma = 0`, no :math:`\epsilon`;
* focal loss (Lin et al., 2017, https://arxiv.org/abs/1708.02002): :math:`\gamma > 0`;
* Poly-1 / Poly-N (Leng et al., ICLR 2022, https://arxiv.org/abs/2204.12511): one / N coefficients
  :math:`\epsilon_j` added to CE or to focal loss.

``alpha`` weights only the focal-CE term; the :math:`\epsilon` terms are not alpha-weighted
(as in the Poly-1 focal listing of the PolyLoss paper, reproduced by seed 000).  The paper's appendix
also mentions an alpha-weighted polynomial term; multiply by your own factor if you want that variant.
``weight`` (softmax: per class, as in :func:`torch.nn.functional.cross_entropy`; sigmoid: element-wise,
as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`) scales the whole element loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch

from . import _EXPORTS, kernels
from ._args import Args, Call, check_vectors, hyper, prepare
from ._params import check_nonnegative

__all__ = list(_EXPORTS["functional"])  # the one list: polyfocal._EXPORTS

Reduction: TypeAlias = Literal["none", "mean", "sum"]
Activation: TypeAlias = Literal["softmax", "sigmoid"]
Epsilon: TypeAlias = "float | Sequence[float]"
ClassVector: TypeAlias = "Sequence[float] | torch.Tensor | None"
Normalizer: TypeAlias = "float | torch.Tensor | None"


_TENSORS = ("weight", "pos_weight", "normalizer", "prior", "margin", "score")
_NO_INPUT = object()  # check_options' stand-in for the input: stage 1 only


def check_options(function: Callable[..., torch.Tensor], options: dict) -> Args:
    """Stage 1 of a public ``function`` for ``options`` without an input (a module's construction): the scalars
    through the function's own ``hyper()`` call and the per-class vectors' own checks; raises as the call would."""
    return function(_NO_INPUT, _NO_INPUT, **options)


def _run(options: dict, **fixed: object) -> torch.Tensor:
    """The one path of every public function (and, through them, every module).  ``options`` is the function's
    ``locals()`` -- its bound arguments, by the names of :class:`polyfocal._args.Args` -- and ``fixed`` what the
    function sets itself (``activation``, ``variant``, ``epsilon_sequence``): stage 1 (the scalars, memoised),
    stage 2 (the tensors), then the loss."""
    input, target, inplace = options.pop("input"), options.pop("target"), options.pop("inplace")
    tensors = {name: options.pop(name) for name in _TENSORS if name in options}
    options.update(fixed)
    if "alpha" in options and options.get("activation", "softmax") == "softmax":
        tensors["alpha"] = options.pop("alpha")  # softmax alpha is per class: a tensor of stage 2
    h = hyper(**options)
    if input is _NO_INPUT:
        check_vectors(h, tensors)
        return h  # type: ignore[return-value]
    call = prepare(input, target, h, **tensors)
    if inplace is not False:
        kernels.check_inplace(input, call.x, call.target, call.args, inplace)
        if inplace:
            return _shaped(kernels.loss_inplace(call.x, call.target, call.args), call)
    return _shaped(kernels.loss(call.x, call.target, call.args), call)


def _shaped(out: torch.Tensor, call: Call) -> torch.Tensor:
    return out.reshape(call.out_shape) if call.args.reduction == "none" else out


def _renamed(options: dict, **names: str) -> dict:
    """``options`` with keys renamed (``gamma_pos="gamma"``: a public name for a field of another name).  The
    renamed options are focusing parameters, checked here under their public name (errors say ``beta``)."""
    for old, new in names.items():
        options[new] = check_nonnegative(options.pop(old), old)
    return options


def poly_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    detach_modulator: bool = False,
    prior: ClassVector = None,
    tau: float = 1.0,
    margin: ClassVector = None,
    logit_scale: float = 1.0,
    z_loss: float = 0.0,
    gamma_neg: float | None = None,
    clip: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""PolyLoss: cross-entropy, focal loss and their polynomial expansions in one function.

    .. math::

        \ell = (1 - p_t)^{\gamma}\,\mathrm{CE}_{\alpha} + w_t \sum_{j=1}^{N} \epsilon_j (1 - p_t)^{j+\gamma}

    **softmax** (``activation="softmax"``, default): ``input`` is ``(N, C)``, ``(N, C, d1, ..., dk)`` or
    ``(C,)`` with the class dimension 1 (0 for a 1-D input), as in :func:`torch.nn.functional.cross_entropy`.
    ``target`` is class indices of shape ``(N, d1, ..., dk)`` or probabilities of the input's shape.
    With target distribution :math:`q` (one-hot, label-smoothed
    :math:`q = (1-\text{ls})\,\text{onehot} + \text{ls}/C`, or given), :math:`p = \mathrm{softmax}(x)`:
    :math:`p_t = \sum_c q_c p_c`, :math:`\mathrm{CE}_\alpha = -\sum_c \alpha_c w_c q_c \log p_c` and
    :math:`w_t = \sum_c q_c w_c`.  For a hard class index :math:`y` this is
    :math:`w_y [\alpha_y (1-p_y)^\gamma (-\log p_y) + \sum_j \epsilon_j (1-p_y)^{j+\gamma}]`.
    ``weight``, ``ignore_index``, ``label_smoothing`` and ``reduction`` behave exactly as in
    ``F.cross_entropy``: ``"mean"`` divides by the summed target weights ``sum_i w[y_i]`` of the
    non-ignored elements (their count without ``weight``; all ignored gives ``nan``, as torch does) for
    class indices, and by the number of elements for probabilities.

    **sigmoid** (``activation="sigmoid"``): element-wise, ``input`` of any shape.  ``target`` is floats
    (soft allowed, values in [0, 1]) or 0/1 integers of the input's shape, or class indices with the class
    dim 1 dropped, where index ``C`` is background (an all-zero row, the PaddleDetection trick) and
    ``ignore_index`` masks the whole row.  :math:`\mathrm{CE}` is BCE-with-logits (``pos_weight`` as in
    ``F.binary_cross_entropy_with_logits``), :math:`p_t = t p + (1-t)(1-p)`,
    :math:`\alpha_t = \alpha t + (1-\alpha)(1-t)`.  ``weight`` broadcasts against the input and scales the
    element loss; ``label_smoothing`` maps ``t`` to ``t (1 - ls) + ls / 2`` (Keras' binary convention);
    ``"mean"`` divides by the number of non-ignored elements.

    ``normalizer`` (both activations) divides the per-element loss before the reduction, with
    broadcasting (PaddlePaddle's ``sigmoid_focal_loss`` semantics, e.g. the number of positives).

    **Long-tail options** (softmax only; all off by default, and then the numbers are exactly those without them).
    With the prior :math:`\pi` (class counts or probabilities, normalised to probabilities), target margins
    :math:`m` and logit scale :math:`s`, every term above (:math:`p`, :math:`p_t`, CE, focal and Poly terms) is
    computed on the adjusted logits

    .. math::

        z'_c = s\,\big(z_c + \tau \log \pi_c - m_y [c = y]\big)

    (logit adjustment, Menon et al., ICLR 2021, https://arxiv.org/abs/2007.07314; ``tau=1`` is Balanced Softmax,
    Ren et al., NeurIPS 2020; LDAM margins and scale, Cao et al., NeurIPS 2019, https://arxiv.org/abs/1906.07413).
    The margin is subtracted from the target class ``y`` only, also under label smoothing (class-index targets
    only).  ``z_loss`` (:math:`\lambda`, PaLM's z-loss, Liger's ``lse_square_scale``) adds
    :math:`\lambda\,(\log\sum_c e^{z'_c})^2` to each element's loss: not weighted by ``alpha`` / ``weight``,
    divided by ``normalizer``, 0 for ignored elements and averaged by the same ``"mean"`` denominator.

    Computation is in log space (finite gradients for ``gamma`` in (0, 1) at ``p_t -> 1`` and logits of
    magnitude 1e4) and in float32 for float16/bfloat16 input; the loss is returned in float32 for those
    inputs and the input gradient has the input's dtype.

    Args:
        input: logits, floating point.
        target: class indices (integer) or probabilities / binary targets (floating point), see above.
        activation: ``"softmax"`` (one class per element) or ``"sigmoid"`` (independent binary labels).
        epsilon: :math:`\epsilon_1` (a number, Poly-1) or :math:`(\epsilon_1, ..., \epsilon_N)` (Poly-N).
            Any real value; the paper tunes :math:`\epsilon_1 \in [-1, \infty)`.
        gamma: focusing parameter, ``>= 0``; 0 gives (poly) cross-entropy.
        alpha: softmax: per-class sequence or tensor of length C (a scalar is refused);
            sigmoid: a number in [0, 1] for the positives, or ``None`` to disable.
        weight: softmax: per-class rescaling, shape ``(C,)``; sigmoid: element-wise, broadcastable to input.
        ignore_index: class index whose elements contribute nothing (class-index targets only);
            ``None`` disables it.
        label_smoothing: in [0, 1].
        normalizer: a positive number or a tensor broadcastable to the element loss; divides it.
        pos_weight: sigmoid only: weight of positive examples, broadcastable to the input.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        inplace: write the input gradient over the logits' storage during the forward (as Liger-Kernel does):
            no logits-sized allocation on the native CPU path (on the other paths the gradient is computed into
            a buffer and copied over the logits: same result, no memory saved). The logits are destroyed: do not
            use them after the loss (their version counter is bumped, so autograd raises where another node
            saved them for its backward). Needs logits that require grad and come out of an operation (not a
            leaf), eager mode and the fused path (class-index or dense sigmoid targets, no gradient for other
            arguments); a second or double backward through the loss is refused. Every public function takes
            it. Default ``False``.
        detach_modulator: treat :math:`(1-p_t)^\gamma` as a constant for autograd, as listings that compute
            :math:`p_t` from ``logpt.data`` do (clcarwin's ``FocalLoss``); the gradient is then not the focal
            loss's.  Default ``False``.
        prior: softmax only: class counts or probabilities, length C, every entry finite and > 0; the loss sees
            ``z + tau * log(prior / sum(prior))``.  Undo it at inference with :func:`polyfocal.adjust_logits`.
        tau: the prior's temperature, finite (``0``: no adjustment).
        margin: softmax class indices only: per-class margins (length C, finite, >= 0) subtracted from the target
            logit; :func:`polyfocal.ldam_margins` gives LDAM's.
        logit_scale: ``s > 0`` multiplying the (adjusted) logits.
        z_loss: :math:`\lambda \ge 0`, the weight of the z-loss.
        softcap: softmax only: ``None`` or :math:`c > 0`: logit soft-capping (Gemma 2 / 3), every logit becomes
            :math:`c \tanh(z / c)` before ``prior`` / ``margin`` / ``logit_scale`` (and its gradient the chain
            rule's :math:`1 - \tanh^2(z / c)` times the capped logit's).
        gamma_neg: sigmoid only: the negatives' focusing parameter of the asymmetric loss (``None``: ``gamma``);
            see :func:`asymmetric_loss` for how it combines with soft targets.
        clip: sigmoid only: the asymmetric loss's probability margin, in [0, 1); 0 disables it.

    Returns:
        The reduced loss (0-D) or, with ``reduction="none"``, the element loss: the input's shape without
        the class dim (softmax) or the input's shape (sigmoid).

    Raises:
        TypeError, ValueError, IndexError: for bad input, before any computation.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
        >>> poly1 = polyfocal.poly_loss(x, y, epsilon=1.0)
        >>> p_t = x.softmax(1).gather(1, y[:, None]).squeeze(1)
        >>> torch.allclose(poly1, (F.cross_entropy(x, y, reduction="none") + 1 - p_t).mean())
        True
    """
    return _run(locals())


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Cross-entropy: :func:`poly_loss` with ``gamma=0`` and no polynomial term.

    .. math:: \ell = -\sum_c w_c q_c \log \mathrm{softmax}(x)_c

    Gives the numbers of :func:`torch.nn.functional.cross_entropy` for every argument it takes
    (class indices or probabilities, ``weight``, ``ignore_index``, ``label_smoothing``, ``reduction``,
    unbatched ``(C,)`` input), with float32 math for float16/bfloat16 input.  ``prior``, ``tau``, ``margin``,
    ``logit_scale``, ``z_loss`` and ``softcap`` are the options of :func:`poly_loss` (off by default).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y, w = torch.randn(4, 3, 2), torch.tensor([[0, 2], [1, -100], [2, 2], [0, 1]]), torch.rand(3)
        >>> torch.allclose(polyfocal.cross_entropy(x, y, w, label_smoothing=0.1),
        ...                F.cross_entropy(x, y, w, label_smoothing=0.1))
        True
    """
    return _run(locals())


def poly1_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Poly-1 cross-entropy (Leng et al., ICLR 2022, eq. 3): softmax :func:`poly_loss` with ``gamma=0``.

    .. math:: \ell = \mathrm{CE} + \epsilon (1 - p_t)

    ``epsilon`` is a number; the paper reports ``epsilon=2`` for ImageNet classification and
    ``epsilon=-1`` for some detection settings.  See :func:`poly_loss` for the remaining arguments.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
        >>> torch.allclose(polyfocal.poly1_cross_entropy(x, y, epsilon=0.0), polyfocal.cross_entropy(x, y))
        True
    """
    return _run(locals(), epsilon_sequence=False)


def softmax_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Softmax (multi-class) focal loss (Lin et al., ICCV 2017), optionally with Poly terms.

    .. math:: \ell = \alpha_t (1 - p_t)^{\gamma} (-\log p_t) + \sum_j \epsilon_j (1 - p_t)^{j+\gamma}

    ``alpha`` is per class (length C) or ``None``.  See :func:`poly_loss` for the remaining arguments.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
        >>> ce = F.cross_entropy(x, y, reduction="none")
        >>> torch.allclose(polyfocal.softmax_focal_loss(x, y, gamma=2.0, reduction="none"),
        ...                (1 - torch.exp(-ce)) ** 2 * ce)
        True
    """
    return _run(locals())


def logit_adjusted_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Logit-adjusted loss (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment", eq. 10):
    the softmax PolyLoss of :func:`poly_loss` on :math:`z + \tau \log \pi`.

    .. math::

        \ell = -\log \frac{e^{z_y + \tau \log \pi_y}}{\sum_c e^{z_c + \tau \log \pi_c}}
        \quad\text{(gamma = 0, no epsilon; focal and Poly terms use the same adjusted softmax)}

    ``prior`` is the training class counts or frequencies (length C, entries finite and > 0, normalised to
    probabilities).  Predict with the plain logits (the adjustment is in the loss only); ``tau = 1`` is
    :func:`balanced_softmax_loss`.  See :func:`poly_loss` for the remaining arguments.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y, counts = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 0, 1]), torch.tensor([100.0, 10.0, 1.0])
        >>> la = polyfocal.logit_adjusted_loss(x, y, prior=counts, tau=2.0)
        >>> torch.allclose(la, F.cross_entropy(x + 2.0 * torch.log(counts / counts.sum()), y))
        True
    """
    if prior is None:  # a required option: the loss is not logit_adjusted_loss without it
        raise ValueError("expected prior (class counts or probabilities, length C), got None")
    return _run(locals())


def balanced_softmax_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Balanced Softmax (Ren et al., NeurIPS 2020): :func:`logit_adjusted_loss` with ``tau = 1``.

    .. math:: \ell = -\log \frac{\pi_y e^{z_y}}{\sum_c \pi_c e^{z_c}}

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y, counts = torch.randn(5, 4), torch.tensor([0, 3, 1, 0, 2]), torch.tensor([50.0, 20.0, 5.0, 1.0])
        >>> torch.allclose(polyfocal.balanced_softmax_loss(x, y, prior=counts), F.cross_entropy(x + counts.log(), y))
        True
    """
    if prior is None:  # a required option: the loss is not balanced_softmax_loss without it
        raise ValueError("expected prior (class counts or probabilities, length C), got None")
    return _run(locals())


def ldam_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    softcap: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""LDAM loss (Cao et al., NeurIPS 2019): the softmax PolyLoss of :math:`s\,(z - m_y\,\mathrm{onehot}_y)`.

    .. math:: \ell = -\log \frac{e^{s (z_y - m_y)}}{e^{s (z_y - m_y)} + \sum_{c \ne y} e^{s z_c}}

    ``margin`` per class, e.g. :func:`polyfocal.ldam_margins` of the training counts (:math:`m_c \propto
    n_c^{-1/4}`).  ``logit_scale`` is the paper's ``s`` and, as on every loss, defaults to 1 (no scaling): the
    paper's ``s = 30`` is for cosine logits (normalised features and weights); pass ``logit_scale=30.0`` with those,
    not with a plain linear layer's logits.  The paper's deferred re-weighting (DRW) passes
    ``weight=polyfocal.class_balanced_alpha(counts, beta=0.9999)`` from a later epoch on.  See :func:`poly_loss` for
    the remaining arguments.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
        >>> m = polyfocal.ldam_margins([100, 10, 1], max_margin=0.5)
        >>> z = x - m[y, None] * F.one_hot(y, 3)
        >>> torch.allclose(polyfocal.ldam_loss(x, y, margin=m), F.cross_entropy(z, y))
        True
        >>> torch.allclose(polyfocal.ldam_loss(x, y, margin=m, logit_scale=30.0), F.cross_entropy(30.0 * z, y))
        True
    """
    if margin is None:  # a required option: the loss is not ldam_loss without it
        raise ValueError("expected margin (per-class margins, length C, e.g. polyfocal.ldam_margins(counts)), got None")
    return _run(locals())


def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    inplace: bool = False,
) -> torch.Tensor:
    r"""Sigmoid (binary / multi-label) focal loss (Lin et al., ICCV 2017), as used by RetinaNet.

    .. math:: \ell = \alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE}(x, t) + \sum_j \epsilon_j (1 - p_t)^{j+\gamma}

    With ``epsilon=0`` this gives the numbers of torchvision's ``sigmoid_focal_loss`` (our
    ``alpha=None`` is their ``alpha=-1``; our default reduction is ``"mean"``, theirs ``"none"``) and of
    PaddlePaddle's ``sigmoid_focal_loss`` with ``normalizer``.  See :func:`poly_loss` for the arguments.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, t = torch.randn(5, 3), torch.randint(0, 2, (5, 3)).float()
        >>> torch.allclose(polyfocal.sigmoid_focal_loss(x, t, gamma=0.0, alpha=None),
        ...                F.binary_cross_entropy_with_logits(x, t))
        True
    """
    return _run(locals(), activation="sigmoid")


def poly1_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    inplace: bool = False,
) -> torch.Tensor:
    r"""Poly-1 focal loss (Leng et al., ICLR 2022, eq. 4), sigmoid activation.

    .. math:: \ell = \alpha_t (1 - p_t)^{\gamma}\,\mathrm{BCE}(x, t) + \epsilon (1 - p_t)^{1+\gamma}

    The polynomial term is not alpha-weighted (the paper's listing).  See :func:`poly_loss`.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(5, 3), torch.randint(0, 2, (5, 3)).float()
        >>> p_t = t * x.sigmoid() + (1 - t) * (1 - x.sigmoid())
        >>> fl = polyfocal.sigmoid_focal_loss(x, t, reduction="none")
        >>> torch.allclose(polyfocal.poly1_focal_loss(x, t, epsilon=1.0, reduction="none"), fl + (1 - p_t) ** 3)
        True
    """
    return _run(locals(), activation="sigmoid", epsilon_sequence=False)


def _refuse_torchscript() -> None:
    raise TypeError(
        "expected torch.compile or eager mode, got torch.jit.script: polyfocal's losses are Python functions with "
        "keyword-only arguments and custom ops that TorchScript cannot compile; use torch.compile(model) (fullgraph "
        "works), or torch.jit.trace a model that returns logits and apply the loss outside it"
    )


for _public in (
    balanced_softmax_loss,
    cross_entropy,
    ldam_loss,
    logit_adjusted_loss,
    poly1_cross_entropy,
    poly1_focal_loss,
    poly_loss,
    sigmoid_focal_loss,
    softmax_focal_loss,
):
    _public.__prepare_scriptable__ = _refuse_torchscript  # type: ignore[attr-defined]  # read by torch.jit.script


# --- the dense-detection and multi-label members of the sigmoid family ---------------------------------------


def asymmetric_loss(
    input: torch.Tensor,
    target: torch.Tensor,
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
    inplace: bool = False,
) -> torch.Tensor:
    r"""Asymmetric loss (ASL; Ridnik et al., ICCV 2021, https://arxiv.org/abs/2009.14119) for multi-label input.

    With :math:`s = \sigma(x)` and the probability margin :math:`s_m = \max(s - \text{clip}, 0)`:

    .. math::

        \ell = -t\,(1-s)^{\gamma_+} \log s \;-\; (1-t)\,s_m^{\gamma_-} \log(1 - s_m)

    for 0/1 targets (``clip=0`` disables the margin).  It is the sigmoid :func:`poly_loss` with ``gamma=gamma_pos``,
    ``gamma_neg`` and ``clip``.  **Soft targets** combine as in the rest of the family (and in the ASL listings):
    one :math:`p_t = t s + (1-t)(1-s_m)`, the exponent :math:`\gamma_t = t\gamma_+ + (1-t)\gamma_-` and
    :math:`\ell = \alpha_t (1-p_t)^{\gamma_t}\,(-w_+ t\log s - (1-t)\log(1-s_m)) + \sum_j \epsilon_j
    (1-p_t)^{j+\gamma_t}`; so ``gamma_neg == gamma_pos`` with ``clip=0`` is exactly :func:`sigmoid_focal_loss`
    (``alpha=None``) for every target.  ``epsilon`` adds the Poly-N terms of that :math:`1-p_t`.

    ``detach_modulator=True`` is ASL's ``disable_torch_grad_focal_loss``: the factor :math:`(1-p_t)^{\gamma_t}` is
    a constant for autograd (the composite path computes it).  The default reduction is ``"mean"`` over the
    elements; the original listings return ``-loss.sum()`` (:class:`polyfocal.compat.timm.AsymmetricLossMultiLabel`).
    See :func:`poly_loss` for ``weight``, ``pos_weight``, ``normalizer``, ``ignore_index`` and class-index targets.

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, t = torch.randn(4, 6), torch.randint(0, 2, (4, 6)).float()
        >>> s = x.sigmoid()
        >>> s_m = (s - 0.05).clamp(min=0)
        >>> manual = -(t * torch.log(s) + (1 - t) * s_m**4 * torch.log(1 - s_m))
        >>> torch.allclose(polyfocal.asymmetric_loss(x, t, reduction="none"), manual, atol=1e-6)
        True
    """
    return _run(_renamed(locals(), gamma_pos="gamma"), activation="sigmoid")


def _score_pair(target: object) -> tuple[object, object]:
    """``(label, score)`` (mmdet's pair form) or a plain target."""
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError(f"expected target to be a tensor or a (label, score) pair, got {len(target)} items")
        return target[0], target[1]
    return target, None


def varifocal_loss(
    input: torch.Tensor,
    score: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    normalizer: Normalizer = None,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: Reduction = "mean",
    inplace: bool = False,
) -> torch.Tensor:
    r"""Varifocal loss (VFL; Zhang et al., CVPR 2021, https://arxiv.org/abs/2008.13367), as in mmdet.

    ``score`` is the IoU-aware classification target :math:`q \in [0, 1]` of the input's shape (or mmdet-style
    ``(label, score)``: class indices, index C = background, and the target class's score).  With
    :math:`s = \sigma(x)`:

    .. math::

        \ell = \begin{cases} -q\,\big(q \log s + (1-q)\log(1-s)\big) & q > 0 \\
                              -\alpha\, s^{\gamma} \log(1-s) & q = 0 \end{cases}

    ``iou_weighted=False`` drops the leading :math:`q` of the positives.  ``alpha`` (>= 0) weighs the negatives
    only (not the :math:`\alpha` of focal loss: VFL's negatives equal :func:`sigmoid_focal_loss`'s with
    ``alpha=1 - alpha_vfl`` when that is in [0, 1]).  No ``epsilon``: the positives are a soft-target BCE with no
    modulating factor and the negatives a focal term, so there is no single :math:`1 - p_t` to expand.
    ``pos_weight`` scales the :math:`\log s` part of the positives.  Scores outside [0, 1] raise ``ValueError``
    (checked on CPU tensors).  ``"mean"`` divides by the number of (non-ignored) elements; mmdet's ``avg_factor``
    is ``reduction="sum"`` with ``normalizer=avg_factor`` (see :class:`polyfocal.compat.mmdet.VarifocalLoss`).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> import polyfocal
        >>> x, q = torch.randn(4, 3), torch.tensor([[0.0, 0.7, 0.0], [0.9, 0.0, 0.0], [0.0] * 3, [0.0, 0.0, 0.3]])
        >>> s = x.sigmoid()
        >>> weight = torch.where(q > 0, q, 0.75 * s**2)
        >>> manual = F.binary_cross_entropy_with_logits(x, q, reduction="none") * weight
        >>> torch.allclose(polyfocal.varifocal_loss(x, q, reduction="none"), manual)
        True
    """
    target, score = _score_pair(score)  # the target, and mmdet's per-anchor score beside class indices (or None)
    return _run(locals(), activation="sigmoid", variant="varifocal")


def quality_focal_loss(
    input: torch.Tensor,
    score: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    beta: float = 2.0,
    epsilon: Epsilon = 0.0,
    normalizer: Normalizer = None,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: Reduction = "mean",
    inplace: bool = False,
) -> torch.Tensor:
    r"""Quality focal loss (QFL, the classification part of GFL; Li et al., NeurIPS 2020,
    https://arxiv.org/abs/2006.04388).

    .. math:: \ell = |q - s|^{\beta}\,\mathrm{BCE}(x, q) + \sum_j \epsilon_j |q - s|^{j+\beta}

    with :math:`s = \sigma(x)` and the soft target :math:`q \in [0, 1]`: ``score`` of the input's shape, or mmdet's
    ``(label, score)`` pair (class indices ``(N,)`` with index C = background, and the per-anchor quality score of
    the target class).  For 0/1 targets QFL is :func:`sigmoid_focal_loss` with ``gamma=beta, alpha=None``, and
    ``epsilon`` gives the Poly-N terms of :math:`|q - s|`.  At :math:`s = q` exactly the modulating factor is 0 and
    its derivative is taken as 0 (for ``beta < 1`` the true derivative diverges as :math:`s \to q`).
    ``"mean"`` divides by the number of (non-ignored) elements; mmdet sums over classes and averages over anchors
    (:class:`polyfocal.compat.mmdet.QualityFocalLoss`).

    Example:
        >>> import torch
        >>> import polyfocal
        >>> x, label, score = torch.randn(4, 3), torch.tensor([0, 3, 2, 3]), torch.tensor([0.8, 0.0, 0.4, 0.0])
        >>> q = torch.zeros(4, 3)
        >>> q[0, 0], q[2, 2] = 0.8, 0.4
        >>> torch.allclose(polyfocal.quality_focal_loss(x, (label, score)), polyfocal.quality_focal_loss(x, q))
        True
    """
    target, score = _score_pair(score)  # the target, and mmdet's per-anchor score beside class indices (or None)
    return _run(_renamed(locals(), beta="gamma"), activation="sigmoid", variant="quality")


for _public in (asymmetric_loss, quality_focal_loss, varifocal_loss):
    _public.__prepare_scriptable__ = _refuse_torchscript  # type: ignore[attr-defined]
