"""``celeba``: CelebA (Liu et al., 2015), 40 binary face attributes = 40 tasks on the same images.

RW App. C.2 (Table 7): 202,599 aligned face images with 40 attribute annotations, split 162,770 / 19,867 /
19,962 for training / validation / testing (CelebA's official partition), one binary classification task per
attribute, a shared ResNet-18, "all the images are resized to 64x64".

Raw files, as CelebA distributes them and :class:`torchvision.datasets.CelebA` reads them (its ``file_list``
names them with their Google Drive ids and md5s):

- ``img_align_celeba.zip``: ``img_align_celeba/000001.jpg`` ... ``202599.jpg``, the aligned and cropped
  178x218 (width x height) JPEGs. It is read in place, member by member, not unpacked (202,599 small files);
  a folder ``img_align_celeba/`` holding the unpacked images is read instead when the zip is absent;
- ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one line per image:
  its file name and 40 values in {-1, 1}, separated by runs of spaces (torchvision reads it with
  ``csv.reader(delimiter=" ", skipinitialspace=True)`` and ``header=1``); targets are ``(v + 1) / 2`` in {0, 1},
  as torchvision maps them;
- ``list_eval_partition.txt``: one line per image, its file name and 0 (train), 1 (val) or 2 (test).

Preprocessing (the paper says only "resized to 64x64"; LibMTL has no CelebA loader): the whole aligned image
is resized directly to ``size`` x ``size`` (bilinear, Pillow, antialiased), without a crop and without keeping
the aspect ratio, as the CelebA loader of Sener & Koltun's MGDA code (``multi_task/loaders/celeba_loader.py``,
``imresize`` of the full image to ``img_size``) does; stored as uint8.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlrepro.data import SPLITS, Split, download
from mtlrepro.data._images import library_versions, load_images, tree_sha256
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.tasks import BINARY, Task, check_target

NAME = "celeba"
ENCODER = "resnet18"
STAND_IN = None
MULTI_INPUT = False

#: the attributes, in the order of ``list_attr_celeba.txt``'s header line (the tasks' names)
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
TASKS = tuple(Task(name, BINARY) for name in ATTRIBUTES)

IMAGES_ZIP = "img_align_celeba.zip"
IMAGES_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
#: split -> its code in ``list_eval_partition.txt`` (torchvision's ``split_map``)
PARTITION = {"train": 0, "val": 1, "test": 2}

MANUAL = (
    "CelebA is on Google Drive, which often refuses scripted downloads (quota): from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive link) download Img/img_align_celeba.zip, "
    "Anno/list_attr_celeba.txt and Eval/list_eval_partition.txt and put the three files side by side in the "
    "download directory, or in a folder named by `datasets.celeba.path` (where the images may also be unzipped "
    "as img_align_celeba/)"
)


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _drive_direct(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# Google Drive ids: torchvision's CelebA.file_list. sha256 and sizes: tensorflow-datasets'
# url_checksums/celeb_a.txt (the same Drive ids; torchvision's md5s: 00d2c5bc6d35e252742224ab0c1e8fcb,
# 75e246fa4810816ffd6ee81facbd244c, d32c9cbf5e040fd4025c592c306e6668). Drive's direct-download endpoint comes
# first: the plain ``uc`` link answers a large file with a virus-scan web page, which fails the checksum, and a
# checksum failure is final (the mirrors are tried only after network errors).
SOURCES = (
    Source(
        _drive_direct("0B7EVK8r0v71pZjFTYXZWM3FlRnM"),
        sha256="46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74",
        size=1443490838,
        filename=IMAGES_ZIP,
        mirrors=(_drive("0B7EVK8r0v71pZjFTYXZWM3FlRnM"),),
    ),
    Source(
        _drive_direct("0B7EVK8r0v71pblRyaVFSWGxPY0U"),
        sha256="f0e5da289d5ccf75ffe8811132694922b60f2af59256ed362afa03fefba324d0",
        size=26721026,
        filename=ATTR_FILE,
        mirrors=(_drive("0B7EVK8r0v71pblRyaVFSWGxPY0U"),),
    ),
    Source(
        _drive_direct("0B7EVK8r0v71pY0NSMzRuSXJEVkk"),
        sha256="fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7",
        size=2836386,
        filename=PARTITION_FILE,
        mirrors=(_drive("0B7EVK8r0v71pY0NSMzRuSXJEVkk"),),
    ),
)


@dataclass(frozen=True)
class Options:
    """Preprocessing options: ``size``, the side of the square images (RW App. C.2: 64)."""

    size: int = 64

    def __post_init__(self) -> None:
        require(self.size >= 1, "size", self.size, "must be >= 1")


# --------------------------------------------------------------------------- raw files


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download the three raw files into ``directory`` (skipping intact ones) and return it.

    The image zip is read in place by :func:`build`, so nothing is unpacked.
    """
    directory = Path(directory)
    for source in sources:
        download.fetch(source, directory, manual=MANUAL, dataset=NAME, progress=progress)
    check_root(directory)
    return directory


def check_root(root: Path) -> None:
    """Refuse a root lacking a raw file: :class:`DataError` naming the first missing one and the manual step."""
    root = Path(root)
    for name in (ATTR_FILE, PARTITION_FILE):
        if not (root / name).is_file():
            raise DataError(f"{NAME}: {root / name} is missing: {MANUAL}")
    if not (root / IMAGES_ZIP).is_file() and not (root / IMAGES_DIR).is_dir():
        raise DataError(
            f"{NAME}: {root / IMAGES_ZIP} (or the unzipped folder {root / IMAGES_DIR}) is missing: {MANUAL}"
        )


def _lines(path: Path) -> list[str]:
    """The non-empty lines of a text file (``\\n`` or ``\\r\\n``); DataError if it cannot be read."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{NAME}: cannot read {path}: {err}") from None
    return [line for line in text.splitlines() if line.strip()]


def read_attributes(path: Path) -> tuple[list[str], np.ndarray]:
    """``list_attr_celeba.txt``: file names and attributes as uint8 0/1 ``[N x 40]`` (from -1/1, torchvision's map).

    Checks the image count of line 1, the 40 names of line 2 (they must be :data:`ATTRIBUTES`, in order) and
    every row (a name and 40 values in {-1, 1}); :class:`DataError` naming the file and the line otherwise.
    """
    lines = _lines(path)
    if len(lines) < 2:
        raise DataError(f"{NAME}: {path} has {len(lines)} lines, not a count, a header and one line per image")
    try:
        count = int(lines[0])
    except ValueError:
        raise DataError(f"{NAME}: {path} line 1 is {lines[0]!r}, not the number of images") from None
    header = lines[1].split()
    if tuple(header) != ATTRIBUTES:
        diff = next((i for i, (a, b) in enumerate(zip(header, ATTRIBUTES, strict=False)) if a != b), None)
        what = f"{len(header)} names" if diff is None else f"column {diff + 1} is {header[diff]!r}"
        raise DataError(f"{NAME}: {path} line 2: {what}, expected the 40 CelebA attributes starting {ATTRIBUTES[0]}")
    names: list[str] = []
    values = np.empty((len(lines) - 2, len(ATTRIBUTES)), dtype=np.int8)
    for i, line in enumerate(lines[2:]):
        fields = line.split()
        if len(fields) != len(ATTRIBUTES) + 1 or any(v not in ("-1", "1") for v in fields[1:]):
            raise DataError(
                f"{NAME}: {path} line {i + 3}: expected a file name and {len(ATTRIBUTES)} values -1 or 1, "
                f"got {line[:80]!r}"
            )
        names.append(fields[0])
        values[i] = [int(v) for v in fields[1:]]
    if count != len(names):
        raise DataError(f"{NAME}: {path} line 1 announces {count} images but {len(names)} lines follow")
    return names, ((values + 1) // 2).astype(np.uint8)


def read_partition(path: Path) -> tuple[list[str], np.ndarray]:
    """``list_eval_partition.txt``: file names and split codes (0 train, 1 val, 2 test) as int8 ``[N]``."""
    names: list[str] = []
    codes: list[int] = []
    for i, line in enumerate(_lines(path)):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{NAME}: {path} line {i + 1}: expected a file name and 0, 1 or 2, got {line[:80]!r}")
        names.append(fields[0])
        codes.append(int(fields[1]))
    return names, np.asarray(codes, dtype=np.int8)


def _images(root: Path, names: Sequence[str]) -> Iterator[tuple[str, Path | bytes]]:
    """``(name, encoded image)`` of every file in ``names``, from the zip (in place) or the unzipped folder."""
    archive = root / IMAGES_ZIP
    if not archive.is_file():
        for name in names:
            path = root / IMAGES_DIR / name
            if not path.is_file():
                raise DataError(f"{NAME}: image {path} is missing")
            yield str(path), path
        return
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in names:
                member = f"{IMAGES_DIR}/{name}"
                try:
                    data = zipped.read(member)
                except KeyError:
                    raise DataError(f"{NAME}: {archive} has no member {member}") from None
                yield f"{archive}:{member}", data
    except zipfile.BadZipFile as err:
        raise DataError(f"{NAME}: {archive} is damaged ({err}): delete it and download it again") from None


@dataclass(frozen=True)
class _Table:
    """The annotation files joined: per partition row, its file name, split code and attributes."""

    names: list[str]
    codes: np.ndarray
    attributes: np.ndarray


def _read(root: Path) -> _Table:
    """Read and join the two annotation files by file name, in the partition file's order."""
    attr_names, attributes = read_attributes(root / ATTR_FILE)
    names, codes = read_partition(root / PARTITION_FILE)
    row = {name: i for i, name in enumerate(attr_names)}
    missing = next((n for n in names if n not in row), None)
    if missing is not None:
        raise DataError(f"{NAME}: {root / ATTR_FILE} has no line for {missing}, listed in {root / PARTITION_FILE}")
    if len(row) != len(names):
        extra = next(n for n in attr_names if n not in set(names))
        raise DataError(f"{NAME}: {root / PARTITION_FILE} has no line for {extra}, listed in {root / ATTR_FILE}")
    return _Table(names, codes, attributes[[row[n] for n in names]])


# --------------------------------------------------------------------------- build and describe


def build(options: Options, root: Path | None) -> dict[str, Split]:
    """The official train/val/test splits (RW App. C.2); pure and deterministic.

    Every split: ``x`` uint8 ``[N x 3 x size x size]``, ``y`` the 40 attribute targets (uint8 0/1 ``[N]`` each,
    in :data:`ATTRIBUTES` order) and ``source`` int64 ``[N x 1]``, the image's line (0-based) in
    ``list_eval_partition.txt``; images in that file's order.
    """
    if root is None:
        raise DataError(f"{NAME} needs its raw data: give a download directory or `datasets.{NAME}.path`")
    root = Path(root)
    check_root(root)
    table = _read(root)
    splits: dict[str, Split] = {}
    for split in SPLITS:
        rows = np.flatnonzero(table.codes == PARTITION[split])
        if len(rows) == 0:
            raise DataError(f"{NAME}: {root / PARTITION_FILE} assigns no image to the {split} split")
        names = [table.names[i] for i in rows]
        x = load_images(_images(root, names), len(names), options.size)
        y = tuple(torch.from_numpy(np.ascontiguousarray(table.attributes[rows, k])) for k in range(len(ATTRIBUTES)))
        for task, target in zip(TASKS, y, strict=True):
            check_target(task, target, len(rows))
        splits[split] = Split(x=x, y=y, source=torch.from_numpy(rows.astype(np.int64)).reshape(-1, 1))
    return splits


def describe(options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: sha256 of the raw files (a digest of the images when unzipped), versions, split sizes."""
    if root is None:
        raise DataError(f"{NAME} needs its raw data: give a download directory or `datasets.{NAME}.path`")
    root = Path(root)
    check_root(root)
    table = _read(root)
    files = {name: download.sha256_file(root / name) for name in (ATTR_FILE, PARTITION_FILE)}
    if (root / IMAGES_ZIP).is_file():
        files[IMAGES_ZIP] = download.sha256_file(root / IMAGES_ZIP)
    else:
        files[IMAGES_DIR + "/"] = tree_sha256(root, [root / IMAGES_DIR / n for n in table.names])
    return {
        "source": "CelebA (Liu et al., 2015), aligned and cropped images, official partition",
        "files_sha256": files,
        "attributes": list(ATTRIBUTES),
        "split_sizes": {s: int((table.codes == PARTITION[s]).sum()) for s in SPLITS},
        "positive_rate": {
            s: [round(float(v), 6) for v in table.attributes[table.codes == PARTITION[s]].mean(axis=0)]
            for s in SPLITS
            if (table.codes == PARTITION[s]).any()
        },
        "versions": library_versions(),
        "stand_in": STAND_IN,
    }
