"""The Multi-MNIST construction shared by ``multi_mnist``, ``multi_fashion`` and ``multi_fashion_mnist``.

RW Sec. 5.1 (following Lin et al., 2019, Pareto MTL, who follow Sabour et al., 2017): two images are drawn
at random, one placed at the top-left and one at the bottom-right of a 36x36 canvas and overlaid; task
**TL** classifies the top-left image, task **BR** the bottom-right one. For Multi-MNIST and
Multi-FashionMNIST the two images have *different classes* (RW Sec. 5.1); Multi-(Fashion+MNIST) overlays
an MNIST digit and a FashionMNIST item. Sizes: 120K training and 20K test images (RW Sec. 5.1; the
``120000 x 1 x 36 x 36`` / ``20000 x 1 x 36 x 36`` arrays of Lin et al.'s ``multiMNIST/train.py``).
ExcessMTL Sec. 4.1 uses the same data (without giving sizes) and injects label noise into BR.

Lin et al. publish only the generated pickles, not the code that made them. The placement follows Sener &
Koltun's MultiMNIST loader (``multi_task/loaders/multi_mnist_loader.py`` of their MGDA code, which Lin et
al. build on): the first 28x28 image at rows/columns ``0:28``, the second at ``6:34`` of a 36x36 canvas,
the overlap taking the pixel-wise maximum. That loader keeps no 36x36 image (it resizes to 28x28); the
papers here use 36x36, so nothing is resized by default.

Choices where the papers are silent (all options, with these defaults):

- **validation split**: the papers have none. A seeded, class-stratified ``val_fraction`` = 10% of each base
  dataset's *training* images forms the validation pool, and 10% of the 120K training pairs
  (``n_val`` = 12,000) are drawn from it; ``n_train`` = 108,000 pairs come from the other 90%. Test pairs
  (``n_test`` = 20,000) come from the base test images only. The pools are disjoint, so no base image is
  shared between splits.
- **pairs**: ordered pairs drawn uniformly at random (with replacement across pairs) from the split's pool;
  for same-source variants pairs with equal classes are redrawn (RW Sec. 5.1: "two images with different
  classes"). A mixed variant has two label spaces, so no such condition applies.
- **source indices**: ``source[:, k]`` indexes the base dataset of position k (TL, BR) with the training
  file's images first and the test file's after them (``60000 + j`` for test image ``j`` of MNIST).

The raw files are the four IDX ``.gz`` files of each base dataset, at the URLs torchvision downloads them
from (``torchvision.datasets.MNIST.mirrors``/``.resources``, ``FashionMNIST``'s), stored as torchvision
stores them (``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``, the ``.gz`` unpacked beside it), so an
existing torchvision download can be used as ``datasets.<name>.path``. They are parsed with torchvision's
IDX readers (:func:`torchvision.datasets.mnist.read_image_file`, :func:`~torchvision.datasets.mnist.read_label_file`).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.model_selection import train_test_split
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.transforms.v2 import functional as TF

from mtlrepro.data import SPLITS, Split, download
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task, check_target

N_CLASSES = 10
#: the four IDX files of MNIST and FashionMNIST, in torchvision's order (train images, train labels, test ...)
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _sources(mirrors: Sequence[str], checksums: Sequence[tuple[int, str]]) -> tuple[Source, ...]:
    """One :class:`Source` per file of :data:`FILES` (``.gz``): the first mirror, the others as mirrors."""
    return tuple(
        Source(mirrors[0] + f"{name}.gz", sha256, size, mirrors=tuple(m + f"{name}.gz" for m in mirrors[1:]))
        for name, (size, sha256) in zip(FILES, checksums, strict=True)
    )


@dataclass(frozen=True)
class Base:
    """One base image dataset: its name (and torchvision's folder name), raw sources and class names."""

    name: str
    sources: tuple[Source, ...]
    classes: tuple[str, ...]

    @property
    def raw(self) -> str:
        """The folder of the unpacked IDX files under a root, as torchvision lays it out: ``<name>/raw``."""
        return f"{self.name}/raw"


# Mirrors: torchvision.datasets.MNIST.mirrors / FashionMNIST.mirrors (torchvision 0.2x). Sizes and sha256:
# tensorflow-datasets `tensorflow_datasets/url_checksums/mnist.txt` and `fashion_mnist.txt` (the same bytes
# as torchvision's md5s in `MNIST.resources` / `FashionMNIST.resources`).
MNIST = Base(
    "MNIST",
    _sources(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
    ),
    tuple(str(d) for d in range(N_CLASSES)),
)
FASHION_MNIST = Base(
    "FashionMNIST",
    _sources(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ),
    ),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)


@dataclass(frozen=True)
class Options:
    """Generation options; defaults give the papers' data (RW Sec. 5.1) with a validation split carved out.

    ``n_train``/``n_val``/``n_test`` are numbers of composed images (pairs); 108,000 + 12,000 = the papers'
    120K training images, 20,000 their test images. ``val_fraction`` is the fraction of each base dataset's
    training images reserved for the validation pool. ``canvas``/``digit_size``/``shift``: canvas side, side
    of each (resized) base image, and the offset of the bottom-right one (Sener & Koltun's loader: 28, 6).
    """

    n_train: int = 108000
    n_val: int = 12000
    n_test: int = 20000
    val_fraction: float = 0.1
    canvas: int = 36
    digit_size: int = 28
    shift: int = 6
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test", "canvas", "digit_size"):
            value = getattr(self, name)
            require(value > 0, name, value, "must be > 0")
        require(self.shift >= 0, "shift", self.shift, "must be >= 0")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        require(self.canvas >= self.digit_size, "canvas", self.canvas, f"must be >= digit_size = {self.digit_size}")
        require(
            self.digit_size + self.shift <= self.canvas,
            "shift",
            self.shift,
            f"must be <= canvas - digit_size = {self.canvas - self.digit_size}",
        )


@dataclass(frozen=True)
class Family:
    """One member of the family: its registry name and the base datasets of its TL and BR images."""

    name: str
    top_left: Base
    bottom_right: Base

    @property
    def bases(self) -> tuple[Base, ...]:
        """The distinct base datasets, TL's first."""
        return (self.top_left,) if self.top_left == self.bottom_right else (self.top_left, self.bottom_right)

    @property
    def distinct_classes(self) -> bool:
        """Whether a pair must have different classes (same label space; RW Sec. 5.1)."""
        return self.top_left == self.bottom_right

    @property
    def sources(self) -> tuple[Source, ...]:
        """The raw files of every base dataset, in :attr:`bases` order."""
        return tuple(s for base in self.bases for s in base.sources)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """Tasks TL and BR (RW Sec. 5.1), ten classes each, named by their base dataset's classes."""
        return (
            Task("TL", n_classes=N_CLASSES, labels=self.top_left.classes),
            Task("BR", n_classes=N_CLASSES, labels=self.bottom_right.classes),
        )

    @property
    def manual(self) -> str:
        """The manual step: which files to download from where, and where they go."""
        parts = []
        for base in self.bases:
            names = ", ".join(s.filename or "" for s in base.sources)
            page = base.sources[0].url.rsplit("/", 1)[0] + "/"
            parts.append(f"for {base.name}, download {names} from {page} and gunzip them into <path>/{base.raw}/")
        return "; ".join(parts) + " (torchvision's layout: a torchvision download directory works as it is)"

    def located(self, sources: Sequence[Source]) -> list[tuple[Base, Source]]:
        """Pair each of ``sources`` (the family's files in :attr:`sources` order, URLs possibly rewritten)
        with the base dataset whose folder it goes to."""
        expected = [(base, s) for base in self.bases for s in base.sources]
        if len(sources) != len(expected):
            raise ValueError(f"{self.name}: {len(sources)} sources given, expected {len(expected)} ({FILES})")
        return [(base, given) for (base, _), given in zip(expected, sources, strict=True)]


def fetch(family: Family, directory: Path, sources: Sequence[Source], progress: bool) -> Path:
    """Download the family's IDX ``.gz`` files into ``directory/<Base>/raw/`` and unpack each beside itself.

    Idempotent: intact downloads are not fetched again, unpacked files are not unpacked again.
    Returns ``directory``, the root :func:`build` reads.
    """
    directory = Path(directory)
    for base, source in family.located(sources):
        raw = directory / base.raw
        path = download.fetch(source, raw, manual=family.manual, dataset=family.name, progress=progress)
        download.unpack(path, raw / path.name.removesuffix(".gz"))
    return directory


def check_root(family: Family, root: Path) -> None:
    """Refuse a root lacking one of the unpacked IDX files :func:`build` reads (one line, with the manual step)."""
    for base in family.bases:
        for name in FILES:
            path = Path(root) / base.raw / name
            if not path.is_file():
                raise DataError(f"dataset {family.name}: {path} is missing: {family.manual}")


def _read(path: Path, reader: Callable[[str], Tensor]) -> Tensor:
    """One IDX file through torchvision's ``reader``; :class:`DataError` naming the file if it is not one."""
    try:
        return reader(str(path))
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except (AssertionError, TypeError, ValueError, RuntimeError, KeyError) as err:
        raise DataError(f"{path} is not a valid IDX file ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Images:
    """A base dataset read from disk: the training file's images then the test file's, and their labels."""

    images: Tensor  # uint8 [N x 28 x 28]
    labels: Tensor  # int64 [N]
    n_train: int  # the first n_train come from the training files


def load_base(base: Base, root: Path) -> Images:
    """Read the four IDX files of ``base`` under ``root`` (torchvision's readers) and check they agree."""
    raw = Path(root) / base.raw
    parts = []
    for images_name, labels_name in ((FILES[0], FILES[1]), (FILES[2], FILES[3])):
        images = _read(raw / images_name, read_image_file)
        labels = _read(raw / labels_name, read_label_file)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{raw / images_name} holds {images.shape[0]} images but {raw / labels_name} {labels.shape[0]} labels"
            )
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < N_CLASSES:
            raise DataError(f"{raw / labels_name} holds labels outside 0..{N_CLASSES - 1}")
        parts.append((images, labels))
    (train_x, train_y), (test_x, test_y) = parts
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{raw / FILES[0]} holds images of {list(train_x.shape[1:])}, {raw / FILES[2]} of {list(test_x.shape[1:])}"
        )
    return Images(torch.cat([train_x, test_x]), torch.cat([train_y, test_y]), int(train_x.shape[0]))


def pools(base: Base, data: Images, options: Options, seed_purpose: str) -> dict[str, np.ndarray]:
    """Disjoint pools of base indices per split: a seeded, class-stratified ``val_fraction`` of the training
    images for val, the rest of them for train, the test images for test (sorted indices)."""
    train_indices = np.arange(data.n_train)
    labels = data.labels[: data.n_train].numpy()
    try:
        train, val = train_test_split(
            train_indices,
            test_size=options.val_fraction,
            stratify=labels,
            random_state=derive_seed(options.generation_seed, f"{seed_purpose}/{base.name}/val", bits=32),
        )
    except ValueError as err:
        raise DataError(
            f"cannot carve a class-stratified validation pool of val_fraction={options.val_fraction} out of the "
            f"{data.n_train} {base.name} training images: {err}"
        ) from None
    test = np.arange(data.n_train, int(data.labels.shape[0]))
    return {"train": np.sort(train), "val": np.sort(val), "test": test}


def resize(images: Tensor, size: int) -> Tensor:
    """Base images uint8 [N x h x w] at ``size`` x ``size`` (bilinear, antialiased; unchanged if already so)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return TF.resize(images.unsqueeze(1), [size, size], antialias=True).squeeze(1)


def compose(top_left: Tensor, bottom_right: Tensor, canvas: int, shift: int) -> Tensor:
    """Overlay images [N x d x d] (uint8): top-left at (0, 0), bottom-right at (shift, shift), pixel-wise max.

    Sener & Koltun's MultiMNIST loader (see the module docstring). Returns uint8 [N x 1 x canvas x canvas].
    """
    n, d = top_left.shape[0], top_left.shape[-1]
    out = torch.zeros(n, 1, canvas, canvas, dtype=torch.uint8)
    out[:, 0, :d, :d] = top_left
    window = out[:, 0, shift : shift + d, shift : shift + d]
    out[:, 0, shift : shift + d, shift : shift + d] = torch.maximum(window, bottom_right)
    return out


def draw_pairs(
    first_labels: Tensor, second_labels: Tensor, n: int, distinct: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` ordered pairs of positions (into the two pools), uniform; with ``distinct``, uniform over the pairs
    whose labels differ (pairs with equal labels are redrawn until none is left)."""
    m1, m2 = int(first_labels.shape[0]), int(second_labels.shape[0])
    first = torch.randint(m1, (n,), generator=generator)
    second = torch.randint(m2, (n,), generator=generator)
    if not distinct:
        return first, second
    if torch.unique(torch.cat([first_labels, second_labels])).numel() < 2:
        raise DataError("a pool of base images holds fewer than 2 classes: no pair of different classes exists")
    same = first_labels[first] == second_labels[second]
    while bool(same.any()):
        k = int(same.sum())
        first[same] = torch.randint(m1, (k,), generator=generator)
        second[same] = torch.randint(m2, (k,), generator=generator)
        same = first_labels[first] == second_labels[second]
    return first, second


def _sizes(options: Options) -> dict[str, int]:
    return {"train": options.n_train, "val": options.n_val, "test": options.n_test}


def build(family: Family, options: Options, root: Path | None) -> dict[str, Split]:
    """The train/val/test splits of ``family`` (module docstring); pure and seeded.

    Every split is ``Split(x, y, source)``: ``x`` uint8 [N x 1 x canvas x canvas], ``y`` = (TL, BR) int64 [N],
    ``source`` int64 [N x 2], the base indices of the TL and BR images. Same files and options give
    bit-identical tensors.
    """
    if root is None:
        raise DataError(f"dataset {family.name} needs its raw files: {family.manual}")
    data = {base.name: load_base(base, root) for base in family.bases}
    tl, br = data[family.top_left.name], data[family.bottom_right.name]
    pool = {base.name: pools(base, data[base.name], options, family.name) for base in family.bases}
    tl_images, br_images = resize(tl.images, options.digit_size), resize(br.images, options.digit_size)
    tasks = family.tasks
    splits: dict[str, Split] = {}
    for split in SPLITS:
        tl_pool = torch.from_numpy(pool[family.top_left.name][split])
        br_pool = torch.from_numpy(pool[family.bottom_right.name][split])
        generator = torch.Generator().manual_seed(derive_seed(options.generation_seed, f"{family.name}/pairs/{split}"))
        first, second = draw_pairs(
            tl.labels[tl_pool], br.labels[br_pool], _sizes(options)[split], family.distinct_classes, generator
        )
        source = torch.stack([tl_pool[first], br_pool[second]], dim=1)
        x = compose(tl_images[source[:, 0]], br_images[source[:, 1]], options.canvas, options.shift)
        y = (tl.labels[source[:, 0]].clone(), br.labels[source[:, 1]].clone())
        for task, target in zip(tasks, y, strict=True):
            check_target(task, target, len(source))
        splits[split] = Split(x=x, y=y, source=source)
    return splits


def describe(family: Family, options: Options, root: Path | None) -> dict[str, object]:
    """Provenance: the raw files read with their sha256, library versions, pool and split sizes."""
    files: dict[str, str] = {}
    n_base: dict[str, dict[str, int]] = {}
    if root is not None:
        for base in family.bases:
            for name in FILES:
                path = Path(root) / base.raw / name
                files[f"{base.raw}/{name}"] = download.sha256_file(path)
            data = load_base(base, root)
            n_base[base.name] = {s: len(p) for s, p in pools(base, data, options, family.name).items()}
    return {
        "construction": "RW Sec. 5.1 / Lin et al. 2019: TL and BR images overlaid (Sener & Koltun's placement)",
        "top_left": family.top_left.name,
        "bottom_right": family.bottom_right.name,
        "files_sha256": files,
        "sources": [s.url for s in family.sources],
        "n_base": n_base,
        "n_pairs": _sizes(options),
        "versions": {
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "numpy": str(np.__version__),
        },
        "stand_in": None,
    }
