"""Tests of the generated stand-ins: the ray caster, the rendered scenes (NYUv2 and CityScapes stand-ins) and
the shifted digit domains (Office stand-in)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from mtlrepro.data import SPLITS, Split
from mtlrepro.data import _render as rd
from mtlrepro.data import dense_scenes as ds
from mtlrepro.data import digit_domains as dd
from mtlrepro.data import street_scenes as ss
from mtlrepro.tasks import check_target

SURF = rd.Surface(3, (0.5, 0.5, 0.5))
WALL = rd.Surface(7, (0.8, 0.8, 0.8))
BIG = 1e4
LIGHT = rd.Light()


def _pixel_rays(h: int, w: int, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray coordinates (x/z, y/z) of every pixel centre, computed independently of the renderer."""
    v, u = np.mgrid[0:h, 0:w]
    return (u + 0.5 - w / 2) / f, (v + 0.5 - h / 2) / f


# --------------------------------------------------------------------------- renderer


def test_tilted_plane_depth_and_normals_are_analytic() -> None:
    h, w, f = 12, 16, 10.0
    n_world = np.array([0.3, 0.2, -1.0]) / np.linalg.norm([0.3, 0.2, -1.0])
    u_axis = np.cross(n_world, [0.0, 1.0, 0.0])
    plane = rd.Quad(SURF, (0.0, 0.0, 5.0), tuple(n_world), tuple(u_axis), BIG, BIG)
    out = rd.render(rd.Camera(h, w, f, (0.0, 0.0, 0.0)), [plane], LIGHT)
    x, y = _pixel_rays(h, w, f)
    n_cam = n_world * [1.0, -1.0, 1.0]  # camera y points down, world y up
    expected = (n_cam @ [0.0, 0.0, 5.0]) / (n_cam[0] * x + n_cam[1] * y + n_cam[2])
    np.testing.assert_allclose(out.depth[0], expected, rtol=1e-6)
    normal = out.normal.reshape(3, -1).T.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normal, np.broadcast_to(n_cam, normal.shape), atol=1e-6)  # orthogonal to the plane
    assert (out.segmentation == SURF.cls).all() and out.hit.all()


@pytest.mark.parametrize(("height", "pitch", "yaw"), [(1.5, 0.2, 0.0), (1.2, 0.05, -0.3)])
def test_floor_seen_from_a_tilted_camera(height: float, pitch: float, yaw: float) -> None:
    h, w, f = 16, 20, 12.0
    floor = rd.Quad(SURF, (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), BIG, BIG)
    out = rd.render(rd.Camera(h, w, f, (0.3, height, -1.0), yaw=yaw, pitch=pitch), [floor], LIGHT)
    _, y = _pixel_rays(h, w, f)
    descent = math.sin(pitch) + y * math.cos(pitch)  # minus the world-y component of a ray with camera z = 1
    below = descent > 1e-3
    assert below.any() and (~below).any()
    np.testing.assert_allclose(out.depth[0][below], (height / descent)[below], rtol=1e-5)
    expected_normal = np.array([0.0, -math.cos(pitch), -math.sin(pitch)])
    np.testing.assert_allclose(out.normal[:, below].T, np.broadcast_to(expected_normal, (below.sum(), 3)), atol=1e-6)
    # above the horizon nothing is hit: invalid in every target
    above = descent < -1e-3
    assert (out.depth[0][above] == 0).all() and (out.normal[:, above] == 0).all()
    assert (out.segmentation[above] == rd.NO_HIT).all() and (out.segmentation[below] == SURF.cls).all()


def test_sphere_in_front_of_a_wall() -> None:
    h, w, f, r, c = 24, 24, 20.0, 1.0, np.array([0.0, 0.0, 5.0])
    ball = rd.Sphere(SURF, tuple(c), r)
    wall = rd.Quad(WALL, (0.0, 0.0, 10.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0), BIG, BIG)
    out = rd.render(rd.Camera(h, w, f, (0.0, 0.0, 0.0)), [wall, ball], LIGHT)
    x, y = _pixel_rays(h, w, f)
    d = np.stack([x, y, np.ones_like(x)], axis=-1)  # camera frame = world frame with y flipped; c has y = 0
    b, dd2 = d @ c, (d * d).sum(-1)
    disc = b * b - dd2 * (c @ c - r * r)
    inside, outside = disc > 1e-6, disc < -1e-6
    assert inside.sum() > 20 and outside.sum() > 20
    assert (out.segmentation[inside] == SURF.cls).all() and (out.segmentation[outside] == WALL.cls).all()
    t = (b - np.sqrt(np.maximum(disc, 0))) / dd2
    np.testing.assert_allclose(out.depth[0][inside], t[inside], rtol=1e-6)
    np.testing.assert_allclose(out.depth[0][outside], 10.0, rtol=1e-6)
    normal = (t[..., None] * d - c) / r
    np.testing.assert_allclose(out.normal[:, inside].T, normal[inside], atol=1e-5)


def test_box_and_cylinder_faces() -> None:
    h, w, f = 10, 10, 10.0
    box = rd.Box(SURF, (-BIG, -BIG, 4.0), (BIG, BIG, 6.0))
    out = rd.render(rd.Camera(h, w, f, (0.0, 0.0, 0.0)), [box], LIGHT)
    np.testing.assert_allclose(out.depth, 4.0, rtol=1e-6)
    np.testing.assert_allclose(out.normal.reshape(3, -1).T, np.broadcast_to([0.0, 0.0, -1.0], (h * w, 3)), atol=1e-9)
    # a wide, tall cylinder straight ahead: its side's normals are horizontal (camera y = 0), unit, facing us
    cyl = rd.Cylinder(SURF, (0.0, -5.0, 8.0), 5.0, 10.0)
    out = rd.render(rd.Camera(h, w, f, (0.0, 0.0, 0.0)), [cyl], LIGHT)
    assert out.hit.all()
    n = out.normal.reshape(3, -1).T
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(n[:, 1], 0.0, atol=1e-6)
    x, _ = _pixel_rays(h, w, f)
    # the side at x: z = 8 - sqrt(25 - x^2) with x = t * ray_x and depth t
    t = out.depth[0].astype(np.float64)
    np.testing.assert_allclose((x * t) ** 2 + (t - 8.0) ** 2, 25.0, rtol=1e-5)


# --------------------------------------------------------------------------- rendered scenes

SMALL_DENSE = ds.Options(n_train=24, n_val=8, n_test=8, height=16, width=24)
SMALL_STREET = ss.Options(n_train=24, n_val=8, n_test=8, height=16, width=32)


@pytest.fixture(scope="module")
def dense() -> dict[str, Split]:
    return ds.build(SMALL_DENSE)


@pytest.fixture(scope="module")
def street() -> dict[str, Split]:
    return ss.build(SMALL_STREET)


@pytest.mark.parametrize("module", [ds, ss], ids=["dense_scenes", "street_scenes"])
def test_scene_module_contract(module) -> None:
    assert module.ENCODER == "small_dense" and module.MULTI_INPUT is False
    assert getattr(module, "SOURCES", ()) == () and not hasattr(module, "fetch")
    assert module.STAND_IN and "\n" not in module.STAND_IN
    assert module.TASKS[0].kind == "segmentation" and module.TASKS[0].n_classes == len(module.CLASSES)
    assert [t.kind for t in module.TASKS[1:]] == (["depth", "normals"] if module is ds else ["depth"])
    with pytest.raises(ValueError, match="height"):
        module.Options(height=4)
    with pytest.raises(ValueError, match="n_val"):
        module.Options(n_val=0)
    info = module.describe(module.Options(), None)
    assert info["stand_in"] == module.STAND_IN and info["n"] == {"train": 600, "val": 150, "test": 150}
    _check_plain(info)


def _check_plain(info: dict) -> None:
    """describe() is JSON-serialisable and loads back from a weights-only torch file (the cache's reader)."""
    assert json.loads(json.dumps(info)) == info
    buffer = io.BytesIO()
    torch.save(info, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == info


def _check_scene_splits(module, splits: dict[str, Split], options) -> None:
    sizes = {"train": options.n_train, "val": options.n_val, "test": options.n_test}
    assert set(splits) == set(SPLITS)
    h, w = options.height, options.width
    for split in SPLITS:
        s, n = splits[split], sizes[split]
        assert s.x.shape == (n, 3, h, w) and s.x.dtype == torch.uint8
        assert s.y[0].shape == (n, h, w) and s.y[0].dtype == torch.int16
        assert s.y[1].shape == (n, 1, h, w) and s.y[1].dtype == torch.float32
        if module is ds:
            assert s.y[2].shape == (n, 3, h, w) and s.y[2].dtype == torch.float32
        for task, target in zip(module.TASKS, s.y, strict=True):
            check_target(task, target, n)
        assert s.source.shape == (n, 1) and s.source.dtype == torch.int64
    seeds = [set(splits[s].source.flatten().tolist()) for s in SPLITS]
    assert not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])


def test_dense_scenes_layout_and_validity(dense: dict[str, Split]) -> None:
    _check_scene_splits(ds, dense, SMALL_DENSE)
    seg = torch.cat([dense[s].y[0] for s in SPLITS])
    depth = torch.cat([dense[s].y[1] for s in SPLITS])[:, 0]
    normal = torch.cat([dense[s].y[2] for s in SPLITS])
    invalid = seg == -1
    assert invalid.any(), "some doorway should be in view"
    assert torch.equal(invalid, depth == 0) and torch.equal(invalid, (normal == 0).all(dim=1))
    assert int(seg.min()) >= -1 and int(seg.max()) <= 12 and (depth[~invalid] > 0.05).all()
    assert torch.allclose(normal.norm(dim=1)[~invalid], torch.ones(1), atol=1e-5)
    # every normal faces the camera: negative dot product with its pixel's ray
    x, y = _pixel_rays(SMALL_DENSE.height, SMALL_DENSE.width, ds.KINECT_FOCAL_640 * SMALL_DENSE.width / 640)
    ray = torch.from_numpy(np.stack([x, y, np.ones_like(x)])).float()
    assert ((normal * ray).sum(dim=1)[~invalid] < 0).all()
    present = set(torch.unique(dense["train"].y[0]).tolist())
    assert {ds.FLOOR, ds.WALL, ds.CEILING} <= present and len(present - {-1}) >= 10


def test_dense_scene_floor_is_analytic(dense: dict[str, Split]) -> None:
    """Floor pixels (y = 0) of real scenes: depth = camera height / descent of the ray, normal = world up."""
    s = dense["train"]
    for i in range(6):
        camera, *_ = ds.make_scene(np.random.default_rng(int(s.source[i, 0])), SMALL_DENSE)
        _, y = _pixel_rays(camera.height, camera.width, camera.focal)
        descent = math.sin(camera.pitch) + y * math.cos(camera.pitch)
        floor = (s.y[0][i] == ds.FLOOR).numpy()
        assert floor.any()
        np.testing.assert_allclose(s.y[1][i, 0].numpy()[floor], camera.position[1] / descent[floor], rtol=1e-5)
        up = np.array([0.0, -math.cos(camera.pitch), -math.sin(camera.pitch)])
        np.testing.assert_allclose(s.y[2][i].numpy()[:, floor].T, np.broadcast_to(up, (floor.sum(), 3)), atol=1e-5)


def test_scene_rerenders_from_its_source_seed(dense: dict[str, Split]) -> None:
    s = dense["test"]
    camera, prims, light, background = ds.make_scene(np.random.default_rng(int(s.source[3, 0])), SMALL_DENSE)
    out = rd.render(camera, prims, light, background)
    assert np.array_equal(out.image, s.x[3].numpy()) and np.array_equal(out.segmentation, s.y[0][3].numpy())


def test_street_scenes_layout_and_validity(street: dict[str, Split]) -> None:
    _check_scene_splits(ss, street, SMALL_STREET)
    seg = torch.cat([street[s].y[0] for s in SPLITS])
    depth = torch.cat([street[s].y[1] for s in SPLITS])[:, 0]
    assert int(seg.min()) >= 0 and int(seg.max()) <= 6  # every pixel labelled, sky included
    assert torch.equal(seg == ss.SKY, depth == 0)
    assert set(torch.unique(seg).tolist()) == set(range(7))
    s = street["train"]
    for i in range(6):  # road and sidewalk pixels lie on the plane y = 0 (lane markings 1 mm above it)
        camera, *_ = ss.make_scene(np.random.default_rng(int(s.source[i, 0])), SMALL_STREET)
        _, y = _pixel_rays(camera.height, camera.width, camera.focal)
        descent = math.sin(camera.pitch) + y * math.cos(camera.pitch)
        flat = (s.y[0][i] == ss.FLAT).numpy()
        np.testing.assert_allclose(s.y[1][i, 0].numpy()[flat], camera.position[1] / descent[flat], rtol=2e-3)


@pytest.mark.parametrize("module", [ds, ss], ids=["dense_scenes", "street_scenes"])
def test_scene_build_is_deterministic(module, dense, street) -> None:
    options = SMALL_DENSE if module is ds else SMALL_STREET
    first, again = (dense if module is ds else street), module.build(options)
    for split in SPLITS:
        a, b = first[split], again[split]
        assert torch.equal(a.x, b.x) and torch.equal(a.source, b.source)
        assert all(torch.equal(p, q) for p, q in zip(a.y, b.y, strict=True))
    other = module.build(type(options)(**{**options.__dict__, "generation_seed": 1, "n_train": 2}))
    assert not torch.equal(other["val"].x, first["val"].x)


def test_augment_keeps_targets_consistent(dense: dict[str, Split]) -> None:
    s = dense["train"]
    x, y = s.x[:8].float() / 255, tuple(t[:8] for t in s.y)
    out = ds.augment(x, y, torch.Generator().manual_seed(3))
    again = ds.augment(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(out[0], again[0]) and all(torch.equal(p, q) for p, q in zip(out[1], again[1], strict=True))
    seg, depth, normal = out[1]
    assert out[0].shape == x.shape and seg.dtype == torch.int16 and [t.shape for t in out[1]] == [t.shape for t in y]
    assert torch.equal(seg == -1, depth[:, 0] == 0) and torch.equal(seg == -1, (normal == 0).all(dim=1))
    # scale 1 only: a pure flip; flipped examples have mirrored depth and the normals' x negated
    x1, (_, depth1, normal1) = rd.scale_crop_flip(x, y, ["segmentation", "depth", "normals"], torch.Generator(), (1,))
    for i in range(8):
        flipped = not torch.equal(x1[i], x[i])
        ref = y[2][i].flip(-1) * torch.tensor([-1.0, 1.0, 1.0])[:, None, None] if flipped else y[2][i]
        assert torch.equal(depth1[i], y[1][i].flip(-1) if flipped else y[1][i]) and torch.equal(normal1[i], ref)
    # scale 1.5 only: the depth is the original's divided by 1.5
    _, (_, depth15, _) = rd.scale_crop_flip(x, y, ["segmentation", "depth", "normals"], torch.Generator(), (1.5,))
    values = set((y[1][y[1] > 0] / 1.5).tolist())
    assert set(depth15[depth15 > 0].tolist()) <= values


# --------------------------------------------------------------------------- digit domains


@pytest.fixture(scope="module")
def domains() -> dict[str, tuple[Split, ...]]:
    return dd.build(dd.Options())


def test_digit_domains_contract_and_layout(domains) -> None:
    assert dd.MULTI_INPUT is True and dd.ENCODER == "lenet" and getattr(dd, "SOURCES", ()) == ()
    assert [t.name for t in dd.TASKS] == list(dd.DOMAINS) and all(t.n_classes == 10 for t in dd.TASKS)
    assert dd.STAND_IN and "\n" not in dd.STAND_IN
    targets = load_digits().target
    for split in SPLITS:
        assert isinstance(domains[split], tuple) and len(domains[split]) == 3
        for task, part in zip(dd.TASKS, domains[split], strict=True):
            n = len(part)
            assert part.x.shape == (n, 3, 28, 28) and part.x.dtype == torch.uint8 and len(part.y) == 1
            check_target(task, part.y[0], n)
            assert torch.equal(part.y[0], torch.from_numpy(targets[part.source[:, 0].numpy()]))
    info = dd.describe(dd.Options(), None)
    _check_plain(info)
    assert info["stand_in"] == dd.STAND_IN and sum(info["n"]["clean"].values()) == len(domains["train"][0]) + len(
        domains["val"][0]
    ) + len(domains["test"][0])
    with pytest.raises(ValueError, match="size"):
        dd.Options(size=4)
    with pytest.raises(ValueError, match="val_fraction"):
        dd.Options(val_fraction=0.5, test_fraction=0.5)


def test_digit_domains_disjoint_and_stratified(domains) -> None:
    targets = load_digits().target
    used = [[set(domains[s][d].source.flatten().tolist()) for s in SPLITS] for d in range(3)]
    every = [i for per_domain in used for part in per_domain for i in part]
    assert len(every) == len(set(every)) == len(targets)  # disjoint across domains and splits, all images used
    for d in range(3):
        total = np.bincount(targets[sorted(set().union(*used[d]))], minlength=10)
        for split, fraction in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
            counts = np.bincount(domains[split][d].y[0].numpy(), minlength=10)
            assert (counts > 0).all()
            assert (np.abs(counts - fraction * total) <= 1.5).all(), (split, counts, total)


def test_digit_domains_differ_and_trace_back(domains) -> None:
    means = [float(domains["train"][d].x.float().mean()) for d in range(3)]
    assert means[0] - means[1] > 25 and means[1] - means[2] > 10
    colour_spread = [float(domains["train"][d].x.float().std(dim=1).mean()) for d in range(3)]
    assert colour_spread[0] == 0.0 and colour_spread[1] > 5  # clean is grey, textured is coloured
    # the clean domain is the inverted bilinear upscale of the base digit
    part = domains["test"][0]
    raw = torch.from_numpy(load_digits().images[part.source[:5, 0].numpy()]).double()[:, None] / 16.0
    ink = F.interpolate(raw, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    expected = torch.round((1.0 - ink.float()) * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    assert torch.equal(part.x[:5], expected)


def test_digit_domains_deterministic(domains) -> None:
    again = dd.build(dd.Options())
    for split in SPLITS:
        for a, b in zip(domains[split], again[split], strict=True):
            assert torch.equal(a.x, b.x) and torch.equal(a.y[0], b.y[0]) and torch.equal(a.source, b.source)
    other = dd.build(dd.Options(generation_seed=5, size=16))
    assert not torch.equal(other["test"][0].source, domains["test"][0].source)
