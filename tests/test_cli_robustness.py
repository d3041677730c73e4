"""polyfocal compare / sweep / plot as a user meets them (issue 11): an unusable --out is refused before any
training, two processes on one --out do not both train, numbers are validated, odd images are read correctly or
refused by name, the time estimate, --help without torch, file modes, and what the README promises.

The tests about locks and permissions drive the real command in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("torchmetrics")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from polyfocal.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TINY = ["--losses", "ce", "--epochs", "2", "--seeds", "1", "--no-plots"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
ENV["OMP_NUM_THREADS"] = "1"


def polyfocal(*argv: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """The real command: ``python -m polyfocal ARGV`` in a subprocess (this checkout's sources)."""
    cmd = [sys.executable, "-m", "polyfocal", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)


def start(*argv: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "polyfocal", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(err.splitlines()) == 1 and "error:" in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# ---------------------------------------------------------------- 1. an unusable --out, before any training


@pytest.mark.parametrize("where", ["under-a-file", "proc", "sys"])
def test_unwritable_out_is_refused_before_training(tmp_path, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "results"
    else:
        if not Path(f"/{where}").is_dir():
            pytest.skip(f"no /{where} here")
        out = Path(f"/{where}/polyfocal-results")
    # 300 epochs would take a while: the error must come before training starts (and before torch is imported)
    begin = time.perf_counter()
    proc = polyfocal("compare", "--out", str(out), "--losses", "ce", "--epochs", "300", "--seeds", "1")
    one_error_line(proc, "--out", str(out))
    assert time.perf_counter() - begin < 20


@pytest.fixture
def immutable_dir(tmp_path):
    d = tmp_path / "frozen"
    d.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here (needs root and a supporting file system): {made.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


@pytest.mark.parametrize("inside", [False, True])
def test_immutable_out_directory_is_refused_before_training(immutable_dir, inside):
    out = immutable_dir / "results" if inside else immutable_dir
    proc = polyfocal("compare", "--out", str(out), "--losses", "ce", "--epochs", "300", "--seeds", "1")
    one_error_line(proc, "writable", str(immutable_dir))
    assert list(immutable_dir.iterdir()) == []


def test_plot_checks_its_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    one_error_line(polyfocal("plot", "--out", str(tmp_path / "file" / "fig.png")), "not a directory")


# ---------------------------------------------------------------- 2. one process per --out; temporary files

_HOLDER = """
import sys
from polyfocal.experiments.outdir import OutputLock
with OutputLock(sys.argv[1], command="holder"):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_second_process_on_the_same_out_names_the_holder_or_waits_with_wait(tmp_path):
    out = tmp_path / "res"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = one_error_line(polyfocal("compare", "--out", str(out), *TINY), f"pid {holder.pid}", "--wait")
        assert "in use" in err and "holder" in err
        assert not (out / "runs").exists()  # nothing trained, nothing written

        waiting = start("compare", "--out", str(out), "--wait", *TINY)
        first = waiting.stderr.readline()  # blocks until it says it waits (or, wrongly, until it ends)
        assert f"waiting for pid {holder.pid}" in first, first
        time.sleep(0.5)
        assert waiting.poll() is None and not (out / "runs").exists()  # still waiting for the holder
        holder.stdin.close()
        holder.wait(timeout=30)
        _, stderr = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, stderr[-3000:]
        assert (out / "summary.json").exists()
        assert sorted(p.name for p in out.iterdir()) == ["runs", "summary.csv", "summary.json", "summary.md"]
    finally:
        holder.kill()
        holder.wait()


def test_two_compare_processes_on_one_out_train_each_run_once(tmp_path):
    out = tmp_path / "res"
    argv = ["compare", "--out", str(out), "--wait", "--losses", "ce", "focal", "--epochs", "3", "--seeds", "2"]
    procs = [start(*argv) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    trained = [err for _, err in results if "estimate from the epochs after the first" in err]
    assert len(trained) == 1  # the other one waited, then found every run finished
    assert results[0][0].split("results:")[0] == results[1][0].split("results:")[0]  # the same tables
    names = sorted(p.name for p in out.iterdir())
    figures = ["metrics.png", "forest.png", "per_class_recall.png", "curves.png"]
    assert names == sorted(["runs", "summary.json", "summary.csv", "summary.md", *figures])
    assert len(list((out / "runs").iterdir())) == 4


def test_stale_temporaries_are_removed_on_start(tmp_path, capsys):
    out = tmp_path / "res"
    (out / "runs").mkdir(parents=True)
    stale = [out / ".curves.tmp.png", out / ".summary.csv.tmp", out / "runs" / ".ce__seed0.json.k2j3h4.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = out / "notes.txt"
    keep.write_text("mine")
    assert main(["compare", "--out", str(out), *TINY, "--no-progress"]) == 0
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert not any(p.name.startswith(".") for p in out.rglob("*"))


def test_concurrent_writers_of_one_file_never_share_a_temporary(tmp_path):
    from polyfocal.experiments.report import summarize, write_summary
    from polyfocal.experiments.runner import METRICS

    dataset = {"name": "x", "classes": ["0", "1"], "train_counts": [5, 2], "test_counts": [2, 2]}
    records = [
        {
            "loss": loss,
            "seed": seed,
            "metrics": dict.fromkeys(METRICS, 0.5 + 0.1 * seed + 0.01 * i),
            "per_class_recall": [0.5, 0.5],
            "curves": {"train_loss": [1.0]},
            "dataset": {**dataset, "minority_classes": [1]},
            "config": {},
        }
        for i, loss in enumerate(("ce", "poly1"))
        for seed in range(2)
    ]
    summary = summarize(records)
    errors = []

    def writer():
        try:
            for _ in range(40):
                write_summary(tmp_path, summary)
        except Exception as err:  # the test reports whatever a writer hit
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.json", "summary.md"]


# ---------------------------------------------------------------- 3. numbers


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "-inf"),
        ("--weight-decay", "nan"),
        ("--weight-decay", "inf"),
        ("--imbalance-ratio", "inf"),
        ("--imbalance-ratio", "nan"),
        ("--lr", "0"),
        ("--seeds", "0"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_one_line_errors(tmp_path, capsys, flag, value):
    out = tmp_path / "never"
    rc = main(["compare", "--out", str(out), "--losses", "ce", "--epochs", "1", "--seeds", "1", flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("polyfocal compare: error: expected") and flag in err and value in err
    assert not out.exists()


# ---------------------------------------------------------------- 4. images


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (8-bit grayscale) with one tiny IDAT: opening it reads the size only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _image_folder(root: Path, n: int = 3) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / c / f"{i}.png")


def test_decompression_bomb_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    _image_folder(tmp_path / "imgs")
    _png_header_only(tmp_path / "imgs" / "b" / "huge.png", 20000, 20000)
    out = tmp_path / "res"
    rc = main(["compare", "--data", str(tmp_path / "imgs"), "--out", str(out), *TINY, "--width", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "huge.png" in err and "too large" in err and "downscale" in err
    assert not out.exists()


def test_16_bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path):
    import numpy as np
    from PIL import Image

    from polyfocal.experiments.data import read_image_folder

    _image_folder(tmp_path / "imgs")
    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "imgs" / "a" / "deep.png")
    assert Image.open(tmp_path / "imgs" / "a" / "deep.png").mode == "I;16"
    x, _, _ = read_image_folder(tmp_path / "imgs", image_size=16)
    deep = x[3]  # class a's files, sorted: 0.png, 1.png, 2.png, deep.png
    expected = np.arange(256).reshape(16, 16)  # v * 257 * 255 / 65535 = v
    for channel in deep.numpy():
        assert np.abs(channel.astype(int) - expected).max() <= 1


# ---------------------------------------------------------------- 5. time estimate


def test_progress_estimates_the_whole_run_after_the_first_epoch(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                "--out",
                str(tmp_path / "r"),
                "--losses",
                "ce",
                "focal",
                "--epochs",
                "3",
                "--seeds",
                "2",
                "--no-plots",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if "estimate from the epochs after the first" in line]
    assert len(lines) == 1 and "4 run(s) x 3 epochs" in lines[0] and " left" in lines[0], err[-2000:]
    assert "/12 [" in err  # one bar over all 4 x 3 epochs: its remaining time covers the whole run
    assert "estimate: " in err  # the bar's postfix: the estimate, updated after every epoch


def _known_pace(first: float, per_epoch: float, per_run: float, epochs: int):
    """A clock for a job whose first epoch takes ``first`` s (warm-up), every later one ``per_epoch`` s, plus
    ``per_run`` s between runs (data, model, final evaluation): the pace of the issue's run (1.6 s, then 22 s for
    30 x 30 epochs in all).  Returns (clock, the true end time of epoch k, k = 1..)."""
    ends = []

    def end_of(k: int) -> float:
        return first + (k - 1) * per_epoch + ((k - 1) // epochs) * per_run

    ticks = iter(range(1, 10**6))
    return (lambda: ends.append(end_of(next(ticks))) or ends[-1]), end_of


def test_estimate_leaves_out_the_first_epoch_and_tracks_a_known_pace():
    from polyfocal.experiments.runner import PaceEstimate

    runs, epochs = 30, 30
    total = runs * epochs
    clock, end_of = _known_pace(first=1.6, per_epoch=0.022, per_run=0.05, epochs=epochs)
    pace = PaceEstimate(total, clock=clock)
    assert pace.epoch_finished() is None  # the first epoch only starts the clock
    for k in range(2, total + 1):
        left = pace.epoch_finished()
        truth = end_of(total) - end_of(k)
        if k >= 2 * epochs or k == 2:  # from the start of the third run the per-run cost is in the running mean
            assert left == pytest.approx(truth, rel=0.1, abs=0.5), (k, left, truth)
    assert left == 0.0
    # the old estimate, first epoch x all epochs, was 24 min for this 21 s job
    assert 1.6 * total > 60 * (end_of(total) - end_of(1))


def test_the_printed_estimate_is_the_known_pace(tmp_path, capsys, monkeypatch):
    from polyfocal.experiments import runner

    # 2 losses x 2 seeds x 3 epochs; the first epoch "takes" 30 s, every later one 2 s: 10 epochs (20 s) are left
    # after the second; the first-epoch rule said 6 min
    clock, _ = _known_pace(first=30.0, per_epoch=2.0, per_run=0.0, epochs=3)
    monkeypatch.setattr(runner, "_clock", clock)
    argv = ["compare", "--out", str(tmp_path / "r"), "--losses", "ce", "focal", "--epochs", "3", "--seeds", "2"]
    assert main([*argv, "--no-plots"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in re.split(r"[\r\n]", err) if "estimate from the epochs after the first" in line)
    assert "about 20 s left" in line, line


# ---------------------------------------------------------------- 10. --help without torch, modes, defaults

_PROBE = """
import sys
from polyfocal.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("torch", "numpy", "matplotlib", "torchmetrics", "sklearn", "scipy", "PIL", "tqdm")
print("IMPORTED", [m for m in heavy if m in sys.modules])
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["compare", "--help"],
        ["sweep", "--help"],
        ["plot", "--help"],
        ["compare", "--bogus"],
        ["compare", "--lr", "inf"],
        ["compare", "--losses", "hinge"],
        ["sweep", "--epsilon", "1,x"],
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "IMPORTED []", proc.stdout[-500:] + proc.stderr[-2000:]


def test_compare_help_lists_every_loss_name_and_key_of_the_parser_table():
    """Issue 18: the help stopped at poly1-focal while the default run uses la:tau=1."""
    from polyfocal.experiments.losses import _LOSSES, parse_loss_spec

    proc = polyfocal("compare", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    compact = re.sub(r"\s+", "", proc.stdout)  # argparse wraps lines, also after a hyphen
    for name, (_, defaults) in _LOSSES.items():
        assert f"{name}({','.join(defaults)})" in compact, name
        for key in defaults:  # and the parser takes every key the help lists
            value = {"eps": "1", "drw": "2", "alpha": "none"}.get(key, "0.5")
            parse_loss_spec(f"{name}:{key}={value}" + (",eps=1" if name == "polyN" and key != "eps" else ""))
    with pytest.raises(ValueError, match="expected a loss name") as err:
        parse_loss_spec("hinge")
    assert all(name in str(err.value) for name in _LOSSES)  # the error lists the same names


def test_a_baseline_other_than_ce_is_announced(tmp_path, capsys):
    argv = ["--epochs", "1", "--seeds", "1", "--no-progress", "--no-plots"]
    assert main(["compare", "--out", str(tmp_path / "a"), "--losses", "focal", "poly1", *argv]) == 0
    captured = capsys.readouterr()
    notice = [line for line in captured.err.splitlines() if "notice" in line]
    assert len(notice) == 1 and "no ce among --losses" in notice[0] and "focal:gamma=2" in notice[0], captured.err
    assert "--baseline" in notice[0] and "Paired difference vs focal:gamma=2" in captured.out
    for losses, extra in ((["ce", "focal"], []), (["focal", "poly1"], ["--baseline", "poly1"])):
        out = str(tmp_path / f"b{len(extra)}")
        assert main(["compare", "--out", out, "--losses", *losses, *extra, *argv]) == 0
        assert "notice" not in capsys.readouterr().err


def test_top_level_help_lists_bench_and_bench_help_still_works():
    top = polyfocal("--help")
    assert top.returncode == 0 and "bench" in top.stdout and "compare" in top.stdout
    bench = polyfocal("bench", "--help")
    assert bench.returncode == 0 and bench.stdout.startswith("usage: polyfocal bench"), bench.stderr[-2000:]


def test_result_files_all_get_the_umask_mode(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["compare", "--out", str(out), "--losses", "ce", "--epochs", "1", "--seeds", "1", "--no-progress"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"summary.json", "ce__seed0.json", "summary.csv", "metrics.png"}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_batch_size_help_matches_the_defaults_used(tmp_path):
    from polyfocal.experiments.cli import _setup

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["compare"]  # type: ignore[union-attr]
    text = next(a.help for a in sub._actions if "--batch-size" in a.option_strings)
    for argv in (["compare"], ["compare", "--data", str(tmp_path)]):
        config, _, _ = _setup(parser.parse_args(argv))
        assert str(config.batch_size) in text, (config.model, text)
    assert "64" in text and "32" in text


# ---------------------------------------------------------------- 8, 9. the README


def _section(title: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_main_job_installs_only_the_experiments_extra():
    blocks = re.findall(r"```bash\n(.*?)```", _section("Set up and run"), re.S)
    main_job = [b for b in blocks if "polyfocal compare" in b]
    tests = [b for b in blocks if "pytest" in b]
    assert len(main_job) == 1 and len(tests) == 1
    assert "'.[experiments]'" in main_job[0] and ".[test]" not in main_job[0]
    assert "'.[test]'" in tests[0]
    assert re.search(r"\d+ s cold", _section("Set up and run")) and re.search(r"\d+ s warm", _section("Set up and run"))


def test_experiments_extra_declares_every_third_party_import_of_the_experiments():
    import ast

    tomllib = pytest.importorskip("tomllib")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["experiments"]
    declared = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in extra} | {"torch"}
    dist = {"sklearn": "scikit-learn", "PIL": "pillow"}
    imported = set()
    for path in (SRC / "polyfocal" / "experiments").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "polyfocal"}
    assert {dist.get(m, m).lower() for m in third_party} <= declared, third_party
    assert "scipy" in third_party


def test_readme_says_what_is_reproducible_across_machines():
    text = _section("Experiments: polyfocal compare")
    assert "bit-identical for the same code, seed and thread count" not in text
    paragraph = text.split("**Reproducibility", 1)[1].split("\n\n", 1)[0]
    assert "same machine" in paragraph and "last digit" in paragraph and "CPU" in paragraph


def test_readme_sentences_of_issue_18_are_true():
    from polyfocal.experiments.losses import DEFAULT_LOSSES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    experiments = _section("Experiments: polyfocal compare")
    counts = re.findall(r"default (\d+) losses x (\d+) seeds", readme)
    assert counts and set(counts) == {(str(len(DEFAULT_LOSSES)), "5")}, counts
    compare_text = experiments + _section("Set up and run")
    cold = set(re.findall(r"(?<![\d.])(\d+) s cold", compare_text))
    assert len(cold) == 1, cold  # one cold time for the one cold run of polyfocal compare
    results_line = next(line for line in experiments.splitlines() if line.startswith("Results measured here"))
    assert set(re.findall(r"(\d+) s\b", results_line)) <= cold, results_line
    assert "bit-identical run files" not in readme
    paragraph = experiments.split("**Reproducibility", 1)[1].split("\n\n", 1)[0]
    assert "train_seconds" in paragraph  # the one field that differs between two runs (test_experiments checks it)
    forest = experiments.split("forest.png", 1)[1].split("per_class_recall.png", 1)[0]
    assert "Holm" in forest and "legend" in forest
    flat = " ".join(experiments.split())
    assert "the first epoch took" not in readme and "estimate from the epochs after the first" in flat
    assert "notice" in experiments and "--baseline" in experiments
