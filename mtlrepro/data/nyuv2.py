"""``nyuv2``: NYUv2 as MTAN preprocessed it, with 13-class segmentation, depth and surface normals.

The RW paper (Sec. 5.2, Table 1) and ExcessMTL (Sec. 4.1, App. C.1) train on NYUv2 (Silberman et al., 2012):
795 training and 654 test images, resized to 288 x 384, with three tasks: 13-class semantic segmentation,
depth estimation and surface-normal prediction. Both use the release of MTAN (Liu et al., 2019): the
``nyuv2.zip`` linked from ``lorenmt/mtan``'s ``README.md`` and LibMTL's ``examples/nyu/README.md``, read by
``im2im_pred/create_dataset.py`` (MTAN) and ``examples/nyu/create_dataset.py`` (LibMTL): ``train/`` (795) and
``val/`` (654, the test images) each hold ``image/``, ``label/``, ``depth/`` and ``normal/`` with one
``<i>.npy`` per example: image float ``[288 x 384 x 3]`` in 0..1, label float ``[288 x 384]`` with classes
0..12 and -1 = unlabelled, depth ``[288 x 384 x 1]`` (0 = missing), normals ``[288 x 384 x 3]`` (unit vectors,
zero = missing; MTAN's README: the precomputed normals of Eigen & Fergus). Reading, checks, storage and the
augmentation are shared with CityScapes (:mod:`mtlrepro.data._npy_scenes`).

Classes: the 13-class mapping of Couprie et al. (2013) as published in ``ankurhanda/nyuv2-meta-data`` (which
MTAN's README points to), ids 1..13 there, 0..12 here: :data:`CLASSES`.

Splits: NYUv2 has no validation split; ``val_fraction`` (default 10 %, 80 images) of the 795 training images,
drawn with ``split_seed``, are held out for model selection; test = the 654 test images.

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

NAME = "nyuv2"
ENCODER = "deeplab_resnet50"
STAND_IN = None
MULTI_INPUT = False

#: the 13 classes (Couprie et al., 2013) in the order of their ids in ``ankurhanda/nyuv2-meta-data``
CLASSES = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)

TASKS = (
    Task("segmentation", "segmentation", n_classes=len(CLASSES), labels=CLASSES),
    Task("depth", "depth"),
    Task("normal", "normals"),
)

# The link of lorenmt/mtan's README (``?dl=0`` there, ``?dl=1`` makes Dropbox send the file itself). Neither
# MTAN nor LibMTL publishes a sha256 or a size (none found in public code either): both are None, the file is
# trusted on first use and its sha256 recorded.
SOURCES = (Source(url="https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=1", sha256=None, size=None),)

MANUAL = (
    "download nyuv2.zip (MTAN's preprocessed NYUv2, about 420 MB) from the Dropbox link in the README of "
    "https://github.com/lorenmt/mtan (also linked from LibMTL's examples/nyu/README.md) and put it in the download "
    "directory, or unzip it and set `datasets.nyuv2.path` to the folder holding train/ and val/ (each with "
    "image/, label/, depth/ and normal/ of <i>.npy files)"
)

FAMILY = Family(
    name=NAME,
    source=SOURCES[0],
    unpack_to="nyuv2",
    targets=(Target(TASKS[0], ("label",)), Target(TASKS[1], ("depth",)), Target(TASKS[2], ("normal",))),
    resolution=(288, 384),
    sizes=(795, 654),
    manual=MANUAL,
)


def fetch(directory: Path, *, sources: Sequence[Source] = SOURCES, progress: bool = False) -> Path:
    """Download ``nyuv2.zip`` into ``directory`` (skipped when intact), unpack it once; return the tree's root."""
    return _npy_scenes.fetch(FAMILY, directory, sources, progress)


def check_root(root: Path) -> None:
    """Refuse a tree lacking a file (:class:`~mtlrepro.errors.DataError` naming the first missing one)."""
    _npy_scenes.check_root(FAMILY, root)


def build(options: Options, root: Path | None) -> dict[str, Split]:
    """Train (795 less the held-out part) / val (seeded part of train) / test (654) splits; pure and seeded.

    ``y`` = (labels int16 ``[N x H x W]``, depth float32 ``[N x 1 x H x W]``, normals float32
    ``[N x 3 x H x W]``); ``x`` uint8 ``[N x 3 x H x W]`` (:func:`mtlrepro.data._npy_scenes.build`).
    """
    return _npy_scenes.build(FAMILY, options, root)


def describe(options: Options, root: Path | None) -> dict[str, Any]:
    """Provenance: archive and tree sha256, versions, split sizes (:func:`mtlrepro.data._npy_scenes.describe`)."""
    return _npy_scenes.describe(FAMILY, options, root)


def augment(x: Tensor, y: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, ...]]:
    """MTAN's train-time random scale-crop (scales 1, 1.2, 1.5; depth divided by the scale) and horizontal flip
    (normals' x negated), as ExcessMTL (App. C.1) uses it (:func:`mtlrepro.data._npy_scenes.augment`)."""
    return _npy_scenes.augment(x, y, [task.kind for task in TASKS], generator)
