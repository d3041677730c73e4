r"""Class-parallel fused linear + loss over ``torch.distributed``: the classifier weight sharded by classes.

``linear_poly_loss(input, linear_weight, target, process_group=group, ...)`` (and its twins and the ``Linear*Loss``
modules with ``process_group=``) computes exactly the single-process :func:`polyfocal.linear_poly_loss` of the
*whole* weight, while each rank holds only a contiguous shard of its rows:

* **Shards.**  Rank ``r`` of ``group`` (``r = dist.get_rank(group)``) passes ``linear_weight`` of shape
  ``(V_r, d)``, the classes ``[o_r, o_r + V_r)`` of the full ``(V, d)`` weight, with ``o_r = V_0 + ... + V_{r-1}``
  (shards in rank order, uneven sizes allowed, each ``V_r >= 1``; ``V = sum_r V_r``).  ``torch.tensor_split(W,
  P)`` gives ``V_r = ceil(V / P)`` for the first ``V mod P`` ranks and ``floor(V / P)`` after them -- any split in
  rank order works; the sizes are exchanged at every call (one all-gather of a few integers).
  :func:`shard_offsets` returns them.
* **Per-class options are sharded with the classes**: ``linear_bias``, ``alpha``, ``weight``, ``prior`` and
  ``margin`` are this rank's ``(V_r,)`` slices.  ``prior`` is normalised by the global sum (all-reduced).
* **Replicated**: ``input`` ``(..., d)``, ``target`` (global class indices in ``[0, V)``, or ``ignore_index``) and
  every scalar option are the same on every rank; this is checked (shapes, options, a checksum of the targets)
  and a mismatch raises ``ValueError`` on every rank, before any loss work.

**The two phases, per chunk of rows** (the same chunking as the single-process call: ``chunk_rows`` of the
*global* ``V``, so each rank's ``(chunk, V_r)`` workspace is ``1/P`` of the single-process one):

1. local logits ``z = h W_r^T (+ b_r)`` (capped with ``softcap``); the loss sees ``z' = s (z + bias_r - m_y
   onehot_y)``.  Phase 1, per row of this shard: the local max ``M_r``, ``sum_{c != y} exp(z'_c - M_r)``, the
   target logit ``z'_y`` (from the rank owning ``y``, 0 elsewhere) and, for label smoothing,
   ``sum_c a_c z'_c``.  **One all-gather** of those ``(3 or 4, rows)`` values per chunk; every rank combines
   them in rank order (:func:`combine_statistics`): ``M = max_r M_r``, ``sum_{c != y} exp(z'_c - M) = sum_r
   rest_r exp(M_r - M)`` (exact up to rounding: each rank's sum is taken from its own max, so nothing
   underflows that the single-process sum keeps), the target logit and the smoothing sum by plain sums.  That
   replaces an all-reduce MAX followed by an all-reduce SUM (two collectives, the second waiting on the first):
   one collective per chunk, ``P x (3 or 4) x rows`` values gathered -- ``O(N P)``, still independent of ``V``
   and small against the ``N x d`` input gradient;
2. every rank derives the same per-row scalars from those statistics -- ``lse``, ``p_y``, ``1 - p_y`` (to
   relative precision), ``-log p_y``, the loss and the gradient coefficients ``K1, K2`` of
   :func:`polyfocal.kernels._torch_impl.softmax_row_terms` -- and phase 2 writes its shard's ``dL/dz'`` in place
   over the workspace: ``(K1 + K2 A + 2 z_loss lse) exp(z' - lse) - K1 onehot_y - K2 a`` (the coefficients
   carry ``s``, the mask and the upstream gradient; ignored rows get zeros), then the softcap's ``1 - (z/c)^2``;
   then ``grad_W_r += g^T h``, ``grad_b_r += g.sum(0)`` stay local and ``grad_input += g W_r`` is a partial sum.

**The two-phase kernels**, chosen once per call by :func:`two_phase_backend` under
``polyfocal.kernels.backend(...)``: native C (``pf_lp_stats`` / ``pf_lp_grad``, unit 4 of ``_native.c``:
one pass per phase over each row, bias / margin / scale applied as the logits are loaded, OpenMP over rows,
vectorised loops) on CPU float32 chunks (float32 / bf16 / fp16 input); Triton
(:func:`polyfocal.kernels._triton_impl.two_phase_stats` / ``two_phase_grad_``) on CUDA; the torch ops
(:func:`torch_two_phase_stats_` / :func:`torch_two_phase_grad_`, in place on the workspace) otherwise --
float64, and the reference the other two are tested against.  The per-row combination and row terms above are
torch ops on ``O(rows)`` values, shared by the three.

Once per call: the per-row target weights ``alpha_y w_y`` / ``w_y`` (owner's values) and the class sums
``sum_c alpha_c w_c``, ``sum_c w_c``, ``sum_c prior_c`` (one all-reduce of ``O(N)``); at the end ``grad_input`` is
all-reduced (``N x d``).  Nothing ``V``-sized crosses the network: per step ``O(N P)`` statistics plus the
``N x d`` input gradient, independent of ``V`` (:func:`last_communication` counts them).  The loss is computed
from the combined statistics, so it is the same on every rank; ``grad_input`` is the full gradient on every rank
(the input is replicated); each rank gets the gradient of its own weight / bias shard.

Reductions, ``reduction="none"`` (the backward recomputes the chunks, with the same collectives: every rank must
run the backward), ``grad_output`` scaling, bf16 / fp16 (float32 statistics and gradient accumulators; on CPU the
chunk GEMMs run in float32, as in the single-process path) are as in :mod:`polyfocal.linear`.
``torch.compile`` graph-breaks around the call (it runs eagerly).  Collectives run on the input's device
(gloo: CPU tensors, or CUDA tensors; NCCL: one CUDA device per rank); the shard sizes and checks are read on the
host once per call (one synchronisation on CUDA).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import zlib

import torch
from torch import Tensor

from ._args import Args
from ._linear_chunks import (
    _finish,
    _forward,
    _gemm_dtype,
    _Grads,
    _LinearLoss,
    _Plan,
    chunk_rows,
    run_chunks,
    validated,
)
from ._params import _describe
from ._validation import check_index_range, compute_dtype
from .kernels._torch_impl import softmax_row_terms

__all__ = [
    "CommunicationVolume",
    "combine_statistics",
    "last_communication",
    "shard_offsets",
    "sharded_linear_poly_loss",
    "torch_two_phase_grad_",
    "torch_two_phase_stats_",
    "two_phase_backend",
]


# ------------------------------------------------------------------------------------------ communication count


@dataclasses.dataclass
class CommunicationVolume:
    """Bytes handed to collectives by this process in the last call (forward, or ``"none"``'s backward)."""

    calls: int = 0
    setup_bytes: int = 0  # shard sizes / checks and the per-row target weights, once per call
    statistics_bytes: int = 0  # the per-chunk row statistics (all-gathered: every rank's, P x k x rows values)
    grad_input_bytes: int = 0  # the final all-reduce of grad_input (N x d)

    @property
    def total_bytes(self) -> int:
        return self.setup_bytes + self.statistics_bytes + self.grad_input_bytes


_LAST = CommunicationVolume()


def last_communication() -> CommunicationVolume:
    """A copy of the communication count of this process's last sharded call (forward, or backward for
    ``reduction="none"``)."""
    return dataclasses.replace(_LAST)


def _all_reduce(t: Tensor, group, kind: str, op=None) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op, group=group)
    _LAST.calls += 1
    nbytes = t.numel() * t.element_size()
    setattr(_LAST, kind, getattr(_LAST, kind) + nbytes)
    return t


# ------------------------------------------------------------------------------------------------ setup


@dataclasses.dataclass(frozen=True)
class _Shard:
    """This rank's view: the group, the class offset and count of its shard, the global class count, and the
    per-row / per-class quantities gathered once per call."""

    group: object
    offset: int
    size: int
    num_classes: int
    a_t: Tensor | None  # alpha_y w_y per row (owner's value, all-reduced), compute dtype
    w_t: Tensor | None  # w_y per row
    a_sum: float | Tensor  # sum_c alpha_c w_c (or C)
    w_sum: float | Tensor  # sum_c w_c (or C)
    reduce_input: bool  # all-reduce grad_input (else each rank keeps its partial sum)


def _check_group(process_group: object, *, initialised: bool = True) -> None:
    """A ``ProcessGroup`` (``TypeError``), of an initialised default group when ``initialised`` (``ValueError``)."""
    import torch.distributed as dist

    if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"expected process_group to be None or a torch.distributed ProcessGroup, got {_describe(process_group)}"
        )
    if initialised and not dist.is_initialized():
        raise ValueError("expected an initialised torch.distributed default process group, got none")


def shard_offsets(num_classes_local: int, process_group: object) -> list[int]:
    """The class offsets ``[o_0, ..., o_P]`` of the shards in rank order (``o_P = V``): rank ``r`` holds
    ``[o_r, o_{r+1})``.  A collective: every rank of the group calls it."""
    _check_group(process_group)
    import torch.distributed as dist

    sizes = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(sizes, int(num_classes_local), group=process_group)
    return [0, *itertools.accumulate(int(s) for s in sizes)]


def _fingerprint(y: Tensor, key: str) -> list[int]:
    """Integers every rank must agree on: the options' checksum and two target checksums."""
    yl = y.to(torch.int64)
    idx = torch.arange(1, y.numel() + 1, device=y.device, dtype=torch.int64)
    return [zlib.crc32(key.encode()), int(yl.sum()), int((yl * idx).sum())]


def _exchange(h2: Tensor, weight: Tensor, y: Tensor, key: str, needs_input: bool, group) -> list[int]:
    """One all-gather of ``[V_r, N, d, needs_input, checks...]``; the offsets, or ``ValueError`` on every rank."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    mine = torch.tensor([weight.shape[0], h2.shape[0], h2.shape[1], int(needs_input), *_fingerprint(y, key)],
                        dtype=torch.int64, device=h2.device)  # fmt: skip
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    _LAST.calls += 1
    _LAST.setup_bytes += world * mine.numel() * mine.element_size()
    rows = torch.stack(everyone).tolist()
    names = ("rows (N)", "in_features (d)", "input.requires_grad", "options", "targets", "targets")
    for column, name in enumerate(names, start=1):
        values = [r[column] for r in rows]
        if len(set(values)) != 1:
            raise ValueError(
                f"expected the same {name} on every rank of the process group (replicated input, target and "
                f"options), got {values if column < 4 else 'different values'}"
            )
    return [0, *itertools.accumulate(r[0] for r in rows)]


# ------------------------------------------------------------------------------------------------ the chunk loop


def two_phase_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The two-phase kernels for a chunk of this device and compute dtype under :func:`polyfocal.backend`:
    ``"auto"``: Triton on CUDA (when it imports), native C on CPU float32 (when built), else torch ops;
    ``"native"``: native C where it covers the chunk (CPU float32), else torch ops; ``"triton"``: Triton (CPU
    tensors need ``TRITON_INTERPRET=1``); ``"torch"`` / ``"composite"``: torch ops."""
    from .kernels import _dispatch, _native

    name = _dispatch.current_backend()
    native_ok = device.type == "cpu" and dtype == torch.float32
    if name in ("torch", "composite"):
        return "torch"
    if name == "native":
        return "native" if native_ok and _native.available() else "torch"
    if name == "triton":
        if not _dispatch.triton_available():
            raise RuntimeError("expected backend 'triton' to be available (importable / built), got none")
        return "triton"
    if device.type == "cuda" and _dispatch.triton_available():
        return "triton"
    return "native" if native_ok and _native.available() else "torch"


# ------------------------------------------------------------------------ the two-phase kernels: torch ops


def torch_two_phase_stats_(z: Tensor, target_local: Tensor, *, bias: Tensor | None = None,
                           margin: Tensor | None = None, logit_scale: float = 1.0,
                           class_weight: Tensor | None = None, label_smoothing: bool = False) -> Tensor:  # fmt: skip
    """Phase 1 in torch ops (the reference of :func:`polyfocal.kernels._native.two_phase_stats` and the Triton
    twin): the ``(4, rows)`` statistics of the chunk ``z`` -- the local max ``M`` of ``z' = s ((z + b) - m_t
    onehot_t)``, ``sum_{c != t} exp(z'_c - M)``, ``z'_t`` (0 where ``target_local`` is -1) and
    ``sum_c a_c z'_c`` (0 without ``label_smoothing``) -- in ``z``'s dtype.  Unlike the kernels it works in
    place: ``z`` is left holding ``exp(z'_c - M)`` with the target's entry 0, which
    :func:`torch_two_phase_grad_` expects."""
    own = target_local >= 0
    li1 = torch.where(own, target_local, 0).unsqueeze(1)
    if bias is not None:
        z.add_(bias)
    if margin is not None:
        m_t = torch.where(own, margin[li1.squeeze(1)], 0.0)
        z.scatter_add_(1, li1, -m_t.unsqueeze(1).to(z.dtype))
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    st = z.new_zeros(4, z.shape[0])
    st[2] = torch.where(own, z.gather(1, li1).squeeze(1), 0.0)
    if label_smoothing:
        st[3] = z.sum(1) if class_weight is None else torch.mv(z, class_weight.to(z.dtype))
    st[0] = z.amax(1)
    z.sub_(st[0].unsqueeze(1)).exp_()
    kept = z.gather(1, li1).squeeze(1)
    z.scatter_(1, li1, torch.where(own, 0.0, kept).unsqueeze(1))  # the target's e_y out of the row sum
    st[1] = z.sum(1)
    return st


def torch_two_phase_grad_(z: Tensor, target_local: Tensor, stats: Tensor, lse: Tensor, coef: Tensor, k1: Tensor,
                          k2: Tensor, *, class_weight: Tensor | None = None) -> Tensor:  # fmt: skip
    """Phase 2 in torch ops over the ``z`` that :func:`torch_two_phase_stats_` left (``exp(z'_c - M)``, the
    target's entry 0) and its ``stats``: ``dL/dz'_c = coef exp(z'_c - lse) - k1 onehot_t - k2 a_c`` in place."""
    own = target_local >= 0
    li1 = torch.where(own, target_local, 0).unsqueeze(1)
    z.mul_((coef * torch.exp(stats[0] - lse)).unsqueeze(1))  # coef p_c = coef exp(z'_c - M) exp(M - lse)
    kept = z.gather(1, li1).squeeze(1)
    z.scatter_(1, li1, torch.where(own, coef * torch.exp(stats[2] - lse) - k1, kept).unsqueeze(1))
    if class_weight is None:
        z.sub_(k2.unsqueeze(1))
    else:
        z.addcmul_(k2.unsqueeze(1), class_weight.to(z.dtype).unsqueeze(0), value=-1.0)
    return z


def _kernels(name: str):
    if name == "native":
        from .kernels import _native

        return _native
    from .kernels import _triton_impl

    return _triton_impl


# ------------------------------------------------------------------------------------------------ one chunk


def combine_statistics(gathered: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The row statistics of the whole weight from every rank's ``(P, k, rows)`` phase-1 statistics (k = 3, or 4
    with the smoothing sum), combined in rank order (the same result on every rank): the global max ``M``,
    ``sum_{c != y} exp(z'_c - M) = sum_r rest_r exp(M_r - M)``, ``z'_y`` (only its owner's entry is nonzero) and
    ``sum_c a_c z'_c`` (or 0).  Exact up to rounding: each rank's sum was taken from its own max."""
    local_max = gathered[:, 0]
    big = local_max.amax(0)
    rest = (gathered[:, 1] * torch.exp(local_max - big)).sum(0)
    z_t = gathered[:, 2].sum(0)
    xa = gathered[:, 3].sum(0) if gathered.shape[1] > 3 else torch.zeros_like(big)
    return big, rest, z_t, xa


def _all_gather_statistics(st: Tensor, group) -> Tensor:
    """One all-gather of this rank's ``(k, rows)`` statistics into ``(P, k, rows)``."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    st = st.contiguous()
    if world == 1:
        return st.unsqueeze(0)
    out = st.new_empty(world * st.shape[0], *st.shape[1:])  # rank-major, as gloo and NCCL both take it
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the new name from torch 2.13
    gather(out, st, group=group)
    _LAST.calls += 1
    _LAST.statistics_bytes += out.numel() * out.element_size()
    return out.view(world, *st.shape)


def _chunk(z: Tensor, yc: Tensor, plan: _Plan, shard: _Shard, rows: slice, compute_grad: bool,
           row_grad: Tensor | None) -> Tensor:  # fmt: skip
    """Both phases of one chunk on the ``(rows, V_r)`` logits ``z`` (compute dtype): the rows' losses; with
    ``compute_grad`` this shard's ``dL/dz'`` chain-ruled to ``dL/dz`` (before the cap) is written over ``z``."""
    args = plan.args
    valid = None if args.ignore_index is None else yc != args.ignore_index
    local = yc - shard.offset
    own = (local >= 0) & (local < shard.size)
    if valid is not None:
        own = own & valid
    t_local = torch.where(own, local, -1)
    ls = args.label_smoothing
    a = args.class_weight if ls > 0.0 else None
    # phase 1: this shard's row statistics, one all-gather, the same combined statistics on every rank
    if plan.backend == "torch":
        st = torch_two_phase_stats_(z, t_local, bias=args.bias, margin=args.margin, logit_scale=args.logit_scale,
                                    class_weight=a, label_smoothing=ls > 0.0)  # fmt: skip
    else:
        st = _kernels(plan.backend).two_phase_stats(z, t_local, bias=args.bias, margin=args.margin,
                                                    logit_scale=args.logit_scale, class_weight=a,
                                                    label_smoothing=ls > 0.0).to(z.dtype)  # fmt: skip
    gathered = _all_gather_statistics(st[: 4 if ls > 0.0 else 3], shard.group)
    big, rest, z_t, xa = combine_statistics(gathered)
    # phase 2: the same per-row scalars on every rank
    e_t = torch.exp(z_t - big)
    total = rest + e_t
    lse = big + torch.log(total)
    p_t = e_t / total
    u1 = rest / total
    ce1 = torch.where(u1 < 0.5, -torch.log1p(-u1), lse - z_t)
    smooth = shard.a_sum * lse - xa if ls > 0.0 else None
    a_t = None if shard.a_t is None else shard.a_t[rows]
    w_t = None if shard.w_t is None else shard.w_t[rows]
    loss, k1, k2 = softmax_row_terms(ce1, u1, p_t, smooth, a_t, w_t, epsilon=list(args.epsilon), gamma=args.gamma,
                                     label_smoothing=ls, num_classes=shard.num_classes,
                                     weight_sum=shard.w_sum)  # fmt: skip
    if args.z_loss != 0.0:
        loss = loss + args.z_loss * lse * lse
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    if not compute_grad:
        return loss
    scale = torch.full_like(lse, args.logit_scale) if row_grad is None else row_grad * args.logit_scale
    k1 = k1 * scale
    k2 = k2 * scale if ls > 0.0 else torch.zeros_like(lse)
    coef = k1 + k2 * shard.a_sum if ls > 0.0 else k1
    if args.z_loss != 0.0:
        coef = coef + (2.0 * args.z_loss) * lse * scale
    if valid is not None:  # ignored rows: coefficients 0 (a where, not a product: no 0 * inf)
        k1, k2, coef = (torch.where(valid, v, 0.0) for v in (k1, k2, coef))
    if plan.backend == "torch":
        torch_two_phase_grad_(z, t_local, st, lse, coef, k1, k2, class_weight=a)
    else:
        _kernels(plan.backend).two_phase_grad_(z, t_local, lse, coef, k1, k2, bias=args.bias, margin=args.margin,
                                               logit_scale=args.logit_scale, class_weight=a)  # fmt: skip
    return loss


def _run(h: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, plan: _Plan, shard: _Shard,
         needs: tuple[bool, bool, bool], row_grad: Tensor | None = None) -> tuple[Tensor, _Grads | None]:  # fmt: skip
    """The single-process chunk loop with this shard's two-phase step (float32 chunks; ``row_grad`` folded into the
    step's coefficients); ``grad_input`` all-reduced at the end unless the caller takes the partial sums."""
    ct = compute_dtype(h)
    rg = None if row_grad is None else row_grad.to(ct)

    def step(z: Tensor, sl: slice, compute_grad: bool) -> tuple[Tensor, None]:
        return _chunk(z, y[sl], plan, shard, sl, compute_grad, None if rg is None else rg[sl]), None

    total, grads = run_chunks(h, weight, bias, y, plan, needs, step=step, buffer_dtype=ct)
    if grads is not None and grads.input is not None and shard.reduce_input:
        _all_reduce(grads.input, shard.group, "grad_input_bytes")
    return total, grads


class _Sharded:
    """How :class:`polyfocal._linear_chunks._LinearLoss` runs the chunks of one rank's shard (with the collectives:
    every rank must run the backward)."""

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard

    def run(self, h, weight, bias, y, plan: _Plan, needs, row_grad: Tensor | None = None):
        return _run(h, weight, bias, y, plan, self.shard, needs, row_grad)

    def forward(self, h, weight, bias, y, plan: _Plan, needs):
        return _forward(h, weight, bias, y, plan, needs, self.run, self.shard.w_t)

    def rows_backward(self, h, weight, bias, y, plan: _Plan, needs, grad_out: Tensor):
        _LAST.__init__()
        _, grads = self.run(h, weight, bias, y, plan, needs, grad_out)
        return _finish(grads, h, weight, bias, None)


# ------------------------------------------------------------------------------------------------ entry point


def _key(h, softcap: float, chunk: int, dtype: torch.dtype, present: tuple[bool, ...], bias: bool) -> str:
    """The options every rank must share, as text (their CRC is exchanged): the scalar hyperparameters, the cap,
    the chunking, the dtype and which per-class options / bias are given (their values are per shard)."""
    scalars = tuple(getattr(h, f.name) for f in dataclasses.fields(h) if f.metadata.get("stage") == 1)
    return repr((scalars, softcap, chunk, str(dtype), present, bias))


def _class_sums(args: Args, tau: float, prior: object, y: Tensor, offset: int, local_classes: int, num_classes: int,
                group, ct: torch.dtype) -> tuple:  # fmt: skip
    """Once per call, one all-reduce (float64): the prior's global sum (-> this shard's bias), the class sums
    ``sum_c a_c`` / ``sum_c w_c`` and the per-row target weights ``a_y`` / ``w_y`` from the rank owning ``y``."""
    valid = None if args.ignore_index is None else y != args.ignore_index
    yv = y if valid is None else torch.where(valid, y, 0)
    local = yv - offset
    own = (local >= 0) & (local < local_classes)
    li = torch.where(own, local, 0)
    parts: list[Tensor] = []
    prior_t = None
    if prior is not None and tau != 0.0:
        prior_t = prior if isinstance(prior, Tensor) else torch.tensor([float(v) for v in prior])
        prior_t = prior_t.to(device=y.device, dtype=torch.float64)
        parts.append(prior_t.sum().reshape(1))
    if args.class_weight is not None:
        parts += [args.class_weight.sum(dtype=torch.float64).reshape(1), torch.where(own, args.class_weight[li], 0.0)]
    if args.weight is not None:
        parts += [args.weight.sum(dtype=torch.float64).reshape(1), torch.where(own, args.weight[li], 0.0)]
    sums = torch.cat([p.to(torch.float64) for p in parts]) if parts else None
    if sums is not None:
        _all_reduce(sums, group, "setup_bytes")
    num_rows = y.numel()
    pos = 0
    bias_t = args.bias
    if prior_t is not None:
        assert sums is not None
        bias_t = (tau * (torch.log(prior_t) - torch.log(sums[0]))).to(ct)
        pos = 1
    a_t = w_t = None
    a_sum: float | Tensor = float(num_classes)
    w_sum: float | Tensor = float(num_classes)
    if args.class_weight is not None:
        assert sums is not None
        a_sum, a_t = sums[pos].to(ct), sums[pos + 1 : pos + 1 + num_rows].to(ct)
        pos += 1 + num_rows
    if args.weight is not None:
        assert sums is not None
        w_sum, w_t = sums[pos].to(ct), sums[pos + 1 : pos + 1 + num_rows].to(ct)
    return bias_t, a_t, w_t, a_sum, w_sum


@torch.compiler.disable
def sharded_linear_poly_loss(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    process_group: object,
    linear_bias: Tensor | None = None,
    grad_input: str = "all_reduce",
    **options: object,
) -> Tensor:
    """:func:`polyfocal.linear_poly_loss` with ``linear_weight`` (and the per-class options) sharded by classes
    over ``process_group`` (see the module docstring): what ``linear_poly_loss(..., process_group=group)`` runs,
    with all its ``options`` (``softcap``, ``chunk_size`` and the loss options, by name).  Call that.

    ``grad_input="all_reduce"`` (the default): every rank gets the full input gradient.
    ``grad_input="partial"``: each rank gets its shard's partial sum ``dL/dz_r W_r`` (the sum over ranks is the
    full gradient) and nothing is all-reduced -- for callers whose own collective reduces it, e.g. sequence
    parallelism, where the input is an autograd all-gather of row-sharded hidden states
    (``torch.distributed.nn.functional.all_gather``) whose backward reduce-scatters: each rank then gets the
    gradient of its own rows."""
    _check_group(process_group)
    if grad_input not in ("all_reduce", "partial"):
        raise ValueError(f"expected grad_input to be 'all_reduce' or 'partial', got {grad_input!r}")
    alpha, weight, prior, margin = (options.get(name) for name in ("alpha", "weight", "prior", "margin"))
    cap, chunk, hp, call, needs = validated(input, linear_weight, target, linear_bias, **options)
    num_rows = math.prod(input.shape[:-1])
    local_classes = linear_weight.shape[0]
    gemm = _gemm_dtype(input)
    ct = compute_dtype(input)
    args = call.args
    y = call.target
    x2 = input.reshape(num_rows, input.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    group = process_group
    _LAST.__init__()
    present = (alpha is not None, weight is not None, prior is not None, margin is not None)
    key = _key(hp, cap, chunk, input.dtype, present, linear_bias is not None) + grad_input
    offsets = _exchange(x2, linear_weight, y, key, needs[0], group)
    import torch.distributed as dist

    rank = dist.get_rank(group)
    offset, num_classes = offsets[rank], offsets[-1]
    check_index_range(y, num_classes, args.ignore_index, background=False)

    bias_t, a_t, w_t, a_sum, w_sum = _class_sums(args, hp.tau, prior, y, offset, local_classes, num_classes, group,
                                                 ct)  # fmt: skip
    shard = _Shard(group, offset, local_classes, num_classes, a_t, w_t, a_sum, w_sum, grad_input == "all_reduce")
    kernel_args = dataclasses.replace(args, bias=bias_t, reduction="none" if hp.reduction == "none" else "sum")
    buffers = 2 if cap and any(needs) else 1
    rows = chunk_rows(num_rows, num_classes, torch.empty((), dtype=gemm).element_size(), in_features=x2.shape[-1],
                      buffers=buffers, chunk_size=chunk)  # fmt: skip
    plan = _Plan(kernel_args, hp.reduction, cap, rows, two_phase_backend(input.device, ct))
    if any(needs):
        out = _LinearLoss.apply(x2, linear_weight, linear_bias, (y, plan, _Sharded(shard)))
    else:
        out = _Sharded(shard).forward(x2, linear_weight, linear_bias, y, plan, (False, False, False))[0]
    return out.reshape(input.shape[:-1]) if hp.reduction == "none" else out
