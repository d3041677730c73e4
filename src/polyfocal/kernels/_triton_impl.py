r"""Triton kernels: the same math as :mod:`._torch_impl`, one launch per call for loss and gradient.

* softmax (persistent: program ``pid`` takes row blocks ``pid, pid + P, ...``): ``BLOCK_R`` rows per block (a
  row is one ``(n, d1, ...)`` position, its ``C`` logits ``S`` elements apart).  When the row fits
  (``C <= 8192``) it is read once into registers; else the classes are walked in ``BLOCK_C`` chunks twice: an
  online-softmax pass for the row statistics (max, sum of exponentials with and without the target, ``x_y``
  and, with label smoothing, ``sum_c a_c x_c``), the per-row PolyLoss terms of
  :func:`._torch_impl.softmax_row_terms`, then a pass that writes ``grad = P exp(x - lse) - K1 onehot - K2 a``
  in the input dtype (few programs per SM, so that pass finds the row in L2).  All math is fp32 (fp64 for fp64
  input).
* sigmoid: element-wise (:func:`._torch_impl.sigmoid_terms`), ``BLOCK`` elements per program; the asymmetric,
  varifocal and quality focal members in their own kernel (:func:`._torch_impl.detection_terms`).
* inside the one launch, through a per-stream workspace that every launch leaves reset (:func:`_workspace`):
  the ``"mean"`` denominator when it depends on the targets (:func:`_inv_den`: the program drawing ticket 0
  sums it, the others wait for its flag) and the final sum of ``"mean"`` / ``"sum"`` (:func:`_finish`: the last
  program to finish adds the per-program partials in program order: deterministic).  A class index out of range
  is never used as an address: its element's loss and gradient are nan (``TRITON_DEBUG=1``: a device assertion).
  No host sync anywhere, so a training step with these losses can be captured in a CUDA graph.
* launch configurations per class count and dtype, timed once on CUDA for large calls (:func:`_pick`).
* :func:`scale_unless_one_`: ``grad *= grad_output`` in the backward: one launch (a device-side branch skips the
  pass when ``grad_output == 1``; small buffers use torch's ``mul_``), no host sync.

Only ``exp2``/``log2``, atomics and arithmetic are used (no libdevice), so ``TRITON_INTERPRET=1`` runs every kernel
on the CPU: that is how CI tests them.
"""

from __future__ import annotations

import functools
import json
import os

import torch
import triton
import triton.language as tl

from .._args import Args
from .._validation import check_index_range, compute_dtype

__all__ = ["scale_unless_one_", "sigmoid", "softmax", "supports", "two_phase_grad_", "two_phase_stats"]

_HOST_INDEX_CHECK = [True]  # off-CUDA (the interpreter) the host names a bad index first; tests switch it off


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
def _softcap(x, cap):
    """The logit soft-cap ``cap * tanh(x / cap)`` and its derivative ``1 - tanh(x / cap)^2`` (exp2 only, no
    libdevice): for ``|u| < 0.2`` the Taylor series through ``u^15`` (no cancellation near 0; truncation ~1e-15
    relative), else ``tanh|u| = (1 - e) / (1 + e)`` and ``1 - tanh^2 = 4 e / (1 + e)^2`` with ``e = exp(-2|u|)`` (no
    cancellation as tanh -> 1).  ``+-inf`` give ``+-cap`` and 0; NaN stays NaN."""
    u = x / cap
    a = tl.abs(u)
    e = _exp(-2.0 * a)
    r = 1.0 / (1.0 + e)
    big = (1.0 - e) * r
    z = a * a
    p = -929569.0 / 638512875.0
    p = p * z + 21844.0 / 6081075.0
    p = p * z - 1382.0 / 155925.0
    p = p * z + 62.0 / 2835.0
    p = p * z - 17.0 / 315.0
    p = p * z + 2.0 / 15.0
    p = p * z - 1.0 / 3.0
    small = p * z * a + a
    lo = a < 0.2
    t = tl.where(lo, small, big)
    d = tl.where(lo, 1.0 - small * small, 4.0 * e * r * r)
    return tl.where(u < 0.0, -t, t) * cap, d


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
def _bits(v, DT: tl.constexpr):
    """A compute-dtype value as the same-width integer: the workspace's float slots are written and read with
    integer atomics (exchange of floats is missing in Triton's interpreter; the bits are the same on a GPU)."""
    return v.to(tl.int64 if DT == tl.float64 else tl.int32, bitcast=True)


@triton.jit
def _inv_den(y_ptr, w_ptr, ws_ptr, wsb_ptr, R, HIGH, ignore_index, den_host, per_row, DEN_DEVICE: tl.constexpr,
             HAS_W: tl.constexpr, DT: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """``1 / (mean denominator)``.  Known on the host (``den_host``: rows or elements, 1 unless "mean") or, with
    ``DEN_DEVICE`` (ignore_index / class weights), summed over the targets inside this launch: the program that
    draws ticket 0 sums them into slot ``wsb[0]`` and then sets the flag ``ws[2]`` (0 between launches); the
    others spin on the flag.  The drawer is running when it draws, so it always finishes: no grid-wide barrier,
    any grid size."""
    one = tl.full([], 1.0, DT)
    if DEN_DEVICE:
        ticket = tl.atomic_add(ws_ptr, 1)
        if ticket == 0:
            offs = tl.arange(0, BLOCK)
            acc = tl.zeros([BLOCK], DT)
            for r0 in range(0, R, BLOCK):
                rows = r0 + offs
                rm = rows < R
                y = tl.load(y_ptr + rows, mask=rm, other=0)
                good = rm & (y != ignore_index) & (y >= 0) & (y <= HIGH)
                if HAS_W:
                    acc += tl.load(w_ptr + tl.where(good, y, 0), mask=good, other=0.0).to(DT)
                else:
                    acc += good.to(DT)
            tl.atomic_xchg(wsb_ptr, _bits(tl.sum(acc, axis=0), DT))
            tl.atomic_xchg(ws_ptr + 2, 1)  # release: the total is in place (any value: weights may be negative)
        ready = tl.atomic_add(ws_ptr + 2, 0)
        while ready == 0:
            ready = tl.atomic_add(ws_ptr + 2, 0)
        den = tl.atomic_add(wsb_ptr, 0).to(DT, bitcast=True)
        inv = one / (den * per_row)
    else:
        inv = one / (one * den_host)
    return inv


@triton.jit
def _finish(partial, out_ptr, ws_ptr, wsb_ptr, DT: tl.constexpr, BLOCK_P: tl.constexpr):
    """The launch-wide sum, deterministic: each program leaves its partial sum in slot ``wsb[1 + pid]`` and draws
    a finishing ticket; the last one sums the partials in program order, stores the output and resets the
    workspace (every program has passed :func:`_inv_den` by then) for the next launch."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    tl.atomic_xchg(wsb_ptr + 1 + pid, _bits(partial.to(DT), DT))
    ticket = tl.atomic_add(ws_ptr + 1, 1)
    if ticket == nprog - 1:
        offs = tl.arange(0, BLOCK_P)
        tot = tl.zeros([BLOCK_P], DT)
        for p0 in range(0, nprog, BLOCK_P):
            m = p0 + offs < nprog
            # volatile: read at L2, where the other programs' atomic exchanges landed (ordered by the ticket)
            part = tl.load(wsb_ptr + 1 + p0 + offs, mask=m, other=0, volatile=True)
            tot += tl.where(m, part.to(DT, bitcast=True), 0.0)
        tl.store(out_ptr, tl.sum(tot, axis=0).to(out_ptr.dtype.element_ty))
        tl.atomic_xchg(ws_ptr, 0)
        tl.atomic_xchg(ws_ptr + 1, 0)
        tl.atomic_xchg(ws_ptr + 2, 0)


@triton.jit
def _sm_rows(y_ptr, blk, R, C, S, ignore_index, BLOCK_R: tl.constexpr):
    """Row block ``blk``: the rows, their offsets into ``(N, C, S)``, the class indices (0 where ignored or out of
    range), which rows count, and which have an out-of-range index (never addressed; their loss and gradient are
    nan; ``TRITON_DEBUG=1`` asserts)."""
    rows = (blk * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_ok = rows < R
    n = rows // S
    base = n * C * S + (rows - n * S)
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)
    valid = row_ok & (y != ignore_index)
    bad = valid & ((y < 0) | (y >= C))
    tl.device_assert(bad == 0, "polyfocal: class index out of range (TRITON_DEBUG=1 check)")
    valid = valid & (bad == 0)
    return rows, row_ok, base, tl.where(valid, y, 0), valid, bad


@triton.jit
def _sm_target(x_ptr, bias_ptr, margin_ptr, offs, y, row_ok, s, cap, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_MARGIN: tl.constexpr, HAS_SCALE: tl.constexpr, dt: tl.constexpr):  # fmt: skip
    """The target's adjusted logit ``s (c tanh(x_y / c) + b_y - m_y)`` per row, and its margin ``m_y``."""
    x_t = tl.load(x_ptr + offs, mask=row_ok, other=0.0).to(dt)
    if SOFTCAP:
        x_t, _d_t = _softcap(x_t, cap)
    m_y = tl.zeros_like(x_t)
    if HAS_BIAS:
        x_t = x_t + tl.load(bias_ptr + y, mask=row_ok, other=0.0).to(dt)
    if HAS_MARGIN:
        m_y = tl.load(margin_ptr + y, mask=row_ok, other=0.0).to(dt)
        x_t = x_t - m_y
    if HAS_SCALE:
        x_t = x_t * s
    return x_t, m_y


@triton.jit
def _sm_stats_chunks(x_ptr, a_ptr, bias_ptr, margin_ptr, base, row_ok, y, m_y, s, cap, C, S, HAS_A: tl.constexpr,
                     SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr,
                     HAS_SCALE: tl.constexpr, dt: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr):  # fmt: skip
    """Online softmax over the class chunks of rows too long for registers: the max, ``sum_c e_c``,
    ``sum_{c != y} e_c`` (both relative to the max) and label smoothing's ``sum_c a_c z'_c``."""
    m = tl.full([BLOCK_R], -1.0e38, dt)
    s_all = tl.zeros([BLOCK_R], dt)
    s_rest = tl.zeros([BLOCK_R], dt)
    x_a = tl.zeros([BLOCK_R], dt)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=float("-inf")).to(dt)
        if SOFTCAP:  # masked lanes stay -inf
            x_c, _d_pass1 = _softcap(x, cap)
            x = tl.where(mask, x_c, float("-inf"))
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
    return m, s_all, s_rest, x_a


@triton.jit
def _sm_stats_row(x_ptr, a_ptr, bias_ptr, margin_ptr, base, cols, col_ok, mask, y, m_y, s, cap, S, HAS_A: tl.constexpr,
                  SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr,
                  HAS_SCALE: tl.constexpr, dt: tl.constexpr):  # fmt: skip
    """Rows that fit in registers, read once: the max, ``e = exp(z' - max)`` (kept for the gradient), ``sum_c
    e_c``, ``sum_{c != y} e_c``, label smoothing's ``sum_c a_c z'_c`` and the soft-cap's derivative (``e`` as a
    stand-in without a cap)."""
    x = tl.load(x_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=float("-inf")).to(dt)
    if SOFTCAP:  # masked lanes stay -inf
        x_c, d_cap = _softcap(x, cap)
        x = tl.where(mask, x_c, float("-inf"))
    x = _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS, HAS_MARGIN, HAS_SCALE)
    m = tl.maximum(tl.max(x, axis=1), -1.0e38)
    e = _exp(x - m[:, None])
    s_all = tl.sum(e, axis=1)
    s_rest = tl.sum(tl.where(cols[None, :] == y[:, None], 0.0, e), axis=1)
    x_a = tl.zeros_like(m)
    if SMOOTH:
        xs = tl.where(mask, x, 0.0)
        if HAS_A:
            xs = xs * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
        x_a = tl.sum(xs, axis=1)
    if not SOFTCAP:
        d_cap = e
    return m, e, s_all, s_rest, x_a, d_cap


@triton.jit
def _sm_grad_tail(g, a_ptr, cols, col_ok, k2, d_cap, HAS_A: tl.constexpr, SMOOTH: tl.constexpr,
                  SOFTCAP: tl.constexpr, dt: tl.constexpr):  # fmt: skip
    """The gradient's label-smoothing term ``- K2 a_c`` and the soft-cap's chain-rule factor."""
    if SMOOTH:
        if HAS_A:
            g -= k2[:, None] * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(dt)[None, :]
        else:
            g -= k2[:, None]
    if SOFTCAP:
        g = g * d_cap
    return g


@triton.jit
def _sm_class_sums(a_ptr, w_ptr, C, HAS_A: tl.constexpr, HAS_W: tl.constexpr, SMOOTH: tl.constexpr, dt: tl.constexpr,
                   BLOCK_C: tl.constexpr):  # fmt: skip
    """``sum_c a_c`` and ``sum_c w_c`` for label smoothing (C without weights, or without smoothing)."""
    a_sum = tl.full([], 0.0, dt) + C
    w_sum = tl.full([], 0.0, dt) + C
    if SMOOTH:
        if HAS_A or HAS_W:
            offs_c = tl.arange(0, BLOCK_C)
            a_acc = tl.zeros([BLOCK_C], dt)
            w_acc = tl.zeros([BLOCK_C], dt)
            for c0 in range(0, C, BLOCK_C):
                cm = c0 + offs_c < C
                if HAS_A:
                    a_acc += tl.load(a_ptr + c0 + offs_c, mask=cm, other=0.0).to(dt)
                if HAS_W:
                    w_acc += tl.load(w_ptr + c0 + offs_c, mask=cm, other=0.0).to(dt)
            if HAS_A:
                a_sum = tl.sum(a_acc, axis=0)
            if HAS_W:
                w_sum = tl.sum(w_acc, axis=0)
    return a_sum, w_sum


@triton.jit
def _sm_row_terms(x_t, m, s_all, s_rest, x_a, a_ptr, w_ptr, y, row_ok, a_sum, w_sum, consts_ptr, gamma, ls, z_w, C,
                  N_EPS: tl.constexpr, GAMMA_ZERO: tl.constexpr, SMOOTH: tl.constexpr, HAS_Z: tl.constexpr,
                  HAS_A: tl.constexpr, HAS_W: tl.constexpr, dt: tl.constexpr):  # fmt: skip
    """From the row statistics (max ``m``, ``sum_c e_c``, ``sum_{c != y} e_c``, the target logit, the smoothing
    sum): the row loss, ``lse`` and the gradient coefficients ``K1 / scale``, ``K2 / scale`` of
    ``dL/dz' = (K1 + K2 A + 2 z_w lse) p - K1 onehot_y - K2 a``; ``a_y`` / ``w_y`` are read here."""
    a_y = tl.zeros_like(m) + 1.0
    w_y = tl.zeros_like(m) + 1.0
    if HAS_A:
        a_y = tl.load(a_ptr + y, mask=row_ok, other=0.0).to(dt)
    if HAS_W:
        w_y = tl.load(w_ptr + y, mask=row_ok, other=0.0).to(dt)
    lse = m + _log(s_all)
    p1 = _exp(x_t - lse)
    u1 = s_rest / s_all
    ce1 = tl.where(u1 < 0.5, -_log1p(-u1), lse - x_t)
    if SMOOTH:
        ce_a = (1.0 - ls) * a_y * ce1 + (ls / C) * (a_sum * lse - x_a)
        u = (1.0 - ls) * u1 + (ls - ls / C)
        w_poly = (1.0 - ls) * w_y + (ls / C) * w_sum
    else:
        ce_a = a_y * ce1
        u = u1
        w_poly = w_y
    if GAMMA_ZERO:
        mod = tl.zeros_like(u) + 1.0
    else:
        mod = _exp(gamma * _log(u))
    dl_du = tl.zeros_like(u)
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
    k1 = (1.0 - ls) * mod * (a_y + dl_du * p1)
    k2 = mod * (ls / C)
    return loss, lse, k1, k2


@triton.jit
def _sm_grad_chunks(x_ptr, g_ptr, a_ptr, bias_ptr, margin_ptr, base, row_ok, y, m_y, s, coef, lse, k1, k2, cap, C, S,
                    HAS_A: tl.constexpr, SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
                    HAS_MARGIN: tl.constexpr, HAS_SCALE: tl.constexpr, dt: tl.constexpr,
                    BLOCK_C: tl.constexpr):  # fmt: skip
    """The gradient of rows too long for registers: a second pass over the class chunks, ``coef exp(z' - lse) -
    K1 onehot_y - K2 a`` (times the soft-cap's derivative)."""
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        mask = row_ok[:, None] & col_ok[None, :]
        offs = base[:, None] + cols[None, :].to(tl.int64) * S
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(dt)
        if SOFTCAP:  # masked lanes stay -inf
            x_c, d_cap = _softcap(x, cap)
            x = tl.where(mask, x_c, float("-inf"))
        x = _adjust(x, cols, col_ok, y, m_y, s, bias_ptr, HAS_BIAS, HAS_MARGIN, HAS_SCALE)
        g = coef[:, None] * _exp(x - lse[:, None]) - tl.where(cols[None, :] == y[:, None], k1[:, None], 0.0)
        if SOFTCAP:
            g = _sm_grad_tail(g, a_ptr, cols, col_ok, k2, d_cap, HAS_A, SMOOTH, SOFTCAP, dt)
        else:
            g = _sm_grad_tail(g, a_ptr, cols, col_ok, k2, g, HAS_A, SMOOTH, SOFTCAP, dt)
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["den_host", "ignore_index"])
def _softmax_poly_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    w_ptr,
    norm_ptr,
    consts_ptr,  # [gamma, ls, eps_1, ..., eps_n, s, z_loss] in the compute dtype (cached on the device)
    loss_ptr,  # (R,) for "none", else the 0-d output
    g_ptr,
    ws_ptr,  # workspace (see _workspace): int32 [den ticket, finish ticket, flag]; float bits [den, partials]
    wsb_ptr,
    R,
    C,
    S,
    ignore_index,
    den_host,
    bias_ptr,  # long-tail options: (C,) bias = tau log prior, (C,) margin
    margin_ptr,
    HAS_A: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_NORM: tl.constexpr,
    N_EPS: tl.constexpr,
    GAMMA_ZERO: tl.constexpr,
    SMOOTH: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    REDUCE: tl.constexpr,  # 0 "none", 1 "sum", 2 "mean"
    DEN_DEVICE: tl.constexpr,
    DT: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_MARGIN: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_Z: tl.constexpr,
    softcap=0.0,  # logit soft-cap c: each loaded logit x is read as c tanh(x / c) (before the options above)
    SOFTCAP: tl.constexpr = False,
):
    """Persistent: program ``pid`` takes row blocks ``pid, pid + P, ...``; the whole call is this one launch."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    dt: tl.constexpr = DT
    gamma = tl.load(consts_ptr)
    ls = tl.load(consts_ptr + 1)
    s = tl.load(consts_ptr + 2 + N_EPS).to(dt)
    z_w = tl.load(consts_ptr + 3 + N_EPS).to(dt)
    if SOFTCAP:
        cap = tl.full([], 0.0, dt) + softcap
    a_sum, w_sum = _sm_class_sums(a_ptr, w_ptr, C, HAS_A, HAS_W, SMOOTH, dt, BLOCK_C)
    inv = _inv_den(y_ptr, w_ptr, ws_ptr, wsb_ptr, R, C - 1, ignore_index, den_host, 1, DEN_DEVICE, HAS_W, dt, 2048)
    acc = tl.zeros([BLOCK_R], dt)
    for blk in range(pid, tl.cdiv(R, BLOCK_R), nprog):
        rows, row_ok, base, y, valid, bad = _sm_rows(y_ptr, blk, R, C, S, ignore_index, BLOCK_R)
        x_t, m_y = _sm_target(x_ptr, bias_ptr, margin_ptr, base + y * S, y, row_ok, s, cap if SOFTCAP else 0.0,
                              SOFTCAP, HAS_BIAS, HAS_MARGIN, HAS_SCALE, dt)  # fmt: skip

        if SINGLE:  # the whole row in registers: read once, reused for the gradient
            cols = tl.arange(0, BLOCK_C)
            col_ok = cols < C
            mask = row_ok[:, None] & col_ok[None, :]
            m, e, s_all, s_rest, x_a, d_cap = _sm_stats_row(x_ptr, a_ptr, bias_ptr, margin_ptr, base, cols, col_ok,
                                                            mask, y, m_y, s, cap if SOFTCAP else 0.0, S, HAS_A,
                                                            SMOOTH, SOFTCAP, HAS_BIAS, HAS_MARGIN, HAS_SCALE,
                                                            dt)  # fmt: skip
        else:  # online softmax over class chunks
            m, s_all, s_rest, x_a = _sm_stats_chunks(x_ptr, a_ptr, bias_ptr, margin_ptr, base, row_ok, y, m_y, s,
                                                     cap if SOFTCAP else 0.0, C, S, HAS_A, SMOOTH, SOFTCAP, HAS_BIAS,
                                                     HAS_MARGIN, HAS_SCALE, dt, BLOCK_R, BLOCK_C)  # fmt: skip

        loss, lse, k1_row, k2_row = _sm_row_terms(x_t, m, s_all, s_rest, x_a, a_ptr, w_ptr, y, row_ok, a_sum, w_sum,
                                                  consts_ptr, gamma, ls, z_w, C, N_EPS, GAMMA_ZERO, SMOOTH, HAS_Z,
                                                  HAS_A, HAS_W, dt)  # fmt: skip
        scale = tl.where(valid, 1.0, 0.0).to(dt) * inv  # 1 / mean denominator (1 unless "mean")
        if HAS_NORM:
            scale = scale / tl.load(norm_ptr + rows, mask=row_ok, other=1.0).to(dt)
        row_loss = tl.where(bad, float("nan"), loss * scale)
        if REDUCE == 0:
            tl.store(loss_ptr + rows, row_loss.to(loss_ptr.dtype.element_ty), mask=row_ok)
        else:
            acc += tl.where(row_ok, row_loss, 0.0)

        if COMPUTE_GRAD:
            scale = tl.where(valid, scale, 0.0)  # ignored rows: 0 even when 1/denominator is inf (all ignored)
            if HAS_SCALE:  # chain rule through z' = s (...)
                scale = scale * s
            k1 = tl.where(bad, float("nan"), k1_row * scale)
            k2 = k2_row * scale
            coef = k1 + k2 * a_sum
            if HAS_Z:  # d(z_w lse^2)/dz' = 2 z_w lse softmax(z')
                coef = coef + 2.0 * z_w * lse * scale
            if SINGLE:
                g = (coef / s_all)[:, None] * e - tl.where(cols[None, :] == y[:, None], k1[:, None], 0.0)
                g = _sm_grad_tail(g, a_ptr, cols, col_ok, k2, d_cap, HAS_A, SMOOTH, SOFTCAP, dt)
                offs = base[:, None] + cols[None, :].to(tl.int64) * S
                tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
            else:
                _sm_grad_chunks(x_ptr, g_ptr, a_ptr, bias_ptr, margin_ptr, base, row_ok, y, m_y, s, coef, lse, k1, k2,
                                cap if SOFTCAP else 0.0, C, S, HAS_A, SMOOTH, SOFTCAP, HAS_BIAS, HAS_MARGIN, HAS_SCALE,
                                dt, BLOCK_C)  # fmt: skip
    if REDUCE != 0:
        _finish(tl.sum(acc, axis=0), loss_ptr, ws_ptr, wsb_ptr, dt, BLOCK_P)


@functools.lru_cache(maxsize=512)
def _const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Hyperparameters as a small device tensor, copied to the device once per distinct value (a host-to-device
    copy from pageable memory would wait for the stream on every call)."""
    return torch.tensor(values, dtype=dtype, device=device)


_TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}
_REDUCE = {"none": 0, "sum": 1, "mean": 2}
_BLOCK_P = 2048  # partial sums per step of the final sum: softmax (<= 8 programs per SM: one step)
_BLOCK_P_SIGMOID = 8192  # one program per block of elements: up to ~10^5 partials, a few steps
# (device, compute dtype, stream) -> (int32 tickets, compute-dtype [den, partials...]); the kernels leave it reset
_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED_WORKSPACES: list[tuple[torch.Tensor, torch.Tensor]] = []


def _cdiv(a: int, b: int) -> int:  # host arithmetic: triton.cdiv is a jit function (microseconds per call)
    return -(-a // b)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _stream_id(device: torch.device) -> int:
    return torch._C._cuda_getCurrentRawStream(device.index) if device.type == "cuda" else 0


def _workspace(device: torch.device, ct: torch.dtype, programs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-program scratch of one launch: int32 ``[den ticket, finish ticket, den-ready flag]`` (0 between
    launches) and ``[den, partial sums...]`` in the compute dtype, as integers of its width.  One per stream:
    launches on one stream run in order, so they never share it at the same time.  Allocated (two small fills)
    on first use and when a launch has more programs than slots."""
    key = (device, ct, _stream_id(device))
    ws = _WORKSPACES.get(key)
    if ws is None or ws[1].numel() < programs + 1:
        if ws is not None:  # kept alive: a captured CUDA graph may still address it
            _RETIRED_WORKSPACES.append(ws)
        cap = max(4096, _pow2(programs + 1))
        bits = torch.zeros(cap, dtype=torch.int64 if ct == torch.float64 else torch.int32, device=device)
        ws = (torch.zeros(3, dtype=torch.int32, device=device), bits)
        _WORKSPACES[key] = ws
    return ws


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


# Per-shape launch configurations.  Softmax: (BLOCK_R, BLOCK_C, num_warps, programs per SM); sigmoid: (BLOCK,
# num_warps).  Keyed on the class count, dtype and whether the call is large (>= _TUNE_FROM elements); on CUDA
# each new large key is tuned once by timing a few candidates on the call itself (POLYFOCAL_TRITON_TUNE=0: the
# first candidate without timing).
_CONFIGS: dict[tuple, tuple[int, ...]] = {}
_TUNE_FROM = 1 << 22  # logits elements: smaller calls are launch-bound, they take the first candidate untimed
_INTERPRETER_PROGRAMS = 3  # CPU interpreter: a few persistent programs, so the tests walk the loops


_SINGLE_MAX = 8192  # the largest row kept in registers: 16384 spills at 16-32 warps (ptxas, sm_90)


def _softmax_candidates(num_classes: int, itemsize: int) -> list[tuple[int, int, int, int]]:
    """Launch configurations worth timing for ``C`` classes (at most five: each costs a compilation); the first
    is the default when tuning is off.  8-16 elements per thread: more spill (ptxas, sm_90) or, through the
    register count, leave one program per SM."""
    c2 = _pow2(max(num_classes, 1))
    if c2 <= _SINGLE_MAX:  # the row block in registers: one read of the logits, the gradient from registers
        out = []
        for elems, per_thread in ((4096, 8), (4096, 16), (2048, 8), (8192, 16), (2048, 16)):
            block_r = max(1, min(64, elems // c2))
            warps = max(1, min(16, block_r * c2 // (32 * per_thread)))
            out.append((block_r, c2, warps, 8 if warps <= 8 else 4))
        return list(dict.fromkeys(out))
    # chunks, two passes over the row: few programs per SM, so the second pass finds the row in L2
    return [(1, 4096, 16, 2), (1, 8192, 16, 2), (1, 4096, 8, 4), (1, 4096, 16, 1), (1, 2048, 8, 4)]


def _configs_path() -> str | None:
    """``POLYFOCAL_TRITON_CONFIGS``: a JSON file the tuned configurations are read from at import and written to
    after each tuning (per machine: they are timings of one GPU)."""
    return os.environ.get("POLYFOCAL_TRITON_CONFIGS") or None


def _load_configs() -> None:
    path = _configs_path()
    if path is None or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            for entry in json.load(f):
                key = tuple(getattr(torch, k[4:]) if str(k).startswith("dt::") else k for k in entry["key"])
                _CONFIGS[key] = tuple(entry["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # a damaged file: tune again


def _save_configs() -> None:
    path = _configs_path()
    if path is None:
        return
    entries = [
        {"key": [f"dt::{str(k)[6:]}" if isinstance(k, torch.dtype) else k for k in key], "config": list(cfg)}
        for key, cfg in _CONFIGS.items()
    ]
    try:
        with open(path + ".tmp", "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def _tuning(device: torch.device) -> str:
    """``"off"`` (CPU, or ``POLYFOCAL_TRITON_TUNE=0``: the first candidate, cached), ``"later"`` (timing would
    synchronise: a CUDA graph is being captured or sync-debug mode is on; the first candidate, not cached, so a
    later plain call tunes) or ``"now"``."""
    if device.type != "cuda" or os.environ.get("POLYFOCAL_TRITON_TUNE", "1") == "0":
        return "off"
    if torch.cuda.is_current_stream_capturing() or torch.cuda.get_sync_debug_mode() != 0:
        return "later"
    return "now"


def _pick(key: tuple, candidates: list, launch, device: torch.device) -> tuple[int, ...]:
    """The configuration for a key missing from :data:`_CONFIGS`: the fastest candidate by
    ``triton.testing.do_bench`` (a few ms each; compilation dominates), else the first."""
    mode = "off" if len(candidates) == 1 or not key[-1] else _tuning(device)
    if mode == "later":
        return candidates[0]
    cfg = candidates[0]
    if mode == "now":
        import triton.testing

        timings = []
        for cand in candidates:
            try:
                timings.append((triton.testing.do_bench(lambda cand=cand: launch(cand), warmup=5, rep=15), cand))
            except Exception:  # a configuration this device cannot run (registers / shared memory): skip it
                continue
        cfg = min(timings)[1] if timings else cfg
    _CONFIGS[key] = cfg
    if mode == "now":
        _save_configs()
    return cfg


def _run(launch, cfg: tuple[int, ...], device: torch.device) -> None:
    if device.type == "cuda":
        launch(cfg)
        return
    try:  # Triton's interpreter can raise mid-launch (an assertion): leave the tickets reset for the next call
        launch(cfg)
    except BaseException:
        for key, (tickets, _) in _WORKSPACES.items():
            if key[0] == device:
                tickets.zero_()
        raise


def _softmax_operands(args: Args, device: torch.device, ct: torch.dtype) -> tuple[tuple, dict]:
    """The softmax kernel's option operands (constants array, vectors in the compute dtype) and flags, built once
    per launch site from the argument object."""
    consts = (float(args.gamma), float(args.label_smoothing), *map(float, args.epsilon), float(args.logit_scale),
              float(args.z_loss))  # fmt: skip
    vector = lambda v: None if v is None else v.to(device=device, dtype=ct).contiguous()  # noqa: E731
    bias, margin, norm = vector(args.bias), vector(args.margin), vector(args.normalizer)
    operands = (args.class_weight, args.weight, norm, _const(consts, device, ct), bias, margin)
    flags = dict(
        HAS_A=args.class_weight is not None,
        HAS_W=args.weight is not None,
        HAS_NORM=norm is not None,
        N_EPS=len(args.epsilon),
        GAMMA_ZERO=args.gamma == 0.0,
        SMOOTH=args.label_smoothing > 0.0,
        DT=_TL_DTYPE[ct],
        BLOCK_P=_BLOCK_P,
        HAS_BIAS=bias is not None,
        HAS_MARGIN=margin is not None,
        HAS_SCALE=args.logit_scale != 1.0,
        HAS_Z=args.z_loss != 0.0,
        softcap=args.softcap if args.softcap > 0.0 else 0.0,
        SOFTCAP=args.softcap > 0.0,
    )
    return operands, flags


def softmax(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool):
    """Same contract as :func:`._torch_impl.softmax`; one kernel launch (see :func:`_softmax_poly_kernel`)."""
    ct = compute_dtype(x)
    x, target = x.contiguous(), target.contiguous()
    n, num_classes = x.shape[0], x.shape[1]
    inner = x.numel() // (n * num_classes) if n * num_classes else 1
    rows = target.numel()
    if not x.is_cuda and _HOST_INDEX_CHECK[0]:  # the interpreter: a host read is free; name the offending index
        check_index_range(target, num_classes, args.ignore_index, background=False)
    reduce = _REDUCE[args.reduction]
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    if not rows or not num_classes:
        out = torch.empty(target.shape, dtype=ct, device=x.device)
        if reduce:
            out = torch.full((), float("nan") if reduce == 2 else 0.0, dtype=ct, device=x.device)
        return out, grad.zero_() if compute_grad else grad
    (class_weight, weight, norm, consts, bias, margin), flags = _softmax_operands(args, x.device, ct)
    den_device = reduce == 2 and (args.ignore_index is not None or weight is not None)
    flags.update(COMPUTE_GRAD=compute_grad, REDUCE=reduce, DEN_DEVICE=den_device)
    out = torch.empty(target.shape if reduce == 0 else (), dtype=ct, device=x.device)
    sizes = (rows, num_classes, inner, args.ignore_code, rows if reduce == 2 else 1)
    sms = _sm_count(x.device)

    def launch(cfg: tuple[int, ...]) -> None:
        block_r, block_c, warps, per_sm = cfg
        blocks = _cdiv(rows, block_r)
        programs = min(blocks, sms * per_sm) if x.is_cuda else min(blocks, _INTERPRETER_PROGRAMS)
        ws, wsf = _workspace(x.device, ct, programs) if reduce else (None, None)
        g = grad if compute_grad else None
        _softmax_poly_kernel[(programs,)](x, target, class_weight, weight, norm, consts, out, g, ws, wsf, *sizes, bias,
                                          margin, SINGLE=num_classes <= block_c, BLOCK_R=block_r, BLOCK_C=block_c,
                                          num_warps=warps, **flags)  # fmt: skip

    key = ("softmax", num_classes, x.dtype, x.numel() >= _TUNE_FROM)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if x.is_cuda:
            cfg = _pick(key, _softmax_candidates(num_classes, x.element_size()), launch, x.device)
        else:
            block_c = min(_pow2(num_classes), 4096 if ct == torch.float32 else 2048)  # the interpreter: numpy
            cfg = (max(1, min(128, 4096 // block_c)), block_c, 4, 1)
    _run(launch, cfg, x.device)
    return out, grad


@triton.jit
def _sg_target(t_ptr, score_ptr, offs, ok, C, S, ignore_index, ls, IS_INDEX: tl.constexpr, HAS_SCORE: tl.constexpr,
               SMOOTH: tl.constexpr, dt: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """The sigmoid family's target per element (from class indices: 1, or the ``(label, score)`` score, on the
    target class; index C is background) with label smoothing; the mask scale, the out-of-range flag (the element's
    loss and gradient are nan; ``TRITON_DEBUG=1`` asserts) and the ``(row, class, position)`` of each element."""
    scale = tl.where(ok, 1.0, 0.0).to(dt)
    row = offs // (C * S)
    cls = (offs // S) % C
    sp = offs % S
    bad = tl.zeros([BLOCK], tl.int1)
    if IS_INDEX:
        y = tl.load(t_ptr + row * S + sp, mask=ok, other=0)
        scale = tl.where(y != ignore_index, scale, 0.0)
        bad = ok & (y != ignore_index) & ((y < 0) | (y > C))  # C: background; others make the loss nan
        tl.device_assert(bad == 0, "polyfocal: class index out of range (TRITON_DEBUG=1 check)")
        on_target = tl.full([BLOCK], 1.0, dt)
        if HAS_SCORE:
            on_target = tl.load(score_ptr + row * S + sp, mask=ok, other=0.0).to(dt)
        t = tl.where(cls == y, on_target, 0.0).to(dt)
    else:
        t = tl.load(t_ptr + offs, mask=ok, other=0).to(dt)
    if SMOOTH:
        t = t * (1.0 - ls) + 0.5 * ls
    return t, scale, bad, row, cls, sp


@triton.jit
def _sg_store(loss, g, scale, bad, offs, ok, row, cls, sp, w_ptr, w_s0, w_s1, w_s2, norm_ptr, n_s0, n_s1, n_s2, t_ptr,
              ws_ptr, wsb_ptr, loss_ptr, g_ptr, numel, C, ignore_index, den_host, HAS_W: tl.constexpr,
              HAS_NORM: tl.constexpr, DEN_DEVICE: tl.constexpr, REDUCE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
              dt: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """The sigmoid kernels' epilogue: ``weight`` / ``normalizer`` / the ``"mean"`` denominator applied, the element
    losses stored (or summed into the one output) and the gradient stored (0 for ignored elements)."""
    if HAS_W:
        scale = scale * tl.load(w_ptr + row * w_s0 + cls * w_s1 + sp * w_s2, mask=ok, other=0.0).to(dt)
    if HAS_NORM:
        scale = scale / tl.load(norm_ptr + row * n_s0 + cls * n_s1 + sp * n_s2, mask=ok, other=1.0).to(dt)
    inv = _inv_den(t_ptr, t_ptr, ws_ptr, wsb_ptr, numel // C, C, ignore_index, den_host, C, DEN_DEVICE, False, dt,
                   2048)  # fmt: skip
    loss = tl.where(bad, float("nan"), loss * scale * inv)
    if REDUCE == 0:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=ok)
    else:
        _finish(tl.sum(tl.where(ok, loss, 0.0), axis=0), loss_ptr, ws_ptr, wsb_ptr, dt, BLOCK_P)
    if COMPUTE_GRAD:
        g = tl.where(scale != 0.0, g * scale * inv, 0.0)  # ignored: 0 even when 1/denominator is inf
        g = tl.where(bad, float("nan"), g)
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _det_quality(t, p, q, a_pos, a_neg, pw, gamma):
    """Quality focal loss: ``u = |t - s|``, its CE and their derivatives, the exponent and ``alpha_t = 1``."""
    one_minus_t = 1.0 - t
    delta = t * q - one_minus_t * p
    pq = p * q
    du = tl.where(delta > 0.0, -pq, tl.where(delta < 0.0, pq, 0.0))
    ce = one_minus_t * a_pos + pw * t * a_neg
    dce = one_minus_t * p - pw * t * q
    return tl.abs(delta), ce, dce, du, tl.zeros_like(t) + gamma, tl.zeros_like(t) + 1.0


@triton.jit
def _det_asymmetric(t, p, q, a_pos, a_neg, pw, alpha, gamma, gamma_neg, clip, HAS_ALPHA: tl.constexpr,
                    HAS_CLIP: tl.constexpr):  # fmt: skip
    """The asymmetric loss: the probability margin on the negatives, ``u = t q + (1 - t) s_m``, its CE and their
    derivatives, ``gamma_t = gamma t + gamma_neg (1 - t)`` and ``alpha_t``."""
    one_minus_t = 1.0 - t
    pq = p * q
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
        on = tl.zeros_like(t) + 1.0
        dce_neg = p
    u = t * q + one_minus_t * s_m
    ce = one_minus_t * ce_neg + pw * t * a_neg
    dce = one_minus_t * dce_neg - pw * t * q
    du = (one_minus_t * on - t) * pq
    alpha_t = tl.zeros_like(t) + 1.0
    if HAS_ALPHA:
        alpha_t = (2.0 * alpha - 1.0) * t + (1.0 - alpha)
    return u, ce, dce, du, gamma * t + gamma_neg * one_minus_t, alpha_t


@triton.jit(do_not_specialize=["den_host", "ignore_index"])
def _sigmoid_poly_kernel(
    x_ptr,
    t_ptr,
    w_ptr,
    pw_ptr,
    norm_ptr,
    consts_ptr,  # [alpha, gamma, ls, eps_1, ..., eps_n] in the compute dtype (cached on the device)
    loss_ptr,  # logits-sized for "none", else the 0-d output
    g_ptr,
    ws_ptr,  # workspace (see _workspace)
    wsb_ptr,
    numel,
    C,
    S,
    ignore_index,
    den_host,
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
    REDUCE: tl.constexpr,  # 0 "none", 1 "sum", 2 "mean"
    DEN_DEVICE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dt: tl.constexpr = DT
    alpha = tl.load(consts_ptr)
    gamma = tl.load(consts_ptr + 1)
    ls = tl.load(consts_ptr + 2)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(dt)
    t, scale, bad, row, cls, sp = _sg_target(t_ptr, t_ptr, offs, ok, C, S, ignore_index, ls, IS_INDEX, False, SMOOTH,
                                             dt, BLOCK)  # fmt: skip
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
    dce = (1.0 - t) * p - pw * t * q
    ratio = tl.where(u > 0.0, p * q / tl.where(u > 0.0, u, 1.0), 1.0)
    g = mod * (alpha_t * dce + (1.0 - 2.0 * t) * ratio * inner)  # unused (not computed) without COMPUTE_GRAD
    _sg_store(loss, g, scale, bad, offs, ok, row, cls, sp, w_ptr, w_s0, w_s1, w_s2, norm_ptr, n_s0, n_s1, n_s2, t_ptr,
              ws_ptr, wsb_ptr, loss_ptr, g_ptr, numel, C, ignore_index, den_host, HAS_W, HAS_NORM, DEN_DEVICE, REDUCE,
              COMPUTE_GRAD, dt, BLOCK_P)  # fmt: skip


@triton.jit(do_not_specialize=["den_host", "ignore_index"])
def _sigmoid_detection_kernel(
    x_ptr,
    t_ptr,
    score_ptr,
    w_ptr,
    pw_ptr,
    norm_ptr,
    consts_ptr,  # [alpha, gamma, ls, eps_1, ..., eps_n, gamma_neg, clip] in the compute dtype
    loss_ptr,
    g_ptr,
    ws_ptr,
    wsb_ptr,
    numel,
    C,
    S,
    ignore_index,
    den_host,
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
    REDUCE: tl.constexpr,  # 0 "none", 1 "sum", 2 "mean"
    DEN_DEVICE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
    DT: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_P: tl.constexpr,
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
    t, scale, bad, row, cls, sp = _sg_target(t_ptr, score_ptr, offs, ok, C, S, ignore_index, ls, IS_INDEX, HAS_SCORE,
                                             SMOOTH, dt, BLOCK)  # fmt: skip
    tail = _log1p(_exp(-tl.abs(x)))
    a_pos = tl.maximum(x, 0.0) + tail  # -log(1 - s)
    a_neg = tl.maximum(-x, 0.0) + tail  # -log s
    p = _exp(-a_neg)
    q = _exp(-a_pos)
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
            u, ce, dce, du, g_t, alpha_t = _det_quality(t, p, q, a_pos, a_neg, pw, gamma)
        else:
            u, ce, dce, du, g_t, alpha_t = _det_asymmetric(t, p, q, a_pos, a_neg, pw, alpha, gamma, gamma_neg, clip,
                                                           HAS_ALPHA, HAS_CLIP)  # fmt: skip
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
    _sg_store(loss, g, scale, bad, offs, ok, row, cls, sp, w_ptr, w_s0, w_s1, w_s2, norm_ptr, n_s0, n_s1, n_s2, t_ptr,
              ws_ptr, wsb_ptr, loss_ptr, g_ptr, numel, C, ignore_index, den_host, HAS_W, HAS_NORM, DEN_DEVICE, REDUCE,
              COMPUTE_GRAD, dt, BLOCK_P)  # fmt: skip


def _sigmoid_kernel(args: Args, device: torch.device, ct: torch.dtype) -> tuple:
    """The kernel of this member of the sigmoid family, its constants array, its own pointers and flags."""
    alpha, gamma = args.alpha, args.gamma
    base = (0.0 if alpha is None else float(alpha), float(gamma), float(args.label_smoothing))
    base += tuple(map(float, args.epsilon))
    if not args.is_detection:
        return _sigmoid_poly_kernel, _const(base, device, ct), (), dict(GAMMA_ZERO=gamma == 0.0)
    consts = _const((*base, float(gamma if args.gamma_neg is None else args.gamma_neg), float(args.clip)), device, ct)
    score = None if args.score is None else args.score.to(ct).contiguous()
    flags = dict(
        VARIANT={"poly": 1, "varifocal": 2, "quality": 3}[args.variant],
        IOU_WEIGHTED=bool(args.iou_weighted),
        HAS_SCORE=score is not None,
        HAS_CLIP=args.clip > 0.0,
    )
    return _sigmoid_detection_kernel, consts, (score,), flags


def sigmoid(x: torch.Tensor, target: torch.Tensor, args: Args, compute_grad: bool):
    """Same contract as :func:`._torch_impl.sigmoid`; one kernel launch."""
    ct = compute_dtype(x)
    x, target = x.contiguous(), target.contiguous()
    numel, n = x.numel(), x.shape[0]
    num_classes = x.shape[1] if x.ndim >= 2 else 1
    inner = numel // (n * num_classes) if n * num_classes else 1
    if args.is_index and not x.is_cuda and _HOST_INDEX_CHECK[0]:
        check_index_range(target, num_classes, args.ignore_index, background=True)
    reduce = _REDUCE[args.reduction]
    grad = torch.empty_like(x) if compute_grad else x.new_empty(0)
    if not numel:
        out = torch.empty(x.shape, dtype=ct, device=x.device)
        if reduce:
            out = torch.full((), float("nan") if reduce == 2 else 0.0, dtype=ct, device=x.device)
        return out, grad
    views = [_view3(v, n, num_classes, inner, ct) for v in (args.weight, args.pos_weight, args.normalizer)]
    dense = [v for v, _ in views]
    strides = [st for _, strides3 in views for st in strides3]
    out = torch.empty(x.shape if reduce == 0 else (), dtype=ct, device=x.device)
    kernel, consts, pointers, flags = _sigmoid_kernel(args, x.device, ct)
    y = target if target.dtype != torch.bool else target.to(torch.uint8)
    flags.update(
        IS_INDEX=args.is_index,
        HAS_ALPHA=args.alpha is not None,
        HAS_W=dense[0] is not None,
        HAS_PW=dense[1] is not None,
        HAS_NORM=dense[2] is not None,
        N_EPS=len(args.epsilon),
        REDUCE=reduce,
        DEN_DEVICE=reduce == 2 and args.is_index and args.ignore_index is not None,
        COMPUTE_GRAD=compute_grad,
        SMOOTH=args.label_smoothing > 0.0,
        DT=_TL_DTYPE[ct],
        BLOCK_P=_BLOCK_P_SIGMOID,
    )
    sizes = (numel, num_classes, inner, args.ignore_code, numel if reduce == 2 else 1)

    def launch(cfg: tuple[int, ...]) -> None:
        block, warps = cfg
        programs = _cdiv(numel, block)
        ws, wsf = _workspace(x.device, ct, programs) if reduce else (None, None)
        g = grad if compute_grad else None
        kernel[(programs,)](x, y, *pointers, *dense, consts, out, g, ws, wsf, *sizes, *strides, BLOCK=block,
                            num_warps=warps, **flags)  # fmt: skip

    key = ("sigmoid", num_classes, x.dtype, args.is_detection, numel >= _TUNE_FROM)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        # 4-8 elements per thread on CUDA: the sigmoid math takes ~100 registers for 4 (ptxas, sm_90)
        cands = [(2048, 16), (1024, 8), (2048, 8), (4096, 16)]
        cfg = _pick(key, cands, launch, x.device) if x.is_cuda else (1024, 4)
    _run(launch, cfg, x.device)
    return out, grad


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


_SCALE_BY_TORCH = 1 << 17


@triton.jit
def _scale_unless_one_kernel(g_ptr, go_ptr, numel, BLOCK: tl.constexpr):
    go = tl.load(go_ptr)
    if go != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        g = tl.load(g_ptr + offs, mask=ok)
        tl.store(g_ptr + offs, (g.to(tl.float32) * go.to(tl.float32)).to(g_ptr.dtype.element_ty), mask=ok)


def scale_unless_one_(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``grad *= grad_output`` (a scalar tensor) in place; no memory pass when ``grad_output == 1``.  Either way
    one launch (knowing ``grad_output == 1`` on the host would need a sync); under ``_SCALE_BY_TORCH`` elements
    torch's ``mul_`` (a pass over a small buffer, less host time than a Triton launch)."""
    if grad.dtype == torch.float64 or not grad.is_contiguous() or grad.numel() <= _SCALE_BY_TORCH:
        return grad.mul_(grad_output)
    if grad.numel():
        block = 4096
        _scale_unless_one_kernel[(_cdiv(grad.numel(), block),)](grad, grad_output.reshape(1), grad.numel(), BLOCK=block)
    return grad


def supports(x: torch.Tensor, target: torch.Tensor, args: Args) -> bool:
    """CUDA tensors (and, when forced with ``backend("triton")``, CPU tensors in Triton's interpreter); float32 math
    for fp16/bf16 input, float64 for float64."""
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_load_configs()


# ---------------------------------------- the two-phase form for class-parallel linear + loss (linear_parallel)
# The same contract as _native.two_phase_stats / two_phase_grad_ (pf_lp_stats / pf_lp_grad in _native.c): a
# (rows, V_r) chunk of this rank's logits x, read in place; z'_c = s ((x_c + b_c) - m_t [c = t]); t the row's local
# target or -1.  Math in the compute dtype (float32 for fp16 / bf16 / fp32, float64 for fp64).


@triton.jit
def _lp_load(z_ptr, rows, row_ok, cols, col_ok, t, zt, s, b_ptr, V, HAS_BIAS: tl.constexpr, CT: tl.constexpr):
    """z' of a (BLOCK_R, BLOCK_C) block: s (x + b), the target's column replaced by its margined ``zt``;
    masked lanes -inf."""
    ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(z_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :], mask=ok, other=0.0).to(CT)
    if HAS_BIAS:
        x = x + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(CT)[None, :]
    x = x * s
    hit = cols[None, :] == t[:, None]
    x = tl.where(hit, zt[:, None], x)
    return tl.where(ok, x, float("-inf")), hit, ok


@triton.jit
def _lp_target(z_ptr, rows, row_ok, t, s, b_ptr, m_ptr, V, HAS_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr,
               CT: tl.constexpr):  # fmt: skip
    """Per row: z'_t = s ((x_t + b_t) - m_t) where this shard owns the target, else 0."""
    own = row_ok & (t >= 0)
    t0 = tl.where(own, t, 0)
    xt = tl.load(z_ptr + rows.to(tl.int64) * V + t0, mask=own, other=0.0).to(CT)
    if HAS_BIAS:
        xt = xt + tl.load(b_ptr + t0, mask=own, other=0.0).to(CT)
    if HAS_MARGIN:
        xt = xt - tl.load(m_ptr + t0, mask=own, other=0.0).to(CT)
    return tl.where(own, xt * s, 0.0)


@triton.jit
def _lp_stats_kernel(z_ptr, t_ptr, b_ptr, m_ptr, a_ptr, s_ptr, st_ptr, R, V, HAS_BIAS: tl.constexpr,
                     HAS_MARGIN: tl.constexpr, HAS_A: tl.constexpr, LS: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr):  # fmt: skip
    """Phase 1 of BLOCK_R rows: the local max of z', the sum over c != t of exp(z' - max), z'_t and (LS) the
    weighted sum of z', into st (4, R); two passes over the classes (the max, then the sums)."""
    CT: tl.constexpr = st_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    t = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    s = tl.load(s_ptr).to(CT)
    zt = _lp_target(z_ptr, rows, row_ok, t, s, b_ptr, m_ptr, V, HAS_BIAS, HAS_MARGIN, CT)
    m = tl.full([BLOCK_R], float("-inf"), CT)
    for c0 in range(0, V, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        x, _, _ = _lp_load(z_ptr, rows, row_ok, cols, cols < V, t, zt, s, b_ptr, V, HAS_BIAS, CT)
        m = tl.maximum(m, tl.max(x, 1))
    m_safe = tl.where(row_ok, m, 0.0)
    rest = tl.zeros([BLOCK_R], CT)
    xa = tl.zeros([BLOCK_R], CT)
    for c0 in range(0, V, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < V
        x, hit, ok = _lp_load(z_ptr, rows, row_ok, cols, col_ok, t, zt, s, b_ptr, V, HAS_BIAS, CT)
        e = _exp(x - m_safe[:, None])
        rest += tl.sum(tl.where(hit, 0.0, tl.where(ok, e, 0.0)), 1)
        if LS:
            x = tl.where(ok, x, 0.0)
            if HAS_A:
                x = x * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(CT)[None, :]
            xa += tl.sum(x, 1)
    tl.store(st_ptr + rows, m, mask=row_ok)
    tl.store(st_ptr + R + rows, rest, mask=row_ok)
    tl.store(st_ptr + 2 * R + rows, zt, mask=row_ok)
    tl.store(st_ptr + 3 * R + rows, xa, mask=row_ok)


@triton.jit
def _lp_grad_kernel(z_ptr, t_ptr, b_ptr, m_ptr, a_ptr, s_ptr, lse_ptr, co_ptr, k1_ptr, k2_ptr, R, V,
                    HAS_BIAS: tl.constexpr, HAS_MARGIN: tl.constexpr, HAS_A: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_C: tl.constexpr):  # fmt: skip
    """Phase 2 of a (BLOCK_R, BLOCK_C) block: co exp(z' - lse) - k1 onehot_t - k2 a, over x in x's dtype; rows
    whose three coefficients are 0 (ignored rows) get zeros."""
    CT: tl.constexpr = lse_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < R
    col_ok = cols < V
    t = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    s = tl.load(s_ptr).to(CT)
    zt = _lp_target(z_ptr, rows, row_ok, t, s, b_ptr, m_ptr, V, HAS_BIAS, HAS_MARGIN, CT)
    x, hit, ok = _lp_load(z_ptr, rows, row_ok, cols, col_ok, t, zt, s, b_ptr, V, HAS_BIAS, CT)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    co = tl.load(co_ptr + rows, mask=row_ok, other=0.0)
    k1 = tl.load(k1_ptr + rows, mask=row_ok, other=0.0)
    k2 = tl.load(k2_ptr + rows, mask=row_ok, other=0.0)
    g = co[:, None] * _exp(x - lse[:, None]) - tl.where(hit, k1[:, None], 0.0)
    if HAS_A:
        g = g - k2[:, None] * tl.load(a_ptr + cols, mask=col_ok, other=0.0).to(CT)[None, :]
    else:
        g = g - k2[:, None]
    active = (co != 0.0) | (k1 != 0.0) | (k2 != 0.0)
    g = tl.where(active[:, None], g, 0.0)
    tl.store(z_ptr + rows.to(tl.int64)[:, None] * V + cols[None, :], g.to(z_ptr.dtype.element_ty), mask=ok)


def _lp_common(z, target_local, bias, margin, logit_scale, class_weight):
    ct = compute_dtype(z)
    t = target_local.to(device=z.device, dtype=torch.int64).contiguous()
    s = torch.tensor([float(logit_scale)], dtype=ct, device=z.device)
    b, mg, a = (
        None if v is None else v.to(device=z.device, dtype=ct).contiguous() for v in (bias, margin, class_weight)
    )
    dummy = s  # an address for the pointers a flag leaves unread
    return ct, t, s, b, mg, a, dummy


def two_phase_stats(z, target_local, *, bias=None, margin=None, logit_scale=1.0, class_weight=None,
                    label_smoothing=False):  # fmt: skip
    """Phase 1 over a contiguous ``(rows, V_r)`` chunk (see :func:`._native.two_phase_stats`): a ``(4, rows)``
    tensor in the compute dtype: local max of z', ``sum_{c != t} exp(z'_c - max)``, ``z'_t`` (0 where
    ``target_local`` is -1), ``sum_c a_c z'_c`` (0 without ``label_smoothing``)."""
    z = z if z.is_contiguous() else z.contiguous()
    rows, v = z.shape
    ct, t, s, b, mg, a, dummy = _lp_common(z, target_local, bias, margin, logit_scale, class_weight)
    st = torch.empty(4, rows, dtype=ct, device=z.device)
    if rows:
        block_r = 4 if z.is_cuda else min(16, _pow2(rows))
        block_c = min(_pow2(v), (256 if ct == torch.float64 else 1024) if z.is_cuda else 64)  # fp64: no spills
        _lp_stats_kernel[(_cdiv(rows, block_r),)](
            z, t, dummy if b is None else b, dummy if mg is None else mg, dummy if a is None else a, s, st, rows, v,
            HAS_BIAS=b is not None, HAS_MARGIN=mg is not None, HAS_A=a is not None, LS=bool(label_smoothing),
            BLOCK_R=block_r, BLOCK_C=block_c,
        )  # fmt: skip
    return st


def two_phase_grad_(z, target_local, lse, coef, k1, k2, *, bias=None, margin=None, logit_scale=1.0,
                    class_weight=None):  # fmt: skip
    """Phase 2 (see :func:`._native.two_phase_grad_`): ``coef exp(z'_c - lse) - k1 onehot_t - k2 a_c`` per row,
    written over the contiguous chunk ``z`` in its dtype.  Returns ``z``."""
    assert z.is_contiguous()
    rows, v = z.shape
    ct, t, s, b, mg, a, dummy = _lp_common(z, target_local, bias, margin, logit_scale, class_weight)
    lse, coef, k1, k2 = (u.to(device=z.device, dtype=ct).contiguous() for u in (lse, coef, k1, k2))
    if rows:
        block_r = 4 if z.is_cuda else min(16, _pow2(rows))
        block_c = min(_pow2(v), 1024 if z.is_cuda else 64)
        _lp_grad_kernel[(_cdiv(rows, block_r), _cdiv(v, block_c))](
            z, t, dummy if b is None else b, dummy if mg is None else mg, dummy if a is None else a, s, lse, coef,
            k1, k2, rows, v, HAS_BIAS=b is not None, HAS_MARGIN=mg is not None, HAS_A=a is not None,
            BLOCK_R=block_r, BLOCK_C=block_c,
        )  # fmt: skip
    return z
