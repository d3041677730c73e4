"""Repository-wide pytest set-up (applies to tests/ and to the doctests under src/)."""

import importlib.util
import os

# Keras reads its backend once, at first import: the project's Keras tests run on the torch backend.
os.environ.setdefault("KERAS_BACKEND", "torch")

# Without a CUDA GPU, the Triton kernels run in Triton's CPU interpreter (tests/test_kernels.py).  Triton reads
# this when a kernel is defined, i.e. when polyfocal.kernels._triton_impl is first imported: set it first.
if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# polyfocal.keras needs the optional keras package; without it, skip that module's doctests.
collect_ignore = [] if importlib.util.find_spec("keras") else ["src/polyfocal/keras.py"]
