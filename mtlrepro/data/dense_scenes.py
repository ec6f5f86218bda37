"""``dense_scenes``: rendered indoor rooms with exact segmentation, depth and normals (stands in for NYUv2).

The RW paper (Sec. 5.2) trains on NYUv2 (Silberman et al., 2012): indoor RGB-D images with three tasks,
13-class semantic segmentation, depth estimation and surface-normal prediction (ExcessMTL Sec. 4.2 uses the
same three tasks). NYUv2 needs a download, so this module renders a synthetic stand-in whose targets are
*exact*, because the scenes are ray cast from known geometry (:mod:`mtlrepro.data._render`).

Every scene is a closed room (floor, ceiling, four walls) furnished at random from NYUv2's 13 classes, the
set of Couprie et al. (2013) that MTAN and LibMTL use, in their order (:data:`CLASSES`): beds, sofas,
tables (with books and objects on top), chairs, cabinets ("furniture"), balls and bins ("objects"), windows,
pictures and a TV on the walls. One wall may have an open doorway; its pixels see nothing: label -1,
depth 0 and the zero normal, NYUv2's marks for unlabelled pixels and missing depth, consistent across tasks.

The camera copies the Kinect colour camera of NYUv2's toolbox (focal length 518.86 px at 640 px width,
``camera_params.m``), scaled to the output width, at head height, looking slightly down.

Splits: NYUv2 has no validation split (795 train / 654 test); the real module carves one out of train. Here
all three splits are generated, each scene from its own seed (:func:`mtlrepro.data._render.scene_seed`),
so they share no scene and the val scenes play that carved-out part's role.
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
    Scene,
    Sphere,
    Surface,
    build_splits,
    hsv_albedo,
    provenance,
    scale_crop_flip,
)
from mtlrepro.data.nyuv2 import CLASSES
from mtlrepro.options import require
from mtlrepro.tasks import Task

NAME = "dense_scenes"
ENCODER = "small_dense"
MULTI_INPUT = False
STAND_IN = "stand-in for NYUv2 (RW paper Sec. 5.2): ray-cast synthetic rooms with exact targets, not the paper's data"

#: NYUv2's 13 classes, in the order of its label ids (:data:`mtlrepro.data.nyuv2.CLASSES`)
BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS, PICTURE, SOFA, TABLE, TV, WALL, WINDOW = range(len(CLASSES))

TASKS = (
    Task("segmentation", "segmentation", n_classes=len(CLASSES), labels=CLASSES),
    Task("depth", "depth"),
    Task("normal", "normals"),
)

#: NYUv2 Kinect colour camera, focal length in pixels at 640 px image width (NYU toolbox ``camera_params.m``)
KINECT_FOCAL_640 = 518.857901

#: per class: (hue, saturation, value) of the albedo and the procedural texture (kind, cycles per metre)
_LOOK: dict[int, tuple[tuple[float, float, float], tuple[str, float]]] = {
    BED: ((0.62, 0.45, 0.85), ("stripes_z", 5.0)),
    BOOKS: ((0.0, 0.8, 0.8), ("stripes_x", 40.0)),
    CEILING: ((0.12, 0.05, 0.95), ("plain", 0.0)),
    CHAIR: ((0.08, 0.7, 0.45), ("plain", 0.0)),
    FLOOR: ((0.07, 0.5, 0.6), ("checks", 2.0)),
    FURNITURE: ((0.09, 0.6, 0.55), ("stripes_y", 6.0)),
    OBJECTS: ((0.3, 0.8, 0.8), ("checks", 12.0)),
    PICTURE: ((0.8, 0.7, 0.8), ("checks", 10.0)),
    SOFA: ((0.98, 0.6, 0.6), ("plain", 0.0)),
    TABLE: ((0.06, 0.65, 0.5), ("stripes_x", 12.0)),
    TV: ((0.6, 0.2, 0.12), ("plain", 0.0)),
    WALL: ((0.14, 0.15, 0.85), ("stripes_y", 3.0)),
    WINDOW: ((0.55, 0.35, 1.0), ("checks", 3.0)),
}


@dataclass(frozen=True)
class Options:
    """Generation options: numbers of scenes per split, image size and the seed of every scene.

    The defaults are small for a CPU demo: 600/150/150 scenes at 32 x 48 pixels (NYUv2's experiments use
    288 x 384, RW Sec. 5.2; 32 x 48 keeps the sizes divisible by 8 for a small encoder).
    """

    n_train: int = 600
    n_val: int = 150
    n_test: int = 150
    height: int = 32
    width: int = 48
    doorway_probability: float = 0.6
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("height", "width"):
            require(8 <= getattr(self, name) <= 1024, name, getattr(self, name), "must be in [8, 1024]")
        p = self.doorway_probability
        require(0.0 <= p <= 1.0, "doorway_probability", p, "must be in [0, 1]")


def _surface(rng: np.random.Generator, cls: int) -> Surface:
    """The class's look with a little per-object jitter of hue and brightness (the class stays recognisable)."""
    (hue, sat, val), texture = _LOOK[cls]
    albedo = hsv_albedo(hue + rng.uniform(-0.03, 0.03), sat, float(np.clip(val * rng.uniform(0.85, 1.1), 0, 1)))
    return Surface(cls, albedo, texture)


@dataclass(frozen=True)
class _Wall:
    """A vertical wall of the room: centre, inward unit normal, half-width; ``u = up x normal`` runs along it."""

    center: np.ndarray
    normal: np.ndarray
    half: float

    @property
    def u(self) -> np.ndarray:
        return np.cross([0.0, 1.0, 0.0], self.normal)

    def point(self, a: float, height: float, offset: float = 0.0) -> np.ndarray:
        """World point at ``a`` metres along the wall, ``height`` above the floor, ``offset`` into the room."""
        return np.array([*self.center[:1], 0.0, *self.center[2:]]) + a * self.u + offset * self.normal + [0, height, 0]

    def quad(self, surface: Surface, a: float, height: float, half_u: float, half_v: float, offset: float) -> Quad:
        """A rectangle parallel to the wall (window, picture), centred at ``a`` and ``height``."""
        center = self.point(a, height, offset)
        return Quad(surface, tuple(center), tuple(self.normal), tuple(self.u), half_u, half_v)

    def box(self, surface: Surface, a: float, width: float, depth: float, y0: float, y1: float) -> Box:
        """An axis-aligned box standing against the wall: ``width`` along it, ``depth`` into the room."""
        p, q = self.point(a - width / 2, y0), self.point(a + width / 2, y1, depth)
        return Box(surface, tuple(np.minimum(p, q)), tuple(np.maximum(p, q)))


def make_scene(rng: np.random.Generator, options: Options = Options()) -> Scene:
    """One random furnished room, its camera and light (see the module docstring); all draws from ``rng``."""
    width, length, height = rng.uniform(3.5, 6.0), rng.uniform(4.0, 7.0), rng.uniform(2.5, 3.0)
    hw = width / 2
    walls = {
        "far": _Wall(np.array([0.0, height / 2, length]), np.array([0.0, 0.0, -1.0]), hw),
        "left": _Wall(np.array([-hw, height / 2, length / 2]), np.array([1.0, 0.0, 0.0]), length / 2),
        "right": _Wall(np.array([hw, height / 2, length / 2]), np.array([-1.0, 0.0, 0.0]), length / 2),
        "near": _Wall(np.array([0.0, height / 2, 0.0]), np.array([0.0, 0.0, 1.0]), hw),
    }
    side = ["far", "left", "right"]
    wall_look = _surface(rng, WALL)
    door_wall = side[rng.integers(3)] if rng.random() < options.doorway_probability else None
    prims: list[Primitive] = [
        Quad(_surface(rng, FLOOR), (0.0, 0.0, length / 2), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), hw, length / 2),
        Quad(_surface(rng, CEILING), (0.0, height, length / 2), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0), hw, length / 2),
    ]

    def along(wall: _Wall, half_extent: float) -> float:
        """A position along ``wall`` keeping ``half_extent`` clear of its ends and, on a side wall, at least
        1 m clear of the camera's end of the room (``z = 0``)."""
        lo, hi = -wall.half + half_extent + 0.05, wall.half - half_extent - 0.05
        uz = wall.u[2]
        if uz > 0.5:  # the right wall runs towards +z
            lo = max(lo, half_extent + 1.0 - length / 2)
        elif uz < -0.5:  # the left wall runs towards -z
            hi = min(hi, length / 2 - half_extent - 1.0)
        return float(rng.uniform(lo, max(lo, hi)))

    for key, wall in walls.items():
        hole = None
        if key == door_wall:
            a = along(wall, 0.45)
            hole = (a - 0.45, a + 0.45, -height / 2 - 0.01, -height / 2 + 2.05)
        prims.append(
            Quad(wall_look, tuple(wall.center), tuple(wall.normal), tuple(wall.u), wall.half, height / 2, hole)
        )

    # wall decorations: windows and pictures as rectangles just in front of a wall, a TV as a flat box
    for cls, count in ((WINDOW, rng.integers(0, 3)), (PICTURE, rng.integers(0, 3))):
        for _ in range(count):
            wall = walls[[w for w in side if w != door_wall][rng.integers(2)]]
            hu, hv = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5)
            offset = 0.01 if cls == WINDOW else 0.02
            prims.append(wall.quad(_surface(rng, cls), along(wall, hu), rng.uniform(1.2, 1.7), hu, hv, offset))
    if rng.random() < 0.4:
        wall = walls[side[rng.integers(3)]]
        y0 = rng.uniform(0.9, 1.3)
        prims.append(wall.box(_surface(rng, TV), along(wall, 0.5), rng.uniform(0.7, 1.0), 0.06, y0, y0 + 0.5))

    # furniture standing against walls
    for cls, probability in ((BED, 0.35), (SOFA, 0.45), (FURNITURE, 0.7), (FURNITURE, 0.4)):
        if rng.random() >= probability:
            continue
        wall = walls[side[rng.integers(3)]]
        look = _surface(rng, cls)
        if cls == BED:
            w = rng.uniform(1.4, 1.9)
            prims.append(wall.box(look, along(wall, w / 2), w, rng.uniform(1.9, 2.1), 0.0, rng.uniform(0.45, 0.6)))
        elif cls == SOFA:
            w, d = rng.uniform(1.6, 2.4), rng.uniform(0.8, 1.0)
            a = along(wall, w / 2)
            prims.append(wall.box(look, a, w, d, 0.0, 0.45))
            prims.append(wall.box(look, a, w, 0.22, 0.45, rng.uniform(0.8, 0.95)))
        else:
            w = rng.uniform(0.6, 1.3)
            prims.append(wall.box(look, along(wall, w / 2), w, rng.uniform(0.4, 0.6), 0.0, rng.uniform(0.8, 2.1)))

    # a table with books and objects on top, chairs around it
    free_x = (-hw + 0.8, hw - 0.8)
    free_z = (1.6, max(1.7, length - 1.0))
    if rng.random() < 0.65:
        tx, tz = rng.uniform(*free_x), rng.uniform(*free_z)
        tw, td, th = rng.uniform(0.5, 0.7), rng.uniform(0.35, 0.5), rng.uniform(0.7, 0.78)
        look = _surface(rng, TABLE)
        prims.append(Box(look, (tx - tw, th - 0.05, tz - td), (tx + tw, th, tz + td)))
        for sx in (-1, 1):
            for sz in (-1, 1):
                prims.append(Cylinder(look, (tx + sx * (tw - 0.06), 0.0, tz + sz * (td - 0.06)), 0.03, th - 0.05))
        for _ in range(rng.integers(0, 4)):
            bx, bz = tx + rng.uniform(-tw + 0.15, tw - 0.15), tz + rng.uniform(-td + 0.12, td - 0.12)
            bh = rng.uniform(0.03, 0.08)
            prims.append(Box(_surface(rng, BOOKS), (bx - 0.1, th, bz - 0.14), (bx + 0.1, th + bh, bz + 0.14)))
        for _ in range(rng.integers(0, 3)):
            r = rng.uniform(0.05, 0.1)
            ox, oz = tx + rng.uniform(-tw + r, tw - r), tz + rng.uniform(-td + r, td - r)
            prims.append(Sphere(_surface(rng, OBJECTS), (ox, th + r, oz), r))
        for _ in range(rng.integers(0, 4)):
            sx = rng.choice([-1.0, 1.0])
            cx, cz = tx + sx * (tw + 0.35), tz + rng.uniform(-td, td)
            look = _surface(rng, CHAIR)
            prims.append(Box(look, (cx - 0.22, 0.42, cz - 0.22), (cx + 0.22, 0.47, cz + 0.22)))
            b0, b1 = sorted((cx + sx * 0.2, cx + sx * 0.25))
            prims.append(Box(look, (b0, 0.47, cz - 0.22), (b1, 0.95, cz + 0.22)))
            prims.append(Cylinder(look, (cx, 0.0, cz), 0.035, 0.42))
    # objects on the floor: balls and bins
    for _ in range(rng.integers(0, 4)):
        ox, oz = rng.uniform(*free_x), rng.uniform(*free_z)
        if rng.random() < 0.5:
            r = rng.uniform(0.1, 0.3)
            prims.append(Sphere(_surface(rng, OBJECTS), (ox, r, oz), r))
        else:
            prims.append(Cylinder(_surface(rng, OBJECTS), (ox, 0.0, oz), rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.5)))

    focal = KINECT_FOCAL_640 * options.width / 640.0
    camera = Camera(
        options.height,
        options.width,
        focal,
        (rng.uniform(-0.25, 0.25) * width, rng.uniform(1.1, 1.6), rng.uniform(0.05, 0.3)),
        yaw=rng.uniform(-0.35, 0.35),
        pitch=rng.uniform(0.05, 0.35),
    )
    light = Light((rng.uniform(-0.5, 0.5), 1.0, rng.uniform(-0.5, 0.5)), ambient=rng.uniform(0.3, 0.45))
    return camera, prims, light, (0.03, 0.03, 0.03)


def _size(options: Options, split: str) -> int:
    return {"train": options.n_train, "val": options.n_val, "test": options.n_test}[split]


def build(options: Options, root: None = None) -> dict[str, Split]:
    """Render the train/val/test splits (pure and seeded; ``root`` is unused: nothing is read).

    Returns, per split, ``Split(x, (segmentation, depth, normal), source)``: ``x`` uint8 ``[N x 3 x H x W]``;
    segmentation int16 ``[N x H x W]`` (0..12, -1 where nothing is hit); depth float32 ``[N x 1 x H x W]``
    (metres, 0 = invalid); normals float32 ``[N x 3 x H x W]`` (unit, camera frame, 0 = invalid); ``source``
    int64 ``[N x 1]``, the seed each scene was generated from (:func:`make_scene`).
    """
    sizes = {split: _size(options, split) for split in SPLITS}
    return build_splits(NAME, TASKS, sizes, options.generation_seed, lambda rng: make_scene(rng, options))


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance: the renderer, library versions, classes, camera model and split sizes."""
    sizes = {split: _size(options, split) for split in SPLITS}
    return provenance(
        "rooms",
        CLASSES,
        f"pinhole, focal {KINECT_FOCAL_640} px at 640 px width (NYUv2 Kinect), scaled to {options.width}",
        sizes,
        STAND_IN,
    )


def augment(x: Tensor, y: tuple[Tensor, ...], generator: torch.Generator) -> tuple[Tensor, tuple[Tensor, ...]]:
    """NYUv2's train-time augmentation as MTAN and LibMTL apply it: random scale-crop (scales 1, 1.2, 1.5;
    depth divided by the scale) and horizontal flip (normals' x negated)
    (:func:`mtlrepro.data._render.scale_crop_flip`)."""
    return scale_crop_flip(x, y, [task.kind for task in TASKS], generator)
