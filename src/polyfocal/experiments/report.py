"""Summaries of finished runs: mean ± std over seeds, paired differences against a baseline with a t-interval and
p-value (``scipy.stats``) and Holm's correction across each table, the Markdown tables, summary CSV/JSON, and the
figures (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .outdir import write_atomic
from .runner import METRICS, write_json_atomic

__all__ = [
    "SIGNIFICANCE",
    "holm",
    "mean_std",
    "paired_difference",
    "plot_loss_vs_pt",
    "plot_results",
    "plot_sweep",
    "result_figures",
    "summarize",
    "summary_csv",
    "summary_markdown",
    "sweep_figure",
    "write_summary",
]

SIGNIFICANCE = 0.05  # the 95% intervals; Holm-adjusted p-values are compared with the same level


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; ``nan`` for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def paired_difference(values: Sequence[float], baseline: Sequence[float], *, level: float = 0.95) -> dict[str, Any]:
    """Per-seed differences ``values - baseline``: mean, std, the two-sided t confidence interval and the
    paired t-test's two-sided p-value (``scipy.stats.t``).

    ``ci = mean ± t.ppf((1+level)/2, n-1) * std / sqrt(n)``, ``p = 2 t.sf(|mean| / (std / sqrt(n)), n-1)``;
    for one seed the bounds and ``p`` are ``nan``; for ``std == 0`` the interval is the point ``mean`` and
    ``p`` is 1 if ``mean == 0``, else 0.

    Example:
        >>> from polyfocal.experiments.report import paired_difference
        >>> d = paired_difference([0.82, 0.80, 0.85], [0.80, 0.80, 0.81])
        >>> round(d["mean"], 4), round(d["ci_low"], 4), round(d["ci_high"], 4), round(d["p"], 3)
        (0.02, -0.0297, 0.0697, 0.225)
    """
    from scipy import stats

    if len(values) != len(baseline) or not values:
        raise ValueError(f"expected two equally long non-empty lists, got {len(values)} and {len(baseline)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"expected a confidence level in (0, 1), got {level!r}")
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    mean, std = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        half = p = math.nan
    elif std == 0.0:
        half, p = 0.0, (1.0 if mean == 0.0 else 0.0)
    else:
        se = std / math.sqrt(n)
        half = float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * se
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    return {
        "diffs": diffs,
        "mean": mean,
        "std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "p": p,
        "n": n,
        "level": level,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (``nan`` entries are left out of the family and
    stay ``nan``).  Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; an
    adjusted p below ``alpha`` controls the family-wise error rate at ``alpha``.

    Example:
        >>> from polyfocal.experiments.report import holm
        >>> holm([0.01, 0.04, 0.03, float("nan")])
        [0.03, 0.06, 0.06, nan]
    """
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def summarize(records: Sequence[dict[str, Any]], *, baseline: str | None = None) -> dict[str, Any]:
    """Group run records by loss (in first-seen order): mean ± std of every metric and of the per-class
    recall and curves, and paired differences against ``baseline`` (default ``"ce"`` if present, else the
    first loss) over the seeds both have, each with its p-value and Holm-adjusted p-value ``p_holm``, the
    family being all (loss, metric) differences of the summary (their number: ``"comparisons"``)."""
    losses: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        losses.setdefault(r["loss"], []).append(r)
    if not losses:
        raise ValueError("expected at least one finished run, got none")
    if baseline is None:
        baseline = "ce" if "ce" in losses else next(iter(losses))
    if baseline not in losses:
        raise ValueError(f"expected the baseline loss among {', '.join(losses)}, got {baseline!r}")
    base = {r["seed"]: r for r in losses[baseline]}
    out: dict[str, Any] = {"baseline": baseline, "metrics": list(METRICS), "losses": []}
    first = records[0]
    out["dataset"] = first["dataset"]
    out["config"] = first["config"]
    for label, runs in losses.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        entry: dict[str, Any] = {"loss": label, "seeds": [r["seed"] for r in runs], "metrics": {}, "vs_baseline": {}}
        for m in METRICS:
            mean, std = mean_std([r["metrics"][m] for r in runs])
            entry["metrics"][m] = {"mean": mean, "std": std}
            paired = [r for r in runs if r["seed"] in base]
            if label != baseline and paired:
                entry["vs_baseline"][m] = paired_difference(
                    [r["metrics"][m] for r in paired], [base[r["seed"]]["metrics"][m] for r in paired]
                )
        nclass = len(runs[0]["per_class_recall"])
        entry["per_class_recall"] = [mean_std([r["per_class_recall"][c] for r in runs]) for c in range(nclass)]
        entry["curves"] = {
            k: [mean_std([r["curves"][k][e] for r in runs]) for e in range(len(runs[0]["curves"][k]))]
            for k in runs[0]["curves"]
        }
        entry["train_seconds"] = sum(r.get("train_seconds", 0.0) for r in runs)
        out["losses"].append(entry)
    # Holm across the whole paired table: every (loss, metric) cell is one comparison of the family
    cells = [d for e in out["losses"] for d in e["vs_baseline"].values()]
    for d, adjusted in zip(cells, holm([d["p"] for d in cells]), strict=True):
        d["p_holm"] = adjusted
    out["comparisons"] = sum(not math.isnan(d["p"]) for d in cells)
    return out


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _significant(d: dict[str, Any]) -> bool:
    """Whether the interval excludes 0 (equivalently: the paired t-test's p < 1 - level)."""
    return not math.isnan(d["ci_low"]) and (d["ci_low"] > 0 or d["ci_high"] < 0)


def _forest_mark(d: dict[str, Any]) -> str:
    """The mark of a paired cell, in the table and in forest.png: ``"holm"`` (*†: the interval excludes 0 and the
    Holm-adjusted p < 0.05), ``"raw"`` (* only: the interval excludes 0) or ``"none"``."""
    if _significant(d):
        return "holm" if d.get("p_holm", math.nan) < SIGNIFICANCE else "raw"
    return "none"


# forest.png: (colour, marker face) per mark; only what survives Holm is filled
_FOREST_STYLE = {"holm": ("C3", "C3"), "raw": ("C1", "white"), "none": ("C0", "white")}


def _bound(x: float, *, away_from_zero: bool) -> str:
    """A bound in percentage points, 1 decimal, more if needed so that a bound that excludes 0 does not print
    as 0.0 (then the printed interval agrees with the significance mark)."""
    for decimals in range(1, 7):
        text = f"{100 * x:.{decimals}f}"
        if not away_from_zero or float(text) != 0.0:
            return text
    return f"{100 * x:.2g}"


def _interval(d: dict[str, Any]) -> str:
    if math.isnan(d["ci_low"]):
        return "[n/a]"
    sig = _significant(d)
    lo = _bound(d["ci_low"], away_from_zero=sig and d["ci_low"] > 0)
    hi = _bound(d["ci_high"], away_from_zero=sig and d["ci_high"] < 0)
    return f"[{lo}, {hi}]"


def _p(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """Markdown: mean ± std (percent) per metric; if there are paired differences, a table of them against the
    baseline with 95% intervals and marks, and one of their raw and Holm-adjusted p-values."""
    titles = [METRICS[m][0] for m in summary["metrics"]]
    lines = ["| loss | seeds | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for e in summary["losses"]:
        cells = [f"{_pct(e['metrics'][m]['mean'])} ± {_pct(e['metrics'][m]['std'])}" for m in summary["metrics"]]
        lines.append(f"| {e['loss']} | {len(e['seeds'])} | " + " | ".join(cells) + " |")
    paired = [e for e in summary["losses"] if e["vs_baseline"]]
    if paired:
        k = summary.get("comparisons", 0)
        lines += [
            "",
            f"Paired difference vs {summary['baseline']} (same seed = same split and initial weights), "
            "percentage points, mean [95% t-interval]; * = interval excludes 0 (paired t-test p < 0.05), "
            f"† = also after Holm's correction for the {k} comparisons of this table (Holm p < 0.05):",
            "",
            "| loss | " + " | ".join(f"Δ {t}" for t in titles) + " |",
            "|---|" + "---:|" * len(titles),
        ]
        for e in paired:
            cells = []
            for m in summary["metrics"]:
                d = e["vs_baseline"][m]
                mark = {"holm": " *†", "raw": " *", "none": ""}[_forest_mark(d)]
                cells.append(f"{100 * d['mean']:+.1f} {_interval(d)}{mark}")
            lines.append(f"| {e['loss']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"p-values of those differences (paired t-test), raw / Holm-adjusted for the {k} comparisons:",
            "",
            "| loss | " + " | ".join(titles) + " |",
            "|---|" + "---:|" * len(titles),
        ]
        for e in paired:
            cells = [
                f"{_p(e['vs_baseline'][m]['p'])} / {_p(e['vs_baseline'][m].get('p_holm', math.nan))}"
                for m in summary["metrics"]
            ]
            lines.append(f"| {e['loss']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ECE: lower is better; the others: higher is better.")
    return "\n".join(lines) + "\n"


def summary_csv(summary: dict[str, Any]) -> str:
    """One row per loss: ``<metric>_mean``, ``<metric>_std``, and ``<metric>_diff``/``_ci_low``/``_ci_high``/
    ``_p``/``_p_holm`` (empty for the baseline)."""
    buf = io.StringIO()
    cols = ["loss", "seeds"]
    for m in summary["metrics"]:
        cols += [f"{m}_mean", f"{m}_std", f"{m}_diff", f"{m}_ci_low", f"{m}_ci_high", f"{m}_p", f"{m}_p_holm"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for e in summary["losses"]:
        row: list[object] = [e["loss"], len(e["seeds"])]
        for m in summary["metrics"]:
            d = e["vs_baseline"].get(m, {})
            row += [e["metrics"][m]["mean"], e["metrics"][m]["std"]]
            row += [d.get(k, "") for k in ("mean", "ci_low", "ci_high", "p", "p_holm")]
        writer.writerow(row)
    return buf.getvalue()


def write_summary(out_dir: str | Path, summary: dict[str, Any], *, stem: str = "summary") -> str:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md`` (atomically); return the Markdown."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / f"{stem}.json", summary)
    md = summary_markdown(summary)
    write_atomic(out_dir / f"{stem}.csv", summary_csv(summary))
    write_atomic(out_dir / f"{stem}.md", md)
    return md


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _direction(m: str) -> str:
    return "higher is better" if METRICS[m][1] else "lower is better"


def result_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of a summary as matplotlib figures, by file stem: ``metrics`` (bars, ± std), ``forest``
    (each loss's paired difference vs the baseline with its 95% interval, one panel per metric; only with
    paired differences), ``per_class_recall`` (± std) and ``curves``.  Every axis is labelled; percentages
    are in percent, as in the tables.  Close them with ``matplotlib.pyplot.close``."""
    plt = _pyplot()
    losses = summary["losses"]
    ms = summary["metrics"]
    name = summary["dataset"]["name"]
    nseeds = max(len(e["seeds"]) for e in losses)
    k = len(losses)
    figs: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(ms) + 0.3 * k), 4))
    width = 0.8 / k
    for i, e in enumerate(losses):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(ms))]
        ys = [100 * e["metrics"][m]["mean"] for m in ms]
        err = [100 * _nan0(e["metrics"][m]["std"]) for m in ms]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=e["loss"])
    ax.set_xticks(range(len(ms)), [METRICS[m][0] for m in ms])
    ax.set_xlabel("test metric")
    ax.set_ylabel(f"percent (mean ± std over {nseeds} seeds)")
    ax.set_title(f"{name}: test metrics (ECE: lower is better)")
    ax.legend(fontsize=8, ncol=2)
    figs["metrics"] = fig

    paired = [e for e in losses if e["vs_baseline"]]
    if paired:
        from matplotlib.lines import Line2D

        k_cmp = summary.get("comparisons", 0)
        fig, axes = plt.subplots(
            len(ms), 1, figsize=(7, len(ms) * (0.45 * len(paired) + 1.1) + 1.0), squeeze=False, layout="constrained"
        )
        ys = list(range(len(paired)))[::-1]
        for ax, m in zip(axes[:, 0], ms, strict=True):
            for y, e in zip(ys, paired, strict=True):
                d = e["vs_baseline"][m]
                mean = 100 * d["mean"]
                lo, hi = 100 * _nan0(d["mean"] - d["ci_low"]), 100 * _nan0(d["ci_high"] - d["mean"])
                color, face = _FOREST_STYLE[_forest_mark(d)]
                ax.errorbar([mean], [y], xerr=[[lo], [hi]], fmt="o", capsize=3, color=color, markerfacecolor=face)
            ax.axvline(0.0, color="grey", lw=0.8, ls="--")
            ax.set_yticks(ys, [e["loss"] for e in paired])
            ax.set_ylim(-0.6, len(paired) - 0.4)
            ax.set_ylabel("loss")
            ax.set_xlabel(f"Δ {METRICS[m][0]} vs {summary['baseline']} (percentage points)")
            ax.set_title(f"{METRICS[m][0]} ({_direction(m)})", fontsize=10)
        labels = {
            "holm": f"*† survives Holm's correction for the {k_cmp} comparisons (adjusted p < 0.05)",
            "raw": "* interval excludes 0 (raw p < 0.05), not after Holm's correction",
            "none": "interval includes 0",
        }
        handles = [
            Line2D([], [], marker="o", ls="", color=_FOREST_STYLE[key][0], markerfacecolor=_FOREST_STYLE[key][1])
            for key in labels
        ]
        fig.legend(handles, list(labels.values()), loc="outside lower center", fontsize=8, frameon=False)
        fig.suptitle(
            f"{name}: paired difference vs {summary['baseline']},\nmean and 95% t-interval over {nseeds} seeds",
            fontsize=10,
        )
        figs["forest"] = fig

    fig, ax = plt.subplots(figsize=(8, 4))
    counts = summary["dataset"]["train_counts"]
    classes = summary["dataset"]["classes"]
    for i, e in enumerate(losses):
        means = [100 * m for m, _ in e["per_class_recall"]]
        err = [100 * _nan0(s) for _, s in e["per_class_recall"]]
        xs = [c + (i - (k - 1) / 2) * 0.08 for c in range(len(means))]  # small offsets: bars stay apart
        ax.errorbar(xs, means, yerr=err, marker="o", ms=4, capsize=2, label=e["loss"])
    ax.set_xticks(range(len(classes)), [f"{c}\n(n={n})" for c, n in zip(classes, counts, strict=True)], fontsize=7)
    ax.set_xlabel("class (training samples)")
    ax.set_ylabel("test recall (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{name}: test recall per class, mean ± std over {nseeds} seeds")
    ax.legend(fontsize=8)
    figs["per_class_recall"] = fig

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for e in losses:
        for ax, key, scale in zip(axes, ("train_loss", "test_balanced_accuracy"), (1, 100), strict=True):
            mean = [scale * m for m, _ in e["curves"][key]]
            std = [scale * _nan0(s) for _, s in e["curves"][key]]
            epochs = range(1, len(mean) + 1)
            ax.plot(epochs, mean, label=e["loss"])
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                alpha=0.15,
            )
    axes[0].set_title("training loss (each loss on its own scale)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean training loss per sample (log scale)")
    axes[1].set_title("test balanced accuracy")
    axes[1].set_ylabel("balanced accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{name}: mean ± std over {nseeds} seeds", fontsize=10)
    fig.tight_layout()
    figs["curves"] = fig
    return figs


def plot_results(out_dir: str | Path, summary: dict[str, Any]) -> list[Path]:
    """Write :func:`result_figures` as ``<out_dir>/<name>.png`` (each atomically); return the paths."""
    plt = _pyplot()
    paths = []
    for stem, fig in result_figures(summary).items():
        paths.append(_save(fig, Path(out_dir) / f"{stem}.png"))
        plt.close(fig)
    return paths


def sweep_figure(summary: dict[str, Any], epsilons: Sequence[float], *, title: str) -> Any:
    """Every metric (percent, mean ± std over seeds) vs epsilon, one panel per metric."""
    plt = _pyplot()
    ms = summary["metrics"]
    nseeds = max(len(e["seeds"]) for e in summary["losses"])
    fig, axes = plt.subplots(1, len(ms), figsize=(3.2 * len(ms), 3.6), squeeze=False)
    for ax, m in zip(axes[0], ms, strict=True):
        ys = [100 * e["metrics"][m]["mean"] for e in summary["losses"]]
        err = [100 * _nan0(e["metrics"][m]["std"]) for e in summary["losses"]]
        ax.errorbar(list(epsilons), ys, yerr=err, marker="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epsilon")
        ax.set_ylabel(f"{METRICS[m][0]} (%)")
        ax.set_title(f"{METRICS[m][0]} ({_direction(m)})", fontsize=10)
    fig.suptitle(f"{title}: mean ± std over {nseeds} seeds")
    fig.tight_layout()
    return fig


def plot_sweep(path: str | Path, summary: dict[str, Any], epsilons: Sequence[float], *, title: str) -> Path:
    """Write :func:`sweep_figure` to ``path`` (PNG, atomically)."""
    plt = _pyplot()
    fig = sweep_figure(summary, epsilons, title=title)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def loss_curves(
    p_t: Sequence[float], *, gammas: Sequence[float], epsilons: Sequence[float]
) -> dict[str, tuple[list[float], list[float]]]:
    """Loss and gradient magnitude ``|dL/dz_t|`` (``z_t`` = the target's logit) vs ``p_t``, computed with the
    library by autograd on a two-class softmax with logits ``(log p_t - log(1 - p_t), 0)``.

    Keys: ``"CE"``, ``"focal γ=<g>"`` per gamma, ``"Poly-1 ε=<e>"`` per epsilon."""
    import torch

    import polyfocal

    pt = torch.tensor(list(p_t), dtype=torch.float64)
    target = torch.zeros(len(pt), dtype=torch.int64)
    fns = {"CE": lambda x: polyfocal.cross_entropy(x, target, reduction="none")}
    for g in gammas:
        fns[f"focal γ={g:g}"] = lambda x, g=g: polyfocal.softmax_focal_loss(x, target, gamma=g, reduction="none")
    for e in epsilons:
        fns[f"Poly-1 ε={e:g}"] = lambda x, e=e: polyfocal.poly1_cross_entropy(x, target, epsilon=e, reduction="none")
    out = {}
    for name, fn in fns.items():
        z = (torch.log(pt) - torch.log1p(-pt)).requires_grad_(True)
        logits = torch.stack([z, torch.zeros_like(z)], dim=1)
        loss = fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        out[name] = (loss.detach().tolist(), grad.abs().tolist())
    return out


def plot_loss_vs_pt(path: str | Path, *, gammas: Sequence[float], epsilons: Sequence[float]) -> Path:
    """The classic figure: loss and gradient magnitude vs ``p_t`` for CE, focal and Poly-1 (PNG)."""
    plt = _pyplot()
    path = Path(path)
    pts = [0.005 + 0.99 * i / 399 for i in range(400)]
    curves = loss_curves(pts, gammas=gammas, epsilons=epsilons)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (loss, grad) in curves.items():
        style = "-" if name == "CE" else ("--" if name.startswith("focal") else "-.")
        axes[0].plot(pts, loss, style, label=name, lw=2 if name == "CE" else 1.3)
        axes[1].plot(pts, grad, style, label=name, lw=2 if name == "CE" else 1.3)
    axes[0].set_ylim(0, 5)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("|dL / d z_t|  (gradient w.r.t. the target logit)")
    for ax in axes:
        ax.set_xlabel("p_t (probability of the ground-truth class)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("loss vs p_t")
    axes[1].set_title("gradient magnitude vs p_t")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path)
    plt.close(fig)
    return path
