"""Loss specifications: ``NAME[:KEY=VALUE[,VALUE...][,KEY=VALUE...]]`` strings, parsed and built.

Grammar: a name, then optionally ``:`` and comma-separated ``key=value`` parameters; a comma-separated
token without ``=`` is one more value of the previous key (so ``polyN:eps=1,0.5,gamma=1`` is
``eps=(1, 0.5)``, ``gamma=1``).  Names and their parameters (defaults in brackets):

==============  ==========  =========================================================================
name            activation  parameters
==============  ==========  =========================================================================
``ce``          softmax     ``alpha`` [none], ``beta`` [0.999], ``ls`` (label smoothing) [0]
``focal``       softmax     ``gamma`` [2], ``alpha`` [none], ``beta``, ``eps`` [0], ``ls``
``poly1``       softmax     ``eps`` [1], ``alpha`` [none], ``beta``, ``ls``
``polyN``       softmax     ``eps`` (one or more values, required), ``gamma`` [0], ``alpha``, ``beta``, ``ls``
``sigmoid-focal`` sigmoid   ``gamma`` [2], ``alpha`` [0.25], ``eps`` [0]
``poly1-focal`` sigmoid     ``eps`` [1], ``gamma`` [2], ``alpha`` [0.25]
``la``          softmax     logit-adjusted loss: ``tau`` [1], ``alpha``, ``beta``, ``ls``
``balanced-softmax`` softmax  Balanced Softmax (``la`` with tau = 1): ``alpha``, ``beta``, ``ls``
``ldam``        softmax     LDAM: ``max_margin`` [0.5], ``s`` (logit scale) [1], ``drw`` (epoch) [none], ``ls``
==============  ==========  =========================================================================

``la`` / ``balanced-softmax`` take the prior from the training class counts (:func:`polyfocal.logit_adjusted_loss`);
``ldam`` the margins :func:`polyfocal.ldam_margins` of those counts, and with ``drw=E`` the deferred re-weighting
of Cao et al.: from epoch ``E`` (0-based) on, ``weight = polyfocal.class_balanced_alpha(counts, beta=0.9999)``.
Its ``s`` defaults to 1, not the paper's 30: that value is for cosine (normalised) logits, ours are a plain
linear layer's.

``alpha`` of a softmax loss is ``none`` or ``cb`` (class-balanced: :func:`polyfocal.class_balanced_alpha`
of the training class counts with ``beta``); of a sigmoid loss a number in [0, 1] or ``none``.
Sigmoid losses are normalised by the number of positives (RetinaNet's convention), softmax losses by
the number of samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a spec needs no torch: argument errors stay fast
    import torch

__all__ = ["DEFAULT_LOSSES", "LossSpec", "build_loss", "parse_loss_spec", "spec_names_and_keys"]

DEFAULT_LOSSES = ("ce", "focal:gamma=2", "poly1:eps=1", "poly1:eps=2", "poly1-focal", "la:tau=1")

_SOFTMAX_COMMON = {"alpha": None, "beta": 0.999, "ls": 0.0}
# name -> (activation, default parameters); a default of ``()`` marks a required sequence parameter.
_LOSSES: dict[str, tuple[str, dict[str, object]]] = {
    "ce": ("softmax", dict(_SOFTMAX_COMMON)),
    "focal": ("softmax", {"gamma": 2.0, "eps": 0.0, **_SOFTMAX_COMMON}),
    "poly1": ("softmax", {"eps": 1.0, **_SOFTMAX_COMMON}),
    "polyN": ("softmax", {"eps": (), "gamma": 0.0, **_SOFTMAX_COMMON}),
    "sigmoid-focal": ("sigmoid", {"gamma": 2.0, "alpha": 0.25, "eps": 0.0}),
    "poly1-focal": ("sigmoid", {"eps": 1.0, "gamma": 2.0, "alpha": 0.25}),
    "la": ("softmax", {"tau": 1.0, **_SOFTMAX_COMMON}),
    "balanced-softmax": ("softmax", dict(_SOFTMAX_COMMON)),
    "ldam": ("softmax", {"max_margin": 0.5, "s": 1.0, "drw": None, "ls": 0.0}),
}
_ALWAYS_SHOWN = {
    "focal": ("gamma",),
    "poly1": ("eps",),
    "polyN": ("eps",),
    "sigmoid-focal": ("gamma",),
    "la": ("tau",),
}
_ALIASES = {
    "polyn": "polyN",
    "poly1focal": "poly1-focal",
    "sigmoid_focal": "sigmoid-focal",
    "cross-entropy": "ce",
    "logit-adjusted": "la",
    "balanced_softmax": "balanced-softmax",
}
# numeric parameters: the closed range they must lie in (an open lower bound for s)
_RANGES = {
    "gamma": (0.0, math.inf),
    "beta": (0.0, 1.0),
    "ls": (0.0, 1.0),
    "tau": (-math.inf, math.inf),
    "max_margin": (0.0, math.inf),
    "s": (0.0, math.inf),
}


def _fmt(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


@dataclass(frozen=True)
class LossSpec:
    """A parsed loss specification: ``name``, ``activation`` and every parameter (defaults filled in)."""

    name: str
    activation: str
    params: dict[str, object] = field(hash=False)

    @property
    def label(self) -> str:
        """Canonical spec string: the main parameters plus every non-default one, e.g. ``poly1:eps=2``.

        Two spellings of the same loss (``poly1`` and ``poly1:eps=1``) get the same label."""
        defaults = _LOSSES[self.name][1]
        shown = [k for k in defaults if k in _ALWAYS_SHOWN.get(self.name, ()) or self.params[k] != defaults[k]]
        if not shown:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(self.params[k])}" for k in shown)

    @property
    def slug(self) -> str:
        """A file-name-safe form of :attr:`label`."""
        out = self.label.replace(":", "_").replace("=", "").replace(",", "_")
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in out)


def _number(key: str, text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number for {key!r} in loss spec {spec!r}, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number for {key!r} in loss spec {spec!r}, got {text!r}")
    return value


def spec_names_and_keys() -> str:
    """Every loss name with its parameter keys, from the table the parser uses: ``"ce (alpha, beta, ls), ..."``
    (``compare --help`` prints it, so the help cannot leave a name or a key out)."""
    return ", ".join(f"{name} ({', '.join(defaults)})" for name, (_, defaults) in _LOSSES.items())


def parse_loss_spec(spec: str) -> LossSpec:
    """Parse ``NAME[:KEY=VALUE,...]`` (see the module docstring) into a :class:`LossSpec`.

    Raises ``ValueError`` naming the known names / parameters for an unknown one.

    Example:
        >>> from polyfocal.experiments.losses import parse_loss_spec
        >>> s = parse_loss_spec("polyN:eps=1,0.5,gamma=1")
        >>> s.params["eps"], s.params["gamma"], s.label
        ((1.0, 0.5), 1.0, 'polyN:eps=1,0.5,gamma=1')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"expected a loss spec like 'poly1:eps=2', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = _ALIASES.get(name.lower(), name if name == "polyN" else name.lower())
    if name not in _LOSSES:
        raise ValueError(f"expected a loss name out of {', '.join(_LOSSES)}, got {name!r} in loss spec {spec!r}")
    activation, defaults = _LOSSES[name]
    raw: dict[str, list[str]] = {}
    key = None
    for token in filter(None, (t.strip() for t in rest.split(","))) if rest else ():
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if key == "epsilon":
                key = "eps"
            if key not in defaults:
                raise ValueError(
                    f"expected a parameter of {name!r} out of {', '.join(defaults)}, got {key!r} in loss spec {spec!r}"
                )
            if key in raw:
                raise ValueError(f"expected each parameter once, got {key!r} twice in loss spec {spec!r}")
            raw[key] = [value.strip()]
        elif key is None:
            raise ValueError(f"expected KEY=VALUE after ':', got {token!r} in loss spec {spec!r}")
        else:
            raw[key].append(token)
    params = dict(defaults)
    for key, values in raw.items():
        if key != "eps" or name != "polyN":
            if len(values) != 1:
                raise ValueError(f"expected one value for {key!r}, got {len(values)} in loss spec {spec!r}")
        if key == "eps":
            eps = tuple(_number(key, v, spec) for v in values)
            params[key] = eps if name == "polyN" else eps[0]
        elif key == "alpha":
            text = values[0].lower()
            if activation == "softmax":
                if text not in ("none", "cb"):
                    raise ValueError(
                        f"expected alpha=cb (class-balanced) or alpha=none for a softmax loss, got {values[0]!r}"
                        f" in loss spec {spec!r}"
                    )
                params[key] = None if text == "none" else "cb"
            elif text == "none":
                params[key] = None
            else:
                a = _number(key, values[0], spec)
                if not 0.0 <= a <= 1.0:
                    raise ValueError(f"expected alpha in [0, 1] or none, got {values[0]!r} in loss spec {spec!r}")
                params[key] = a
        elif key == "drw":
            if values[0].lower() == "none":
                params[key] = None
            else:
                e = _number(key, values[0], spec)
                if e < 0 or e != int(e):
                    raise ValueError(f"expected drw=EPOCH (an integer >= 0) or none, got {values[0]!r} in {spec!r}")
                params[key] = int(e)
        else:
            v = _number(key, values[0], spec)
            lo, hi = _RANGES[key]
            if not lo <= v <= hi or (key == "s" and v == 0.0):
                raise ValueError(f"expected {key} in [{lo:g}, {hi:g}], got {values[0]!r} in loss spec {spec!r}")
            params[key] = v
    if name == "polyN" and not params["eps"]:
        raise ValueError(f"expected polyN:eps=E1[,E2,...] (one coefficient or more), got {spec!r}")
    return LossSpec(name=name, activation=activation, params=params)


LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def build_loss(spec: LossSpec, *, class_counts: Sequence[int]) -> LossFn:
    """Return ``fn(logits, target, normalizer) -> scalar``: the summed element loss divided by ``normalizer``.

    ``normalizer`` is the number of samples (softmax) or of positives (sigmoid; here also one per sample),
    all-reduced across ranks by the caller (:func:`polyfocal.all_reduce_normalizer`).  For a softmax loss
    without weights this is the ``reduction="mean"`` loss; sigmoid losses use the library's ``normalizer=``.
    """
    import polyfocal

    p = spec.params
    if spec.activation == "sigmoid":

        def sigmoid_fn(logits: torch.Tensor, target: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
            return polyfocal.sigmoid_focal_loss(
                logits,
                target,
                gamma=p["gamma"],
                alpha=p["alpha"],
                epsilon=p["eps"],
                normalizer=normalizer.to(logits.dtype),
                reduction="sum",
            )

        return sigmoid_fn

    alpha = None
    if p.get("alpha") == "cb":
        alpha = polyfocal.class_balanced_alpha(list(class_counts), beta=p["beta"])
    eps = p.get("eps", 0.0)
    gamma = p.get("gamma", 0.0)
    if spec.name in ("la", "balanced-softmax", "ldam"):
        return _LongTailLoss(spec, class_counts, alpha)

    def softmax_fn(logits: torch.Tensor, target: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
        a = None if alpha is None else alpha.to(device=logits.device, dtype=logits.dtype)
        if spec.name == "ce" and a is None:
            total = polyfocal.cross_entropy(logits, target, reduction="sum", label_smoothing=p["ls"])
        else:
            total = polyfocal.poly_loss(
                logits, target, epsilon=eps, gamma=gamma, alpha=a, label_smoothing=p["ls"], reduction="sum"
            )
        return total / normalizer.to(logits.dtype)

    return softmax_fn


class _LongTailLoss:
    """``la`` / ``balanced-softmax`` / ``ldam`` (see the module docstring): the prior or the margins come from the
    training class counts.  :meth:`set_epoch` (called by the runner at the start of every epoch) switches LDAM's
    deferred re-weighting on at epoch ``drw``."""

    def __init__(self, spec: LossSpec, class_counts: Sequence[int], alpha: torch.Tensor | None) -> None:
        import torch

        import polyfocal

        self.spec, self.alpha, self.epoch = spec, alpha, 0
        self.counts = torch.tensor([float(c) for c in class_counts])
        self.margin = polyfocal.ldam_margins(self.counts, spec.params["max_margin"]) if spec.name == "ldam" else None
        self.drw_weight = polyfocal.class_balanced_alpha(self.counts, beta=0.9999) if spec.name == "ldam" else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
        import polyfocal

        p, dev, dt = self.spec.params, logits.device, logits.dtype
        a = None if self.alpha is None else self.alpha.to(device=dev, dtype=dt)
        if self.spec.name == "ldam":
            drw = p["drw"] is not None and self.epoch >= p["drw"]
            total = polyfocal.ldam_loss(
                logits,
                target,
                margin=self.margin.to(device=dev, dtype=dt),
                logit_scale=p["s"],
                weight=self.drw_weight.to(device=dev, dtype=dt) if drw else None,
                label_smoothing=p["ls"],
                reduction="sum",
            )
        else:
            total = polyfocal.logit_adjusted_loss(
                logits,
                target,
                prior=self.counts.to(device=dev, dtype=dt),
                tau=p.get("tau", 1.0),
                alpha=a,
                label_smoothing=p["ls"],
                reduction="sum",
            )
        return total / normalizer.to(dt)
