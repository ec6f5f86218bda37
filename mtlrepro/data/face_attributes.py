"""``face_attributes``: a CelebA-style many-binary-attribute problem on rendered cartoon faces.

CelebA (Liu et al., 2015; RW paper App. C.2) has 202,599 face images, each annotated with 40 binary
attributes; every attribute is one binary classification task, and the official partition holds 162,770 /
19,867 / 19,962 images for training, validation and testing (about 80 / 10 / 10 %).

CelebA needs a manual download, so this module is a *stand-in* (:data:`STAND_IN`): it draws cartoon faces with
:mod:`PIL.ImageDraw` from seeded latent attributes. Sixteen of CelebA's attributes are modelled (:data:`TASKS`,
in the order of CelebA's ``list_attr_celeba.txt``), each with a visible cue in the image (:func:`render`), and
they are sampled (:func:`sample_attributes`) with imbalanced base rates near CelebA's (:data:`TARGET_RATES`)
and CelebA-like dependencies: beards, moustaches and baldness occur on male faces only, baldness and grey hair
mostly on older faces, heavy make-up mostly on female faces, an open mouth mostly with a smile. Every face also
gets seeded nuisance variation that no attribute depends on (:class:`Look`): position, scale, skin tone,
background, clothing, hat colour and hair shade.

Construction (:func:`build`), seeded from ``Options.generation_seed``: every split draws its own faces from its
own random streams (no face is shared); each face is drawn at four times the output size and reduced to
``image_size`` x ``image_size`` by box averaging (anti-aliasing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw

from mtlrepro.data import SPLITS, Split
from mtlrepro.options import require
from mtlrepro.seeding import derive_seed
from mtlrepro.tasks import Task, check_target

NAME = "face_attributes"
ENCODER = "small_cnn"
MULTI_INPUT = False
STAND_IN = (
    "stand-in for CelebA (RW paper App. C.2): 16 binary attributes of seeded cartoon faces drawn with PIL, "
    "not the paper's data"
)
SOURCES: tuple = ()
MANUAL: str | None = None

#: modelled attributes, in the order of CelebA's ``list_attr_celeba.txt``
ATTRIBUTES = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Eyeglasses",
    "Gray_Hair",
    "Heavy_Makeup",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Pale_Skin",
    "Smiling",
    "Wearing_Hat",
    "Young",
)
TASKS = tuple(Task(name, "binary") for name in ATTRIBUTES)

#: approximate positive rates of these attributes in CelebA (rounded); :func:`sample_attributes` is tuned so
#: that its marginals come out near them
TARGET_RATES: dict[str, float] = {
    "Bald": 0.022,
    "Bangs": 0.152,
    "Black_Hair": 0.239,
    "Blond_Hair": 0.148,
    "Eyeglasses": 0.065,
    "Gray_Hair": 0.042,
    "Heavy_Makeup": 0.387,
    "Male": 0.417,
    "Mouth_Slightly_Open": 0.483,
    "Mustache": 0.042,
    "Narrow_Eyes": 0.115,
    "No_Beard": 0.835,
    "Pale_Skin": 0.043,
    "Smiling": 0.482,
    "Wearing_Hat": 0.048,
    "Young": 0.774,
}

#: supersampling factor: faces are drawn at this multiple of ``image_size`` and box-averaged down
SUPERSAMPLE = 4

HAIR_COLOURS = {
    "black": (28, 22, 20),
    "blond": (226, 196, 112),
    "gray": (172, 172, 176),
    "brown": (104, 62, 32),
}
#: non-pale skin tones are interpolated between these two; pale skin is :data:`PALE_SKIN` (plus jitter)
SKIN_DARK = (96, 60, 40)
SKIN_LIGHT = (222, 178, 142)
PALE_SKIN = (249, 231, 222)
EYEBROW = (58, 40, 30)
LIPS = (170, 90, 80)
LIPSTICK = (200, 24, 48)
MOUTH_INSIDE = (70, 16, 20)
GLASSES = (16, 16, 24)
EYESHADOWS = ((96, 60, 170), (40, 90, 190), (150, 60, 120))


@dataclass(frozen=True)
class Options:
    """Generation options; the default split sizes keep CelebA's official proportions (about 80 / 10 / 10 %,
    RW paper App. C.2) at a size a 2-core machine trains on in minutes. ``image_size`` is the side of the square
    RGB image (RW resizes CelebA to 64 x 64; 32 keeps the stand-in small)."""

    n_train: int = 1600
    n_val: int = 200
    n_test: int = 200
    image_size: int = 32
    generation_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            value = getattr(self, name)
            require(value >= 1, name, value, "must be >= 1")
        require(self.image_size >= 16, "image_size", self.image_size, "must be >= 16 (smaller faces lose their cues)")


# --------------------------------------------------------------------------- latent attributes


def sample_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the attributes of ``n`` faces: uint8 ``[n x 16]`` 0/1, columns in :data:`ATTRIBUTES` order.

    The conditional probabilities (below) give marginals near :data:`TARGET_RATES` and CelebA-like
    dependencies; hair-colour flags are 0 on bald faces (no hair to see), and black, blond and grey exclude one
    another (brown hair has no flag).
    """

    def coin(p: np.ndarray | float) -> np.ndarray:
        return rng.random(n) < p

    male = coin(0.42)
    young = coin(np.where(male, 0.69, 0.83))
    bald = male & coin(np.where(young, 0.02, 0.12))
    gray = ~bald & coin(np.where(young, 0.005, 0.16))
    colour = rng.random(n)
    blond_rate = np.where(male, 0.042, 0.24)
    blond = ~bald & ~gray & (colour < blond_rate)
    black = ~bald & ~gray & (colour >= blond_rate) & (colour < blond_rate + 0.254)
    hat = ~bald & coin(0.05)
    bangs = ~bald & coin(np.where(male, 0.07, 0.22))
    beard = male & coin(0.39)
    mustache = male & coin(np.where(beard, 0.22, 0.02))
    makeup = coin(np.where(male, 0.005, 0.66))
    smiling = coin(0.48)
    mouth_open = coin(np.where(smiling, 0.70, 0.27))
    glasses = coin(np.where(male, 0.11, 0.03))
    narrow = coin(np.where(smiling, 0.17, 0.065))
    pale = coin(np.where(male, 0.02, 0.06))
    columns = {
        "Bald": bald,
        "Bangs": bangs,
        "Black_Hair": black,
        "Blond_Hair": blond,
        "Eyeglasses": glasses,
        "Gray_Hair": gray,
        "Heavy_Makeup": makeup,
        "Male": male,
        "Mouth_Slightly_Open": mouth_open,
        "Mustache": mustache,
        "Narrow_Eyes": narrow,
        "No_Beard": ~beard,
        "Pale_Skin": pale,
        "Smiling": smiling,
        "Wearing_Hat": hat,
        "Young": young,
    }
    return np.stack([columns[name] for name in ATTRIBUTES], axis=1).astype(np.uint8)


# --------------------------------------------------------------------------- nuisance variation


@dataclass(frozen=True)
class Look:
    """Nuisance variation of one face, independent of its attributes.

    ``dx``, ``dy``: offset of the face centre (fraction of the image side); ``scale``: face size factor;
    ``skin``: position of the (non-pale) skin tone between :data:`SKIN_DARK` and :data:`SKIN_LIGHT`;
    ``jitter``: per-channel offset of skin and hair colours; the rest are RGB colours.
    """

    dx: float
    dy: float
    scale: float
    skin: float
    jitter: tuple[int, int, int]
    background: tuple[int, int, int]
    clothing: tuple[int, int, int]
    hat: tuple[int, int, int]
    eyeshadow: tuple[int, int, int]


def sample_looks(n: int, rng: np.random.Generator) -> list[Look]:
    """Draw the nuisance variation of ``n`` faces (:class:`Look`)."""

    def colours(low: int, high: int) -> np.ndarray:
        return rng.integers(low, high + 1, (n, 3))

    dx = rng.uniform(-0.06, 0.06, n)
    dy = rng.uniform(-0.05, 0.05, n)
    scale = rng.uniform(0.88, 1.08, n)
    skin = rng.uniform(0.0, 1.0, n)
    jitter = rng.integers(-10, 11, (n, 3))
    background = colours(30, 235)
    clothing = colours(20, 220)
    hat = colours(20, 160)
    shadow = rng.integers(0, len(EYESHADOWS), n)

    def rgb(row: np.ndarray) -> tuple[int, int, int]:
        return (int(row[0]), int(row[1]), int(row[2]))

    return [
        Look(
            dx=float(dx[i]),
            dy=float(dy[i]),
            scale=float(scale[i]),
            skin=float(skin[i]),
            jitter=rgb(jitter[i]),
            background=rgb(background[i]),
            clothing=rgb(clothing[i]),
            hat=rgb(hat[i]),
            eyeshadow=EYESHADOWS[int(shadow[i])],
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- rendering


def _shift(colour: tuple[int, int, int], jitter: tuple[int, int, int], factor: float = 1.0) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(c * factor + j))) for c, j in zip(colour, jitter, strict=True))
    return (r, g, b)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    """The colour a fraction ``t`` of the way from ``a`` to ``b``."""
    return (round(a[0] + t * (b[0] - a[0])), round(a[1] + t * (b[1] - a[1])), round(a[2] + t * (b[2] - a[2])))


def _hair_colour(flags: Mapping[str, bool]) -> tuple[int, int, int]:
    for name, key in (("Black_Hair", "black"), ("Blond_Hair", "blond"), ("Gray_Hair", "gray")):
        if flags[name]:
            return HAIR_COLOURS[key]
    return HAIR_COLOURS["brown"]


def render(flags: Mapping[str, bool | int], look: Look, size: int) -> np.ndarray:
    """Draw one face: uint8 ``[3 x size x size]``.

    ``flags`` maps every name of :data:`ATTRIBUTES` to 0/1. Cues: Male - short hair and a wider jaw (long hair
    otherwise); Bald - no hair, a highlight on the scalp; Bangs - a fringe over the forehead; hair-colour flags -
    the colour of the hair; Eyeglasses - rims and a bridge; Heavy_Makeup - eyeshadow and lipstick; Narrow_Eyes -
    slits instead of open eyes; Mouth_Slightly_Open - a dark mouth opening; Smiling - an upturned mouth;
    Mustache - a band above the mouth; No_Beard = 0 - hair over the jaw and chin; Pale_Skin - a pale skin tone;
    Wearing_Hat - a hat with a brim; Young = 0 - lines beside nose and mouth and on the forehead.
    """
    f = {name: bool(flags[name]) for name in ATTRIBUTES}
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), look.background)
    draw = ImageDraw.Draw(image)

    def px(value: float) -> float:
        return value * big

    def width(value: float) -> int:
        return max(1, round(value * big))

    cx, cy = px(0.5 + look.dx), px(0.52 + look.dy)
    fw = px(0.25 * look.scale) * (1.07 if f["Male"] else 1.0)
    fh = px(0.31 * look.scale)
    if f["Pale_Skin"]:
        r, g, b = look.jitter
        skin = _shift(PALE_SKIN, (r // 3, g // 3, b // 3))
    else:
        skin = _shift(_mix(SKIN_DARK, SKIN_LIGHT, look.skin), look.jitter)
    shade = _shift(skin, (0, 0, 0), 0.68)
    hair = _shift(_hair_colour(f), look.jitter)
    has_hair = not f["Bald"]

    # shoulders and neck
    draw.ellipse((cx - fw * 2.0, cy + fh * 1.05, cx + fw * 2.0, cy + fh * 2.6), fill=look.clothing)
    draw.rectangle((cx - fw * 0.4, cy + fh * 0.6, cx + fw * 0.4, cy + fh * 1.2), fill=skin)
    # long hair behind the face (female)
    if has_hair and not f["Male"]:
        draw.rounded_rectangle(
            (cx - fw * 1.28, cy - fh * 1.12, cx + fw * 1.28, cy + fh * 1.2), radius=fw * 0.6, fill=hair
        )
    # face
    draw.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    if f["Male"]:  # squarer jaw
        draw.rounded_rectangle((cx - fw * 0.92, cy, cx + fw * 0.92, cy + fh * 0.86), radius=fw * 0.35, fill=skin)
    # hair on the head, or a bald scalp's highlight
    if has_hair:
        draw.pieslice((cx - fw * 1.1, cy - fh * 1.2, cx + fw * 1.1, cy + fh * 0.2), 180, 360, fill=hair)
        if f["Male"]:  # short hair at the temples
            for side in (-1, 1):
                x0, x1 = sorted((cx + side * fw * 0.86, cx + side * fw * 1.06))
                draw.rectangle((x0, cy - fh * 0.55, x1, cy - fh * 0.1), fill=hair)
    else:
        highlight = _shift(skin, (24, 24, 24))
        draw.ellipse((cx - fw * 0.35, cy - fh * 0.92, cx + fw * 0.15, cy - fh * 0.72), fill=highlight)
    # age lines: forehead, beside nose and mouth
    if not f["Young"]:
        for k in range(2):
            y = cy - fh * (0.42 - 0.09 * k)
            draw.line((cx - fw * 0.4, y, cx + fw * 0.4, y), fill=shade, width=width(0.008))
        for side in (-1, 1):
            draw.line(
                (cx + side * fw * 0.22, cy + fh * 0.12, cx + side * fw * 0.42, cy + fh * 0.55),
                fill=shade,
                width=width(0.012),
            )
    # bangs: a jagged fringe over the forehead
    if f["Bangs"] and has_hair:
        teeth = 6
        top = cy - fh * 0.6
        points = [(cx - fw * 0.88, top)]
        for k in range(teeth + 1):
            x = cx - fw * 0.88 + k * fw * 1.76 / teeth
            points.append((x, cy - fh * (0.24 if k % 2 == 0 else 0.32)))
        points.append((cx + fw * 0.88, top))
        draw.polygon(points, fill=hair)
    # eyes (with eyeshadow, eyebrows)
    ey = cy - fh * 0.1
    ew, eh = fw * 0.2, fh * 0.085
    for side in (-1, 1):
        ex = cx + side * fw * 0.4
        if f["Heavy_Makeup"]:
            draw.ellipse((ex - ew * 1.15, ey - eh * 2.3, ex + ew * 1.15, ey + eh * 0.4), fill=look.eyeshadow)
        draw.line((ex - ew, ey - eh * 2.6, ex + ew, ey - eh * 2.9), fill=EYEBROW, width=width(0.016))
        if f["Narrow_Eyes"]:
            draw.line((ex - ew, ey, ex + ew, ey), fill=(20, 16, 16), width=width(0.014))
        else:
            draw.ellipse((ex - ew, ey - eh, ex + ew, ey + eh), fill=(246, 246, 246))
            draw.ellipse((ex - eh * 0.95, ey - eh * 0.95, ex + eh * 0.95, ey + eh * 0.95), fill=(30, 24, 20))
    # nose
    draw.line((cx, cy - fh * 0.02, cx - fw * 0.07, cy + fh * 0.2), fill=shade, width=width(0.012))
    draw.line((cx - fw * 0.07, cy + fh * 0.2, cx + fw * 0.06, cy + fh * 0.2), fill=shade, width=width(0.012))
    # beard (No_Beard = 0) and moustache
    beard = hair if has_hair else _shift(HAIR_COLOURS["brown"], look.jitter)
    if not f["No_Beard"]:
        draw.chord((cx - fw, cy - fh, cx + fw, cy + fh), 18, 162, fill=beard)
        draw.rectangle((cx - fw * 0.95, cy + fh * 0.3, cx + fw * 0.95, cy + fh * 0.62), fill=beard)
    if f["Mustache"]:
        draw.rounded_rectangle(
            (cx - fw * 0.36, cy + fh * 0.27, cx + fw * 0.36, cy + fh * 0.4), radius=fh * 0.05, fill=beard
        )
    # mouth
    mx, my, mw = cx, cy + fh * 0.52, fw * 0.32
    lips = LIPSTICK if f["Heavy_Makeup"] else _shift(LIPS, look.jitter)
    if f["Smiling"] and f["Mouth_Slightly_Open"]:
        draw.chord(
            (mx - mw, my - fh * 0.16, mx + mw, my + fh * 0.16),
            0,
            180,
            fill=MOUTH_INSIDE,
            outline=lips,
            width=width(0.012),
        )
    elif f["Smiling"]:
        draw.arc((mx - mw, my - fh * 0.18, mx + mw, my + fh * 0.1), 15, 165, fill=lips, width=width(0.02))
    elif f["Mouth_Slightly_Open"]:
        draw.ellipse(
            (mx - mw * 0.55, my - fh * 0.06, mx + mw * 0.55, my + fh * 0.1),
            fill=MOUTH_INSIDE,
            outline=lips,
            width=width(0.012),
        )
    else:
        draw.line((mx - mw * 0.9, my, mx + mw * 0.9, my), fill=lips, width=width(0.02))
    # eyeglasses: rims, bridge, temples
    if f["Eyeglasses"]:
        rim = width(0.014)
        for side in (-1, 1):
            ex = cx + side * fw * 0.4
            draw.ellipse((ex - ew * 1.45, ey - eh * 2.2, ex + ew * 1.45, ey + eh * 2.2), outline=GLASSES, width=rim)
            outer = ex + side * ew * 1.45
            draw.line((outer, ey, cx + side * fw * 0.98, ey - eh), fill=GLASSES, width=rim)
        draw.line((cx - fw * 0.4 + ew * 1.45, ey, cx + fw * 0.4 - ew * 1.45, ey), fill=GLASSES, width=rim)
    # hat: crown and brim, over the top of the head
    if f["Wearing_Hat"]:
        draw.rounded_rectangle(
            (cx - fw * 0.95, cy - fh * 1.5, cx + fw * 0.95, cy - fh * 0.55), radius=fw * 0.3, fill=look.hat
        )
        draw.ellipse((cx - fw * 1.45, cy - fh * 0.7, cx + fw * 1.45, cy - fh * 0.48), fill=look.hat)
    small = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1).copy()


def render_batch(attributes: np.ndarray, looks: list[Look], size: int) -> torch.Tensor:
    """Draw faces ``[N x 16]`` (0/1) with their looks: uint8 ``[N x 3 x size x size]``."""
    out = np.empty((len(looks), 3, size, size), dtype=np.uint8)
    for i, look in enumerate(looks):
        out[i] = render(dict(zip(ATTRIBUTES, attributes[i].tolist(), strict=True)), look, size)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- the dataset


def _n(options: Options, split: str) -> int:
    return {"train": options.n_train, "val": options.n_val, "test": options.n_test}[split]


def sample_split(options: Options, split: str) -> tuple[np.ndarray, list[Look]]:
    """The attributes and looks of ``split``'s faces, from the split's own two seeded streams."""
    n = _n(options, split)
    attributes = sample_attributes(
        n, np.random.default_rng(derive_seed(options.generation_seed, f"{NAME}/attributes/{split}"))
    )
    looks = sample_looks(n, np.random.default_rng(derive_seed(options.generation_seed, f"{NAME}/looks/{split}")))
    return attributes, looks


def build(options: Options, root: None = None) -> dict[str, Split]:
    """Build the train/val/test splits (stand-in for RW App. C.2's CelebA); pure and seeded.

    ``root`` is unused. Returns, for every split, ``Split(x, y, source)`` with ``x`` uint8
    ``[N x 3 x S x S]``, ``y`` one uint8 0/1 ``[N]`` tensor per attribute in :data:`ATTRIBUTES` order, and
    ``source`` int64 ``[N x 1]``, the face's number (train faces first, then val, then test).
    """
    splits: dict[str, Split] = {}
    offset = 0
    for split in SPLITS:
        attributes, looks = sample_split(options, split)
        x = render_batch(attributes, looks, options.image_size)
        y = tuple(torch.from_numpy(attributes[:, a].copy()) for a in range(len(ATTRIBUTES)))
        for task, target in zip(TASKS, y, strict=True):
            check_target(task, target, len(x))
        source = torch.arange(offset, offset + len(x), dtype=torch.int64)[:, None]
        offset += len(x)
        splits[split] = Split(x=x, y=y, source=source)
    return splits


def describe(options: Options, root: None = None) -> dict[str, object]:
    """Provenance: library versions, the attributes with their target and realised positive rates, split sizes."""
    rates = {}
    for split in SPLITS:
        attributes, _ = sample_split(options, split)
        rates[split] = {name: float(attributes[:, a].mean()) for a, name in enumerate(ATTRIBUTES)}
    return {
        "source": "generated cartoon faces (PIL.ImageDraw)",
        "pillow_version": PIL.__version__,
        "numpy_version": np.__version__,
        "attributes": list(ATTRIBUTES),
        "target_rates": dict(TARGET_RATES),
        "positive_rates": rates,
        "image_size": options.image_size,
        "supersample": SUPERSAMPLE,
        "n_examples": {split: _n(options, split) for split in SPLITS},
        "stand_in": STAND_IN,
    }
