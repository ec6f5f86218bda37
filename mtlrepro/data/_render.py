"""A small vectorised ray caster for the rendered dense-prediction stand-ins (NYUv2, CityScapes).

The scenes of :mod:`mtlrepro.data.dense_scenes` and :mod:`mtlrepro.data.street_scenes` are made of
analytic primitives (:class:`Quad`, :class:`Sphere`, :class:`Box`, :class:`Cylinder`) seen by a pinhole
:class:`Camera`. One ray is cast through the centre of every pixel; the first surface it hits fixes the
pixel's class, its depth and its surface normal *exactly* (no anti-aliasing, no sensor noise), so the dense
targets are the geometry's own, not estimates. The RGB image is shaded from the same geometry.

Conventions (those of the NYUv2 and CityScapes targets the papers' code reads, ``method-contract.md`` Sec. 3):

- camera frame: OpenCV's pinhole model (x right, y down, z forward, the principal point at the image
  centre); a pixel's ray through its centre ``(u + 0.5, v + 0.5)`` is ``((u + 0.5 - W/2) / f,
  (v + 0.5 - H/2) / f, 1)`` in camera coordinates;
- depth: the hit point's camera-frame z coordinate (not the distance along the ray), as a depth sensor
  measures it; 0 where the ray hits nothing (invalid, NYUv2's convention for missing depth);
- normal: the unit surface normal at the hit point in camera coordinates, oriented towards the camera
  (its dot product with the ray is negative); the zero vector where nothing is hit;
- segmentation: the class of the primitive hit first; :data:`NO_HIT` (-1, :data:`mtlrepro.tasks.IGNORE`)
  where nothing is hit, which a scene module may map to a class of its own (CityScapes' sky).

The world frame the scenes are laid out in has its y axis pointing *up* (floors at y = 0); the camera's pose
(position, yaw about the world's y axis, pitch down from the horizontal) maps it to the camera frame.

Shading: Lambertian reflection of one directional light plus ambient light (no shadows, no
inter-reflection), times the primitive's albedo and a procedural texture (stripes or checks of the hit point's
world coordinates), so that the image alone carries the information the targets hold.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrepro.data import SPLITS, Split
from mtlrepro.errors import DataError
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import IGNORE, Task, check_target

NO_HIT = IGNORE
"""Class of a pixel whose ray hits nothing."""

#: rays hitting a surface closer than this (metres along the ray's unit-z parametrisation) do not count
EPS = 1e-6

Texture = tuple[str, float]
"""A procedural texture: kind (``"plain"``, ``"stripes_x"``, ``"stripes_y"``, ``"stripes_z"``, ``"checks"``)
and spatial frequency in cycles per metre of world coordinates."""


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: image size, focal length in pixels and pose in the world (y up).

    ``yaw`` turns the camera about the world's vertical axis (positive: to the right, towards +x) and
    ``pitch`` tilts it down from the horizontal (positive: looking down), both in radians. At zero yaw and
    pitch the camera looks along the world's +z axis.
    """

    height: int
    width: int
    focal: float
    position: tuple[float, float, float]
    yaw: float = 0.0
    pitch: float = 0.0

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The camera frame's axes in world coordinates: (right, down, forward), orthonormal."""
        cy, sy, cp, sp = math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch), math.sin(self.pitch)
        forward = np.array([sy * cp, -sp, cy * cp])
        right = np.array([cy, 0.0, -sy])
        down = np.cross(right, forward)
        return right, down, forward

    def camera_rays(self) -> np.ndarray:
        """Ray directions through the pixel centres in camera coordinates ``[H*W x 3]``, z component 1.

        Row-major pixel order (row v, column u); a hit at parameter t along a ray lies at camera-frame
        depth t.
        """
        v, u = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        x = (u.reshape(-1) + 0.5 - self.width / 2.0) / self.focal
        y = (v.reshape(-1) + 0.5 - self.height / 2.0) / self.focal
        return np.stack([x, y, np.ones_like(x)], axis=1)

    def world_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """The rays' origin (the camera centre) ``[3]`` and their directions in world coordinates ``[H*W x 3]``."""
        right, down, forward = self.basis()
        rays = self.camera_rays()
        return np.asarray(self.position, dtype=np.float64), rays @ np.stack([right, down, forward])


@dataclass(frozen=True)
class Surface:
    """What every primitive carries besides its geometry: class, RGB albedo in [0, 1] and texture."""

    cls: int
    albedo: tuple[float, float, float]
    texture: Texture = ("plain", 0.0)


@dataclass(frozen=True)
class Quad:
    """A planar rectangle: centre, unit normal, one in-plane unit axis ``u`` and half-extents along ``u`` and
    ``v = normal x u``. ``hole`` optionally cuts a rectangular opening ``(u_min, u_max, v_min, v_max)`` (in the
    quad's own coordinates, metres from the centre) through which rays pass (a doorway)."""

    surface: Surface
    center: tuple[float, float, float]
    normal: tuple[float, float, float]
    u: tuple[float, float, float]
    half_u: float
    half_v: float
    hole: tuple[float, float, float, float] | None = None

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameters of the hits ``[R]`` (inf where missed) and the world normals ``[R x 3]``."""
        n, u = _unit(self.normal), _unit(self.u)
        v = np.cross(n, u)
        c = np.asarray(self.center, dtype=np.float64)
        denom = dirs @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((c - origin) @ n) / denom
        t = np.where(np.abs(denom) > 1e-12, t, np.inf)
        local = origin[None, :] + np.where(np.isfinite(t), t, 0.0)[:, None] * dirs - c
        a, b = local @ u, local @ v
        inside = (np.abs(a) <= self.half_u) & (np.abs(b) <= self.half_v)
        if self.hole is not None:
            u0, u1, v0, v1 = self.hole
            inside &= ~((a >= u0) & (a <= u1) & (b >= v0) & (b <= v1))
        t = np.where(inside & (t > EPS), t, np.inf)
        return t, np.broadcast_to(n, dirs.shape)


@dataclass(frozen=True)
class Sphere:
    """A sphere: centre and radius."""

    surface: Surface
    center: tuple[float, float, float]
    radius: float

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest positive root of ``|o + t d - c|^2 = r^2`` per ray (inf where missed) and the world normals."""
        c = np.asarray(self.center, dtype=np.float64)
        oc = origin - c
        a = np.einsum("ij,ij->i", dirs, dirs)
        b = dirs @ oc
        disc = b * b - a * (oc @ oc - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        near, far = (-b - root) / a, (-b + root) / a
        t = np.where(near > EPS, near, np.where(far > EPS, far, np.inf))
        t = np.where(disc >= 0.0, t, np.inf)
        point = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * dirs
        return t, (point - c) / self.radius


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (in world coordinates): its minimum and maximum corners."""

    surface: Surface
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slab-method hits (Kay and Kajiya, 1986): the entry point's parameter and the normal of the entered
        face; the exit point's from inside the box."""
        lo, hi = np.asarray(self.lo, dtype=np.float64), np.asarray(self.hi, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / dirs
            t1, t2 = (lo - origin) * inv, (hi - origin) * inv
        # a ray parallel to a slab and outside it never enters; inside it, the slab does not limit it
        parallel = dirs == 0.0
        outside = parallel & ((origin < lo) | (origin > hi))
        t1 = np.where(parallel, -np.inf, t1)
        t2 = np.where(parallel, np.inf, t2)
        t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
        enter, leave = t_near.max(axis=1), t_far.min(axis=1)
        hit = (enter <= leave) & ~outside.any(axis=1) & (leave > EPS)
        use_enter = enter > EPS
        t = np.where(hit, np.where(use_enter, enter, leave), np.inf)
        axis = np.where(use_enter, t_near.argmax(axis=1), t_far.argmin(axis=1))
        normal = np.zeros_like(dirs)
        rows = np.arange(dirs.shape[0])
        normal[rows, axis] = -np.sign(dirs[rows, axis])
        return t, normal


@dataclass(frozen=True)
class Cylinder:
    """A closed vertical cylinder (axis along the world's y axis): base centre, radius and height."""

    surface: Surface
    base: tuple[float, float, float]
    radius: float
    height: float

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit of the side (a quadratic in x and z, limited in y) and of the two caps (discs)."""
        bx, by, bz = self.base
        ox, oy, oz = origin[0] - bx, origin[1] - by, origin[2] - bz
        dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        a = dx * dx + dz * dz
        b = dx * ox + dz * oz
        disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            roots = np.stack([(-b - root) / a, (-b + root) / a])
        side = np.full(dirs.shape[0], np.inf)
        for r in roots[::-1]:  # the far root, then the near one where valid
            y = oy + r * dy
            ok = (disc >= 0.0) & (a > 1e-12) & (r > EPS) & (y >= 0.0) & (y <= self.height)
            side = np.where(ok, r, side)
        caps = []
        for level in (0.0, self.height):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (level - oy) / dy
            px, pz = ox + tc * dx, oz + tc * dz
            ok = (np.abs(dy) > 1e-12) & (tc > EPS) & (px * px + pz * pz <= self.radius**2)
            caps.append(np.where(ok, tc, np.inf))
        t = np.minimum(side, np.minimum(caps[0], caps[1]))
        tt = np.where(np.isfinite(t), t, 0.0)
        normal = np.stack([(ox + tt * dx) / self.radius, np.zeros_like(tt), (oz + tt * dz) / self.radius], axis=1)
        cap = np.isfinite(t) & (t < side)
        normal[cap] = np.array([0.0, 1.0, 0.0])  # orientation is fixed towards the camera in render()
        return t, normal


Primitive = Quad | Sphere | Box | Cylinder


@dataclass(frozen=True)
class Light:
    """A directional light (unit direction *towards* the light, world coordinates) and the ambient share."""

    direction: tuple[float, float, float] = (0.3, 1.0, -0.4)
    ambient: float = 0.35


@dataclass
class Render:
    """The rendered image and its exact dense targets (one scene)."""

    image: np.ndarray
    """uint8 ``[3 x H x W]``."""
    segmentation: np.ndarray
    """int16 ``[H x W]``: class of the first hit, :data:`NO_HIT` where none."""
    depth: np.ndarray
    """float32 ``[1 x H x W]``: camera-frame z of the first hit, 0 where none."""
    normal: np.ndarray
    """float32 ``[3 x H x W]``: unit camera-frame normal towards the camera, 0 vector where none."""
    hit: np.ndarray = field(repr=False)
    """bool ``[H x W]``: whether the pixel's ray hits a primitive."""


def texture_value(texture: Texture, points: np.ndarray) -> np.ndarray:
    """Multiplicative brightness ``[R]`` in [0.6, 1] of a procedural texture at world points ``[R x 3]``."""
    kind, frequency = texture
    if kind == "plain" or frequency <= 0.0:
        return np.ones(points.shape[0])
    phase = np.floor(points * frequency).astype(np.int64)
    if kind == "checks":
        odd = phase.sum(axis=1) % 2
    elif kind in ("stripes_x", "stripes_y", "stripes_z"):
        odd = phase[:, "xyz".index(kind[-1])] % 2
    else:
        raise ValueError(f"texture kind {kind!r} is unknown")
    return np.where(odd == 1, 0.6, 1.0)


def render(
    camera: Camera,
    primitives: Sequence[Primitive],
    light: Light,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Render:
    """Cast one ray per pixel centre through ``primitives`` and return the image and the exact targets.

    Pixels whose ray hits nothing take the ``background`` colour (RGB in [0, 1]), class :data:`NO_HIT`, depth
    0 and the zero normal. Computation is in float64; the targets are rounded to float32 once.
    """
    origin, dirs = camera.world_rays()
    n_rays = dirs.shape[0]
    best = np.full(n_rays, np.inf)
    index = np.full(n_rays, -1, dtype=np.int64)
    normals = np.zeros((n_rays, 3))
    for i, primitive in enumerate(primitives):
        t, nrm = primitive.intersect(origin, dirs)
        closer = t < best
        best = np.where(closer, t, best)
        index = np.where(closer, i, index)
        normals = np.where(closer[:, None], nrm, normals)
    hit = np.isfinite(best)
    # face the camera: the normal and the ray point in opposite directions
    facing = np.einsum("ij,ij->i", normals, dirs)
    normals = np.where((facing > 0.0)[:, None], -normals, normals)
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    normals[~hit] = 0.0
    right, down, forward = camera.basis()
    normal_cam = normals @ np.stack([right, down, forward]).T
    depth = np.where(hit, best, 0.0)

    classes = np.array([p.surface.cls for p in primitives] + [NO_HIT], dtype=np.int16)
    segmentation = classes[index]  # index -1 picks NO_HIT
    points = origin + np.where(hit, best, 0.0)[:, None] * dirs
    rgb = np.empty((n_rays, 3))
    rgb[:] = background
    lambert = light.ambient + (1.0 - light.ambient) * np.maximum(normals @ _unit(light.direction), 0.0)
    for i, primitive in enumerate(primitives):
        mine = index == i
        if mine.any():
            tex = texture_value(primitive.surface.texture, points[mine])
            rgb[mine] = np.asarray(primitive.surface.albedo)[None, :] * (tex * lambert[mine])[:, None]
    image = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

    h, w = camera.height, camera.width
    return Render(
        image=image.T.reshape(3, h, w),
        segmentation=segmentation.reshape(h, w),
        depth=depth.astype(np.float32).reshape(1, h, w),
        normal=normal_cam.astype(np.float32).T.reshape(3, h, w),
        hit=hit.reshape(h, w),
    )


def hsv_albedo(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    """An RGB albedo from hue (turns), saturation and value in [0, 1] (the standard HSV cone)."""
    h = (hue % 1.0) * 6.0
    c = value * saturation
    x = c * (1.0 - abs(h % 2.0 - 1.0))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = value - c
    return (r + m, g + m, b + m)


# --------------------------------------------------------------------------- train-time augmentation


def scale_crop_flip(
    x: Tensor,
    y: tuple[Tensor, ...],
    kinds: Sequence[str],
    generator: torch.Generator,
    scales: Sequence[float] = (1.0, 1.2, 1.5),
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Random scale-crop and horizontal flip of a batch of images and their dense targets, per example.

    The augmentation MTAN and LibMTL apply to NYUv2 (``RandomScaleCrop`` and a flip with probability 1/2,
    ``method-contract.md`` Sec. 3): a scale ``s`` is drawn from ``scales``, a window of ``H/s x W/s`` pixels at
    a random position is cropped and resized back to ``H x W`` (bilinear for the image, nearest for the
    targets), depth is divided by ``s`` (the content looks ``s`` times closer), and on a flip the x component
    of the normals is negated. Invalid pixels (depth 0, zero normal, label -1) stay invalid.

    ``kinds`` are the tasks' kinds (``"segmentation"``, ``"depth"``, ``"normals"``), in the order of ``y``.
    The random draws come from ``generator`` (on its own device); the tensors stay on theirs.
    """
    n, _, h, w = x.shape
    draws = torch.rand(n, 4, generator=generator, device=generator.device).cpu().tolist()
    xs, ys = [], [[] for _ in y]
    for i, (r_scale, r_top, r_left, r_flip) in enumerate(draws):
        s = float(scales[min(int(r_scale * len(scales)), len(scales) - 1)])
        ch, cw = int(h / s), int(w / s)
        top, left = int(r_top * (h - ch + 1)), int(r_left * (w - cw + 1))
        flip = r_flip < 0.5
        window = (slice(None), slice(top, top + ch), slice(left, left + cw))
        xi = F.interpolate(x[i][window][None], size=(h, w), mode="bilinear", align_corners=True)[0]
        xs.append(xi.flip(-1) if flip else xi)
        for t, (kind, target) in enumerate(zip(kinds, y, strict=True)):
            yi = target[i][None] if kind == "segmentation" else target[i]
            yi = F.interpolate(yi[window][None].float(), size=(h, w), mode="nearest")[0].to(target.dtype)
            if kind == "segmentation":
                yi = yi[0]
            elif kind == "depth":
                yi = yi / s
            if flip:
                yi = yi.flip(-1)
                if kind == "normals":
                    yi = yi * torch.tensor([-1.0, 1.0, 1.0], dtype=yi.dtype, device=yi.device)[:, None, None]
            ys[t].append(yi)
    return torch.stack(xs), tuple(torch.stack(parts) for parts in ys)


# --------------------------------------------------------------------------- a dataset of rendered scenes

Scene = tuple[Camera, Sequence[Primitive], Light, tuple[float, float, float]]
"""What a scene generator returns: camera, primitives, light and background colour."""


@dataclass
class RenderedSplit:
    """The stacked renders of one split: uint8 images ``[N x 3 x H x W]``, int16 labels ``[N x H x W]``,
    float32 depth ``[N x 1 x H x W]`` and normals ``[N x 3 x H x W]``, and the scene seeds ``[N x 1]`` (int64)."""

    image: Tensor
    segmentation: Tensor
    depth: Tensor
    normal: Tensor
    seeds: Tensor


def scene_seed(generation_seed: int, dataset: str, split: str, i: int) -> int:
    """The seed of scene ``i`` of ``split``: a 62-bit hash of (``generation_seed``, dataset, split, i).

    Every scene has its own stream, so a split's scenes do not depend on the sizes of the other splits.
    """
    return derive_seed(generation_seed, f"{dataset}/scene/{split}/{i}", bits=62)


def render_split(
    make_scene: Callable[[np.random.Generator], Scene],
    seeds: Sequence[int],
    finish: Callable[[Render, Camera], Render] | None = None,
) -> RenderedSplit:
    """Render the scenes ``make_scene(numpy.random.default_rng(seed))`` for ``seeds`` and stack them.

    ``finish`` optionally post-processes each render (e.g. a sky gradient where nothing is hit).
    """
    renders = []
    for seed in seeds:
        camera, primitives, light, background = make_scene(np.random.default_rng(seed))
        out = render(camera, primitives, light, background)
        renders.append(finish(out, camera) if finish is not None else out)

    def stack(attr: str) -> Tensor:
        return torch.from_numpy(np.stack([getattr(r, attr) for r in renders]))

    return RenderedSplit(
        image=stack("image"),
        segmentation=stack("segmentation"),
        depth=stack("depth"),
        normal=stack("normal"),
        seeds=torch.tensor(list(seeds), dtype=torch.int64).reshape(-1, 1),
    )


def build_splits(
    name: str,
    tasks: Sequence[Task],
    sizes: Mapping[str, int],
    generation_seed: int,
    make_scene: Callable[[np.random.Generator], Scene],
    finish: Callable[[Render, Camera], Render] | None = None,
) -> dict[str, Split]:
    """Render every split of a scene dataset: ``sizes[split]`` scenes, each from its own seed (:func:`scene_seed`).

    The targets are the rendered fields named by the tasks' kinds (segmentation, depth, normals), checked
    against the tasks; ``source`` [N x 1] holds each scene's seed. :class:`DataError` if two scenes of
    different splits would share a seed.
    """
    fields = {"segmentation": "segmentation", "depth": "depth", "normals": "normal"}
    splits: dict[str, Split] = {}
    for split in SPLITS:
        seeds = [scene_seed(generation_seed, name, split, i) for i in range(sizes[split])]
        rendered = render_split(make_scene, seeds, finish)
        y = tuple(getattr(rendered, fields[task.kind]) for task in tasks)
        for task, target in zip(tasks, y, strict=True):
            check_target(task, target, len(seeds))
        splits[split] = Split(x=rendered.image, y=y, source=rendered.seeds)
    used = [set(splits[s].source.flatten().tolist()) for s in SPLITS]
    if len(set().union(*used)) != sum(map(len, used)):
        raise DataError(f"{name}: two scenes share a seed (generation_seed={generation_seed}); change it")
    return splits


def provenance(what: str, classes: Sequence[str], camera: str, sizes: Mapping[str, int], stand_in: str) -> dict:
    """A scene stand-in's ``describe()``: the renderer and its library versions, classes, camera and split sizes."""
    return {
        "source": f"rendered by mtlrepro.data._render (numpy ray casting of seeded random {what})",
        "numpy_version": np.__version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "classes": list(classes),
        "camera": camera,
        "n": dict(sizes),
        "stand_in": stand_in,
    }
