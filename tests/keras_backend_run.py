"""Run the checks of ``polyfocal.keras`` on one Keras backend, in a process where torch is unimportable.

``KERAS_BACKEND=jax python tests/keras_backend_run.py`` (or ``tensorflow``) runs every check of
``tests/keras_checks.py`` (and, on TensorFlow, of ``tests/keras_checks_tf.py``) and prints one JSON line:
``{"backend", "torch_loaded", "results": {check: "ok" or its traceback}, "values": {...}}``;
``tests/test_keras.py`` starts it and reads that line.  Doing nothing at import (pytest imports it to
look for doctests).
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import traceback


class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this run: polyfocal.keras must not need it")
        return None


def main() -> None:
    sys.meta_path.insert(0, _NoTorch())
    import keras
    import numpy as np

    import keras_checks
    import polyfocal.keras as pk

    backend = keras.backend.backend()
    checks = dict(keras_checks.CHECKS)
    if backend == "tensorflow":
        import keras_checks_tf

        checks.update(keras_checks_tf.CHECKS)
    grad = keras_checks.make_grad(backend)
    results = {}
    for name, check in checks.items():
        try:
            check(grad)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    # a few numbers for the parent to compare with the torch core
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    x = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    focal = pk.PolyCategoricalFocalCrossentropy(gamma=0.5, alpha=[1.0, 2.0, 0.5], from_logits=True, reduction=None)
    values = {
        "poly1_ce": float(pk.poly1_cross_entropy(epsilon=2.0)(y, x)),
        "poly1_focal": float(pk.poly1_focal_loss()(y, x)),
        "focal_per_sample": [float(v) for v in focal(y, x)],
    }
    torch_loaded = any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print(json.dumps({"backend": backend, "torch_loaded": torch_loaded, "results": results, "values": values}))


if __name__ == "__main__":
    main()
