"""Repository-wide pytest set-up (applies to tests/ and to the doctests under src/)."""

import importlib.util
import os

# Keras reads its backend once, at first import: the project's Keras tests run on the torch backend.
os.environ.setdefault("KERAS_BACKEND", "torch")

# polyfocal.keras needs the optional keras package; without it, skip that module's doctests.
collect_ignore = [] if importlib.util.find_spec("keras") else ["src/polyfocal/keras.py"]
