"""Repository-wide pytest set-up (applies to tests/ and to the doctests under src/)."""

import importlib.util
import os

from hypothesis import HealthCheck, settings

# Keras reads its backend once, at first import: the project's Keras tests run on the torch backend.
os.environ.setdefault("KERAS_BACKEND", "torch")

# Without a CUDA GPU, the Triton kernels run in Triton's CPU interpreter (tests/test_kernels.py).  Triton reads
# this when a kernel is defined, i.e. when polyfocal.kernels._triton_impl is first imported: set it first.
if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Hypothesis: deterministic in CI, exploring locally.  CI services set CI (and .ci/run sets CI=true when absent): the
# "ci" profile derandomises (examples derived from each test's source: the same on every run and every clone) and
# keeps no example database, so a CI run's result depends on the code only.  Anywhere else the "explore" profile draws
# fresh random examples on every run and replays the failures it found from .hypothesis/.  Choose one explicitly with
# `python -m pytest -q --hypothesis-profile=explore` (or `ci`); a test's own @settings still sets its max_examples.
# (Recent hypothesis releases load a built-in "ci" profile like this one when CI is set; older ones do not.)
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile("ci" if "CI" in os.environ else "explore")

# polyfocal.keras needs the optional keras package; without it, skip that module's doctests.
collect_ignore = [] if importlib.util.find_spec("keras") else ["src/polyfocal/keras.py"]
