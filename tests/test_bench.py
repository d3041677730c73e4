"""``polyfocal bench``: CLI and JSON contract, errors, the memory method, and what each row computes.

Bench numbers (times, ratios) are never asserted; only their bookkeeping and the memory method are.
"""

from __future__ import annotations

import json
import os
import statistics

import pytest
import torch
import torch.nn.functional as F

import polyfocal
from polyfocal import bench

TINY = ["--softmax-shape", "64,10", "--sigmoid-shape", "50,8", "--repeats", "2", "--warmup", "0"]
HAS_PROC = os.access("/proc/self/clear_refs", os.W_OK)


def _main(argv: list[str]) -> int:
    """The real ``polyfocal`` entry point where every subcommand module imports, else bench's own."""
    try:
        from polyfocal import cli

        cli.build_parser()
    except ImportError:
        from polyfocal import _bench_cli

        return _bench_cli.main(argv)
    return cli.main(["bench", *argv])


def _check_ratios(result: dict) -> None:
    rows = {r["name"]: r for r in result["results"]}
    for r in rows.values():
        assert r["median_ms"] == pytest.approx(statistics.median(r["times_ms"]))
        assert r["ratio_unit"] == pytest.approx(r["median_ms"] / rows[r["unit"]]["median_ms"])
        assert r["ratio_baseline"] == pytest.approx(r["median_ms"] / rows[r["baseline"]]["median_ms"])
        assert r["unit"] == bench.UNIT[r["family"]] and r["baseline"] == bench.REFERENCE[r["family"]]


def test_cli_writes_json_with_every_variant_and_baseline(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _main([*TINY, "--repeats", "3", "--no-memory", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["results"]] == list(bench.VARIANTS)
    assert all(len(r["times_ms"]) == 3 and r["extra_peak_memory"] is None for r in result["results"])
    _check_ratios(result)
    meta = result["meta"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and meta["dtype"] == "float32"
    assert meta["shapes"] == {"softmax": [64, 10], "sigmoid": [50, 8]} and meta["repeats"] == 3
    text = capsys.readouterr().out
    assert "torch " + torch.__version__ in text and f"wrote {out}" in text
    assert all(name in text for name in bench.VARIANTS)


@pytest.mark.skipif(not HAS_PROC, reason="needs a writable /proc/self/clear_refs")
def test_cli_subset_adds_its_baselines_and_measures_memory(tmp_path):
    out = tmp_path / "bench.json"
    # baselines only (no library first-call costs in the children); each family adds its unit and reference
    argv = ["--variants", "eager-poly1,eager-poly1-focal", "--softmax-shape", "1024,200", "--sigmoid-shape", "1000,80"]
    assert _main([*argv, "--repeats", "1", "--warmup", "0", "--dtype", "bfloat16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["results"]]
    assert names == ["torch-softmax", "torch-ce", "eager-poly1", "torch-bce", "tv-focal", "eager-poly1-focal"]
    assert all(r["extra_peak_memory"] > 0 for r in result["results"])  # every logits tensor is > 128 KiB
    assert result["meta"]["dtype"] == "bfloat16"
    _check_ratios(result)


def test_family_filter():
    result = bench.run_bench(family="sigmoid", sigmoid_shape=(40, 6), repeats=1, warmup=0, memory=False)
    assert {r["family"] for r in result["results"]} == {"sigmoid"}
    assert list(result["meta"]["shapes"]) == ["sigmoid"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--variants", "ce,nope"], "unknown variant(s) nope; valid: torch-softmax, "),
        (["--softmax-shape", "64"], "--softmax-shape: expected N,C"),
        (["--sigmoid-shape", "a,b"], "--sigmoid-shape: expected N,C"),
        (["--softmax-shape", "0,10"], "--softmax-shape: expected N,C"),
        (["--softmax-shape", "2,3,4"], "--softmax-shape: expected N,C"),
        (["--dtype", "float64"], "--dtype: expected one of float32, float16, bfloat16, got 'float64'"),
        (["--family", "relu"], "--family: expected softmax, sigmoid or all"),
        (["--device", "tpu"], "--device: expected cpu or cuda"),
        (["--repeats", "0"], "expected repeats >= 1"),
        (["--family", "softmax", "--variants", "sigmoid-focal"], "no selected variant is in family"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_json(tmp_path, capsys, argv, fragment):
    out = tmp_path / "bench.json"
    assert _main([*TINY, "--no-memory", *argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polyfocal bench: error: ") and fragment in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAS_PROC, reason="needs a writable /proc/self/clear_refs")
def test_memory_child_sees_the_gradient_and_cross_entropy_temporaries():
    """F.cross_entropy keeps log_softmax (1.0) and writes the gradient (1.0): a method that misses them fails."""
    names = ["torch-softmax", "torch-ce", "torch-bce"]
    softmax, ce, bce = bench.cpu_peak_memory(names, {"softmax": (4096, 1000), "sigmoid": (10000, 100)})
    assert 0.9 <= softmax <= 1.5  # the output
    assert 1.9 <= ce <= 4.5
    assert 1.0 <= bce <= 4.5  # at least the gradient


def _softmax_poly(w: bench.Workload, gamma: float, eps: tuple[float, ...]) -> torch.Tensor:
    ce = F.cross_entropy(w.x, w.target, reduction="none")
    q = 1 - torch.exp(-ce)
    return (q**gamma * ce + sum(e * q ** (j + 1 + gamma) for j, e in enumerate(eps))).mean()


def _sigmoid_poly(x: torch.Tensor, t: torch.Tensor, gamma: float, eps: float = 0.0) -> torch.Tensor:
    p = torch.sigmoid(x)
    q = 1 - (p * t + (1 - p) * (1 - t))
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return ((0.25 * t + 0.75 * (1 - t)) * q**gamma * ce + eps * q ** (1 + gamma)).mean()


def _dense(w: bench.Workload) -> torch.Tensor:
    return F.one_hot(w.target_index, w.x.shape[1] + 1)[:, :-1].to(w.x.dtype)


FORMULAS = {
    "torch-softmax": lambda w: torch.softmax(w.x, 1),
    "torch-ce": lambda w: F.cross_entropy(w.x, w.target),
    "eager-poly1": lambda w: _softmax_poly(w, 0.0, (2.0,)),
    "ce": lambda w: F.cross_entropy(w.x, w.target),
    "ce+weight+ignore+ls": lambda w: F.cross_entropy(w.x, w.target_ignore, w.weight, label_smoothing=0.1),
    "focal": lambda w: _softmax_poly(w, 2.0, ()),
    "focal-g0.5": lambda w: _softmax_poly(w, 0.5, ()),
    "poly1": lambda w: _softmax_poly(w, 0.0, (2.0,)),
    "polyN": lambda w: _softmax_poly(w, 0.0, (1.0, 0.5)),
    "poly1-focal-softmax": lambda w: _softmax_poly(w, 2.0, (1.0,)),
    "torch-bce": lambda w: F.binary_cross_entropy_with_logits(w.x, w.target),
    "tv-focal": lambda w: _sigmoid_poly(w.x, w.target, 2.0),
    "eager-poly1-focal": lambda w: _sigmoid_poly(w.x, w.target, 2.0, 1.0),
    "sigmoid-focal": lambda w: _sigmoid_poly(w.x, w.target, 2.0),
    "sigmoid-focal-g1.5": lambda w: _sigmoid_poly(w.x, w.target, 1.5),
    "sigmoid-poly1-focal": lambda w: _sigmoid_poly(w.x, w.target, 2.0, 1.0),
    "sigmoid-focal-index": lambda w: _sigmoid_poly(w.x, _dense(w), 2.0),
    "logit-adjusted": lambda w: F.cross_entropy(w.x + torch.log(w.weight / w.weight.sum()), w.target),
    "ldam": lambda w: F.cross_entropy(30.0 * (w.x - F.one_hot(w.target, w.x.shape[1]) * _ldam(w.weight)), w.target),
    "ce+z-loss": lambda w: F.cross_entropy(w.x, w.target) + 1e-4 * (torch.logsumexp(w.x, 1) ** 2).mean(),
    "asymmetric": lambda w: _asl(w.x, w.target),
    "varifocal": lambda w: _vfl(w.x, w.target),
    "quality-focal": lambda w: _qfl(w.x, w.target),
}


def _ldam(counts: torch.Tensor, max_margin: float = 0.5) -> torch.Tensor:
    m = counts ** (-0.25)
    return (m * (max_margin / m.max())).float().to(counts.dtype)  # ldam_margins returns float32


def _asl(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # Ridnik et al.: gamma_pos 0, gamma_neg 4, clip .05
    s = torch.sigmoid(x)
    s_m = (s - 0.05).clamp(min=0)
    return (-(t * torch.log(s) + (1 - t) * s_m**4 * torch.log(1 - s_m))).mean()


def _vfl(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # mmdet, iou_weighted: q * BCE(q) / .75 s^2 BCE(0)
    s = torch.sigmoid(x)
    bce = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    return torch.where(q > 0, q * bce, 0.75 * s**2 * bce).mean()


def _qfl(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # Li et al.: |q - s|^beta BCE(q)
    s = torch.sigmoid(x)
    return ((q - s).abs() ** 2 * F.binary_cross_entropy_with_logits(x, q, reduction="none")).mean()


def test_every_row_has_a_formula():
    assert set(FORMULAS) == set(bench.VARIANTS)


@pytest.mark.parametrize("name", list(bench.VARIANTS))
def test_each_row_computes_its_named_loss(name):
    variant = bench.VARIANTS[name]
    w = bench.make_workload(variant.family, (300, 7), torch.float64)
    assert (w.target != 0).any() if variant.family == "sigmoid" else (w.target_ignore == -100).any()
    got = variant.fn(w)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, FORMULAS[name](w), rtol=1e-10, atol=1e-12)


def test_torchvision_formula_baselines_coincide_with_polyfocal():
    w = bench.make_workload("sigmoid", (200, 9), torch.float32)
    torch.testing.assert_close(bench.tv_focal(w.x, w.target), polyfocal.sigmoid_focal_loss(w.x, w.target))
    torch.testing.assert_close(
        bench.tv_focal(w.x, w.target, gamma=0.0, alpha=-1), F.binary_cross_entropy_with_logits(w.x, w.target)
    )
    torch.testing.assert_close(bench.eager_poly1_focal(w.x, w.target), polyfocal.poly1_focal_loss(w.x, w.target))
    s = bench.make_workload("softmax", (200, 9), torch.float32)
    torch.testing.assert_close(
        bench.eager_poly1(s.x, s.target), polyfocal.poly1_cross_entropy(s.x, s.target, epsilon=2.0)
    )


def test_table_and_bandwidth_columns():
    result = bench.run_bench(variants=["focal"], softmax_shape=(32, 5), repeats=1, warmup=0, memory=False)
    result["meta"]["device"] = "cuda"  # format the CUDA columns without a GPU
    for r in result["results"]:
        r["bandwidth_gbs"], r["bandwidth_pct_peak"] = 1000.0, 30.0
    lines = bench.format_table(result).splitlines()
    assert "GB/s" in lines[4] and "% peak" in lines[4]
    assert lines[5].split()[:2] == ["torch-softmax", "softmax"] and lines[7].split()[-2:] == ["1000", "30%"]
    assert bench.peak_bandwidth_for("NVIDIA H200") == 4800.0
    assert bench.peak_bandwidth_for("NVIDIA A100-SXM4-80GB") == 2039.0


# ------------------------------------------------------------------------------------------------- --matrix

TINY_CELLS = [("softmax", (8, 10), "float32"), ("softmax", (2, 5, 3, 3), "bfloat16"), ("sigmoid", (6, 4), "bfloat16")]


def test_matrix_rows_ratios_and_worst_cell():
    result = bench.run_matrix(threads=[1], budget_s=0.01, memory=False, cells=TINY_CELLS)
    rows = result["results"]
    assert len(rows) == 12 and result["meta"]["simd"].startswith("torch ")
    for r in rows:
        base = next(b for b in rows if b["cell"] == r["cell"] and b["row"] == bench.MATRIX_BASELINE[r["family"]])
        assert r["ratio"] == pytest.approx(r["median_us"] / base["median_us"])
        assert r["rounds"] >= 5 and r["extra_peak_memory"] is None
    text = bench.format_matrix(result).splitlines()
    worst = max((r for r in rows if not r["row"].startswith("torch-")), key=lambda r: r["ratio"])
    assert text[-1].startswith(f"worst cell: {worst['cell']}, 1 thread(s), {worst['row']}:")
    assert sum(line.startswith(("softmax ", "sigmoid ")) for line in text) == 3


def test_matrix_rows_compute_their_named_losses():
    """Each polyfocal row computes the same number as its torch formula on the cell's inputs."""
    x, y = bench.matrix_inputs("softmax", (4, 6, 3), "float32")
    ce = F.cross_entropy(x, y, reduction="none")
    p_t = torch.exp(-ce)
    expected = {"ce": ce.mean(), "focal": ((1 - p_t) ** 2 * ce).mean(), "poly1": (ce + 1 - p_t).mean()}
    for name, value in expected.items():
        torch.testing.assert_close(bench.MATRIX_ROWS[name][2](x, y), value)
    x, t = bench.matrix_inputs("sigmoid", (50, 7), "float32")
    torch.testing.assert_close(bench.MATRIX_ROWS["bce"][2](x, t), F.binary_cross_entropy_with_logits(x, t))


@pytest.mark.skipif(not HAS_PROC, reason="needs a writable /proc/self/clear_refs")
def test_matrix_memory_sees_cross_entropy_temporaries(tmp_path, capsys):
    """A 1 MiB cell is measured: F.cross_entropy keeps ~3 logits-sized buffers, polyfocal only the gradient."""
    out = tmp_path / "m.json"
    cells = [("softmax", (512, 512), "float32"), ("softmax", (8, 10), "float32")]
    result = bench.run_matrix(threads=[1], budget_s=0.01, cells=cells)
    mem = {r["row"]: r["extra_peak_memory"] for r in result["results"] if r["shape"] == [512, 512]}
    assert mem["torch-ce"] > 2.5 and all(0.9 < mem[n] < 1.3 for n in ("ce", "focal", "poly1"))
    assert all(r["extra_peak_memory"] is None for r in result["results"] if r["shape"] == [8, 10])
    bench._write_json(result, str(out))
    assert json.loads(out.read_text())["meta"]["mode"] == "matrix"


@pytest.mark.parametrize("value", ["0", "a,b", ""])
def test_matrix_threads_are_checked(value, capsys):
    assert _main(["--matrix", "--matrix-threads", value]) == 2
    assert "--matrix-threads" in capsys.readouterr().err


def test_torch_free_parser_lists_every_variant_and_imports_no_torch():
    import subprocess
    import sys

    from polyfocal import _bench_cli

    assert _bench_cli.VARIANT_NAMES == tuple(bench.VARIANTS)
    assert _bench_cli.MATRIX_LEVEL_NAMES == tuple(bench.MATRIX_LEVELS)
    code = "import sys, polyfocal.cli as c; c.build_parser(['bench']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
