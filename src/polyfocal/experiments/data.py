"""Datasets for ``polyfocal compare``: long-tailed handwritten digits (default), an image folder, synthetic blobs.

Every loader returns a :class:`Dataset`: float train/test tensors, integer labels, class names, and the
training class counts.  Everything is validated before anything is written; bad input raises
:class:`DataError` (a ``ValueError``) whose message names the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "Dataset",
    "load_digits_long_tail",
    "load_image_folder",
    "long_tail_counts",
    "make_synthetic_long_tail",
    "minority_classes",
    "read_image_folder",
    "scan_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(ValueError):
    """Bad data input (missing folder, empty class, corrupt image, ...)."""


@dataclass
class Dataset:
    """Train/test split.  ``x_*`` are float32 (``(N, F)`` features or ``(N, C, H, W)`` images in [0, 1])."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    image: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    @property
    def test_counts(self) -> list[int]:
        return torch.bincount(self.y_test, minlength=self.num_classes).tolist()


def long_tail_counts(*, n_max: int, num_classes: int, ratio: float) -> list[int]:
    r"""Per-class counts of the exponential long-tail profile of CIFAR-LT (Cao et al., 2019).

    :math:`n_i = \lfloor n_{max} \cdot \text{ratio}^{-i/(C-1)} \rfloor` (at least 1), so class 0 keeps
    ``n_max`` samples and class ``C - 1`` about ``n_max / ratio``.

    Example:
        >>> from polyfocal.experiments.data import long_tail_counts
        >>> long_tail_counts(n_max=100, num_classes=3, ratio=100.0)
        [100, 10, 1]
    """
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"expected n_max to be a positive int, got {n_max!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"expected an imbalance ratio >= 1, got {ratio!r}")
    if num_classes == 1:
        return [n_max]
    # the small tolerance keeps exact products (e.g. 100 * 100^-0.5 = 10) from flooring to 9
    return [max(1, math.floor(n_max * ratio ** (-i / (num_classes - 1)) + 1e-9)) for i in range(num_classes)]


def minority_classes(train_counts: list[int]) -> list[int]:
    """The ``ceil(C / 3)`` classes with the fewest training samples (ties: higher class index first), sorted.

    Example:
        >>> from polyfocal.experiments.data import minority_classes
        >>> minority_classes([100, 5, 50, 5, 70, 1])
        [3, 5]
    """
    k = math.ceil(len(train_counts) / 3)
    order = sorted(range(len(train_counts)), key=lambda c: (train_counts[c], -c))
    return sorted(order[:k])


def _split_long_tail(
    labels: torch.Tensor, *, num_classes: int, test_per_class: int, ratio: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a balanced test set (``test_per_class`` per class) and a long-tailed train set."""
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    shuffled = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    available = min(len(idx) for idx in shuffled) - test_per_class
    if available < 1:
        raise DataError(
            f"expected every class to have more than {test_per_class} samples (test set + at least one to "
            f"train), got {min(len(idx) for idx in shuffled)}; lower the test size"
        )
    counts = long_tail_counts(n_max=available, num_classes=num_classes, ratio=ratio)
    test = torch.cat([idx[:test_per_class] for idx in shuffled])
    train = torch.cat([idx[test_per_class : test_per_class + n] for idx, n in zip(shuffled, counts, strict=True)])
    return train, test


def load_digits_long_tail(*, ratio: float = 50.0, test_per_class: int = 40, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1797 8x8 images, 10 classes, shipped offline), made long-tailed.

    A balanced test set of ``test_per_class`` images per class is held out; the rest is subsampled to the
    exponential profile :func:`long_tail_counts` with ``n_max`` = the smallest remaining class size.
    Which images land where depends on ``seed``.  Features are the 64 pixel values scaled to [0, 1].
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    train, test = _split_long_tail(y, num_classes=10, test_per_class=test_per_class, ratio=ratio, seed=seed)
    return Dataset(
        name=f"digits-lt{ratio:g}",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        class_names=[str(c) for c in range(10)],
    )


def make_synthetic_long_tail(
    *,
    num_classes: int = 10,
    features: int = 32,
    n_max: int = 200,
    ratio: float = 50.0,
    test_per_class: int = 50,
    seed: int = 0,
) -> Dataset:
    """Gaussian blobs (an extra for quick checks, never the default): class means on a sphere, unit noise."""
    g = torch.Generator().manual_seed(7919 * seed + 3)
    means = torch.randn(num_classes, features, generator=g)
    means = 2.5 * means / means.norm(dim=1, keepdim=True)
    total = n_max + test_per_class
    x = means.repeat_interleave(total, 0) + torch.randn(num_classes * total, features, generator=g)
    y = torch.arange(num_classes).repeat_interleave(total)
    train, test = _split_long_tail(y, num_classes=num_classes, test_per_class=test_per_class, ratio=ratio, seed=seed)
    return Dataset(
        name=f"synthetic-lt{ratio:g}",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        class_names=[str(c) for c in range(num_classes)],
    )


def scan_image_folder(root: str | Path) -> tuple[list[str], list[list[Path]]]:
    """Class names and image paths of ``root/<class>/<image>``; raises :class:`DataError` naming the fix."""
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"data directory {str(root)!r} does not exist; pass --data a folder with one sub-folder per class"
        )
    if not root.is_dir():
        raise DataError(f"--data {str(root)!r} is not a directory; pass a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"data directory {str(root)!r} has no class sub-folders; put each class's images in root/<class>/"
        )
    if len(class_dirs) < 2:
        raise DataError(f"data directory {str(root)!r} has one class folder; add at least one more class")
    files = []
    for d in class_dirs:
        images = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"class folder {str(d)!r} has no images (.jpg, .png, ...); add images or remove the folder")
        if len(images) < 2:
            raise DataError(f"class folder {str(d)!r} has one image; each class needs at least 2 (train and test)")
        files.append(images)
    return [d.name for d in class_dirs], files


_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(im: object) -> object:
    """An 8-bit RGB copy of a Pillow image.  16-bit grayscale (modes ``I;16*``; ``I``, 32-bit integers, is
    read as 16-bit as PNG and TIFF store it) is scaled by 255/65535, where ``convert("RGB")`` would clip
    every value above 255 to white."""
    from PIL import Image

    if im.mode in _16_BIT_MODES:  # type: ignore[attr-defined]
        import numpy as np

        values = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    return im.convert("RGB")  # type: ignore[attr-defined]


def _load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = _to_rgb(im).resize((size, size), Image.Resampling.BILINEAR)
            data = im.tobytes()
    except Image.DecompressionBombError as err:
        raise DataError(
            f"image {str(path)!r} is too large to decode safely ({err}); downscale it, or delete or replace the file"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {str(path)!r} ({type(err).__name__}); delete or replace the file") from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def read_image_folder(root: str | Path, *, image_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read every image of ``root/<class>/`` once: uint8 ``(N, 3, S, S)``, labels, class names.

    Raises :class:`DataError` for a missing/empty folder, an empty class folder or an unreadable image."""
    names, files = scan_image_folder(root)
    images, labels = [], []
    for c, paths in enumerate(files):
        for p in paths:
            images.append(_load_image(p, image_size))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), names


def load_image_folder(
    root: str | Path,
    *,
    image_size: int = 64,
    test_fraction: float = 0.2,
    ratio: float = 1.0,
    seed: int = 0,
    raw: tuple[torch.Tensor, torch.Tensor, list[str]] | None = None,
) -> Dataset:
    """An image folder (one sub-folder per class, loaded with Pillow, resized to ``image_size``).

    A balanced test set of ``max(1, floor(test_fraction * smallest class))`` images per class is held
    out (depends on ``seed``); with ``ratio > 1`` the rest is subsampled to the exponential long-tail
    profile, otherwise all of it trains.  Images are float32 in [0, 1], shape ``(N, 3, S, S)``.
    ``raw`` is the result of :func:`read_image_folder`, to read the files once for several seeds.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"expected a test fraction in (0, 1), got {test_fraction!r}")
    x_u8, y, names = raw if raw is not None else read_image_folder(root, image_size=image_size)
    smallest = int(torch.bincount(y).min())
    test_per_class = max(1, math.floor(test_fraction * smallest))
    if ratio > 1.0:
        train, test = _split_long_tail(y, num_classes=len(names), test_per_class=test_per_class, ratio=ratio, seed=seed)
    else:
        g = torch.Generator().manual_seed(10_007 * seed + 17)
        parts = [torch.nonzero(y == c).flatten() for c in range(len(names))]
        parts = [idx[torch.randperm(len(idx), generator=g)] for idx in parts]
        test = torch.cat([idx[:test_per_class] for idx in parts])
        train = torch.cat([idx[test_per_class:] for idx in parts])
    return Dataset(
        name=f"folder:{Path(root).name}" + (f"-lt{ratio:g}" if ratio > 1 else ""),
        x_train=x_u8[train].float() / 255.0,
        y_train=y[train],
        x_test=x_u8[test].float() / 255.0,
        y_test=y[test],
        class_names=names,
        image=True,
    )
