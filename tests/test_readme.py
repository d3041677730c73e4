"""Every ```python block of the README runs (they carry their own asserts)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    if "import keras" in BLOCKS[index]:
        pytest.importorskip("keras")
    exec(compile(textwrap.dedent(BLOCKS[index]), f"README.md block {index}", "exec"), {})
