"""Accuracy of the inlined transcendental functions of ``_native.c``: ``exp_nonpos`` (every softmax and sigmoid pass),
``log1p_unit`` (the sigmoid's ``log(1 + exp(-|x|))``) and ``pf_log`` (the asymmetric loss's clipped term).

A small C driver includes ``_native.c`` (``PF_PART=0``: only the shared helpers) and measures each function's error
against the double-precision libm function in units in the last place of the float32 result, over every 61st float of
its domain (``[-87.3, 0]``, ``[0, 1]`` with its subnormals, every positive float; 18, 17 and 35 million values) --
sweeps of every float measured 0.90 ulp (exp, with FMA; 1.18 without), 1.97 and 1.97 ulp -- plus the special values:
``exp(0) = 1`` exactly, the flush to 0 below -87.3 (``-inf`` included), ``log1p(0) = log(1) = 0``, ``log(0) = -inf``,
``log(inf) = inf``, NaN for negative and NaN input.  It runs with the build's own flags (``-march=native``: FMA
contraction where the CPU has FMA) and, on x86, at ``x86-64-v2`` (no FMA: every multiply-add rounds twice).  A wrong
coefficient shows as hundreds of ulp.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from polyfocal.kernels import _native

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None or platform.system() != "Linux", reason="needs a C compiler on Linux")

DRIVER = r"""
#define PF_PART 0
#include "{source}"
#include <stdio.h>
static double ulps(float got, double ref) {{
    const float fr = (float)ref;
    if (fr == 0.0f) return got == 0.0f ? 0.0 : 1e9;
    return fabs((double)got - ref) / ldexp(1.0, ilogb(fr) - 23);
}}
int main(void) {{
    double w_exp = 0.0, w_l1p = 0.0, w_log = 0.0;
    /* exp: the float bit patterns from -0.0 downwards, [-87.3, -0.0] in steps of 61 patterns */
    for (uint32_t b = 0x80000000u; b <= 0xc2b00000u; b += 61u) {{
        const float v = pf_float((int32_t)b);
        if (!(v >= -87.3f)) break;
        const double ref = exp((double)v);
        if (ref < 1.1754943508222875e-38) continue; /* below float32's normal range */
        const double e = ulps(exp_nonpos(v), ref);
        w_exp = e > w_exp ? e : w_exp;
    }}
    for (uint32_t b = 0; b <= 0x3f800000u; b += 61u) {{ /* log1p: [0, 1], subnormals included */
        const float v = pf_float((int32_t)b);
        const double e = ulps(log1p_unit(v), log1p((double)v));
        w_l1p = e > w_l1p ? e : w_l1p;
    }}
    for (uint32_t b = 1; b < 0x7f800000u; b += 61u) {{ /* log: every positive finite float */
        const float v = pf_float((int32_t)b);
        const double e = ulps(pf_log(v), log((double)v));
        w_log = e > w_log ? e : w_log;
    }}
    const float nan = pf_float(0x7fc00000);
    printf("%.6f %.6f %.6f %a %a %a %a %a %d %a %a %a %a %a %d %d\n", w_exp, w_l1p, w_log, exp_nonpos(0.0f),
           exp_nonpos(-0.0f), exp_nonpos(-87.31f), exp_nonpos(-INFINITY), exp_nonpos(-1e30f),
           exp_nonpos(nan) != exp_nonpos(nan), log1p_unit(0.0f), pf_log(1.0f), pf_log(0.0f), pf_log(-0.0f),
           pf_log(INFINITY), pf_log(-1.0f) != pf_log(-1.0f), pf_log(nan) != pf_log(nan));
    return 0;
}}
"""

LEVELS = ["native"] + (["x86-64-v2"] if platform.machine() in ("x86_64", "AMD64") else [])
BOUNDS = {"exp_nonpos": {"native": 1.0, "x86-64-v2": 1.25}, "log1p_unit": 2.1, "pf_log": 2.1}


@pytest.mark.parametrize("march", LEVELS)
def test_inline_math_is_accurate(march: str, tmp_path: Path) -> None:
    driver = tmp_path / "math_driver.c"
    driver.write_text(DRIVER.format(source=_native._SOURCE))
    flags = [f for f in _native.build_flags() if f not in ("-shared", "-fPIC", "-fopenmp", "-DPF_LIBMVEC")]
    flags = [f"-march={march}" if f.startswith("-march=") else f for f in flags]
    exe = tmp_path / "math_driver"
    subprocess.run([CC, *flags, str(driver), "-o", str(exe), "-lm"], check=True, capture_output=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=300).stdout.split()
    worst = dict(zip(("exp_nonpos", "log1p_unit", "pf_log"), map(float, out[:3]), strict=True))
    for name, got in worst.items():
        bound = BOUNDS[name][march] if isinstance(BOUNDS[name], dict) else BOUNDS[name]
        assert got <= bound, f"{name}: expected at most {bound} ulp at -march={march}, got {got}"
    one, one_neg, flushed, at_minus_inf, far, exp_nan = out[3:9]
    assert (one, one_neg) == ("0x1p+0", "0x1p+0")  # exp(0) is exactly 1 (the row maximum's own term)
    assert flushed == at_minus_inf == far == "0x0p+0"
    assert exp_nan == "1"
    l1p_zero, log_one, log_zero, log_neg_zero, log_inf, log_neg, log_nan = out[9:]
    assert (l1p_zero, log_one) == ("0x0p+0", "0x0p+0")
    assert (log_zero, log_neg_zero, log_inf) == ("-inf", "-inf", "inf")
    assert (log_neg, log_nan) == ("1", "1")
