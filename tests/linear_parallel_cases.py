"""The option grid of test_linear_parallel.py, shared by the spawned gloo ranks and the single-process oracle.

Every case builds the same full problem on every process (seeded); rank r of P takes the classes of
``SPLITS[P][r]`` (uneven on purpose) of the weight, the bias and the per-class options."""

from __future__ import annotations

import torch

N, D, V = 13, 6, 23
CHUNK = 4  # rows 4..7 are one chunk: every row of it is ignored below
SPLITS = {1: [23], 2: [9, 14], 3: [5, 11, 7]}


def _vec(seed: int, low: float, span: float) -> torch.Tensor:
    return torch.rand(V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * span + low


PRIOR = _vec(5, 0.1, 1.0)
CLASS_W = _vec(6, 0.2, 1.0)
ALPHA = _vec(7, 0.1, 1.0)
MARGIN = _vec(8, 0.0, 0.5)
VECTORS = {"prior": PRIOR, "weight": CLASS_W, "alpha": ALPHA, "margin": MARGIN}

ALL = dict(gamma=2.0, epsilon=[1.0, -0.5], softcap=1.5, weight="weight", alpha="alpha", label_smoothing=0.1,
           z_loss=0.02, prior="prior", tau=1.5, margin="margin", logit_scale=1.3)  # fmt: skip

# (name, dtype, reduction, bias, chunk_size, ignore, options); vector options name an entry of VECTORS
# fmt: off
CASES = [
    ("ce", "float64", "mean", True, CHUNK, "chunk", dict(epsilon=0.0)),
    ("poly1_nobias", "float64", "sum", False, CHUNK, "chunk", dict(epsilon=1.0)),
    ("focal_half", "float64", "none", True, CHUNK, "chunk", dict(gamma=0.5, epsilon=0.0)),
    ("focal2_poly", "float64", "mean", True, 3, "chunk", dict(gamma=2.0, epsilon=[1.0, -0.5])),
    ("smoothing", "float64", "mean", True, CHUNK, "chunk", dict(epsilon=1.0, label_smoothing=0.1)),
    ("weight_alpha", "float64", "sum", True, CHUNK, "chunk", dict(gamma=2.0, weight="weight", alpha="alpha")),
    ("weight_smooth", "float64", "mean", True, CHUNK, "chunk", dict(epsilon=0.5, weight="weight", label_smoothing=0.2)),
    ("alpha_smooth_focal", "float64", "none", False, 5, "chunk", dict(gamma=1.0, alpha="alpha", label_smoothing=0.15)),
    ("no_ignore", "float64", "mean", True, CHUNK, "none", dict(epsilon=1.0, ignore_index=None)),
    ("ignore_is_a_class", "float64", "mean", True, CHUNK, "class3", dict(epsilon=1.0, ignore_index=3)),
    ("prior", "float64", "none", True, CHUNK, "chunk", dict(epsilon=1.0, prior="prior", tau=1.5)),
    ("prior_zloss_mean", "float64", "mean", False, CHUNK, "chunk", dict(prior="prior", z_loss=0.05)),
    ("margin_scale", "float64", "mean", True, CHUNK, "chunk", dict(epsilon=0.0, margin="margin", logit_scale=2.0)),
    ("z_loss", "float64", "sum", True, CHUNK, "chunk", dict(gamma=1.0, epsilon=1.0, z_loss=0.01)),
    ("softcap", "float64", "mean", True, CHUNK, "chunk", dict(epsilon=1.0, softcap=2.5)),
    ("all_mean", "float64", "mean", True, CHUNK, "chunk", ALL),
    ("all_sum", "float64", "sum", True, 3, "chunk", ALL),
    ("all_none", "float64", "none", True, CHUNK, "chunk", ALL),
    ("all_default_chunk", "float64", "mean", True, None, "chunk", ALL),
    ("all_ignored", "float64", "mean", True, CHUNK, "all", dict(gamma=2.0, epsilon=1.0)),
    ("f32_all_mean", "float32", "mean", True, CHUNK, "chunk", ALL),
    ("f32_ce_none", "float32", "none", True, CHUNK, "chunk", dict(epsilon=0.0)),
    ("f32_focal_sum", "float32", "sum", False, CHUNK, "chunk", dict(gamma=2.0, epsilon=1.0, weight="weight")),
    ("bf16_all_mean", "bfloat16", "mean", True, CHUNK, "chunk", ALL),
    ("bf16_poly1_none", "bfloat16", "none", True, CHUNK, "chunk", dict(epsilon=1.0)),
    ("f16_all_sum", "float16", "sum", True, CHUNK, "chunk", ALL),
    ("f32_alpha_smooth", "float32", "none", True, 3, "chunk", dict(gamma=1.0, alpha="alpha", label_smoothing=0.15)),
    ("f32_margin_scale_zloss", "float32", "sum", False, CHUNK, "class3",
     dict(epsilon=1.0, margin="margin", logit_scale=2.0, z_loss=0.01, ignore_index=3)),
    ("f32_prior_weight_smooth", "float32", "none", False, 5, "none",
     dict(prior="prior", tau=1.0, weight="weight", label_smoothing=0.1, ignore_index=None)),
    ("f32_softcap_all_ignored", "float32", "mean", True, CHUNK, "all", dict(gamma=2.0, epsilon=1.0, softcap=2.0)),
]
# fmt: on

# The grid per two-phase backend (polyfocal.kernels.backend(...) around the calls): torch ops every case; native C
# the cases it runs (float32 compute: float32 / bf16 / fp16 input; float64 chunks go to torch ops under "native");
# Triton (the interpreter on CPU) a representative subset, float64 included (Triton's math is float64 there).
BACKEND_CASES = {
    "torch": [c[0] for c in CASES],
    "native": [c[0] for c in CASES if c[1] != "float64"],
    "triton": ["ce", "focal_half", "weight_smooth", "ignore_is_a_class", "margin_scale", "all_none", "all_ignored",
               "f32_all_mean", "f32_margin_scale_zloss", "bf16_poly1_none"],
}  # fmt: skip


def data(index: int, dtype: torch.dtype, bias: bool, ignore: str, device: str = "cpu"):
    """Full ``h (N, D)``, ``W (V, D)``, ``b (V,)`` or None, ``y`` and the per-row upstream gradients, on ``device``."""
    gen = torch.Generator().manual_seed(100 + index)
    h = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w = torch.randn(V, D, generator=gen, dtype=torch.float64) / D**0.5 * 2
    b = torch.randn(V, generator=gen, dtype=torch.float64) if bias else None
    y = torch.randint(0, V, (N,), generator=gen)
    if ignore == "chunk":  # row 0 and the whole chunk of rows 4..7
        y[0] = -100
        y[4:8] = -100
    elif ignore == "all":
        y[:] = -100
    elif ignore == "class3":
        y[[1, 5, 9]] = 3
    up_rows = torch.randn(N, generator=gen, dtype=torch.float64)
    h, w, b = (None if t is None else t.to(device=device, dtype=dtype) for t in (h, w, b))
    return h, w, b, y.to(device), up_rows.to(device)


def options(opts: dict, lo: int | None = None, hi: int | None = None, device: str = "cpu") -> dict:
    """The keyword options, the per-class vectors sliced to ``[lo, hi)`` when given."""
    out = {}
    for key, value in opts.items():
        if isinstance(value, str):
            value = (VECTORS[value] if lo is None else VECTORS[value][lo:hi]).to(device)
        out[key] = value
    return out


def upstream(reduction: str, up_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return up_rows.to(dtype) if reduction == "none" else torch.tensor(1.7, dtype=dtype, device=up_rows.device)
