"""``cityscapes``: CityScapes as MTAN preprocessed it (128 x 256), with 7-class segmentation and depth.

The RW paper (App. C.1, Table 6) trains on CityScapes (Cordts et al., 2016): 2,975 training and 500 test
images (CityScapes' validation images; its test labels are not public), resized to 128 x 256, with two tasks:
7-class semantic segmentation and depth estimation. It uses LibMTL's ``examples/cityscapes``, which reads
MTAN's preprocessed release (LibMTL's ``examples/cityscapes/README.md`` cites MTAN for it; ``lorenmt/mtan``'s
README links the 128 x 256 ``cityscapes2.zip``, "2, 7, and 19-class semantic labels ... and (inverse) depth
labels"). LibMTL's ``examples/cityscapes/create_dataset.py`` reads ``train/`` (2,975) and ``val/`` (500), each
with ``image/`` (float ``[128 x 256 x 3]`` in 0..1), a label folder (float ``[128 x 256]``, classes 0..6,
-1 = unlabelled) and ``depth/`` (``[128 x 256 x 1]``, inverse depth, 0 = missing), one ``<i>.npy`` per example.
The release names the 7-class folder ``label_7`` (beside ``label_2`` and ``label_19``; loaders adapted from
MTAN read it there); LibMTL's re-packaged folder names it ``label``, accepted when ``label_7`` is absent.
Reading, checks, storage and augmentation are shared with NYUv2 (:mod:`mtlrepro.data._npy_scenes`).

The class names of the 7 ids are not published with the release (MTAN's preprocessing code is lost, its README
says), so the task carries none.

Splits: no validation split in the papers; ``val_fraction`` (default 10 %, 298 images) of the 2,975 training
images, drawn with ``split_seed``, are held out for model selection; test = the 500 images of ``val/``.

The archive's publisher gives no checksum or size: :data:`SOURCES` declares none and the downloader trusts the
file on first use, recording the sha256 it saw (``describe`` records it as well).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlrepro.data import Split, _npy_scenes
from mtlrepro.data._npy_scenes import Family, Options, Target
from mtlrepro.data.download import Source
from mtlrepro.tasks import Task

NAME = "cityscapes"
ENCODER = "deeplab_resnet50"
STAND_IN = None
MULTI_INPUT = False

TASKS = (Task("segmentation", "segmentation", n_classes=7), Task("depth", "depth"))

# The 128 x 256 link of lorenmt/mtan's README ("651MB"; ``?dl=0`` there, ``?dl=1`` makes Dropbox send the file
# itself). No sha256 or exact size is published (none found in public code either): both are None, the file is
# trusted on first use and its sha256 recorded.
SOURCES = (Source(url="https://www.dropbox.com/s/lg2ktu7o8hzwf99/cityscapes2.zip?dl=1", sha256=None, size=None),)

MANUAL = (
    "download cityscapes2.zip (MTAN's preprocessed CityScapes at 128x256, about 651 MB) from the Dropbox link in "
    "the README of https://github.com/lorenmt/mtan and put it in the download directory, or unzip it and set "
    "`datasets.cityscapes.path` to the folder holding train/ and val/ (each with image/, label_7/ and depth/ "
    "of <i>.npy files; LibMTL's copy, linked from its examples/cityscapes/README.md, with label/, works too)"
)

FAMILY = Family(
    name=NAME,
    source=SOURCES[0],
    unpack_to="cityscapes2",
    targets=(Target(TASKS[0], ("label_7", "label")), Target(TASKS[1], ("depth",))),
    resolution=(128, 256),
    sizes=(2975, 500),
    manual=MANUAL,
)


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download ``cityscapes2.zip`` into ``directory`` (skipped when intact), unpack it once; return the root."""
    return _npy_scenes.fetch(FAMILY, directory, sources, progress)


def check_root(root: Path) -> None:
    """Refuse a tree lacking a file (:class:`~mtlrepro.errors.DataError` naming the first missing one)."""
    _npy_scenes.check_root(FAMILY, root)


def build(options: Options, root: Path | None) -> dict[str, Split]:
    """Train (2,975 less the held-out part) / val (seeded part of train) / test (500) splits; pure and seeded.

    ``y`` = (labels int16 ``[N x H x W]``, depth float32 ``[N x 1 x H x W]``); ``x`` uint8 ``[N x 3 x H x W]``
    (:func:`mtlrepro.data._npy_scenes.build`).
    """
    return _npy_scenes.build(FAMILY, options, root)


def describe(options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: archive and tree sha256, versions, split sizes (:func:`mtlrepro.data._npy_scenes.describe`)."""
    return _npy_scenes.describe(FAMILY, options, root)


def augment(x: Tensor, y: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Random scale-crop (scales 1, 1.2, 1.5; depth divided by the scale) and horizontal flip: MTAN's NYUv2
    augmentation applied to CityScapes as loaders adapted from MTAN do (a ``RandomScaleCropCityScapes`` crediting
    ``lorenmt/mtan`` issue 34); LibMTL's CityScapes example does not augment
    (:func:`mtlrepro.data._npy_scenes.augment`)."""
    return _npy_scenes.augment(x, y, [task.kind for task in TASKS], generator)
