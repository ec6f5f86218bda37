"""``digit_domains``: three visually shifted domains of one digit set, a multi-input problem (stands in for Office).

The RW paper (App. C.3, Table 8) and ExcessMTL (Sec. 4.3) treat Office-31 (Saenko et al., 2010: domains
Amazon, DSLR, Webcam) and Office-Home (Venkateswara et al., 2017) as multi-input multi-task problems: the same
classes photographed in several *domains*, one classification task per domain, each task with its own
images, split at random 60/20/20 into train/val/test (LibMTL's ``examples/office/data_txt``). Those images
need a download, so this module builds the same kind of problem from scikit-learn's 1,797 handwritten 8x8
digits (:func:`sklearn.datasets.load_digits`), rendered in three domains that mimic Office-31's shifts:

- ``clean`` (like Amazon's product shots): a dark digit on a plain white background;
- ``textured`` (like DSLR photos of objects in an office): a coloured digit, randomly placed, on a coloured
  striped or checked background;
- ``distorted`` (like low-quality webcam frames): a rotated, blurred digit with a colour cast, low contrast
  and pixel noise.

Construction (:func:`build`), all seeded from ``Options.generation_seed``:

1. the base images are divided into three disjoint, class-stratified subsets, one per domain (so no
   handwritten digit appears in two domains, as no photo appears in two Office domains);
2. every domain's images are split 60/20/20 (options) into train/val/test, stratified by class;
3. every base image is upscaled (bilinear) to ``size`` x ``size`` and rendered by its domain's transform,
   whose random draws come from a stream of its own per image (seeded by domain and base index).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from mtlrepro.data import SPLITS, Split
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task, check_target

NAME = "digit_domains"
ENCODER = "lenet"
MULTI_INPUT = True
STAND_IN = (
    "stand-in for Office-31/Office-Home (RW paper App. C.3): scikit-learn's 8x8 digits in three rendered domains, "
    "not the paper's data"
)
DOMAINS = ("clean", "textured", "distorted")
N_CLASSES = 10
TASKS = tuple(Task(domain, "classification", n_classes=N_CLASSES) for domain in DOMAINS)

#: maximum pixel value of :func:`sklearn.datasets.load_digits` images
RAW_MAX = 16.0


@dataclass(frozen=True)
class Options:
    """Generation options: image size, split fractions (Office's 60/20/20 by default, RW App. C.3) and seed."""

    size: int = 28
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    generation_seed: int = 0

    def __post_init__(self) -> None:
        require(12 <= self.size <= 256, "size", self.size, "must be in [12, 256]")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            require(0.0 < value < 1.0, name, value, "must be in (0, 1)")
        total = self.val_fraction + self.test_fraction
        require(total < 1.0, "val_fraction", self.val_fraction, f"+ test_fraction must be < 1 (got {total})")


def load_base() -> tuple[np.ndarray, np.ndarray]:
    """The raw base digits: images [1797 x 8 x 8] float64 in 0..16 and targets [1797] int64."""
    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def split_domains(targets: np.ndarray, generation_seed: int) -> list[np.ndarray]:
    """Divide base image indices into ``len(DOMAINS)`` disjoint subsets, stratified by class.

    Within every class the indices are shuffled (seeded) and dealt round robin to the domains, so the
    domains' class counts differ by at most one. Each subset is returned sorted.
    """
    rng = np.random.default_rng(derive_seed(generation_seed, f"{NAME}/domains"))
    parts: list[list[int]] = [[] for _ in DOMAINS]
    for c in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(targets == c))
        for d in range(len(DOMAINS)):
            parts[d].extend(members[d :: len(DOMAINS)].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def split_domain(indices: np.ndarray, targets: np.ndarray, options: Options, domain: str) -> dict[str, np.ndarray]:
    """Split one domain's base indices into train/val/test, stratified by class (two seeded
    :func:`sklearn.model_selection.train_test_split` calls: test first, then val from the rest)."""
    val_of_rest = options.val_fraction / (1.0 - options.test_fraction)
    try:
        rest, test = train_test_split(
            indices,
            test_size=options.test_fraction,
            stratify=targets[indices],
            random_state=derive_seed(options.generation_seed, f"{NAME}/{domain}/test", bits=32),
        )
        train, val = train_test_split(
            rest,
            test_size=val_of_rest,
            stratify=targets[rest],
            random_state=derive_seed(options.generation_seed, f"{NAME}/{domain}/val", bits=32),
        )
    except ValueError as err:
        raise DataError(
            f"{NAME}: cannot split domain {domain} ({len(indices)} images) with val_fraction={options.val_fraction}, "
            f"test_fraction={options.test_fraction} so that every split holds every class: {err}"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def upscale(images: np.ndarray, size: int) -> Tensor:
    """Raw digits [N x 8 x 8] (0..16) as float64 ink in [0, 1], bilinearly upscaled to [N x 1 x size x size]."""
    x = torch.from_numpy(images).to(torch.float64).unsqueeze(1) / RAW_MAX
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def _colour(generator: torch.Generator, low: float, high: float) -> Tensor:
    """A random RGB colour [3 x 1 x 1] with channels uniform in [low, high]."""
    return (low + (high - low) * torch.rand(3, 1, 1, generator=generator, dtype=torch.float64)).float()


def render(ink: Tensor, domain: str, generator: torch.Generator) -> Tensor:
    """Render one upscaled digit ``ink`` [1 x S x S] (float in [0, 1]) in ``domain``: float RGB [3 x S x S] in [0, 1].

    Every random draw comes from ``generator`` (one per image), so a rendering is reproducible.
    """
    size = ink.shape[-1]
    ink = ink.float()
    if domain == "clean":
        return 1.0 - ink.expand(3, size, size)
    if domain == "textured":
        shift = torch.randint(-size // 8, size // 8 + 1, (2,), generator=generator).tolist()
        ink = torch.roll(ink, shifts=(shift[0], shift[1]), dims=(-2, -1))
        period = int(torch.randint(3, 7, (1,), generator=generator))
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        if float(torch.rand(1, generator=generator)) < 0.5:
            pattern = ((rows // period + cols // period) % 2).float()
        else:
            pattern = (((rows + cols) // period) % 2).float()
        background = _colour(generator, 0.2, 0.6) * (1.0 - 0.35 * pattern)
        digit = _colour(generator, 0.7, 1.0)
        return background * (1.0 - ink) + digit * ink
    if domain == "distorted":
        angle = float(torch.empty(1).uniform_(-25.0, 25.0, generator=generator))
        ink = TF.rotate(ink, angle, interpolation=TF.InterpolationMode.BILINEAR)
        sigma = float(torch.empty(1).uniform_(0.6, 1.4, generator=generator))
        ink = TF.gaussian_blur(ink, kernel_size=[5, 5], sigma=[sigma, sigma])
        cast = _colour(generator, 0.5, 1.0)
        image = 0.25 + 0.6 * ink * cast
        noise = 0.03 * torch.randn(3, size, size, generator=generator)
        return (image + noise).clamp(0.0, 1.0)
    raise ValueError(f"domain {domain!r} is unknown (domains: {', '.join(DOMAINS)})")


def render_domain(images: np.ndarray, indices: np.ndarray, domain: str, options: Options) -> Tensor:
    """Render the base images ``indices`` in ``domain``: uint8 [N x 3 x S x S] (each image its own seeded stream)."""
    ink = upscale(images[indices], options.size)
    out = torch.empty(len(indices), 3, options.size, options.size, dtype=torch.uint8)
    for k, index in enumerate(indices.tolist()):
        generator = torch.Generator().manual_seed(derive_seed(options.generation_seed, f"{NAME}/{domain}/{index}"))
        out[k] = torch.round(render(ink[k], domain, generator) * 255.0).clamp(0, 255).to(torch.uint8)
    return out


def build(options: Options, root: None = None) -> dict[str, tuple[Split, ...]]:
    """Build the train/val/test splits of every domain (multi-input; pure and seeded; ``root`` is unused).

    Returns, per split, one ``Split`` per domain in :data:`DOMAINS` order: ``x`` uint8 [N x 3 x S x S],
    ``y = (labels,)`` int64 [N] and ``source`` int64 [N x 1], the index into ``load_digits().images`` of the
    base image.
    """
    images, targets = load_base()
    parts: dict[str, list[Split]] = {split: [] for split in SPLITS}
    for task, indices in zip(TASKS, split_domains(targets, options.generation_seed), strict=True):
        pools = split_domain(indices, targets, options, task.name)
        for split in SPLITS:
            pool = pools[split]
            labels = torch.from_numpy(targets[pool])
            check_target(task, labels, len(pool))
            x = render_domain(images, pool, task.name, options)
            parts[split].append(Split(x=x, y=(labels,), source=torch.from_numpy(pool).reshape(-1, 1)))
    return {split: tuple(parts[split]) for split in SPLITS}


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance: scikit-learn and torchvision versions, checksums of the base digits and split sizes."""
    images, targets = load_base()
    domains = split_domains(targets, options.generation_seed)
    sizes = {
        domain: {split: len(p) for split, p in split_domain(idx, targets, options, domain).items()}
        for domain, idx in zip(DOMAINS, domains, strict=True)
    }
    return {
        "source": "sklearn.datasets.load_digits",
        "sklearn_version": str(sklearn.__version__),
        "torchvision_version": str(torchvision.__version__),
        "images_sha256": _sha256(images),
        "targets_sha256": _sha256(targets),
        "domains": list(DOMAINS),
        "n": sizes,
        "stand_in": STAND_IN,
    }
