"""Image files into tensors, shared by the image datasets (CelebA, Office-31, Office-Home).

Every image is decoded to RGB and resized directly to a square with bilinear interpolation, as LibMTL's
Office loader does (``convert('RGB')`` then ``Resize((size, size))``); decoding runs on a thread pool and the
result does not depend on the number of threads. The versions of the decoding libraries are recorded, since
the tensors depend on them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, features

from mtlrepro.errors import DataError

#: images decoded per batch of work handed to the thread pool (bounds the memory of encoded bytes in flight)
CHUNK = 512


def _decode(item: Path | bytes, size: int, name: str) -> np.ndarray:
    """One image as RGB uint8 ``[size x size x 3]``: ``convert('RGB')`` then a direct bilinear resize (LibMTL)."""
    try:
        with Image.open(BytesIO(item) if isinstance(item, bytes) else item) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read the image {name}: {err}") from None
    return np.asarray(rgb, dtype=np.uint8)


def _workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def load_images(items: Iterable[tuple[str, Path | bytes]], n: int, size: int) -> torch.Tensor:
    """Decode ``n`` images ``(name, path or encoded bytes)`` into uint8 ``[n x 3 x size x size]``, in order.

    Decoding runs on a thread pool (Pillow releases the GIL while decoding), in chunks of :data:`CHUNK`; the
    result does not depend on the number of threads.
    """
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    done = 0
    chunk: list[tuple[str, Path | bytes]] = []

    def flush(pool: ThreadPoolExecutor) -> None:
        nonlocal done
        for i, array in enumerate(pool.map(lambda item: _decode(item[1], size, item[0]), chunk)):
            out[done + i] = array.transpose(2, 0, 1)
        done += len(chunk)
        chunk.clear()

    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        for item in items:
            chunk.append(item)
            if len(chunk) == CHUNK:
                flush(pool)
        flush(pool)
    if done != n:
        raise ValueError(f"load_images: {done} images for {n} slots")
    return torch.from_numpy(out)


def tree_sha256(root: Path, paths: Sequence[Path]) -> str:
    """sha256 over the relative path and the bytes of every file in ``paths`` (in the order given)."""
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as file:
            sha.update(hashlib.file_digest(file, "sha256").digest())
    return sha.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decode and resize images (the tensors depend on them)."""
    return {
        "torch": str(torch.__version__),  # a TorchVersion, which weights-only loading refuses
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "libjpeg": features.version_codec("jpg"),
        "numpy": np.__version__,
    }
