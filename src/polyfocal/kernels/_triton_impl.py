r"""Triton kernels: the same math as :mod:`._torch_impl`, one launch for loss and gradient.

* softmax: each program owns ``BLOCK_R`` rows (a row is one ``(n, d1, ...)`` position, its ``C`` logits
  ``S`` elements apart) and walks the classes in ``BLOCK_C`` chunks twice: an online-softmax pass for the
  row statistics (max, sum of exponentials with and without the target, ``x_y`` and, with label smoothing,
  ``sum_c a_c x_c``), the per-row PolyLoss terms of :func:`._torch_impl.softmax_row_terms`, then a pass
  that writes ``grad = P exp(x - lse) - K1 onehot - K2 a`` in the input dtype.  All math is fp32 (fp64 for
  fp64 input); the second pass re-reads the row from L2 for the usual ``C``.
* sigmoid: element-wise (:func:`._torch_impl.sigmoid_terms`), ``BLOCK`` elements per program, per-block
  partial sums for ``"mean"``/``"sum"`` (summed by torch: deterministic, no atomics); the asymmetric, varifocal and
  quality focal members in their own kernel (:func:`._torch_impl.detection_terms`).
* :func:`scale_unless_one_`: ``grad *= grad_output`` with a device-side branch, so a backward with
  ``grad_output == 1`` (the usual ``loss.backward()``) costs one launch and no pass and no host sync.

Only ``exp2``/``log2`` and arithmetic are used (no libdevice), so ``TRITON_INTERPRET=1`` runs every kernel on
the CPU: that is how CI tests them.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._args import SigmoidArgs, SoftmaxArgs
from .._validation import check_index_range, compute_dtype, index_range_message
from ._torch_impl import NO_IGNORE

__all__ = ["scale_unless_one_", "sigmoid", "softmax", "supports"]


@triton.jit
def _exp(v):
    return tl.exp2(v * 1.4426950408889634)


@triton.jit
def _log(v):
    return tl.log2(v) * 0.6931471805599453


@triton.jit
def _log1p(v):
    """log(1 + v) to full relative precision for small v (Kahan's trick)."""
    w = 1.0 + v
    return tl.where(w == 1.0, v, _log(w) * (v / (w - 1.0)))


@triton.jit
def _poly(u, eps_ptr, gamma, N_EPS: tl.constexpr):
    """``sum_j eps_j u^j`` and ``sum_j eps_j (j + gamma) u^(j-1)`` (Horner, from the highest j)."""
    poly = tl.zeros_like(u)
    dpoly = tl.zeros_like(u)
    for k in tl.static_range(N_EPS):
        j = N_EPS - k
        e = tl.load(eps_ptr + (j - 1)).to(u.dtype)
        poly = (poly + e) * u
        if k == 0:
            dpoly = dpoly + e * (j + gamma)
        else:
            dpoly = dpoly * u + e * (j + gamma)
    return poly, dpoly


@triton.jit
def _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr,
            HAS_SCALE: tl.constexpr):  # fmt: skip
    """The long-tail options on a loaded ``(BLOCK_R, BLOCK_C)`` block: ``s ((x + b_c) - m_y [c = y])``
    (masked lanes stay -inf)."""
    if HAS_BIAS:
        x = x + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)[None, :]
    if HAS_MARGIN:
        x = x - tl.where(cols[None, :] == y[:, None], m_y[:, None], 0.0)
    if HAS_SCALE:
        x = x * s
    return x


@triton.jit
def _softmax_poly_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    w_ptr,
    norm_ptr,
    consts_ptr,  # [gamma, ls, eps_1, ..., eps_n] in the compute dtype (cached on the device)
    stats_ptr,  # [A = sum_c a_c, W = sum_c w_c, 1 / mean denominator]
    loss_ptr,
    g_ptr,
    R,
    C,
    S,
    ignore_index,
    HAS_A: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_NORM: tl.constexpr,
    N_EPS: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    DT: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    bias_ptr,  # long-tail options: (C,) bias = tau log prior, (C,) margin; s and z-loss at consts[2 + N_EPS:]
    margin_ptr,
    HAS_BIAS: tl.constexpr,
    HAS_MARGIN: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_Z: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    n = rows // S
    base = n * C * S + (rows - n * S)
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)
    valid = row_ok & (y != ignore_index)
    y = tl.where(valid, y, 0)
    dt: tl.constexpr = DT
    gamma = tl.load(consts_ptr)
    ls = tl.load(consts_ptr + 1)
    x_t = tl.load(x_ptr + base + y * S, mask=row_ok, other=0.0).to(dt)
    s = tl.load(consts_ptr + 2 + N_EPS).to(dt)
    z_w = tl.load(consts_ptr + 3 + N_EPS).to(dt)
    m_y = tl.zeros([BLOCK_R], dt)
    if HAS_BIAS:
        x_t = x_t + tl.load(bias_ptr + y, mask=row_ok, other=0.0).to(dt)
    if HAS_MARGIN:
        m_y = tl.load(margin_ptr + y, mask=row_ok, other=0.0).to(dt)
        x_t = x_t - m_y
    if HAS_SCALE:
        x_t = x_t * s

    if SINGLE:  # the whole row in registers: read once, reused for the gradient
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=float("-inf")).to(dt)
        x = _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS, HAS_MARGIN, HAS_SCALE)
        m = tl.maximum(tl.max(x, axis=1), -1.0e38)
        e = _exp(x - m[:, None])
        is_t = cols[None, :] == y[:, None]
        s_all = tl.sum(e, axis=1)
        s_rest = tl.sum(tl.where(is_t, 0.0, e), axis=1)
        if SMOOTH:
            xs = tl.where(mask, x, 0.0)
            if HAS_A:
                xs = xs * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
            x_a = tl.sum(xs, axis=1)
        else:
            x_a = tl.zeros([BLOCK_R], dt)
    else:  # online softmax over class chunks
        m = tl.full([BLOCK_R], -1.0e38, dt)
        s_all = tl.zeros([BLOCK_R], dt)
        s_rest = tl.zeros([BLOCK_R], dt)
        x_a = tl.zeros([BLOCK_R], dt)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_ok = cols < C
            mask = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=float("-inf")).to(dt)
            x = _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS, HAS_MARGIN, HAS_SCALE)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            rescale = _exp(m - m_new)
            e = _exp(x - m_new[:, None])
            s_all = s_all * rescale + tl.sum(e, axis=1)
            s_rest = s_rest * rescale + tl.sum(tl.where(cols[None, :] == y[:, None], 0.0, e), axis=1)
            if SMOOTH:
                xs = tl.where(mask, x, 0.0)
                if HAS_A:
                    xs = xs * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
                x_a += tl.sum(xs, axis=1)
            m = m_new

    lse = m + _log(s_all)
    p1 = _exp(x_t - lse)
    u1 = s_rest / s_all
    ce1 = tl.where(u1 < 0.5, -_log1p(-u1), lse - x_t)
    a_sum = tl.load(stats_ptr).to(dt)
    w_sum = tl.load(stats_ptr + 1).to(dt)
    if HAS_A:
        a_y = tl.load(a_ptr + y, mask=row_ok, other=0.0).to(dt)
    else:
        a_y = tl.full([BLOCK_R], 1.0, dt)
    if HAS_W:
        w_y = tl.load(w_ptr + y, mask=row_ok, other=0.0).to(dt)
    else:
        w_y = tl.full([BLOCK_R], 1.0, dt)
    if SMOOTH:
        ce_a = (1.0 - ls) * a_y * ce1 + (ls / C) * (a_sum * lse - x_a)
        u = (1.0 - ls) * u1 + (ls - ls / C)
        w_poly = (1.0 - ls) * w_y + (ls / C) * w_sum
    else:
        ce_a = a_y * ce1
        u = u1
        w_poly = w_y
    if GAMMA_ZERO:
        mod = tl.full([BLOCK_R], 1.0, dt)
    else:
        mod = _exp(gamma * _log(u))
    dl_du = tl.zeros([BLOCK_R], dt)
    loss = ce_a
    if N_EPS > 0:
        poly, dpoly = _poly(u, consts_ptr + 2, gamma, N_EPS)
        loss = loss + w_poly * poly
        dl_du = w_poly * dpoly
    loss = mod * loss
    if HAS_Z:  # z-loss: z_w * lse^2 of the logits the loss sees
        loss = loss + z_w * lse * lse
    if not GAMMA_ZERO:
        dl_du = dl_du + gamma * tl.where(u > 0.0, ce_a / tl.where(u > 0.0, u, 1.0), a_y)
    scale = tl.where(valid, 1.0, 0.0).to(dt)
    if HAS_NORM:
        scale = scale / tl.load(norm_ptr + rows, mask=row_ok, other=1.0).to(dt)
    scale = scale * tl.load(stats_ptr + 2).to(dt)  # 1 / mean denominator (1 unless "mean")
    tl.store(loss_ptr + rows, (loss * scale).to(loss_ptr.dtype.element_ty), mask=row_ok)

    if COMPUTE_GRAD:
        scale = tl.where(valid, scale, 0.0)  # ignored rows: 0 even when 1/denominator is inf (all ignored)
        if HAS_SCALE:  # chain rule through z' = s (...)
            scale = scale * s
        k1 = (1.0 - ls) * mod * (a_y + dl_du * p1) * scale
        k2 = mod * (ls / C) * scale
        coef = k1 + k2 * a_sum
        if HAS_Z:  # d(z_w lse^2)/dz' = 2 z_w lse softmax(z')
            coef = coef + 2.0 * z_w * lse * scale
        if SINGLE:
            g = (coef / s_all)[:, None] * e - tl.where(is_t, k1[:, None], 0.0)
            if SMOOTH:
                if HAS_A:
                    g -= k2[:, None] * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
                else:
                    g -= k2[:, None]
            offs = base[:, None] + cols[None, :].to(tl.int64) * S
            tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
        else:
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + tl.arange(0, BLOCK_C)
                col_ok = cols < C
                mask = row_ok[:, None] & col_ok[None, :]
                offs = base[:, None] + cols[None, :].to(tl.int64) * S
                x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(dt)
                x = _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS, HAS_MARGIN, HAS_SCALE)
                g = coef[:, None] * _exp(x - lse[:, None]) - tl.where(cols[None, :] == y[:, None], k1[:, None], 0.0)
                if SMOOTH:
                    if HAS_A:
                        g -= k2[:, None] * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
                    else:
                        g -= k2[:, None]
                tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prep_kernel(
    y_ptr,
    a_ptr,
    w_ptr,
    stats_ptr,  # out (program 0): [A = sum_c a_c, W = sum_c w_c]
    den_ptr,  # out: per-program partial mean denominators
    bad_ptr,  # out: per-program count of non-ignored indices outside [0, HIGH]
    R,
    C,
    HIGH,
    ignore_index,
    CHUNK,
    HAS_A: tl.constexpr,
    HAS_W: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Class sums, partial mean denominators and the index-range check (a handful of torch ops otherwise, each
    costing more host time than the whole loss kernel at small sizes)."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    if pid == 0:
        a_acc = tl.zeros([BLOCK], DT)
        w_acc = tl.zeros([BLOCK], DT)
        for c0 in range(0, C, BLOCK):
            cm = c0 + offs < C
            if HAS_A:
                a_acc += tl.load(a_ptr + c0 + offs, mask=cm, other=0.0).to(DT)
            if HAS_W:
                w_acc += tl.load(w_ptr + c0 + offs, mask=cm, other=0.0).to(DT)
        c_float = tl.full([], 0.0, DT) + C
        if HAS_A:
            tl.store(stats_ptr, tl.sum(a_acc, axis=0).to(DT))
        else:
            tl.store(stats_ptr, c_float)
        if HAS_W:
            tl.store(stats_ptr + 1, tl.sum(w_acc, axis=0).to(DT))
        else:
            tl.store(stats_ptr + 1, c_float)
    den = tl.zeros([BLOCK], DT)
    bad = tl.zeros([BLOCK], tl.int32)
    start = pid.to(tl.int64) * CHUNK
    for r0 in range(0, CHUNK, BLOCK):
        rows = start + r0 + offs
        rm = rows < R
        y = tl.load(y_ptr + rows, mask=rm, other=0)
        valid = rm & (y != ignore_index)
        in_range = (y >= 0) & (y <= HIGH)
        bad += (valid & ~in_range).to(tl.int32)
        good = valid & in_range
        if HAS_W:
            den += tl.load(w_ptr + tl.where(good, y, 0), mask=good, other=0.0).to(DT)
        else:
            den += good.to(DT)
    tl.store(den_ptr + pid, tl.sum(den, axis=0))
    tl.store(bad_ptr + pid, tl.sum(bad, axis=0))


@triton.jit
def _finish_prep_kernel(den_ptr, bad_ptr, stats_ptr, ok_ptr, P, PER_ROW, MEAN: tl.constexpr, BLOCK_P: tl.constexpr):
    """stats[2] = 1 / (sum of the partial denominators * PER_ROW) for "mean" (else 1); ok = no bad index."""
    offs = tl.arange(0, BLOCK_P)
    den = tl.sum(tl.load(den_ptr + offs, mask=offs < P, other=0.0), axis=0)
    bad = tl.sum(tl.load(bad_ptr + offs, mask=offs < P, other=0), axis=0)
    if MEAN:  # all ignored: 1/0 = inf makes the loss nan (0 * inf); the kernels keep the gradient at 0
        tl.store(stats_ptr + 2, 1.0 / (den * PER_ROW))
    else:
        tl.store(stats_ptr + 2, den * 0.0 + 1.0)
    tl.store(ok_ptr, (bad == 0).to(tl.int32))


def _prepare(target, class_weight, weight, *, num_classes, high, ignore_index, per_row, mean, ct):
    """Stats ``[A, W, 1/denominator]`` on the device (two launches, deterministic: no atomics), and a queued
    device-side assertion on the index range."""
    ignore = None if ignore_index == NO_IGNORE else ignore_index
    message = f"{index_range_message(num_classes, ignore, background=high == num_classes)}, got one outside it"
    block = 1024
    rows = target.numel()
    programs = max(1, min(1024, triton.cdiv(rows, block)))
    chunk = triton.cdiv(triton.cdiv(max(rows, 1), programs), block) * block
    stats = torch.empty(3, dtype=ct, device=target.device)
    den = torch.empty(programs, dtype=ct, device=target.device)
    bad = torch.empty(programs, dtype=torch.int32, device=target.device)
    ok = torch.empty((), dtype=torch.int32, device=target.device)
    _prep_kernel[(programs,)](
        target,
        class_weight if class_weight is not None else stats,
        weight if weight is not None else stats,
        stats,
        den,
        bad,
        rows,
        num_classes,
        high,
        ignore_index,
        chunk,
        HAS_A=class_weight is not None,
        HAS_W=weight is not None,
        DT=_TL_DTYPE[ct],
        BLOCK=block,
    )
    _finish_prep_kernel[(1,)](
        den, bad, stats, ok, programs, per_row, MEAN=mean, BLOCK_P=triton.next_power_of_2(programs)
    )
    if target.is_cuda:
        torch._assert_async(ok, message)
    elif not bool(ok):  # Triton's CPU interpreter (tests): a host read is free; name the offending index
        check_index_range(target, num_classes, ignore, background=high == num_classes)
    return stats


@functools.lru_cache(maxsize=512)
def _const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Hyperparameters as a small device tensor, copied to the device once per distinct value (a host-to-device
    copy from pageable memory would wait for the stream on every call)."""
    return torch.tensor(values, dtype=dtype, device=device)


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def softmax(x: torch.Tensor, target: torch.Tensor, args: SoftmaxArgs, compute_grad: bool):
    """Same contract as :func:`._torch_impl.softmax`."""
    ct = compute_dtype(x)
    x = x.contiguous()
    target = target.contiguous()
    n, num_classes = x.shape[0], x.shape[1]
    inner = x.numel() // (n * num_classes) if n * num_classes else 1
    rows = target.numel()
    class_weight, weight, normalizer = args.class_weight, args.weight, args.normalizer
    epsilon, gamma, label_smoothing, reduction = args.epsilon, args.gamma, args.label_smoothing, args.reduction
    ignore_index = NO_IGNORE if args.ignore_index is None else args.ignore_index
    stats = _prepare(
        target,
        class_weight,
        weight,
        num_classes=num_classes,
        high=num_classes - 1,
        ignore_index=ignore_index,
        per_row=1,
        mean=reduction == "mean",
        ct=ct,
    )
    logit_scale, z_loss = float(args.logit_scale), float(args.z_loss)
    consts = _const((float(gamma), float(label_smoothing), *map(float, epsilon), logit_scale, z_loss), x.device, ct)
    bias = None if args.bias is None else args.bias.to(device=x.device, dtype=ct).contiguous()
    margin = None if args.margin is None else args.margin.to(device=x.device, dtype=ct).contiguous()
    loss = torch.empty(target.shape, dtype=ct, device=x.device)
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    norm = normalizer.to(ct).contiguous() if normalizer is not None else None
    block_c = min(triton.next_power_of_2(max(num_classes, 1)), 4096 if ct == torch.float32 else 2048)
    block_r = max(1, min(128, 4096 // block_c))
    if rows:
        _softmax_poly_kernel[(triton.cdiv(rows, block_r),)](
            x,
            target,
            class_weight if class_weight is not None else x,
            weight if weight is not None else x,
            norm if norm is not None else loss,
            consts,
            stats,
            loss,
            grad if compute_grad else loss,
            rows,
            num_classes,
            inner,
            ignore_index,
            HAS_A=class_weight is not None,
            HAS_W=weight is not None,
            HAS_NORM=norm is not None,
            N_EPS=len(epsilon),
            GAMMA_ZERO=gamma == 0.0,
            SMOOTH=label_smoothing > 0.0,
            COMPUTE_GRAD=compute_grad,
            DT=_TL_DTYPE[ct],
            SINGLE=num_classes <= block_c,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
            bias_ptr=bias if bias is not None else loss,
            margin_ptr=margin if margin is not None else loss,
            HAS_BIAS=bias is not None,
            HAS_MARGIN=margin is not None,
            HAS_SCALE=logit_scale != 1.0,
            HAS_Z=z_loss != 0.0,
        )
    return (loss if reduction == "none" else loss.sum()), grad  # "mean": the rows already carry 1/denominator


@triton.jit
def _sigmoid_poly_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    pw_ptr,
    norm_ptr,
    consts_ptr,  # [alpha, gamma, ls, eps_1, ..., eps_n] in the compute dtype (cached on the device)
    stats_ptr,  # [., ., 1 / mean denominator (1 unless "mean")]
    loss_ptr,
    partial_ptr,
    g_ptr,
    numel,
    C,
    S,
    ignore_index,
    w_s0,  # strides of weight / pos_weight / normalizer viewed as (N, C, S): 0 along broadcast dimensions
    w_s1,
    w_s2,
    pw_s0,
    pw_s1,
    pw_s2,
    n_s0,
    n_s1,
    n_s2,
    IS_INDEX: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_PW: tl.constexpr,
    HAS_NORM: tl.constexpr,
    N_EPS: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dt: tl.constexpr = DT
    alpha = tl.load(consts_ptr)
    gamma = tl.load(consts_ptr + 1)
    ls = tl.load(consts_ptr + 2)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(dt)
    scale = tl.where(ok, 1.0, 0.0).to(dt)
    row = offs // (C * S)
    cls = (offs // S) % C
    sp = offs % S
    if IS_INDEX:
        y = tl.load(t_ptr + row * S + sp, mask=ok, other=0)
        scale = tl.where(y != ignore_index, scale, 0.0)
        t = tl.where(cls == y, 1.0, 0.0).to(dt)
    else:
        t = tl.load(t_ptr + offs, mask=ok, other=0).to(dt)
    if SMOOTH:
        t = t * (1.0 - ls) + 0.5 * ls
    tail = _log1p(_exp(-tl.abs(x)))
    relu_x = tl.maximum(x, 0.0)
    relu_neg = tl.maximum(-x, 0.0)
    if HAS_PW:
        pw = tl.load(pw_ptr + row * pw_s0 + cls * pw_s1 + sp * pw_s2, mask=ok, other=1.0).to(dt)
    else:
        pw = tl.full([BLOCK], 1.0, dt)
    ce = (1.0 - t) * (relu_x + tail) + pw * t * (relu_neg + tail)
    log_q = -(relu_x + tail)
    log_p = -(relu_neg + tail)
    p = _exp(log_p)
    q = _exp(log_q)
    u = t * q + (1.0 - t) * p
    if GAMMA_ZERO:
        mod = tl.full([BLOCK], 1.0, dt)
    else:
        mod = _exp(gamma * _log(u))
    if HAS_ALPHA:
        alpha_t = (2.0 * alpha - 1.0) * t + (1.0 - alpha)
    else:
        alpha_t = tl.full([BLOCK], 1.0, dt)
    inner = tl.zeros([BLOCK], dt)
    loss = alpha_t * ce
    if N_EPS > 0:
        poly, dpoly = _poly(u, consts_ptr + 3, gamma, N_EPS)
        loss = loss + poly
        inner = u * dpoly
    loss = mod * loss
    if not GAMMA_ZERO:
        inner = inner + gamma * alpha_t * ce
    if HAS_W:
        scale = scale * tl.load(w_ptr + row * w_s0 + cls * w_s1 + sp * w_s2, mask=ok, other=0.0).to(dt)
    if HAS_NORM:
        scale = scale / tl.load(norm_ptr + row * n_s0 + cls * n_s1 + sp * n_s2, mask=ok, other=1.0).to(dt)
    inv = tl.load(stats_ptr + 2).to(dt)
    loss = loss * scale * inv
    if STORE_LOSS:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0).to(partial_ptr.dtype.element_ty))
    if COMPUTE_GRAD:
        dce = (1.0 - t) * p - pw * t * q
        ratio = tl.where(u > 0.0, p * q / tl.where(u > 0.0, u, 1.0), 1.0)
        g = mod * (alpha_t * dce + (1.0 - 2.0 * t) * ratio * inner)
        g = tl.where(scale != 0.0, g * scale * inv, 0.0)  # ignored: 0 even when 1/denominator is inf
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _sigmoid_detection_kernel(
    x_ptr,
    t_ptr,
    score_ptr,
    w_ptr,
    pw_ptr,
    norm_ptr,
    consts_ptr,  # [alpha, gamma, ls, eps_1, ..., eps_n, gamma_neg, clip] in the compute dtype
    stats_ptr,  # [., ., 1 / mean denominator (1 unless "mean")]
    loss_ptr,
    partial_ptr,
    g_ptr,
    numel,
    C,
    S,
    ignore_index,
    w_s0,
    w_s1,
    w_s2,
    pw_s0,
    pw_s1,
    pw_s2,
    n_s0,
    n_s1,
    n_s2,
    VARIANT: tl.constexpr,  # 1 asymmetric ("poly" with gamma_neg / clip), 2 varifocal, 3 quality focal
    IOU_WEIGHTED: tl.constexpr,
    IS_INDEX: tl.constexpr,
    HAS_SCORE: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_PW: tl.constexpr,
    HAS_NORM: tl.constexpr,
    N_EPS: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    STORE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The detection members (:func:`._torch_impl.detection_terms`), element-wise like :func:`_sigmoid_poly_kernel`."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dt: tl.constexpr = DT
    alpha = tl.load(consts_ptr)
    gamma = tl.load(consts_ptr + 1)
    ls = tl.load(consts_ptr + 2)
    gamma_neg = tl.load(consts_ptr + 3 + N_EPS)
    clip = tl.load(consts_ptr + 4 + N_EPS)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(dt)
    scale = tl.where(ok, 1.0, 0.0).to(dt)
    row = offs // (C * S)
    cls = (offs // S) % C
    sp = offs % S
    if IS_INDEX:
        y = tl.load(t_ptr + row * S + sp, mask=ok, other=0)
        scale = tl.where(y != ignore_index, scale, 0.0)
        on_target = tl.full([BLOCK], 1.0, dt)
        if HAS_SCORE:
            on_target = tl.load(score_ptr + row * S + sp, mask=ok, other=0.0).to(dt)
        t = tl.where(cls == y, on_target, 0.0).to(dt)
    else:
        t = tl.load(t_ptr + offs, mask=ok, other=0).to(dt)
    if SMOOTH:
        t = t * (1.0 - ls) + 0.5 * ls
    tail = _log1p(_exp(-tl.abs(x)))
    a_pos = tl.maximum(x, 0.0) + tail  # -log(1 - s)
    a_neg = tl.maximum(-x, 0.0) + tail  # -log s
    p = _exp(-a_neg)
    q = _exp(-a_pos)
    pq = p * q
    if HAS_PW:
        pw = tl.load(pw_ptr + row * pw_s0 + cls * pw_s1 + sp * pw_s2, mask=ok, other=1.0).to(dt)
    else:
        pw = tl.full([BLOCK], 1.0, dt)
    one_minus_t = 1.0 - t
    if VARIANT == 2:
        w_pos = t if IOU_WEIGHTED else tl.full([BLOCK], 1.0, dt)
        a = alpha if HAS_ALPHA else 1.0
        mod = _exp(-gamma * a_neg)  # s^gamma
        bce = one_minus_t * a_pos + pw * t * a_neg
        loss = tl.where(t > 0.0, w_pos * bce, a * mod * a_pos)
        g = tl.where(t > 0.0, w_pos * (one_minus_t * p - pw * t * q), a * mod * (p + gamma * q * a_pos))
    else:
        if VARIANT == 3:
            delta = t * q - one_minus_t * p
            u = tl.abs(delta)
            ce = one_minus_t * a_pos + pw * t * a_neg
            dce = one_minus_t * p - pw * t * q
            du = tl.where(delta > 0.0, -pq, tl.where(delta < 0.0, pq, 0.0))
            g_t = tl.full([BLOCK], 1.0, dt) * gamma
            alpha_t = tl.full([BLOCK], 1.0, dt)
        else:
            if HAS_CLIP:
                s_m = tl.maximum(p - clip, 0.0)
                # 1 - s_m = min(q + clip, 1) (no cancellation as p -> 1); -log of it = -logaddexp(-a_pos, log clip)
                log_c = _log(clip)
                ce_neg = tl.maximum(tl.minimum(a_pos, -log_c) - _log1p(_exp(-tl.abs(a_pos + log_c))), 0.0)
                on = tl.where(p >= clip, 1.0, 0.0)
                dce_neg = on * pq / tl.minimum(q + clip, 1.0)
            else:
                s_m = p
                ce_neg = a_pos
                on = tl.full([BLOCK], 1.0, dt)
                dce_neg = p
            u = t * q + one_minus_t * s_m
            ce = one_minus_t * ce_neg + pw * t * a_neg
            dce = one_minus_t * dce_neg - pw * t * q
            du = (one_minus_t * on - t) * pq
            g_t = gamma * t + gamma_neg * one_minus_t
            if HAS_ALPHA:
                alpha_t = (2.0 * alpha - 1.0) * t + (1.0 - alpha)
            else:
                alpha_t = tl.full([BLOCK], 1.0, dt)
        positive_u = u > 0.0
        log_u = _log(tl.where(positive_u, u, 1.0))
        mod = tl.where(g_t == 0.0, 1.0, tl.where(positive_u, _exp(g_t * log_u), 0.0))
        poly = tl.zeros([BLOCK], dt)
        dpoly = tl.zeros([BLOCK], dt)
        if N_EPS > 0:
            poly, dpoly = _poly(u, consts_ptr + 3, 0.0, N_EPS)  # sum_j eps_j u^j, sum_j j eps_j u^(j-1)
        body = alpha_t * ce + poly
        loss = mod * body
        bracket = tl.where(positive_u, g_t * body / tl.where(positive_u, u, 1.0), 0.0) + dpoly
        g = mod * (alpha_t * dce + du * bracket)
    if HAS_W:
        scale = scale * tl.load(w_ptr + row * w_s0 + cls * w_s1 + sp * w_s2, mask=ok, other=0.0).to(dt)
    if HAS_NORM:
        scale = scale / tl.load(norm_ptr + row * n_s0 + cls * n_s1 + sp * n_s2, mask=ok, other=1.0).to(dt)
    inv = tl.load(stats_ptr + 2).to(dt)
    loss = loss * scale * inv
    if STORE_LOSS:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0).to(partial_ptr.dtype.element_ty))
    if COMPUTE_GRAD:
        g = tl.where(scale != 0.0, g * scale * inv, 0.0)
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=ok)


def sigmoid(x: torch.Tensor, target: torch.Tensor, args: SigmoidArgs, compute_grad: bool):
    """Same contract as :func:`._torch_impl.sigmoid`."""
    ct = compute_dtype(x)
    is_index, weight, pos_weight, normalizer, alpha = (
        args.is_index,
        args.weight,
        args.pos_weight,
        args.normalizer,
        args.alpha,
    )
    epsilon, gamma, label_smoothing, reduction = args.epsilon, args.gamma, args.label_smoothing, args.reduction
    ignore_index = NO_IGNORE if args.ignore_index is None else args.ignore_index
    x = x.contiguous()
    target = target.contiguous()
    numel = x.numel()
    n = x.shape[0]
    num_classes = x.shape[1] if x.ndim >= 2 else 1
    inner = numel // (n * num_classes) if n * num_classes else 1
    if is_index:
        stats = _prepare(
            target,
            None,
            None,
            num_classes=num_classes,
            high=num_classes,
            ignore_index=ignore_index,
            per_row=num_classes,
            mean=reduction == "mean",
            ct=ct,
        )
    else:
        stats = _const((0.0, 0.0, 1.0 / numel if reduction == "mean" and numel else 1.0), x.device, ct)
    consts = _const(
        (0.0 if alpha is None else float(alpha), float(gamma), float(label_smoothing), *map(float, epsilon)),
        x.device,
        ct,
    )
    views = [_view3(v, n, num_classes, inner, ct) for v in (weight, pos_weight, normalizer)]
    dense = [v for v, _ in views]
    strides = [st for _, strides3 in views for st in strides3]
    block = 1024
    programs = triton.cdiv(numel, block)
    loss = torch.empty(x.shape, dtype=ct, device=x.device) if reduction == "none" else None
    partial = torch.empty(max(programs, 1), dtype=ct, device=x.device) if reduction != "none" else None
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    out = loss if loss is not None else partial
    detection = args.variant != "poly" or args.gamma_neg is not None or args.clip > 0.0
    if numel and detection:
        consts = _const(
            (0.0 if alpha is None else float(alpha), float(gamma), float(label_smoothing), *map(float, epsilon),
             float(gamma if args.gamma_neg is None else args.gamma_neg), float(args.clip)),
            x.device,
            ct,
        )  # fmt: skip
        score = None if args.score is None else args.score.to(ct).contiguous()
        _sigmoid_detection_kernel[(programs,)](
            x,
            target if target.dtype != torch.bool else target.to(torch.uint8),
            score if score is not None else x,
            dense[0] if dense[0] is not None else x,
            dense[1] if dense[1] is not None else x,
            dense[2] if dense[2] is not None else x,
            consts,
            stats,
            out,
            out,
            grad if compute_grad else out,
            numel,
            num_classes,
            inner,
            ignore_index,
            *strides,
            VARIANT={"poly": 1, "varifocal": 2, "quality": 3}[args.variant],
            IOU_WEIGHTED=bool(args.iou_weighted),
            IS_INDEX=is_index,
            HAS_SCORE=score is not None,
            HAS_ALPHA=alpha is not None,
            HAS_W=dense[0] is not None,
            HAS_PW=dense[1] is not None,
            HAS_NORM=dense[2] is not None,
            N_EPS=len(epsilon),
            HAS_CLIP=args.clip > 0.0,
            STORE_LOSS=loss is not None,
            COMPUTE_GRAD=compute_grad,
            SMOOTH=label_smoothing > 0.0,
            DT=_TL_DTYPE[ct],
            BLOCK=block,
        )
    elif numel:
        _sigmoid_poly_kernel[(programs,)](
            x,
            target if target.dtype != torch.bool else target.to(torch.uint8),
            dense[0] if dense[0] is not None else x,
            dense[1] if dense[1] is not None else x,
            dense[2] if dense[2] is not None else x,
            consts,
            stats,
            out,
            out,
            grad if compute_grad else out,
            numel,
            num_classes,
            inner,
            ignore_index,
            *strides,
            IS_INDEX=is_index,
            HAS_ALPHA=alpha is not None,
            HAS_W=dense[0] is not None,
            HAS_PW=dense[1] is not None,
            HAS_NORM=dense[2] is not None,
            N_EPS=len(epsilon),
            GAMMA_ZERO=gamma == 0.0,
            STORE_LOSS=loss is not None,
            COMPUTE_GRAD=compute_grad,
            SMOOTH=label_smoothing > 0.0,
            DT=_TL_DTYPE[ct],
            BLOCK=block,
        )
    if loss is not None:
        return loss, grad
    if not numel:
        return torch.full((), float("nan") if reduction == "mean" else 0.0, dtype=ct, device=x.device), grad
    return partial.sum(), grad  # "mean": the elements already carry 1/denominator


def _view3(v: torch.Tensor | None, n: int, c: int, s: int, ct: torch.dtype):
    """``v`` (broadcast to the logits' shape, often with zero strides) as an ``(N, C, S)`` view and its strides,
    without materialising the broadcast; a layout that cannot be viewed so is copied (then it is logits-sized)."""
    if v is None:
        return None, (0, 0, 0)
    v = v.to(ct)  # prepare() already gives the compute dtype: a no-op
    try:
        v3 = v.view(n, c, s)
    except RuntimeError:
        v3 = v.contiguous().view(n, c, s)
    return v3, v3.stride()


@triton.jit
def _scale_unless_one_kernel(g_ptr, go_ptr, numel, BLOCK: tl.constexpr):
    go = tl.load(go_ptr)
    if go != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        g = tl.load(g_ptr + offs, mask=ok)
        tl.store(g_ptr + offs, (g.to(tl.float32) * go.to(tl.float32)).to(g_ptr.dtype.element_ty), mask=ok)


def scale_unless_one_(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad *= grad_output`` (a scalar tensor) in place; no memory pass when ``grad_output == 1``."""
    if grad.dtype == torch.float64 or not grad.is_contiguous():
        return grad.mul_(grad_output)
    if grad.numel():
        block = 4096
        _scale_unless_one_kernel[(triton.cdiv(grad.numel(), block),)](
            grad, grad_output.reshape(1), grad.numel(), BLOCK=block
        )
    return grad


def supports(x: torch.Tensor, target: torch.Tensor, args: SoftmaxArgs | SigmoidArgs) -> bool:
    """CUDA tensors (and, when forced with ``backend("triton")``, CPU tensors in Triton's interpreter); float32 math
    for fp16/bf16 input, float64 for float64."""
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
