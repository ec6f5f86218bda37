"""``multi_fashion``: Multi-FashionMNIST: two FashionMNIST items of different classes overlaid (RW Sec. 5.1).

Built from the real MNIST/FashionMNIST files with the construction of Lin et al. (2019), RW Sec. 5.1; its sizes and
every choice the papers leave open are documented in :mod:`mtlrepro.data._overlay`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mtlrepro.data import Split, _overlay
from mtlrepro.data.download import Source

NAME = "multi_fashion"
FAMILY = _overlay.Family(NAME, _overlay.FASHION_MNIST, _overlay.FASHION_MNIST)
TASKS = FAMILY.tasks
ENCODER = "lenet"
STAND_IN = None
MULTI_INPUT = False
SOURCES: tuple[Source, ...] = FAMILY.sources
MANUAL = FAMILY.manual
Options = _overlay.Options


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download and unpack the raw IDX files into ``directory`` (torchvision's layout); return the root."""
    return _overlay.fetch(FAMILY, directory, sources, progress)


def check_root(root: Path) -> None:
    """Refuse a user-provided root that lacks one of the unpacked IDX files (DataError naming it)."""
    _overlay.check_root(FAMILY, root)


def build(options: Options, root: Path | None) -> dict[str, Split]:
    """The train/val/test splits (:func:`mtlrepro.data._overlay.build`); pure and seeded."""
    return _overlay.build(FAMILY, options, root)


def describe(options: Options, root: Path | None) -> dict[str, object]:
    """Provenance of the raw files and the splits (:func:`mtlrepro.data._overlay.describe`)."""
    return _overlay.describe(FAMILY, options, root)
