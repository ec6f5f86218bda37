"""``street_scenes``: rendered street views with exact 7-class segmentation and depth (stands in for CityScapes).

The RW paper (App. C.1, Table 6) trains on CityScapes (Cordts et al., 2016) with two tasks: 7-class semantic
segmentation (CityScapes' seven categories, as MTAN and LibMTL use them) and depth estimation. CityScapes
needs a registration and a download, so this module renders a synthetic stand-in whose targets are exact,
ray cast from known geometry (:mod:`mtlrepro.data._render`).

Every scene is a straight street seen from a car: road and sidewalks ("flat"), building blocks along both
sides and across the far end ("construction"), poles with signs ("object"), trees and grass ("nature"),
pedestrians ("human") and cars ("vehicle"); rays that hit nothing see the sky. :data:`CLASSES` follows
CityScapes' category ids without "void": flat, construction, object, nature, sky, human, vehicle. Sky pixels
are labelled "sky" and have depth 0 (invalid), as CityScapes' disparity maps have no value there.

The camera copies CityScapes' (focal length 2262.52 px at 2048 px width, ``camera/*.json``), scaled to the
output width, about 1.2 m above the road, looking along it.

Splits: CityScapes' test labels are not public; the papers use its 500 validation images as test set
(2,975 train / 500 test). Here all three splits are generated, each scene from its own seed, so they share
no scene; the val split plays the role of the seeded part of train the real module carves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtlrepro.data import SPLITS, Split
from mtlrepro.data._render import (
    Box,
    Camera,
    Cylinder,
    Light,
    Primitive,
    Quad,
    Render,
    Scene,
    Sphere,
    Surface,
    build_splits,
    hsv_albedo,
    provenance,
    scale_crop_flip,
)
from mtlrepro.options import require
from mtlrepro.tasks import Task

NAME = "street_scenes"
ENCODER = "small_dense"
MULTI_INPUT = False
STAND_IN = (
    "stand-in for CityScapes (RW paper App. C.1): ray-cast synthetic streets with exact targets, not the paper's data"
)

#: CityScapes' 7 categories (Cordts et al., 2016) without "void", in the order of their category ids
CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
FLAT, CONSTRUCTION, OBJECT, NATURE, SKY, HUMAN, VEHICLE = range(7)

TASKS = (
    Task("segmentation", "segmentation", n_classes=len(CLASSES), labels=CLASSES),
    Task("depth", "depth"),
)

#: CityScapes camera focal length in pixels at 2048 px image width (the dataset's ``camera/*.json``, fx)
CITYSCAPES_FOCAL_2048 = 2262.52

#: sky colour at the horizon and at the zenith (RGB in [0, 1])
_SKY_HORIZON, _SKY_ZENITH = np.array([0.85, 0.9, 0.95]), np.array([0.35, 0.55, 0.9])


@dataclass(frozen=True)
class Options:
    """Generation options: numbers of scenes per split, image size and the seed of every scene.

    The defaults are small for a CPU demo: 600/150/150 scenes at 32 x 64 pixels, CityScapes' 1:2 aspect
    (its experiments use 128 x 256, RW App. C.1).
    """

    n_train: int = 600
    n_val: int = 150
    n_test: int = 150
    height: int = 32
    width: int = 64
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("height", "width"):
            require(8 <= getattr(self, name) <= 1024, name, getattr(self, name), "must be in [8, 1024]")


def _look(
    rng: np.random.Generator, cls: int, hue: float, sat: float, val: float, texture: tuple[str, float]
) -> Surface:
    """A surface of class ``cls``: HSV albedo with a little per-object jitter, and a procedural texture."""
    albedo = hsv_albedo(hue + rng.uniform(-0.03, 0.03), sat, float(np.clip(val * rng.uniform(0.85, 1.1), 0, 1)))
    return Surface(cls, albedo, texture)


def make_scene(rng: np.random.Generator, options: Options = Options()) -> Scene:
    """One random street, its camera and light (see the module docstring); all draws from ``rng``."""
    road, walk = rng.uniform(3.0, 5.0), rng.uniform(1.5, 3.0)
    length = rng.uniform(40.0, 70.0)
    curb = road + walk
    up, along = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)
    prims: list[Primitive] = [
        Quad(_look(rng, FLAT, 0.6, 0.05, 0.35, ("plain", 0.0)), (0.0, 0.0, length / 2), up, along, road, length / 2)
    ]
    walk_look = _look(rng, FLAT, 0.08, 0.1, 0.7, ("checks", 1.5))
    grass_look = _look(rng, NATURE, 0.3, 0.6, 0.5, ("checks", 0.7))
    for s in (-1.0, 1.0):
        prims.append(Quad(walk_look, (s * (road + walk / 2), 0.0, length / 2), up, along, walk / 2, length / 2))
        prims.append(Quad(grass_look, (s * (curb + 10.0), 0.0, length / 2), up, along, 10.0, length / 2))
    marking = Surface(FLAT, (0.95, 0.95, 0.9))
    for z in np.arange(rng.uniform(0.0, 6.0), length, 6.0):
        prims.append(Quad(marking, (0.0, 0.001, z + 1.5), up, along, 0.08, 1.5))

    # building blocks along both sides, with gaps, and one across the far end
    for s in (-1.0, 1.0):
        z = rng.uniform(-5.0, 3.0)
        setback = rng.uniform(0.0, 3.0)
        while z < length:
            size = rng.uniform(6.0, 16.0)
            look = _look(rng, CONSTRUCTION, rng.uniform(0.02, 0.12), rng.uniform(0.1, 0.4), 0.75, ("checks", 0.5))
            x0, x1 = sorted((s * (curb + setback), s * (curb + setback + 12.0)))
            prims.append(Box(look, (x0, 0.0, z), (x1, rng.uniform(5.0, 20.0), min(z + size, length))))
            z += size + (rng.uniform(3.0, 12.0) if rng.random() < 0.5 else 0.0)
    far = _look(rng, CONSTRUCTION, rng.uniform(0.02, 0.12), rng.uniform(0.1, 0.4), 0.75, ("checks", 0.5))
    prims.append(Box(far, (-curb - 30.0, 0.0, length), (curb + 30.0, rng.uniform(3.0, 15.0), length + 10.0)))

    # street furniture on the sidewalks: poles with signs, trees, pedestrians
    for _ in range(rng.integers(1, 6)):
        s, z = rng.choice([-1.0, 1.0]), rng.uniform(4.0, length - 2.0)
        x, h = s * (road + 0.4), rng.uniform(3.5, 6.0)
        look = _look(rng, OBJECT, 0.6, 0.05, 0.5, ("plain", 0.0))
        prims.append(Cylinder(look, (x, 0.0, z), 0.1, h))
        sign = _look(rng, OBJECT, rng.choice([0.0, 0.15, 0.6]), 0.9, 0.9, ("stripes_y", 4.0))
        prims.append(Box(sign, (x - 0.4, h - 0.6, z - 0.05), (x + 0.4, h, z + 0.05)))
    for _ in range(rng.integers(0, 6)):
        s, z = rng.choice([-1.0, 1.0]), rng.uniform(5.0, length - 2.0)
        x = s * (curb - rng.uniform(0.5, 1.0))
        trunk, crown = rng.uniform(2.0, 3.0), rng.uniform(1.2, 2.2)
        prims.append(Cylinder(_look(rng, NATURE, 0.07, 0.6, 0.35, ("stripes_y", 6.0)), (x, 0.0, z), 0.18, trunk))
        prims.append(Sphere(_look(rng, NATURE, 0.3, 0.7, 0.5, ("checks", 3.0)), (x, trunk + crown * 0.8, z), crown))
    for _ in range(rng.integers(0, 7)):
        s, z = rng.choice([-1.0, 1.0]), rng.uniform(3.0, length - 2.0)
        x = s * rng.uniform(road + 0.3, curb - 0.3)
        tall = rng.uniform(1.5, 1.9)
        body = _look(rng, HUMAN, rng.uniform(0.0, 1.0), 0.6, 0.6, ("stripes_y", 8.0))
        prims.append(Cylinder(body, (x, 0.0, z), 0.22, tall - 0.3))
        prims.append(Sphere(_look(rng, HUMAN, 0.07, 0.45, 0.8, ("plain", 0.0)), (x, tall - 0.15, z), 0.13))

    # cars in the lanes or parked at the curb
    for _ in range(rng.integers(0, 7)):
        x = float(rng.uniform(-road + 1.0, road - 1.0))
        z = rng.uniform(5.0, length - 5.0)
        paint = _look(rng, VEHICLE, rng.uniform(0.0, 1.0), rng.uniform(0.2, 0.9), 0.8, ("plain", 0.0))
        glass = _look(rng, VEHICLE, 0.6, 0.3, 0.25, ("stripes_z", 1.0))
        prims.append(Box(paint, (x - 0.9, 0.2, z - 2.1), (x + 0.9, 1.0, z + 2.1)))
        prims.append(Box(glass, (x - 0.8, 1.0, z - 1.0), (x + 0.8, 1.45, z + 1.2)))

    focal = CITYSCAPES_FOCAL_2048 * options.width / 2048.0
    camera = Camera(
        options.height,
        options.width,
        focal,
        (rng.uniform(-road + 1.2, road - 1.2), rng.uniform(1.1, 1.5), 0.0),
        yaw=rng.uniform(-0.1, 0.1),
        pitch=rng.uniform(-0.02, 0.06),
    )
    light = Light((rng.uniform(-1.0, 1.0), rng.uniform(0.5, 1.5), rng.uniform(-1.0, 1.0)), rng.uniform(0.35, 0.5))
    return camera, prims, light, tuple(_SKY_HORIZON)


def add_sky(out: Render, camera: Camera) -> Render:
    """Label the pixels that see nothing "sky" and shade them with a gradient from the horizon to the zenith
    by their ray's elevation; their depth stays 0 (invalid)."""
    _, dirs = camera.world_rays()
    elevation = np.clip(dirs[:, 1] / np.linalg.norm(dirs, axis=1), 0.0, 1.0).reshape(camera.height, camera.width)
    sky = ~out.hit
    colour = _SKY_HORIZON[:, None, None] + (_SKY_ZENITH - _SKY_HORIZON)[:, None, None] * (elevation * 3.0).clip(0, 1)
    image = out.image.copy()
    image[:, sky] = np.round(colour[:, sky] * 255.0).astype(np.uint8)
    segmentation = np.where(sky, SKY, out.segmentation).astype(np.int16)
    return Render(image=image, segmentation=segmentation, depth=out.depth, normal=out.normal, hit=out.hit)


def _size(options: Options, split: str) -> int:
    return {"train": options.n_train, "val": options.n_val, "test": options.n_test}[split]


def build(options: Options, root: None = None) -> dict[str, Split]:
    """Render the train/val/test splits (pure and seeded; ``root`` is unused: nothing is read).

    Returns, per split, ``Split(x, (segmentation, depth), source)``: ``x`` uint8 ``[N x 3 x H x W]``;
    segmentation int16 ``[N x H x W]`` (0..6, every pixel labelled); depth float32 ``[N x 1 x H x W]``
    (metres, 0 = sky); ``source`` int64 ``[N x 1]``, the seed each scene was generated from.
    """
    sizes = {split: _size(options, split) for split in SPLITS}
    return build_splits(NAME, TASKS, sizes, options.generation_seed, lambda rng: make_scene(rng, options), add_sky)


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance: the renderer, library versions, classes, camera model and split sizes."""
    sizes = {split: _size(options, split) for split in SPLITS}
    return provenance(
        "streets",
        CLASSES,
        f"pinhole, focal {CITYSCAPES_FOCAL_2048} px at 2048 px width (CityScapes), scaled to {options.width}",
        sizes,
        STAND_IN,
    )


def augment(x: Tensor, y: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Random scale-crop (depth divided by the scale) and horizontal flip, MTAN's CityScapes augmentation
    (:func:`mtlrepro.data._render.scale_crop_flip`)."""
    return scale_crop_flip(x, y, [task.kind for task in TASKS], generator)
