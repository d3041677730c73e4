"""The suite is deterministic in CI (issue 18): with CI=true the root conftest loads hypothesis's "ci" profile
(derandomised, no example database), so every run draws the same examples; locally the "explore" profile draws
fresh ones.  Each case runs in a subprocess that imports the root conftest, as pytest does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_DRAW = """
import json, sys
sys.path.insert(0, {root!r})
import conftest  # noqa: F401  (registers and loads the profile, as pytest does)
from hypothesis import given, settings, strategies as st
if {profile!r}:
    settings.load_profile({profile!r})  # what --hypothesis-profile does after the conftest has run

seen = []

@settings(max_examples=25)
@given(st.floats(0.0, 4.0), st.integers(0, 2**16))
def draw(g, seed):
    seen.append([g, seed])

draw()
s = settings.default
print(json.dumps(dict(derandomize=s.derandomize, database=s.database is not None, seen=seen)))
"""


def _draw(ci: str | None, tmp_path: Path, profile: str = "") -> dict:
    tmp_path.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    out = subprocess.run(
        [sys.executable, "-c", _DRAW.format(root=str(ROOT), profile=profile)],
        cwd=tmp_path,  # a fresh directory: no .hypothesis/ database from earlier runs to replay
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("ci", ["true", "1", ""])
def test_ci_profile_is_derandomised_without_a_database(ci, tmp_path):
    first, second = _draw(ci, tmp_path / "a"), _draw(ci, tmp_path / "b")
    assert first["derandomize"] and not first["database"]
    assert first["seen"] == second["seen"]  # the same examples on every run and every clone


def test_local_runs_explore(tmp_path):
    first, second = _draw(None, tmp_path / "a"), _draw(None, tmp_path / "b")
    assert not first["derandomize"] and first["database"]
    assert first["seen"] != second["seen"]  # fresh random examples (25 floats and ints: equal by chance ~never)


def test_the_exploring_profile_runs_under_ci_too(tmp_path):
    """``python -m pytest -q --hypothesis-profile=explore``, as the README says, explores even where CI is set."""
    first, second = _draw("true", tmp_path / "a", "explore"), _draw("true", tmp_path / "b", "explore")
    assert not first["derandomize"]
    assert first["seen"] != second["seen"]


def test_ci_script_runs_the_ci_profile():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'export CI="${CI:-true}"' in script and script.rstrip().endswith("python -m pytest -q")
