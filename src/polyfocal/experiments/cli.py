"""``polyfocal compare``, ``polyfocal sweep`` and ``polyfocal plot``: argument parsing and the run functions.

Only argparse and the standard library are imported at module import; torch, torchmetrics, matplotlib,
tqdm, scikit-learn and Pillow are imported inside the run functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register", "run_compare", "run_plot", "run_sweep"]

DEFAULT_OUT = "polyfocal-results"
_DEFAULT_LOSSES = (
    "ce",
    "focal:gamma=2",
    "poly1:eps=1",
    "poly1:eps=2",
    "poly1-focal",
    "la:tau=1",
)  # = losses.DEFAULT_LOSSES (tested)


def _allow_negative_values(parser: argparse.ArgumentParser) -> None:
    # argparse takes "-1,0,1" for an option flag; treat anything starting with "-<digit>" or "-.<digit>" as a value
    parser._negative_number_matcher = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)  # type: ignore[attr-defined]


def _add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and training")
    g.add_argument(
        "--data",
        metavar="DIR",
        help="image folder, one sub-folder per class (ResNet-18-style model); default: long-tailed sklearn digits",
    )
    g.add_argument("--synthetic", action="store_true", help="long-tailed Gaussian blobs instead of digits (an extra)")
    g.add_argument(
        "--imbalance-ratio",
        type=float,
        default=None,
        metavar="R",
        help="largest/smallest train class, exponential profile (default 50 for digits, 1 = as-is for --data)",
    )
    g.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds 0..N-1 per loss (default 5)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (default 30)")
    g.add_argument("--batch-size", type=int, default=None, help="default 32 for the MLP, 64 for the ResNet-18 (--data)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3 MLP, 1e-3 ResNet)")
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--model", choices=("mlp", "resnet18"), default=None, help="default: mlp, resnet18 for --data")
    g.add_argument(
        "--image-size", type=int, default=64, help="--data: resize images to SxS (default 64; 32 for a CPU-sized run)"
    )
    g.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = original; 16 for a CPU-sized run)")
    g.add_argument("--no-augment", action="store_true", help="--data: no random flip/crop")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 for the MLP)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar and no time estimate")
    o.add_argument(
        "--wait",
        action="store_true",
        help="if another process is using --out, wait for it to finish (default: stop with exit code 2)",
    )
    o.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    o.add_argument("--ddp", action="store_true", help="under torchrun: train each model with DistributedDataParallel")


def register(subparsers: Any) -> None:
    """Add ``compare``, ``sweep`` and ``plot`` to the ``polyfocal`` command line."""
    from .losses import spec_names_and_keys  # the parser's own table (no torch import)

    p = subparsers.add_parser(
        "compare",
        help="train one small model per (loss, seed) and compare the losses",
        description="Train one model per (loss, seed) on long-tailed data, report metrics with error bars "
        "and paired differences against CE. Finished runs are kept; rerun the same command to resume.",
    )
    p.add_argument(
        "--losses",
        nargs="+",
        default=list(_DEFAULT_LOSSES),
        metavar="SPEC",
        help="loss specs NAME[:KEY=VALUE,...], space-separated; a value without KEY= extends the previous key "
        f"(polyN:eps=1,0.5,gamma=1). Names and keys: {spec_names_and_keys()}; softmax alpha=cb is class-balanced "
        f"(default: {' '.join(_DEFAULT_LOSSES)})",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="loss the paired differences are taken against (default ce; without ce among --losses, the first loss, "
        "with a notice)",
    )
    p.add_argument("--out", default=f"{DEFAULT_OUT}/compare", help="results directory (default %(default)s)")
    _add_training_args(p)
    _allow_negative_values(p)
    p.set_defaults(func=run_compare)

    s = subparsers.add_parser(
        "sweep",
        help="train one loss over several epsilons and plot the metrics vs epsilon",
        description="The PolyLoss paper's advice is to tune epsilon: train LOSS for every EPS and show the curve.",
    )
    s.add_argument("--loss", default="poly1", help="base loss spec with an eps parameter (default poly1)")
    s.add_argument("--epsilon", default="-1,0,1,2,4", help="comma-separated epsilons (default %(default)s)")
    s.add_argument("--out", default=f"{DEFAULT_OUT}/sweep", help="results directory (default %(default)s)")
    _add_training_args(s)
    _allow_negative_values(s)
    s.set_defaults(func=run_sweep)

    q = subparsers.add_parser(
        "plot",
        help="loss and gradient magnitude vs p_t for CE, focal and Poly-1 (PNG)",
        description="The classic figure: loss and |dL/dz_t| vs p_t, computed with polyfocal by autograd.",
    )
    q.add_argument("--gamma", default="0.5,1,2,5", help="focal gammas (default %(default)s)")
    q.add_argument("--epsilon", default="-1,1,2", help="Poly-1 epsilons (default %(default)s)")
    q.add_argument("--out", default=f"{DEFAULT_OUT}/loss_vs_pt.png", help="PNG path (default %(default)s)")
    _allow_negative_values(q)
    q.set_defaults(func=run_plot)


def _cli_error(message: str) -> Exception:
    from ..cli import CLIError

    return CLIError(message)


def _float_list(text: str, what: str) -> list[float]:
    import math

    values = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise _cli_error(f"expected {what} as comma-separated numbers like -1,0,1,2, got {text!r}") from None
        if not math.isfinite(v):
            raise _cli_error(f"expected finite numbers for {what}, got {text!r}")
        values.append(v)
    return values


def _check_number(value: Any, flag: str, *, minimum: float, inclusive: bool = False, example: str = "") -> None:
    """``value`` (``None`` = not given) must be a finite number above ``minimum`` (or equal, if ``inclusive``)."""
    if value is None:
        return
    ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f"{'>=' if inclusive else '>'} {minimum:g}"
        what = "a finite number " if isinstance(value, float) else ""
        raise _cli_error(
            f"expected {flag} to be {what}{bound}, got {value}" + (f"; pass e.g. {example}" if example else "")
        )


def _validate_numbers(args: argparse.Namespace) -> None:
    """Every numeric training option: finite and in range (one ``CLIError`` line; nothing imported)."""
    for flag, example in (
        ("seeds", "5"),
        ("epochs", "30"),
        ("batch_size", "32"),
        ("lr", "1e-3"),
        ("image_size", "32"),
        ("width", "16"),
        ("threads", "2"),
    ):
        _check_number(getattr(args, flag), "--" + flag.replace("_", "-"), minimum=0, example=example)
    _check_number(args.weight_decay, "--weight-decay", minimum=0, inclusive=True, example="1e-4")
    _check_number(args.imbalance_ratio, "--imbalance-ratio", minimum=1, inclusive=True, example="50")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Validate the data/training flags; return (TrainConfig, DistContext, list of seeds).  Writes nothing."""
    _validate_numbers(args)
    if args.data is not None and args.synthetic:
        raise _cli_error("--data and --synthetic exclude each other; pass one of them")
    if args.data is not None and args.model == "mlp" and args.image_size > 32:
        raise _cli_error("--model mlp on images needs --image-size <= 32; pass --model resnet18 or a smaller size")
    dataset = "folder" if args.data is not None else ("synthetic" if args.synthetic else "digits")
    model = args.model or ("resnet18" if dataset == "folder" else "mlp")
    if model == "resnet18" and dataset != "folder":
        raise _cli_error("--model resnet18 needs images; pass --data DIR or --model mlp")
    import torch

    from .runner import DistContext, TrainConfig

    config = TrainConfig(
        dataset=dataset,
        data_dir=str(Path(args.data).resolve()) if args.data is not None else None,
        imbalance_ratio=args.imbalance_ratio if args.imbalance_ratio is not None else (1.0 if args.data else 50.0),
        model=model,
        epochs=args.epochs or 30,
        batch_size=args.batch_size or (32 if model == "mlp" else 64),
        lr=args.lr or (3e-3 if model == "mlp" else 1e-3),
        weight_decay=args.weight_decay,
        image_size=args.image_size if dataset == "folder" else 64,
        width=args.width if model == "resnet18" else 64,
        augment=dataset == "folder" and not args.no_augment,
        dtype=args.dtype,
    )

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.ddp and world < 2:
        raise _cli_error("--ddp needs several processes; run it as: torchrun --nproc_per_node N -m polyfocal ... --ddp")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise _cli_error("--device cuda but no CUDA device is available; pass --device cpu")
    ctx = DistContext()
    if world > 1:
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if cuda and args.ddp and torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world)):
            raise _cli_error(
                f"--ddp on CUDA needs one GPU per process, got {torch.cuda.device_count()}; "
                "pass a smaller --nproc_per_node or --device cpu"
            )
        device = torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda and args.ddp else "gloo")
        ctx = DistContext(rank=rank, world_size=world, local_rank=local, device=device)
        if args.ddp and config.batch_size < 2 * world:
            raise _cli_error(f"--ddp with {world} ranks needs --batch-size >= {2 * world}; pass a larger batch")
    elif cuda:
        ctx = DistContext(device=torch.device("cuda"))
    threads = args.threads or (1 if model == "mlp" else None)
    if threads:
        torch.set_num_threads(threads)
    return config, ctx, list(range(args.seeds))


def _lock_out(args: argparse.Namespace, ctx: Any) -> Any:
    """Rank 0 takes the lock on ``--out`` (the other ranks wait for its outcome); returns the lock or None."""
    from .outdir import OutputError, OutputLock

    lock, error = None, None
    if ctx.is_main:
        lock = OutputLock(args.out, wait=args.wait, command=f"polyfocal {args.command}")
        try:
            lock.acquire()
        except OutputError as err:
            lock, error = None, str(err)
    if ctx.world_size > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        if lock is not None:
            lock.release()
        raise _cli_error(error)
    return lock


def _run(
    args: argparse.Namespace,
    specs: list[Any],
    *,
    baseline: str | None,
    publish: Callable[[dict[str, Any], Any], None],
    notice: str | None = None,
) -> bool:
    """Check ``--out``, lock it, run the experiment and (rank 0, still holding the lock) call
    ``publish(summary, config)``.  Returns whether this process published.  ``notice`` goes to stderr (rank 0)
    once every argument has been checked, before training."""
    from .outdir import OutputError, check_writable

    if baseline is not None and baseline not in [s.label for s in specs]:
        raise _cli_error(
            f"--baseline {baseline!r} is not among the losses ({', '.join(s.label for s in specs)}); pass one of them"
        )
    _validate_numbers(args)
    try:
        check_writable(args.out)  # before torch is even imported: an unusable --out costs no training
    except OutputError as err:
        raise _cli_error(str(err)) from None
    config, ctx, seeds = _setup(args)

    from .data import DataError
    from .report import summarize
    from .runner import ExperimentError, run_experiment

    try:
        lock = _lock_out(args, ctx)
        try:
            if notice is not None and ctx.is_main:
                print(notice, file=sys.stderr)
                sys.stderr.flush()
            try:
                records = run_experiment(
                    specs, seeds, config, args.out, ctx=ctx, ddp=args.ddp, progress=not args.no_progress
                )
            except (DataError, ExperimentError) as err:
                raise _cli_error(str(err)) from None
            if records is None:
                return False
            summary = summarize(records, baseline=baseline)
            summary["seconds_total_training"] = sum(r["train_seconds"] for r in records)
            publish(summary, config)
            return True
        finally:
            if lock is not None:
                lock.release()
    finally:
        if ctx.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _parse_specs(texts: list[str]) -> list[Any]:
    from .losses import parse_loss_spec

    specs = []
    for text in texts:
        try:
            specs.append(parse_loss_spec(text))
        except ValueError as err:
            raise _cli_error(f"{err}; see `polyfocal compare --help` for the loss-spec grammar") from None
    return specs


def _class_list(dataset: dict[str, Any], indices: list[int]) -> str:
    return ", ".join(str(dataset["classes"][i]) for i in indices)


def run_compare(args: argparse.Namespace) -> int:
    """``polyfocal compare``: train, summarise, write summary.{json,csv,md} and PNGs, print the table."""
    specs = _parse_specs(args.losses)
    baseline = args.baseline
    if baseline is not None:
        baseline = _parse_specs([baseline])[0].label

    def publish(summary: dict[str, Any], config: Any) -> None:
        from .report import plot_results, write_summary

        md = write_summary(args.out, summary)
        figures = [] if args.no_plots else [p.name for p in plot_results(args.out, summary)]
        ds = summary["dataset"]
        print(
            f"{ds['name']}: train counts {ds['train_counts']}, balanced test set of {sum(ds['test_counts'])}, "
            f"minority classes {_class_list(ds, ds['minority_classes'])}; {config.model}, {config.epochs} epochs, "
            f"{len(summary['losses'][0]['seeds'])} seeds"
        )
        print()
        print(md, end="")
        print(
            f"\nresults: {args.out}/ ("
            + ", ".join(["runs/*.json", "summary.json", "summary.csv", "summary.md", *figures])
            + ")"
        )
        sys.stdout.flush()

    notice = None
    labels = [s.label for s in specs]
    if baseline is None and len(set(labels)) == len(labels) > 1 and "ce" not in labels:
        notice = (
            f"polyfocal: notice: no ce among --losses, so the paired differences are taken against {labels[0]} "
            "(the first loss); pass --baseline NAME to choose another"
        )
    _run(args, specs, baseline=baseline, publish=publish, notice=notice)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """``polyfocal sweep``: one loss over several epsilons; ``sweep.png`` of every metric vs epsilon."""
    epsilons = _float_list(args.epsilon, "--epsilon")
    if len(set(epsilons)) != len(epsilons):
        raise _cli_error(f"expected distinct epsilons, got {args.epsilon!r}; drop the repeated value")
    base = _parse_specs([args.loss])[0]
    if base.name == "polyN" or "eps" not in base.params:
        raise _cli_error(
            f"expected a loss with one eps parameter (poly1, poly1-focal, focal, sigmoid-focal), got {args.loss!r}"
        )
    specs = [dataclasses.replace(base, params={**base.params, "eps": e}) for e in epsilons]
    zero = [s.label for s, e in zip(specs, epsilons, strict=True) if e == 0.0]

    def publish(summary: dict[str, Any], config: Any) -> None:
        from .report import plot_sweep, write_summary

        md = write_summary(args.out, summary, stem="sweep")
        if not args.no_plots:
            title = f"{base.name} vs epsilon ({summary['dataset']['name']})"
            plot_sweep(Path(args.out) / "sweep.png", summary, epsilons, title=title)
        print(md, end="")
        print(
            f"\nresults: {args.out}/ (runs/*.json, sweep.json, sweep.csv, sweep.md"
            + ("" if args.no_plots else ", sweep.png")
            + ")"
        )
        sys.stdout.flush()

    _run(args, specs, baseline=zero[0] if zero else None, publish=publish)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    """``polyfocal plot``: loss and gradient magnitude vs p_t (PNG)."""
    gammas = _float_list(args.gamma, "--gamma")
    if any(g < 0 for g in gammas):
        raise _cli_error(f"expected --gamma values >= 0, got {args.gamma!r}")
    epsilons = _float_list(args.epsilon, "--epsilon")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise _cli_error(f"expected --out to end in .png, got {args.out!r}")
    from .outdir import OutputError, check_writable

    try:
        check_writable(out.parent, given=args.out)
    except OutputError as err:
        raise _cli_error(str(err)) from None
    from .report import plot_loss_vs_pt

    path = plot_loss_vs_pt(out, gammas=gammas, epsilons=epsilons)
    print(f"wrote {path}")
    return 0
