"""The native library's build: cold cache (parallel units, one link), reuse of the cache, and the fallback to the
torch implementation when the compiler fails -- each in a fresh process with its own cache directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

PROBE = r"""
import json, time, warnings, torch, polyfocal
from polyfocal.kernels import _native
t = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    lib = _native.library()
seconds = time.perf_counter() - t
x = torch.linspace(-3, 3, 60).reshape(12, 5).requires_grad_()
y = torch.arange(12) % 5
loss = polyfocal.softmax_focal_loss(x, y, gamma=2.0)
loss.backward()
print(json.dumps({"lib": lib is not None, "seconds": seconds, "loss": loss.item(), "grad": x.grad.sum().item(),
                  "warnings": [str(w.message) for w in caught],
                  "symbols": lib is not None and all(hasattr(lib, s) for s in ("pf_softmax", "pf_sigmoid"))}))
"""


def _probe(tmp_path, **env):
    full = {**os.environ, "POLYFOCAL_CACHE_DIR": str(tmp_path / "cache"), **env}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_cold_build_links_every_unit_and_is_reused(tmp_path):
    cold = _probe(tmp_path)
    assert cold["lib"] and cold["symbols"] and not cold["warnings"]
    built = list((tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # the build folder is removed, only the library stays
    warm = _probe(tmp_path)
    assert warm["lib"] and warm["seconds"] < cold["seconds"] and warm["loss"] == cold["loss"]


def test_failed_build_warns_and_falls_back_to_the_torch_implementation(tmp_path):
    failed = _probe(tmp_path, CC="false")
    assert not failed["lib"]
    assert any("building the native CPU kernels failed" in w for w in failed["warnings"])
    reference = _probe(tmp_path, POLYFOCAL_NATIVE="0")
    assert failed["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert failed["grad"] == pytest.approx(reference["grad"], abs=1e-6)
