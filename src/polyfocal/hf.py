"""Hugging Face ``transformers`` integration (the ``hf`` extra): the fused linear loss in causal-LM training, and
polyfocal losses as a ``Trainer`` ``compute_loss_func``.

* :func:`patch_causal_lm` / :func:`unpatch`: in training, with ``labels`` (or ``shift_labels``), the causal LM's
  forward runs its base model, then :func:`polyfocal.linear_poly_loss` on the last hidden states and the output
  embedding (``model.get_output_embeddings()``: tied or not), and returns ``logits=None``.  The ``(tokens,
  vocab)`` logits are never built.  It is one wrapper for every model that exposes ``base_model`` and
  ``get_output_embeddings()`` (Llama, Mistral, Qwen, Gemma, GPT-2, ...), not a per-architecture copy of
  ``forward``.  Eval mode, calls without labels and ``generate`` run the original forward unchanged.
  Semantics follow ``ForCausalLMLoss``: labels shifted by one (or ``shift_labels`` as given), ``ignore_index``
  -100, and with ``num_items_in_batch`` (what ``Trainer`` passes under gradient accumulation) the summed loss
  divided by it.  ``config.final_logit_softcapping`` (Gemma 2/3) becomes ``softcap``; ``config.logit_scale``
  (Cohere) and ``config.logits_scaling`` (Granite, a divisor) become ``logit_scale``.
* :func:`loss_function`: a ``compute_loss_func`` for ``Trainer`` for sequence / token classification with the
  focal, Poly-1, logit-adjusted (prior from label counts), LDAM or class-balanced losses -- the imbalanced
  text-classification case that otherwise needs a ``Trainer`` subclass.

``transformers`` is imported only inside these functions: ``import polyfocal.hf`` works without it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._params import _describe

__all__ = ["loss_function", "patch_causal_lm", "unpatch"]

_ATTR = "_polyfocal_loss_kwargs"
_LOSS_KEYS = ("labels", "shift_labels", "num_items_in_batch", "logits_to_keep", "ignore_index", "return_dict")


def _text_config(model: torch.nn.Module) -> Any:
    config = getattr(model, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _model_options(model: torch.nn.Module, options: dict) -> dict:
    """softcap / logit_scale from the config, unless given."""
    config = _text_config(model)
    out = dict(options)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None and "softcap" not in out:
        out["softcap"] = float(cap)
    if "logit_scale" not in out:
        scale = getattr(config, "logit_scale", None)
        divisor = getattr(config, "logits_scaling", None)
        if isinstance(scale, (int, float)) and scale != 1:
            out["logit_scale"] = float(scale)
        elif isinstance(divisor, (int, float)) and divisor != 1:
            out["logit_scale"] = 1.0 / float(divisor)
    return out


def patch_causal_lm(model: torch.nn.Module, **loss_kwargs: Any) -> torch.nn.Module:
    """Make ``model``'s training forward use the fused linear loss (see the module docstring); returns ``model``.

    ``loss_kwargs`` are :func:`polyfocal.linear_poly_loss`'s options (``gamma``, ``epsilon``, ``label_smoothing``,
    ``z_loss``, ``softcap``, ``chunk_size``, ...); the default is plain cross-entropy (``epsilon=0``), the
    numbers of the unpatched model.  Patching again replaces the options; :func:`unpatch` restores the model.

    Raises:
        TypeError: ``model`` is not a module with ``get_output_embeddings()`` returning a layer with a 2-D
            ``weight`` and a ``base_model`` distinct from itself; a loss option is unknown or out of range.
    """
    from .linear import LinearPolyLoss

    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "get_output_embeddings", None)):
        raise TypeError(f"expected a transformers causal-LM model (with get_output_embeddings), got {_describe(model)}")
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.ndim != 2:
        raise TypeError(
            "expected get_output_embeddings() to return a layer with a 2-D weight (vocab, hidden), got "
            f"{_describe(head)}"
        )
    base = getattr(model, "base_model", None)
    if not isinstance(base, torch.nn.Module) or base is model:
        raise TypeError(f"expected a model whose base_model is its decoder, got {type(model).__name__}")
    for key in ("activation", "pos_weight", "normalizer", "reduction"):
        if key in loss_kwargs:
            raise TypeError(f"expected linear_poly_loss options without {key!r} for patch_causal_lm, got {key}=...")
    options = {"epsilon": 0.0, **loss_kwargs}
    LinearPolyLoss(**options)  # checks the scalar options now, before any training step
    unpatch(model)
    original = type(model).forward
    signature = inspect.signature(original)
    var_kw = next((p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    @functools.wraps(original)  # the original signature: Trainer reads it (columns to keep, loss kwargs)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            return original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        if var_kw is not None:
            arguments.update(arguments.pop(var_kw, {}))
        if arguments.get("labels") is None and arguments.get("shift_labels") is None:
            return original(self, *args, **kwargs)
        return _fused_forward(self, arguments, getattr(self, _ATTR))

    setattr(model, _ATTR, _model_options(model, options))
    model.forward = types.MethodType(forward, model)
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`patch_causal_lm` (nothing to do on an unpatched model); returns ``model``."""
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)
        if "forward" in vars(model):
            del model.forward
    return model


def _fused_forward(model: torch.nn.Module, arguments: dict, options: dict) -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from .linear import linear_poly_loss

    labels = arguments.pop("labels", None)
    shift_labels = arguments.pop("shift_labels", None)
    num_items = arguments.pop("num_items_in_batch", None)
    options = dict(options)
    ignore_index = arguments.pop("ignore_index", options.pop("ignore_index", -100))
    return_dict = arguments.pop("return_dict", None)
    arguments.pop("logits_to_keep", None)
    outputs = model.base_model(**arguments)
    hidden = outputs[0]
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if shift_labels is None:
        padded = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = padded[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    loss = linear_poly_loss(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        shift_labels.reshape(-1),
        linear_bias=bias,
        ignore_index=ignore_index,
        reduction="mean" if num_items is None else "sum",
        **options,
    )
    if num_items is not None:
        loss = loss / (num_items.to(loss.device) if isinstance(num_items, torch.Tensor) else num_items)
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    extra = {k: v for k, v in outputs.items() if k in fields and k not in ("loss", "logits")}
    result = CausalLMOutputWithPast(loss=loss, logits=None, **extra)
    return result.to_tuple() if return_dict is False else result


# ---------------------------------------------------------------------------------------------- Trainer losses

_SPECS: dict[str, dict[str, Any]] = {
    "ce": {"epsilon": 0.0},
    "poly1": {"epsilon": 1.0},
    "focal": {"gamma": 2.0, "epsilon": 0.0},
    "poly1_focal": {"gamma": 2.0, "epsilon": 1.0},
    "la": {"epsilon": 0.0, "tau": 1.0},
    "ldam": {"epsilon": 0.0},
}


def loss_function(
    spec: str = "focal",
    *,
    class_counts: Sequence[int] | torch.Tensor | None = None,
    alpha: Sequence[float] | torch.Tensor | str | None = None,
    beta: float = 0.999,
    max_margin: float = 0.5,
    **kwargs: Any,
) -> Callable[..., torch.Tensor]:
    """A ``Trainer(compute_loss_func=...)`` loss for sequence / token classification.

    ``spec``: ``"ce"``, ``"poly1"`` (epsilon 1), ``"focal"`` (gamma 2), ``"poly1_focal"``, ``"la"`` (logit
    adjustment, Menon et al. 2021: the prior is ``class_counts``, ``tau`` 1) or ``"ldam"`` (margins
    :func:`polyfocal.ldam_margins` of ``class_counts``; pass ``logit_scale`` as the paper's ``s``).
    ``alpha="balanced"`` gives :func:`polyfocal.class_balanced_alpha` of ``class_counts`` (``beta``); a
    sequence / tensor is used as is.  Other keywords are :func:`polyfocal.poly_loss`'s and override the spec's.

    The returned ``loss(outputs, labels, num_items_in_batch=None)`` reads ``outputs.logits`` ``(B, C)`` or
    ``(B, T, C)`` against class-index labels ``(B,)`` / ``(B, T)`` (-100 ignored), and with
    ``num_items_in_batch`` returns the summed loss divided by it (as the model losses of ``transformers`` do
    under gradient accumulation).

    Example:
        >>> import torch, polyfocal.hf
        >>> loss = polyfocal.hf.loss_function("la", class_counts=[90, 9, 1])
        >>> out = type("Out", (), {"logits": torch.randn(4, 3)})()
        >>> value = loss(out, torch.tensor([0, 0, 1, 2]))
    """
    from .functional import poly_loss
    from .weights import class_balanced_alpha, ldam_margins

    if not isinstance(spec, str) or spec not in _SPECS:
        raise ValueError(f"expected spec in {tuple(_SPECS)}, got {spec!r}")
    for key in ("activation", "pos_weight", "reduction"):
        if key in kwargs:
            raise TypeError(f"expected poly_loss options without {key!r} for loss_function, got {key}=...")
    options = {**_SPECS[spec], **kwargs}
    needs_counts = spec in ("la", "ldam") or (isinstance(alpha, str) and alpha == "balanced")
    if needs_counts and class_counts is None:
        raise ValueError(f"expected class_counts for spec={spec!r} / alpha={alpha!r}, got None")
    if spec == "la":
        options.setdefault("prior", class_counts)
    if spec == "ldam":
        options.setdefault("margin", ldam_margins(class_counts, max_margin))  # type: ignore[arg-type]
    if isinstance(alpha, str):
        if alpha != "balanced":
            raise ValueError(f"expected alpha to be 'balanced', a per-class sequence / tensor or None, got {alpha!r}")
        options["alpha"] = class_balanced_alpha(class_counts, beta)  # type: ignore[arg-type]
    elif alpha is not None:
        options["alpha"] = alpha
    per_device: dict[torch.device, dict[str, Any]] = {}

    def compute_loss(outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"expected model outputs with a logits tensor, got {_describe(outputs)}")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"expected labels to be a tensor of class indices, got {_describe(labels)}")
        if labels.dtype.is_floating_point:
            raise TypeError(
                "expected class-index labels (single-label classification), got floating-point labels "
                "(regression or multi-label: use polyfocal.poly_loss(..., activation='sigmoid') yourself)"
            )
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"expected labels of shape {tuple(logits.shape[:-1])} (the logits' shape without classes), got "
                f"shape {tuple(labels.shape)}"
            )
        device = logits.device
        moved = per_device.get(device)
        if moved is None:
            moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
            per_device[device] = moved
        x = logits.reshape(-1, logits.shape[-1])
        y = labels.reshape(-1).to(device)
        loss = poly_loss(x, y, reduction="mean" if num_items_in_batch is None else "sum", **moved)
        if num_items_in_batch is not None:
            n = num_items_in_batch
            loss = loss / (n.to(device) if isinstance(n, torch.Tensor) else n)
        return loss

    return compute_loss
