r"""Distributed training helper: the loss normalizer (number of positives) all-reduced across ranks.

Detectors normalise a sigmoid focal loss by the number of positive anchors ("``normalizer``").  Under
:class:`torch.nn.parallel.DistributedDataParallel` every rank sees only its shard of the batch, so a
per-rank count gives a different loss scale on each rank and a result that depends on how the batch was
split.  :func:`all_reduce_normalizer` replaces the local count by one number shared by every rank.

The arithmetic.  Rank :math:`r` of :math:`W` holds a shard with summed element loss :math:`S_r` and
:math:`n_r` positives; the single-process loss over the whole batch is :math:`S / N` with
:math:`S = \sum_r S_r` and :math:`N = \sum_r n_r`.  DDP *averages* gradients over ranks, so with a shared
normalizer :math:`\nu` each rank's loss :math:`S_r / \nu` yields

.. math::

    \frac{1}{W} \sum_r \frac{\nabla S_r}{\nu} = \frac{\nabla S}{W \nu},

which equals the single-process gradient :math:`\nabla S / N` exactly when :math:`\nu = N / W`: the
global count *averaged* over ranks (``average=True``, the default, as mmdetection's ``reduce_mean`` and
detectron2's FCOS do).  The mean over ranks of the reported loss values is then :math:`S / N` as well.
With ``average=False`` the helper returns the global count :math:`N` itself, the right normalizer when
the per-rank losses are *summed* (gradients all-reduced with a sum, or a loss value to log).

Both are clamped below by ``min_value`` (1 by default, so a batch without positives does not divide by
zero).  The clamp is applied to the returned value, so with ``average=True`` it matches a single-process
``max(N, 1)`` whenever :math:`N \ge W` (always, unless the whole batch has fewer positives than ranks).
"""

from __future__ import annotations

import torch

__all__ = ["all_reduce_normalizer"]


def all_reduce_normalizer(
    normalizer: float | torch.Tensor,
    *,
    group: object | None = None,
    average: bool = True,
    min_value: float = 1.0,
) -> torch.Tensor:
    r"""Sum a per-rank normalizer (e.g. the number of positives) over all ranks, for ``normalizer=``.

    Returns ``max(sum_r n_r / W, min_value)`` with ``average=True`` (default), ``max(sum_r n_r, min_value)``
    with ``average=False``; ``W`` is the size of ``group`` (the default group if ``None``).  Pass it as
    ``normalizer=`` of :func:`polyfocal.sigmoid_focal_loss` / :func:`polyfocal.poly1_focal_loss` with
    ``reduction="sum"``: after DDP's gradient averaging every rank then holds exactly the gradient of
    the single-process loss ``sum(loss) / max(N, 1)`` over the whole batch (see the module docstring for
    the derivation).  The result is detached (a count carries no gradient).

    Without an initialised process group (or with one rank) it returns the local value, clamped, so the
    same training code runs on one process.  A multi-element tensor is reduced element-wise.

    Args:
        normalizer: this rank's count: a number or a tensor (on the device of the process group's
            backend: CPU for gloo, CUDA for nccl).
        group: the process group; ``None`` for the default group.
        average: divide the global sum by the world size (for DDP's averaged gradients).
        min_value: lower clamp of the result.

    Returns:
        A floating tensor (float32 for a number or an integer tensor) on the input's device.

    Example:
        >>> import torch
        >>> from polyfocal.distributed import all_reduce_normalizer
        >>> all_reduce_normalizer(torch.tensor(7))   # no process group: the local count
        tensor(7.)
        >>> all_reduce_normalizer(0)                 # clamped to min_value
        tensor(1.)
    """
    if not isinstance(average, bool):
        raise TypeError(f"expected average to be a bool, got {average!r}")
    if isinstance(min_value, bool) or not isinstance(min_value, (int, float)):
        raise TypeError(f"expected min_value to be a number, got {min_value!r}")
    if isinstance(normalizer, torch.Tensor):
        if normalizer.dtype.is_complex or normalizer.dtype == torch.bool:
            raise TypeError(f"expected a real-valued normalizer, got dtype {normalizer.dtype}")
        value = normalizer.detach()
        value = value.clone() if value.dtype.is_floating_point else value.to(torch.float32)
    elif isinstance(normalizer, (int, float)) and not isinstance(normalizer, bool):
        value = torch.tensor(float(normalizer), dtype=torch.float32)
    else:
        raise TypeError(f"expected normalizer to be a number or a tensor, got {type(normalizer).__name__}")

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size(group)
        if world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
            if average:
                value = value / world_size
    return value.clamp(min=min_value)
