"""``multi_digits``: a Multi-MNIST-style two-task problem built from scikit-learn's 8x8 digits.

The RW paper (Sec. 5.1) describes Multi-MNIST (Sabour et al., 2017; Lin et al.,
2019) as follows: two images *of different classes* are sampled from MNIST and
overlaid, one at the top-left and one at the bottom-right, on a 36x36 canvas;
the two tasks classify the top-left digit (**Task TL**) and the bottom-right
digit (**Task BR**). ExcessMTL (Sec. 4.1) uses the same construction, with
label noise injected into the bottom-right task (see :mod:`mtlrepro.data.noise`).

MNIST itself needs a download, so this module builds the same kind of problem
from the 1,797 handwritten 8x8 digits that ship inside scikit-learn
(:func:`sklearn.datasets.load_digits`, values 0..16). It is a *stand-in*, not
the papers' data, and every table says so (:data:`STAND_IN`).

Construction (:func:`build`), all seeded from ``Options.generation_seed``:

1. the base digit images are split into train/val/test pools, stratified by
   class, *before* pairing, so no base image is shared between splits;
2. every base image is upscaled to ``digit_size`` x ``digit_size`` (bilinear)
   and scaled to 0..255;
3. for every split, the requested number of ordered pairs of base images with
   different classes is drawn uniformly at random from that split's pool; the
   first digit is placed at (0, 0), the second at (``shift``, ``shift``) of a
   ``canvas`` x ``canvas`` image and the two are overlaid by pixel-wise max.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from mtlrepro.data import SPLITS, Split
from mtlrepro.errors import DataError
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task

NAME = "multi_digits"
ENCODER = "lenet"
TASKS = (Task("TL", n_classes=10), Task("BR", n_classes=10))
MULTI_INPUT = False
STAND_IN = "stand-in for Multi-MNIST (RW paper Sec. 5.1) built from scikit-learn's 8x8 digits, not the paper's data"

#: maximum pixel value of :func:`sklearn.datasets.load_digits` images
RAW_MAX = 16.0
N_CLASSES = 10


@dataclass(frozen=True)
class Options:
    """Generation options; the defaults mimic Multi-MNIST's 36x36 canvas (RW paper, Sec. 5.1).

    ``n_train``/``n_val``/``n_test`` are numbers of *pairs* (composed images);
    ``val_fraction``/``test_fraction`` are fractions of the 1,797 *base* digit
    images reserved for the validation and test pools.
    """

    n_train: int = 10000
    n_val: int = 2000
    n_test: int = 2000
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    canvas: int = 36
    digit_size: int = 28
    shift: int = 8
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test", "canvas", "digit_size"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 (no base images left for training), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        if self.digit_size + self.shift > self.canvas:
            raise ValueError(
                f"digit_size + shift must be <= canvas, got {self.digit_size} + {self.shift} > {self.canvas}"
            )


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def load_base() -> tuple[np.ndarray, np.ndarray]:
    """The raw base digits: images [1797 x 8 x 8] float64 in 0..16 and targets [1797] int64."""
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    targets = np.asarray(digits.target, dtype=np.int64)
    return images, targets


def split_base(targets: np.ndarray, options: Options) -> dict[str, np.ndarray]:
    """Split base image indices into train/val/test pools, stratified by class (before pairing).

    Two seeded :func:`sklearn.model_selection.train_test_split` calls: the test
    pool is split off first, then the validation pool from the rest. The pools
    are disjoint, sorted, and each contains every class.
    """
    indices = np.arange(len(targets))
    val_of_rest = options.val_fraction / (1.0 - options.test_fraction)
    try:
        rest, test = train_test_split(
            indices,
            test_size=options.test_fraction,
            stratify=targets,
            random_state=derive_seed(options.generation_seed, "split/test", bits=32),
        )
        train, val = train_test_split(
            rest,
            test_size=val_of_rest,
            stratify=targets[rest],
            random_state=derive_seed(options.generation_seed, "split/val", bits=32),
        )
    except ValueError as err:
        raise DataError(
            f"{NAME}: cannot split the {len(targets)} base images with val_fraction={options.val_fraction}, "
            f"test_fraction={options.test_fraction} so that every split holds every class: {err}"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def upscale(images: Tensor, size: int) -> Tensor:
    """Upscale raw digits [N x 8 x 8] (0..16) to uint8 [N x size x size] in 0..255.

    Bilinear interpolation with ``align_corners=False``, computed in float64 and
    rounded, so the result is exactly reproducible.
    """
    x = images.to(torch.float64).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = torch.round(x * (255.0 / RAW_MAX)).clamp_(0, 255)
    return x.squeeze(1).to(torch.uint8)


def compose(top_left: Tensor, bottom_right: Tensor, canvas: int, shift: int) -> Tensor:
    """Overlay digits [N x d x d] (uint8) on a ``canvas`` x ``canvas`` image by pixel-wise max.

    The top-left digit is placed at (0, 0), the bottom-right one at
    (``shift``, ``shift``). Returns uint8 [N x 1 x canvas x canvas].
    """
    n, d = top_left.shape[0], top_left.shape[-1]
    out = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    out[:, 0, :d, :d] = top_left
    region = out[:, 0, shift : shift + d, shift : shift + d]
    out[:, 0, shift : shift + d, shift : shift + d] = torch.maximum(region, bottom_right)
    return out


def draw_pairs(labels: Tensor, n_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw ``n_pairs`` ordered pairs of positions into ``labels`` whose labels differ.

    Uniform over all ordered pairs with different classes (rejection sampling:
    pairs with equal classes are redrawn until none is left). Returns two int64
    tensors of positions (first digit, second digit).
    """
    m = int(labels.shape[0])
    if torch.unique(labels).numel() < 2:
        raise DataError(f"{NAME}: a pool of base images holds fewer than 2 classes; no pair of different classes")
    first = torch.randint(m, (n_pairs,), generator=generator)
    second = torch.randint(m, (n_pairs,), generator=generator)
    same = labels[first] == labels[second]
    while bool(same.any()):
        k = int(same.sum())
        first[same] = torch.randint(m, (k,), generator=generator)
        second[same] = torch.randint(m, (k,), generator=generator)
        same = labels[first] == labels[second]
    return first, second


def _check_coverage(split: str, y: tuple[Tensor, ...]) -> None:
    for target, task in zip(y, TASKS, strict=True):
        present = set(torch.unique(target).tolist())
        missing = sorted(set(range(task.n_classes)) - present)
        if missing:
            raise DataError(
                f"{NAME}: the {split} split has no {task.name} example of class(es) "
                f"{', '.join(map(str, missing))}; increase n_{split}"
            )


def _n_pairs(options: Options, split: str) -> int:
    return {"train": options.n_train, "val": options.n_val, "test": options.n_test}[split]


def build(options: Options, root: None = None) -> dict[str, Split]:
    """Build the train/val/test splits (RW paper Sec. 5.1; ExcessMTL Sec. 4.1); pure and seeded.

    ``root`` is unused: the base digits ship inside scikit-learn.

    Returns, for every split, ``Split(x, y, source)`` with ``x`` uint8
    [N x 1 x canvas x canvas], ``y`` = (TL labels, BR labels), int64 [N] each, and
    ``source`` int64 [N x 2], the indices into ``load_digits().images`` of the
    TL and BR base images. Same options give bit-identical tensors.
    """
    images, targets = load_base()
    pools = split_base(targets, options)
    digits = upscale(torch.from_numpy(images), options.digit_size)
    labels = torch.from_numpy(targets)
    splits: dict[str, Split] = {}
    for split in SPLITS:
        pool = torch.from_numpy(pools[split])
        generator = torch.Generator().manual_seed(derive_seed(options.generation_seed, f"pairs/{split}"))
        first, second = draw_pairs(labels[pool], _n_pairs(options, split), generator)
        source = torch.stack([pool[first], pool[second]], dim=1)
        x = compose(digits[source[:, 0]], digits[source[:, 1]], options.canvas, options.shift)
        y = (labels[source[:, 0]], labels[source[:, 1]])
        _check_coverage(split, y)
        splits[split] = Split(x=x, y=y, source=source)
    return splits


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance of the raw source: scikit-learn version, checksums and pool sizes per split."""
    images, targets = load_base()
    pools = split_base(targets, options)
    return {
        "source": "sklearn.datasets.load_digits",
        "sklearn_version": sklearn.__version__,
        "images_sha256": _sha256(images),
        "targets_sha256": _sha256(targets),
        "n_base_images": len(targets),
        "n_base": {split: len(pools[split]) for split in SPLITS},
        "n_pairs": {split: _n_pairs(options, split) for split in SPLITS},
        "stand_in": STAND_IN,
    }
