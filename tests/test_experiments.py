"""polyfocal compare / sweep / plot: data, loss specs, metrics, statistics, resumability, determinism, CLI errors,
and torchrun (2 gloo processes on localhost) against the single-process result."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torchmetrics")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import polyfocal
from polyfocal.cli import main
from polyfocal.experiments import data as pdata
from polyfocal.experiments.losses import build_loss, parse_loss_spec
from polyfocal.experiments.report import (
    holm,
    loss_curves,
    paired_difference,
    result_figures,
    summarize,
    summary_csv,
    summary_markdown,
    sweep_figure,
)
from polyfocal.experiments.runner import TrainConfig, evaluate, run_experiment, run_path
from process_helpers import free_port, run_process_group

TINY = ["--epochs", "2", "--seeds", "2", "--no-progress", "--no-plots"]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------- data


@pytest.mark.parametrize(("n_max", "classes", "ratio"), [(124, 10, 50.0), (5000, 10, 100.0), (30, 4, 3.0), (7, 2, 1.0)])
def test_long_tail_profile_follows_the_cifar_lt_formula(n_max, classes, ratio):
    counts = pdata.long_tail_counts(n_max=n_max, num_classes=classes, ratio=ratio)
    assert len(counts) == classes and counts[0] == n_max
    for i, n in enumerate(counts):
        exact = n_max * ratio ** (-i / (classes - 1))
        assert exact - 1 < n <= exact + 1e-6 or (n == 1 and exact < 1)
    assert counts == sorted(counts, reverse=True)


def test_digits_split_is_balanced_test_long_tailed_train_and_seeded():
    from sklearn.datasets import load_digits

    digits = load_digits()
    per_class = torch.bincount(torch.as_tensor(digits.target)).tolist()
    ds = pdata.load_digits_long_tail(ratio=50.0, test_per_class=40, seed=3)
    assert ds.test_counts == [40] * 10
    expected = pdata.long_tail_counts(n_max=min(per_class) - 40, num_classes=10, ratio=50.0)
    assert ds.train_counts == expected
    assert ds.train_counts[0] / ds.train_counts[-1] >= 40  # ~50:1 after flooring
    # no test image is in the train set (rows of the same source images, compared by content and multiplicity)
    all_rows = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
    assert len(ds.x_train) + len(ds.x_test) <= len(all_rows)
    both = torch.cat([ds.x_train, ds.x_test])
    uniq_all, count_all = torch.unique(all_rows, dim=0, return_counts=True)
    uniq_both, count_both = torch.unique(both, dim=0, return_counts=True)
    lookup = {tuple(r.tolist()): int(c) for r, c in zip(uniq_all, count_all, strict=True)}
    assert all(int(c) <= lookup[tuple(r.tolist())] for r, c in zip(uniq_both, count_both, strict=True))
    again = pdata.load_digits_long_tail(ratio=50.0, test_per_class=40, seed=3)
    other = pdata.load_digits_long_tail(ratio=50.0, test_per_class=40, seed=4)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)
    assert not torch.equal(ds.x_test, other.x_test)


def test_minority_classes_are_the_third_with_fewest_training_samples():
    counts = [50, 3, 40, 9, 2, 30, 8]
    got = pdata.minority_classes(counts)
    k = math.ceil(len(counts) / 3)
    assert len(got) == k
    assert max(counts[c] for c in got) <= min(counts[c] for c in range(len(counts)) if c not in got)


# ---------------------------------------------------------------- loss specs


def test_loss_spec_grammar():
    s = parse_loss_spec("polyN:eps=1,0.5,gamma=1")
    assert s.name == "polyN" and s.params["eps"] == (1.0, 0.5) and s.params["gamma"] == 1.0
    assert parse_loss_spec("poly1").label == parse_loss_spec("poly1:eps=1").label
    assert parse_loss_spec("poly1:eps=2").label != parse_loss_spec("poly1:eps=1").label
    assert parse_loss_spec("focal:gamma=2,alpha=cb").params["alpha"] == "cb"
    assert parse_loss_spec("poly1-focal:eps=-1,alpha=none").params == {"eps": -1.0, "gamma": 2.0, "alpha": None}
    for bad, words in [
        ("hinge", "loss name"),
        ("poly1:gamma=2", "parameter of 'poly1'"),
        ("poly1:eps=x", "number"),
        ("focal:alpha=0.3", "alpha=cb"),
        ("polyN", "polyN:eps="),
        ("focal:gamma=-1", "gamma"),
    ]:
        with pytest.raises(ValueError, match="expected") as info:
            parse_loss_spec(bad)
        assert words in str(info.value)


def test_built_losses_equal_the_library_mean_losses():
    torch.manual_seed(0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,))
    counts = [50, 20, 10, 5, 2]
    n = torch.tensor(12.0)
    cases = {
        "ce": torch.nn.functional.cross_entropy(x, y),
        "poly1:eps=2": polyfocal.poly1_cross_entropy(x, y, epsilon=2.0),
        "focal:gamma=2,alpha=cb": polyfocal.softmax_focal_loss(
            x, y, gamma=2.0, alpha=polyfocal.class_balanced_alpha(counts), reduction="sum"
        )
        / 12,
        "polyN:eps=1,0.5": polyfocal.poly_loss(x, y, epsilon=[1.0, 0.5]),
    }
    # sigmoid Poly-1 focal normalised by the number of positives (one per sample), plain formula
    t = torch.nn.functional.one_hot(y, 5).double()
    p = x.sigmoid()
    pt = t * p + (1 - t) * (1 - p)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    a = 0.25 * t + 0.75 * (1 - t)
    cases["poly1-focal"] = (a * (1 - pt) ** 2 * bce + (1 - pt) ** 3).sum() / 12
    for spec, expected in cases.items():
        got = build_loss(parse_loss_spec(spec), class_counts=counts)(x, y, n)
        torch.testing.assert_close(got, expected, msg=spec)


# ---------------------------------------------------------------- metrics and statistics


def test_evaluate_matches_plain_metric_definitions():
    g = torch.Generator().manual_seed(1)
    c, n = 4, 40
    probs = torch.softmax(3 * torch.randn(n, c, generator=g), dim=1)
    target = torch.randint(0, c, (n,), generator=g)
    target[:c] = torch.arange(c)
    got = evaluate(probs, target, minority=[2, 3])
    pred = probs.argmax(1)
    recall = [float(((pred == k) & (target == k)).sum() / (target == k).sum()) for k in range(c)]
    assert got["per_class_recall"] == pytest.approx(recall, abs=1e-6)
    m = got["metrics"]
    assert m["accuracy"] == pytest.approx(float((pred == target).double().mean()), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(sum(recall) / c, abs=1e-6)
    assert m["minority_recall"] == pytest.approx((recall[2] + recall[3]) / 2, abs=1e-6)
    aucs = []  # one-vs-rest AUROC = P(score of a positive > score of a negative), Mann-Whitney
    for k in range(c):
        pos, neg = probs[target == k, k], probs[target != k, k]
        aucs.append(float((pos[:, None] > neg[None, :]).double().mean()))
    assert m["macro_auroc"] == pytest.approx(sum(aucs) / c, abs=1e-5)
    conf = probs.max(1).values  # ECE: 15 equal-width bins of top-class confidence, |acc - conf| weighted
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += float(inside.double().mean()) * abs(
                float((pred[inside] == target[inside]).double().mean()) - float(conf[inside].double().mean())
            )
    assert m["ece"] == pytest.approx(ece, abs=1e-5)


def test_paired_difference_is_scipys_one_sample_t_test_of_the_differences():
    from scipy import stats

    a, b = [0.8, 0.82, 0.79, 0.85, 0.81], [0.78, 0.80, 0.80, 0.81, 0.80]
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 4)
    got = paired_difference(a, b)
    assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    half = got["ci_high"] - got["mean"]
    assert half == pytest.approx(got["mean"] - got["ci_low"])
    assert half == pytest.approx(stats.t.ppf(0.975, 4) * sd / math.sqrt(5))
    test = stats.ttest_1samp(d, 0.0)
    ci = test.confidence_interval(0.95)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert got["p"] == pytest.approx(test.pvalue, rel=1e-10)
    one = paired_difference([0.5], [0.4])
    assert math.isnan(one["p"]) and math.isnan(one["ci_low"])
    same = paired_difference([0.5, 0.6], [0.5, 0.6])
    assert (same["ci_low"], same["ci_high"], same["p"]) == (0.0, 0.0, 1.0)


def test_holm_is_the_step_down_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.5, math.nan, 0.01])
    assert math.isnan(got[1]) and got[0] == pytest.approx(0.5) and got[2] == pytest.approx(0.02)
    g = torch.Generator().manual_seed(0)
    ps = torch.rand(12, generator=g).pow(3).tolist()
    m, order = len(ps), sorted(range(12), key=lambda i: ps[i])
    for r, i in enumerate(order):  # definition: max over the smaller-or-equal p's of min(1, (m - rank) p)
        expected = max(min(1.0, (m - q) * ps[order[q]]) for q in range(r + 1))
        assert holm(ps)[i] == pytest.approx(expected)


def _records(per_loss: dict[str, list[float]], *, classes=("tulip", "rose", "iris")) -> list[dict]:
    """Run records with every metric of seed k of loss L equal to per_loss[L][k]."""
    from polyfocal.experiments.runner import METRICS

    out = []
    for loss, values in per_loss.items():
        for seed, v in enumerate(values):
            out.append(
                {
                    "loss": loss,
                    "seed": seed,
                    "metrics": dict.fromkeys(METRICS, v),
                    "per_class_recall": [v] * len(classes),
                    "curves": {"train_loss": [1.0, 0.5], "test_balanced_accuracy": [v / 2, v]},
                    "dataset": {
                        "name": "folder:flowers",
                        "classes": list(classes),
                        "train_counts": [30, 10, 3],
                        "test_counts": [2, 2, 2],
                        "minority_classes": [2],
                    },
                    "config": {},
                    "train_seconds": 0.1,
                }
            )
    return out


_CELL = re.compile(r"([+-]\d+\.\d) \[(\S+), (\S+)\]( \*†?)?$")


def _paired_cells(md: str) -> list[re.Match]:
    section = md.split("Paired difference", 1)[1].split("p-values", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "Δ" not in line]
    cells = [c.strip() for row in rows for c in row.strip("|").split("|")[1:]]
    matches = [_CELL.match(c) for c in cells]
    assert cells and all(matches), cells
    return matches


def test_significance_mark_agrees_with_the_printed_interval():
    # the interval [0.02, 1.98] pp excludes 0 but its lower bound rounds to 0.0 at one decimal
    z, k = [-2.0, -1.0, 0.0, 1.0, 2.0], 0.005
    from scipy import stats

    half = stats.t.ppf(0.975, 4) * k * math.sqrt(2.5) / math.sqrt(5)
    diffs = [half + 0.0002 + k * v for v in z]
    summary = summarize(_records({"ce": [0.5] * 5, "poly1": [0.5 + d for d in diffs]}))
    (cell,) = set((m.group(2), m.group(3), m.group(4)) for m in _paired_cells(summary_markdown(summary)))
    assert cell[2] is not None and float(cell[0]) > 0, cell  # marked, and the printed bound shows why


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-0.05, 0.05, allow_nan=False), min_size=3, max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.floats(0.0, 0.03),
)
def test_marks_always_agree_with_the_printed_rounded_intervals(diff_rows, shift):
    per_loss = {"ce": [0.6, 0.7, 0.8]}
    for i, row in enumerate(diff_rows):
        per_loss[f"l{i}"] = [b + shift + d for b, d in zip(per_loss["ce"], row, strict=True)]
    for m in _paired_cells(summary_markdown(summarize(_records(per_loss)))):
        lo, hi, mark = float(m.group(2)), float(m.group(3)), m.group(4)
        assert (mark is not None) == (lo > 0 or hi < 0), m.group(0)


def test_summary_reports_raw_and_holm_p_values_for_the_whole_table():
    from scipy import stats

    per_loss = {"ce": [0.60, 0.70, 0.80, 0.75], "a": [0.63, 0.71, 0.84, 0.78], "b": [0.58, 0.71, 0.79, 0.74]}
    summary = summarize(_records(per_loss))
    cells = [d for e in summary["losses"] for d in e["vs_baseline"].values()]
    assert summary["comparisons"] == len(cells) == 10  # 2 losses x 5 metrics
    for e in summary["losses"][1:]:
        diffs = [x - y for x, y in zip(per_loss[e["loss"]], per_loss["ce"], strict=True)]
        for d in e["vs_baseline"].values():
            assert d["p"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue, rel=1e-9)
    assert [d["p_holm"] for d in cells] == pytest.approx(holm([d["p"] for d in cells]))
    md = summary_markdown(summary)
    d = summary["losses"][1]["vs_baseline"]["accuracy"]
    assert f"| a | {d['p']:.3f} / {d['p_holm']:.3f} |" in md and "Holm" in md
    header = summary_csv(summary).splitlines()[0].split(",")
    assert "accuracy_p" in header and "accuracy_p_holm" in header


def test_a_single_loss_prints_no_paired_table():
    md = summary_markdown(summarize(_records({"ce": [0.6, 0.7]})))
    assert "Paired" not in md and "Δ" not in md and "p-values" not in md
    assert md.count("| ce |") == 1


def test_forest_fills_only_what_survives_holm_says_so_and_its_title_clears_the_panels():
    """Issue 18: forest.png filled every raw p < 0.05 (10 cells looked significant where the table's † marked 4)
    and its suptitle overlapped the first panel's title."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    per_loss = {
        "ce": [0.60, 0.70, 0.80, 0.75, 0.65],
        "a": [0.65, 0.75, 0.85, 0.80, 0.70],  # +5 on every seed: p ~ 0, survives Holm
        "b": [0.62, 0.71, 0.84, 0.78, 0.66],  # interval excludes 0, Holm does not keep it
        "c": [0.50, 0.80, 0.70, 0.90, 0.60],  # interval includes 0
    }
    records = _records(per_loss)
    for r in records:
        r["dataset"]["name"] = "digits-lt50"
    summary = summarize(records)
    marks = {e["loss"]: e["vs_baseline"]["accuracy"] for e in summary["losses"][1:]}
    assert marks["a"]["p_holm"] < 0.05 and marks["b"]["p"] < 0.05 < marks["b"]["p_holm"] and marks["c"]["p"] > 0.05
    rows = [r for r in summary_markdown(summary).splitlines() if r.startswith("| ") and "[" in r]
    cells = {r.split("|")[1].strip(): r for r in rows}
    assert "*†" in cells["a"] and "*" in cells["b"] and "†" not in cells["b"] and "*" not in cells["c"]
    fig = result_figures(summary)["forest"]
    try:
        for ax in fig.axes:
            bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            filled = [mcolors.to_hex(b.lines[0].get_markerfacecolor()) != "#ffffff" for b in bars]
            assert filled == [True, False, False], ax.get_title()  # a, b, c in table order: only a is filled
        (legend,) = fig.legends
        texts = [t.get_text() for t in legend.get_texts()]
        assert any("Holm" in t and "†" in t for t in texts) and any("not after Holm" in t for t in texts), texts
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1  # not cut off
        for ax in fig.axes:
            assert not title.overlaps(ax.title.get_window_extent(renderer)), ax.get_title()
            assert not legend.get_window_extent(renderer).overlaps(ax.get_tightbbox(renderer))
    finally:
        plt.close(fig)


def test_figures_label_every_axis_use_percent_and_show_the_paired_differences():
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    summary = summarize(_records({"ce": [0.6, 0.7, 0.8], "poly1": [0.62, 0.73, 0.81], "focal": [0.5, 0.6, 0.8]}))
    figs = result_figures(summary)
    try:
        assert set(figs) == {"metrics", "forest", "per_class_recall", "curves"}
        for name, fig in figs.items():
            for ax in fig.axes:
                assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
        forest = figs["forest"].axes
        assert len(forest) == len(summary["metrics"])  # one panel per metric
        assert {t.get_text() for t in forest[0].get_yticklabels()} == {"poly1", "focal"}
        bars = [c for c in forest[0].containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2
        ticks = [t.get_text() for t in figs["per_class_recall"].axes[0].get_xticklabels()]
        assert ticks[0].startswith("tulip") and ticks[2].startswith("iris")  # class names, not indices
        recall_ax = figs["per_class_recall"].axes[0]
        assert recall_ax.get_title() and any(isinstance(c, ErrorbarContainer) for c in recall_ax.containers)
        assert "%" in recall_ax.get_ylabel() and "percent" in figs["metrics"].axes[0].get_ylabel()
        heights = [p.get_height() for p in figs["metrics"].axes[0].patches]
        assert max(heights) == pytest.approx(72.0)  # poly1: mean of 0.62, 0.73, 0.81, in percent
    finally:
        for fig in figs.values():
            plt.close(fig)
    fig = sweep_figure(summary, [-1.0, 0.0, 1.0], title="poly1 vs epsilon")
    try:
        for ax in fig.axes:
            assert ax.get_xlabel() == "epsilon" and "(%)" in ax.get_ylabel()
            assert max(ax.lines[0].get_ydata()) > 1.0  # percent, as in the tables
    finally:
        plt.close(fig)


def test_loss_curves_follow_the_closed_forms():
    pts = [0.05, 0.3, 0.7, 0.95]
    curves = loss_curves(pts, gammas=[2.0], epsilons=[1.5])
    for i, p in enumerate(pts):
        ce, g_ce = -math.log(p), 1 - p
        fl = (1 - p) ** 2 * ce
        g_fl = abs(p * (1 - p) * (2 * (1 - p) * math.log(p) - (1 - p) ** 2 / p))  # |dFL/dp * dp/dz|
        assert curves["CE"][0][i] == pytest.approx(ce) and curves["CE"][1][i] == pytest.approx(g_ce)
        assert curves["focal γ=2"][0][i] == pytest.approx(fl) and curves["focal γ=2"][1][i] == pytest.approx(g_fl)
        assert curves["Poly-1 ε=1.5"][0][i] == pytest.approx(ce + 1.5 * (1 - p))
        assert curves["Poly-1 ε=1.5"][1][i] == pytest.approx((1 - p) + 1.5 * p * (1 - p))


# ---------------------------------------------------------------- runs: resume, determinism, summary

CFG = TrainConfig(epochs=2)


def test_interrupted_run_is_resumed_without_retraining_finished_runs(tmp_path):
    specs = [parse_loss_spec("ce"), parse_loss_spec("poly1:eps=2")]

    class Stop(Exception):
        pass

    def stop_after_first(record, path):
        raise Stop

    with pytest.raises(Stop):
        run_experiment(specs, [0, 1], CFG, tmp_path, on_run_finished=stop_after_first)
    first = run_path(tmp_path, specs[0], 0)
    assert _files(tmp_path) == ["runs", f"runs/{first.name}"]  # one finished run, no temp files
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()

    trained = []
    records = run_experiment(specs, [0, 1], CFG, tmp_path, on_run_finished=lambda r, p: trained.append(p.name))
    assert first.name not in trained and len(trained) == 3
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content
    assert [(r["loss"], r["seed"]) for r in records] == [(s.label, k) for s in specs for k in (0, 1)]
    again = []
    run_experiment(specs, [0, 1], CFG, tmp_path, on_run_finished=lambda r, p: again.append(p))
    assert again == []


def test_same_seed_gives_identical_results_and_different_seeds_differ(tmp_path):
    spec = [parse_loss_spec("focal:gamma=2")]
    a = run_experiment(spec, [0, 1], CFG, tmp_path / "a")
    b = run_experiment(spec, [0, 1], CFG, tmp_path / "b")
    for x, y in zip(a, b, strict=True):
        assert (x["metrics"], x["per_class_recall"], x["curves"]) == (y["metrics"], y["per_class_recall"], y["curves"])
    assert a[0]["curves"]["train_loss"] != a[1]["curves"]["train_loss"]
    # what the README says: the run files are identical in everything but train_seconds
    for seed in (0, 1):
        fa, fb = (json.loads(run_path(tmp_path / d, spec[0], seed).read_text()) for d in ("a", "b"))
        assert set(fa) == set(fb) and [k for k in fa if fa[k] != fb[k]] in ([], ["train_seconds"])


def test_compare_cli_writes_results_consistent_with_the_run_files(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["compare", "--out", str(out), "--losses", "ce", "poly1:eps=2", "--epochs", "2", "--seeds", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    names = set(_files(out))
    for f in ("summary.json", "summary.csv", "summary.md", "metrics.png", "forest.png", "per_class_recall.png"):
        assert f in names
    assert sum(n.startswith("runs/") and n.endswith(".json") for n in names) == 4
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "ce"
    poly = next(e for e in summary["losses"] if e["loss"] == "poly1:eps=2")
    by = {(r["loss"], r["seed"]): r["metrics"]["balanced_accuracy"] for r in runs}
    diffs = [by[("poly1:eps=2", s)] - by[("ce", s)] for s in (0, 1)]
    assert poly["vs_baseline"]["balanced_accuracy"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert poly["metrics"]["balanced_accuracy"]["mean"] == pytest.approx(
        (by[("poly1:eps=2", 0)] + by[("poly1:eps=2", 1)]) / 2
    )
    assert (out / "summary.md").read_text() in printed
    assert f"{100 * poly['metrics']['accuracy']['mean']:.1f}" in printed


def test_sweep_and_plot_cli(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(["sweep", "--epsilon", "-1,0,2", "--out", str(out), "--epochs", "1", "--seeds", "1", "--no-progress"]) == 0
    )
    names = set(_files(out))
    assert {"sweep.png", "sweep.json", "runs/poly1_eps-1__seed0.json", "runs/poly1_eps0__seed0.json"} <= names
    assert json.loads((out / "sweep.json").read_text())["baseline"] == "poly1:eps=0"
    png = tmp_path / "fig" / "loss.png"
    assert main(["plot", "--out", str(png), "--gamma", "1,2", "--epsilon", "-1,1"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _make_image_folder(root: Path, classes: dict[str, int], size: int = 12) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder_with_resnet18(tmp_path, capsys):
    _make_image_folder(tmp_path / "imgs", {"a": 6, "b": 5, "c": 5})
    out = tmp_path / "res"
    args = ["compare", "--data", str(tmp_path / "imgs"), "--out", str(out), "--losses", "ce", "--width", "4"]
    args += ["--image-size", "16", "--batch-size", "4", *TINY]
    assert main(args) == 0
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["config"]["model"] == "resnet18" and run["dataset"]["classes"] == ["a", "b", "c"]
    assert run["dataset"]["test_counts"] == [1, 1, 1]  # floor(0.2 * 5) per class, balanced
    assert run["dataset"]["train_counts"] == [5, 4, 4]
    # the stored config names the split actually used: a fraction of the smallest class, no fixed count
    assert run["config"]["test_fraction"] == 0.2 and run["config"]["test_per_class"] is None
    assert "minority classes c;" in capsys.readouterr().out  # by name (the fewest: c, 4 images)


def test_digits_config_records_its_fixed_test_count(tmp_path):
    run_experiment([parse_loss_spec("ce")], [0], TrainConfig(epochs=1), tmp_path)
    config = json.loads(run_path(tmp_path, parse_loss_spec("ce"), 0).read_text())["config"]
    assert config["test_per_class"] == 40 and config["test_fraction"] is None


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def _bad(tmp_path, capsys, argv, *, words):
    out = tmp_path / "never"
    rc = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("polyfocal ") and "error:" in err
    for w in words:
        assert w in err
    assert not out.exists()


def test_bad_data_dirs(tmp_path, capsys):
    _bad(tmp_path, capsys, ["compare", "--data", str(tmp_path / "nope"), *TINY], words=["does not exist", "sub-folder"])
    (tmp_path / "empty").mkdir()
    _bad(tmp_path, capsys, ["compare", "--data", str(tmp_path / "empty"), *TINY], words=["no class sub-folders"])
    _make_image_folder(tmp_path / "d", {"a": 3, "b": 3})
    (tmp_path / "d" / "c").mkdir()
    (tmp_path / "d" / "c" / "notes.txt").write_text("x")
    _bad(
        tmp_path,
        capsys,
        ["compare", "--data", str(tmp_path / "d"), *TINY],
        words=["has no images", "remove the folder"],
    )
    (tmp_path / "d" / "c" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "d" / "c" / "ok.png").write_bytes((tmp_path / "d" / "a" / "0.png").read_bytes())
    _bad(tmp_path, capsys, ["compare", "--data", str(tmp_path / "d"), *TINY], words=["broken.jpg", "delete or replace"])


def test_bad_loss_specs_and_flags(tmp_path, capsys):
    _bad(tmp_path, capsys, ["compare", "--losses", "ce", "hinge", *TINY], words=["'hinge'", "poly1"])
    _bad(tmp_path, capsys, ["compare", "--losses", "poly1:gamma=2", *TINY], words=["'gamma'", "eps"])
    _bad(tmp_path, capsys, ["compare", "--losses", "poly1", "poly1:eps=1", *TINY], words=["more than once"])
    _bad(tmp_path, capsys, ["compare", "--epochs", "0", "--seeds", "1"], words=["--epochs"])
    _bad(tmp_path, capsys, ["compare", "--ddp", *TINY], words=["torchrun"])
    _bad(tmp_path, capsys, ["sweep", "--loss", "ce", *TINY], words=["eps"])
    _bad(tmp_path, capsys, ["sweep", "--epsilon", "1,x", *TINY], words=["--epsilon"])


def test_rerun_with_other_settings_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["compare", "--out", str(out), "--losses", "ce", *TINY]) == 0
    before = {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()}
    assert main(["compare", "--out", str(out), "--losses", "ce", "--lr", "0.01", *TINY]) == 2
    assert "other settings" in capsys.readouterr().err
    assert {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()} == before


def test_cli_import_is_light():
    code = (
        "import sys, argparse, polyfocal.experiments.cli as c; p = argparse.ArgumentParser(); "
        "c.register(p.add_subparsers()); "
        "print([m for m in ('matplotlib', 'torchmetrics', 'tqdm', 'sklearn', 'PIL', 'torch') if m in sys.modules])"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


# ---------------------------------------------------------------- torchrun: 2 gloo processes on localhost


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("train_seconds", "world_size")}


@pytest.mark.parametrize("mode", ["ddp", "distribute"])
def test_torchrun_two_gloo_processes_equal_single_process(tmp_path, mode):
    """`torchrun --nproc_per_node 2 -m polyfocal compare` (gloo, localhost): with --ddp every run is one DDP
    model over both ranks, without it the runs are dealt out over the ranks; both equal one process."""
    losses = ["ce", "poly1-focal"] + (["focal:gamma=2"] if mode == "distribute" else [])  # 3 runs: uneven
    base = ["compare", "--losses", *losses, "--epochs", "2", "--seeds", "1", "--dtype", "float64"]
    base += ["--no-progress", "--no-plots"]
    assert main([*base, "--out", str(tmp_path / "single")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), "-m", "polyfocal", *base, "--out", str(tmp_path / "multi")]
    cmd += ["--ddp"] if mode == "ddp" else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_process_group(cmd, cwd=tmp_path, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    single = sorted((tmp_path / "single" / "runs").glob("*.json"))
    multi = sorted((tmp_path / "multi" / "runs").glob("*.json"))
    assert [p.name for p in single] == [p.name for p in multi] and len(single) == len(losses)
    for a, b in zip(single, multi, strict=True):
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        if mode == "distribute":  # each run trained whole on one rank: bit-identical
            assert rb["world_size"] == 1 and _strip(ra) == _strip(rb)
        else:  # DDP: the same gradients up to float64 summation order
            assert rb["world_size"] == 2
            assert ra["metrics"] == rb["metrics"] and ra["per_class_recall"] == rb["per_class_recall"]
            assert rb["curves"]["train_loss"] == pytest.approx(ra["curves"]["train_loss"], rel=1e-10)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert [e["loss"] for e in summary["losses"]] == [parse_loss_spec(x).label for x in losses]
