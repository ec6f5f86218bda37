"""``office31``: Office-31 (Saenko et al., 2010), three domains = three 31-class classification tasks (multi-input).

RW App. C.3 and Table 8: tasks Amazon (A), DSLR (D) and Webcam (W), 4,110 images, a random 60/20/20
train/val/test split, images resized to 224x224, an ImageNet-pretrained ResNet-18 shared by the tasks. The
split, the resize and the layout of the archive are described in :mod:`mtlrepro.data._office`.

Task names are the column names of RW Table 8 (``A``, ``D``, ``W``); the folders are ``amazon``, ``dslr`` and
``webcam`` (``<domain>/images/<class>/frame_NNNN.jpg`` in ``domain_adaptation_images.tar.gz``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlrepro.data import Split
from mtlrepro.data import _office as office
from mtlrepro.data.download import Source

NAME = "office31"
ENCODER = "resnet18"
STAND_IN = None
MULTI_INPUT = True

#: the 31 class folders, sorted (ImageFolder's class order); the same in every domain
CLASSES = (
    "back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
    "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray", "mobile_phone",
    "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector", "punchers", "ring_binder",
    "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can",
)  # fmt: skip

MANUAL = (
    "Office-31 is on Google Drive, which often refuses scripted downloads: open "
    'https://faculty.cc.gatech.edu/~judy/domainadapt/ ("Office dataset", Google Drive file '
    "0B4IapRTv9pJ1WGZVd1VDMmhwdlE), download domain_adaptation_images.tar.gz into the download directory "
    "(it is unpacked into Office31/ beside it), or unpack it yourself and set `datasets.office31.path` to the "
    "folder holding amazon/, dslr/ and webcam/ (each with images/<class>/*.jpg)"
)

# No sha256 or size is published for this file: trusted on first use (the downloader records the sha256 it
# saw). Checksums found in public code, for a manual check: md5 1b536d114869a5a8aa4580b89e9758fb (DeepMind's
# dm_nevis office31 handler), sha1 7aa25a86f3880b6e79283227816f9d4d8506d636 (a download script verifying it).
SOURCES = (
    Source(
        "https://drive.usercontent.google.com/download?id=0B4IapRTv9pJ1WGZVd1VDMmhwdlE&export=download&confirm=t",
        sha256=None,
        size=None,
        filename="domain_adaptation_images.tar.gz",
        mirrors=("https://drive.google.com/uc?export=download&id=0B4IapRTv9pJ1WGZVd1VDMmhwdlE",),
    ),
)

FAMILY = office.Family(
    name=NAME,
    domains=(
        office.Domain("A", ("amazon",)),
        office.Domain("D", ("dslr",)),
        office.Domain("W", ("webcam",)),
    ),
    classes=CLASSES,
    source=SOURCES[0],
    manual=MANUAL,
    unpack_to="Office31",
    top=None,
    images="images",
)
TASKS = FAMILY.tasks

Options = office.Options


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download ``domain_adaptation_images.tar.gz`` into ``directory``, unpack it into ``Office31/``; return that."""
    return office.fetch(FAMILY, directory, sources, progress)


def check_root(root: Path) -> None:
    """Refuse a root without ``amazon/images``, ``dslr/images`` or ``webcam/images`` (DataError naming it)."""
    office.check_root(FAMILY, root)


def build(options: Options, root: Path | None) -> dict[str, Split | tuple[Split, ...]]:
    """One :class:`Split` per domain (A, D, W) per split; see :func:`mtlrepro.data._office.build`."""
    return dict(office.build(FAMILY, options, root))


def describe(options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: archive and image digests, library versions, split sizes per domain."""
    return office.describe(FAMILY, options, root)
