"""Summaries of finished runs: mean ± std over seeds, paired differences against a baseline with a t-interval,
the Markdown table, summary CSV/JSON, and the figures (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runner import METRICS, write_json_atomic

__all__ = [
    "mean_std",
    "paired_difference",
    "plot_loss_vs_pt",
    "plot_results",
    "plot_sweep",
    "summarize",
    "summary_csv",
    "summary_markdown",
    "t_quantile",
    "write_summary",
]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (bisection on the CDF via the incomplete beta function).

    Example:
        >>> from polyfocal.experiments.report import t_quantile
        >>> round(t_quantile(0.975, 4), 3)  # the 95% two-sided interval with 5 seeds
        2.776
    """
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"expected 0 < p < 1 and df > 0, got p={p!r}, df={df!r}")
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, df) > p:
        lo *= 2.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; ``nan`` for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def paired_difference(values: Sequence[float], baseline: Sequence[float], *, level: float = 0.95) -> dict[str, Any]:
    """Per-seed differences ``values - baseline``: mean, std and the two-sided t confidence interval.

    ``ci = mean ± t_{(1+level)/2, n-1} * std / sqrt(n)`` (``nan`` bounds for one seed).
    """
    if len(values) != len(baseline) or not values:
        raise ValueError(f"expected two equally long non-empty lists, got {len(values)} and {len(baseline)}")
    diffs = [a - b for a, b in zip(values, baseline, strict=True)]
    mean, std = mean_std(diffs)
    n = len(diffs)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {
        "diffs": diffs,
        "mean": mean,
        "std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": n,
        "level": level,
    }


def summarize(records: Sequence[dict[str, Any]], *, baseline: str | None = None) -> dict[str, Any]:
    """Group run records by loss (in first-seen order): mean ± std of every metric and of the per-class
    recall and curves, and paired differences against ``baseline`` (default ``"ce"`` if present, else the
    first loss) over the seeds both have."""
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
    return out


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """Two Markdown tables: mean ± std (percent) per metric, and paired differences against the baseline."""
    titles = [METRICS[m][0] for m in summary["metrics"]]
    lines = ["| loss | seeds | " + " | ".join(titles) + " |", "|---|---:|" + "---:|" * len(titles)]
    for e in summary["losses"]:
        cells = [f"{_pct(e['metrics'][m]['mean'])} ± {_pct(e['metrics'][m]['std'])}" for m in summary["metrics"]]
        lines.append(f"| {e['loss']} | {len(e['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired difference vs {summary['baseline']} (same seed = same split and initial weights), "
        "percentage points, mean [95% t-interval]; * = interval excludes 0:",
        "",
        "| loss | " + " | ".join(f"Δ {t}" for t in titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    for e in summary["losses"]:
        if not e["vs_baseline"]:
            continue
        cells = []
        for m in summary["metrics"]:
            d = e["vs_baseline"][m]
            sig = "" if math.isnan(d["ci_low"]) or d["ci_low"] <= 0 <= d["ci_high"] else " *"
            cells.append(f"{100 * d['mean']:+.1f} [{_pct(d['ci_low'])}, {_pct(d['ci_high'])}]{sig}")
        lines.append(f"| {e['loss']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ECE: lower is better; the others: higher is better.")
    return "\n".join(lines) + "\n"


def summary_csv(summary: dict[str, Any]) -> str:
    """One row per loss: ``<metric>_mean``, ``<metric>_std``, and ``<metric>_diff``/``_ci_low``/``_ci_high``."""
    buf = io.StringIO()
    cols = ["loss", "seeds"]
    for m in summary["metrics"]:
        cols += [f"{m}_mean", f"{m}_std", f"{m}_diff", f"{m}_ci_low", f"{m}_ci_high"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for e in summary["losses"]:
        row: list[object] = [e["loss"], len(e["seeds"])]
        for m in summary["metrics"]:
            d = e["vs_baseline"].get(m, {})
            row += [
                e["metrics"][m]["mean"],
                e["metrics"][m]["std"],
                d.get("mean", ""),
                d.get("ci_low", ""),
                d.get("ci_high", ""),
            ]
        writer.writerow(row)
    return buf.getvalue()


def write_summary(out_dir: str | Path, summary: dict[str, Any], *, stem: str = "summary") -> str:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md`` (atomically); return the Markdown."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / f"{stem}.json", summary)
    md = summary_markdown(summary)
    for name, text in ((f"{stem}.csv", summary_csv(summary)), (f"{stem}.md", md)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)
    return md


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)


def plot_results(out_dir: str | Path, summary: dict[str, Any]) -> list[Path]:
    """``metrics.png`` (bars with ± std error bars), ``per_class_recall.png``, ``curves.png``."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    losses = summary["losses"]
    k = len(losses)
    paths = []

    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(summary["metrics"]) + 0.3 * k), 4))
    width = 0.8 / k
    for i, e in enumerate(losses):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(summary["metrics"]))]
        ys = [e["metrics"][m]["mean"] for m in summary["metrics"]]
        err = [0.0 if math.isnan(e["metrics"][m]["std"]) else e["metrics"][m]["std"] for m in summary["metrics"]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=e["loss"])
    ax.set_xticks(range(len(summary["metrics"])), [METRICS[m][0] for m in summary["metrics"]])
    ax.set_ylabel(f"mean ± std over {len(losses[0]['seeds'])} seeds")
    ax.set_title(f"{summary['dataset']['name']}: test metrics (ECE: lower is better)")
    ax.legend(fontsize=8, ncol=2)
    paths.append(out_dir / "metrics.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    counts = summary["dataset"]["train_counts"]
    classes = summary["dataset"]["classes"]
    for e in losses:
        means = [m for m, _ in e["per_class_recall"]]
        ax.plot(range(len(means)), means, marker="o", label=e["loss"])
    ax.set_xticks(range(len(classes)), [f"{c}\n(n={n})" for c, n in zip(classes, counts, strict=True)], fontsize=7)
    ax.set_xlabel("class (training samples)")
    ax.set_ylabel("test recall, mean over seeds")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    paths.append(out_dir / "per_class_recall.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for e in losses:
        for ax, key in zip(axes, ("train_loss", "test_balanced_accuracy"), strict=True):
            mean = [m for m, _ in e["curves"][key]]
            std = [0.0 if math.isnan(s) else s for _, s in e["curves"][key]]
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
    axes[1].set_title("test balanced accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=8)
    paths.append(out_dir / "curves.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def plot_sweep(path: str | Path, summary: dict[str, Any], epsilons: Sequence[float], *, title: str) -> Path:
    """Metric vs epsilon (mean ± std over seeds), one panel per metric."""
    plt = _pyplot()
    path = Path(path)
    ms = summary["metrics"]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.2 * len(ms), 3.4))
    for ax, m in zip(axes, ms, strict=True):
        ys = [e["metrics"][m]["mean"] for e in summary["losses"]]
        err = [0.0 if math.isnan(e["metrics"][m]["std"]) else e["metrics"][m]["std"] for e in summary["losses"]]
        ax.errorbar(list(epsilons), ys, yerr=err, marker="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epsilon")
        ax.set_title(METRICS[m][0])
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


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
