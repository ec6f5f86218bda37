"""Shared machinery of Office-31 and Office-Home: one classification task per image domain (multi-input).

RW App. C.3 (Table 8): every domain of Office-31 (Saenko et al., 2010; amazon, dslr, webcam, 31 classes) and of
Office-Home (Venkateswara et al., 2017; Art, Clipart, Product, Real World, 65 classes) is one multi-class
classification task with its own images; "we randomly split the whole dataset with 60% for training, 20% for
validation, and the rest 20% for testing" and "all the input images are resized to 224x224". ExcessMTL (Sec. 4.1,
App. C.1) uses Office-Home with the same tasks.

What this module fixes where the papers are silent:

- **Split.** LibMTL (the RW authors' library) ships fixed 60/20/20 file lists per domain
  (``examples/office/data_txt``) without the code or seed that drew them. We draw the split ourselves, per domain
  and *per class* (stratified), from ``Options.split_seed``: every class's images (in sorted file order) are
  permuted by a generator seeded with ``derive_seed(split_seed, "<dataset>/<task>/<class>")``; the first
  ``round(n * test_fraction)`` go to test, the next ``round(n * val_fraction)`` to validation, the rest to
  training (``round`` halves up). The three parts are disjoint and cover the domain.
- **Resize.** LibMTL's ``examples/office/create_dataset.py`` applies ``transforms.Resize((224, 224))`` to the
  PIL image after ``.convert('RGB')``: a direct resize of the whole image to a square, aspect ratio not kept,
  bilinear (Pillow, antialiased when shrinking). We do the same, to ``Options.size`` (default 224), and store
  uint8; LibMTL's ImageNet normalisation is the model's business, not the data's.
- **Class indices.** ImageFolder's convention: the class folder names sorted (Python string order), shared by
  every domain of a dataset, so class ``c`` means the same object in every task (LibMTL's lists number the
  classes in another, unsorted order; only consistency across domains matters to the papers).
- **Layout.** Office-31's ``domain_adaptation_images.tar.gz`` holds ``<domain>/images/<class>/frame_NNNN.jpg``
  at its top level (no enclosing folder); loaders commonly unpack it into a folder ``Office31``, as
  :func:`fetch` does. Office-Home's ``OfficeHomeDataset_10072016.zip`` holds
  ``OfficeHomeDataset_10072016/<Domain>/<Class>/NNNNN.jpg`` with the domain folders ``Art``, ``Clipart``,
  ``Product`` and ``Real World`` (a space; LibMTL's lists use a renamed ``Real_World``, which is accepted too),
  beside ``ImageInfo.csv`` and ``imagelist.txt``.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from mtlrepro.data import SPLITS, Split, download
from mtlrepro.data._images import library_versions, load_images, tree_sha256
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import CLASSIFICATION, Task, check_target


@dataclass(frozen=True)
class Options:
    """Preprocessing and split options; the defaults are RW App. C.3's (224x224, 60/20/20).

    ``size``: side of the square images (tests and demos use small ones); ``val_fraction``/``test_fraction``:
    the part of every class of every domain that goes to validation/test; ``split_seed``: seeds the split.
    """

    size: int = 224
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        require(self.size >= 1, "size", self.size, "must be >= 1")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "must be in (0, 1)")
        total = self.val_fraction + self.test_fraction
        require(total < 1.0, "test_fraction", self.test_fraction, f"plus val_fraction must be < 1 (sum {total})")


@dataclass(frozen=True)
class Domain:
    """One domain = one task: the task's name (as the papers' tables print it) and the folder(s) holding it.

    ``folders``: accepted names of the domain's folder under the root, upstream's first.
    """

    task: str
    folders: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """What distinguishes Office-31 from Office-Home: names, domains, classes, source and archive layout.

    ``unpack_to``: folder (in the download directory) the archive is unpacked into; ``top``: folder inside it
    that holds the domains (``None``: the domains lie at its top); ``images``: folder inside every domain that
    holds the class folders (``None``: the class folders lie in the domain folder).
    """

    name: str
    domains: tuple[Domain, ...]
    classes: tuple[str, ...]
    source: Source
    manual: str
    unpack_to: str
    top: str | None
    images: str | None

    def __post_init__(self) -> None:
        if list(self.classes) != sorted(set(self.classes)):
            raise ValueError(f"{self.name}: classes must be sorted and unique")

    @property
    def tasks(self) -> tuple[Task, ...]:
        """One classification task per domain, over all of the family's classes."""
        return tuple(Task(d.task, CLASSIFICATION, n_classes=len(self.classes)) for d in self.domains)


# --------------------------------------------------------------------------- files on disk


def resolve_root(family: Family, root: Path) -> Path:
    """The folder holding the domain folders: ``root`` itself, or ``root/<top>`` when it exists."""
    if family.top is not None and (root / family.top).is_dir():
        return root / family.top
    return root


def _expected(family: Family, root: Path, domain: Domain) -> Path:
    """Where upstream's layout puts the class folders of ``domain``."""
    folder = root / domain.folders[0]
    return folder / family.images if family.images else folder


def domain_dir(family: Family, root: Path, domain: Domain) -> Path | None:
    """The folder of ``domain``'s class folders under the resolved ``root``, or ``None`` if it is missing."""
    for name in domain.folders:
        folder = root / name / family.images if family.images else root / name
        if folder.is_dir():
            return folder
    return None


def check_root(family: Family, root: Path) -> None:
    """Refuse a data root lacking a domain: :class:`DataError` naming the first missing folder and the manual step."""
    resolved = resolve_root(family, Path(root))
    if not resolved.is_dir():
        raise DataError(f"{family.name}: data folder {resolved} does not exist: {family.manual}")
    for domain in family.domains:
        if domain_dir(family, resolved, domain) is None:
            raise DataError(
                f"{family.name}: {_expected(family, resolved, domain)} is missing (domain {domain.task}): "
                f"{family.manual}"
            )


def _is_archive(path: Path) -> bool:
    """Whether ``path`` is a zip (for a ``.zip`` name) or a tar file: Google Drive may serve a web page instead."""
    return zipfile.is_zipfile(path) if path.name.endswith(".zip") else tarfile.is_tarfile(path)


def fetch(family: Family, directory: Path, sources: Sequence[Source], progress: bool) -> Path:
    """Download (or find) the archive in ``directory``, unpack it into ``directory/<unpack_to>``; return the root.

    Idempotent and offline once in place: an intact archive is not downloaded again and an existing unpacked
    folder is not unpacked again (:func:`mtlrepro.data.download.unpack` renames a complete unpack into place).
    No checksum is published for either archive (trusted on first use), so a file that is not an archive at all
    (Google Drive's quota or virus-scan page) is refused with the manual step before unpacking.
    """
    directory = Path(directory)
    archives = [
        download.fetch(s, directory, manual=family.manual, dataset=family.name, progress=progress) for s in sources
    ]
    destination = directory / family.unpack_to
    if not destination.exists() and not _is_archive(archives[0]):
        raise DataError(
            f"{family.name}: {archives[0]} is not a {archives[0].suffix} archive (a web page saved instead of the "
            f"file?): delete it, then {family.manual}"
        )
    unpacked = download.unpack(archives[0], destination)
    root = resolve_root(family, unpacked)
    check_root(family, root)
    return root


# --------------------------------------------------------------------------- discovery and split


@dataclass(frozen=True)
class DomainFiles:
    """The images of one domain: its folder, the paths (sorted as ImageFolder sorts them) and class indices."""

    domain: Domain
    folder: Path
    paths: tuple[Path, ...]
    labels: np.ndarray


def scan(family: Family, root: Path) -> list[DomainFiles]:
    """ImageFolder-style discovery of every domain (:func:`torchvision.datasets.folder.make_dataset`).

    Class folders must be classes of the family and the same in every domain; labels index the family's sorted
    class list (equal to ImageFolder's indices when every class is present). :class:`DataError` otherwise.
    """
    root = resolve_root(family, Path(root))
    check_root(family, root)
    found: list[tuple[Domain, Path, list[str]]] = []
    for domain in family.domains:
        folder = domain_dir(family, root, domain)
        assert folder is not None  # check_root
        try:
            names, _ = find_classes(str(folder))
        except FileNotFoundError:
            raise DataError(f"{family.name}: {folder} holds no class folder (domain {domain.task})") from None
        unknown = [c for c in names if c not in family.classes]
        if unknown:
            raise DataError(
                f"{family.name}: {folder / unknown[0]} is not a class of {family.name} (domain {domain.task})"
            )
        found.append((domain, folder, names))
    _, reference_folder, reference = found[0]
    for _, folder, names in found[1:]:
        missing = sorted(set(reference) ^ set(names))
        if missing:
            where, other = (folder, reference_folder) if missing[0] in reference else (reference_folder, folder)
            raise DataError(
                f"{family.name}: class {missing[0]} has images in {other} but no folder in {where}: "
                "every domain must hold the same classes"
            )
    index = {c: i for i, c in enumerate(family.classes)}
    out = []
    for domain, folder, names in found:
        try:
            samples = make_dataset(str(folder), {c: index[c] for c in names}, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as err:
            raise DataError(f"{family.name}: {folder}: {err}") from None
        paths = tuple(Path(p) for p, _ in samples)
        labels = np.asarray([c for _, c in samples], dtype=np.int64)
        out.append(DomainFiles(domain, folder, paths, labels))
    return out


def _round(x: float) -> int:
    """``x`` rounded half up (not Python's half-to-even), so a class of 5 gives 1 test image at 20%."""
    return int(np.floor(x + 0.5))


def split_indices(labels: np.ndarray, options: Options, purpose: str) -> dict[str, np.ndarray]:
    """A seeded, class-stratified train/val/test split of positions ``0..len(labels)-1`` (module docstring).

    ``purpose`` names the domain in the seed of every class's permutation. Returns sorted int64 positions.
    """
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng = np.random.Generator(np.random.PCG64(derive_seed(options.split_seed, f"{purpose}/{int(c)}")))
        members = members[rng.permutation(len(members))]
        n_test = _round(len(members) * options.test_fraction)
        n_val = _round(len(members) * options.val_fraction)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in SPLITS}


# --------------------------------------------------------------------------- build and describe


def build(family: Family, options: Options, root: Path | None) -> dict[str, tuple[Split, ...]]:
    """The train/val/test splits, each one :class:`Split` per domain in task order; pure and seeded.

    Task ``t``'s Split holds its domain's images, uint8 ``[N x 3 x size x size]``, ``y = (labels,)`` with int64
    class indices, and ``source`` int64 ``[N x 1]``: the image's position in the domain's sorted file list.
    """
    if root is None:
        raise DataError(f"{family.name} needs its raw data: give a download directory or `datasets.{family.name}.path`")
    domains = scan(family, Path(root))
    per_split: dict[str, list[Split]] = {s: [] for s in SPLITS}
    for files, task in zip(domains, family.tasks, strict=True):
        parts = split_indices(files.labels, options, f"{family.name}/{task.name}")
        for split in SPLITS:
            if len(parts[split]) == 0:
                raise DataError(
                    f"{family.name}: the {split} split of domain {task.name} is empty "
                    f"({len(files.paths)} images): lower the fractions or check the data"
                )
        images = load_images(((str(p), p) for p in files.paths), len(files.paths), options.size)
        labels = torch.from_numpy(files.labels)
        for split in SPLITS:
            rows = torch.from_numpy(parts[split])
            target = labels[rows]
            check_target(task, target, len(rows))
            per_split[split].append(Split(x=images[rows], y=(target,), source=rows.reshape(-1, 1)))
    return {s: tuple(per_split[s]) for s in SPLITS}


def describe(family: Family, options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: the archive (when beside the unpacked folder) and a digest of every image, versions, sizes."""
    if root is None:
        raise DataError(f"{family.name} needs its raw data: give a download directory or `datasets.{family.name}.path`")
    root = resolve_root(family, Path(root))
    domains = scan(family, root)
    sizes: dict[str, dict[str, int]] = {}
    images: dict[str, dict[str, Any]] = {}
    for files, task in zip(domains, family.tasks, strict=True):
        parts = split_indices(files.labels, options, f"{family.name}/{task.name}")
        sizes[task.name] = {s: len(parts[s]) for s in SPLITS}
        images[task.name] = {
            "folder": files.folder.relative_to(root).as_posix(),
            "n_images": len(files.paths),
            "sha256": tree_sha256(root, files.paths),
        }
    archives = {}
    for candidate in (root.parent, root.parent.parent):
        archive = candidate / str(family.source.filename)
        if archive.is_file():
            archives[archive.name] = download.sha256_file(archive)
            break
    return {
        "source": family.source.url,
        "archives": archives,
        "images": images,
        "classes": list(family.classes),
        "split_sizes": sizes,
        "versions": library_versions(),
        "stand_in": None,
    }
