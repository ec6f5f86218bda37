"""The preprocessed NYUv2 and CityScapes releases (one ``.npy`` file per example and task) and their augmentation.

MTAN (Liu et al., 2019; ``lorenmt/mtan``, ``README.md`` and ``im2im_pred/create_dataset.py``) published NYUv2 and
CityScapes resized and preprocessed into trees of NumPy files, and LibMTL (``median-research-group/LibMTL``,
``examples/nyu/create_dataset.py``, ``examples/cityscapes/create_dataset.py``), whose code the RW paper's
experiments use, reads the same trees. Their layout, as those readers open it::

    <root>/train/image/<i>.npy   float [H x W x 3], RGB in 0..1   (i = 0 .. N-1, N = number of files in image/)
    <root>/train/label/<i>.npy   float [H x W], class ids 0..C-1, -1 = unlabelled
    <root>/train/depth/<i>.npy   float [H x W x 1], 0 = no depth
    <root>/train/normal/<i>.npy  float [H x W x 3], unit normals, (0, 0, 0) = none  (NYUv2 only)
    <root>/val/...               the same for the evaluation images

Both readers load ``image``, ``depth`` and ``normal`` channel-last and move the channel axis first
(``np.moveaxis(..., -1, 0)``); they count examples as the ``*.npy`` files of ``image/`` and open ``<i>.npy`` for
``i`` in ``range(N)``. The ``val`` folder is the papers' *test* set (NYUv2's 654 test images, CityScapes' 500
validation images, whose test labels are not public). The CityScapes release (``cityscapes2.zip``) holds
``label_2``, ``label_7`` and ``label_19`` (2, 7 and 19 classes, MTAN README); the papers' 7-class task reads
``label_7`` (as loaders adapted from MTAN do); LibMTL's re-packaged folder calls
it ``label``, which is accepted when ``label_7`` is absent.

Stored (:func:`build`): images uint8 ``[N x 3 x H x W]`` = ``round(255 * image)``, labels int16 with -1,
depth float32 ``[N x 1 x H x W]`` and normals float32 ``[N x 3 x H x W]`` channel-first, invalid values kept
(label -1, depth 0, zero normal; :mod:`mtlrepro.tasks`).

Validation: neither paper has a validation split (RW Sec. 5.2 and App. C.1: 795/654 and 2,975/500 train/test
images). Model selection must not look at the test images, so a seeded part of the *training* folder
(``Options.val_fraction``, default 10 %) is held out as validation; the test split is the whole ``val`` folder.

Augmentation (:func:`augment`): MTAN's ``RandomScaleCrop`` plus a random horizontal flip
(``im2im_pred/create_dataset.py`` of ``lorenmt/mtan``, the same class in LibMTL's ``examples/nyu``); see
:func:`apply_crops` for the details.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrepro.data import Split, download
from mtlrepro.data.download import Source
from mtlrepro.errors import DataError
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import DEPTH, NORMALS, SEGMENTATION, Task, check_target

#: raw folders of a release: the training images, and the evaluation images (the papers' test set)
TRAIN_FOLDER, TEST_FOLDER = "train", "val"
IMAGE_FOLDER = "image"
#: scales of MTAN's ``RandomScaleCrop`` (``scale=[1.0, 1.2, 1.5]``)
SCALES = (1.0, 1.2, 1.5)
#: how far an image value may lie outside 0..1 (float rounding in the release) before it is refused
_IMAGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Target:
    """One task's folder in a release: the task, and the folder names that may hold it (first match wins)."""

    task: Task
    folders: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """What distinguishes one release: its name, archive, task folders, resolution and published sizes.

    ``unpack_to`` is the folder (in the download directory) the archive is unpacked into; ``resolution`` is
    the release's ``(height, width)`` and ``sizes`` its published (train, test) numbers of images.
    """

    name: str
    source: Source
    unpack_to: str
    targets: tuple[Target, ...]
    resolution: tuple[int, int]
    sizes: tuple[int, int]
    manual: str

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks, in the order of the targets."""
        return tuple(target.task for target in self.targets)


@dataclass(frozen=True)
class Options:
    """Preprocessing options of both releases.

    ``size``: ``(height, width)`` to downscale every example to for quick runs (``None``: the release's
    resolution, 288 x 384 for NYUv2 and 128 x 256 for CityScapes, RW Sec. 5.2 and App. C.1); images are resized
    with antialiased bilinear interpolation, targets with nearest-exact so labels, invalid depth (0) and
    invalid normals (0) stay what they are. ``val_fraction``: the part of the training folder held out,
    seeded by ``split_seed``, as validation split (the papers have none; default 10 %).
    """

    size: tuple[int, int] | None = None
    val_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.size is not None:
            size = self.size
            ok = (
                isinstance(size, (list, tuple))
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            )
            require(ok, "size", size, "must be [height, width], two positive integers, or null")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        require(self.split_seed >= 0, "split_seed", self.split_seed, "must be >= 0")


# --------------------------------------------------------------------------- the tree on disk


def resolve_root(root: Path) -> Path:
    """The folder holding ``train/`` and ``val/``: ``root`` itself, or its only sub-folder holding ``train/``.

    The archives unpack into one enclosing folder (``nyuv2/``, ``cityscapes2/``, as the READMEs' data paths
    suggest); a user may point ``datasets.<name>.path`` at either level.
    """
    root = Path(root)
    if (root / TRAIN_FOLDER).is_dir() or not root.is_dir():
        return root
    inner = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / TRAIN_FOLDER).is_dir()]
    return inner[0] if len(inner) == 1 else root


def target_folder(target: Target, root: Path) -> str:
    """The folder of ``target`` in this tree: the first of its names present under ``train/`` (else the first)."""
    for folder in target.folders:
        if (root / TRAIN_FOLDER / folder).is_dir():
            return folder
    return target.folders[0]


def _folders(family: Family, root: Path) -> list[str]:
    """The folders read per example: ``image`` then one per task."""
    return [IMAGE_FOLDER, *(target_folder(target, root) for target in family.targets)]


def count_examples(split_dir: Path) -> int:
    """Number of examples of a raw folder: its ``image/*.npy`` files (as MTAN's and LibMTL's readers count)."""
    images = split_dir / IMAGE_FOLDER
    return sum(1 for _ in images.glob("*.npy")) if images.is_dir() else 0


def check_root(family: Family, root: Path) -> None:
    """Refuse a tree lacking a file: :class:`DataError` naming the first expected file missing, and the manual step.

    Expected: ``train/`` and ``val/``, each with ``<folder>/<i>.npy`` for every folder (``image`` and the
    tasks') and every ``i`` below the number of ``image/*.npy`` files (at least one).
    """
    root = resolve_root(Path(root))
    for split in (TRAIN_FOLDER, TEST_FOLDER):
        n = max(count_examples(root / split), 1)
        for folder in _folders(family, root):
            for i in range(n):
                path = root / split / folder / f"{i}.npy"
                if not path.is_file():
                    raise DataError(f"{family.name}: {path} is missing: {' '.join(family.manual.split())}")


def fetch(family: Family, directory: Path, sources: Sequence[Source], progress: bool) -> Path:
    """Download (or find) the archive in ``directory``, unpack it into ``directory/<unpack_to>``; return the root.

    Idempotent and offline once in place: an intact archive is not downloaded again and an existing unpacked
    folder is not unpacked again (:func:`mtlrepro.data.download.unpack` renames a complete unpack into place).
    """
    directory = Path(directory)
    archives = [
        download.fetch(source, directory, manual=family.manual, dataset=family.name, progress=progress)
        for source in sources
    ]
    root = resolve_root(download.unpack(archives[0], directory / family.unpack_to))
    check_root(family, root)
    return root


# --------------------------------------------------------------------------- reading and checking examples


def _load(path: Path) -> np.ndarray:
    """``np.load`` of one example file (no pickles); :class:`DataError` naming it when it cannot be read."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path} does not hold a numeric array (dtype {getattr(array, 'dtype', '?')})")
    return array


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"{path} {what}")


def _read_image(path: Path, shape: tuple[int, int]) -> Tensor:
    """An image file ``[H x W x 3]`` in 0..1 as float32 ``[3 x H x W]``."""
    array = _load(path)
    if array.shape != (*shape, 3):
        raise _bad(path, f"has shape {list(array.shape)}, expected {[*shape, 3]} (an RGB image of the release)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise _bad(path, "holds a non-finite pixel value")
    low, high = float(array.min()), float(array.max())
    if low < -_IMAGE_TOLERANCE or high > 1.0 + _IMAGE_TOLERANCE:
        raise _bad(path, f"holds pixel values in [{low:g}, {high:g}], expected floats in 0..1")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))


def _read_label(path: Path, shape: tuple[int, int], n_classes: int) -> Tensor:
    """A label file ``[H x W]`` (class ids as floats, -1 = unlabelled) as int16 ``[H x W]``."""
    array = _load(path)
    if array.shape != shape:
        raise _bad(path, f"has shape {list(array.shape)}, expected {list(shape)} (a label map of the release)")
    values = array.astype(np.float64)
    whole = np.isfinite(values) & (values == np.round(values))
    valid = whole & (values >= -1) & (values <= n_classes - 1)
    if not valid.all():
        bad = values[~valid][0]
        raise _bad(path, f"holds label {bad:g}; expected integers 0..{n_classes - 1} or -1 (unlabelled)")
    return torch.from_numpy(values.astype(np.int16))


def _read_depth(path: Path, shape: tuple[int, int]) -> Tensor:
    """A depth file ``[H x W x 1]`` (0 = no depth) as float32 ``[1 x H x W]``."""
    array = _load(path)
    if array.shape != (*shape, 1):
        raise _bad(path, f"has shape {list(array.shape)}, expected {[*shape, 1]} (a depth map of the release)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or float(array.min()) < 0:
        raise _bad(path, "holds a negative or non-finite depth (0 marks a missing one)")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))


def _read_normal(path: Path, shape: tuple[int, int]) -> Tensor:
    """A normals file ``[H x W x 3]`` (unit vectors, zero = none) as float32 ``[3 x H x W]``."""
    array = _load(path)
    if array.shape != (*shape, 3):
        raise _bad(path, f"has shape {list(array.shape)}, expected {[*shape, 3]} (a normal map of the release)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise _bad(path, "holds a non-finite normal")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))


def _resize_image(image: Tensor, size: tuple[int, int] | None) -> Tensor:
    """An image ``[3 x H x W]`` (0..1) resized to ``size`` (antialiased bilinear) and quantised to uint8."""
    if size is not None and tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return torch.round(image.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _resize_target(target: Tensor, size: tuple[int, int] | None) -> Tensor:
    """A target ``[C x H x W]`` or ``[H x W]`` resized to ``size`` by nearest-exact sampling (values kept)."""
    if size is None or tuple(target.shape[-2:]) == size:
        return target
    flat = target[None, None] if target.dim() == 2 else target[None]
    out = F.interpolate(flat.float(), size=size, mode="nearest-exact")[0]
    return (out[0] if target.dim() == 2 else out).to(target.dtype)


@dataclass
class RawSplit:
    """One raw folder read into memory: uint8 images and one stored target tensor per task."""

    x: Tensor
    y: tuple[Tensor, ...]


def read_folder(family: Family, root: Path, split: str, size: tuple[int, int] | None) -> RawSplit:
    """Read every example of the raw folder ``root/split`` (``train`` or ``val``), resized to ``size`` if given.

    All files must have the release's layout (:mod:`module docstring <mtlrepro.data._npy_scenes>`) and the
    shape of ``image/0.npy``; a bad file raises :class:`DataError` naming it and what is wrong.
    """
    folder = root / split
    n = count_examples(folder)
    if n == 0:
        raise DataError(f"{family.name}: {folder / IMAGE_FOLDER} holds no .npy file: {' '.join(family.manual.split())}")
    names = _folders(family, root)
    first = _load(folder / IMAGE_FOLDER / "0.npy")
    if first.ndim != 3:
        raise _bad(folder / IMAGE_FOLDER / "0.npy", f"has shape {list(first.shape)}, expected [height, width, 3]")
    shape = (int(first.shape[0]), int(first.shape[1]))
    out = size if size is not None else shape
    if out[0] > shape[0] or out[1] > shape[1]:
        raise DataError(
            f"{family.name}: option size {list(out)} is larger than the release's {list(shape)} "
            f"({folder / IMAGE_FOLDER / '0.npy'}): it only downscales"
        )
    x = torch.empty((n, 3, *out), dtype=torch.uint8)
    channels = {SEGMENTATION: None, DEPTH: 1, NORMALS: 3}
    ys = []
    for target in family.targets:
        c = channels[target.task.kind]
        dtype = torch.int16 if c is None else torch.float32
        ys.append(torch.empty((n, *out) if c is None else (n, c, *out), dtype=dtype))
    for i in range(n):
        x[i] = _resize_image(_read_image(folder / IMAGE_FOLDER / f"{i}.npy", shape), size)
        for t, (target, name) in enumerate(zip(family.targets, names[1:], strict=True)):
            path = folder / name / f"{i}.npy"
            if not path.is_file():
                raise DataError(f"{family.name}: {path} is missing: {' '.join(family.manual.split())}")
            if target.task.kind == SEGMENTATION:
                value = _read_label(path, shape, target.task.n_classes)
            elif target.task.kind == DEPTH:
                value = _read_depth(path, shape)
            else:
                value = _read_normal(path, shape)
            ys[t][i] = _resize_target(value, size)
    return RawSplit(x, tuple(ys))


def n_val(n: int, options: Options) -> int:
    """Number of training-folder examples held out as validation: ``round(val_fraction * n)``, in ``1..n-1``."""
    return min(max(round(options.val_fraction * n), 1), n - 1)


def split_train(n: int, options: Options, name: str) -> tuple[Tensor, Tensor]:
    """Seeded (train, val) positions into the ``n`` training-folder examples, each sorted.

    ``round(val_fraction * n)`` examples (at least 1, at most ``n - 1``) drawn by a :func:`torch.randperm`
    seeded from ``split_seed`` are held out as validation; the rest stay for training.
    """
    if n < 2:
        raise DataError(f"{name}: the training folder holds {n} example(s); a validation split needs at least 2")
    held_out = n_val(n, options)
    generator = torch.Generator().manual_seed(derive_seed(options.split_seed, f"{name}/val"))
    order = torch.randperm(n, generator=generator)
    return order[held_out:].sort().values, order[:held_out].sort().values


def build(family: Family, options: Options, root: Path | None) -> dict[str, Split]:
    """The train/val/test splits of a release: pure and seeded (same tree and options, bit-identical tensors).

    ``test`` is the whole ``val`` folder (the papers' test images); ``train`` and ``val`` partition the
    ``train`` folder (:func:`split_train`). ``source`` is int64 ``[N x 2]``: the raw folder (0 = ``train``,
    1 = ``val``) and the file index ``i`` of ``<folder>/<i>.npy`` of every example.
    """
    if root is None:
        raise DataError(f"{family.name} needs its raw data: give a download directory or `datasets.{family.name}.path`")
    root = resolve_root(Path(root))
    check_root(family, root)
    train_raw = read_folder(family, root, TRAIN_FOLDER, options.size)
    test_raw = read_folder(family, root, TEST_FOLDER, options.size)
    if train_raw.x.shape[-2:] != test_raw.x.shape[-2:]:
        raise DataError(
            f"{family.name}: images of {root / TRAIN_FOLDER} are {list(train_raw.x.shape[-2:])} but those of "
            f"{root / TEST_FOLDER} are {list(test_raw.x.shape[-2:])}"
        )
    train, val = split_train(len(train_raw.x), options, family.name)

    def part(raw: RawSplit, folder: int, index: Tensor | None) -> Split:
        if index is None:
            index = torch.arange(len(raw.x))
        source = torch.stack([torch.full_like(index, folder), index], dim=1)
        return Split(raw.x[index].clone(), tuple(y[index].clone() for y in raw.y), source)

    splits = {"train": part(train_raw, 0, train), "val": part(train_raw, 0, val), "test": part(test_raw, 1, None)}
    for split in splits.values():
        for task, target in zip(family.tasks, split.y, strict=True):
            check_target(task, target, len(split))
    return splits


def _tree_sha256(family: Family, root: Path) -> str:
    """sha256 over the relative path and the sha256 of every file the build reads, in a fixed order."""
    digest = hashlib.sha256()
    for split in (TRAIN_FOLDER, TEST_FOLDER):
        n = count_examples(root / split)
        for folder in _folders(family, root):
            for i in range(n):
                relative = f"{split}/{folder}/{i}.npy"
                digest.update(f"{relative}:{download.sha256_file(root / relative)}\n".encode())
    return digest.hexdigest()


def describe(family: Family, options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: the archive's sha256 (when beside the unpacked tree), a digest of the tree, versions, sizes."""
    if root is None:
        raise DataError(f"{family.name} needs its raw data: give a download directory or `datasets.{family.name}.path`")
    root = resolve_root(Path(root))
    check_root(family, root)
    archive = None
    for parent in (root.parent, root.parent.parent):
        candidate = parent / str(family.source.filename)
        if candidate.is_file():
            archive = {"file": candidate.name, "sha256": download.sha256_file(candidate)}
            break
    n_train = count_examples(root / TRAIN_FOLDER)
    held_out = n_val(n_train, options) if n_train >= 2 else 0
    return {
        "source": family.source.url,
        "declared_sha256": family.source.sha256,
        "archive": archive,
        "tree_sha256": _tree_sha256(family, root),
        "folders": _folders(family, root),
        "n_raw": {TRAIN_FOLDER: n_train, TEST_FOLDER: count_examples(root / TEST_FOLDER)},
        "n": {"train": n_train - held_out, "val": held_out, "test": count_examples(root / TEST_FOLDER)},
        "published_sizes": {"train": family.sizes[0], "test": family.sizes[1]},
        "resolution": list(options.size) if options.size is not None else list(family.resolution),
        "validation": f"{held_out} training-folder examples held out (val_fraction {options.val_fraction}, seeded)",
        "numpy_version": str(np.__version__),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "stand_in": None,
    }


# --------------------------------------------------------------------------- train-time augmentation


@dataclass(frozen=True)
class Crop:
    """One example's draw of :func:`draw_crops`: the scale, the crop window and whether to flip."""

    scale: float
    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crops(
    n: int, height: int, width: int, generator: torch.Generator, scales: Sequence[float] = SCALES
) -> list[Crop]:
    """Draw the scale-crop-flip of ``n`` examples of ``height x width`` pixels from ``generator`` (on its device).

    As MTAN's ``RandomScaleCrop``: a scale ``s`` uniformly from ``scales``, a window of ``int(H / s) x
    int(W / s)`` pixels at a uniform position (top in ``0..H - h``, left in ``0..W - w``), then a flip with
    probability 1/2 (``torch.rand(1) < 0.5``). Four uniforms per example, in one call.
    """
    draws = torch.rand(n, 4, generator=generator, device=generator.device, dtype=torch.float64).cpu().tolist()
    crops = []
    for r_scale, r_top, r_left, r_flip in draws:
        scale = float(scales[min(int(r_scale * len(scales)), len(scales) - 1)])
        h, w = int(height / scale), int(width / scale)
        top = min(int(r_top * (height - h + 1)), height - h)
        left = min(int(r_left * (width - w + 1)), width - w)
        crops.append(Crop(scale, top, left, h, w, r_flip < 0.5))
    return crops


def _window(tensor: Tensor, crop: Crop, size: tuple[int, int], mode: str) -> Tensor:
    """The crop window of ``tensor`` ``[C x H x W]`` resized back to ``size`` with ``mode`` (float computation)."""
    window = tensor[:, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    if crop.scale == 1.0:
        return window
    kwargs = {"align_corners": True} if mode == "bilinear" else {}
    return F.interpolate(window[None].float(), size=size, mode=mode, **kwargs)[0].to(tensor.dtype)


def apply_crops(
    x: Tensor, y: Sequence[Tensor], kinds: Sequence[str], crops: Sequence[Crop]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Apply the drawn ``crops`` to a batch: images ``x`` ``[B x 3 x H x W]`` (float) and targets ``y`` by ``kinds``.

    Per example, as MTAN's ``RandomScaleCrop`` and flip (``lorenmt/mtan`` ``im2im_pred/create_dataset.py``;
    LibMTL ``examples/nyu/create_dataset.py``): the window is resized back to ``H x W``, bilinearly with
    ``align_corners=True`` for the image and the normals, with ``nearest`` for labels and depth; depth is
    divided by the scale (the scene looks ``s`` times closer); on a flip every map is mirrored left-right and
    the normals' x component is negated. Invalid labels (-1) and depth (0) stay invalid (nearest sampling);
    like upstream, normals are not renormalised after the bilinear resize. A scale of 1 leaves an example as
    it is (upstream's resize to the same size is the identity). Tensors stay on their device and dtype.
    """
    _, _, h, w = x.shape
    xs: list[Tensor] = []
    ys: list[list[Tensor]] = [[] for _ in y]
    for i, crop in enumerate(crops):
        image = _window(x[i], crop, (h, w), "bilinear")
        xs.append(image.flip(-1) if crop.flip else image)
        for t, (kind, target) in enumerate(zip(kinds, y, strict=True)):
            if kind == SEGMENTATION:
                value = _window(target[i][None], crop, (h, w), "nearest")[0]
            elif kind == DEPTH:
                value = _window(target[i], crop, (h, w), "nearest") / crop.scale
            elif kind == NORMALS:
                value = _window(target[i], crop, (h, w), "bilinear")
            else:
                raise ValueError(f"cannot augment a target of kind {kind!r}")
            if crop.flip:
                value = value.flip(-1)
                if kind == NORMALS:
                    value = torch.cat([-value[:1], value[1:]])
            ys[t].append(value)
    return torch.stack(xs), tuple(torch.stack(parts) for parts in ys)


def augment(
    x: Tensor, y: Sequence[Tensor], kinds: Sequence[str], generator: torch.Generator
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """MTAN's random scale-crop and horizontal flip of a batch: :func:`draw_crops` then :func:`apply_crops`.

    Deterministic given ``generator``'s state; runs on the batch's device.
    """
    if x.dim() != 4 or any(target.shape[0] != x.shape[0] for target in y):
        raise ValueError(f"augment needs a batch [B x C x H x W] with B targets per task, got x {list(x.shape)}")
    crops = draw_crops(int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1]), generator)
    return apply_crops(x, y, kinds, crops)
