"""Accuracy of ``exp_nonpos``, the inlined ``exp`` of every softmax and sigmoid pass of ``_native.c``.

A small C driver includes ``_native.c`` (``PF_PART=0``: only the shared helpers) and measures the error of
``exp_nonpos(v)`` against ``exp((double) v)`` in units in the last place of the float32 result, over every 61st float
of ``[-87.3, 0]`` (18 million values; the sweep of every float measured 0.90 ulp with FMA and 1.18 without), plus its
special values: ``exp(0) = 1`` exactly, the flush to 0 below -87.3 (``-inf`` included), NaN kept.  It runs with the
build's own flags (``-march=native``: FMA contraction where the CPU has FMA) and, on x86, at ``x86-64-v2`` (no FMA:
every multiply-add rounds twice).  A wrong coefficient shows as hundreds of ulp.
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
int main(void) {{
    double worst = 0.0;
    float at = 0.0f;
    /* the float bit patterns from -0.0 downwards: [-87.3, -0.0] in steps of 61 patterns */
    for (uint32_t b = 0x80000000u; b <= 0xc2b00000u; b += 61u) {{
        const float v = pf_float((int32_t)b);
        if (!(v >= -87.3f)) break;
        const double ref = exp((double)v);
        if (ref < 1.1754943508222875e-38) continue; /* below float32's normal range */
        const double ulp = ldexp(1.0, ilogb((float)ref) - 23), e = fabs((double)exp_nonpos(v) - ref) / ulp;
        if (e > worst) {{
            worst = e;
            at = v;
        }}
    }}
    const float nan = pf_float(0x7fc00000);
    printf("%.6f %.9g %a %a %a %a %a %d\n", worst, at, exp_nonpos(0.0f), exp_nonpos(-0.0f), exp_nonpos(-87.31f),
           exp_nonpos(-INFINITY), exp_nonpos(-1e30f), exp_nonpos(nan) != exp_nonpos(nan));
    return 0;
}}
"""

LEVELS = [("native", 1.0)] + ([("x86-64-v2", 1.25)] if platform.machine() in ("x86_64", "AMD64") else [])


@pytest.mark.parametrize(("march", "bound"), LEVELS)
def test_exp_nonpos_is_accurate(march: str, bound: float, tmp_path: Path) -> None:
    driver = tmp_path / "exp_driver.c"
    driver.write_text(DRIVER.format(source=_native._SOURCE))
    flags = [f for f in _native.build_flags() if f not in ("-shared", "-fPIC", "-fopenmp", "-DPF_LIBMVEC")]
    flags = [f"-march={march}" if f.startswith("-march=") else f for f in flags]
    exe = tmp_path / "exp_driver"
    subprocess.run([CC, *flags, str(driver), "-o", str(exe), "-lm"], check=True, capture_output=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120).stdout.split()
    worst, at = float(out[0]), out[1]
    assert worst <= bound, f"exp_nonpos: expected at most {bound} ulp at -march={march}, got {worst} at v = {at}"
    one, one_neg, flushed, at_minus_inf, far, nan = out[2:]
    assert (one, one_neg) == ("0x1p+0", "0x1p+0")  # exp(0) is exactly 1 (the row maximum's own term)
    assert flushed == at_minus_inf == far == "0x0p+0"
    assert nan == "1"
