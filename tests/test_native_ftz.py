"""The native kernels flush subnormal float results to zero while they run, and only while they run (issue 19).

Subnormal results cost a microcode assist per vector instruction on x86 (LDAM at 16384x1000 with logit_scale 30:
10.0 ms without the flush, 9.3 ms with it), so every parallel region of ``_native.c`` sets the thread's
flush-to-zero mode on entry and restores the thread's previous mode on exit.  These tests pin both halves: the
flush is in effect inside (a gradient entry that would be subnormal is 0 on the native path, not on the torch-ops
path), and the calling thread's mode is back afterwards (a subnormal product computed by torch on this thread
survives every kernel entry point; it would be 0 if a region left FTZ set).
"""

from __future__ import annotations

import pytest
import torch

import polyfocal as pf
from polyfocal.kernels import _native, backend

pytestmark = pytest.mark.skipif(not _native.available(), reason="the native kernels are not built here")

FLT_MIN = torch.finfo(torch.float32).tiny


def _subnormal_survives() -> bool:
    a = torch.full((1,), 1e-30, dtype=torch.float32)
    return bool((a * 1e-10).item() != 0.0)  # 1e-40: a float32 subnormal unless this thread flushes


def _tiny_gradient_row() -> tuple[torch.Tensor, torch.Tensor]:
    # softmax([0, -86]) = [1, e^-86 = 4.5e-38]: a normal float32; the mean over 8 rows scales the gradient of
    # the second class to 5.6e-39, a subnormal
    x = torch.zeros(8, 2)
    x[:, 1] = -86.0
    return x, torch.zeros(8, dtype=torch.long)


def test_flush_is_in_effect_inside_the_kernel():
    x, y = _tiny_gradient_row()
    grads = {}
    for name in ("native", "torch"):
        xi = x.clone().requires_grad_()
        with backend(name):
            pf.cross_entropy(xi, y).backward()
        grads[name] = xi.grad[:, 1]
    assert bool((grads["torch"] > 0).all()) and bool((grads["torch"] < FLT_MIN).all())  # subnormal there
    assert bool((grads["native"] == 0).all())  # flushed here
    # the loss is unaffected (the flushed term is far below the row's rounding)
    with backend("native"):
        native = pf.cross_entropy(x, y)
    torch.testing.assert_close(native, torch.nn.functional.cross_entropy(x, y), rtol=0, atol=0)


def _calls() -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 300, generator=g)  # 19200 logits: above the kernels' parallel threshold
    target = torch.randint(0, 300, (64,), generator=g)
    ignored = target.clone()
    ignored[::3] = -100
    maps = torch.randn(2, 5, 40, 40, generator=g)
    dense = (torch.rand(64, 300, generator=g) < 0.1).float()
    return {
        "softmax rows": (lambda x: pf.cross_entropy(x, ignored, label_smoothing=0.1), rows),
        "softmax rows, ldam": (lambda x: pf.ldam_loss(x, target, margin=torch.rand(300) * 0.5, logit_scale=30.0),
                               rows),
        "softmax rows, bfloat16": (lambda x: pf.cross_entropy(x, ignored), rows.bfloat16()),
        "softmax maps": (lambda x: pf.softmax_focal_loss(x, torch.randint(0, 5, (2, 40, 40), generator=g)), maps),
        "sigmoid": (lambda x: pf.sigmoid_focal_loss(x, dense), rows),
    }  # fmt: skip


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(_calls()))
def test_the_callers_floating_point_mode_is_restored(name, threads):
    fn, x = _calls()[name]
    assert _subnormal_survives()  # the precondition: this thread does not flush
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with backend("native"):
            xi = x.clone().requires_grad_()
            fn(xi).backward()
    finally:
        torch.set_num_threads(before)
    assert torch.isfinite(xi.grad).all()
    assert _subnormal_survives(), f"{name}: the kernel left flush-to-zero set on the calling thread"


def test_two_phase_kernels_restore_the_mode():
    z = torch.randn(16, 2000)
    t = torch.randint(0, 2000, (16,))
    assert _subnormal_survives()
    stats = _native.two_phase_stats(z, t, logit_scale=30.0)
    assert torch.isfinite(stats).all()
    assert _subnormal_survives(), "pf_lp_stats left flush-to-zero set on the calling thread"
    lse = stats[0] + stats[1].log()
    ones = torch.ones(16)
    _native.two_phase_grad_(z, t, lse, ones / 16, ones / 16, torch.zeros(16), logit_scale=30.0)
    assert torch.isfinite(z).all()
    assert _subnormal_survives(), "pf_lp_grad left flush-to-zero set on the calling thread"
