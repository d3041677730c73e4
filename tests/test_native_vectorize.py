"""The native kernels' hot loops vectorise at every x86 level (issue 19), checked from the compiler's own report.

Every loop of ``_native.c`` marked by a ``/* PF_HOT: ... */`` comment (the loop starts within the next three lines,
usually after an ``omp simd`` pragma) must be reported by GCC's ``-fopt-info-vec-all`` as "loop vectorized" and
never as "not vectorized", at ``-march=x86-64-v2`` / ``x86-64-v3`` / ``x86-64-v4`` and ``-march=native``, with the
build's own flags (``_native.build_flags()``), for each compilation unit (``PF_PART`` 1-4).  Deterministic: no
timing.  On today's AVX2 failure mode (a select that GCC will not if-convert) the report says "not vectorized:
control flow in loop"; ``test_checker_catches_a_scalar_loop`` proves the checker fails on exactly that.

Skipped with the reason where the compiler is not GCC (``-fopt-info`` is GCC's), or cannot target a level (an
aarch64 host skips the x86 levels and checks ``-march=native``, i.e. NEON).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from polyfocal.kernels import _native

MARKER = re.compile(r"/\*\s*PF_HOT:")
REPORT = re.compile(r"^(?P<file>[^:\s]+):(?P<line>\d+):\d+: (?P<kind>optimized|missed): (?P<msg>.*)$")
LEVELS = ("x86-64-v2", "x86-64-v3", "x86-64-v4", "native")


def _compiler() -> str | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return cc if ("gcc" in out.lower() or "free software foundation" in out.lower()) else None


CC = _compiler()
pytestmark = pytest.mark.skipif(CC is None, reason="needs GCC (-fopt-info-vec-all is GCC's vectoriser report)")


def hot_loops(source: str) -> dict[int, tuple[int, ...]]:
    """marker line -> the lines the compiler may report the loop at (its pragma line, if any, and its ``for``)."""
    lines = source.splitlines()
    loops: dict[int, tuple[int, ...]] = {}
    for i, text in enumerate(lines):
        if not MARKER.search(text):
            continue
        for j in range(i + 1, min(i + 4, len(lines))):
            stripped = lines[j].lstrip()
            if stripped.startswith("for (") or stripped.startswith("for("):
                # 1-based: the lines after the marker through the loop's first body line (GCC reports a loop at
                # its pragma, its for, or the first statement of its body)
                loops[i + 1] = tuple(range(i + 2, j + 3))
                break
        else:
            raise AssertionError(f"PF_HOT marker at line {i + 1} is not followed by a for loop within 3 lines")
    return loops


def loop_text(source: str, for_line: int) -> str:
    """The source of the loop starting at 1-based ``for_line``: through its closing brace, or its one statement."""
    lines = source.splitlines()
    depth, out = 0, []
    for text in lines[for_line - 1 :]:
        out.append(text)
        depth += text.count("{") - text.count("}")
        if depth <= 0 and (text.rstrip().endswith(";") or text.rstrip().endswith("}")):
            break
    return "\n".join(out)


LIBM_CALL = re.compile(r"\b(expf|logf)\s*\(")


def _flags(march: str, mvec: bool) -> list[str]:
    skip = ("-shared", "-DPF_LIBMVEC")
    flags = [f for f in _native.build_flags() if f not in skip and not f.startswith("-march=")]
    return [*flags, f"-march={march}", *(["-DPF_LIBMVEC"] if mvec else [])]


def compile_report(
    source: Path, march: str, part: int | None, out_dir: Path, cc: str | None = None, mvec: bool | None = None
) -> str:
    """GCC's vectoriser report for one unit (``part`` = PF_PART, or None for the whole file)."""
    define = [] if part is None else [f"-DPF_PART={part}"]
    obj = out_dir / f"{march}-{part}.o"
    flags = _flags(march, _native.libmvec() if mvec is None else mvec)
    proc = subprocess.run(
        [cc or CC, *flags, *define, "-fopt-info-vec-all", "-c", str(source), "-o", str(obj)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return proc.stderr


def unvectorised(
    source: Path, march: str, out_dir: Path, parts=_native._PARTS, cc: str | None = None, mvec: bool | None = None
) -> list[str]:
    """The marked loops of ``source`` that GCC did not vectorise at ``march``, as readable lines (empty: all did).
    ``mvec``: compile as with glibc's libmvec (default: as this machine's build does); without it, loops that
    call ``expf`` / ``logf`` are not checked (scalar calls)."""
    mvec = _native.libmvec() if mvec is None else mvec
    text = source.read_text()
    loops = hot_loops(text)
    assert loops, f"no PF_HOT markers in {source}"
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        reports = list(pool.map(lambda p: compile_report(source, march, p, out_dir, cc, mvec), parts))
    vectorised: set[int] = set()
    missed: dict[int, str] = {}
    for report in reports:
        for line in report.splitlines():
            m = REPORT.match(line)
            if not m or Path(m["file"]).name != source.name:
                continue
            n = int(m["line"])
            if m["kind"] == "optimized" and m["msg"].startswith("loop vectorized"):
                vectorised.add(n)
            elif m["kind"] == "missed" and m["msg"].startswith("not vectorized:"):
                missed.setdefault(n, m["msg"])
    lines = text.splitlines()
    bad = []
    for marker, at in loops.items():
        reasons = [missed[n] for n in at if n in missed]
        what = lines[marker - 1].strip()
        if not mvec and LIBM_CALL.search(loop_text(text, at[-2])):
            continue  # scalar expf / logf calls without glibc's libmvec: vectorised only where libmvec exists
        if reasons:
            bad.append(f"line {at[-2]} ({what}): {reasons[0]}")
        elif not vectorised.intersection(at):
            bad.append(f"line {at[-2]} ({what}): no 'loop vectorized' report")
    return bad


def _can_target(march: str, tmp_path: Path) -> str | None:
    """None if the compiler targets ``march`` here, else the reason to skip."""
    probe = tmp_path / "probe.c"
    probe.write_text("int f(int x) { return x + 1; }\n")
    proc = subprocess.run([CC, f"-march={march}", "-c", str(probe), "-o", str(tmp_path / "probe.o")],
                          capture_output=True, text=True)  # fmt: skip
    return None if proc.returncode == 0 else f"{CC} cannot target -march={march}: {proc.stderr.strip()[:200]}"


@pytest.mark.parametrize("march", LEVELS)
def test_hot_loops_vectorise(march, tmp_path):
    reason = _can_target(march, tmp_path)
    if reason:
        pytest.skip(reason)
    bad = unvectorised(_native._SOURCE, march, tmp_path)
    assert not bad, f"hot loops not vectorised at -march={march}:\n" + "\n".join(bad)


AARCH64_CC = shutil.which("aarch64-linux-gnu-gcc")


@pytest.mark.skipif(AARCH64_CC is None, reason="no aarch64 cross compiler (aarch64-linux-gnu-gcc) to check NEON")
@pytest.mark.parametrize("mvec", [True, False], ids=["libmvec", "no-libmvec"])
def test_hot_loops_vectorise_for_aarch64_neon(mvec, tmp_path):
    """Cross-compiled for aarch64 (armv8-a: NEON), with glibc >= 2.38's libmvec or without it (then the loops
    that call expf / logf are excused).  Compiles and vectorises; running it needs an aarch64 machine."""
    bad = unvectorised(_native._SOURCE, "armv8-a", tmp_path, cc=AARCH64_CC, mvec=mvec)
    assert not bad, "hot loops not vectorised for aarch64 -march=armv8-a:\n" + "\n".join(bad)


def test_every_unit_has_hot_loops():
    """The markers cover each unit's per-element loops: softmax rows and tiles, sigmoid blocks, det_block, the
    two-phase class-parallel rows (unit 4)."""
    text = _native._SOURCE.read_text()
    loops = hot_loops(text)
    lines = text.splitlines()
    names = " ".join(lines[m - 1] for m in loops)
    hot = (
        "softmax row's exp pass",
        "tile's exp pass",
        "tile's gradient",
        "sigmoid block's exp pass",
        "sigmoid block's gradient",
        "detection block's exp pass",
        "detection block's loss and gradient",
        "two-phase row's adjusted logits",
        "two-phase row's maximum",
        "two-phase row's exp pass",
        "two-phase row's label smoothing sum",
        "two-phase row's gradient",
    )
    for what in hot:
        assert what in names, f"no PF_HOT loop for {what!r}"


SCALAR_ON_AVX2 = r"""
#include <math.h>
#include <stdint.h>
/* the exp and the row loop of f8e57fb's _native.c: float selects that GCC does not if-convert at AVX2 */
static inline float exp_nonpos(float v) {
    const float c = v < -87.3f ? -87.3f : v;
    const float n = rintf(c * 1.44269504088896341f);
    const float r = (c - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return v < -87.3f ? 0.0f : p * scale.f;
}
float row(const float *xr, float *gr, int64_t c0, int64_t c1, int64_t t, float m, float *rest) {
    float b_all = 0.0f, b_rest = 0.0f;
    /* PF_HOT: the old exp pass */
#pragma omp simd reduction(+ : b_all, b_rest)
    for (int64_t c = c0; c < c1; c++) {
        const float e = exp_nonpos(xr[c] - m);
        gr[c] = e;
        b_all += e;
        b_rest += (c == t) ? 0.0f : e;
    }
    *rest = b_rest;
    return b_all;
}
"""


def test_checker_catches_a_scalar_loop(tmp_path):
    """The checker fails on the loop shape that went scalar on AVX2 (the old exp_nonpos), so the tests above can
    fail; it passes on the same loop written with the kernel's branch-free exp_nonpos."""
    if _can_target("x86-64-v3", tmp_path):
        pytest.skip(_can_target("x86-64-v3", tmp_path))
    old = tmp_path / "old.c"
    old.write_text(SCALAR_ON_AVX2)
    bad = unvectorised(old, "x86-64-v3", tmp_path, parts=(None,))
    assert len(bad) == 1 and "not vectorized" in bad[0], bad
    text = _native._SOURCE.read_text()
    start = text.index("static inline int32_t pf_bits")
    end = text.index("/* sum_j eps_j u^j")
    new = tmp_path / "new.c"
    old_row = SCALAR_ON_AVX2[SCALAR_ON_AVX2.index("float row(") :]
    new_row = old_row.replace("(c == t) ? 0.0f : e", "pf_sel(c == t, 0.0f, e)")
    new.write_text("#include <math.h>\n#include <stdint.h>\n#include <string.h>\n" + text[start:end] + new_row)
    assert unvectorised(new, "x86-64-v3", tmp_path, parts=(None,)) == []
