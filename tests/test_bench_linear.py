"""``polyfocal bench --linear`` on a tiny shape: every row runs, the ratios are against the same run's medians,
the peak memory comes from a fresh process, and bad arguments are refused by name."""

from __future__ import annotations

import pytest

from polyfocal import bench_linear, cli


def test_run_linear_tiny():
    result = bench_linear.run_linear([(64, 16, 300)], repeats=1, warmup=0, threads=1, memory=False)
    rows = {r["row"]: r for r in result["rows"]}
    assert {"torch-unfused", "torch-chunked", "fused-ce", "fused-focal", "fused-la"} <= rows.keys()
    assert "liger" not in rows and "cce" not in rows  # CUDA only
    assert rows["torch-unfused"]["x_unfused"] == 1.0 and rows["fused-ce"]["x_fused_ce"] == 1.0
    assert all(r["ms"] > 0 and r["extra_peak_mib"] is None for r in rows.values())
    text = bench_linear.format_linear(result)
    assert "fused-focal" in text and "x chunked" in text


def test_peak_memory_in_fresh_process(monkeypatch):
    """A (2048, 300) logits tensor is 2.4 MiB: the unfused row's extra peak holds it, the fused row's (64-row
    chunks) does not."""
    monkeypatch.setenv("POLYFOCAL_LINEAR_CHUNK_BYTES", str(64 * 300 * 4))
    result = bench_linear.run_linear([(2048, 16, 300)], rows=["torch-unfused", "fused-ce"], repeats=1, warmup=0,
                                     threads=1)  # fmt: skip
    mem = {r["row"]: r["extra_peak_mib"] for r in result["rows"]}
    logits = 2048 * 300 * 4 / 2**20
    assert mem["torch-unfused"] > logits and mem["fused-ce"] < logits / 4, mem


def test_softcap_drops_torch_chunked():
    result = bench_linear.run_linear([(32, 8, 50)], rows=["torch-unfused", "torch-chunked", "fused-ce"], repeats=1,
                                     warmup=0, softcap=30.0, memory=False)  # fmt: skip
    assert [r["row"] for r in result["rows"]] == ["torch-unfused", "fused-ce"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--linear-shapes", "64,16"], "three positive integers"),
        (["--linear-rows", "fused-ce,nope"], "nope"),
    ],
)
def test_cli_errors(argv, message, capsys):
    assert cli.main(["bench", "--linear", *argv]) == 2
    assert message in capsys.readouterr().err
