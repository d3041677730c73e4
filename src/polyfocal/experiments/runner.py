"""Training, evaluation, resumable result files and torchrun scale-out for ``polyfocal compare``.

One *run* = one (loss, seed): a fresh model (initialised from ``seed``, so every loss starts from the
same weights), trained with Adam on the seed's train split, evaluated on the balanced test split with
torchmetrics, written atomically to ``<out>/runs/<loss-slug>__seed<k>.json`` as soon as it finishes.
Rerunning skips runs whose file exists (after checking it was made with the same settings).

Under ``torchrun`` (``WORLD_SIZE > 1``) the runs are dealt out round-robin over the ranks; with
``ddp=True`` every rank instead trains the same run with :class:`~torch.nn.parallel.DistributedDataParallel`
on its share of each global mini-batch, the loss normalised by
:func:`polyfocal.all_reduce_normalizer`, so the gradients equal the single-process ones.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import Dataset, load_digits_long_tail, load_image_folder, make_synthetic_long_tail, minority_classes
from .losses import LossSpec, build_loss
from .models import build_model
from .outdir import OutputError, check_writable, write_atomic

__all__ = [
    "METRICS",
    "DistContext",
    "ExperimentError",
    "PaceEstimate",
    "TrainConfig",
    "evaluate",
    "load_dataset",
    "run_experiment",
    "run_path",
    "train_run",
    "write_json_atomic",
]

RESULT_FORMAT = 1
# metric key -> (column title, higher is better)
METRICS = {
    "accuracy": ("acc", True),
    "balanced_accuracy": ("bal acc", True),
    "macro_auroc": ("macro AUROC", True),
    "ece": ("ECE", False),
    "minority_recall": ("minority recall", True),
}


class ExperimentError(ValueError):
    """Inconsistent experiment input (e.g. a results directory made with other settings)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers besides the loss and the seed (stored in every run file)."""

    dataset: str = "digits"  # "digits", "synthetic" or "folder"
    data_dir: str | None = None
    imbalance_ratio: float = 50.0
    model: str = "mlp"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    image_size: int = 64
    width: int = 64
    augment: bool = False
    # The test split: a fixed number per class for digits / synthetic (default 40), a fraction of the smallest
    # class for an image folder (default 0.2); the other one is None, so the stored config says what was used.
    test_per_class: int | None = None
    test_fraction: float | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dataset == "folder":
            if self.test_per_class is not None:
                raise ValueError(f"expected test_per_class=None for an image folder, got {self.test_per_class!r}")
            if self.test_fraction is None:
                object.__setattr__(self, "test_fraction", 0.2)
        else:
            if self.test_fraction is not None:
                raise ValueError(f"expected test_fraction=None for {self.dataset!r}, got {self.test_fraction!r}")
            if self.test_per_class is None:
                object.__setattr__(self, "test_per_class", 40)


@dataclass
class DistContext:
    """Rank, world size and device of this process (``world_size == 1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


_RAW_IMAGES: dict[tuple[str, int], Any] = {}


def load_dataset(config: TrainConfig, seed: int) -> Dataset:
    """The train/test split of ``seed`` (image folders are read once per process and cached)."""
    if config.dataset == "digits":
        return load_digits_long_tail(ratio=config.imbalance_ratio, test_per_class=config.test_per_class, seed=seed)
    if config.dataset == "synthetic":
        return make_synthetic_long_tail(ratio=config.imbalance_ratio, test_per_class=config.test_per_class, seed=seed)
    if config.dataset == "folder":
        from .data import read_image_folder

        key = (str(config.data_dir), config.image_size)
        if key not in _RAW_IMAGES:
            _RAW_IMAGES[key] = read_image_folder(config.data_dir, image_size=config.image_size)
        return load_image_folder(
            config.data_dir,
            image_size=config.image_size,
            test_fraction=config.test_fraction,
            ratio=config.imbalance_ratio,
            seed=seed,
            raw=_RAW_IMAGES[key],
        )
    raise ExperimentError(f"expected dataset 'digits', 'synthetic' or 'folder', got {config.dataset!r}")


def run_path(out_dir: str | Path, spec: LossSpec, seed: int) -> Path:
    """``<out>/runs/<loss-slug>__seed<k>.json``."""
    return Path(out_dir) / "runs" / f"{spec.slug}__seed{seed}.json"


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Write JSON atomically (:func:`~polyfocal.experiments.outdir.write_atomic`: a uniquely named temporary
    file in the same directory, ``os.replace``-d onto ``path``, mode ``0o666 & ~umask``)."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def evaluate(probs: torch.Tensor, target: torch.Tensor, *, minority: Sequence[int]) -> dict[str, Any]:
    """Test metrics with torchmetrics: accuracy, balanced accuracy (macro recall), macro one-vs-rest AUROC,
    expected calibration error (15 equal-width bins, L1, top-class confidence), per-class recall and the mean
    recall of the ``minority`` classes.  ``probs`` are the model's own probabilities ``(N, C)``."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_auroc,
        multiclass_calibration_error,
        multiclass_recall,
    )

    probs = probs.detach().to("cpu", torch.float32)
    target = target.to("cpu")
    c = probs.shape[1]
    recall = multiclass_recall(probs, target, num_classes=c, average="none")
    return {
        "metrics": {
            "accuracy": float(multiclass_accuracy(probs, target, num_classes=c, average="micro")),
            "balanced_accuracy": float(multiclass_accuracy(probs, target, num_classes=c, average="macro")),
            "macro_auroc": float(multiclass_auroc(probs, target, num_classes=c, average="macro")),
            "ece": float(multiclass_calibration_error(probs, target, num_classes=c, n_bins=15, norm="l1")),
            "minority_recall": float(recall[list(minority)].mean()),
        },
        "per_class_recall": [float(r) for r in recall],
    }


def _probabilities(logits: torch.Tensor, activation: str) -> torch.Tensor:
    # a sigmoid-trained model's scores are per-class probabilities; its confidence is sigmoid(top logit)
    return logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)


def _augment(x: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Horizontal flip and a random crop from a ``pad``-pixel reflect-padded image (per-sample params given)."""
    x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = offsets[:, 0].view(-1, 1) + torch.arange(h).view(1, -1)  # (B, h)
    cols = offsets[:, 1].view(-1, 1) + torch.arange(w).view(1, -1)  # (B, w)
    b = torch.arange(x.shape[0]).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[b, rows.view(-1, h, 1), cols.view(-1, 1, w)]  # (B, h, w, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _global_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A random permutation cut into mini-batches; a last batch shorter than half a batch joins the previous one."""
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size / 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def train_run(
    spec: LossSpec,
    seed: int,
    config: TrainConfig,
    *,
    ctx: DistContext | None = None,
    ddp: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (loss, seed) run; returns the run record (see :func:`run_experiment`).

    ``on_epoch(epoch)`` is called after each epoch (training and its test evaluation) finishes.

    Deterministic per seed: the split, the initial weights, the mini-batch order and the augmentation are
    drawn from generators seeded by ``seed`` (and the epoch), the same on every rank.  With ``ddp=True``
    (inside an initialised process group) rank ``r`` of ``W`` trains on ``batch[r::W]`` of every global
    mini-batch; the loss normaliser is :func:`polyfocal.all_reduce_normalizer` of the local sample count,
    so DDP's averaged gradient is the single-process gradient of the whole mini-batch.
    """
    import polyfocal

    ctx = ctx or DistContext()
    world, rank = (ctx.world_size, ctx.rank) if ddp else (1, 0)
    dtype = {"float32": torch.float32, "float64": torch.float64}[config.dtype]
    device = ctx.device
    data = load_dataset(config, seed)
    minority = minority_classes(data.train_counts)
    x_train, y_train = data.x_train.to(device, dtype), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device, dtype), data.y_test.to(device)

    torch.manual_seed(seed)
    model = build_model(
        config.model, input_shape=x_train.shape[1:], num_classes=data.num_classes, width=config.width
    ).to(device, dtype)
    train_model: torch.nn.Module = model
    if ddp and ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = build_loss(spec, class_counts=data.train_counts)

    def predict() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(xb) for xb in x_test.split(256)])
        model.train()
        return _probabilities(logits, spec.activation)

    curves: dict[str, list[float]] = {"train_loss": [], "test_balanced_accuracy": []}
    n = len(y_train)
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        if hasattr(loss_fn, "set_epoch"):  # schedules inside the loss (LDAM's deferred re-weighting)
            loss_fn.set_epoch(epoch)
        g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        batches = _global_batches(n, config.batch_size, g)
        if config.augment and data.image:
            flips = torch.rand(n, generator=g) < 0.5
            offsets = torch.randint(0, 9, (n, 2), generator=g)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batches:
            local = batch[rank::world].to(device)
            xb, yb = x_train[local], y_train[local]
            if config.augment and data.image:
                xb = _augment(xb, flips[local.cpu()].to(device), offsets[local.cpu()].to(device), pad=4)
            count = torch.tensor(float(len(local)), device=device)
            # DDP: (global count / W), the same on all ranks; otherwise this process's own batch (no collective)
            normalizer = polyfocal.all_reduce_normalizer(count) if world > 1 else count.clamp(min=1.0)
            loss = loss_fn(train_model(xb), yb, normalizer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * normalizer.double()  # this rank's summed element loss
        if ddp and world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss_sum)  # the summed element loss of the whole epoch
        curves["train_loss"].append(float(loss_sum) / n)
        probs = predict()
        curves["test_balanced_accuracy"].append(
            evaluate(probs, y_test, minority=minority)["metrics"]["balanced_accuracy"]
        )
        if on_epoch is not None:
            on_epoch(epoch)
    seconds = time.perf_counter() - start
    record = evaluate(predict(), y_test, minority=minority)
    return {
        "format": RESULT_FORMAT,
        "loss": spec.label,
        "loss_name": spec.name,
        "loss_params": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.params.items()},
        "activation": spec.activation,
        "seed": seed,
        "config": asdict(config),
        "dataset": {
            "name": data.name,
            "classes": data.class_names,
            "train_counts": data.train_counts,
            "test_counts": data.test_counts,
            "minority_classes": minority,
        },
        **record,
        "curves": curves,
        "train_seconds": round(seconds, 3),
        "world_size": world,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def _warm_up() -> None:
    """Pay the one-time costs (torchmetrics' import, ~1 s of lazy imports in the first optimizer step) before
    the first epoch (the time estimate leaves that epoch out anyway: :class:`PaceEstimate`)."""
    import torchmetrics.functional.classification  # noqa: F401

    w = torch.zeros(1, requires_grad=True)
    w.grad = torch.zeros(1)
    torch.optim.Adam([w]).step()


class PaceEstimate:
    """The time left in a job of ``total`` epochs, from the pace since the end of its first epoch.

    The first epoch carries one-time costs (the first batches' allocations, lazy imports, kernel builds, loading
    the data for the first run) that the later ones do not: an estimate from it alone was 60x too long.  So the
    first epoch only starts the clock; from the second on the estimate is ``(epochs left) x (mean time of an epoch
    since the first)``, a running mean that also spreads the per-run costs (data, model, final evaluation) over the
    epochs, and it is updated after every epoch.  ``clock`` returns seconds (``time.perf_counter`` by default)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.clock = total, clock
        self.done = 0
        self._first_end = 0.0

    def epoch_finished(self) -> float | None:
        """Count one finished epoch; return the estimated seconds left, or ``None`` after the first epoch."""
        now = self.clock()
        self.done += 1
        if self.done == 1:
            self._first_end = now
            return None
        return (now - self._first_end) / (self.done - 1) * (self.total - self.done)


def _check_existing(path: Path, config: TrainConfig, spec: LossSpec, seed: int) -> dict[str, Any] | None:
    """The finished run stored at ``path`` (``None`` if absent); refuses one made with other settings."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExperimentError(f"run file {str(path)!r} is unreadable; delete it to rerun that run") from None
    if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT:
        raise ExperimentError(f"run file {str(path)!r} has an unknown format; delete it to rerun that run")
    if record.get("config") != asdict(config):
        old = record.get("config") or {}
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in asdict(config).items() if old.get(k) != v)
        raise ExperimentError(
            f"results directory {str(path.parent.parent)!r} holds runs made with other settings ({diff}); "
            "pass a new --out or delete the directory"
        )
    if record.get("loss") != spec.label or record.get("seed") != seed:
        raise ExperimentError(f"run file {str(path)!r} does not hold {spec.label} seed {seed}; delete it")
    return record


def run_experiment(
    specs: Sequence[LossSpec],
    seeds: Sequence[int],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    ctx: DistContext | None = None,
    ddp: bool = False,
    progress: bool = False,
    on_run_finished: Callable[[dict[str, Any], Path], None] | None = None,
) -> list[dict[str, Any]] | None:
    """Train every (loss, seed) run not already finished under ``out_dir``; return all run records.

    With ``progress`` (rank 0) one tqdm bar counts the epochs of all runs to train, so its remaining-time
    estimate covers the whole experiment; after the second epoch a line on stderr states the estimate of
    :class:`PaceEstimate` (which leaves out the first epoch's warm-up) and the bar's postfix updates it.
    Checks that ``out_dir`` is writable, then validates the data and every existing run file before writing
    anything.  Each finished run is written atomically to :func:`run_path` (then
    ``on_run_finished(record, path)`` is called), so an interruption loses at most the run in progress.
    Under torchrun without ``ddp`` run ``i`` goes to rank ``i % W``; with ``ddp`` all ranks train every run
    together and rank 0 writes it.  Returns the records (in ``specs`` x ``seeds`` order) on rank 0 and
    ``None`` on the other ranks.
    """
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    try:
        check_writable(out_dir)
    except OutputError as err:
        raise ExperimentError(str(err)) from None
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ExperimentError(f"expected each loss once, got {', '.join(dup)} more than once; drop the duplicate")
    load_dataset(config, seeds[0])  # raises DataError before anything is written
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    existing = {(s.label, seed): _check_existing(run_path(out_dir, s, seed), config, s, seed) for s, seed in jobs}

    mine = [job for i, job in enumerate(jobs) if ddp or i % ctx.world_size == ctx.rank]
    todo = [job for job in mine if existing[(job[0].label, job[1])] is None]
    total_epochs = len(todo) * config.epochs
    if todo:
        _warm_up()
    bar = None
    if progress and ctx.is_main and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_epochs, desc="training", unit="epoch", dynamic_ncols=True)
    pace = PaceEstimate(total_epochs, clock=_clock)

    def epoch_finished(epoch: int) -> None:
        if bar is None:
            return
        left = pace.epoch_finished()
        bar.update(1)
        if left is None:
            return
        bar.set_postfix_str(f"estimate: {format_seconds(left)} left" if pace.done < total_epochs else "", refresh=False)
        if pace.done == 2 < total_epochs:  # the first estimate without the first epoch's warm-up
            bar.write(
                f"polyfocal: {len(todo)} run(s) x {config.epochs} epochs; estimate from the epochs after the first: "
                f"about {format_seconds(left)} left (updated on the progress bar)",
                file=sys.stderr,
            )

    try:
        for i, (spec, seed) in enumerate(todo):
            if bar is not None:
                bar.set_description(f"{spec.label} seed {seed} (run {i + 1}/{len(todo)})")
            record = train_run(spec, seed, config, ctx=ctx, ddp=ddp, on_epoch=epoch_finished)
            path = run_path(out_dir, spec, seed)
            if ctx.is_main or not ddp:
                write_json_atomic(path, record)
            if on_run_finished is not None:
                on_run_finished(record, path)
    finally:
        if bar is not None:
            bar.close()
    ctx.barrier()
    if not ctx.is_main:
        return None
    records = []
    for spec, seed in jobs:
        record = _check_existing(run_path(out_dir, spec, seed), config, spec, seed)
        if record is None:  # pragma: no cover - another rank failed
            raise ExperimentError(f"run {spec.label} seed {seed} did not finish; rerun the same command to resume")
        records.append(record)
    return records


_clock: Callable[[], float] = time.perf_counter  # the estimate's clock (a test sets a known pace here)


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"2.1 h"``, ``"4.2 days"``."""
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def seconds_per_run(records: Sequence[dict[str, Any]]) -> float:
    """Mean training time of the records (for the report)."""
    times = [r.get("train_seconds", math.nan) for r in records]
    return sum(times) / max(len(times), 1)
