"""Reproducing another x86 level (issue 19 item 3): POLYFOCAL_NATIVE_MARCH and ``bench --matrix --level``."""

from __future__ import annotations

import pytest
import torch

from polyfocal import bench
from polyfocal._bench_cli import MATRIX_LEVEL_NAMES
from polyfocal.cli import CLIError
from polyfocal.kernels import _native


def test_march_defaults_to_native_and_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("POLYFOCAL_NATIVE_MARCH", raising=False)
    assert _native.march() == "native"
    assert "-march=native" in _native.build_flags()
    monkeypatch.setenv("POLYFOCAL_NATIVE_MARCH", "x86-64-v3")
    assert _native.march() == "x86-64-v3"
    flags = _native.build_flags()
    assert "-march=x86-64-v3" in flags and "-march=native" not in flags


@pytest.mark.parametrize("value", ["x86-64-v3 -O0", "native;rm", "$(x)"])
def test_march_rejects_values_that_are_not_a_march(monkeypatch, value):
    monkeypatch.setenv("POLYFOCAL_NATIVE_MARCH", value)
    with pytest.raises(ValueError, match="expected POLYFOCAL_NATIVE_MARCH to be a -march value"):
        _native.march()


@pytest.mark.skipif(not _native.available(), reason="native kernels not built (no C compiler)")
def test_march_is_part_of_the_cache_key(monkeypatch, tmp_path):
    """Another level builds another library beside the native one (the cache key includes the flags)."""
    monkeypatch.setenv("POLYFOCAL_CACHE_DIR", str(tmp_path))
    compiler = _native.os.environ.get("CC") or _native.shutil.which("cc") or _native.shutil.which("gcc")
    monkeypatch.delenv("POLYFOCAL_NATIVE_MARCH", raising=False)
    native = _native._build(compiler)
    monkeypatch.setenv("POLYFOCAL_NATIVE_MARCH", "x86-64-v2" if _native.platform.machine() == "x86_64" else "native")
    other = _native._build(compiler)
    assert native.exists() and other.exists()
    assert (native != other) == (_native.platform.machine() == "x86_64")


def test_levels_name_a_march_and_a_torch_capability():
    assert tuple(bench.MATRIX_LEVELS) == MATRIX_LEVEL_NAMES
    env = bench.level_environment("avx2")
    assert env["POLYFOCAL_NATIVE_MARCH"] == "x86-64-v3" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    native = bench.level_environment("native")
    assert "POLYFOCAL_NATIVE_MARCH" not in native and "ATEN_CPU_CAPABILITY" not in native


def test_check_level_refuses_a_process_at_another_level(monkeypatch):
    monkeypatch.delenv("POLYFOCAL_NATIVE_MARCH", raising=False)
    with pytest.raises(CLIError, match=r"--level avx2: expected native kernels built with -march=x86-64-v3"):
        bench.check_level("avx2")
    monkeypatch.setenv("POLYFOCAL_NATIVE_MARCH", "x86-64-v3")
    if torch.backends.cpu.get_cpu_capability().lower() != "avx2":
        with pytest.raises(CLIError, match="expected torch's CPU capability AVX2"):
            bench.check_level("avx2")


def test_matrix_header_names_the_level():
    result = bench.run_matrix(threads=[1], budget_s=0.01, memory=False, cells=[("softmax", (4, 5), "float32")])
    assert result["meta"]["level"] == "native"
    assert "level native: native kernels -march=" in bench.format_matrix(result).splitlines()[0]


def test_level_rerun_runs_the_matrix_in_a_child(monkeypatch):
    """``--level`` reruns the matrix in a child process: its command must reach the bench subcommand (a module
    with a ``python -m`` entry), not exit quietly with nothing measured."""
    import argparse
    import subprocess
    import sys

    seen = {}
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: seen.setdefault("cmd", cmd) and argparse.Namespace(returncode=0)
    )
    args = argparse.Namespace(level="avx2", device="cpu", threads_list="1", budget=0.1, no_memory=True, json=None)
    assert bench._rerun_at_level(args) == 0
    cmd = seen["cmd"]
    assert cmd[0] == sys.executable and cmd[1] == "-m"
    monkeypatch.undo()
    out = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--level" in out.stdout, out.stdout + out.stderr
