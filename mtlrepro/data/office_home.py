"""``office_home``: Office-Home (Venkateswara et al., 2017), four domains = four 65-class tasks (multi-input).

RW App. C.3 and Table 8: tasks Art (Ar), Clipart (Cl), Product (Pr) and Real World (Rw), 15,500 images, the
same 60/20/20 split as Office-31, images resized to 224x224. ExcessMTL (Sec. 4.1, App. C.1) uses the same tasks
and injects label noise into Product's training split (:mod:`mtlrepro.data.noise`, not here). The split,
the resize and the layout of the archive are described in :mod:`mtlrepro.data._office`.

Task names are the column names of RW Table 8 (``Ar``, ``Cl``, ``Pr``, ``Rw``); the folders are ``Art``,
``Clipart``, ``Product`` and ``Real World`` (``Real_World`` accepted) inside ``OfficeHomeDataset_10072016/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlrepro.data import Split
from mtlrepro.data import _office as office
from mtlrepro.data.download import Source

NAME = "office_home"
ENCODER = "resnet18"
STAND_IN = None
MULTI_INPUT = True

#: the 65 class folders, sorted (ImageFolder's class order: Python string order, so "TV" before "Table")
CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
    "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
    "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
    "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
    "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
    "ToothBrush", "Toys", "Trash_Can", "Webcam",
)  # fmt: skip

MANUAL = (
    "Office-Home is distributed after a license form: fill it in at https://www.hemanthdv.org/officeHomeDataset.html, "
    "download OfficeHomeDataset_10072016.zip into the download directory (it is unpacked into OfficeHome/ beside "
    "it), or unpack it yourself and set `datasets.office_home.path` to the folder OfficeHomeDataset_10072016 "
    "(holding Art/, Clipart/, Product/ and 'Real World'/, each with <class>/*.jpg)"
)

# No sha256 or size is published for this file: trusted on first use (the downloader records the sha256 it
# saw). md5 b1c14819770c4448fd5b6d931031c91c is given for it by a public torchvision-style loader; the Google
# Drive file id is the one the dataset page links to.
SOURCES = (
    Source(
        "https://drive.usercontent.google.com/download?id=0B81rNlvomiwed0V1YUxQdC1uOTg&export=download&confirm=t",
        sha256=None,
        size=None,
        filename="OfficeHomeDataset_10072016.zip",
        mirrors=("https://drive.google.com/uc?export=download&id=0B81rNlvomiwed0V1YUxQdC1uOTg",),
    ),
)

FAMILY = office.Family(
    name=NAME,
    domains=(
        office.Domain("Ar", ("Art",)),
        office.Domain("Cl", ("Clipart",)),
        office.Domain("Pr", ("Product",)),
        office.Domain("Rw", ("Real World", "Real_World")),
    ),
    classes=CLASSES,
    source=SOURCES[0],
    manual=MANUAL,
    unpack_to="OfficeHome",
    top="OfficeHomeDataset_10072016",
    images=None,
)
TASKS = FAMILY.tasks

Options = office.Options


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download ``OfficeHomeDataset_10072016.zip`` into ``directory``, unpack it into ``OfficeHome/``; return the
    ``OfficeHomeDataset_10072016`` folder inside."""
    return office.fetch(FAMILY, directory, sources, progress)


def check_root(root: Path) -> None:
    """Refuse a root without ``Art``, ``Clipart``, ``Product`` or ``Real World`` (DataError naming it)."""
    office.check_root(FAMILY, root)


def build(options: Options, root: Path | None) -> dict[str, Split | tuple[Split, ...]]:
    """One :class:`Split` per domain (Ar, Cl, Pr, Rw) per split; see :func:`mtlrepro.data._office.build`."""
    return dict(office.build(FAMILY, options, root))


def describe(options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: archive and image digests, library versions, split sizes per domain."""
    return office.describe(FAMILY, options, root)
