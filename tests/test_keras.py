"""polyfocal.keras: against the torch core, Keras' own losses, seed 000's listings and a NumPy float64 reference,
on the torch backend in-process and on JAX and TensorFlow in subprocesses (torch unimportable there)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # conftest.py selects torch before keras is first imported
    pytest.skip("the Keras tests run on the torch backend", allow_module_level=True)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from keras import ops  # noqa: E402

import keras_checks  # noqa: E402
import keras_checks_tf  # noqa: E402
import polyfocal  # noqa: E402
import polyfocal.keras as pk  # noqa: E402
from seed_listings import poly1_cross_entropy_tf, poly1_focal_loss_tf  # noqa: E402

GEN = torch.Generator().manual_seed(0)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss.sum(), x)
    return g


def _logits(*shape, scale=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(
        torch.as_tensor(a).to(torch.float64), torch.as_tensor(b).to(torch.float64), rtol=tol, atol=tol
    )


# --- per-sample values and input gradients equal the torch core ------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 1.0, 2.5, (1.0, -0.5, 0.25)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True])
def test_poly_categorical_crossentropy_equals_core(epsilon, label_smoothing, soft):
    x = _logits(6, 4)
    if soft:
        q = torch.softmax(torch.randn(6, 4, generator=GEN, dtype=torch.float64), -1)
    else:
        q = torch.eye(4, dtype=torch.float64)[torch.tensor([0, 3, 1, 2, 2, 0])]
    loss = pk.PolyCategoricalCrossentropy(
        epsilon=epsilon, from_logits=True, label_smoothing=label_smoothing, reduction=None, dtype="float64"
    )(q, x)
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.poly_loss(x_core, q, epsilon=epsilon, label_smoothing=label_smoothing, reduction="none")
    _close(loss, core)
    _close(_grad(loss, x), _grad(core, x_core))


@pytest.mark.parametrize("epsilon", [1.0, (2.0, 0.5)])
def test_poly_categorical_crossentropy_probabilities_equal_core_on_log_probabilities(epsilon):
    x = _logits(5, 3)
    p = torch.softmax(x, -1)
    q = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 1, 2, 1, 0])]
    loss = pk.PolyCategoricalCrossentropy(epsilon=epsilon, reduction=None, dtype="float64")(q, p)
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.poly_loss(x_core, q, epsilon=epsilon, reduction="none")
    _close(loss, core, tol=1e-9)
    _close(_grad(loss, x), _grad(core, x_core), tol=1e-9)  # through the user's softmax


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 4)])
@pytest.mark.parametrize("trailing_one", [False, True])
def test_sparse_poly_categorical_equals_core(shape, trailing_one):
    x = _logits(*shape)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=GEN)
    y = labels.unsqueeze(-1) if trailing_one else labels
    loss = pk.SparsePolyCategoricalCrossentropy(epsilon=(1.0, 1.0), from_logits=True, reduction=None, dtype="float64")(
        y, x
    )
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.poly_loss(x_core.movedim(-1, 1), labels, epsilon=(1.0, 1.0), reduction="none")
    _close(loss, core)
    _close(_grad(loss, x), _grad(core, x_core))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, [0.25, 0.75, 0.75, 1.5]])
@pytest.mark.parametrize("epsilon", [0.0, 1.0])
@pytest.mark.parametrize("axis", [-1, 1])
def test_poly_categorical_focal_equals_core(gamma, alpha, epsilon, axis):
    x = _logits(5, 4, 3) if axis == 1 else _logits(5, 4)
    labels = torch.randint(0, 4, (5, 3) if axis == 1 else (5,), generator=GEN)
    q = torch.nn.functional.one_hot(labels, 4).to(torch.float64)
    if axis == 1:
        q = q.movedim(-1, 1)
    loss = pk.PolyCategoricalFocalCrossentropy(
        gamma=gamma, alpha=alpha, epsilon=epsilon, from_logits=True, axis=axis, reduction=None, dtype="float64"
    )(q, x)
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.softmax_focal_loss(x_core, labels, gamma=gamma, alpha=alpha, epsilon=epsilon, reduction="none")
    _close(loss, core)
    _close(_grad(loss, x), _grad(core, x_core))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("epsilon", [0.0, 1.0, (1.0, 2.0)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True])
def test_poly_binary_focal_equals_core(gamma, alpha, epsilon, label_smoothing, soft):
    x = _logits(6, 5)
    t = torch.rand(6, 5, generator=GEN, dtype=torch.float64)
    t = t if soft else (t > 0.5).to(torch.float64)
    loss = pk.PolyBinaryFocalCrossentropy(
        gamma=gamma,
        alpha=alpha,
        epsilon=epsilon,
        from_logits=True,
        label_smoothing=label_smoothing,
        reduction=None,
        dtype="float64",
    )(t, x)
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.poly_loss(
        x_core,
        t,
        activation="sigmoid",
        gamma=gamma,
        alpha=alpha,
        epsilon=epsilon,
        label_smoothing=label_smoothing,
        reduction="none",
    ).mean(-1)  # Keras binary losses average over the last axis per sample
    # keras.ops.mean computes in float32 on the torch backend (keras 3.15), even for float64 input
    _close(loss, core, tol=1e-6)
    _close(_grad(loss, x), _grad(core, x_core), tol=1e-6)


def test_binary_probabilities_equal_core_on_logits():
    x = _logits(4, 3)
    t = (torch.rand(4, 3, generator=GEN) > 0.5).to(torch.float64)
    loss = pk.PolyBinaryFocalCrossentropy(reduction=None, dtype="float64")(t, torch.sigmoid(x))
    x_core = x.detach().clone().requires_grad_()
    core = polyfocal.poly1_focal_loss(x_core, t, reduction="none").mean(-1)
    _close(loss, core, tol=1e-6)  # float32 mean, see test_poly_binary_focal_equals_core
    _close(_grad(loss, x), _grad(core, x_core), tol=1e-6)


def test_sample_weight_and_reductions_follow_keras():
    x, t = _logits(6, 3).detach(), (torch.rand(6, 3, generator=GEN) > 0.5).double()
    w = torch.rand(6, generator=GEN, dtype=torch.float64)
    per_sample = polyfocal.poly1_focal_loss(x, t, reduction="none").mean(-1)
    for reduction, expected in [
        ("sum_over_batch_size", (per_sample * w).sum() / 6),
        ("sum", (per_sample * w).sum()),
        ("mean", (per_sample * w).sum() / 6),
        ("mean_with_sample_weight", (per_sample * w).sum() / w.sum()),
    ]:
        got = pk.PolyBinaryFocalCrossentropy(from_logits=True, reduction=reduction, dtype="float64")(
            t, x, sample_weight=w
        )
        _close(got, expected, tol=1e-6)


# --- identities against Keras' own losses -------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_epsilon_zero_is_keras_categorical_crossentropy(from_logits, label_smoothing):
    x = _logits(8, 5).detach()
    y_pred = x if from_logits else torch.softmax(x, -1)
    q = torch.eye(5, dtype=torch.float64)[torch.randint(0, 5, (8,), generator=GEN)]
    kw = dict(from_logits=from_logits, label_smoothing=label_smoothing, reduction=None, dtype="float64")
    _close(
        pk.PolyCategoricalCrossentropy(epsilon=0.0, **kw)(q, y_pred),
        keras.losses.CategoricalCrossentropy(**kw)(q, y_pred),
        tol=1e-6,
    )


@pytest.mark.parametrize("from_logits", [True, False])
def test_epsilon_zero_is_keras_sparse_categorical_crossentropy(from_logits):
    x = _logits(8, 5).detach()
    y_pred = x if from_logits else torch.softmax(x, -1)
    labels = torch.randint(0, 5, (8,), generator=GEN)
    kw = dict(from_logits=from_logits, reduction=None, dtype="float64")
    _close(
        pk.SparsePolyCategoricalCrossentropy(epsilon=0.0, **kw)(labels, y_pred),
        keras.losses.SparseCategoricalCrossentropy(**kw)(labels, y_pred),
        tol=1e-6,
    )


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_epsilon_zero_is_keras_binary_focal(from_logits, gamma):
    x = _logits(8, 4).detach()
    y_pred = x if from_logits else torch.sigmoid(x)
    t = (torch.rand(8, 4, generator=GEN) > 0.5).double()
    ours = pk.PolyBinaryFocalCrossentropy(
        gamma=gamma, alpha=0.3, epsilon=0.0, from_logits=from_logits, reduction=None, dtype="float64"
    )
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.3, gamma=gamma, from_logits=from_logits, reduction=None, dtype="float64"
    )
    _close(ours(t, y_pred), theirs(t, y_pred), tol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_one_hot_epsilon_zero_is_keras_categorical_focal(gamma):
    x = _logits(8, 4).detach()
    q = torch.eye(4, dtype=torch.float64)[torch.randint(0, 4, (8,), generator=GEN)]
    kw = dict(from_logits=True, reduction=None, dtype="float64")
    _close(
        pk.PolyCategoricalFocalCrossentropy(gamma=gamma, epsilon=0.0, **kw)(q, x),
        keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=gamma, **kw)(q, x),
        tol=1e-6,
    )


# --- seed 000's TensorFlow listings ---------------------------------------------------------------------------


def keras_ops_poly1_cross_entropy(epsilon=1.0):
    """Seed 000's TF ``poly1_cross_entropy``, transcribed line by line with keras.ops."""

    def _poly1_cross_entropy(y_true, y_pred):
        pt = ops.sum(y_true * ops.softmax(y_pred, axis=-1), axis=-1)
        ce = ops.categorical_crossentropy(y_true, y_pred, from_logits=True)
        return ops.mean(ce + epsilon * (1 - pt))

    return _poly1_cross_entropy


def keras_ops_poly1_focal_loss(gamma=2.0, epsilon=1.0, alpha=0.25):
    """Seed 000's TF ``poly1_focal_loss``, transcribed line by line with keras.ops."""

    def _poly1_focal_loss(y_true, y_pred):
        p = ops.sigmoid(y_pred)
        ce_loss = ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        pt = y_true * p + (1 - y_true) * (1 - p)
        fl = ce_loss * ((1 - pt) ** gamma)
        if alpha >= 0:
            fl = (alpha * y_true + (1 - alpha) * (1 - y_true)) * fl
        return ops.mean(fl + epsilon * ops.power(1 - pt, gamma + 1))

    return _poly1_focal_loss


@settings(max_examples=30, deadline=None)
@given(epsilon=st.floats(-1.0, 4.0), soft=st.booleans(), seed=st.integers(0, 1000))
def test_seed000_poly1_cross_entropy_listing(epsilon, soft, seed):
    x = _logits(6, 5, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    if soft:
        y = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), -1)
    else:
        y = torch.eye(5, dtype=torch.float64)[torch.randint(0, 5, (6,), generator=gen)]
    ours = pk.poly1_cross_entropy(epsilon=epsilon)(y, x)
    listing = keras_ops_poly1_cross_entropy(epsilon)(y, x)
    # tolerance: keras.ops.mean computes in float32 on the torch backend, even for float64 input
    _close(ours, listing, tol=1e-6)
    _close(ours, poly1_cross_entropy_tf(y, x, epsilon=epsilon), tol=1e-6)  # the torch transcription agrees
    _close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(listing, x)[0], tol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    gamma=st.floats(0.0, 4.0),
    epsilon=st.floats(-1.0, 4.0),
    alpha=st.one_of(st.just(-1.0), st.floats(0.0, 1.0)),
    seed=st.integers(0, 1000),
)
def test_seed000_poly1_focal_loss_listing(gamma, epsilon, alpha, seed):
    x = _logits(5, 4, seed=seed)
    y = (torch.rand(5, 4, generator=torch.Generator().manual_seed(seed)) > 0.5).double()
    ours = pk.poly1_focal_loss(gamma=gamma, epsilon=epsilon, alpha=alpha)(y, x)
    listing = keras_ops_poly1_focal_loss(gamma, epsilon, alpha)(y, x)
    _close(ours, listing, tol=1e-6)  # float32 mean, as above
    _close(ours, poly1_focal_loss_tf(y, x, gamma=gamma, epsilon=epsilon, alpha=alpha), tol=1e-6)
    _close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(listing, x)[0], tol=1e-6)


def test_extreme_logits_keep_finite_gradients():
    x = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 40.0]], dtype=torch.float32, requires_grad=True)
    q = torch.eye(3)[torch.tensor([0, 2])]
    for loss in (
        pk.PolyCategoricalFocalCrossentropy(gamma=0.5, from_logits=True)(q, x),
        pk.PolyBinaryFocalCrossentropy(gamma=0.5, from_logits=True)(q, x),
    ):
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


# --- Keras conventions: config, compile/fit, save/load -----------------------------------------------------

LOSSES = [
    lambda: pk.PolyCategoricalCrossentropy(epsilon=[1.0, 0.5], from_logits=True, label_smoothing=0.1),
    lambda: pk.SparsePolyCategoricalCrossentropy(epsilon=2.0, from_logits=True),
    lambda: pk.PolyCategoricalFocalCrossentropy(gamma=1.5, alpha=[0.5, 1.0, 2.0], epsilon=1.0, from_logits=True),
    lambda: pk.PolyBinaryFocalCrossentropy(gamma=2.0, alpha=0.25, epsilon=1.0, from_logits=True),
]


def _data(loss, n=32):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=gen)
    labels = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    if isinstance(loss, pk.SparsePolyCategoricalCrossentropy):
        y = labels
    elif isinstance(loss, pk.PolyBinaryFocalCrossentropy):
        y = (torch.stack([x[:, 0] > 0, x[:, 1] > 0, x[:, 2] > 0], 1)).float()
    else:
        y = torch.eye(3)[labels]
    return x.numpy(), y.numpy()


@pytest.mark.parametrize("make", LOSSES)
def test_get_config_round_trip(make):
    loss = make()
    config = loss.get_config()
    json.dumps(config)  # serialisable
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(revived) is type(loss) and revived.get_config() == config


@pytest.mark.parametrize("make", LOSSES)
def test_compile_fit_and_save_load_round_trip(make, tmp_path):
    keras.utils.set_random_seed(0)
    loss = make()
    x, y = _data(loss)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert losses[-1] < losses[0]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config() == loss.get_config()
    _close(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), tol=1e-6)


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda: pk.PolyCategoricalFocalCrossentropy(alpha=0.25), ValueError),
        (lambda: pk.PolyCategoricalFocalCrossentropy(alpha=[0.5, -1.0]), ValueError),
        (lambda: pk.PolyCategoricalFocalCrossentropy(gamma=-1.0), ValueError),
        (lambda: pk.PolyBinaryFocalCrossentropy(alpha=1.5), ValueError),
        (lambda: pk.PolyBinaryFocalCrossentropy(alpha=[0.5]), TypeError),
        (lambda: pk.PolyCategoricalCrossentropy(epsilon="1"), TypeError),
        (lambda: pk.PolyCategoricalCrossentropy(label_smoothing=2.0), ValueError),
        (lambda: pk.poly1_cross_entropy(epsilon=[1.0, 2.0]), TypeError),
        (lambda: pk.poly1_focal_loss(gamma=-2.0), ValueError),
        (lambda: pk.poly1_focal_loss(alpha=1.5), ValueError),
    ],
)
def test_bad_hyperparameters(make, exc):
    with pytest.raises(exc, match="expected"):
        make()


def test_bad_shapes_at_call():
    with pytest.raises(ValueError, match="expected alpha of length C=3"):
        pk.PolyCategoricalFocalCrossentropy(alpha=[1.0, 2.0], from_logits=True)(torch.eye(3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="expected integer labels of shape"):
        pk.SparsePolyCategoricalCrossentropy(from_logits=True)(torch.zeros(4, 2), torch.randn(3, 3))


# --- the backend-independent checks (tests/keras_checks.py): here on torch, in a subprocess on JAX and TF ----


@pytest.mark.parametrize("name", sorted(keras_checks.CHECKS))
def test_keras_check_on_torch(name):
    keras_checks.CHECKS[name](keras_checks.make_grad("torch"))


# Each other backend runs tests/keras_backend_run.py once, in a subprocess with torch made unimportable (so
# polyfocal.keras is shown to need no torch); the runs start together, the first time one is needed.
OTHER_BACKENDS = {"jax": "jax", "tensorflow": "tensorflow"}  # backend: the module it needs
BACKEND_CHECKS = {
    "jax": sorted(keras_checks.CHECKS),
    "tensorflow": sorted(keras_checks.CHECKS) + sorted(keras_checks_tf.CHECKS),
}
_RUNS: dict[str, subprocess.Popen | dict] = {}
RUNNER = Path(__file__).with_name("keras_backend_run.py")


def _available(backend: str) -> bool:
    return importlib.util.find_spec(OTHER_BACKENDS[backend]) is not None


def _start_runs() -> None:
    for backend in OTHER_BACKENDS:
        if backend not in _RUNS and _available(backend):
            env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"
            _RUNS[backend] = subprocess.Popen(
                [sys.executable, str(RUNNER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )


def backend_run(backend: str) -> dict:
    """The JSON of that backend's run; skips if its framework is not installed (the ``test`` extra has it)."""
    if not _available(backend):
        pytest.skip(f"{OTHER_BACKENDS[backend]} is not installed (pip install -e '.[test]' installs it)")
    _start_runs()
    run = _RUNS[backend]
    if isinstance(run, subprocess.Popen):
        try:
            out, err = run.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
        lines = out.strip().splitlines()
        run = _RUNS[backend] = {"returncode": run.returncode, "stderr": err, "json": lines[-1] if lines else ""}
    assert run["returncode"] == 0, run["stderr"][-5000:]
    return json.loads(run["json"])


@pytest.mark.parametrize("backend", sorted(OTHER_BACKENDS))
def test_keras_adapter_runs_without_torch(backend):
    """With torch made unimportable, polyfocal.keras runs on JAX / TensorFlow: the same numbers as the core."""
    out = backend_run(backend)
    assert out["backend"] == backend and out["torch_loaded"] is False
    assert sorted(out["results"]) == sorted(BACKEND_CHECKS[backend])
    values = out["values"]
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]], dtype=torch.float64)
    _close(values["poly1_ce"], polyfocal.poly1_cross_entropy(x, y, epsilon=2.0), tol=1e-6)
    _close(values["poly1_focal"], polyfocal.poly1_focal_loss(x, y), tol=1e-6)
    focal = polyfocal.softmax_focal_loss(x, y, gamma=0.5, alpha=[1.0, 2.0, 0.5], epsilon=1.0, reduction="none")
    _close(values["focal_per_sample"], focal, tol=1e-6)


@pytest.mark.parametrize(
    ("backend", "name"), [(backend, name) for backend in sorted(OTHER_BACKENDS) for name in BACKEND_CHECKS[backend]]
)
def test_keras_check_on_backend(backend, name):
    result = backend_run(backend)["results"].get(name, f"check {name} did not run")
    assert result == "ok", f"{name} on {backend}:\n{result}"
